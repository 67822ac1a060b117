//! The executor: a [`Task`] runs one sub-topology for one partition.
//!
//! A task owns its input partitions (one per input topic of its
//! sub-topology), one instance of every processor of the sub-topology, and its
//! partition of every store the sub-topology uses. It is backend-agnostic:
//! a driver feeds it records ([`Task::process`]), advances its wall clock
//! ([`Task::advance_wall_clock`]), and at a commit point takes what the open
//! transaction produced ([`Task::prepare_commit`]), commits it through a
//! backend, and reports the result back ([`Task::commit_succeeded`] or
//! [`Task::abort`]).
//!
//! Inside, records flow in waves: input records are pushed into the inboxes
//! of the processors they feed; a drain calls each processor, in topological
//! order, with batches of up to `max_batch` records; emitted records go to the
//! inboxes of downstream processors or become produced records (sinks,
//! repartition topics, dead letters). Each processor's inbox is kept in
//! source order. A table update is applied to its store only after every
//! record before it has been processed by the processors that can read that
//! store, so batching never lets a processor see a table value from its future.
//!
//! Failures: a guest call is a savepoint. A failed call leaves nothing behind
//! (store writes rolled back, emits dropped); a trapped instance is replaced
//! by a fresh one; the batch is replayed so that exactly the offending record
//! meets the processor's error policy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::partitioner::{partition_for, partition_for_key};
use crate::record::{ConsumedRecord, Emitted, Headers, ProducedRecord, Record, TaskRecord, TopicPartition};
use crate::state::{SharedStore, StateError, StoreOverlay, TaskStores};
use crate::topology::{ErrorPolicy, Format, NodeId, NodeKind, PartitionCheck, StoreId, StoreOwner, Target, Topology};
use crate::wasm::{
    CallFailure, CallTime, FailureKind, InstanceInfo, LoadedComponent, ProcessorInstance, Punctuation, StoreGrantInfo,
    WasmEngine,
};

/// A task's identity: sub-topology and partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    pub subtopology: usize,
    pub partition: u32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.subtopology, self.partition)
    }
}

/// What every task of one deployed application shares.
pub struct AppRuntime {
    pub topology: Arc<Topology>,
    pub engine: Arc<WasmEngine>,
    /// The component of each processor node, indexed by node id.
    pub components: BTreeMap<NodeId, Arc<LoadedComponent>>,
}

/// Why a task cannot go on. The driver aborts the open transaction.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    #[error("processor `{processor}` could not start: {message}")]
    Start { processor: String, message: String },
    #[error("{0}")]
    Failed(Box<RecordFailure>),
    #[error("processor `{processor}` failed in punctuate ({kind}) and its error policy is `fail`: {message}")]
    PunctuateFailed { processor: String, kind: &'static str, message: String },
    #[error("state: {0}")]
    State(#[from] StateError),
    /// A new component version failed `init`, or trapped before its first
    /// commit: the swap is rolled back.
    #[error("new version of processor `{processor}` failed ({kind}): {message}")]
    SwapFailed { processor: String, kind: &'static str, message: String },
    #[error("record from topic `{0}`, which task {1} does not read")]
    UnknownInput(String, String),
}

/// A record a processor failed on, under error policy `fail`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "processor `{processor}` failed on {topic}/{partition}@{offset} ({kind}) and its error policy is `fail`: {message}"
)]
pub struct RecordFailure {
    pub processor: String,
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub kind: &'static str,
    pub message: String,
}

/// Counters of one task, summed into application metrics.
#[derive(Debug, Clone, Default)]
pub struct TaskMetrics {
    pub records_in: u64,
    /// Per processor name: records processed, records emitted.
    pub processed: BTreeMap<String, u64>,
    pub emitted: BTreeMap<String, u64>,
    pub dead_letters: u64,
    pub skipped: u64,
    pub failures: BTreeMap<&'static str, u64>,
    pub partition_mismatches: u64,
    pub punctuations: u64,
}

/// Everything a task's open transaction produced, for the backend to commit
/// atomically.
pub struct TaskCommit<'a> {
    pub task: TaskId,
    /// Output, repartition and dead-letter records, in production order.
    pub produced: Vec<ProducedRecord>,
    /// Per store: the changelog topic, partition and the last value of every
    /// key written (`None` = deleted).
    pub changes: Vec<StoreChanges<'a>>,
    /// Next offset to read, per input partition consumed in this transaction.
    pub positions: BTreeMap<TopicPartition, i64>,
}

pub struct StoreChanges<'a> {
    pub store: StoreId,
    pub name: &'a str,
    pub changelog: &'a str,
    pub partition: u32,
    /// In key order.
    pub writes: Vec<(&'a Vec<u8>, &'a Option<Vec<u8>>)>,
}

