//! The embedded backend: weir's zero-setup, single-machine mode. Topics,
//! consumer positions, stores and deployed applications all live in one
//! RocksDB database in the data directory (see [`crate::state::rocks`]).
//!
//! Exactly-once is one write batch: a task's commit writes its output records
//! (appended to their topics), its store changes and its input positions
//! together, or not at all. A crash at any instant leaves either the whole
//! transaction or none of it; on restart each task resumes from its committed
//! positions with state that reflects exactly those positions. Readers see
//! only written batches, so every consumer reads committed data.
//!
//! Commits are serialised by one lock, under which offsets are assigned and
//! the batch is written: offsets of a partition are dense and appear in order.

mod log;
pub mod runner;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::record::{ConsumedRecord, Record, TopicPartition};
use crate::state::rocks::{CF_LOG, DataDirError, Db, STORE_FORMAT, StoreKey, storage_error};
use crate::state::{SharedStore, StateError};
use crate::task::TaskCommit;

pub use log::{appended_at, decode};

/// A topic of the embedded log.
pub struct Topic {
    pub id: u32,
    pub name: Arc<str>,
    partitions: Vec<PartitionState>,
}

struct PartitionState {
    /// Next offset to assign; records below it are readable.
    end: AtomicI64,
    /// First offset still retained.
    start: AtomicI64,
    /// Bytes of retained records (keys + encoded values).
    bytes: AtomicI64,
}

impl Topic {
    pub fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    pub fn end_offset(&self, partition: u32) -> i64 {
        self.partitions.get(partition as usize).map_or(0, |p| p.end.load(Ordering::Acquire))
    }

    pub fn start_offset(&self, partition: u32) -> i64 {
        self.partitions.get(partition as usize).map_or(0, |p| p.start.load(Ordering::Acquire))
    }
}

#[derive(Serialize, Deserialize)]
struct TopicMeta {
    id: u32,
    partitions: u32,
}

#[derive(Serialize, Deserialize)]
struct StoreMeta {
    id: u32,
    format: u32,
}

