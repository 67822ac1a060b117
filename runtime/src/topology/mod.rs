//! Topologies: parsing a [`Spec`], validating it, and compiling it into the
//! graph the executor runs.
//!
//! Compilation splits the graph into sub-topologies the way Kafka Streams
//! does: nodes connected by `to:` edges, processor outputs, or a processor's
//! use of a table's store belong to the same sub-topology; repartition edges
//! (and sinks) separate them. Every input topic of one sub-topology must have
//! the same partition count (co-partitioning): a task is (sub-topology,
//! partition) and owns partition `p` of every one of those topics and of every
//! store the sub-topology uses.
//!
//! Validation never stops at the first problem: a [`SpecError`] lists every
//! problem with the path of the offending field (`processors.reserve.stores[0]`).

mod compile;
mod describe;
pub mod spec;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use crate::timestamps::{TimestampFormat, TimestampSpec};
pub use spec::{ErrorPolicy, Format, PartitionCheck, ProcessingGuarantee, Spec};

/// Index of a node in [`Topology::nodes`].
pub type NodeId = usize;
/// Index of a store in [`Topology::stores`].
pub type StoreId = usize;

/// Records per guest call unless the spec says otherwise.
pub const DEFAULT_MAX_BATCH: u32 = 256;
/// Memory cap per processor instance unless the spec says otherwise.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;
/// Per-call time limit unless the spec says otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// A validated, compiled application.
#[derive(Debug, Clone)]
pub struct Topology {
    pub spec: Spec,
    pub name: String,
    pub nodes: Vec<Node>,
    pub stores: Vec<StoreDef>,
    pub subtopologies: Vec<SubTopology>,
    pub globals: Vec<GlobalTableDef>,
    /// Partition count of every topic the application reads or writes,
    /// internal topics included.
    pub partitions: BTreeMap<String, u32>,
    pub dead_letter_topic: String,
    pub partition_check: PartitionCheck,
    pub guarantee: ProcessingGuarantee,
    /// How long a task with several inputs waits for an empty one before it
    /// processes the others (see `task::order`).
    pub max_task_idle: Duration,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    /// Processors receiving this node's records (sources, tables, repartitions).
    pub to: Vec<NodeId>,
    pub subtopology: usize,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Source(InputDef),
    Table {
        input: InputDef,
        store: StoreId,
    },
    /// The reading side of a repartition edge.
    Repartition {
        topic: String,
    },
    Processor(Box<ProcessorDef>),
}

/// Where a node reads from and how its bytes are checked.
#[derive(Debug, Clone)]
pub struct InputDef {
    pub topic: String,
    pub key_format: Format,
    pub value_format: Format,
    pub on_error: ErrorPolicy,
    /// Event time from a field of the value (`None`: the Kafka timestamp).
    pub timestamp: Option<TimestampSpec>,
}

#[derive(Debug, Clone)]
pub struct ProcessorDef {
    pub component: String,
    pub config: Vec<(String, String)>,
    pub stores: Vec<StoreGrant>,
    pub outputs: Vec<OutputDef>,
    pub on_error: ErrorPolicy,
    pub limits: Limits,
    pub max_batch: usize,
    /// The store of the processor's timers (`timers: true`): keys are
    /// [`crate::task::timer_key`]s, values empty.
    pub timers: Option<StoreId>,
}

/// A store a processor may use, by the name the guest opens it with.
#[derive(Debug, Clone)]
pub struct StoreGrant {
    pub name: String,
    pub store: StoreId,
    pub writable: bool,
}

#[derive(Debug, Clone)]
pub struct OutputDef {
    pub name: String,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Processor(NodeId),
    Topic { topic: String, internal: bool },
}

/// Sandbox limits of a processor instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: DEFAULT_MEMORY_LIMIT, call_timeout: DEFAULT_CALL_TIMEOUT }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOwner {
    Processor(NodeId),
    Table(NodeId),
    Global(usize),
}

#[derive(Debug, Clone)]
pub struct StoreDef {
    pub name: String,
    pub owner: StoreOwner,
    /// `<app>-<store>-changelog`; global stores have none (their topic is their log).
    pub changelog: Option<String>,
    /// The sub-topology whose tasks own partitions of this store (none for global).
    pub subtopology: Option<usize>,
    /// A window store's retention (see [`spec::StoreSpec::retention`]).
    pub retention: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
pub struct SubTopology {
    pub id: usize,
    pub partitions: u32,
    /// Input topics and the node reading each.
    pub inputs: Vec<(String, NodeId)>,
    /// Processors in an order where every processor comes after those feeding it.
    pub processors: Vec<NodeId>,
    pub stores: Vec<StoreId>,
}

#[derive(Debug, Clone)]
pub struct GlobalTableDef {
    pub name: String,
    pub input: InputDef,
    pub store: StoreId,
}

/// Everything wrong with a spec, each problem with the path of its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if p.path.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

impl SpecError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError { problems: vec![Problem { path: path.into(), message: message.into() }] }
    }
}

/// The largest spec weir parses (bytes of YAML or JSON text).
pub const SPEC_MAX_BYTES: usize = 1 << 20;
/// The deepest nesting of brackets (`[`, `{`) a spec may have, and the
/// widest indentation (columns) of a line: real specs stay far below both;
/// deep nesting makes the YAML parser slow (superlinear) and recursive.
pub const SPEC_MAX_NESTING: usize = 32;
pub const SPEC_MAX_INDENT: usize = 256;

