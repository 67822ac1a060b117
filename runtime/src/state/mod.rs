//! State stores as a task sees them: committed state underneath
//! ([`StoreRead`]), the open transaction's writes on top ([`StoreOverlay`]).
//!
//! Durable state is a cache of the changelog, never the truth: nothing a task
//! writes reaches the committed layer until the backend has committed the
//! transaction that carries those writes. Until then they live in the
//! overlay, where the task's own reads see them. Within the overlay, each
//! guest call is a savepoint: a call that fails is rolled back exactly, so a
//! failed call never half-applies.

pub mod memory;
mod overlay;
pub mod rocks;

use std::ops::Bound;
use std::sync::Arc;

pub use overlay::{StoreOverlay, TaskStores};

/// Key-value pairs in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A failure of the storage underneath (disk, corruption): never the guest's
/// fault, never retried silently.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store `{store}`: {message}")]
pub struct StateError {
    pub store: String,
    pub message: String,
}

/// Read access to the committed state of one store partition.
pub trait StoreRead: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Appends the value of `key` to `out`; false when there is none. Saves
    /// a copy when the caller gathers many values into one buffer.
    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
        Ok(match self.get(key)? {
            Some(v) => {
                out.extend_from_slice(&v);
                true
            }
            None => false,
        })
    }
    /// At most `limit` entries within the bounds, in key order.
    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Entries, StateError>;
}

/// A shared handle on committed state.
pub type SharedStore = Arc<dyn StoreRead>;

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
