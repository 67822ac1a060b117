//! RocksDB: the on-disk layout weir shares between its backends.
//!
//! One database per data directory, three column families:
//!
//! - `meta`: small records: the format marker, topics, consumer positions,
//!   deployed applications, the store registry and changelog checkpoints.
//! - `state`: every store partition of every application, as
//!   `store id (u32 BE) ‖ partition (u32 BE) ‖ user key`.
//! - `log`: the embedded backend's topics, as
//!   `topic id (u32 BE) ‖ partition (u32 BE) ‖ offset (u64 BE)`.
//!
//! Why one `state` family with a key prefix per (store, partition) rather
//! than a column family per store: applications and their stores come and go
//! at run time, and every column family costs its own memtable (tens of MiB)
//! and file set; a prefix costs 8 bytes per key. A partition's data stays
//! contiguous, so scans stay within it and a partition that moves away (Kafka
//! rebalance) is dropped with one range delete. And one database means one
//! write batch can atomically cover outputs, state and positions, which is
//! the embedded backend's whole exactly-once story.
//!
//! Versioning: `meta` holds `format = weir-data/1`, and every registered
//! store records its own store format. A data directory written by another
//! format is refused, never misread.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions};

use super::{Entries, StateError, StoreRead};

/// The data format this weir writes and reads.
pub const DATA_FORMAT: &str = "weir-data/1";
/// The store format (key layout and value encoding) of registered stores.
pub const STORE_FORMAT: u32 = 1;

pub const CF_META: &str = "meta";
pub const CF_STATE: &str = "state";
pub const CF_LOG: &str = "log";

/// Why a data directory cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data dir {path} is not a weir data dir: it holds files but no weir database{hint}; weir will not touch it \
         (choose an empty or new directory)"
    )]
    Foreign { path: String, hint: String },
    #[error(
        "data dir {path} was written in format `{found}`, this weir reads `{DATA_FORMAT}`; refusing to run on it \
         (use the weir version that wrote it)"
    )]
    Format { path: String, found: String },
    #[error(
        "data dir {path} is damaged or unreadable: {message}; weir will not run on inconsistent state (restore it \
         from a backup, or move it away to start empty)"
    )]
    Damaged { path: String, message: String },
    #[error("data dir {path}: {message}")]
    Io { path: String, message: String },
}

/// The database of one data directory.
pub struct Db {
    db: DB,
    path: PathBuf,
    write: WriteOptions,
}

