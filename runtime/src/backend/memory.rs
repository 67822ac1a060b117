//! The in-memory backend: topics as vectors, stores as maps, commits that
//! cannot fail. Deterministic, so `weir test` output is reproducible.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::record::{ConsumedRecord, ProducedRecord, Record, TopicPartition};
use crate::state::SharedStore;
use crate::state::memory::MemoryStore;
use crate::task::{TaskCommit, TaskId};
use crate::topology::{StoreId, Topology};

/// A record in a partition log, with its position in the backend-wide
/// append order.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub sequence: u64,
    pub record: Record,
}

/// Where a record was appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: i64,
}

/// Topics, committed stores and consumer positions of one application, in memory.
pub struct MemoryBackend {
    topics: BTreeMap<Arc<str>, Vec<Vec<LogEntry>>>,
    stores: BTreeMap<(StoreId, u32), Arc<MemoryStore>>,
    globals: BTreeMap<StoreId, Arc<MemoryStore>>,
    positions: BTreeMap<TopicPartition, i64>,
    /// Committed stream time per task.
    stream_times: BTreeMap<TaskId, i64>,
    /// Every append, in order.
    appended: Vec<Appended>,
    next_sequence: u64,
}

impl MemoryBackend {
    /// Creates every topic of the topology with its partition count.
    pub fn new(topology: &Topology) -> Self {
        let topics =
            topology.partitions.iter().map(|(t, n)| (Arc::from(t.as_str()), vec![Vec::new(); *n as usize])).collect();
        let globals = topology.globals.iter().map(|g| (g.store, Arc::new(MemoryStore::default()))).collect();
        MemoryBackend {
            topics,
            stores: BTreeMap::new(),
            globals,
            positions: BTreeMap::new(),
            stream_times: BTreeMap::new(),
            appended: Vec::new(),
            next_sequence: 0,
        }
    }

    pub fn topic(&self, name: &str) -> Option<Arc<str>> {
        self.topics.get_key_value(name).map(|(k, _)| k.clone())
    }

    pub fn partitions(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|p| p.len() as u32)
    }

    /// Appends a record; returns its offset.
    pub fn append(&mut self, topic: &Arc<str>, partition: u32, record: Record) -> i64 {
        let log = &mut self.topics.get_mut(topic).expect("topic exists")[partition as usize];
        let offset = log.len() as i64;
        log.push(LogEntry { sequence: self.next_sequence, record });
        self.next_sequence += 1;
        self.appended.push(Appended { topic: topic.clone(), partition, offset });
        offset
    }

    /// Records of a partition from `from`, at most `max`.
    pub fn read(&self, topic: &Arc<str>, partition: u32, from: i64, max: usize) -> Vec<(u64, ConsumedRecord)> {
        let log = &self.topics[topic][partition as usize];
        log.iter()
            .enumerate()
            .skip(from.max(0) as usize)
            .take(max)
            .map(|(offset, e)| {
                (
                    e.sequence,
                    ConsumedRecord { topic: topic.clone(), partition, offset: offset as i64, record: e.record.clone() },
                )
            })
            .collect()
    }

    /// The record at an offset.
    pub fn get(&self, topic: &str, partition: u32, offset: i64) -> Option<&Record> {
        self.topics.get(topic)?.get(partition as usize)?.get(usize::try_from(offset).ok()?).map(|e| &e.record)
    }

    /// The committed position (next offset to read) of an input partition.
    pub fn position(&self, tp: &TopicPartition) -> i64 {
        self.positions.get(tp).copied().unwrap_or(0)
    }

    /// Committed state of a store partition (created empty on first use).
    pub fn open_store(&mut self, store: StoreId, partition: u32) -> SharedStore {
        self.stores.entry((store, partition)).or_default().clone()
    }

    /// The committed store partition itself (for inspection).
    pub fn store(&self, store: StoreId, partition: u32) -> Option<&Arc<MemoryStore>> {
        self.stores.get(&(store, partition))
    }

    /// Global table stores, for tasks.
    pub fn global_stores(&self) -> BTreeMap<StoreId, SharedStore> {
        self.globals.iter().map(|(id, s)| (*id, s.clone() as SharedStore)).collect()
    }

    /// Applies a record of a global table's topic to its store.
    pub fn apply_global(&self, store: StoreId, record: &Record) {
        if let (Some(s), Some(key)) = (self.globals.get(&store), &record.key) {
            s.put(key.clone(), record.value.clone());
        }
    }

    /// Commits a task's transaction: appends its records, applies its store
    /// changes, records its positions. Cannot fail in memory.
    pub fn commit(&mut self, commit: TaskCommit<'_>) -> Vec<Appended> {
        let mut appended = Vec::with_capacity(commit.produced.len());
        for ProducedRecord { topic, partition, record } in commit.produced {
            let offset = self.append(&topic, partition, record);
            appended.push(Appended { topic, partition, offset });
        }
        for change in &commit.changes {
            self.stores.entry((change.store, change.partition)).or_default().apply(change.writes.iter().copied());
        }
        self.positions.extend(commit.positions);
        if let Some(time) = commit.stream_time {
            self.stream_times.insert(commit.task, time);
        }
        appended
    }

    /// The stream time `task` committed last (-1: none yet).
    pub fn stream_time(&self, task: TaskId) -> i64 {
        self.stream_times.get(&task).copied().unwrap_or(-1)
    }

    /// Every append so far, in order.
    pub fn appended(&self) -> &[Appended] {
        &self.appended
    }
}
