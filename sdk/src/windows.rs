//! Windows over event time: tumbling, hopping and session windows with a
//! grace period, results emitted when a window closes (Kafka Streams'
//! `suppress(untilWindowCloses)`) or on every update, late records sent to
//! an output or dropped and counted.
//!
//! Built on what the host gives every 0.2.0 processor: each record's stream
//! time, a store, and durable timers. A [`WindowedAggregate`] keeps one
//! entry per (window start, key) in a *window store* (`window: { retention:
//! ... }` in the spec; the host deletes entries older than the retention and
//! keeps the changelog compacted and time-limited) and sets one stream-time
//! timer per window at its close, which emits (or only drops) the window's
//! entries. A [`SessionAggregate`] keeps one entry per (key, session start)
//! in a plain store and one timer per session. Both give the same output
//! however the input is batched, crashed or restarted: closing is driven by
//! timers, which fire at a point fixed by the input alone.
//!
//! **The rules** (those of Kafka Streams unless said otherwise):
//! - a time window `[start, start + size)` closes when stream time reaches
//!   `start + size + grace`; a record is late for it when it arrives at or
//!   after that; a record late for every window it falls in is late;
//! - a session is the records of a key with gaps of less than `gap` between
//!   them (a record at distance `gap` or more starts a new session; one
//!   within `gap` of two sessions merges them); it closes when stream time
//!   reaches `end + gap + grace` (no record on time can extend it after
//!   `end + gap`, and grace admits late ones); a record is late when
//!   `timestamp + grace < stream time`, as in Kafka Streams (a record that
//!   much out of order could belong to a session already closed);
//! - a closed window's result is emitted once, to the aggregate's output,
//!   keyed by the record key, valued `{"key", "start", "end", "value"}`
//!   ([`WindowResult`]), timestamped `end - 1` (sessions: `end`).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{KeyDecode, KeyEncode};
use crate::{Context, Error, Record, Result, TimeDomain, Timer};

/// The first bytes of the timer keys windows set, so that `on_timer` tells
/// them from the processor's own timers.
const TIMER_PREFIX: &[u8] = b"\xffweir.window\x00";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Tumbling (`advance == size`) or hopping windows of a fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWindows {
    size: i64,
    advance: i64,
    grace: i64,
}

impl TimeWindows {
    /// Windows of `size`, one after the other (no grace: set one with
    /// [`grace`](Self::grace)).
    pub fn tumbling(size: Duration) -> Self {
        let size = millis(size).max(1);
        TimeWindows { size, advance: size, grace: 0 }
    }

    /// Windows of `size` starting every `advance` (overlapping when `advance
    /// < size`: a record falls into `size / advance` of them).
    pub fn hopping(size: Duration, advance: Duration) -> Self {
        let size = millis(size).max(1);
        TimeWindows { size, advance: millis(advance).clamp(1, size), grace: 0 }
    }

    /// How long after its end a window still takes records.
    pub fn grace(self, grace: Duration) -> Self {
        TimeWindows { grace: millis(grace), ..self }
    }

    pub fn size(&self) -> i64 {
        self.size
    }

    /// How long a window store must keep a window: size + grace (the
    /// `retention` of the store in the spec).
    pub fn retention(&self) -> i64 {
        self.size.saturating_add(self.grace)
    }

    /// Starts of the windows `timestamp` falls in, oldest first.
    pub fn starts(&self, timestamp: i64) -> impl Iterator<Item = i64> {
        let last = timestamp - timestamp.rem_euclid(self.advance);
        let first = last - (self.size - 1) / self.advance * self.advance;
        let (size, advance) = (self.size, self.advance);
        (0..)
            .map(move |i| first + i * advance)
            .take_while(move |s| *s <= last)
            .filter(move |s| *s <= timestamp && timestamp < s + size)
    }

    /// When the window starting at `start` closes.
    pub fn closes_at(&self, start: i64) -> i64 {
        start.saturating_add(self.size).saturating_add(self.grace)
    }
}

/// Session windows: activity of a key separated by gaps of at least `gap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionWindows {
    gap: i64,
    grace: i64,
}

