//! Time in a task: stream time, the logical order of records and
//! punctuations, and punctuation schedules.
//!
//! The rule everything here serves: **what a task outputs does not depend on
//! how its input was batched** (by a poll, a produce call, a restart). The
//! reference is the task fed one input record at a time, which is what
//! `weir test` does; every other batching must give the same output.
//!
//! - **Stream time** is per task: the largest timestamp among the input
//!   records processed so far, the current one included (-1 before the
//!   first). A record, and everything derived from it downstream, is
//!   processed at the stream time reached when that input record arrived.
//!   It is committed with the input positions and restored with them, so a
//!   restart resumes at the stream time it had committed, and an aborted
//!   transaction goes back to it.
//! - **Order.** Every input record gets a sequence number; what it causes
//!   keeps it ([`Seq`] `{ input, after: 0 }`). A stream-time punctuation of
//!   processor slot `s` due after input `n` sits at `{ input: n, after: s + 1 }`:
//!   after everything input `n` caused, before input `n + 1`, and after the
//!   punctuations of processors upstream of `s` at the same point (slots are
//!   in topological order), so their emissions reach `s` first.
//! - **Batches are split where time matters.** A processor is called with
//!   batches of many records. Its stream-time punctuation fires between two
//!   calls, at the exact record after which it fell due (the batch is cut
//!   there). A guest that asks for stream time (or sets a stream-time
//!   schedule) inside `process` gets batches whose records all share one
//!   stream time: the host sees the question (see `used_stream_time`), and
//!   the first time it comes in a call that mixed stream times, the call is
//!   rolled back and replayed in split batches; the processor keeps getting
//!   split batches from then on. Processors that never ask keep full batches.
//! - **Schedules.** A stream-time schedule of interval `i` fires when stream
//!   time reaches the next multiple of `i` after the stream time at which it
//!   was set (aligned to the epoch, as Kafka Streams aligns stream-time
//!   punctuation to 0), with the stream time reached as its timestamp; when
//!   stream time jumps over several multiples it fires once and the missed
//!   intervals are skipped (as in Kafka Streams). Unlike Kafka Streams, it
//!   does not fire at the very first record. Setting a schedule again with
//!   the same interval keeps it as it is (a guest may call `schedule` on
//!   every record without postponing it forever). Because the next firing is
//!   a function of the interval and the stream time alone, it needs no
//!   storage: a restart recomputes it from the committed stream time.
//! - **Wall-clock punctuation** runs between `process` calls of the driver
//!   (never inside a call), first after `interval` from when it was set,
//!   then once per elapsed interval, missed ones skipped. Wall-clock time is
//!   not replayable; output that depends on it is not batch-invariant.

use super::{Task, TaskError, empty_record};
use crate::record::TaskRecord;
use crate::state::StateError;
use crate::topology::ErrorPolicy;
use crate::wasm::{FailureKind, Punctuation, TimeDomain};

/// A call driven by time rather than by a record.
enum Timed {
    Punctuation(Punctuation),
    /// A timer of this domain and key.
    Timer(TimeDomain, Vec<u8>),
}

/// A position in the task's logical order (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Seq {
    /// Sequence number of the input record (or wall-clock punctuation round).
    pub input: u64,
    /// 0 for the input record and what it causes; `slot + 1` for the
    /// punctuation of processor `slot` at this point.
    pub after: u32,
}

impl Seq {
    pub fn input(input: u64) -> Self {
        Seq { input, after: 0 }
    }

    pub fn punctuation(input: u64, slot: usize) -> Self {
        Seq { input, after: u32::try_from(slot + 1).unwrap_or(u32::MAX) }
    }
}

/// Where a pending record comes from: its place in the order and the stream
/// time it is processed at.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    pub seq: Seq,
    pub stream_time: i64,
}

/// A punctuation schedule of one processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Schedule {
    pub interval: i64,
    /// When it fires next; `None` until time is known.
    pub next: Option<i64>,
}

impl Schedule {
    /// A stream-time schedule set at stream time `now`.
    pub fn stream(interval: i64, now: i64) -> Self {
        Schedule { interval, next: (now >= 0).then(|| next_multiple(now, interval)) }
    }