/// Refuses text too large or too deeply nested to parse in bounded time, in
/// one linear pass. Brackets are counted wherever they are, in quotes and
/// comments too: an attacker cannot hide nesting behind a quote the scan
/// misreads, and a real spec never has 32 unclosed brackets in its strings.
fn check_spec_bounds(text: &str) -> Result<(), SpecError> {
    if text.len() > SPEC_MAX_BYTES {
        return Err(SpecError::one(
            "",
            format!("the spec is {} bytes; at most {SPEC_MAX_BYTES} are accepted", text.len()),
        ));
    }
    let mut depth = 0usize;
    for (line_no, line) in text.lines().enumerate() {
        let indent = line.bytes().take_while(|b| *b == b' ' || *b == b'\t').count();
        if indent > SPEC_MAX_INDENT {
            return Err(SpecError::one(
                "",
                format!("line {}: indented more than {SPEC_MAX_INDENT} columns", line_no + 1),
            ));
        }
        for b in line.bytes() {
            match b {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > SPEC_MAX_NESTING {
                        return Err(SpecError::one(
                            "",
                            format!("line {}: nested deeper than {SPEC_MAX_NESTING} levels", line_no + 1),
                        ));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Parses a spec from YAML or JSON text; parse errors name the field path.
/// Text beyond [`SPEC_MAX_BYTES`] or nested beyond [`SPEC_MAX_NESTING`] is
/// refused before parsing. Parsing is CPU work: servers call it off their
/// async threads.
pub fn parse_spec(text: &str) -> Result<Spec, SpecError> {
    check_spec_bounds(text)?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            SpecError::one(if path == "." { String::new() } else { path }, format!("invalid spec: {}", e.inner()))
        })
    } else {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            SpecError::one(if path == "." { String::new() } else { path }, format!("invalid spec: {}", e.inner()))
        })
    }
}

/// Reads and parses a spec file.
pub fn load_spec(path: &Path) -> Result<Spec, SpecError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SpecError::one("", format!("cannot read spec {}: {e}", path.display())))?;
    parse_spec(&text)
}

/// The most partitions a topic may have. Every partition of an
/// application's input is a task with its own processor instances; a
/// count beyond this is a typo or an attack, and would allocate per
/// partition before anything else could refuse it.
pub const MAX_PARTITIONS: u32 = 1024;

/// The longest `max_task_idle`: waiting longer than this for an input is a
/// stalled application, not a join.
pub const MAX_TASK_IDLE: Duration = Duration::from_secs(3600);

/// The longest name weir accepts (application, topic, store, processor,
/// component, version).
pub const NAME_MAX: usize = 200;

/// Kafka topic names: at most 249 of `[a-zA-Z0-9._-]`. weir holds its names to
/// the same rule since they become parts of topic names (and of file names:
/// names of dots only, `.` and `..` among them, are refused). The one rule
/// for every name weir is given, in a spec or in an API path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.bytes().all(|b| b == b'.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Parses `64MiB`, `512KiB`, `1GiB`, `1000000` (bytes), also `MB`/`KB`/`GB` as binary units.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size like 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!("`{text}`: unknown size unit `{unit}` (use B, KiB, MiB or GiB)"));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a human duration: `100ms`, `1s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("`{text}` is not a duration like 100ms or 1s: {e}"))
}

impl Topology {
    /// Validates `spec` and compiles it, with partition counts from the spec.
    pub fn compile(spec: Spec) -> Result<Topology, SpecError> {
        Self::compile_with_counts(spec, &BTreeMap::new())
    }

    /// Like [`compile`](Self::compile), with partition counts of existing
    /// topics (e.g. read from a broker) taking precedence over the spec's.
    pub fn compile_with_counts(spec: Spec, actual: &BTreeMap<String, u32>) -> Result<Topology, SpecError> {
        compile::Compiler::new(spec, actual).run()
    }

    pub fn node(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn processor(&self, id: NodeId) -> Option<&ProcessorDef> {
        match &self.nodes[id].kind {
            NodeKind::Processor(p) => Some(p),
            _ => None,
        }
    }

    pub fn store(&self, name: &str) -> Option<StoreId> {
        self.stores.iter().position(|s| s.name == name)
    }

    /// Partition count of a topic the application uses.
    pub fn partitions_of(&self, topic: &str) -> Option<u32> {
        self.partitions.get(topic).copied()
    }

    /// Every topic the application reads (sources, tables, repartitions,
    /// global tables).
    pub fn input_topics(&self) -> impl Iterator<Item = &str> {
        self.subtopologies
            .iter()
            .flat_map(|s| s.inputs.iter().map(|(t, _)| t.as_str()))
            .chain(self.globals.iter().map(|g| g.input.topic.as_str()))
    }

    /// Every processor's component reference, with the processor name.
    pub fn components(&self) -> impl Iterator<Item = (&str, &str)> {
        self.nodes.iter().filter_map(|n| match &n.kind {
            NodeKind::Processor(p) => Some((n.name.as_str(), p.component.as_str())),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
