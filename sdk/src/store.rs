//! Typed access to the state stores granted to a processor.
//!
//! A [`Store`] is a cheap handle: open it with
//! [`Context::store`](crate::Context::store) whenever needed, or once in
//! `init` and keep it. Reads see every write of the current transaction.
//!
//! Inside a component, each store keeps a write-back cache for the duration
//! of one host call (one batch): repeated reads of a key cost one host call,
//! and all writes of the batch reach the host in a single `write-many`. The
//! cache is dropped at the end of every call, so the host stays the only
//! source of truth between calls.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, Json, KeyDecode, KeyEncode};
use crate::{Error, Result};

/// Raw byte-level operations of a store; implemented over the host (inside a
/// component) and over memory (the native test harness).
pub(crate) trait RawStore {
    fn get(&mut self, key: &[u8]) -> Result<Option<&[u8]>>;
    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Result<()>;
    fn range(&mut self, start: Option<&[u8]>, end: Option<&[u8]>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Ends the current host call: flush writes (component) or commit/roll
    /// back the call's writes (harness), then forget any cached reads.
    fn end_call(&mut self, success: bool) -> Result<()>;
    /// Offered the batch's record keys before the first record (`keys`
    /// visits them); a store may fetch them in one go.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    fn prefetch(&mut self, keys: &mut KeyVisitor<'_>) {
        let _ = keys;
    }
}

pub(crate) type SharedRawStore = Rc<RefCell<dyn RawStore>>;

/// Visits the record keys of a batch: called with a callback for each key.
pub(crate) type KeyVisitor<'a> = dyn FnMut(&mut dyn FnMut(&[u8])) + 'a;

/// The type parameters of a [`Store`], without owning any of them.
type StoreTypes<K, V, C> = PhantomData<fn() -> (K, V, C)>;

/// A typed handle on one named store. `K` is the key type (text, bytes or an
/// integer: see [`codec`](crate::codec)), `V` the value type and `C` the
/// value [`Codec`] (JSON unless chosen otherwise).
pub struct Store<K, V, C = Json> {
    name: Rc<str>,
    raw: std::result::Result<SharedRawStore, Rc<str>>,
    _types: StoreTypes<K, V, C>,
}

impl<K, V, C> Clone for Store<K, V, C> {
    fn clone(&self) -> Self {
        Store { name: self.name.clone(), raw: self.raw.clone(), _types: PhantomData }
    }
}

/// How many entries a scan fetches from the host per call.
const SCAN_PAGE: u32 = 256;

impl<K, V, C> Store<K, V, C>
where
    V: Serialize + DeserializeOwned,
    C: Codec,
{
    pub(crate) fn new(name: Rc<str>, raw: std::result::Result<SharedRawStore, String>) -> Self {
        Store { name, raw: raw.map_err(Rc::from), _types: PhantomData }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn raw(&self) -> Result<std::cell::RefMut<'_, dyn RawStore>> {
        match &self.raw {
            Ok(raw) => Ok(raw.borrow_mut()),
            Err(message) => Err(Error::msg(message)),
        }
    }

    /// The value of `key`, or `None`.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        let mut raw = self.raw()?;
        match raw.get(&key.key_bytes())? {
            None => Ok(None),
            Some(b) => C::decode(b).map(Some).map_err(|e| e.context(format_args!("store `{}`", self.name))),
        }
    }

    /// Sets `key` to `value`.
    pub fn put<Q>(&self, key: &Q, value: &V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        let encoded = C::encode(value)?;
        self.raw()?.write(&key.key_bytes(), Some(encoded))
    }

    /// Deletes `key`.
    pub fn delete<Q>(&self, key: &Q) -> Result<()>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
    {
        self.raw()?.write(&key.key_bytes(), None)
    }

    /// Reads `key`, applies `f`, and writes the result back (`None` deletes).
    /// Returns the new value.
    pub fn update<Q>(&self, key: &Q, f: impl FnOnce(Option<V>) -> Option<V>) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: KeyEncode + ?Sized,
        V: Clone,
    {
        let new = f(self.get(key)?);
        match &new {
            Some(v) => self.put(key, v)?,
            None => self.delete(key)?,
        }
        Ok(new)
    }

    /// Entries with `start <= key < end` in key order (`None` = unbounded).
    pub fn range<Q>(&self, start: Option<&Q>, end: Option<&Q>) -> Result<Vec<(K, V)>>
    where
        K: Borrow<Q> + KeyDecode,
        Q: KeyEncode + ?Sized,
    {
        let start = start.map(KeyEncode::to_key_bytes);
        let end = end.map(KeyEncode::to_key_bytes);
        self.scan(start, end.as_deref(), |_| true)
    }

    /// Entries whose encoded key starts with the encoding of `prefix`
    /// (for text keys: the keys starting with that text).
    pub fn prefix<Q>(&self, prefix: &Q) -> Result<Vec<(K, V)>>
    where
        K: Borrow<Q> + KeyDecode,
        Q: KeyEncode + ?Sized,
    {
        let prefix = prefix.to_key_bytes();
        let end = prefix_end(&prefix);
        let start = Some(prefix.clone());
        self.scan(start, end.as_deref(), |k| k.starts_with(&prefix))
    }

    /// Every entry of the store (for this task's partition), in key order.
    pub fn all(&self) -> Result<Vec<(K, V)>>
    where
        K: KeyDecode,
    {
        self.scan(None, None, |_| true)
    }

    fn scan(&self, mut start: Option<Vec<u8>>, end: Option<&[u8]>, keep: impl Fn(&[u8]) -> bool) -> Result<Vec<(K, V)>>
    where
        K: KeyDecode,
    {
        let mut out = Vec::new();
        loop {
            let page = self.raw()?.range(start.as_deref(), end, SCAN_PAGE)?;
            let full = page.len() == SCAN_PAGE as usize;
            let mut last = None;
            for (k, v) in page {
                if keep(&k) {
                    out.push((K::decode_key(&k)?, C::decode(&v)?));
                }
                last = Some(k);
            }
            match (full, last) {
                (true, Some(mut k)) => {
                    k.push(0);
                    start = Some(k);
                }
                _ => return Ok(out),
            }
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when no such key exists (prefix empty or all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