    /// A wall-clock schedule set at `now`.
    fn wall(interval: i64, now: i64) -> Self {
        Schedule { interval, next: (now >= 0).then(|| now.saturating_add(interval)) }
    }

    /// Stream time reached `now`: true when the schedule fires.
    pub fn reach_stream_time(&mut self, now: i64) -> bool {
        match self.next {
            None => {
                self.next = Some(next_multiple(now, self.interval));
                false
            }
            Some(next) if now >= next => {
                self.next = Some(next_multiple(now, self.interval));
                true
            }
            Some(_) => false,
        }
    }

    /// The wall clock reached `now`: true when the schedule fires.
    fn reach_wall_clock(&mut self, now: i64) -> bool {
        let next = *self.next.get_or_insert(now.saturating_add(self.interval));
        if now < next {
            return false;
        }
        let behind = (now - next) / self.interval + 1;
        self.next = Some(next.saturating_add(behind.saturating_mul(self.interval)));
        true
    }
}

/// The smallest multiple of `interval` greater than `now`.
fn next_multiple(now: i64, interval: i64) -> i64 {
    now.div_euclid(interval).saturating_add(1).saturating_mul(interval)
}

/// Index of the first tick at which `schedule` (a copy) fires, if any.
fn first_firing(schedule: Option<Schedule>, ticks: &[(u64, i64)]) -> Option<usize> {
    let mut schedule = schedule?;
    ticks.iter().position(|&(_, time)| schedule.reach_stream_time(time))
}

impl Task {
    /// Runs one processor over its pending records (in order) and its
    /// stream-time punctuations at the ticks of this drain, interleaved in
    /// the task's logical order.
    pub(super) fn run_slot(
        &mut self,
        slot: usize,
        origins: &[Origin],
        records: &[TaskRecord],
    ) -> Result<(), TaskError> {
        let p = &self.processors[slot];
        let ticks = if p.stream_schedule.is_some() || p.reads_stream_time || p.timers.is_some() {
            self.ticks.clone()
        } else {
            Vec::new()
        };
        let (mut pos, mut tick): (usize, usize) = (0, 0);
        loop {
            // The next tick after which this processor's schedule and timers
            // must be looked at: every tick when it reads time (its own calls
            // may change the schedule), else the first one at which its
            // schedule or one of its timers fires, or at which a timer set in
            // the last batch fell due (that batch was rolled back).
            let cut = self.processors[slot].cut.take();
            let next_tick = if self.processors[slot].reads_stream_time {
                // Every tick is looked at: a cut falls on one of them.
                (tick < ticks.len()).then_some(tick)
            } else {
                let rest = &ticks[tick..];
                let schedule = first_firing(self.processors[slot].stream_schedule, rest);
                // Ticks before the last record run are past: a timer due
                // there was set after them (else it would have fired).
                let past = pos.checked_sub(1).map_or(0, |last| origins[last].seq.input);
                let timer = self.first_timer_tick(slot, rest, past)?;
                let cut = cut.and_then(|input| rest.iter().position(|&(i, _)| i == input));
                [schedule, timer, cut].into_iter().flatten().min().map(|i| tick + i)
            };
            let end = match next_tick {
                Some(t) => {
                    let point = Seq::punctuation(ticks[t].0, slot);
                    pos + origins[pos..].partition_point(|o| o.seq < point)
                }
                None => origins.len(),
            };
            let was_reading = self.processors[slot].reads_stream_time;
            pos += self.run_records(slot, &origins[pos..end], &records[pos..end])?;
            let reading_changed = self.processors[slot].reads_stream_time != was_reading;
            if pos < end || reading_changed || self.processors[slot].cut.is_some() {
                // The processor turned out to read time, or a timer set in
                // its last batch falls due before what comes next: look again.
                continue;
            }
            let last = next_tick.map_or(ticks.len(), |t| t + 1);
            for &(input, time) in &ticks[tick..last] {
                let point = Seq::punctuation(input, slot);
                // Timers fire at `next_tick` only: one due at an earlier tick
                // would have made that tick the next one.
                if Some(input) == next_tick.map(|t| ticks[t].0) {
                    self.fire_stream_timers(slot, time, point)?;
                }
                let fires = self.processors[slot].stream_schedule.as_mut().is_some_and(|s| s.reach_stream_time(time));
                if fires {
                    self.call_timed(slot, Timed::Punctuation(Punctuation::StreamTime), time, time, point)?;
                }
            }
            tick = last;
            if next_tick.is_none() {
                return Ok(());
            }
        }
    }

