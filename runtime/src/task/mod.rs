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
//! Time (stream time, the order of records and punctuations, where batches
//! are split so that output does not depend on batching) is in [`time`].
//!
//! Failures: a guest call is a savepoint. A failed call leaves nothing behind
//! (store writes rolled back, emits dropped); a trapped instance is replaced
//! by a fresh one; the batch is replayed so that exactly the offending record
//! meets the processor's error policy ([`failure`]).

mod failure;
mod inbox;
mod order;
mod swap;
mod time;
mod timers;

pub use timers::timer_key;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::partitioner::{partition_for, partition_for_key};
use crate::record::{ConsumedRecord, Emitted, ProducedRecord, Record, TaskRecord, TopicPartition};
use crate::state::{SharedStore, StateError, StoreOverlay, TaskStores};
use crate::topology::{ErrorPolicy, NodeId, NodeKind, PartitionCheck, StoreId, StoreOwner, Target, Topology};
use crate::wasm::{
    CallTime, FailureKind, InstanceInfo, LoadedComponent, ProcessorInstance, StoreGrantInfo, WasmEngine,
};
use failure::check_format;
use inbox::Inbox;
use order::InputQueues;
use swap::Probation;
use time::{Origin, Schedule, Seq};

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
    /// Timers fired (`on-timer` calls).
    pub timers_fired: u64,
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
    /// The task's stream time, committed with the positions (a restart
    /// resumes from both: [`Task::restore_stream_time`]); `None` when the
    /// backend commits no positions this time.
    pub stream_time: Option<i64>,
    /// Committed, it ends a swapped version's probation (the version
    /// processed records in it).
    pub proves_probation: bool,
}

pub struct StoreChanges<'a> {
    pub store: StoreId,
    pub name: &'a str,
    pub changelog: &'a str,
    pub partition: u32,
    /// In key order.
    pub writes: Vec<(&'a Vec<u8>, &'a Option<Vec<u8>>)>,
}

/// A topic an output writes to, as [`Task::route`] resolves it per batch.
struct SinkTopic {
    /// The task's own `Arc` of the name.
    name: Arc<str>,
    partitions: u32,
}

/// One processor of the sub-topology, in this task.
struct ProcessorSlot {
    node: NodeId,
    name: String,
    info: Arc<InstanceInfo>,
    component: Arc<LoadedComponent>,
    instance: Option<ProcessorInstance>,
    /// Pending input with its origin (place in source order, stream time).
    inbox: Inbox,
    /// More than one upstream: the inbox must be re-sorted by origin.
    merges: bool,
    stream_schedule: Option<Schedule>,
    wall_schedule: Option<Schedule>,
    /// The guest asks for stream time in `process`: its batches must not
    /// mix stream times (see [`time`]).
    reads_stream_time: bool,
    /// Index in the task's stores of this processor's timers (see [`timers`]).
    timers: Option<usize>,
    /// A timer set in the last batch fell due inside it, at the tick of
    /// this input sequence number: the batch was rolled back, and is run
    /// again cut there.
    cut: Option<u64>,
    /// A batch failed: records from the first to the last of these places
    /// run one per call, to find the failing one.
    isolate: Option<(Seq, Seq)>,
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
    /// With several input partitions: what the driver handed over, not yet
    /// processed, per partition (timestamp order across them: [`order`]).
    queues: Option<InputQueues>,
    topic_names: BTreeMap<String, Arc<str>>,
    stream_time: i64,
    /// The stream time of the last commit, to go back to on abort.
    committed_stream_time: i64,
    /// Input records since the last drain that advanced stream time:
    /// (sequence number, stream time reached).
    ticks: Vec<(u64, i64)>,
    wall_clock: i64,
    /// Input sequence numbers, increasing with each input record.
    next_seq: u64,
    produced: Vec<ProducedRecord>,
    positions: BTreeMap<TopicPartition, i64>,
    metrics: TaskMetrics,
    last_mismatch_warning: Option<Instant>,
    suppressed_mismatch_warnings: u64,
    probation: Option<Probation>,
    /// What the transaction being committed covered, between
    /// [`prepare_commit`](Self::prepare_commit) and the backend's answer.
    frozen: Option<FrozenCommit>,
}

