//! Durable per-key timers (contract 0.2.0; Flink's keyed timers, which
//! Kafka Streams does not have).
//!
//! A processor with `timers: true` in the spec owns a store
//! `<processor>.timers`, changelogged like any store of the task, so timers
//! survive crashes, restarts and rebalances with the rest of its state. A
//! timer is one entry, keyed by [`timer_key`]: domain, time, then the
//! guest's key, so a range scan yields due timers in order of time, then
//! key. A firing deletes the entry in the transaction of what `on-timer`
//! did: a timer fires exactly once in committed output.
//!
//! **When a stream-time timer fires** is a function of the input alone, as
//! everything in [`super::time`]: at the first *tick* (an input record that
//! advanced stream time) at or after the record that set it whose stream
//! time reached the timer's time, right after that record and what it
//! caused in this processor, before the stream-time punctuation of the same
//! point and before the next input record. A timer set in `on-timer` or
//! `punctuate` at a time already reached fires at the next tick.
//!
//! The host cannot know before a `process` call which timers the batch
//! will set. After the call it checks, from the index of the record that
//! set each one: when a timer falls due at a tick *inside* the batch (one
//! that comes before the batch's last record), the call is rolled back and
//! run again cut at that tick ([`Task::timer_falling_due`]); when it falls due
//! after the batch but before the next records, the next batch stops there. Timers usually
//! lie further ahead than one batch spans, so this is rare.
//!
//! **Wall-clock timers** fire between calls once the task's wall clock has
//! reached them, in order of time, then key (not replayable, like
//! wall-clock punctuation).

use std::ops::Bound;

use super::time::Seq;
use super::{Task, TaskError};
use crate::wasm::TimeDomain;

/// Most timers fired at one point; the rest fire at the next one (a guard
/// against a guest that sets timers faster than they can fire).
const MAX_FIRINGS_AT_ONCE: usize = 10_000;

/// The store key of a timer: domain (1 byte), time (8 bytes, big-endian,
/// sign bit flipped so that byte order is time order), then the key.
pub fn timer_key(domain: TimeDomain, at: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(domain_byte(domain));
    k.extend_from_slice(&order_preserving(at));
    k.extend_from_slice(key);
    k
}

fn domain_byte(domain: TimeDomain) -> u8 {
    match domain {
        TimeDomain::StreamTime => 0,
        TimeDomain::WallClock => 1,
    }
}

/// `at` as 8 bytes whose byte order is numeric order (the SDK's `i64` key
/// encoding).
pub(super) fn order_preserving(at: i64) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time and key of a timer's store key.
fn decode(k: &[u8]) -> Option<(i64, &[u8])> {
    let time: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    Some(((u64::from_be_bytes(time) ^ (1 << 63)) as i64, &k[9..]))
}

/// Most expired window entries deleted per commit (the rest go at the next).
const MAX_PURGE_PER_COMMIT: usize = 10_000;

impl Task {
    /// Deletes the entries of window stores (`retention:` in the spec)
    /// whose window started at or before stream time minus the retention:
    /// they are closed (the SDK's windows never read them again) and their
    /// close timer has fired. Done at commit, through the store overlay, so
    /// the changelog gets the deletes with the rest of the transaction.
    pub(super) fn purge_expired_windows(&mut self) {
        if self.stream_time < 0 {
            return;
        }
        for (slot, sid) in self.store_ids.clone().into_iter().enumerate() {
            let def = &self.app.topology.stores[sid];
            let Some(retention) = def.retention else { continue };
            let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            // Not past a timer of the owner still due (more fell due at once
            // than fire at one point): it may close one of these windows.
            let mut now = self.stream_time;
            if let crate::topology::StoreOwner::Processor(node) = def.owner
                && let Some(owner) = self.processors.iter().position(|p| p.node == node)
                && let Ok(Some(earliest)) = self.earliest_stream_timer(owner)
            {
                now = now.min(earliest.saturating_sub(1));
            }
            let Some(bound) = now.checked_sub(retention).and_then(|b| b.checked_add(1)) else { continue };
            let end = order_preserving(bound);
            let store = self.stores.get(slot);
            let expired = match store.range(Bound::Unbounded, Bound::Excluded(&end), MAX_PURGE_PER_COMMIT) {
                Ok(entries) => entries,
                Err(e) => {
                    // Left for the next commit: expired entries are only garbage.
                    tracing::warn!(task = %self.name, store = store.name(), error = %e, "cannot scan a window store for expired windows");
                    continue;
                }
            };
            let store = self.stores.get_mut(slot);
            for (k, _) in expired {
                store.write(k, None);
            }
        }
        self.stores.release_savepoint();
    }