    /// Runs records in batches of up to `max_batch` (of one stream time each
    /// when the processor reads time, of one record each where a failed
    /// batch is being isolated). Returns how many ran: fewer than given when
    /// a batch had to be rolled back ([`Task::run_batch`] says why) or a
    /// timer set in it falls due before the next records; the caller looks
    /// again.
    pub(super) fn run_records(
        &mut self,
        slot: usize,
        origins: &[Origin],
        records: &[TaskRecord],
    ) -> Result<usize, TaskError> {
        let max = self.max_batch(self.processors[slot].node);
        let mut done = 0;
        while done < records.len() {
            let mut end = (done + max).min(records.len());
            if let Some((first, last)) = self.processors[slot].isolate {
                let at = origins[done].seq;
                if at > last {
                    self.processors[slot].isolate = None;
                } else if at >= first {
                    end = done + 1;
                } else {
                    end = done + origins[done..end].partition_point(|o| o.seq < first);
                }
            }
            if self.processors[slot].reads_stream_time {
                let time = origins[done].stream_time;
                end = done + origins[done..end].iter().take_while(|o| o.stream_time == time).count();
            }
            let cut_before = self.processors[slot].cut.is_some();
            if !self.run_batch(slot, &origins[done..end], &records[done..end])? {
                return Ok(done);
            }
            done = end;
            if !cut_before && self.processors[slot].cut.is_some() {
                // A timer set in this batch falls due before the next records.
                return Ok(done);
            }
        }
        Ok(done)
    }

    /// Applies the schedules a call of `slot` requested, at stream time `now`.
    pub(super) fn apply_schedules(&mut self, slot: usize, schedules: &[(Punctuation, u64)], now: i64) {
        for &(kind, interval) in schedules {
            let wall_clock = self.wall_clock;
            let entry = match kind {
                Punctuation::StreamTime => &mut self.processors[slot].stream_schedule,
                Punctuation::WallClock => &mut self.processors[slot].wall_schedule,
            };
            if interval == 0 {
                *entry = None;
                continue;
            }
            let interval = i64::try_from(interval).unwrap_or(i64::MAX);
            if entry.is_some_and(|s| s.interval == interval) {
                continue; // The same schedule again: keep when it is due.
            }
            *entry = Some(match kind {
                Punctuation::StreamTime => Schedule::stream(interval, now),
                Punctuation::WallClock => Schedule::wall(interval, wall_clock),
            });
        }
    }

    /// Sets the stream time committed before (on restart), before
    /// [`start`](Self::start).
    pub fn restore_stream_time(&mut self, stream_time: i64) {
        self.stream_time = self.stream_time.max(stream_time);
        self.committed_stream_time = self.stream_time;
    }

    /// Back to the committed stream time (the transaction was abandoned).
    /// Schedules follow: their next firing depends on stream time alone.
    pub(super) fn rewind_stream_time(&mut self) {
        self.stream_time = self.committed_stream_time;
        self.ticks.clear();
        let now = self.stream_time;
        for p in &mut self.processors {
            if let Some(s) = &mut p.stream_schedule {
                *s = Schedule::stream(s.interval, now);
            }
        }
    }

    /// Advances the task's wall clock and fires wall-clock punctuations due.
    pub fn advance_wall_clock(&mut self, now: i64) -> Result<(), TaskError> {
        if now > self.wall_clock {
            self.wall_clock = now;
        }
        if self.queues.is_some() {
            // A wait for an empty input may have run out.
            self.process_buffered(false)?;
        }
        let now = self.wall_clock;
        if now < 0 {
            return Ok(());
        }
        let round = self.next_seq;
        self.next_seq += 1;
        self.fire_wall_timers(now, round)?;
        for slot in 0..self.processors.len() {
            let fires = self.processors[slot].wall_schedule.as_mut().is_some_and(|s| s.reach_wall_clock(now));
            if fires {
                let stream_time = self.stream_time;
                let point = Seq::punctuation(round, slot);
                self.call_timed(slot, Timed::Punctuation(Punctuation::WallClock), now, stream_time, point)?;
            }
        }
        self.drain()
    }