impl Db {
    /// Opens (or creates, when the directory is missing or empty) the
    /// database, and checks its format.
    pub fn open(path: &Path, fsync: bool) -> Result<Arc<Db>, DataDirError> {
        let shown = path.display().to_string();
        let exists = path.join("CURRENT").exists();
        if !exists && path.exists() {
            let entries: Vec<String> = std::fs::read_dir(path)
                .map_err(|e| DataDirError::Io { path: shown.clone(), message: e.to_string() })?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            if !entries.is_empty() {
                let rocksdb_like =
                    entries.iter().any(|e| e.starts_with("MANIFEST") || e.ends_with(".sst") || e.ends_with(".log"));
                let hint = if rocksdb_like {
                    " (its database files are there but CURRENT is missing)".to_owned()
                } else {
                    String::new()
                };
                return Err(if rocksdb_like {
                    DataDirError::Damaged {
                        path: shown,
                        message: format!("database files without a CURRENT file{hint}"),
                    }
                } else {
                    DataDirError::Foreign { path: shown, hint }
                });
            }
        }
        std::fs::create_dir_all(path).map_err(|e| DataDirError::Io { path: shown.clone(), message: e.to_string() })?;
        let mut options = Options::default();
        options.create_if_missing(!exists);
        options.create_missing_column_families(!exists);
        options.set_paranoid_checks(true);
        options.set_max_background_jobs(2);
        options.set_keep_log_file_num(5);
        let cfs = [CF_META, CF_STATE, CF_LOG].map(|name| {
            let mut cf = Options::default();
            cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(name, cf)
        });
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(|e| {
            let message = e.to_string();
            if message.contains("Invalid column family")
                || message.contains("Column families not opened")
                || message.contains("does not exist")
            {
                DataDirError::Foreign { path: shown.clone(), hint: format!(" ({message})") }
            } else {
                DataDirError::Damaged { path: shown.clone(), message }
            }
        })?;
        let mut write = WriteOptions::default();
        write.set_sync(fsync);
        let db = Db { db, path: path.to_path_buf(), write };
        let meta = db.cf(CF_META);
        match db
            .db
            .get_cf(meta, b"format")
            .map_err(|e| DataDirError::Damaged { path: shown.clone(), message: e.to_string() })?
        {
            Some(found) if found == DATA_FORMAT.as_bytes() => {}
            Some(found) => {
                return Err(DataDirError::Format { path: shown, found: String::from_utf8_lossy(&found).into_owned() });
            }
            None if !exists => {
                db.db
                    .put_cf_opt(meta, b"format", DATA_FORMAT, &db.write)
                    .map_err(|e| DataDirError::Io { path: shown.clone(), message: e.to_string() })?;
            }
            None => {
                return Err(DataDirError::Foreign {
                    path: shown,
                    hint: " (a RocksDB database without weir's format marker)".into(),
                });
            }
        }
        Ok(Arc::new(db))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    pub fn raw(&self) -> &DB {
        &self.db
    }

    /// Writes a batch atomically (with fsync when configured).
    pub fn write(&self, batch: WriteBatch) -> Result<(), StateError> {
        self.db.write_opt(batch, &self.write).map_err(|e| storage_error(&self.path, e))
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.db.get_cf(self.cf(CF_META), key.as_bytes()).map_err(|e| storage_error(&self.path, e))
    }

    /// Meta entries whose key starts with `prefix`, in key order.
    pub fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(CF_META), IteratorMode::From(prefix.as_bytes(), Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| storage_error(&self.path, e))?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    pub fn put_meta(&self, batch: &mut WriteBatch, key: &str, value: &[u8]) {
        batch.put_cf(self.cf(CF_META), key.as_bytes(), value);
    }

    pub fn delete_meta(&self, batch: &mut WriteBatch, key: &str) {
        batch.delete_cf(self.cf(CF_META), key.as_bytes());
    }

    /// Adds a store partition's writes to `batch`.
    pub fn write_state<'a>(
        &self,
        batch: &mut WriteBatch,
        store: StoreKey,
        writes: impl IntoIterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
    ) {
        let cf = self.cf(CF_STATE);
        let prefix = store.prefix();
        let mut key = Vec::with_capacity(64);
        for (k, v) in writes {
            key.clear();
            key.extend_from_slice(&prefix);
            key.extend_from_slice(k);
            match v {
                Some(v) => batch.put_cf(cf, &key, v),
                None => batch.delete_cf(cf, &key),
            }
        }
    }

    /// Drops a store partition's data (in `batch`).
    pub fn drop_state(&self, batch: &mut WriteBatch, store: StoreKey) {
        let prefix = store.prefix();
        let end = super::prefix_end(&prefix).expect("prefix has a successor");
        batch.delete_range_cf(self.cf(CF_STATE), prefix.to_vec(), end);
    }

    /// A read view of one store partition.
    pub fn store(self: &Arc<Self>, store: StoreKey, name: &str) -> Arc<RocksStore> {
        Arc::new(RocksStore { db: self.clone(), prefix: store.prefix(), name: name.to_owned() })
    }
}

/// Turns a RocksDB error into a [`StateError`] naming the data dir.
pub fn storage_error(path: &Path, e: rocksdb::Error) -> StateError {
    StateError { store: path.display().to_string(), message: e.to_string() }
}

/// Which store partition: the store's registered id and the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey {
    pub store: u32,
    pub partition: u32,
}

impl StoreKey {
    fn prefix(self) -> [u8; 8] {
        let mut p = [0u8; 8];
        p[..4].copy_from_slice(&self.store.to_be_bytes());
        p[4..].copy_from_slice(&self.partition.to_be_bytes());
        p
    }
}

/// Committed state of one store partition, read from RocksDB.
pub struct RocksStore {
    db: Arc<Db>,
    prefix: [u8; 8],
    name: String,
}

