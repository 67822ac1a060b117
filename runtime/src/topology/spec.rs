//! The topology spec as users write it (YAML or JSON), before validation.
//!
//! Every map is keyed by the element's name. Names share one namespace across
//! sources, tables, global tables, processors, repartitions and sinks, so a
//! `to:` list or an output can name any of them unambiguously. Stores have
//! their own namespace.
//!
//! ```yaml
//! name: reservation
//! topics: { orders: 4, adjustments: 4, orders-validated: 4, orders-rejected: 4 }
//! sources:
//!   orders: { topic: orders, value_format: json, to: [rekey] }
//!   adjustments: { topic: adjustments, value_format: json, to: [reserve] }
//! processors:
//!   rekey:
//!     component: ../../target/wasm32-wasip2/release/reservation.wasm
//!     config: { role: rekey }
//!     outputs: { by-product: orders-by-product }
//!   reserve:
//!     component: ../../target/wasm32-wasip2/release/reservation.wasm
//!     config: { role: reserve, adjustments_topic: adjustments }
//!     stores: [stock]
//!     outputs: { validated: validated, rejected: rejected }
//! repartitions:
//!   orders-by-product: { to: [reserve] }
//! stores:
//!   stock: {}
//! sinks:
//!   validated: { topic: orders-validated }
//!   rejected: { topic: orders-rejected }
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::timestamps::TimestampSpec;

/// A whole application: its name and its graph.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Application name: the consumer group id and the prefix of internal topics.
    pub name: String,
    /// `exactly-once` (default) or `at-least-once`.
    #[serde(default)]
    pub processing_guarantee: ProcessingGuarantee,
    /// Partition counts of the topics the application reads and writes.
    /// Topics not listed have `default_partitions`.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicSpec>,
    /// Partition count of topics not listed in `topics` (default 1).
    #[serde(default)]
    pub default_partitions: Option<u32>,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSpec>,
    #[serde(default)]
    pub tables: BTreeMap<String, TableSpec>,
    #[serde(default)]
    pub global_tables: BTreeMap<String, GlobalTableSpec>,
    #[serde(default)]
    pub stores: BTreeMap<String, StoreSpec>,
    #[serde(default)]
    pub processors: BTreeMap<String, ProcessorSpec>,
    #[serde(default)]
    pub repartitions: BTreeMap<String, RepartitionSpec>,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSpec>,
    /// Per-record check that co-partitioned input records sit on the
    /// partition murmur2 assigns their key: `warn` (default), `dead-letter`
    /// or `off`.
    #[serde(default)]
    pub partition_check: PartitionCheck,
    /// Partition count of the dead-letter topic `<app>-dlq` (default 1).
    #[serde(default)]
    pub dead_letter_partitions: Option<u32>,
    /// A task that reads several input partitions processes the buffered
    /// record with the smallest timestamp next; when one input has nothing
    /// buffered and nothing more to read, it waits this long (a duration,
    /// default 0) for it before going on with the others. Kafka Streams'
    /// `max.task.idle.ms`.
    #[serde(default)]
    pub max_task_idle: Option<String>,
}

/// Delivery guarantee of an application.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessingGuarantee {
    /// Outputs, state changes and input positions commit atomically.
    #[default]
    ExactlyOnce,
    /// Outputs may repeat after a crash; nothing is lost.
    AtLeastOnce,
}

/// A topic's partition count: `orders: 4` or `orders: { partitions: 4 }`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum TopicSpec {
    Count(u32),
    Detailed { partitions: u32 },
}

impl TopicSpec {
    pub fn partitions(&self) -> u32 {
        match self {
            TopicSpec::Count(n) | TopicSpec::Detailed { partitions: n } => *n,
        }
    }
}

/// How weir checks key and value bytes read from a topic before a processor
/// sees them. A record that fails the check meets the source's error policy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Any bytes (no check).
    #[default]
    Bytes,
    /// UTF-8 text.
    String,
    /// A JSON document.
    Json,
}

/// What happens to a record a processor fails on.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// To `<app>-dlq`, with headers naming the error, the source record and the processor.
    #[default]
    DeadLetter,
    /// Dropped, counted and logged.
    Skip,
    /// The task stops; its input offsets stay uncommitted; status says why.
    Fail,
}