    /// Calls `on-timer` on `slot` for the timer (`domain`, `key`, `at`) at
    /// stream time `stream_time`; its emissions go on at `seq`.
    pub(super) fn call_on_timer(
        &mut self,
        slot: usize,
        domain: TimeDomain,
        key: Vec<u8>,
        at: i64,
        now: i64,
        seq: Seq,
    ) -> Result<(), TaskError> {
        let stream_time = if domain == TimeDomain::StreamTime { now } else { self.stream_time };
        self.call_timed(slot, Timed::Timer(domain, key), at, stream_time, seq)
    }

    /// Calls `punctuate` or `on-timer` on `slot` at `timestamp` (what the
    /// guest's emits default to) and `stream_time`; its emissions go on at
    /// `seq`.
    fn call_timed(
        &mut self,
        slot: usize,
        call: Timed,
        timestamp: i64,
        stream_time: i64,
        seq: Seq,
    ) -> Result<(), TaskError> {
        self.ensure_instance(slot)?;
        let what = match &call {
            Timed::Punctuation(_) => {
                self.metrics.punctuations += 1;
                "punctuate"
            }
            Timed::Timer(..) => {
                self.metrics.timers_fired += 1;
                "on-timer"
            }
        };
        let time = crate::wasm::CallTime { stream_time, wall_clock: self.wall_clock };
        let instance = self.processors[slot].instance.as_mut().expect("instance ensured");
        let outcome = match call {
            Timed::Punctuation(kind) => instance.punctuate(&mut self.stores, time, kind, timestamp),
            Timed::Timer(domain, key) => instance.on_timer(&mut self.stores, time, domain, &key, timestamp),
        };
        match outcome {
            Ok(ok) => {
                self.stores.release_savepoint();
                self.apply_schedules(slot, &ok.schedules, stream_time);
                let origin = TaskRecord { timestamp, partition: self.id.partition, offset: -1, ..empty_record() };
                self.route(slot, &[Origin { seq, stream_time }], &[origin], ok.emitted);
                Ok(())
            }
            Err(failure) => {
                self.stores.rollback_to_savepoint();
                *self.metrics.failures.entry(failure.kind.as_str()).or_default() += 1;
                if failure.poisoned {
                    self.processors[slot].instance = None;
                }
                let name = self.processors[slot].name.clone();
                if failure.kind == FailureKind::HostFault {
                    return Err(TaskError::State(StateError { store: "(host)".into(), message: failure.message }));
                }
                if failure.poisoned && self.is_new_version(slot) {
                    return Err(TaskError::SwapFailed {
                        processor: name,
                        kind: failure.kind.as_str(),
                        message: failure.message,
                    });
                }
                let policy = self.app.topology.processor(self.processors[slot].node).expect("processor").on_error;
                tracing::warn!(task = %self.name, processor = %name, kind = failure.kind.as_str(), "{what} failed: {}", failure.message);
                if policy == ErrorPolicy::Fail {
                    return Err(TaskError::PunctuateFailed {
                        processor: name,
                        kind: failure.kind.as_str(),
                        message: failure.message,
                    });
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_schedules_align_to_multiples_and_skip_missed_intervals() {
        let mut s = Schedule::stream(1000, -1);
        assert!(!s.reach_stream_time(100), "the first record only sets the alignment");
        assert_eq!(s.next, Some(1000));
        assert!(!s.reach_stream_time(999));
        assert!(s.reach_stream_time(1100));
        assert_eq!(s.next, Some(2000));
        assert!(s.reach_stream_time(3500), "fires once for the jump over 2000 and 3000");
        assert_eq!(s.next, Some(4000));
        // Set at a known stream time (a restart): the same next firing as the
        // schedule that ran through, whatever happened before.
        assert_eq!(Schedule::stream(1000, 3500), s);
    }

    #[test]
    fn first_firing_finds_the_tick_without_changing_the_schedule() {
        let s = Schedule::stream(10, 3);
        let ticks = [(0, 4), (1, 9), (2, 10), (3, 25)];
        assert_eq!(first_firing(Some(s), &ticks), Some(2));
        assert_eq!(s.next, Some(10), "a copy was advanced, not the schedule");
        assert_eq!(first_firing(None, &ticks), None);
    }
}
