//! The open transaction's writes over committed state, with per-call savepoints.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Entries, SharedStore, StateError};

/// One store partition as a task sees it: committed state plus pending writes.
pub struct StoreOverlay {
    name: String,
    base: SharedStore,
    /// Writes since the last commit: the last value per key (`None` = delete).
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// For rollback of the current call: each written key with its previous
    /// pending entry (`None` = the key was not pending).
    undo: Vec<(Vec<u8>, Option<Option<Vec<u8>>>)>,
    /// Read-only stores (global tables) refuse writes.
    read_only: bool,
}

impl StoreOverlay {
    pub fn new(name: impl Into<String>, base: SharedStore) -> Self {
        StoreOverlay { name: name.into(), base, pending: BTreeMap::new(), undo: Vec::new(), read_only: false }
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
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    /// Writes `value` for `key` (`None` deletes).
    pub fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        debug_assert!(!self.read_only, "write to read-only store {}", self.name);
        let previous = self.pending.insert(key.clone(), value);
        self.undo.push((key, previous));
    }

    /// Entries within the bounds, pending writes merged over committed
    /// state, at most `limit`.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Entries, StateError> {
        let mut out: Entries = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut pending = self.pending.range::<[u8], _>((start, end)).peekable();
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
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
                return Ok(out);
            }
            cursor = Bound::Excluded(last.expect("a full page has a last entry"));
        }
    }

    /// Keeps the writes of the current call.
    pub fn release_savepoint(&mut self) {
        self.undo.clear();
    }

    /// Undoes every write since the last savepoint.
    pub fn rollback_to_savepoint(&mut self) {
        while let Some((key, previous)) = self.undo.pop() {
            match previous {
                Some(v) => self.pending.insert(key, v),
                None => self.pending.remove(&key),
            };
        }
    }

    /// The pending writes (last value per key), for the commit.
    pub fn pending(&self) -> &BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        &self.pending
    }

    /// Forgets pending writes: after the backend committed them (they are
    /// now in committed state) or aborted the transaction.
    pub fn clear_pending(&mut self) {
        self.pending.clear();
        self.undo.clear();
    }

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

    pub fn clear_pending(&mut self) {
        self.stores.iter_mut().for_each(StoreOverlay::clear_pending);
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
        assert_eq!(s.pending().len(), 1);
    }

    #[test]
    fn range_merges_pending_over_committed_in_order() {
        let (_, mut s) = store_with(&[("a", "1"), ("c", "3"), ("e", "5"), ("g", "7")]);
        s.write(b"b".to_vec(), Some(b"2".to_vec()));
        s.write(b"c".to_vec(), None);
        s.write(b"e".to_vec(), Some(b"50".to_vec()));
        s.write(b"h".to_vec(), Some(b"8".to_vec()));
        let all = s.range(Bound::Unbounded, Bound::Unbounded, 100).unwrap();
        assert_eq!(all, vec![kv("a", "1"), kv("b", "2"), kv("e", "50"), kv("g", "7"), kv("h", "8")]);
        let some = s.range(Bound::Included(b"b"), Bound::Excluded(b"g"), 100).unwrap();
        assert_eq!(some, vec![kv("b", "2"), kv("e", "50")]);
    }

    /// Differential check against a plain map on random operations, with
    /// small limits so paging and hidden deletes are exercised.
    #[test]
    fn range_matches_a_reference_map() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _round in 0..200 {
            let (base, mut s) = store_with(&[]);
            let mut reference = std::collections::BTreeMap::new();
            for _ in 0..(next() % 40) {
                let k = vec![b'a' + (next() % 20) as u8];
                base.put(k.clone(), Some(k.clone()));
                reference.insert(k.clone(), k);
            }
            for _ in 0..(next() % 40) {
                let k = vec![b'a' + (next() % 20) as u8];
                if next() % 3 == 0 {
                    s.write(k.clone(), None);
                    reference.remove(&k);
                } else {
                    let v = vec![b'0' + (next() % 10) as u8];
                    s.write(k.clone(), Some(v.clone()));
                    reference.insert(k, v);
                }
            }
            let limit = 1 + (next() % 8) as usize;
            let lo = vec![b'a' + (next() % 20) as u8];
            let got = s.range(Bound::Included(&lo), Bound::Unbounded, limit).unwrap();
            let want: Vec<_> =
                reference.range(lo.clone()..).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(got, want, "limit {limit} from {lo:?}");
        }
    }
}