#[derive(Clone, Copy)]
struct Schedule {
    interval: i64,
    /// When it fires next; `None` until time is known.
    next: Option<i64>,
}

/// A component swap on probation: what to go back to if the new version
/// traps before its first commit.
struct Probation {
    previous_app: Arc<AppRuntime>,
    /// Per swapped slot: previous component, instance and schedules.
    previous: Vec<SavedProcessor>,
    /// The new version has processed at least one batch.
    processed: bool,
}

struct SavedProcessor {
    slot: usize,
    component: Arc<LoadedComponent>,
    instance: Option<ProcessorInstance>,
    stream_schedule: Option<Schedule>,
    wall_schedule: Option<Schedule>,
}

/// One processor of the sub-topology, in this task.
struct ProcessorSlot {
    node: NodeId,
    name: String,
    info: Arc<InstanceInfo>,
    component: Arc<LoadedComponent>,
    instance: Option<ProcessorInstance>,
    /// Pending input with its origin sequence number (source order).
    inbox: Vec<(u64, TaskRecord)>,
    /// More than one upstream: the inbox must be re-sorted by origin.
    merges: bool,
    stream_schedule: Option<Schedule>,
    wall_schedule: Option<Schedule>,
}

/// How an input topic is read by this task.
struct InputSlot {
    node: NodeId,
    /// Check `partition == murmur2(key) % partitions` for this input.
    check_partition: bool,
    /// For tables: the store, and whether some processor of the task reads it.
    table: Option<(usize, bool)>,
}

/// One sub-topology × partition.
pub struct Task {
    id: TaskId,
    name: String,
    app: Arc<AppRuntime>,
    stores: TaskStores,
    /// Topology store id → index in `stores`.
    store_slots: BTreeMap<StoreId, usize>,
    store_ids: Vec<StoreId>,
    processors: Vec<ProcessorSlot>,
    inputs: BTreeMap<Arc<str>, InputSlot>,
    topic_names: BTreeMap<String, Arc<str>>,
    stream_time: i64,
    wall_clock: i64,
    /// Origin sequence numbers, increasing with each input record.
    next_seq: u64,
    produced: Vec<ProducedRecord>,
    positions: BTreeMap<TopicPartition, i64>,
    metrics: TaskMetrics,
    last_mismatch_warning: Option<Instant>,
    suppressed_mismatch_warnings: u64,
    probation: Option<Probation>,
}

impl Task {
    /// Creates a task. `open_store` gives the committed state of each of the
    /// sub-topology's store partitions; `globals` the global tables' stores.
    /// Processors are instantiated and initialised by [`start`](Self::start).
    pub fn new(
        app: Arc<AppRuntime>,
        id: TaskId,
        mut open_store: impl FnMut(StoreId) -> Result<SharedStore, StateError>,
        globals: &BTreeMap<StoreId, SharedStore>,
    ) -> Result<Task, TaskError> {
        let topology = app.topology.clone();
        let sub = &topology.subtopologies[id.subtopology];
        let name = format!("{}/{}", topology.name, id);
        let mut overlays = Vec::new();
        let mut store_slots = BTreeMap::new();
        let mut store_ids = Vec::new();
        for &sid in &sub.stores {
            store_slots.insert(sid, overlays.len());
            store_ids.push(sid);
            overlays.push(StoreOverlay::new(topology.stores[sid].name.clone(), open_store(sid)?));
        }
        for (&sid, base) in globals {
            store_slots.insert(sid, overlays.len());
            store_ids.push(sid);
            overlays.push(StoreOverlay::read_only(topology.stores[sid].name.clone(), base.clone()));
        }

        let mut upstream_count: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (_, n) in &sub.inputs {
            for t in &topology.nodes[*n].to {
                *upstream_count.entry(*t).or_default() += 1;
            }
        }
        for &p in &sub.processors {
            let def = topology.processor(p).expect("processor node");
            for o in &def.outputs {
                for t in &o.targets {
                    if let Target::Processor(t) = t {
                        *upstream_count.entry(*t).or_default() += 1;
                    }
                }
            }
        }
        let mut processors = Vec::new();
        for &p in &sub.processors {
            let def = topology.processor(p).expect("processor node");
            let grants = def
                .stores
                .iter()
                .map(|g| StoreGrantInfo { name: g.name.clone(), index: store_slots[&g.store], writable: g.writable })
                .collect();
            let info = Arc::new(InstanceInfo {
                app: topology.name.clone(),
                processor: topology.nodes[p].name.clone(),
                task_id: name.clone(),
                partition: id.partition,
                outputs: def.outputs.iter().map(|o| o.name.clone()).collect(),
                grants,
            });
            let component = app.components.get(&p).cloned().ok_or_else(|| TaskError::Start {
                processor: topology.nodes[p].name.clone(),
                message: "no component loaded for it".into(),
            })?;
            processors.push(ProcessorSlot {
                node: p,
                name: topology.nodes[p].name.clone(),
                info,
                component,
                instance: None,
                inbox: Vec::new(),
                merges: upstream_count.get(&p).copied().unwrap_or(0) > 1,
                stream_schedule: None,
                wall_schedule: None,
            });
        }

        // Per-key locality matters when the sub-topology keeps state or joins.
        let keyed = !sub.stores.is_empty() || sub.inputs.len() > 1;
        let mut inputs = BTreeMap::new();
        let mut topic_names = BTreeMap::new();
        for (topic, node) in &sub.inputs {
            let t: Arc<str> = Arc::from(topic.as_str());
            topic_names.insert(topic.clone(), t.clone());
            let (check_partition, table) = match &topology.nodes[*node].kind {
                NodeKind::Table { store, .. } => {
                    let readers = sub
                        .processors
                        .iter()
                        .any(|p| topology.processor(*p).is_some_and(|d| d.stores.iter().any(|g| g.store == *store)));
                    (true, Some((store_slots[store], readers)))
                }
                NodeKind::Repartition { .. } => (false, None),
                _ => (keyed, None),
            };
            inputs.insert(t, InputSlot { node: *node, check_partition, table });
        }
        for topic in topology.partitions.keys() {
            topic_names.entry(topic.clone()).or_insert_with(|| Arc::from(topic.as_str()));
        }
        Ok(Task {
            id,
            name,
            app,
            stores: TaskStores::new(overlays),
            store_slots,
            store_ids,
            processors,
            inputs,
            topic_names,
            stream_time: -1,
            wall_clock: 0,
            next_seq: 0,
            produced: Vec::new(),
            positions: BTreeMap::new(),
            metrics: TaskMetrics::default(),
            last_mismatch_warning: None,
            suppressed_mismatch_warnings: 0,
            probation: None,
        })
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    /// `app/subtopology_partition`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn metrics(&self) -> &TaskMetrics {
        &self.metrics
    }

    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// The input topics of this task (its partition of each).
    pub fn input_topics(&self) -> impl Iterator<Item = &Arc<str>> {
        self.inputs.keys()
    }