impl SessionWindows {
    pub fn with_gap(gap: Duration) -> Self {
        SessionWindows { gap: millis(gap).max(1), grace: 0 }
    }

    pub fn grace(self, grace: Duration) -> Self {
        SessionWindows { grace: millis(grace), ..self }
    }

    fn closes_at(&self, end: i64) -> i64 {
        end.saturating_add(self.gap).saturating_add(self.grace)
    }
}

/// When a window's result is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// Once, when the window closes (the default).
    OnClose,
    /// After every record that changed it (and nothing at close).
    OnUpdate,
}

/// What happens to a record too late for any window (or join): forwarded
/// unchanged to an output, or dropped and counted. Shared by the windows and
/// [`StreamJoin`](crate::join::StreamJoin).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LateRecords {
    /// `None`: dropped.
    output: Option<String>,
    /// Dropped by this instance (not kept across restarts).
    dropped: u64,
}

impl LateRecords {
    pub(crate) fn to(output: &str) -> Self {
        LateRecords { output: Some(output.to_owned()), dropped: 0 }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Deals with one late record.
    pub(crate) fn take(&mut self, ctx: &mut Context, record: &Record) -> Result<()> {
        match &self.output {
            Some(output) => ctx.forward(output, record),
            None => {
                self.dropped += 1;
                Ok(())
            }
        }
    }
}

/// A window's result, as emitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WindowResult<V> {
    pub key: String,
    /// Inclusive.
    pub start: i64,
    /// Exclusive for time windows; the last record's timestamp for sessions.
    pub end: i64,
    pub value: V,
}

/// What [`WindowedAggregate::add`] did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// Into this many windows.
    Windows(usize),
    /// Late for every window it falls in.
    Late,
}

/// An aggregate per key and time window, in a window store.
#[derive(Clone, Debug)]
pub struct WindowedAggregate {
    store: String,
    windows: TimeWindows,
    emit: Emit,
    output: String,
    late: LateRecords,
}

impl WindowedAggregate {
    /// An aggregate kept in the window store `store`, emitting on close to
    /// the output `windows`, dropping late records.
    pub fn new(store: &str, windows: TimeWindows) -> Self {
        WindowedAggregate {
            store: store.to_owned(),
            windows,
            emit: Emit::OnClose,
            output: "windows".to_owned(),
            late: LateRecords::default(),
        }
    }

    /// When results are emitted.
    pub fn emit(self, emit: Emit) -> Self {
        WindowedAggregate { emit, ..self }
    }

    /// The output results go to.
    pub fn to(self, output: &str) -> Self {
        WindowedAggregate { output: output.to_owned(), ..self }
    }

    /// Late records go, unchanged, to `output`.
    pub fn late_to(self, output: &str) -> Self {
        WindowedAggregate { late: LateRecords::to(output), ..self }
    }

    /// Late records dropped by this instance (not kept across restarts).
    pub fn late(&self) -> u64 {
        self.late.dropped()
    }

    pub fn windows(&self) -> &TimeWindows {
        &self.windows
    }

    /// Folds `record` into every open window its timestamp falls in, keyed
    /// by its key: `fold(previous, record)`, `previous` `None` for a new
    /// window.
    pub fn add<V>(
        &mut self,
        ctx: &mut Context,
        record: &Record,
        mut fold: impl FnMut(Option<V>, &Record) -> Result<V>,
    ) -> Result<Added>
    where
        V: Serialize + DeserializeOwned,
    {
        let key = record.key_str()?.to_owned();
        let now = ctx.stream_time();
        let store = ctx.store::<(i64, String), V>(&self.store);
        let mut added = 0;
        for start in self.windows.starts(record.timestamp()) {
            let closes = self.windows.closes_at(start);
            if closes <= now {
                continue; // This window has closed.
            }
            let k = (start, key.clone());
            let value = fold(store.get(&k)?, record)?;
            store.put(&k, &value)?;
            ctx.set_timer(TimeDomain::StreamTime, self.timer_key(start), closes)?;
            if self.emit == Emit::OnUpdate {
                let result = WindowResult { key: key.clone(), start, end: start + self.windows.size, value };
                emit(ctx, &self.output, &result, record.timestamp())?;
            }
            added += 1;
        }
        if added == 0 {
            self.late.take(ctx, record)?;
            return Ok(Added::Late);
        }
        Ok(Added::Windows(added))
    }