/// The per-record co-partitioning check.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionCheck {
    Off,
    /// Count and log (rate-limited); the record is processed.
    #[default]
    Warn,
    /// Count, log, and send the record to the dead-letter topic instead.
    DeadLetter,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub topic: String,
    #[serde(default)]
    pub key_format: Format,
    #[serde(default)]
    pub value_format: Format,
    /// Processors that receive every record.
    #[serde(default)]
    pub to: Vec<String>,
    /// Policy for records that fail the format check (or have no valid
    /// timestamp field).
    #[serde(default)]
    pub on_error: ErrorPolicy,
    /// Event time from a field of the JSON value instead of the Kafka
    /// record's timestamp: `{ field: ts, format: millis | iso8601 }`.
    #[serde(default)]
    pub timestamp: Option<TimestampSpec>,
}

/// A topic materialised into a store (a KTable). Each update is forwarded to
/// the `to` processors as a change: new value plus the old value it replaced.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub topic: String,
    /// Store name (default: the table's name). Processors may read it.
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub key_format: Format,
    #[serde(default)]
    pub value_format: Format,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub on_error: ErrorPolicy,
    /// As for sources.
    #[serde(default)]
    pub timestamp: Option<TimestampSpec>,
}

/// A topic replicated in full to every task (a GlobalKTable): read-only,
/// needs no co-partitioning.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GlobalTableSpec {
    pub topic: String,
    /// Store name (default: the global table's name).
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub key_format: Format,
    #[serde(default)]
    pub value_format: Format,
}

/// A processor-owned key-value store.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// Makes it a window store (a duration, e.g. `70s`: the windows' size
    /// plus grace): keys start with an 8-byte window start (the SDK's
    /// `WindowedAggregate` writes them so), entries whose window started
    /// more than `retention` before stream time are deleted by the host, and
    /// on Kafka the changelog is compacted and deleted after the retention
    /// plus a day (Kafka Streams' default margin).
    #[serde(default)]
    pub retention: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSpec {
    /// A path to a `.wasm` component (relative to the spec file), or a
    /// registered component `name` / `name@version`.
    pub component: String,
    /// Passed to the processor's `init`.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    /// Stores the processor may use: its own stores (read-write) and table or
    /// global table stores (read-only).
    #[serde(default)]
    pub stores: Vec<String>,
    /// Named outputs, each wired to one or more processors, sinks or
    /// repartitions.
    #[serde(default)]
    pub outputs: BTreeMap<String, Targets>,
    #[serde(default)]
    pub on_error: ErrorPolicy,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Most records handed to the component per call (default 256).
    #[serde(default)]
    pub max_batch: Option<u32>,
    /// The processor sets per-key timers (contract 0.2.0): the host keeps
    /// them in a store of its own, `<processor>.timers`, with a changelog.
    #[serde(default)]
    pub timers: bool,
}

/// One target (`validated`) or several (`[audit, validated]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Targets {
    One(String),
    Many(Vec<String>),
}

impl Targets {
    pub fn names(&self) -> &[String] {
        match self {
            Targets::One(name) => std::slice::from_ref(name),
            Targets::Many(names) => names,
        }
    }
}

/// A config value: written as any YAML/JSON scalar, passed to the guest as text.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ConfigValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigValue::Text(s) => f.write_str(s),
            ConfigValue::Integer(i) => write!(f, "{i}"),
            ConfigValue::Float(x) => write!(f, "{x}"),
            ConfigValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Sandbox limits of one processor instance.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Linear memory cap, e.g. `64MiB` (default).
    #[serde(default)]
    pub memory: Option<String>,
    /// Longest a single call may run, e.g. `1s` (default), `200ms`.
    #[serde(default)]
    pub call_timeout: Option<String>,
}

/// A repartition edge: records written to `<app>-<name>-repartition`,
/// partitioned by their (new) key, and read back by the `to` processors in
/// another sub-topology.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepartitionSpec {
    /// Partition count (default: that of the sub-topology reading it).
    #[serde(default)]
    pub partitions: Option<u32>,
    #[serde(default)]
    pub to: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    pub topic: String,
}