/// Why an operation on the embedded backend failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    #[error("topic `{topic}` has {partitions} partition(s); there is no partition {partition}")]
    UnknownPartition { topic: String, partition: u32, partitions: u32 },
    #[error("topic `{topic}` exists with {existing} partition(s), not {wanted}")]
    PartitionMismatch { topic: String, existing: u32, wanted: u32 },
    #[error("store `{app}/{store}` was written in store format {found}, this weir uses {STORE_FORMAT}")]
    StoreFormat { app: String, store: String, found: u32 },
    #[error("storage failure: {0}")]
    Storage(#[from] StateError),
    #[error("{0}")]
    BadTopic(String),
    #[error("idempotency key `{key}` was used for another batch (other records); use a new key for new records")]
    IdempotencyConflict { key: String },
    #[error("corrupt record in {topic}/{partition}@{offset}: {message}")]
    Corrupt { topic: String, partition: u32, offset: i64, message: String },
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// The embedded backend of one data directory.
pub struct EmbeddedBackend {
    db: Arc<Db>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    commit_lock: Mutex<()>,
    /// Bumped after every append; waiters sleep on it.
    appended: (Mutex<u64>, Condvar),
}

impl EmbeddedBackend {
    /// Opens the data directory (creating it if new) and loads its topics.
    pub fn open(data_dir: &std::path::Path, fsync: bool) -> Result<Arc<Self>, DataDirError> {
        let db = Db::open(data_dir, fsync)?;
        let damaged =
            |e: StateError| DataDirError::Damaged { path: data_dir.display().to_string(), message: e.message };
        let mut topics = BTreeMap::new();
        for (key, value) in db.scan_meta("topic/").map_err(damaged)? {
            let name = key["topic/".len()..].to_owned();
            let meta: TopicMeta = serde_json::from_slice(&value).map_err(|e| DataDirError::Damaged {
                path: data_dir.display().to_string(),
                message: format!("topic record {key}: {e}"),
            })?;
            if meta.partitions > crate::topology::MAX_PARTITIONS || !crate::topology::valid_name(&name) {
                // Written before weir bounded topics: loading it would take
                // hours (a look-up per partition) or all memory.
                return Err(DataDirError::Damaged {
                    path: data_dir.display().to_string(),
                    message: format!(
                        "topic record {key} has {} partition(s), more than this weir allows ({}), or an invalid name",
                        meta.partitions,
                        crate::topology::MAX_PARTITIONS
                    ),
                });
            }
            let mut partitions = Vec::new();
            for p in 0..meta.partitions {
                let (start, end) = Self::bounds(&db, meta.id, p).map_err(damaged)?;
                let bytes = db
                    .get_meta(&format!("bytes/{}/{p}", meta.id))
                    .map_err(damaged)?
                    .map_or(0, |b| i64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])));
                partitions.push(PartitionState {
                    end: AtomicI64::new(end),
                    start: AtomicI64::new(start),
                    bytes: AtomicI64::new(bytes),
                });
            }
            topics.insert(name.clone(), Arc::new(Topic { id: meta.id, name: Arc::from(name.as_str()), partitions }));
        }
        Ok(Arc::new(EmbeddedBackend {
            db,
            topics: RwLock::new(topics),
            commit_lock: Mutex::new(()),
            appended: (Mutex::new(0), Condvar::new()),
        }))
    }

    /// First retained and next offsets of a partition, from the log itself.
    fn bounds(db: &Db, topic: u32, partition: u32) -> Result<(i64, i64), StateError> {
        let prefix = log::partition_prefix(topic, partition);
        let cf = db.cf(CF_LOG);
        let mut first = db.raw().iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward));
        let start = match first.next() {
            Some(Ok((k, _))) if k.starts_with(&prefix) => log::offset_of(&k),
            Some(Err(e)) => return Err(storage_error(db.path(), e)),
            _ => {
                // Empty: the start is where retention last left it.
                let recorded = db.get_meta(&format!("start/{topic}/{partition}"))?;
                let start = recorded.map_or(0, |b| i64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])));
                return Ok((start, start));
            }
        };
        let last_key = log::log_key(topic, partition, i64::MAX);
        let mut last = db.raw().iterator_cf(cf, IteratorMode::From(&last_key, Direction::Reverse));
        let end = match last.next() {
            Some(Ok((k, _))) if k.starts_with(&prefix) => log::offset_of(&k) + 1,
            Some(Err(e)) => return Err(storage_error(db.path(), e)),
            _ => start,
        };
        Ok((start, end))
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Creates a topic, or checks an existing one has `partitions`.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<Arc<Topic>, BackendError> {
        if partitions == 0 || partitions > crate::topology::MAX_PARTITIONS || !crate::topology::valid_name(name) {
            return Err(BackendError::BadTopic(format!(
                "topic `{name}`: a topic has a valid name and 1 to {} partitions, not {partitions}",
                crate::topology::MAX_PARTITIONS
            )));
        }
        let _guard = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.topic(name) {
            if t.partitions() != partitions {
                return Err(BackendError::PartitionMismatch {
                    topic: name.to_owned(),
                    existing: t.partitions(),
                    wanted: partitions,
                });
            }
            return Ok(t);
        }
        let id = self.next_id("topic")?;
        let mut batch = WriteBatch::default();
        self.db.put_meta(&mut batch, "next-id/topic", &(id + 1).to_be_bytes());
        let meta = serde_json::to_vec(&TopicMeta { id, partitions }).expect("json");
        self.db.put_meta(&mut batch, &format!("topic/{name}"), &meta);
        self.db.write(batch)?;
        let topic = Arc::new(Topic {
            id,
            name: Arc::from(name),
            partitions: (0..partitions)
                .map(|_| PartitionState { end: AtomicI64::new(0), start: AtomicI64::new(0), bytes: AtomicI64::new(0) })
                .collect(),
        });
        self.topics.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    fn next_id(&self, kind: &str) -> Result<u32, StateError> {
        Ok(self
            .db
            .get_meta(&format!("next-id/{kind}"))?
            .map_or(1, |b| u32::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 4]))))
    }

    /// The id of an application's store, registering it on first use.
    pub fn register_store(&self, app: &str, store: &str) -> Result<u32, BackendError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("store/{app}/{store}");
        if let Some(bytes) = self.db.get_meta(&key)? {
            let meta: StoreMeta = serde_json::from_slice(&bytes)
                .map_err(|e| StateError { store: key.clone(), message: format!("unreadable store record: {e}") })?;
            if meta.format != STORE_FORMAT {
                return Err(BackendError::StoreFormat { app: app.into(), store: store.into(), found: meta.format });
            }
            return Ok(meta.id);
        }
        let id = self.next_id("store")?;
        let mut batch = WriteBatch::default();
        self.db.put_meta(&mut batch, "next-id/store", &(id + 1).to_be_bytes());
        let meta = serde_json::to_vec(&StoreMeta { id, format: STORE_FORMAT }).expect("json");
        self.db.put_meta(&mut batch, &key, &meta);
        self.db.write(batch)?;
        Ok(id)
    }

    /// Committed state of a store partition.
    pub fn open_store(&self, store_id: u32, partition: u32, name: &str) -> SharedStore {
        self.db.store(StoreKey { store: store_id, partition }, name)
    }

    /// The committed position (next offset to read) of an application on a partition.
    pub fn position(&self, app: &str, topic: &str, partition: u32) -> Result<i64, StateError> {
        Ok(self
            .db
            .get_meta(&format!("pos/{app}/{topic}/{partition}"))?
            .map_or(0, |b| i64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8]))))
    }

    /// Appends records produced from outside (the produce API) atomically.
    /// Returns the offset of each record.
    pub fn append(&self, records: Vec<(Arc<Topic>, u32, Record)>) -> Result<Vec<i64>, BackendError> {
        for (topic, partition, _) in &records {
            if *partition >= topic.partitions() {
                return Err(BackendError::UnknownPartition {
                    topic: topic.name.to_string(),
                    partition: *partition,
                    partitions: topic.partitions(),
                });
            }
        }
        let _guard = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        let mut appender = Appender::new(&self.db);
        let offsets = records.iter().map(|(t, p, r)| appender.add(&mut batch, t, *p, r)).collect();
        appender.finish(&mut batch);
        self.db.write(batch)?;
        appender.publish();
        self.notify();
        Ok(offsets)
    }

    /// Appends a produce batch once per `key` (an idempotency key, per
    /// topic): the first call appends and records, in the same write batch,
    /// the key with the batch's `fingerprint` and where each record went; a
    /// later call with the key answers that, appending nothing (true: a
    /// replay), or refuses a batch with another fingerprint. Keys are kept
    /// as long as the data dir.
    pub fn append_once(
        &self,
        topic: &Topic,
        key: &str,
        fingerprint: &str,
        records: Vec<(Arc<Topic>, u32, Record)>,
    ) -> Result<(Vec<(u32, i64)>, bool), BackendError> {
        for (t, partition, _) in &records {
            if *partition >= t.partitions() {
                return Err(BackendError::UnknownPartition {
                    topic: t.name.to_string(),
                    partition: *partition,
                    partitions: t.partitions(),
                });
            }
        }
        #[derive(Serialize, Deserialize)]
        struct Seen {
            fingerprint: String,
            records: Vec<(u32, i64)>,
        }
        let meta_key = format!("idempotency/{}/{key}", topic.id);
        let _guard = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = self.db.get_meta(&meta_key)? {
            let seen: Seen = serde_json::from_slice(&seen).map_err(|e| {
                BackendError::Storage(StateError { store: "meta".into(), message: format!("{meta_key}: {e}") })
            })?;
            if seen.fingerprint != fingerprint {
                return Err(BackendError::IdempotencyConflict { key: key.to_owned() });
            }
            return Ok((seen.records, true));
        }
        let mut batch = WriteBatch::default();
        let mut appender = Appender::new(&self.db);
        let written: Vec<(u32, i64)> =
            records.iter().map(|(t, p, r)| (*p, appender.add(&mut batch, t, *p, r))).collect();
        appender.finish(&mut batch);
        let seen = Seen { fingerprint: fingerprint.to_owned(), records: written.clone() };
        self.db.put_meta(&mut batch, &meta_key, &serde_json::to_vec(&seen).expect("json"));
        self.db.write(batch)?;
        appender.publish();
        self.notify();
        Ok((written, false))
    }

    /// Flushes the memtables and waits (at most `timeout`) until RocksDB's
    /// background flushes and compactions are done. The benchmarks call it
    /// between loading their input and starting the clock, so that the work
    /// RocksDB owes for the load does not land inside whichever scenario
    /// happens to run while it is done.
    pub fn settle(&self, timeout: std::time::Duration) -> Result<(), BackendError> {
        let mut options = rocksdb::WaitForCompactOptions::default();
        options.set_flush(true);
        options.set_timeout(u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX));
        self.db.raw().wait_for_compact(&options).map_err(|e| storage_error(self.db.path(), e))?;
        Ok(())
    }

    /// Commits a task's transaction in one write batch: its produced records,
    /// its store changes (`store_ids` maps topology store ids to registered
    /// ids) and its input positions.
    pub fn commit(
        &self,
        app: &str,
        commit: TaskCommit<'_>,
        store_ids: &HashMap<usize, u32>,
    ) -> Result<(), BackendError> {
        // Each topic the commit writes to is looked up once, not once per
        // record: the lookup takes the topics' lock and clones an `Arc`
        // that every worker shares, and the cores bounced those between
        // them on every record. `produced[i]` indexes `topics`.
        let mut topics: Vec<Arc<Topic>> = Vec::new();
        let mut produced = Vec::with_capacity(commit.produced.len());
        for p in &commit.produced {
            let index = match topics.iter().position(|t| t.name == p.topic) {
                Some(i) => i,
                None => {
                    let topic = self.topic(&p.topic).ok_or_else(|| BackendError::UnknownTopic(p.topic.to_string()))?;
                    topics.push(topic);
                    topics.len() - 1
                }
            };
            produced.push(index);
        }
        let _guard = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        let mut appender = Appender::new(&self.db);
        for (p, index) in commit.produced.iter().zip(&produced) {
            appender.add(&mut batch, &topics[*index], p.partition, &p.record);
        }
        appender.finish(&mut batch);
        for change in &commit.changes {
            let id = store_ids[&change.store];
            self.db.write_state(
                &mut batch,
                StoreKey { store: id, partition: change.partition },
                change.writes.iter().copied(),
            );
        }
        for ((topic, partition), offset) in &commit.positions {
            self.db.put_meta(&mut batch, &format!("pos/{app}/{topic}/{partition}"), &offset.to_be_bytes());
        }
        if let Some(stream_time) = commit.stream_time {
            self.db.put_meta(&mut batch, &format!("time/{app}/{}", commit.task), &stream_time.to_be_bytes());
        }
        self.db.write(batch)?;
        appender.publish();
        if !commit.produced.is_empty() {
            self.notify();
        }
        Ok(())
    }

    /// Records of a partition from offset `from`, at most `max`.
    pub fn read(
        &self,
        topic: &Topic,
        partition: u32,
        from: i64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>, BackendError> {
        self.read_as(topic, &topic.name, partition, from, max)
    }

    /// Like [`read`](Self::read), the records naming their topic by `name`
    /// (the same text as `topic.name`). A reader that reads often passes an
    /// `Arc` of its own: cloning the topic's, which every worker thread
    /// shares, per record bounces its reference count between the cores.
    pub fn read_as(
        &self,
        topic: &Topic,
        name: &Arc<str>,
        partition: u32,
        from: i64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>, BackendError> {
        debug_assert_eq!(**name, *topic.name, "read_as names the topic it reads");
        let mut out = Vec::with_capacity(Self::at_most(topic, partition, from, max));
        self.scan(topic, partition, from, max, |offset, record, _| {
            out.push(ConsumedRecord { topic: name.clone(), partition, offset, record })
        })?;
        Ok(out)
    }

    /// Like [`read`](Self::read), with each record's append time (µs).
    pub fn read_with_time(
        &self,
        topic: &Topic,
        partition: u32,
        from: i64,
        max: usize,
    ) -> Result<Vec<(ConsumedRecord, i64)>, BackendError> {
        let mut out = Vec::with_capacity(Self::at_most(topic, partition, from, max));
        self.scan(topic, partition, from, max, |offset, record, appended| {
            out.push((ConsumedRecord { topic: topic.name.clone(), partition, offset, record }, appended))
        })?;
        Ok(out)
    }

    /// How many records a read from `from` of at most `max` returns.
    fn at_most(topic: &Topic, partition: u32, from: i64, max: usize) -> usize {
        let from = from.max(topic.start_offset(partition));
        (topic.end_offset(partition) - from).clamp(0, max.min(i64::MAX as usize) as i64) as usize
    }

    /// Hands `each` the records of a partition from offset `from`, at most
    /// `max`: offset, record, append time (µs).
    fn scan(
        &self,
        topic: &Topic,
        partition: u32,
        from: i64,
        max: usize,
        mut each: impl FnMut(i64, Record, i64),
    ) -> Result<(), BackendError> {
        let end = topic.end_offset(partition);
        let from = from.max(topic.start_offset(partition));
        if from >= end || max == 0 {
            return Ok(());
        }
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(log::log_key(topic.id, partition, end).to_vec());
        let start = log::log_key(topic.id, partition, from);
        let iter =
            self.db.raw().iterator_cf_opt(self.db.cf(CF_LOG), options, IteratorMode::From(&start, Direction::Forward));
        let mut count = 0;
        for item in iter {
            let (k, v) = item.map_err(|e| storage_error(self.db.path(), e))?;
            let offset = log::offset_of(&k);
            let (record, appended) = log::decode(&v).map_err(|message| BackendError::Corrupt {
                topic: topic.name.to_string(),
                partition,
                offset,
                message,
            })?;
            each(offset, record, appended);
            count += 1;
            if count >= max {
                break;
            }
        }
        Ok(())
    }

    /// Waits until something is appended after `seen` (the value returned by
    /// [`data_version`](Self::data_version)), or `timeout` passes.
    pub fn wait_for_data(&self, seen: u64, timeout: Duration) {
        let (lock, cv) = &self.appended;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        if *guard != seen {
            return;
        }
        let _ = cv.wait_timeout(guard, timeout);
    }

    pub fn data_version(&self) -> u64 {
        *self.appended.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every waiter (appends do this; so does stopping an application).
    pub(crate) fn notify(&self) {
        let (lock, cv) = &self.appended;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        cv.notify_all();
    }

    /// Deployed applications: name → stored definition (JSON).
    pub fn applications(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        Ok(self.db.scan_meta("app/")?.into_iter().map(|(k, v)| (k["app/".len()..].to_owned(), v)).collect())
    }

    pub fn save_application(&self, name: &str, definition: &[u8]) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        self.db.put_meta(&mut batch, &format!("app/{name}"), definition);
        self.db.write(batch)
    }

    /// Forgets an application: its definition, positions and store data.
    pub fn delete_application(&self, name: &str) -> Result<(), StateError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        self.db.delete_meta(&mut batch, &format!("app/{name}"));
        for prefix in [format!("pos/{name}/"), format!("time/{name}/")] {
            for (key, _) in self.db.scan_meta(&prefix)? {
                self.db.delete_meta(&mut batch, &key);
            }
        }
        for (key, value) in self.db.scan_meta(&format!("store/{name}/"))? {
            if let Ok(meta) = serde_json::from_slice::<StoreMeta>(&value) {
                // Every partition of the store: its whole id prefix.
                let start = meta.id.to_be_bytes();
                let end = (meta.id + 1).to_be_bytes();
                batch.delete_range_cf(self.db.cf(crate::state::rocks::CF_STATE), start, end);
            }
            self.db.delete_meta(&mut batch, &key);
        }
        self.db.write(batch)
    }

    /// Applies retention: drops records older than `max_age` (if non-zero)
    /// and the oldest records of partitions above `max_bytes` (if non-zero).
    /// Returns how many records were dropped.
    pub fn enforce_retention(&self, max_age: Duration, max_bytes: u64) -> Result<u64, BackendError> {
        let cutoff = now_us() - max_age.as_micros() as i64;
        let mut dropped = 0;
        for topic in self.topics() {
            for p in 0..topic.partitions() {
                let state = &topic.partitions[p as usize];
                let start = state.start.load(Ordering::Acquire);
                let end = state.end.load(Ordering::Acquire);
                let mut excess = if max_bytes > 0 { state.bytes.load(Ordering::Acquire) - max_bytes as i64 } else { 0 };
                let mut new_start = start;
                let mut freed = 0i64;
                if !max_age.is_zero() || excess > 0 {
                    let mut options = ReadOptions::default();
                    options.set_iterate_upper_bound(log::log_key(topic.id, p, end).to_vec());
                    let from = log::log_key(topic.id, p, start);
                    let iter = self.db.raw().iterator_cf_opt(
                        self.db.cf(CF_LOG),
                        options,
                        IteratorMode::From(&from, Direction::Forward),
                    );
                    for item in iter {
                        let (k, v) = item.map_err(|e| storage_error(self.db.path(), e))?;
                        let old = !max_age.is_zero() && log::appended_at(&v).is_some_and(|t| t < cutoff);
                        if !old && excess <= 0 {
                            break;
                        }
                        let size = (k.len() + v.len()) as i64;
                        excess -= size;
                        freed += size;
                        new_start = log::offset_of(&k) + 1;
                    }
                }
                if new_start > start {
                    let _guard = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
                    let mut batch = WriteBatch::default();
                    batch.delete_range_cf(
                        self.db.cf(CF_LOG),
                        log::log_key(topic.id, p, start),
                        log::log_key(topic.id, p, new_start),
                    );
                    self.db.put_meta(&mut batch, &format!("start/{}/{p}", topic.id), &new_start.to_be_bytes());
                    let bytes = state.bytes.load(Ordering::Acquire) - freed;
                    self.db.put_meta(&mut batch, &format!("bytes/{}/{p}", topic.id), &bytes.max(0).to_be_bytes());
                    self.db.write(batch)?;
                    state.start.store(new_start, Ordering::Release);
                    state.bytes.store(bytes.max(0), Ordering::Release);
                    dropped += (new_start - start) as u64;
                }
            }
        }
        Ok(dropped)
    }

    /// The stream time `task` of `app` committed last (-1: none yet).
    pub fn stream_time(&self, app: &str, task: crate::task::TaskId) -> Result<i64, StateError> {
        let value = self.db.get_meta(&format!("time/{app}/{task}"))?;
        Ok(value.and_then(|v| v.as_slice().try_into().ok().map(i64::from_be_bytes)).unwrap_or(-1))
    }

    /// The committed positions of `app` on every partition it has consumed.
    pub fn positions(&self, app: &str) -> Result<BTreeMap<TopicPartition, i64>, StateError> {
        let prefix = format!("pos/{app}/");
        let mut out = BTreeMap::new();
        for (key, value) in self.db.scan_meta(&prefix)? {
            let rest = &key[prefix.len()..];
            if let Some((topic, partition)) = rest.rsplit_once('/')
                && let Ok(partition) = partition.parse::<u32>()
            {
                let offset = i64::from_be_bytes(value.as_slice().try_into().unwrap_or([0; 8]));
                out.insert((Arc::from(topic), partition), offset);
            }
        }
        Ok(out)
    }
}