    /// The value of `key` in the window starting at `start`, while it is open.
    pub fn get<V>(&self, ctx: &mut Context, key: &str, start: i64) -> Result<Option<V>>
    where
        V: Serialize + DeserializeOwned,
    {
        if self.windows.closes_at(start) <= ctx.stream_time() {
            return Ok(None);
        }
        ctx.store::<(i64, String), V>(&self.store).get(&(start, key.to_owned()))
    }

    /// Call from [`Processor::on_timer`](crate::Processor::on_timer): when
    /// `timer` is this aggregate's, closes its window (emitting every key's
    /// result when emitting on close, in key order) and returns true.
    pub fn on_timer<V>(&mut self, ctx: &mut Context, timer: &Timer) -> Result<bool>
    where
        V: Serialize + DeserializeOwned,
    {
        let Some(start) = self.parse_timer_key(&timer.key) else { return Ok(false) };
        let store = ctx.store::<(i64, String), V>(&self.store);
        let from = (start, String::new());
        let entries = store.range(Some(&from), Some(&(start + 1, String::new())))?;
        for ((_, key), value) in entries {
            store.delete(&(start, key.clone()))?;
            if self.emit == Emit::OnClose {
                let end = start + self.windows.size;
                emit(ctx, &self.output, &WindowResult { key, start, end, value }, end - 1)?;
            }
        }
        Ok(true)
    }

    fn timer_key(&self, start: i64) -> Vec<u8> {
        let mut k = TIMER_PREFIX.to_vec();
        k.extend_from_slice(self.store.as_bytes());
        k.push(0);
        start.encode_key(&mut k);
        k
    }

    fn parse_timer_key(&self, key: &[u8]) -> Option<i64> {
        let rest = key.strip_prefix(TIMER_PREFIX)?.strip_prefix(self.store.as_bytes())?.strip_prefix(&[0])?;
        i64::decode_key(rest).ok()
    }
}

fn emit<V: Serialize>(ctx: &mut Context, output: &str, result: &WindowResult<V>, timestamp: i64) -> Result<()> {
    ctx.emit_record(crate::Emitted::new_json(output, result.key.as_str(), result)?.at(timestamp))
}

/// One session of a key, as stored.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
struct Session<V> {
    end: i64,
    value: V,
}

/// An aggregate per key and session, in a plain store keyed by (key,
/// session start).
#[derive(Clone, Debug)]
pub struct SessionAggregate {
    store: String,
    windows: SessionWindows,
    emit: Emit,
    output: String,
    late: LateRecords,
}

impl SessionAggregate {
    /// Sessions kept in `store`, emitted on close to the output `sessions`,
    /// late records dropped.
    pub fn new(store: &str, windows: SessionWindows) -> Self {
        SessionAggregate {
            store: store.to_owned(),
            windows,
            emit: Emit::OnClose,
            output: "sessions".to_owned(),
            late: LateRecords::default(),
        }
    }

    pub fn emit(self, emit: Emit) -> Self {
        SessionAggregate { emit, ..self }
    }

    pub fn to(self, output: &str) -> Self {
        SessionAggregate { output: output.to_owned(), ..self }
    }

    pub fn late_to(self, output: &str) -> Self {
        SessionAggregate { late: LateRecords::to(output), ..self }
    }

    /// Late records dropped by this instance (not kept across restarts).
    pub fn late(&self) -> u64 {
        self.late.dropped()
    }

