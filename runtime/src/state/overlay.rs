//! The open transaction's writes over committed state, with per-call savepoints.
//!
//! Four layers, read top-down: the current call's writes (`staging`), the
//! open transaction's writes (`pending`), the writes of a transaction being
//! committed (`committing`: a backend that commits in the background freezes
//! pending there and processing goes on above it), committed state (`base`).
//! A successful call moves its staging into pending; a failed call drops it. Point
//! operations are hash lookups (the hot path of every processor); range scans,
//! which are rare, sort the matching pending entries on demand.

use std::collections::HashMap;
use std::ops::Bound;

use super::{Entries, SharedStore, StateError};

type Map = HashMap<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>;

/// One store partition as a task sees it: committed state plus pending writes.
pub struct StoreOverlay {
    name: String,
    base: SharedStore,
    /// Writes of the open transaction: the last value per key (`None` = delete).
    pending: Map,
    /// Writes of the current call, not yet kept.
    staging: Map,
    /// Writes of the transaction being committed (frozen by [`Self::freeze`]),
    /// until the backend says it committed them or gave them up.
    committing: Map,
    /// Read-only stores (global tables) refuse writes.
    read_only: bool,
}

fn in_bounds(key: &[u8], start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    let above = match start {
        Bound::Included(s) => key >= s,
        Bound::Excluded(s) => key > s,
        Bound::Unbounded => true,
    };
    let below = match end {
        Bound::Included(e) => key <= e,
        Bound::Excluded(e) => key < e,
        Bound::Unbounded => true,
    };
    above && below
}

impl StoreOverlay {
    pub fn new(name: impl Into<String>, base: SharedStore) -> Self {
        StoreOverlay {
            name: name.into(),
            base,
            pending: Map::default(),
            staging: Map::default(),
            committing: Map::default(),
            read_only: false,
        }
    }

    /// A store nobody in the task may write (a global table's).
    pub fn read_only(name: impl Into<String>, base: SharedStore) -> Self {
        StoreOverlay { read_only: true, ..Self::new(name, base) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(v) = self.staging.get(key) {
            return Ok(v.clone());
        }
        match self.pending.get(key).or_else(|| self.committing.get(key)) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    /// Appends the value of `key` to `out`; false when there is none.
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
        let layered = self.staging.get(key).or_else(|| self.pending.get(key)).or_else(|| self.committing.get(key));
        match layered {
            Some(Some(v)) => {
                out.extend_from_slice(v);
                Ok(true)
            }
            Some(None) => Ok(false),
            None => self.base.get_into(key, out),
        }
    }

    /// Writes `value` for `key` (`None` deletes) in the current call.
    pub fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        debug_assert!(!self.read_only, "write to read-only store {}", self.name);
        self.staging.insert(key, value);
    }

