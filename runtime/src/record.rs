//! Records as the host moves them between topics and tasks.

use std::sync::Arc;

/// Record headers: names may repeat, as in Kafka.
pub type Headers = Vec<(String, Vec<u8>)>;

/// A record's content, as stored in a topic partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub headers: Headers,
}

/// A record read from `topic`/`partition` at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: i64,
    pub record: Record,
}

/// A record a task writes to `topic`/`partition` when its transaction commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducedRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub record: Record,
}

/// A (topic, partition) pair.
pub type TopicPartition = (Arc<str>, u32);