    /// Adds `record` to its key's session: merges every session within
    /// `gap` of it (`merge(a, b)`, older first) and folds the record in
    /// (`fold(previous, record)`, `None` for a new session).
    pub fn add<V>(
        &mut self,
        ctx: &mut Context,
        record: &Record,
        mut merge: impl FnMut(V, V) -> Result<V>,
        mut fold: impl FnMut(Option<V>, &Record) -> Result<V>,
    ) -> Result<Added>
    where
        V: Serialize + DeserializeOwned,
    {
        let key = record.key_str()?.to_owned();
        let ts = record.timestamp();
        if ts.saturating_add(self.windows.grace) < ctx.stream_time() {
            self.late.take(ctx, record)?;
            return Ok(Added::Late);
        }
        let store = ctx.store::<(String, i64), Session<V>>(&self.store);
        let sessions = store.range(Some(&(key.clone(), i64::MIN)), Some(&(key.clone(), i64::MAX)))?;
        let (mut start, mut end, mut merged): (i64, i64, Option<V>) = (ts, ts, None);
        for ((_, s), session) in sessions {
            // Within the gap of the record (on either side): one session.
            if s - ts < self.windows.gap && ts - session.end < self.windows.gap {
                store.delete(&(key.clone(), s))?;
                ctx.cancel_timer(TimeDomain::StreamTime, self.timer_key(&key, s), self.windows.closes_at(session.end))?;
                start = start.min(s);
                end = end.max(session.end);
                merged = Some(match merged {
                    None => session.value,
                    Some(m) => merge(m, session.value)?,
                });
            }
        }
        let value = fold(merged, record)?;
        if self.emit == Emit::OnUpdate {
            emit(ctx, &self.output, &WindowResult { key: key.clone(), start, end, value: &value }, end)?;
        }
        store.put(&(key.clone(), start), &Session { end, value })?;
        ctx.set_timer(TimeDomain::StreamTime, self.timer_key(&key, start), self.windows.closes_at(end))?;
        Ok(Added::Windows(1))
    }

    /// Call from [`Processor::on_timer`](crate::Processor::on_timer): when
    /// `timer` is this aggregate's, closes its session (emitting it when
    /// emitting on close) and returns true.
    pub fn on_timer<V>(&mut self, ctx: &mut Context, timer: &Timer) -> Result<bool>
    where
        V: Serialize + DeserializeOwned,
    {
        let Some((key, start)) = self.parse_timer_key(&timer.key) else { return Ok(false) };
        let store = ctx.store::<(String, i64), Session<V>>(&self.store);
        let Some(session) = store.get(&(key.clone(), start))? else {
            return Err(Error::msg(format!("session of `{key}` at {start} has a timer but no entry")));
        };
        store.delete(&(key.clone(), start))?;
        if self.emit == Emit::OnClose {
            let end = session.end;
            emit(ctx, &self.output, &WindowResult { key, start, end, value: session.value }, end)?;
        }
        Ok(true)
    }

    fn timer_key(&self, key: &str, start: i64) -> Vec<u8> {
        let mut k = TIMER_PREFIX.to_vec();
        k.extend_from_slice(self.store.as_bytes());
        k.push(0);
        (key.to_owned(), start).encode_key(&mut k);
        k
    }