/// The task's state at a commit's freeze that its outcome applies to:
/// processing may go on while the commit is in flight.
struct FrozenCommit {
    stream_time: i64,
    /// A swapped version on probation had processed records by then: the
    /// commit proves it.
    proves_probation: bool,
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
        // Which source, table or repartition reads each topic (0.2.0 guests
        // see the name of the one their record came through).
        let sources: BTreeMap<String, String> = topology
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Source(i) | NodeKind::Table { input: i, .. } => Some((i.topic.clone(), n.name.clone())),
                NodeKind::Repartition { topic } => Some((topic.clone(), n.name.clone())),
                NodeKind::Processor(_) => None,
            })
            .collect();
        let mut processors = Vec::new();
        for &p in &sub.processors {
            let def = topology.processor(p).expect("processor node");
            let timers = def.timers.map(|sid| store_slots[&sid]);
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
                timers,
                sources: sources.clone(),
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
                inbox: Inbox::default(),
                merges: upstream_count.get(&p).copied().unwrap_or(0) > 1,
                stream_schedule: None,
                wall_schedule: None,
                reads_stream_time: false,
                timers,
                cut: None,
                isolate: None,
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
        let queues =
            (sub.inputs.len() > 1).then(|| InputQueues::new(sub.inputs.iter().map(|(t, _)| topic_names[t].clone())));
        Ok(Task {
            id,
            name,
            app,
            queues,
            stores: TaskStores::new(overlays),
            store_slots,
            store_ids,
            processors,
            inputs,
            topic_names,
            stream_time: -1,
            committed_stream_time: -1,
            ticks: Vec::new(),
            wall_clock: 0,
            next_seq: 0,
            produced: Vec::new(),
            positions: BTreeMap::new(),
            metrics: TaskMetrics::default(),
            last_mismatch_warning: None,
            suppressed_mismatch_warnings: 0,
            probation: None,
            frozen: None,
        })
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    /// `app/subtopology_partition`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entries of one of this task's stores, its pending writes
    /// included, in key order (for tests and diagnosis).
    pub fn store_entries(&self, store: &str) -> Result<crate::state::Entries, StateError> {
        let Some(slot) = (0..self.store_ids.len()).find(|s| self.stores.get(*s).name() == store) else {
            return Ok(Vec::new());
        };
        self.stores.get(slot).range(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, usize::MAX)
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
                self.apply_schedules(slot, &ok.schedules, time.stream_time);
                self.route_init(slot, ok.emitted);
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

    /// Processes input records (each partition's in order), up to the last
    /// of their consequences and the stream-time punctuations they make
    /// due. The output does not depend on how the driver splits its input
    /// into calls (see [`time`]). A task with several input partitions
    /// buffers them and processes the smallest timestamp first, possibly
    /// waiting for an empty input (see [`order`]).
    pub fn process(&mut self, records: Vec<ConsumedRecord>) -> Result<(), TaskError> {
        let Some(queues) = &mut self.queues else {
            for rec in records {
                self.accept(rec)?;
            }
            return self.drain();
        };
        for rec in records {
            if let Err(rec) = queues.push(rec) {
                return Err(TaskError::UnknownInput(rec.topic.to_string(), self.name.clone()));
            }
        }
        self.process_buffered(false)
    }

    /// Processes buffered input while the order rules allow (`force`: no
    /// waiting, nothing more will come).
    fn process_buffered(&mut self, force: bool) -> Result<(), TaskError> {
        let max_idle = i64::try_from(self.app.topology.max_task_idle.as_millis()).unwrap_or(i64::MAX);
        while let Some(rec) = self.queues.as_mut().and_then(|q| q.next(self.wall_clock, max_idle, force)) {
            self.accept(rec)?;
        }
        self.drain()
    }

    /// Processes everything buffered, waiting for no input (`weir test` at
    /// the end of its input: nothing more will come).
    pub fn flush_buffered(&mut self) -> Result<(), TaskError> {
        self.process_buffered(true)
    }

    /// The driver says whether `topic` (this task's partition of it) has
    /// records past those it handed over: the task then waits for them
    /// rather than go on without (only matters with several inputs).
    pub fn set_input_behind(&mut self, topic: &str, behind: bool) {
        if let Some(q) = &mut self.queues {
            q.set_behind(topic, behind);
        }
    }

    /// Input records handed over and not processed yet (in total, or of one topic).
    pub fn buffered(&self, topic: Option<&str>) -> usize {
        match (&self.queues, topic) {
            (None, _) => 0,
            (Some(q), None) => q.buffered(),
            (Some(q), Some(t)) => q.buffered_of(t),
        }
    }

    fn accept(&mut self, consumed: ConsumedRecord) -> Result<(), TaskError> {
        let ConsumedRecord { topic: consumed_topic, partition, offset, record } = consumed;
        let Some((topic, input)) = self.inputs.get_key_value(&consumed_topic) else {
            return Err(TaskError::UnknownInput(consumed_topic.to_string(), self.name.clone()));
        };
        // From here on the task's own Arc of the topic name: the backend's is
        // shared by every worker thread, and a reference count bounced
        // between cores on every record was most of this function's time.
        // The topology is borrowed, not cloned, for the same reason; the
        // rare paths that hand a record to its error policy clone it.
        let topic = topic.clone();
        drop(consumed_topic);
        let (node, check_partition, table) = (input.node, input.check_partition, input.table);
        self.metrics.records_in += 1;
        self.positions.insert((topic.clone(), partition), offset + 1);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut guest = TaskRecord {
            key: record.key,
            value: record.value,
            old_value: None,
            timestamp: record.timestamp,
            headers: record.headers,
            topic,
            partition,
            offset,
        };

        // Checks against the spec: formats, then the timestamp field. A
        // record that fails them meets the input's error policy and does
        // not move stream time.
        let input_def = match &self.app.topology.nodes[node].kind {
            NodeKind::Source(i) | NodeKind::Table { input: i, .. } => Some(i),
            _ => None,
        };
        if let Some(def) = input_def {
            if let Err(message) = check_format(&guest, def.key_format, def.value_format) {
                let (topology, on_error) = (self.app.topology.clone(), def.on_error);
                return self.apply_policy(&topology.nodes[node].name, on_error, &guest, "malformed-input", &message);
            }
            if let Some(extract) = &def.timestamp {
                match extract.extract(guest.value.as_deref()) {
                    Ok(timestamp) => guest.timestamp = timestamp,
                    Err(message) => {
                        let (topology, on_error) = (self.app.topology.clone(), def.on_error);
                        return self.apply_policy(
                            &topology.nodes[node].name,
                            on_error,
                            &guest,
                            "bad-timestamp",
                            &message,
                        );
                    }
                }
            }
        }
        // No processor may see a table update before it has processed every
        // earlier record, nor may a punctuation or timer due at this record's
        // tick fire before them: drain first, before stream time moves.
        if let Some((_, true)) = table
            && self.processors.iter().any(|p| !p.inbox.is_empty())
        {
            self.drain()?;
        }
        if guest.timestamp > self.stream_time {
            self.stream_time = guest.timestamp;
            self.ticks.push((seq, self.stream_time));
        }
        let origin = Origin { seq: Seq::input(seq), stream_time: self.stream_time };

        if check_partition
            && self.app.topology.partition_check != PartitionCheck::Off
            && let Some(key) = &guest.key
        {
            let partitions = self.app.topology.partitions_of(&guest.topic).unwrap_or(1);
            let expected = partition_for_key(key, partitions);
            if expected != partition {
                let (topology, topic) = (self.app.topology.clone(), &guest.topic);
                self.metrics.partition_mismatches += 1;
                let message = format!(
                    "record at {topic}/{partition}@{offset} has a key that murmur2 assigns to partition {expected} of {partitions}; \
                     the producer did not use Kafka's default partitioner, so this key's records are split across tasks \
                     (joins and aggregations for it will be wrong)"
                );
                self.warn_mismatch(&message);
                if topology.partition_check == PartitionCheck::DeadLetter {
                    return self.dead_letter(&topology.nodes[node].name, &guest, "partition-mismatch", &message);
                }
            }
        }

        let record = match table {
            None => guest,
            Some((store, _)) => {
                let Some(key) = guest.key.clone() else {
                    let topology = self.app.topology.clone();
                    return self.apply_policy(
                        &topology.nodes[node].name,
                        ErrorPolicy::Skip,
                        &guest,
                        "malformed-input",
                        "table records need a key",
                    );
                };
                let old = self.stores.get(store).get(&key)?;
                self.stores.get_mut(store).write(key, guest.value.clone());
                self.stores.release_savepoint();
                TaskRecord { old_value: old, ..guest }
            }
        };
        // Copies for all targets but the last, which takes the record.
        let targets = self.app.topology.nodes[node].to.len();
        if targets > 0 {
            for i in 0..targets - 1 {
                let target = self.app.topology.nodes[node].to[i];
                self.push(target, origin, record.clone());
            }
            let last = self.app.topology.nodes[node].to[targets - 1];
            self.push(last, origin, record);
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

    fn push(&mut self, node: NodeId, origin: Origin, record: TaskRecord) {
        let slot = self.slot_of(node);
        self.processors[slot].inbox.push(origin, record);
    }

    /// Runs every processor, in topological order, until no input is pending,
    /// with the stream-time punctuations due on the way.
    fn drain(&mut self) -> Result<(), TaskError> {
        for slot in 0..self.processors.len() {
            let ticks_matter = !self.ticks.is_empty()
                && (self.processors[slot].stream_schedule.is_some() || self.processors[slot].timers.is_some());
            if self.processors[slot].inbox.is_empty() && !ticks_matter {
                continue;
            }
            let merges = self.processors[slot].merges;
            let (origins, records) = self.processors[slot].inbox.take(merges);
            self.run_slot(slot, &origins, &records)?;
            self.processors[slot].inbox.give_back(origins, records);
        }
        self.ticks.clear();
        Ok(())
    }

    /// Calls `process` on a batch; on failure, isolates the offending record.
    /// `origins[i]` is where `records[i]` comes from. False when nothing ran
    /// and the caller must run the records again: the guest asked for stream
    /// time in a batch that mixed stream times (the processor now gets split
    /// batches), a timer it set fell due before the batch's last record (the
    /// batch is run again cut there), or the batch failed (its records are
    /// run again one by one where the failure may be).
    fn run_batch(&mut self, slot: usize, origins: &[Origin], records: &[TaskRecord]) -> Result<bool, TaskError> {
        if records.is_empty() {
            return Ok(true);
        }
        self.ensure_instance(slot)?;
        let stream_time = origins[origins.len() - 1].stream_time;
        let time = CallTime { stream_time, wall_clock: self.wall_clock };
        let instance = self.processors[slot].instance.as_mut().expect("instance ensured");
        let stream_times: Vec<i64> = origins.iter().map(|o| o.stream_time).collect();
        let outcome = instance.process(&mut self.stores, time, records, &stream_times);
        let used_stream_time = instance.used_stream_time();
        if let Ok(ok) = &outcome
            && let Some((input, inside)) = self.timer_falling_due(slot, origins, &ok.stream_timers_set)
        {
            // The timer fires at that tick: the caller stops there.
            self.processors[slot].cut = Some(input);
            if inside {
                // Records after the tick ran before it: run again, cut there.
                self.stores.rollback_to_savepoint();
                return Ok(false);
            }
        }
        if used_stream_time {
            self.processors[slot].reads_stream_time = true;
            if origins[0].stream_time != stream_time {
                self.stores.rollback_to_savepoint();
                if outcome.as_ref().is_err_and(|f| f.poisoned) {
                    self.processors[slot].instance = None;
                }
                return Ok(false);
            }
        }
        match outcome {
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
                self.apply_schedules(slot, &ok.schedules, stream_time);
                self.route(slot, origins, records, ok.emitted);
                Ok(true)
            }
            Err(failure) => {
                self.stores.rollback_to_savepoint();
                let swap_failed = failure.poisoned && self.is_new_version(slot);
                if records.len() == 1 || failure.kind == FailureKind::HostFault || swap_failed {
                    // Counted once, in the call that is the record's own (a
                    // failed batch is run again, the failing record alone).
                    *self.metrics.failures.entry(failure.kind.as_str()).or_default() += 1;
                }
                if failure.poisoned {
                    // A trapped instance cannot be entered again.
                    self.processors[slot].instance = None;
                }
                if failure.kind == FailureKind::HostFault {
                    return Err(TaskError::State(StateError { store: "(host)".into(), message: failure.message }));
                }
                if swap_failed {
                    return Err(TaskError::SwapFailed {
                        processor: self.processors[slot].name.clone(),
                        kind: failure.kind.as_str(),
                        message: failure.message,
                    });
                }
                if records.len() == 1 {
                    self.record_failed(slot, &records[0], &failure)?;
                    return Ok(true);
                }
                // Run the batch again, the blamed record alone (the guest
                // named it) or every record alone (a trap does not say which
                // record caused it); the failing one then meets the policy
                // in a call of its own. Through the caller, so that the
                // runs stop where punctuations and timers fall due.
                let (first, last) = match failure.index.map(|i| i as usize) {
                    Some(i) if i < records.len() && failure.kind == FailureKind::GuestError => {
                        (origins[i].seq, origins[i].seq)
                    }
                    _ => (origins[0].seq, origins[origins.len() - 1].seq),
                };
                self.processors[slot].isolate = Some((first, last));
                Ok(false)
            }
        }
    }

    /// Sends what `init` emitted onwards, after every input so far.
    fn route_init(&mut self, slot: usize, emitted: Vec<Emitted>) {
        let origin = Origin { seq: Seq::input(self.next_seq), stream_time: self.stream_time };
        let record = TaskRecord { partition: self.id.partition, ..empty_record() };
        self.route(slot, &[origin], &[record], emitted);
    }

    /// Sends a call's emitted records to their targets. `records` are the
    /// records of the call (for `init`/`punctuate`, one synthetic record).
    fn route(&mut self, slot: usize, seqs: &[Origin], origins: &[TaskRecord], emitted: Vec<Emitted>) {
        if emitted.is_empty() {
            return;
        }
        let topology = self.app.topology.clone();
        let node = self.processors[slot].node;
        let def = topology.processor(node).expect("processor");
        let name = self.processors[slot].name.clone();
        *self.metrics.emitted.entry(name).or_default() += emitted.len() as u64;
        // Each output's topic targets looked up once per batch, not once per
        // record: `sinks[output][target]`, `None` for a processor.
        let sinks: Vec<Vec<Option<SinkTopic>>> = def
            .outputs
            .iter()
            .map(|o| {
                o.targets
                    .iter()
                    .map(|t| match t {
                        Target::Topic { topic, .. } => Some(SinkTopic {
                            name: self.topic_names[topic].clone(),
                            partitions: topology.partitions_of(topic).unwrap_or(1),
                        }),
                        Target::Processor(_) => None,
                    })
                    .collect()
            })
            .collect();
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
                    Target::Topic { .. } => {
                        let sink = sinks[output][i].as_ref().expect("a topic target");
                        let partition = partition_for(key.as_deref(), sink.partitions, self.id.partition);
                        self.produced.push(ProducedRecord {
                            topic: sink.name.clone(),
                            partition,
                            record: Record { key, value, timestamp, headers },
                        });
                    }
                }
            }
        }
    }
    /// Takes what the open transaction produced, for the backend to commit,
    /// and freezes its store writes: they stay readable in the task, under
    /// whatever it processes next, until the backend calls
    /// [`commit_succeeded`](Self::commit_succeeded) or [`abort`](Self::abort).
    /// A backend may go on processing while the commit is in flight; the
    /// next `prepare_commit` must wait for its answer.
    pub fn prepare_commit(&mut self) -> TaskCommit<'_> {
        debug_assert!(self.frozen.is_none(), "task {}: a commit is already in flight", self.id);
        self.purge_expired_windows();
        self.stores.freeze();
        self.frozen = Some(FrozenCommit {
            stream_time: self.stream_time,
            proves_probation: self.probation.as_ref().is_some_and(|p| p.processed),
        });
        let topology = &self.app.topology;
        let changes = self
            .store_ids
            .iter()
            .enumerate()
            .filter_map(|(slot, sid)| {
                let def = &topology.stores[*sid];
                let writes = self.stores.get(slot).committing();
                match (&def.changelog, &def.owner) {
                    (Some(changelog), StoreOwner::Processor(_) | StoreOwner::Table(_)) if !writes.is_empty() => {
                        Some(StoreChanges {
                            store: *sid,
                            name: &def.name,
                            changelog,
                            partition: self.id.partition,
                            writes,
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
            stream_time: Some(self.stream_time),
            proves_probation: self.frozen.as_ref().is_some_and(|f| f.proves_probation),
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
        self.stores.committed();
        if let Some(frozen) = self.frozen.take() {
            self.committed_stream_time = frozen.stream_time;
            if frozen.proves_probation {
                self.probation = None;
            }
        }
    }

    /// The component of each processor this task runs.
    pub fn components(&self) -> impl Iterator<Item = (&str, &Arc<LoadedComponent>)> {
        self.processors.iter().map(|p| (p.name.as_str(), &p.component))
    }

    /// The transaction is abandoned (with the one being committed, if any):
    /// uncommitted writes and outputs are dropped. The driver must
    /// re-deliver input from the last committed positions.
    pub fn abort(&mut self) {
        self.stores.discard();
        self.frozen = None;
        self.produced.clear();
        self.positions.clear();
        for p in &mut self.processors {
            p.inbox.clear();
            // Places in the abandoned run's order.
            p.cut = None;
            p.isolate = None;
        }
        if let Some(q) = &mut self.queues {
            q.clear(); // The driver re-delivers from the committed positions.
        }
        self.rewind_stream_time();
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