/// Assigns offsets to records appended in one batch, and publishes the new
/// end offsets once the batch is written.
struct Appender<'a> {
    db: &'a Db,
    now: i64,
    /// Per (topic, partition): the topic, next offset, bytes added.
    next: HashMap<(u32, u32), (Arc<Topic>, i64, i64)>,
}

impl<'a> Appender<'a> {
    fn new(db: &'a Db) -> Self {
        Appender { db, now: now_us(), next: HashMap::new() }
    }

    fn add(&mut self, batch: &mut WriteBatch, topic: &Arc<Topic>, partition: u32, record: &Record) -> i64 {
        let entry =
            self.next.entry((topic.id, partition)).or_insert_with(|| (topic.clone(), topic.end_offset(partition), 0));
        let offset = entry.1;
        let value = log::encode(record, self.now);
        entry.1 += 1;
        entry.2 += (16 + value.len()) as i64;
        batch.put_cf(self.db.cf(CF_LOG), log::log_key(topic.id, partition, offset), value);
        offset
    }

    /// Records the partitions' new byte counts in the batch.
    fn finish(&self, batch: &mut WriteBatch) {
        for ((id, p), (topic, _, added)) in &self.next {
            let bytes = topic.partitions[*p as usize].bytes.load(Ordering::Acquire) + added;
            self.db.put_meta(batch, &format!("bytes/{id}/{p}"), &bytes.to_be_bytes());
        }
    }

    /// After the batch is written: makes the records readable.
    fn publish(self) {
        for ((_, p), (topic, next, added)) in self.next {
            let state = &topic.partitions[p as usize];
            state.bytes.fetch_add(added, Ordering::AcqRel);
            state.end.store(next, Ordering::Release);
        }
    }
}