    /// The store partition of `store` as this task sees it (pending writes included).
    pub fn store(&self, store: StoreId) -> Option<&StoreOverlay> {
        self.store_slots.get(&store).map(|i| self.stores.get(*i))
    }

    /// Sets the wall clock the task starts from (before [`start`](Self::start)).
    pub fn set_wall_clock(&mut self, now: i64) {
        self.wall_clock = now;
    }

    /// Instantiates and initialises every processor. A processor whose `init`
    /// fails stops the task with the guest's message.
    pub fn start(&mut self) -> Result<(), TaskError> {
        for slot in 0..self.processors.len() {
            self.ensure_instance(slot)?;
        }
        Ok(())
    }

    fn call_time(&self) -> CallTime {
        CallTime { stream_time: self.stream_time, wall_clock: self.wall_clock }
    }

    /// Creates and initialises the slot's instance if it has none.
    fn ensure_instance(&mut self, slot: usize) -> Result<(), TaskError> {
        if self.processors[slot].instance.is_some() {
            return Ok(());
        }
        let time = self.call_time();
        let def = self.app.topology.processor(self.processors[slot].node).expect("processor").clone();
        let s = &mut self.processors[slot];
        let mut instance =
            ProcessorInstance::instantiate(&self.app.engine, s.component.clone(), s.info.clone(), def.limits)
                .map_err(|e| TaskError::Start { processor: s.name.clone(), message: e.message })?;
        match instance.init(&mut self.stores, time, &def.config) {
            Ok(ok) => {
                self.stores.release_savepoint();
                s.instance = Some(instance);
                self.apply_schedules(slot, &ok.schedules);
                let origin = TaskRecord { partition: self.id.partition, ..empty_record() };
                self.route(slot, &[self.next_seq], &[origin], ok.emitted);
                Ok(())
            }
            Err(f) => {
                self.stores.rollback_to_savepoint();
                Err(TaskError::Start {
                    processor: s.name.clone(),
                    message: format!("init failed ({}): {}", f.kind.as_str(), f.message),
                })
            }
        }
    }

    /// Processes input records (from this task's input partitions, in the
    /// order the driver chose), up to the last of their consequences.
    pub fn process(&mut self, records: Vec<ConsumedRecord>) -> Result<(), TaskError> {
        for rec in records {
            self.accept(rec)?;
        }
        self.drain()?;
        self.punctuate_stream_time()
    }