impl RocksStore {
    fn error(&self, e: rocksdb::Error) -> StateError {
        StateError { store: self.name.clone(), message: e.to_string() }
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }
}

impl StoreRead for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db.db.get_cf(self.db.cf(CF_STATE), self.full_key(key)).map_err(|e| self.error(e))
    }

    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
        match self.db.db.get_pinned_cf(self.db.cf(CF_STATE), self.full_key(key)).map_err(|e| self.error(e))? {
            Some(v) => {
                out.extend_from_slice(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Entries, StateError> {
        let mut options = ReadOptions::default();
        let upper = match end {
            Bound::Excluded(e) => self.full_key(e),
            Bound::Included(e) => {
                let mut k = self.full_key(e);
                k.push(0);
                k
            }
            Bound::Unbounded => super::prefix_end(&self.prefix).expect("prefix has a successor"),
        };
        options.set_iterate_upper_bound(upper);
        let (from, skip_equal) = match start {
            Bound::Included(s) => (self.full_key(s), None),
            Bound::Excluded(s) => (self.full_key(s), Some(self.full_key(s))),
            Bound::Unbounded => (self.prefix.to_vec(), None),
        };
        let iter =
            self.db.db.iterator_cf_opt(self.db.cf(CF_STATE), options, IteratorMode::From(&from, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| self.error(e))?;
            if skip_equal.as_deref() == Some(&k[..]) {
                continue;
            }
            out.push((k[8..].to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dir_gets_the_format_marker_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        drop(Db::open(&path, false).unwrap());
        let db = Db::open(&path, false).unwrap();
        assert_eq!(db.get_meta("format").unwrap().as_deref(), Some(DATA_FORMAT.as_bytes()));
    }

    #[test]
    fn a_dir_of_other_files_is_foreign() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let err = Db::open(dir.path(), false).err().unwrap();
        assert!(matches!(err, DataDirError::Foreign { .. }), "{err}");
    }

    #[test]
    fn another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let mut b = WriteBatch::default();
        db.put_meta(&mut b, "format", b"weir-data/99");
        db.write(b).unwrap();
        drop(db);
        let err = Db::open(dir.path(), false).err().unwrap();
        assert!(err.to_string().contains("format `weir-data/99`"), "{err}");
    }

    #[test]
    fn a_missing_current_file_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        drop(Db::open(dir.path(), false).unwrap());
        std::fs::remove_file(dir.path().join("CURRENT")).unwrap();
        let err = Db::open(dir.path(), false).err().unwrap();
        assert!(matches!(err, DataDirError::Damaged { .. }), "{err}");
    }

    #[test]
    fn store_partitions_are_isolated_and_scan_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let a = StoreKey { store: 1, partition: 0 };
        let b = StoreKey { store: 1, partition: 1 };
        let mut batch = WriteBatch::default();
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            vec![(b"k1".to_vec(), Some(b"1".to_vec())), (b"k2".to_vec(), Some(b"2".to_vec())), (b"k3".to_vec(), None)];
        db.write_state(&mut batch, a, writes.iter().map(|(k, v)| (k, v)));
        db.write_state(&mut batch, b, [(&b"k9".to_vec(), &Some(b"9".to_vec()))]);
        db.write(batch).unwrap();
        let sa = db.store(a, "s");
        assert_eq!(sa.get(b"k1").unwrap(), Some(b"1".to_vec()));
        assert_eq!(sa.get(b"k9").unwrap(), None);
        let all = sa.range(Bound::Unbounded, Bound::Unbounded, 10).unwrap();
        assert_eq!(all.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), [&b"k1"[..], b"k2"]);
        let after = sa.range(Bound::Excluded(b"k1"), Bound::Unbounded, 10).unwrap();
        assert_eq!(after.len(), 1);
        let mut batch = WriteBatch::default();
        db.drop_state(&mut batch, a);
        db.write(batch).unwrap();
        assert_eq!(sa.get(b"k1").unwrap(), None);
        assert_eq!(db.store(b, "s").get(b"k9").unwrap(), Some(b"9".to_vec()));
    }
}
