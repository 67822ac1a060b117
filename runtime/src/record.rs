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

/// A record inside a task, on its way to a processor: the input record, a
/// table change (with the old value), or a record emitted upstream. It
/// carries the topic, partition and offset of the input record it derives
/// from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub old_value: Option<Vec<u8>>,
    pub timestamp: i64,
    pub headers: Headers,
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: i64,
}

/// A record a processor emitted, lifted out of the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// Index of the output in the processor's declared outputs.
    pub output: usize,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: i64,
    pub headers: Headers,
    /// Index in the call's batch of the record it derives from.
    pub input_index: u32,
}