    fn accept(&mut self, consumed: ConsumedRecord) -> Result<(), TaskError> {
        let ConsumedRecord { topic, partition, offset, record } = consumed;
        let Some(input) = self.inputs.get(&topic) else {
            return Err(TaskError::UnknownInput(topic.to_string(), self.name.clone()));
        };
        let (node, check_partition, table) = (input.node, input.check_partition, input.table);
        self.metrics.records_in += 1;
        self.positions.insert((topic.clone(), partition), offset + 1);
        if record.timestamp > self.stream_time {
            self.stream_time = record.timestamp;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let topology = self.app.topology.clone();
        let node_def = &topology.nodes[node];
        let guest = TaskRecord {
            key: record.key,
            value: record.value,
            old_value: None,
            timestamp: record.timestamp,
            headers: record.headers,
            topic: topic.clone(),
            partition,
            offset,
        };

        // Format check against the spec.
        let input_def = match &node_def.kind {
            NodeKind::Source(i) | NodeKind::Table { input: i, .. } => Some(i),
            _ => None,
        };
        if let Some(def) = input_def
            && let Err(message) = check_format(&guest, def.key_format, def.value_format)
        {
            return self.apply_policy(&node_def.name, def.on_error, &guest, "malformed-input", &message);
        }

        if check_partition
            && topology.partition_check != PartitionCheck::Off
            && let Some(key) = &guest.key
        {
            let partitions = topology.partitions_of(&topic).unwrap_or(1);
            let expected = partition_for_key(key, partitions);
            if expected != partition {
                self.metrics.partition_mismatches += 1;
                let message = format!(
                    "record at {topic}/{partition}@{offset} has a key that murmur2 assigns to partition {expected} of {partitions}; \
                     the producer did not use Kafka's default partitioner, so this key's records are split across tasks \
                     (joins and aggregations for it will be wrong)"
                );
                self.warn_mismatch(&message);
                if topology.partition_check == PartitionCheck::DeadLetter {
                    return self.dead_letter(&node_def.name, &guest, "partition-mismatch", &message);
                }
            }
        }

        match table {
            None => {
                for t in node_def.to.clone() {
                    self.push(t, seq, guest.clone());
                }
            }
            Some((store, has_readers)) => {
                let Some(key) = guest.key.clone() else {
                    return self.apply_policy(
                        &node_def.name,
                        ErrorPolicy::Skip,
                        &guest,
                        "malformed-input",
                        "table records need a key",
                    );
                };
                // No processor may see this update before it has processed
                // every earlier record: drain first.
                if has_readers && self.processors.iter().any(|p| !p.inbox.is_empty()) {
                    self.drain()?;
                }
                let old = self.stores.get(store).get(&key)?;
                self.stores.get_mut(store).write(key, guest.value.clone());
                self.stores.release_savepoint();
                let change = TaskRecord { old_value: old, ..guest };
                for t in node_def.to.clone() {
                    self.push(t, seq, change.clone());
                }
            }
        }
        if self.processors.iter().any(|p| p.inbox.len() >= self.max_batch(p.node)) {
            self.drain()?;
        }
        Ok(())
    }

    fn max_batch(&self, node: NodeId) -> usize {
        self.app.topology.processor(node).map_or(1, |d| d.max_batch)
    }

    fn slot_of(&self, node: NodeId) -> usize {
        self.processors.iter().position(|p| p.node == node).expect("processor of this sub-topology")
    }

    fn push(&mut self, node: NodeId, seq: u64, record: TaskRecord) {
        let slot = self.slot_of(node);
        self.processors[slot].inbox.push((seq, record));
    }

    /// Runs every processor, in topological order, until no input is pending.
    fn drain(&mut self) -> Result<(), TaskError> {
        for slot in 0..self.processors.len() {
            if self.processors[slot].inbox.is_empty() {
                continue;
            }
            let mut inbox = std::mem::take(&mut self.processors[slot].inbox);
            if self.processors[slot].merges {
                inbox.sort_by_key(|(seq, _)| *seq);
            }
            let max = self.max_batch(self.processors[slot].node);
            let (seqs, records): (Vec<u64>, Vec<TaskRecord>) = inbox.into_iter().unzip();
            for (seqs, records) in seqs.chunks(max).zip(records.chunks(max)) {
                self.run_batch(slot, seqs, records)?;
            }
        }
        Ok(())
    }

    /// Calls `process` on a batch; on failure, isolates the offending record.
    /// `seqs[i]` is the origin sequence number of `records[i]`.
    fn run_batch(&mut self, slot: usize, seqs: &[u64], records: &[TaskRecord]) -> Result<(), TaskError> {
        if records.is_empty() {
            return Ok(());
        }
        self.ensure_instance(slot)?;
        let time = self.call_time();
        let instance = self.processors[slot].instance.as_mut().expect("instance ensured");
        match instance.process(&mut self.stores, time, records) {
            Ok(ok) => {
                self.stores.release_savepoint();
                if let Some(p) = &mut self.probation {
                    p.processed = true;
                }
                let name = &self.processors[slot].name;
                if let Some(n) = self.metrics.processed.get_mut(name) {
                    *n += records.len() as u64;
                } else {
                    self.metrics.processed.insert(name.clone(), records.len() as u64);
                }
                self.apply_schedules(slot, &ok.schedules);
                self.route(slot, seqs, records, ok.emitted);
                Ok(())
            }
            Err(failure) => {
                self.stores.rollback_to_savepoint();
                *self.metrics.failures.entry(failure.kind.as_str()).or_default() += 1;
                if failure.poisoned {
                    // A trapped instance cannot be entered again.
                    self.processors[slot].instance = None;
                }
                if failure.kind == FailureKind::HostFault {
                    return Err(TaskError::State(StateError { store: "(host)".into(), message: failure.message }));
                }
                if failure.poisoned && self.is_new_version(slot) {
                    return Err(TaskError::SwapFailed {
                        processor: self.processors[slot].name.clone(),
                        kind: failure.kind.as_str(),
                        message: failure.message,
                    });
                }
                if records.len() == 1 {
                    return self.record_failed(slot, &records[0], &failure);
                }
                match failure.index.map(|i| i as usize) {
                    Some(i) if i < records.len() && failure.kind == FailureKind::GuestError => {
                        // The guest named the record: redo the ones before it,
                        // apply the policy to it, go on after it.
                        self.run_batch(slot, &seqs[..i], &records[..i])?;
                        self.record_failed(slot, &records[i], &failure)?;
                        self.run_batch(slot, &seqs[i + 1..], &records[i + 1..])
                    }
                    _ => {
                        // A trap does not say which record caused it: replay one by one.
                        for i in 0..records.len() {
                            self.run_batch(slot, &seqs[i..=i], &records[i..=i])?;
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    fn record_failed(&mut self, slot: usize, record: &TaskRecord, failure: &CallFailure) -> Result<(), TaskError> {
        let def = self.app.topology.processor(self.processors[slot].node).expect("processor");
        let policy = def.on_error;
        let name = self.processors[slot].name.clone();
        self.apply_policy(&name, policy, record, failure.kind.as_str(), &failure.message)
    }

    /// Applies an error policy to a record that could not be processed.
    fn apply_policy(
        &mut self,
        processor: &str,
        policy: ErrorPolicy,
        record: &TaskRecord,
        kind: &'static str,
        message: &str,
    ) -> Result<(), TaskError> {
        match policy {
            ErrorPolicy::DeadLetter => self.dead_letter(processor, record, kind, message),
            ErrorPolicy::Skip => {
                self.metrics.skipped += 1;
                tracing::warn!(
                    task = %self.name, processor, topic = %record.topic, partition = record.partition,
                    offset = record.offset, kind, "skipped record: {message}"
                );
                Ok(())
            }
            ErrorPolicy::Fail => {
                tracing::error!(
                    task = %self.name, processor, topic = %record.topic, partition = record.partition,
                    offset = record.offset, kind, "task stops (error policy `fail`): {message}"
                );
                Err(TaskError::Failed(Box::new(RecordFailure {
                    processor: processor.to_owned(),
                    topic: record.topic.to_string(),
                    partition: record.partition,
                    offset: record.offset,
                    kind,
                    message: message.to_owned(),
                })))
            }
        }
    }

    /// Sends a record to `<app>-dlq` with headers naming what went wrong.
    fn dead_letter(
        &mut self,
        processor: &str,
        record: &TaskRecord,
        kind: &str,
        message: &str,
    ) -> Result<(), TaskError> {
        self.metrics.dead_letters += 1;
        tracing::warn!(
            task = %self.name, processor, topic = %record.topic, partition = record.partition,
            offset = record.offset, kind, "dead-lettered record: {message}"
        );
        let topology = &self.app.topology;
        let mut headers: Headers = record.headers.clone();
        headers.extend([
            ("weir.error".to_owned(), message.as_bytes().to_vec()),
            ("weir.error.kind".to_owned(), kind.as_bytes().to_vec()),
            ("weir.processor".to_owned(), processor.as_bytes().to_vec()),
            ("weir.task".to_owned(), self.name.as_bytes().to_vec()),
            ("weir.source.topic".to_owned(), record.topic.as_bytes().to_vec()),
            ("weir.source.partition".to_owned(), record.partition.to_string().into_bytes()),
            ("weir.source.offset".to_owned(), record.offset.to_string().into_bytes()),
        ]);
        let topic = self.topic_names[&topology.dead_letter_topic].clone();
        let partitions = topology.partitions_of(&topology.dead_letter_topic).unwrap_or(1);
        let partition = partition_for(record.key.as_deref(), partitions, self.id.partition);
        self.produced.push(ProducedRecord {
            topic,
            partition,
            record: Record {
                key: record.key.clone(),
                value: record.value.clone(),
                timestamp: record.timestamp,
                headers,
            },
        });
        Ok(())
    }

    fn warn_mismatch(&mut self, message: &str) {
        let now = Instant::now();
        let due = self.last_mismatch_warning.is_none_or(|t| now.duration_since(t).as_secs() >= 10);
        if due {
            tracing::warn!(
                task = %self.name, suppressed = self.suppressed_mismatch_warnings,
                "co-partitioning violation: {message}"
            );
            self.last_mismatch_warning = Some(now);
            self.suppressed_mismatch_warnings = 0;
        } else {
            self.suppressed_mismatch_warnings += 1;
        }
    }

    /// Sends a call's emitted records to their targets. `origins` are the
    /// records of the call (for `init`/`punctuate`, one synthetic origin).
    fn route(&mut self, slot: usize, seqs: &[u64], origins: &[TaskRecord], emitted: Vec<Emitted>) {
        if emitted.is_empty() {
            return;
        }
        let topology = self.app.topology.clone();
        let node = self.processors[slot].node;
        let def = topology.processor(node).expect("processor");
        let name = self.processors[slot].name.clone();
        *self.metrics.emitted.entry(name).or_default() += emitted.len() as u64;
        for out in emitted {
            let output = out.output;
            let index = (out.input_index as usize).min(origins.len() - 1);
            let (seq, origin) = (&seqs[index], &origins[index]);
            let targets = &def.outputs[output].targets;
            let mut out = Some(out);
            for (i, target) in targets.iter().enumerate() {
                // Clone for all targets but the last, which takes the record.
                let o = if i + 1 == targets.len() {
                    out.take().expect("taken once")
                } else {
                    out.clone().expect("present")
                };
                let Emitted { key, value, headers, timestamp, .. } = o;
                match target {
                    Target::Processor(next) => {
                        let record = TaskRecord {
                            key,
                            value,
                            old_value: None,
                            timestamp,
                            headers,
                            topic: origin.topic.clone(),
                            partition: origin.partition,
                            offset: origin.offset,
                        };
                        self.push(*next, *seq, record);
                    }
                    Target::Topic { topic, .. } => {
                        let partitions = topology.partitions_of(topic).unwrap_or(1);
                        let partition = partition_for(key.as_deref(), partitions, self.id.partition);
                        self.produced.push(ProducedRecord {
                            topic: self.topic_names[topic].clone(),
                            partition,
                            record: Record { key, value, timestamp, headers },
                        });
                    }
                }
            }
        }
    }

    fn apply_schedules(&mut self, slot: usize, schedules: &[(Punctuation, u64)]) {
        for (kind, interval) in schedules {
            let (now, entry) = match kind {
                Punctuation::StreamTime => (self.stream_time, &mut self.processors[slot].stream_schedule),
                Punctuation::WallClock => (self.wall_clock, &mut self.processors[slot].wall_schedule),
            };
            *entry = if *interval == 0 {
                None
            } else {
                let interval = i64::try_from(*interval).unwrap_or(i64::MAX);
                Some(Schedule { interval, next: (now >= 0).then(|| now.saturating_add(interval)) })
            };
        }
    }

    /// Fires stream-time punctuations that are due.
    fn punctuate_stream_time(&mut self) -> Result<(), TaskError> {
        self.punctuate(Punctuation::StreamTime, self.stream_time)
    }

    /// Advances the task's wall clock and fires wall-clock punctuations due.
    pub fn advance_wall_clock(&mut self, now: i64) -> Result<(), TaskError> {
        if now > self.wall_clock {
            self.wall_clock = now;
        }
        self.punctuate(Punctuation::WallClock, self.wall_clock)
    }

    fn punctuate(&mut self, kind: Punctuation, now: i64) -> Result<(), TaskError> {
        if now < 0 {
            return Ok(());
        }
        for slot in 0..self.processors.len() {
            let due = {
                let s = &mut self.processors[slot];
                let schedule = match kind {
                    Punctuation::StreamTime => &mut s.stream_schedule,
                    Punctuation::WallClock => &mut s.wall_schedule,
                };
                match schedule {
                    Some(sch) => {
                        let next = *sch.next.get_or_insert(now.saturating_add(sch.interval));
                        if now >= next {
                            // Fire once, then skip missed intervals (as Kafka Streams does).
                            let behind = (now - next) / sch.interval + 1;
                            sch.next = Some(next.saturating_add(behind.saturating_mul(sch.interval)));
                            true
                        } else {
                            false
                        }
                    }
                    None => false,
                }
            };
            if due {
                self.call_punctuate(slot, kind, now)?;
            }
        }
        self.drain()
    }

    fn call_punctuate(&mut self, slot: usize, kind: Punctuation, timestamp: i64) -> Result<(), TaskError> {
        self.ensure_instance(slot)?;
        self.metrics.punctuations += 1;
        let time = self.call_time();
        let instance = self.processors[slot].instance.as_mut().expect("instance ensured");
        match instance.punctuate(&mut self.stores, time, kind, timestamp) {
            Ok(ok) => {
                self.stores.release_savepoint();
                self.apply_schedules(slot, &ok.schedules);
                let origin = TaskRecord { timestamp, partition: self.id.partition, offset: -1, ..empty_record() };
                let seq = self.next_seq;
                self.next_seq += 1;
                self.route(slot, &[seq], &[origin], ok.emitted);
                Ok(())
            }
            Err(failure) => {
                self.stores.rollback_to_savepoint();
                *self.metrics.failures.entry(failure.kind.as_str()).or_default() += 1;
                if failure.poisoned {
                    self.processors[slot].instance = None;
                }
                let name = self.processors[slot].name.clone();
                if failure.kind == FailureKind::HostFault {
                    return Err(TaskError::State(StateError { store: "(host)".into(), message: failure.message }));
                }
                if failure.poisoned && self.is_new_version(slot) {
                    return Err(TaskError::SwapFailed {
                        processor: name,
                        kind: failure.kind.as_str(),
                        message: failure.message,
                    });
                }
                let policy = self.app.topology.processor(self.processors[slot].node).expect("processor").on_error;
                tracing::warn!(task = %self.name, processor = %name, kind = failure.kind.as_str(), "punctuate failed: {}", failure.message);
                if policy == ErrorPolicy::Fail {
                    return Err(TaskError::PunctuateFailed {
                        processor: name,
                        kind: failure.kind.as_str(),
                        message: failure.message,
                    });
                }
                Ok(())
            }
        }
    }

    /// Takes what the open transaction produced, for the backend to commit.
    /// Store changes stay in the task until [`commit_succeeded`](Self::commit_succeeded).
    pub fn prepare_commit(&mut self) -> TaskCommit<'_> {
        let topology = &self.app.topology;
        let changes = self
            .store_ids
            .iter()
            .enumerate()
            .filter_map(|(slot, sid)| {
                let def = &topology.stores[*sid];
                let store = self.stores.get(slot);
                match (&def.changelog, &def.owner) {
                    (Some(changelog), StoreOwner::Processor(_) | StoreOwner::Table(_)) if store.has_pending() => {
                        Some(StoreChanges {
                            store: *sid,
                            name: &def.name,
                            changelog,
                            partition: self.id.partition,
                            writes: store.pending(),
                        })
                    }
                    _ => None,
                }
            })
            .collect();
        TaskCommit {
            task: self.id,
            produced: std::mem::take(&mut self.produced),
            changes,
            positions: std::mem::take(&mut self.positions),
        }
    }

    /// Takes the records produced so far in the open transaction, for a
    /// backend that sends them while the transaction is open (Kafka: they
    /// stay invisible to read_committed consumers until it commits). Store
    /// changes and positions stay for [`prepare_commit`](Self::prepare_commit).
    pub fn take_produced(&mut self) -> Vec<ProducedRecord> {
        std::mem::take(&mut self.produced)
    }

    /// Gives back input positions taken by [`prepare_commit`](Self::prepare_commit)
    /// but not committed (at-least-once commits effects before positions).
    /// Positions recorded since then are newer and win.
    pub fn restore_positions(&mut self, positions: BTreeMap<TopicPartition, i64>) {
        for (tp, offset) in positions {
            self.positions.entry(tp).or_insert(offset);
        }
    }

    /// True when the open transaction has anything to commit.
    pub fn has_uncommitted(&self) -> bool {
        !self.produced.is_empty() || !self.positions.is_empty() || self.stores.iter().any(StoreOverlay::has_pending)
    }

    /// The backend committed the transaction: its store writes are now in
    /// committed state. A swapped version that processed records in it has
    /// passed its probation.
    pub fn commit_succeeded(&mut self) {
        self.stores.clear_pending();
        if self.probation.as_ref().is_some_and(|p| p.processed) {
            self.probation = None;
        }
    }

    /// True while a swapped component version has not yet committed work.
    pub fn in_probation(&self) -> bool {
        self.probation.is_some()
    }

    /// True when `slot` runs a version swapped in and still on probation.
    fn is_new_version(&self, slot: usize) -> bool {
        self.probation.as_ref().is_some_and(|p| p.previous.iter().any(|s| s.slot == slot))
    }

    /// The component of each processor this task runs.
    pub fn components(&self) -> impl Iterator<Item = (&str, &Arc<LoadedComponent>)> {
        self.processors.iter().map(|p| (p.name.as_str(), &p.component))
    }

    /// Hot swap, at a commit boundary (nothing uncommitted): every processor
    /// whose component, config or limits differ in `app` gets a new instance,
    /// instantiated from its precompiled form and initialised now; stores are
    /// kept. If any `init` fails, nothing changes and the error says why.
    /// The new version is on probation until its first commit with
    /// processed records: a trap before then fails with
    /// [`TaskError::SwapFailed`], and [`rollback_swap`](Self::rollback_swap)
    /// brings the previous version back. `app` must have the same graph.
    /// Returns the names of the swapped processors.
    pub fn swap(&mut self, app: Arc<AppRuntime>) -> Result<Vec<String>, TaskError> {
        debug_assert!(!self.has_uncommitted(), "swap at a commit boundary");
        // A new swap accepts the one on probation, if any.
        self.probation = None;
        let time = self.call_time();
        let mut fresh = Vec::new();
        for slot in 0..self.processors.len() {
            let node = self.processors[slot].node;
            let old = self.app.topology.processor(node).expect("processor");
            let new = app.topology.processor(node).expect("same graph");
            let component = app.components.get(&node).expect("component per processor").clone();
            let changed = component.sha256() != self.processors[slot].component.sha256()
                || old.config != new.config
                || old.limits != new.limits;
            if !changed {
                continue;
            }
            let name = self.processors[slot].name.clone();
            let failed =
                |kind: &'static str, message: String| TaskError::SwapFailed { processor: name.clone(), kind, message };
            let mut instance = match ProcessorInstance::instantiate(
                &app.engine,
                component.clone(),
                self.processors[slot].info.clone(),
                new.limits,
            ) {
                Ok(i) => i,
                Err(e) => {
                    self.stores.rollback_to_savepoint();
                    return Err(failed("instantiate", e.message));
                }
            };
            match instance.init(&mut self.stores, time, &new.config) {
                Ok(ok) => fresh.push((slot, component, instance, ok)),
                Err(f) => {
                    self.stores.rollback_to_savepoint();
                    return Err(failed(f.kind.as_str(), format!("init failed: {}", f.message)));
                }
            }
        }
        self.stores.release_savepoint();
        let previous_app = std::mem::replace(&mut self.app, app);
        let mut previous = Vec::new();
        let mut names = Vec::new();
        for (slot, component, instance, ok) in fresh {
            let s = &mut self.processors[slot];
            names.push(s.name.clone());
            previous.push(SavedProcessor {
                slot,
                component: std::mem::replace(&mut s.component, component),
                instance: s.instance.replace(instance),
                stream_schedule: s.stream_schedule.take(),
                wall_schedule: s.wall_schedule.take(),
            });
            self.apply_schedules(slot, &ok.schedules);
            let origin = TaskRecord { partition: self.id.partition, ..empty_record() };
            self.route(slot, &[self.next_seq], &[origin], ok.emitted);
        }
        if !previous.is_empty() {
            self.probation = Some(Probation { previous_app, previous, processed: false });
        }
        Ok(names)
    }

    /// Brings back the version a swap replaced (after [`abort`](Self::abort)).
    /// False if no swap was on probation.
    pub fn rollback_swap(&mut self) -> bool {
        let Some(p) = self.probation.take() else { return false };
        self.app = p.previous_app;
        for saved in p.previous {
            let s = &mut self.processors[saved.slot];
            s.component = saved.component;
            s.instance = saved.instance;
            s.stream_schedule = saved.stream_schedule;
            s.wall_schedule = saved.wall_schedule;
        }
        true
    }

    /// The transaction is abandoned: pending writes and outputs are dropped.
    /// The driver must re-deliver input from the last committed positions.
    pub fn abort(&mut self) {
        self.stores.clear_pending();
        self.produced.clear();
        self.positions.clear();
        for p in &mut self.processors {
            p.inbox.clear();
        }
    }

    /// Topology node ids and names of this task's processors, in order.
    pub fn processor_names(&self) -> impl Iterator<Item = &str> {
        self.processors.iter().map(|p| p.name.as_str())
    }
}

fn empty_record() -> TaskRecord {
    TaskRecord {
        key: None,
        value: None,
        old_value: None,
        timestamp: 0,
        headers: Vec::new(),
        topic: Arc::from(""),
        partition: 0,
        offset: 0,
    }
}

/// Checks key and value bytes against the declared formats.
fn check_format(record: &TaskRecord, key: Format, value: Format) -> Result<(), String> {
    fn check(bytes: Option<&[u8]>, format: Format, what: &str) -> Result<(), String> {
        let Some(bytes) = bytes else { return Ok(()) };
        match format {
            Format::Bytes => Ok(()),
            Format::String => {
                std::str::from_utf8(bytes).map(|_| ()).map_err(|e| format!("{what} is not UTF-8 text: {e}"))
            }
            Format::Json => serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                .map(|_| ())
                .map_err(|e| format!("{what} is not valid JSON: {e}")),
        }
    }
    check(record.key.as_deref(), key, "key")?;
    check(record.value.as_deref(), value, "value")
}