    /// Entries within the bounds, pending writes merged over committed
    /// state, at most `limit`.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Entries, StateError> {
        let mut out: Entries = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // Uncommitted entries in the bounds, newest layer winning, in key order.
        let mut overlay: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .staging
            .iter()
            .chain(self.pending.iter().filter(|(k, _)| !self.staging.contains_key(*k)))
            .chain(
                self.committing
                    .iter()
                    .filter(|(k, _)| !self.staging.contains_key(*k) && !self.pending.contains_key(*k)),
            )
            .filter(|(k, _)| in_bounds(k, start, end))
            .collect();
        overlay.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut pending = overlay.into_iter().peekable();
        let mut cursor: Bound<Vec<u8>> = start.map(<[u8]>::to_vec);
        loop {
            // Deleted keys in the overlay can hide committed ones, so committed
            // state is read page by page until enough entries survive.
            let page = self.base.range(cursor.as_ref().map(Vec::as_slice), end, limit)?;
            let exhausted = page.len() < limit;
            let last = page.last().map(|(k, _)| k.clone());
            for (key, value) in page {
                while let Some((pk, pv)) = pending.next_if(|(pk, _)| pk.as_slice() < key.as_slice()) {
                    if let Some(v) = pv {
                        out.push((pk.clone(), v.clone()));
                    }
                }
                match pending.next_if(|(pk, _)| pk.as_slice() == key.as_slice()) {
                    Some((_, Some(v))) => out.push((key, v.clone())),
                    Some((_, None)) => {}
                    None => out.push((key, value)),
                }
                if out.len() >= limit {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
            if exhausted {
                for (pk, pv) in pending {
                    if let Some(v) = pv {
                        out.push((pk.clone(), v.clone()));
                    }
                }
                out.truncate(limit);
                return Ok(out);
            }
            cursor = Bound::Excluded(last.expect("a full page has a last entry"));
        }
    }

    /// Keeps the writes of the current call.
    pub fn release_savepoint(&mut self) {
        if self.pending.is_empty() {
            std::mem::swap(&mut self.pending, &mut self.staging);
        } else {
            self.pending.extend(self.staging.drain());
        }
    }

    /// Undoes every write since the last savepoint.
    pub fn rollback_to_savepoint(&mut self) {
        self.staging.clear();
    }

    /// Freezes the open transaction's writes for a commit: they move to the
    /// committing layer, and later writes start a new pending set above it.
    /// The backend then calls [`Self::committed`] or [`Self::discard`].
    pub fn freeze(&mut self) {
        debug_assert!(self.committing.is_empty(), "a commit of {} is already in flight", self.name);
        debug_assert!(self.staging.is_empty(), "freeze of {} inside a call", self.name);
        std::mem::swap(&mut self.pending, &mut self.committing);
    }

    /// The frozen writes (last value per key) in key order, for the commit.
    pub fn committing(&self) -> Vec<(&Vec<u8>, &Option<Vec<u8>>)> {
        let mut writes: Vec<_> = self.committing.iter().collect();
        writes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        writes
    }

    /// The backend committed the frozen writes: they are in committed state
    /// now. Writes made since the freeze stay pending.
    pub fn committed(&mut self) {
        self.committing.clear();
    }

    /// Forgets every uncommitted write, frozen or not: the backend aborted
    /// the transaction (or the one being committed failed).
    pub fn discard(&mut self) {
        self.pending.clear();
        self.staging.clear();
        self.committing.clear();
    }

    /// Writes of the open transaction wait for a commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The committed layer.
    pub fn base(&self) -> &SharedStore {
        &self.base
    }
}

/// Every store partition of one task, indexed like the task's store list.
#[derive(Default)]
pub struct TaskStores {
    stores: Vec<StoreOverlay>,
}

impl TaskStores {
    pub fn new(stores: Vec<StoreOverlay>) -> Self {
        TaskStores { stores }
    }

    pub fn get(&self, index: usize) -> &StoreOverlay {
        &self.stores[index]
    }