    /// Due timers in the timer store `store` in `domain` at `now`: (time,
    /// key), in order.
    fn due_timers(&self, store: usize, domain: TimeDomain, now: i64) -> Result<Vec<(i64, Vec<u8>)>, TaskError> {
        let start = [domain_byte(domain)];
        // Up to `now` inclusive: below the first key of the next time.
        let end = match now.checked_add(1) {
            Some(next) => timer_key(domain, next, &[]),
            None => vec![domain_byte(domain) + 1],
        };
        let entries =
            self.stores.get(store).range(Bound::Included(&start), Bound::Excluded(&end), MAX_FIRINGS_AT_ONCE)?;
        Ok(entries.iter().filter_map(|(k, _)| decode(k).map(|(at, key)| (at, key.to_vec()))).collect())
    }

    /// The time of the earliest stream-time timer of `slot`, if any.
    fn earliest_stream_timer(&self, slot: usize) -> Result<Option<i64>, TaskError> {
        let Some(store) = self.processors[slot].timers else { return Ok(None) };
        let start = [domain_byte(TimeDomain::StreamTime)];
        let end = [domain_byte(TimeDomain::StreamTime) + 1];
        let first = self.stores.get(store).range(Bound::Included(&start), Bound::Excluded(&end), 1)?;
        Ok(first.first().and_then(|(k, _)| decode(k)).map(|(at, _)| at))
    }

    /// Index in `ticks` of the first tick, of an input from `from` on, at
    /// which a stored timer of `slot` fires.
    pub(super) fn first_timer_tick(
        &self,
        slot: usize,
        ticks: &[(u64, i64)],
        from: u64,
    ) -> Result<Option<usize>, TaskError> {
        let Some(earliest) = self.earliest_stream_timer(slot)? else { return Ok(None) };
        Ok(ticks.iter().position(|&(input, time)| input >= from && time >= earliest))
    }

    /// For stream-time timers a `process` call set (time, index of the
    /// record that set it): the input sequence number of the first tick of
    /// this drain at which one falls due, and whether that tick lies inside
    /// the batch (before its last record).
    pub(super) fn timer_falling_due(
        &self,
        slot: usize,
        origins: &[super::time::Origin],
        set: &[(i64, u32)],
    ) -> Option<(u64, bool)> {
        let last = origins.last()?.seq;
        set.iter()
            .filter_map(|&(at, index)| {
                let from = origins.get(index as usize)?.seq.input;
                let &(input, _) = self.ticks.iter().find(|&&(input, time)| input >= from && time >= at)?;
                Some((input, Seq::punctuation(input, slot) < last))
            })
            .min()
    }

    /// Fires the stream-time timers of `slot` due at stream time `now`, at
    /// `seq` (the tick's punctuation point).
    pub(super) fn fire_stream_timers(&mut self, slot: usize, now: i64, seq: Seq) -> Result<(), TaskError> {
        self.fire_timers(slot, TimeDomain::StreamTime, now, seq)
    }

    /// Fires the wall-clock timers of every processor due at `now`.
    pub(super) fn fire_wall_timers(&mut self, now: i64, round: u64) -> Result<(), TaskError> {
        for slot in 0..self.processors.len() {
            self.fire_timers(slot, TimeDomain::WallClock, now, Seq::punctuation(round, slot))?;
        }
        Ok(())
    }

    fn fire_timers(&mut self, slot: usize, domain: TimeDomain, now: i64, seq: Seq) -> Result<(), TaskError> {
        let Some(store) = self.processors[slot].timers else { return Ok(()) };
        for (at, key) in self.due_timers(store, domain, now)? {
            if self.stores.get(store).get(&timer_key(domain, at, &key))?.is_none() {
                continue; // Cancelled by an `on-timer` that fired before it.
            }
            self.call_on_timer(slot, domain, key.clone(), at, now, seq)?;
            // Gone whether the call succeeded or its failure was skipped by
            // the error policy (a failure under `fail` aborted the task's
            // transaction, the timer with it).
            self.stores.get_mut(store).write(timer_key(domain, at, &key), None);
            self.stores.release_savepoint();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_keys_sort_by_domain_then_time_then_key() {
        let keys = [
            timer_key(TimeDomain::StreamTime, i64::MIN, b"z"),
            timer_key(TimeDomain::StreamTime, -5, b"a"),
            timer_key(TimeDomain::StreamTime, 0, b""),
            timer_key(TimeDomain::StreamTime, 0, b"a"),
            timer_key(TimeDomain::StreamTime, 7, b"a"),
            timer_key(TimeDomain::StreamTime, i64::MAX, b"a"),
            timer_key(TimeDomain::WallClock, i64::MIN, b"a"),
        ];
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert_eq!(decode(&keys[1]), Some((-5, &b"a"[..])));
        assert_eq!(decode(&keys[5]), Some((i64::MAX, &b"a"[..])));
    }
}
