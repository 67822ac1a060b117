//! Committed state in memory: the store of the in-memory backend (`weir
//! test`) and of global tables there.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::{Entries, StateError, StoreRead};

/// An in-memory committed store partition.
#[derive(Default, Debug)]
pub struct MemoryStore {
    data: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    /// Applies committed writes (`None` deletes).
    pub fn apply<'a>(&self, writes: impl IntoIterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>) {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        for (k, v) in writes {
            match v {
                Some(v) => data.insert(k.clone(), v.clone()),
                None => data.remove(k),
            };
        }
    }

    /// Writes one entry directly (global tables, tests).
    pub fn put(&self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        match value {
            Some(v) => data.insert(key, v),
            None => data.remove(&key),
        };
    }

    pub fn len(&self) -> usize {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StoreRead for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned())
    }

    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        Ok(data.get(key).map(|v| out.extend_from_slice(v)).is_some())
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Entries, StateError> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        Ok(data.range::<[u8], _>((start, end)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}