    pub fn get_mut(&mut self, index: usize) -> &mut StoreOverlay {
        &mut self.stores[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &StoreOverlay> {
        self.stores.iter()
    }

    pub fn len(&self) -> usize {
        self.stores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    pub fn release_savepoint(&mut self) {
        self.stores.iter_mut().for_each(StoreOverlay::release_savepoint);
    }

    pub fn rollback_to_savepoint(&mut self) {
        self.stores.iter_mut().for_each(StoreOverlay::rollback_to_savepoint);
    }

    pub fn freeze(&mut self) {
        self.stores.iter_mut().for_each(StoreOverlay::freeze);
    }

    pub fn committed(&mut self) {
        self.stores.iter_mut().for_each(StoreOverlay::committed);
    }

    pub fn discard(&mut self) {
        self.stores.iter_mut().for_each(StoreOverlay::discard);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::memory::MemoryStore;

    fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn store_with(entries: &[(&str, &str)]) -> (Arc<MemoryStore>, StoreOverlay) {
        let base = Arc::new(MemoryStore::default());
        for (k, v) in entries {
            base.put(k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()));
        }
        let overlay = StoreOverlay::new("s", base.clone());
        (base, overlay)
    }

    #[test]
    fn reads_see_own_writes_and_deletes() {
        let (_, mut s) = store_with(&[("a", "1"), ("b", "2")]);
        s.write(b"a".to_vec(), Some(b"9".to_vec()));
        s.write(b"b".to_vec(), None);
        assert_eq!(s.get(b"a").unwrap(), Some(b"9".to_vec()));
        assert_eq!(s.get(b"b").unwrap(), None);
        s.release_savepoint();
        assert_eq!(s.get(b"a").unwrap(), Some(b"9".to_vec()));
        assert_eq!(s.get(b"b").unwrap(), None);
    }

    #[test]
    fn rollback_restores_the_state_before_the_call() {
        let (_, mut s) = store_with(&[("a", "1")]);
        s.write(b"a".to_vec(), Some(b"2".to_vec()));
        s.release_savepoint();
        s.write(b"a".to_vec(), Some(b"3".to_vec()));
        s.write(b"a".to_vec(), None);
        s.write(b"c".to_vec(), Some(b"x".to_vec()));
        s.rollback_to_savepoint();
        assert_eq!(s.get(b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(s.get(b"c").unwrap(), None);
        s.freeze();
        assert_eq!(s.committing().len(), 1);
    }

    #[test]
    fn range_merges_pending_over_committed_in_order() {
        let (_, mut s) = store_with(&[("a", "1"), ("c", "3"), ("e", "5"), ("g", "7")]);
        s.write(b"b".to_vec(), Some(b"2".to_vec()));
        s.write(b"c".to_vec(), None);
        s.release_savepoint();
        s.write(b"e".to_vec(), Some(b"50".to_vec()));
        s.write(b"h".to_vec(), Some(b"8".to_vec()));
        let all = s.range(Bound::Unbounded, Bound::Unbounded, 100).unwrap();
        assert_eq!(all, vec![kv("a", "1"), kv("b", "2"), kv("e", "50"), kv("g", "7"), kv("h", "8")]);
        let some = s.range(Bound::Included(b"b"), Bound::Excluded(b"g"), 100).unwrap();
        assert_eq!(some, vec![kv("b", "2"), kv("e", "50")]);
    }

    /// Differential check against a plain map on random operations, with
    /// small limits so paging and hidden deletes are exercised, across
    /// kept and rolled-back calls.
    #[test]
    fn range_and_get_match_a_reference_map() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _round in 0..300 {
            let (base, mut s) = store_with(&[]);
            let mut reference = std::collections::BTreeMap::new();
            for _ in 0..(next() % 40) {
                let k = vec![b'a' + (next() % 20) as u8];
                base.put(k.clone(), Some(k.clone()));
                reference.insert(k.clone(), k);
            }
            // A commit may be frozen part way (its writes then sit in the
            // committing layer under later calls' writes).
            let freeze_after = next() % 5;
            for call in 0..(next() % 4) {
                if call == freeze_after {
                    s.freeze();
                }
                let keep = next() % 3 != 0;
                let mut call_reference = reference.clone();
                for _ in 0..(next() % 20) {
                    let k = vec![b'a' + (next() % 20) as u8];
                    if next() % 3 == 0 {
                        s.write(k.clone(), None);
                        call_reference.remove(&k);
                    } else {
                        let v = vec![b'0' + (next() % 10) as u8];
                        s.write(k.clone(), Some(v.clone()));
                        call_reference.insert(k, v);
                    }
                }
                if keep {
                    s.release_savepoint();
                    reference = call_reference;
                } else {
                    s.rollback_to_savepoint();
                }
            }
            let limit = 1 + (next() % 8) as usize;
            let lo = vec![b'a' + (next() % 20) as u8];
            let got = s.range(Bound::Included(&lo), Bound::Unbounded, limit).unwrap();
            let want: Vec<_> = reference.range(lo.clone()..).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(got, want, "limit {limit} from {lo:?}");
            for k in b'a'..b'a' + 20 {
                assert_eq!(s.get(&[k]).unwrap(), reference.get(&vec![k]).cloned());
            }
        }
    }

    #[test]
    fn frozen_writes_stay_readable_under_later_ones_until_committed_or_discarded() {
        let (base, mut s) = store_with(&[("a", "1"), ("c", "3")]);
        s.write(b"a".to_vec(), Some(b"2".to_vec()));
        s.write(b"b".to_vec(), Some(b"1".to_vec()));
        s.release_savepoint();
        s.freeze();
        assert!(!s.has_pending(), "frozen writes are not the open transaction's");
        let frozen: Vec<_> = s.committing().into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(frozen, vec![(b"a".to_vec(), Some(b"2".to_vec())), (b"b".to_vec(), Some(b"1".to_vec()))]);
        // Processing goes on above the commit in flight.
        s.write(b"a".to_vec(), Some(b"3".to_vec()));
        s.write(b"b".to_vec(), None);
        s.release_savepoint();
        assert_eq!(s.get(b"a").unwrap(), Some(b"3".to_vec()));
        assert_eq!(s.get(b"b").unwrap(), None);
        assert_eq!(s.range(Bound::Unbounded, Bound::Unbounded, 10).unwrap(), vec![kv("a", "3"), kv("c", "3")]);
        // The commit succeeded: the backend wrote the frozen writes to committed state.
        base.put(b"a".to_vec(), Some(b"2".to_vec()));
        base.put(b"b".to_vec(), Some(b"1".to_vec()));
        s.committed();
        assert!(s.has_pending());
        assert_eq!(s.get(b"a").unwrap(), Some(b"3".to_vec()));
        assert_eq!(s.get(b"b").unwrap(), None);
        // The next commit fails: frozen and open writes are all gone.
        s.freeze();
        s.write(b"d".to_vec(), Some(b"4".to_vec()));
        s.release_savepoint();
        s.discard();
        assert_eq!(s.get(b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(s.get(b"b").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(b"d").unwrap(), None);
        assert!(s.committing().is_empty() && !s.has_pending());
    }
}