    fn parse_timer_key(&self, key: &[u8]) -> Option<(String, i64)> {
        let rest = key.strip_prefix(TIMER_PREFIX)?.strip_prefix(self.store.as_bytes())?.strip_prefix(&[0])?;
        <(String, i64)>::decode_key(rest).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_and_hopping_windows_contain_their_timestamps() {
        let tumbling = TimeWindows::tumbling(Duration::from_secs(60));
        assert_eq!(tumbling.starts(61_000).collect::<Vec<_>>(), vec![60_000]);
        assert_eq!(tumbling.starts(-1).collect::<Vec<_>>(), vec![-60_000]);
        let hopping = TimeWindows::hopping(Duration::from_secs(60), Duration::from_secs(20));
        assert_eq!(hopping.starts(61_000).collect::<Vec<_>>(), vec![20_000, 40_000, 60_000]);
        assert_eq!(hopping.starts(60_000).collect::<Vec<_>>(), vec![20_000, 40_000, 60_000]);
        assert_eq!(hopping.starts(59_999).collect::<Vec<_>>(), vec![0, 20_000, 40_000]);
        let odd = TimeWindows::hopping(Duration::from_millis(50), Duration::from_millis(20));
        assert_eq!(odd.starts(45).collect::<Vec<_>>(), vec![0, 20, 40]);
        assert_eq!(odd.starts(55).collect::<Vec<_>>(), vec![20, 40]);
        assert_eq!(tumbling.grace(Duration::from_secs(10)).closes_at(60_000), 130_000);
    }

    use crate::testing::TestDriver;
    use crate::{Processor, Record};

    /// Counts per key in 60 s tumbling windows, 10 s grace, emitting on every update.
    struct OnUpdate(WindowedAggregate);

    impl Processor for OnUpdate {
        fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
            self.0.add(ctx, &rec, |n: Option<u64>, _| Ok(n.unwrap_or(0) + 1))?;
            Ok(())
        }
        fn on_timer(&mut self, ctx: &mut Context, timer: Timer) -> Result<()> {
            self.0.on_timer::<u64>(ctx, &timer)?;
            Ok(())
        }
    }

    #[test]
    fn on_update_emits_every_change_and_nothing_at_close_and_late_records_are_counted() {
        let windows = TimeWindows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10));
        let agg = WindowedAggregate::new("w", windows).emit(Emit::OnUpdate).to("out");
        let mut d = TestDriver::new(OnUpdate(agg)).with_store("w").with_outputs(["out"]);
        d.process(Record::new("a", "x").at(1_000)).unwrap();
        d.process(Record::new("a", "x").at(2_000)).unwrap();
        d.process(Record::new("b", "x").at(80_000)).unwrap(); // closes [0, 60s): nothing more for it
        d.process(Record::new("a", "x").at(3_000)).unwrap(); // late: dropped, counted
        let out: Vec<(String, i64, u64)> = d
            .emitted_to("out")
            .iter()
            .map(|e| e.json::<WindowResult<u64>>().unwrap())
            .map(|r| (r.key, r.start, r.value))
            .collect();
        assert_eq!(out, vec![("a".into(), 0, 1), ("a".into(), 0, 2), ("b".into(), 60_000, 1)]);
        assert_eq!(d.emitted_to("out")[1].timestamp, 2_000, "an update has its record's time");
        assert!(d.timers().iter().all(|t| t.timestamp == 130_000), "only b's window is left: {:?}", d.timers());
    }

    struct Sessions(SessionAggregate);

    impl Processor for Sessions {
        fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
            self.0.add(ctx, &rec, |a: u64, b: u64| Ok(a + b), |n: Option<u64>, _| Ok(n.unwrap_or(0) + 1))?;
            Ok(())
        }
        fn on_timer(&mut self, ctx: &mut Context, timer: Timer) -> Result<()> {
            self.0.on_timer::<u64>(ctx, &timer)?;
            Ok(())
        }
    }

    #[test]
    fn sessions_split_at_the_gap_merge_across_it_and_close_after_gap_plus_grace() {
        let windows = SessionWindows::with_gap(Duration::from_secs(10)).grace(Duration::from_secs(5));
        let mut d = TestDriver::new(Sessions(SessionAggregate::new("s", windows).to("out")))
            .with_store("s")
            .with_outputs(["out"]);
        d.process(Record::new("a", "x").at(0)).unwrap();
        d.process(Record::new("a", "x").at(10_000)).unwrap(); // exactly the gap: a new session
        d.process(Record::new("a", "x").at(5_000)).unwrap(); // within the gap of both: merged
        d.process(Record::new("z", "x").at(24_999)).unwrap();
        assert!(d.emitted_to("out").is_empty(), "closes at 10 s + 10 s + 5 s");
        d.process(Record::new("z", "x").at(25_000)).unwrap();
        let out: Vec<WindowResult<u64>> = d.emitted_to("out").iter().map(|e| e.json().unwrap()).collect();
        assert_eq!(out, vec![WindowResult { key: "a".into(), start: 0, end: 10_000, value: 3 }]);
    }
}
