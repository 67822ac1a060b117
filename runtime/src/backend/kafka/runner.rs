//! Runs a deployed application on Kafka: one worker thread per application
//! instance, holding a group consumer and a producer, and the tasks the
//! group assigned to this instance.
//!
//! The loop: poll a batch of records, hand each to its task (sub-topology ×
//! partition), and every `commit_interval` commit every task at once:
//!
//! - exactly-once: one transaction holds the outputs, the changelog records
//!   of every store written since the last commit (last value per key,
//!   tombstones for deletes) and the input offsets (sent with the consumer
//!   group metadata: EOS v2). Only after it commits are the store writes
//!   applied to local RocksDB, with each changelog partition's checkpoint.
//!   A failed transaction is aborted, the tasks drop their open work and the
//!   consumer rewinds to the committed offsets. A fenced producer stops every
//!   task and says so.
//! - at-least-once: an idempotent producer; outputs and changelogs are
//!   flushed, then offsets committed, then local state applied.
//!
//! Rebalancing (eager, range assignor): on revocation the tasks commit and
//! close inside the rebalance callback, before the partitions can move; on
//! assignment each task restores its stores from its local checkpoint to the
//! changelog's end (read_committed), or from the start without local state,
//! and is created.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use rocksdb::WriteBatch;

use super::directory::{Announcement, Directory};
use super::{KafkaSettings, PlainConsumer, QuietContext, TopicRequest, client_config, to_record};
use crate::backend::control::Control;
use crate::backend::embedded::EmbeddedBackend;
use crate::node::TaskLocation;
use crate::record::{ConsumedRecord, ProducedRecord};
use crate::state::SharedStore;
use crate::state::rocks::StoreKey;
use crate::status::{AppStatus, InputStatus, SwapRecord, TaskState, TaskStatus};
use crate::task::{AppRuntime, Task, TaskError, TaskId};
use crate::topology::{ProcessingGuarantee, StoreId, Topology};

/// How long a transaction call, a flush or a restore may go without progress.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the worker refreshes partition end offsets for lag.
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// Why an application could not start on Kafka.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KafkaStartError {
    /// Topics disagree with the application (partition counts).
    #[error("{0}")]
    Topics(String),
    /// The cluster could not be reached or refused.
    #[error("{0}")]
    Broker(String),
}

/// Creates every topic the application uses that does not exist, after
/// checking those that do against the partition counts the application
/// needs (co-partitioning is validated against the broker's real counts).
pub fn create_topics(brokers: &str, topology: &Topology) -> Result<(), KafkaStartError> {
    let existing = super::partition_counts(brokers).map_err(KafkaStartError::Broker)?;
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    let changelogs: Vec<&str> = topology.stores.iter().filter_map(|s| s.changelog.as_deref()).collect();
    for (topic, partitions) in &topology.partitions {
        match existing.get(topic) {
            Some(found) if found != partitions => problems
                .push(format!("topic `{topic}` exists with {found} partition(s), the application needs {partitions}")),
            Some(_) => {}
            None => missing.push(TopicRequest {
                name: topic.clone(),
                partitions: *partitions,
                compact: changelogs.contains(&topic.as_str()),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(KafkaStartError::Topics(problems.join("; ")));
    }
    let directory = super::directory::topic(&topology.name);
    if !existing.contains_key(&directory) {
        missing.push(TopicRequest { name: directory, partitions: 1, compact: true });
    }
    super::create_topics(brokers, &missing).map_err(KafkaStartError::Broker)
}

/// What the worker shares with the API.
struct Shared {
    status: Mutex<BTreeMap<TaskId, TaskStatus>>,
    stop: AtomicBool,
    /// Why the whole instance stopped (fenced, broker refused), if it did.
    fatal: Mutex<Option<String>>,
    /// How far the global tables are loaded.
    globals: Mutex<Vec<InputStatus>>,
    /// Bumped whenever tasks are created or closed: the directory announcer
    /// re-announces.
    tasks_version: AtomicU64,
}

impl Shared {
    /// Ids of the tasks this instance runs now.
    fn running_tasks(&self) -> Vec<String> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.values().filter(|t| t.state == TaskState::Running).map(|t| t.id.clone()).collect()
    }
}

/// A running application on Kafka.
pub struct KafkaApp {
    control: Arc<Control>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    directory: Arc<Directory>,
    announcer: Option<JoinHandle<()>>,
    settings: KafkaSettings,
}

impl KafkaApp {
    /// Creates missing topics, registers the stores locally and starts the
    /// worker (which joins the group; tasks come with the assignment).
    pub fn start(
        backend: Arc<EmbeddedBackend>,
        settings: KafkaSettings,
        app: Arc<AppRuntime>,
        config: crate::backend::embedded::runner::RunnerConfig,
        history: Vec<SwapRecord>,
    ) -> Result<Self, KafkaStartError> {
        let topology = app.topology.clone();
        create_topics(&settings.brokers, &topology)?;
        let mut store_ids = HashMap::new();
        for (sid, store) in topology.stores.iter().enumerate() {
            let id = backend
                .register_store(&topology.name, &store.name)
                .map_err(|e| KafkaStartError::Broker(format!("local state: {e}")))?;
            store_ids.insert(sid, id);
        }
        let total_tasks = topology.subtopologies.iter().map(|s| s.partitions as usize).sum();
        let control = Arc::new(Control::new(app.clone(), history, total_tasks));
        let directory = Arc::new(Directory::open(&settings.brokers, &topology.name).map_err(KafkaStartError::Broker)?);
        let shared = Arc::new(Shared {
            status: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            fatal: Mutex::new(None),
            globals: Mutex::new(Vec::new()),
            tasks_version: AtomicU64::new(0),
        });
        let globals: BTreeMap<StoreId, SharedStore> =
            topology.globals.iter().map(|g| (g.store, backend.open_store(store_ids[&g.store], 0, &g.name))).collect();
        // One group member per worker thread; worker 0 also loads and
        // updates the global tables, and the others wait for its bootstrap.
        let globals_ready = Arc::new(AtomicBool::new(topology.globals.is_empty()));
        let mut workers = Vec::new();
        for index in 0..config.workers.max(1) {
            let worker = WorkerSetup {
                index,
                backend: backend.clone(),
                settings: settings.clone(),
                config: config.clone(),
                control: control.clone(),
                shared: shared.clone(),
                store_ids: store_ids.clone(),
                globals: globals.clone(),
                globals_ready: globals_ready.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("weir-{}-kafka-{index}", topology.name))
                .spawn(move || worker.run())
                .map_err(|e| KafkaStartError::Broker(format!("cannot start worker thread: {e}")))?;
            workers.push(handle);
        }
        let announcer = {
            let (directory, shared, settings) = (directory.clone(), shared.clone(), settings.clone());
            std::thread::Builder::new()
                .name(format!("weir-{}-directory", topology.name))
                .spawn(move || announce_loop(&directory, &shared, &settings))
                .map_err(|e| KafkaStartError::Broker(format!("cannot start the directory thread: {e}")))?
        };
        tracing::info!(app = %topology.name, workers = workers.len(), "application started on Kafka");
        Ok(KafkaApp { control, shared, workers, directory, announcer: Some(announcer), settings })
    }

    pub fn runtime(&self) -> Arc<AppRuntime> {
        self.control.current().1
    }

    pub fn update(&self, new: Arc<AppRuntime>) -> Result<u64, String> {
        self.control.begin(new)
    }

    /// The application's control plane: versions, updates, metrics.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The tasks this instance owns now, and the instance's fatal error.
    pub fn status(&self) -> AppStatus {
        let tasks: Vec<TaskStatus> =
            self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut status = self.control.app_status("kafka", tasks);
        status.global_inputs = self.shared.globals.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(fatal) = self.shared.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            status.state = format!("failed: {fatal}");
        } else if status.tasks.is_empty() {
            // Joined the group (or joining) but owns no task: nothing is wrong.
            status.state = "running".into();
        }
        status
    }

    /// Commits, leaves the group and stops.
    pub fn stop(mut self) {
        self.halt();
        tracing::info!(app = %self.runtime().topology.name, "application stopped");
    }

    /// Where a task runs: here, at another instance (by the directory), or
    /// nowhere known now.
    pub fn locate(&self, task: TaskId) -> TaskLocation {
        let id = task.to_string();
        if self.shared.running_tasks().contains(&id) {
            return TaskLocation::Here;
        }
        if let Err(e) = self.directory.refresh() {
            tracing::warn!(error = %e, "cannot read the instance directory");
        }
        match self.directory.owner(&id, &self.settings.instance_id) {
            Some((_, url)) => TaskLocation::At(url),
            None => TaskLocation::Unknown,
        }
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(a) = self.announcer.take() {
            let _ = a.join();
        }
    }
}

impl Drop for KafkaApp {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Everything a worker needs before it connects.
struct WorkerSetup {
    /// Which worker thread of the instance: part of its transactional id.
    index: usize,
    backend: Arc<EmbeddedBackend>,
    settings: KafkaSettings,
    config: crate::backend::embedded::runner::RunnerConfig,
    control: Arc<Control>,
    shared: Arc<Shared>,
    store_ids: HashMap<StoreId, u32>,
    globals: BTreeMap<StoreId, SharedStore>,
    globals_ready: Arc<AtomicBool>,
}

/// Counts deliveries and remembers the last offset written to each
/// changelog partition (the checkpoint its local state reaches).
#[derive(Default)]
struct DeliveryContext {
    pending: AtomicUsize,
    /// Changelog slot (see [`changelog_slot`]) → last offset delivered.
    last_offsets: Mutex<HashMap<usize, i64>>,
    /// The first delivery error since the last check.
    error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        match result {
            Ok(m) => {
                if slot != NO_SLOT {
                    let mut last = self.last_offsets.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = last.entry(slot).or_insert(-1);
                    *entry = (*entry).max(m.offset());
                }
            }
            Err((e, m)) => {
                let mut error = self.error.lock().unwrap_or_else(|e| e.into_inner());
                error.get_or_insert_with(|| format!("delivery to {}/{} failed: {e}", m.topic(), m.partition()));
            }
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

const NO_SLOT: usize = usize::MAX;

/// A changelog partition as a delivery opaque: store index and partition.
fn changelog_slot(store: StoreId, partition: u32) -> usize {
    (store << 20) | partition as usize
}

/// The group consumer's context: rebalances commit and close revoked tasks
/// and create assigned ones, inside the callback.
struct GroupContext {
    worker: Arc<Mutex<Option<Worker>>>,
    /// Between a revocation and the next assignment.
    rebalancing: Arc<AtomicBool>,
    /// Bumped on every rebalance: records polled before it are dropped.
    epoch: Arc<AtomicU64>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Rebalance::Revoke(partitions) = rebalance {
            self.rebalancing.store(true, Ordering::Release);
            let mut guard = self.worker.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(worker) = guard.as_mut() {
                worker.commit_all(consumer);
                worker.close_tasks(partitions);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.rebalancing.store(false, Ordering::Release);
                let mut guard = self.worker.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(worker) = guard.as_mut() {
                    worker.open_tasks(consumer, partitions);
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

type GroupConsumer = BaseConsumer<GroupContext>;

/// The last value of each key a store partition was given (`None` = deleted).
type KeyWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Per input partition of a task: committed offset (next to read) and end offset.
type InputPositions = BTreeMap<(String, u32), (i64, i64)>;

/// A task this instance owns.
struct OwnedTask {
    task: Option<Task>,
    state: TaskState,
    error: Option<String>,
    commits: u64,
    generation: u64,
    inputs: InputPositions,
    restored: Option<(u64, u64)>,
}

/// The worker's state, shared with the rebalance callbacks (same thread).
struct Worker {
    backend: Arc<EmbeddedBackend>,
    settings: KafkaSettings,
    control: Arc<Control>,
    shared: Arc<Shared>,
    store_ids: HashMap<StoreId, u32>,
    globals: BTreeMap<StoreId, SharedStore>,
    producer: BaseProducer<DeliveryContext>,
    exactly_once: bool,
    tasks: BTreeMap<TaskId, OwnedTask>,
    /// Input topic → sub-topology.
    routes: HashMap<String, usize>,
    last_commit: Instant,
    /// Set when the producer was fenced or failed fatally: nothing more runs.
    fatal: Option<String>,
    transactional_id: String,
}

impl WorkerSetup {
    fn run(self) {
        let WorkerSetup { index, backend, settings, config, control, shared, store_ids, globals, globals_ready } = self;
        let topology = control.current().1.topology.clone();
        let app = topology.name.clone();
        let exactly_once = topology.guarantee == ProcessingGuarantee::ExactlyOnce;
        let fail = |message: String| {
            tracing::error!(app, "{message}");
            *shared.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        };
        let mut producer_config = client_config(&settings.brokers);
        producer_config.set("enable.idempotence", "true").set("linger.ms", "5");
        if exactly_once {
            producer_config
                .set("transactional.id", transactional_id(&app, &settings.instance_id, index))
                .set("transaction.timeout.ms", "60000");
        }
        let producer: BaseProducer<DeliveryContext> = match producer_config.create_with_context(Default::default()) {
            Ok(p) => p,
            Err(e) => return fail(format!("cannot create a producer for {}: {e}", settings.brokers)),
        };
        if exactly_once {
            // Retried until the broker answers: a broker down at start is waited for.
            loop {
                match producer.init_transactions(KAFKA_TIMEOUT) {
                    Ok(()) => break,
                    Err(e) if shared.stop.load(Ordering::Acquire) => {
                        return fail(format!("stopped before the broker answered: {e}"));
                    }
                    Err(e) if is_fatal(&e) => return fail(format!("cannot start transactions: {e}")),
                    Err(e) => {
                        tracing::warn!(app, brokers = %settings.brokers, error = %e, "waiting for the broker to start transactions");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
        let mut global = if index == 0 {
            match GlobalTables::bootstrap(&backend, &settings, &topology, &store_ids, &shared.stop) {
                Ok(g) => {
                    globals_ready.store(true, Ordering::Release);
                    g
                }
                Err(e) => return fail(format!("global tables: {e}")),
            }
        } else {
            while !globals_ready.load(Ordering::Acquire) {
                if shared.stop.load(Ordering::Acquire)
                    || shared.fatal.lock().unwrap_or_else(|e| e.into_inner()).is_some()
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        };
        let routes: HashMap<String, usize> =
            topology.subtopologies.iter().flat_map(|s| s.inputs.iter().map(|(t, _)| (t.clone(), s.id))).collect();
        let worker = Arc::new(Mutex::new(Some(Worker {
            backend: backend.clone(),
            settings: settings.clone(),
            control: control.clone(),
            shared: shared.clone(),
            store_ids,
            globals,
            producer,
            exactly_once,
            tasks: BTreeMap::new(),
            routes: routes.clone(),
            last_commit: Instant::now(),
            fatal: None,
            transactional_id: transactional_id(&app, &settings.instance_id, index),
        })));
        let epoch = Arc::new(AtomicU64::new(0));
        let rebalancing = Arc::new(AtomicBool::new(false));
        let session = settings.session_timeout.as_millis().max(6000);
        let consumer: GroupConsumer = match client_config(&settings.brokers)
            .set("group.id", &app)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).to_string())
            .create_with_context(GroupContext {
                worker: worker.clone(),
                rebalancing: rebalancing.clone(),
                epoch: epoch.clone(),
            }) {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot create a consumer for {}: {e}", settings.brokers)),
        };
        let inputs: Vec<&str> = routes.keys().map(String::as_str).collect();
        if let Err(e) = consumer.subscribe(&inputs) {
            return fail(format!("cannot subscribe to {inputs:?}: {e}"));
        }
        tracing::info!(app, group = %app, topics = ?inputs, "joining the consumer group");
        let offsets: PlainConsumer = match client_config(&settings.brokers).create_with_context(QuietContext) {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot create a client for {}: {e}", settings.brokers)),
        };
        let mut last_lag = Instant::now();
        let mut batch: Vec<ConsumedRecord> = Vec::with_capacity(config.max_batch);
        while !shared.stop.load(Ordering::Acquire) {
            if let Some(g) = &mut global {
                if let Err(e) = g.step() {
                    tracing::warn!(app, error = %e, "global table update failed; retrying");
                }
                *shared.globals.lock().unwrap_or_else(|e| e.into_inner()) = g.status();
            }
            // Collect a batch; records polled before a rebalance are dropped
            // (their tasks were closed; the new owner reads them again).
            batch.clear();
            let mut timeout = config.commit_interval.min(Duration::from_millis(50));
            while batch.len() < config.max_batch {
                let before = epoch.load(Ordering::Acquire);
                let polled = consumer.poll(timeout);
                if epoch.load(Ordering::Acquire) != before {
                    batch.clear();
                }
                match polled {
                    Some(Ok(m)) => {
                        batch.push(ConsumedRecord {
                            topic: m.topic().into(),
                            partition: m.partition() as u32,
                            offset: m.offset(),
                            record: to_record(&m),
                        });
                        timeout = Duration::ZERO;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(app, error = %e, "consumer error");
                        break;
                    }
                    None => break,
                }
            }
            let mut guard = worker.lock().unwrap_or_else(|e| e.into_inner());
            let Some(w) = guard.as_mut() else { break };
            if w.fatal.is_some() {
                break;
            }
            w.process(&consumer, std::mem::take(&mut batch));
            if w.last_commit.elapsed() >= config.commit_interval {
                w.commit_all(&consumer);
                w.switch_versions();
            }
            if last_lag.elapsed() >= LAG_REFRESH {
                w.refresh_lag(&offsets);
                last_lag = Instant::now();
            }
            w.publish_all();
        }
        // Final commit, then leave the group (closing the consumer revokes:
        // the callback finds nothing left to commit and closes the tasks).
        let fatal = {
            let mut guard = worker.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = guard.as_mut()
                && w.fatal.is_none()
            {
                w.commit_all(&consumer);
                w.publish_all();
            }
            guard.as_ref().and_then(|w| w.fatal.clone())
        };
        if let Some(message) = fatal {
            fail(message);
            // Let a rebalance in progress finish before leaving: a member
            // leaving in the middle of one can wedge a group (tansu's does).
            let deadline = Instant::now() + settings.session_timeout.max(Duration::from_secs(6)) * 2;
            while rebalancing.load(Ordering::Acquire) && Instant::now() < deadline {
                let _ = consumer.poll(Duration::from_millis(100));
            }
        }
        drop(consumer);
        worker.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Stable per instance and worker thread: a restarted instance's producers
/// fence those of its previous incarnation.
fn transactional_id(app: &str, instance_id: &str, worker: usize) -> String {
    format!("weir-{app}-{instance_id}-{worker}")
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
enum CommitError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Failed(String),
}

/// Fatal transaction errors (fenced, ...) end the producer for good.
fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => false,
    }
}

impl Worker {
    fn app(&self) -> String {
        self.control.current().1.topology.name.clone()
    }

    /// Hands each record to its task, keeping each partition's order.
    fn process(&mut self, consumer: &GroupConsumer, records: Vec<ConsumedRecord>) {
        if records.is_empty() {
            return;
        }
        let mut per_task: BTreeMap<TaskId, Vec<ConsumedRecord>> = BTreeMap::new();
        for r in records {
            let Some(&subtopology) = self.routes.get(&*r.topic) else { continue };
            per_task.entry(TaskId { subtopology, partition: r.partition }).or_default().push(r);
        }
        self.switch_versions();
        for (id, records) in per_task {
            let Some(owned) = self.tasks.get_mut(&id) else {
                continue; // Not ours (any more): its new owner reads it.
            };
            if owned.state != TaskState::Running {
                continue;
            }
            let Some(task) = owned.task.as_mut() else { continue };
            let started = Instant::now();
            let result = task.process(records);
            self.control.metrics.process.observe(started.elapsed());
            if let Err(TaskError::SwapFailed { .. }) = &result {
                // The new version trapped on probation: this task drops its
                // open work (none of it was sent), goes back to the previous
                // version and re-reads from its committed offsets; every
                // other task goes back too (the control plane rolls back).
                let error = result.expect_err("matched");
                task.abort();
                task.rollback_swap();
                self.control.failed(owned.generation, format!("task {id}: {error}"));
                owned.generation = self.control.generation();
                for ((topic, p), (committed, _)) in &owned.inputs {
                    if let Err(e) = consumer.seek(topic, *p as i32, Offset::Offset(*committed), KAFKA_TIMEOUT) {
                        tracing::warn!(topic, partition = p, error = %e, "seek back failed");
                    }
                }
                continue;
            }
            if let Err(e) = result {
                // Error policy `fail` (or a task-level error): the task
                // stops; its open work is never committed.
                tracing::error!(app = %self.control.current().1.topology.name, task = %id, "task stopped: {e}");
                task.abort();
                owned.task = None;
                owned.state = TaskState::Failed;
                owned.error = Some(e.to_string());
            }
        }
        let now_ms = crate::backend::embedded::now_us() / 1000;
        for (id, owned) in &mut self.tasks {
            if let Some(task) = owned.task.as_mut()
                && let Err(e) = task.advance_wall_clock(now_ms)
            {
                tracing::error!(task = %id, "task stopped: {e}");
                task.abort();
                owned.task = None;
                owned.state = TaskState::Failed;
                owned.error = Some(e.to_string());
            }
        }
    }

    /// Moves tasks with nothing uncommitted (at a commit boundary) to the
    /// version the control plane wants: instantiate + init; stores kept.
    fn switch_versions(&mut self) {
        let (generation, target) = self.control.current();
        for (id, owned) in &mut self.tasks {
            let Some(task) = owned.task.as_mut() else { continue };
            if owned.generation == generation || task.has_uncommitted() {
                continue;
            }
            let started = Instant::now();
            match task.swap(target.clone()) {
                Ok(_) => {
                    owned.generation = generation;
                    self.control.switched(generation, started.elapsed());
                    tracing::info!(task = %id, update = generation, pause_us = started.elapsed().as_micros() as u64, "switched version");
                }
                Err(e) => {
                    // Nothing changed in this task; every task goes back.
                    self.control.failed(generation, format!("task {id}: {e}"));
                    owned.generation = self.control.generation();
                }
            }
        }
    }

    /// Commits every task's open work: one transaction (exactly-once), or
    /// flush-then-commit-offsets (at-least-once). On failure the open work
    /// is dropped and the consumer rewinds to the committed offsets.
    fn commit_all(&mut self, consumer: &GroupConsumer) {
        self.last_commit = Instant::now();
        if self.fatal.is_some() || !self.tasks.values().any(|t| t.task.as_ref().is_some_and(Task::has_uncommitted)) {
            return;
        }
        let started = Instant::now();
        match self.try_commit(consumer) {
            Ok(()) => {}
            Err(CommitError::Kafka(e)) if is_fatal(&e) => self.stop_fatally(&e),
            Err(e) => {
                tracing::warn!(app = %self.app(), error = %e, "commit failed: open work dropped, rewinding to the committed offsets");
                if self.exactly_once
                    && let Err(abort) = self.producer.abort_transaction(KAFKA_TIMEOUT)
                {
                    tracing::warn!(error = %abort, "abort failed");
                    if is_fatal(&abort) {
                        return self.stop_fatally(&abort);
                    }
                }
                self.rewind(consumer);
            }
        }
        self.control.metrics.commit.observe(started.elapsed());
    }

    fn try_commit(&mut self, consumer: &GroupConsumer) -> Result<(), CommitError> {
        let app = self.app();
        if self.exactly_once {
            self.producer.begin_transaction()?;
        }
        let mut offsets = TopicPartitionList::new();
        // Owned copies of the store writes, applied locally after the commit.
        let mut local: Vec<(TaskId, StoreId, u32, KeyWrites)> = Vec::new();
        let mut on_probation = Vec::new();
        let mut committed_tasks = Vec::new();
        for (id, owned) in &mut self.tasks {
            let Some(task) = owned.task.as_mut() else { continue };
            if !task.has_uncommitted() {
                continue;
            }
            if task.in_probation() {
                on_probation.push(*id);
            }
            committed_tasks.push(*id);
            let commit = task.prepare_commit();
            for p in &commit.produced {
                send(&self.producer, p, NO_SLOT)?;
            }
            for change in &commit.changes {
                let slot = changelog_slot(change.store, change.partition);
                let mut writes = Vec::with_capacity(change.writes.len());
                for (k, v) in &change.writes {
                    let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(change.changelog, slot)
                        .partition(change.partition as i32)
                        .key(k.as_slice());
                    if let Some(v) = v.as_deref() {
                        record = record.payload(v);
                    }
                    send_raw(&self.producer, record)?;
                    writes.push(((*k).clone(), (*v).clone()));
                }
                local.push((*id, change.store, change.partition, writes));
            }
            for ((topic, p), offset) in &commit.positions {
                offsets.add_partition_offset(topic, *p as i32, Offset::Offset(*offset))?;
                owned.inputs.entry((topic.to_string(), *p)).or_insert((0, 0)).0 = *offset;
            }
        }
        self.producer.flush(KAFKA_TIMEOUT)?;
        self.serve_deliveries()?;
        if self.exactly_once {
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| CommitError::Failed("the consumer has no group metadata (not in the group)".into()))?;
            self.producer.send_offsets_to_transaction(&offsets, &metadata, KAFKA_TIMEOUT)?;
            self.producer.commit_transaction(KAFKA_TIMEOUT)?;
        } else if offsets.count() > 0 {
            consumer.commit(&offsets, CommitMode::Sync)?;
        }
        // Committed: the stores' local copies catch up, with checkpoints.
        let last = std::mem::take(&mut *self.producer.context().last_offsets.lock().unwrap_or_else(|e| e.into_inner()));
        let topology = self.control.current().1.topology.clone();
        let mut batch = WriteBatch::default();
        let db = self.backend.db().clone();
        for (_, store, partition, writes) in &local {
            let key = StoreKey { store: self.store_ids[store], partition: *partition };
            db.write_state(&mut batch, key, writes.iter().map(|(k, v)| (k, v)));
            if let Some(offset) = last.get(&changelog_slot(*store, *partition)) {
                let name = &topology.stores[*store].name;
                db.put_meta(&mut batch, &checkpoint_key(&app, name, *partition), &(offset + 1).to_be_bytes());
            }
        }
        if let Err(e) = db.write(batch) {
            // The changelog has it: a restore from the older checkpoint redoes it.
            tracing::error!(app, error = %e, "cannot apply committed store writes locally; they will be restored from the changelog");
            for (id, ..) in &local {
                if let Some(owned) = self.tasks.get_mut(id) {
                    owned.task = None;
                    owned.state = TaskState::Stalled;
                    owned.error = Some(format!("local state: {e}"));
                }
            }
        }
        for id in &committed_tasks {
            let Some(owned) = self.tasks.get_mut(id) else { continue };
            if let Some(task) = owned.task.as_mut() {
                task.commit_succeeded();
                owned.commits += 1;
                if on_probation.contains(id) && !task.in_probation() && self.control.owns(owned.generation) {
                    self.control.passed(owned.generation);
                }
            }
        }
        Ok(())
    }

    /// Waits for every delivery report; fails on the first failed delivery.
    fn serve_deliveries(&self) -> Result<(), CommitError> {
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        let context = self.producer.context();
        while context.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(10));
        }
        if let Some(e) = context.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(CommitError::Failed(e));
        }
        if context.pending.load(Ordering::Acquire) > 0 {
            return Err(CommitError::Failed(format!("deliveries unconfirmed after {KAFKA_TIMEOUT:?}")));
        }
        Ok(())
    }

    /// Drops every task's open work and seeks back to the committed offsets.
    fn rewind(&mut self, consumer: &GroupConsumer) {
        self.producer.context().last_offsets.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for owned in self.tasks.values_mut() {
            if let Some(task) = owned.task.as_mut() {
                task.abort();
            }
        }
        let committed = match consumer.committed(KAFKA_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read committed offsets to rewind; restarting tasks");
                return;
            }
        };
        for e in committed.elements() {
            let to = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            if let Err(err) = consumer.seek(e.topic(), e.partition(), to, KAFKA_TIMEOUT) {
                tracing::warn!(topic = e.topic(), partition = e.partition(), error = %err, "seek failed");
            }
        }
    }

    /// The producer cannot go on (fenced by a newer instance with the same
    /// transactional id, or another fatal error): every task stops.
    fn stop_fatally(&mut self, e: &KafkaError) {
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        );
        let message = if fenced {
            format!(
                "this instance was fenced: another producer with transactional id `{}` took over ({e}); its tasks stopped, \
                 nothing of their open transaction was committed",
                self.transactional_id
            )
        } else {
            format!("the transactional producer `{}` failed fatally: {e}; its tasks stopped", self.transactional_id)
        };
        tracing::error!(app = %self.app(), "{message}");
        self.stop_all(&message);
        self.fatal = Some(message);
    }

    fn stop_all(&mut self, message: &str) {
        for owned in self.tasks.values_mut() {
            if let Some(task) = owned.task.as_mut() {
                task.abort();
            }
            owned.task = None;
            owned.state = TaskState::Failed;
            owned.error = Some(message.to_owned());
        }
        self.publish_all();
    }

    /// Closes the tasks of revoked partitions (already committed).
    fn close_tasks(&mut self, revoked: &TopicPartitionList) {
        let ids: Vec<TaskId> = revoked
            .elements()
            .iter()
            .filter_map(|e| {
                self.routes.get(e.topic()).map(|&subtopology| TaskId { subtopology, partition: e.partition() as u32 })
            })
            .collect();
        for id in ids {
            if let Some(mut owned) = self.tasks.remove(&id) {
                if let Some(task) = owned.task.as_mut() {
                    task.abort(); // Nothing is open after the commit; this only discards.
                }
                tracing::info!(app = %self.app(), task = %id, "task revoked");
            }
            self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            self.shared.tasks_version.fetch_add(1, Ordering::AcqRel);
            self.control.set_tasks(self.shared.running_tasks().len());
        }
    }

    /// Restores and creates the tasks of newly assigned partitions.
    fn open_tasks(&mut self, consumer: &GroupConsumer, assigned: &TopicPartitionList) {
        if self.fatal.is_some() {
            return; // Stopped for good: it only waits to leave the group.
        }
        let committed =
            consumer.committed_offsets(assigned.clone(), KAFKA_TIMEOUT).unwrap_or_else(|_| assigned.clone());
        let mut inputs: BTreeMap<TaskId, InputPositions> = BTreeMap::new();
        for e in committed.elements() {
            let Some(&subtopology) = self.routes.get(e.topic()) else { continue };
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            inputs
                .entry(TaskId { subtopology, partition: e.partition() as u32 })
                .or_default()
                .insert((e.topic().to_owned(), e.partition() as u32), (offset, offset));
        }
        for (id, inputs) in inputs {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let mut owned = OwnedTask {
                task: None,
                state: TaskState::Starting,
                error: None,
                commits: 0,
                generation: 0,
                inputs,
                restored: None,
            };
            self.publish(id, &owned);
            match self.restore(id, &mut owned).and_then(|()| self.create_task(id, &mut owned)) {
                Ok(()) => tracing::info!(app = %self.app(), task = %id, "task assigned"),
                Err(e) => {
                    tracing::error!(app = %self.app(), task = %id, "task cannot start: {e}");
                    owned.state = TaskState::Failed;
                    owned.error = Some(e);
                }
            }
            self.publish(id, &owned);
            self.tasks.insert(id, owned);
        }
    }

    /// Brings the task's local stores up to the end of their changelogs.
    fn restore(&self, id: TaskId, owned: &mut OwnedTask) -> Result<(), String> {
        let topology = self.control.current().1.topology.clone();
        let app = &topology.name;
        let db = self.backend.db().clone();
        let mut restored = 0u64;
        for &sid in &topology.subtopologies[id.subtopology].stores {
            let store = &topology.stores[sid];
            let Some(changelog) = &store.changelog else { continue };
            let key = StoreKey { store: self.store_ids[&sid], partition: id.partition };
            let checkpoint_name = checkpoint_key(app, &store.name, id.partition);
            let checkpoint = db
                .get_meta(&checkpoint_name)
                .map_err(|e| e.to_string())?
                .map(|b| i64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])));
            let from = match checkpoint {
                Some(offset) => offset,
                None => {
                    // No checkpoint: whatever is local is not known to match; start over.
                    let mut batch = WriteBatch::default();
                    db.drop_state(&mut batch, key);
                    db.write(batch).map_err(|e| e.to_string())?;
                    0
                }
            };
            let started = Instant::now();
            // An estimate of what is to come, for progress: the end now,
            // minus where we start (transaction markers count too).
            let end = partition_end(&self.settings, changelog, id.partition).unwrap_or(from);
            let to_restore = restored + (end - from).max(0) as u64;
            let mut so_far = restored;
            let n = read_to_end(&self.settings, changelog, id.partition, from, &self.shared.stop, |records, next| {
                let mut batch = WriteBatch::default();
                db.write_state(&mut batch, key, records.iter().map(|(k, v)| (k, v)));
                db.put_meta(&mut batch, &checkpoint_name, &next.to_be_bytes());
                db.write(batch).map_err(|e| e.to_string())?;
                so_far += records.len() as u64;
                owned.restored = Some((so_far, to_restore.max(so_far)));
                self.publish(id, owned);
                tracing::info!(app, task = %id, store = %store.name, restored = so_far, of_about = to_restore, "restoring");
                Ok(())
            })?;
            restored += n;
            tracing::info!(app, task = %id, store = %store.name, from, records = n, ms = started.elapsed().as_millis() as u64, "restored store from its changelog");
        }
        owned.restored = Some((restored, restored));
        Ok(())
    }

    fn create_task(&self, id: TaskId, owned: &mut OwnedTask) -> Result<(), String> {
        let (generation, app) = self.control.current();
        let topology = app.topology.clone();
        let backend = &self.backend;
        let store_ids = &self.store_ids;
        let mut task = Task::new(
            app.clone(),
            id,
            |sid| Ok(backend.open_store(store_ids[&sid], id.partition, &topology.stores[sid].name)),
            &self.globals,
        )
        .map_err(|e| e.to_string())?;
        task.set_wall_clock(crate::backend::embedded::now_us() / 1000);
        task.start().map_err(|e| e.to_string())?;
        owned.task = Some(task);
        owned.generation = generation;
        owned.state = TaskState::Running;
        Ok(())
    }

    /// Refreshes end offsets of the owned input partitions. A client of its
    /// own asks: the group consumer's requests queue behind its long fetches.
    fn refresh_lag(&mut self, offsets: &PlainConsumer) {
        for owned in self.tasks.values_mut() {
            for ((topic, p), (_, end)) in owned.inputs.iter_mut() {
                if let Ok((_, high)) = offsets.fetch_watermarks(topic, *p as i32, Duration::from_millis(500)) {
                    *end = high;
                }
            }
        }
    }

    fn publish_all(&self) {
        for (id, owned) in &self.tasks {
            self.publish(*id, owned);
        }
    }

    fn publish(&self, id: TaskId, owned: &OwnedTask) {
        let metrics = owned.task.as_ref().map(|t| t.metrics().clone()).unwrap_or_default();
        let status = TaskStatus {
            id: id.to_string(),
            subtopology: id.subtopology,
            partition: id.partition,
            state: owned.state,
            error: owned.error.clone(),
            inputs: owned
                .inputs
                .iter()
                .map(|((topic, p), (committed, end))| InputStatus {
                    topic: topic.clone(),
                    partition: *p,
                    committed: *committed,
                    end: (*end).max(*committed),
                    lag: (end - committed).max(0),
                })
                .collect(),
            records_in: metrics.records_in,
            processed: metrics.processed.clone(),
            emitted: metrics.emitted.clone(),
            dead_letters: metrics.dead_letters,
            skipped: metrics.skipped,
            failures: metrics.failures.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            partition_mismatches: metrics.partition_mismatches,
            commits: owned.commits,
            restore: owned.restored,
        };
        let previous = self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).insert(id, status);
        if previous.is_none_or(|p| p.state != owned.state) {
            self.shared.tasks_version.fetch_add(1, Ordering::AcqRel);
            self.control.set_tasks(self.shared.running_tasks().len());
        }
    }
}

/// Announces the tasks this instance runs in the directory: when they
/// change, every few seconds, and (empty) when the application stops.
fn announce_loop(directory: &Directory, shared: &Shared, settings: &KafkaSettings) {
    const EVERY: Duration = Duration::from_secs(5);
    let mut announced: Option<(u64, Instant)> = None;
    let announce = |tasks: Vec<String>| -> bool {
        let Some(url) = settings.advertised_url.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return false; // Not listening yet.
        };
        let at_ms = crate::backend::embedded::now_us() / 1000;
        match directory.announce(&settings.instance_id, &Announcement { url, tasks, at_ms }) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot announce this instance's tasks; retrying");
                false
            }
        }
    };
    while !shared.stop.load(Ordering::Acquire) {
        let version = shared.tasks_version.load(Ordering::Acquire);
        let due = announced.is_none_or(|(v, at)| v != version || at.elapsed() >= EVERY);
        if due && announce(shared.running_tasks()) {
            announced = Some((version, Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    announce(Vec::new());
}

fn checkpoint_key(app: &str, store: &str, partition: u32) -> String {
    format!("ckpt/{app}/{store}/{partition}")
}

fn send(producer: &BaseProducer<DeliveryContext>, p: &ProducedRecord, slot: usize) -> Result<(), KafkaError> {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &p.record.headers {
        headers = headers.insert(Header { key: k, value: Some(v) });
    }
    let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&p.topic, slot)
        .partition(p.partition as i32)
        .timestamp(p.record.timestamp)
        .headers(headers);
    if let Some(k) = p.record.key.as_deref() {
        record = record.key(k);
    }
    if let Some(v) = p.record.value.as_deref() {
        record = record.payload(v);
    }
    send_raw(producer, record)
}

fn send_raw(
    producer: &BaseProducer<DeliveryContext>,
    record: BaseRecord<'_, [u8], [u8], usize>,
) -> Result<(), KafkaError> {
    producer.context().pending.fetch_add(1, Ordering::AcqRel);
    super::send(producer, record).inspect_err(|_| {
        producer.context().pending.fetch_sub(1, Ordering::AcqRel);
    })
}

/// The end offset of a partition, as the broker reports it now.
fn partition_end(settings: &KafkaSettings, topic: &str, partition: u32) -> Option<i64> {
    let client: PlainConsumer = client_config(&settings.brokers).create_with_context(QuietContext).ok()?;
    client.fetch_watermarks(topic, partition as i32, Duration::from_secs(5)).ok().map(|(_, high)| high)
}

/// Reads one partition from `from` to its end (read_committed), handing
/// batches of (key, value) to `apply` with the next offset to read. Returns
/// how many records it read. Gives up when nothing arrives for
/// [`KAFKA_TIMEOUT`].
fn read_to_end(
    settings: &KafkaSettings,
    topic: &str,
    partition: u32,
    from: i64,
    stop: &AtomicBool,
    mut apply: impl FnMut(&[(Vec<u8>, Option<Vec<u8>>)], i64) -> Result<(), String>,
) -> Result<u64, String> {
    let consumer: PlainConsumer = super::reader_config(&settings.brokers, true)
        .create_with_context(QuietContext)
        .map_err(|e| format!("cannot create a restore consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, Offset::Offset(from)).map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut next = from;
    let mut total = 0u64;
    let mut last_progress = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            return Err("stopped while restoring".into());
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    pending.push((k.to_vec(), m.payload().map(<[u8]>::to_vec)));
                }
                next = m.offset() + 1;
                total += 1;
                last_progress = Instant::now();
                if pending.len() >= 10_000 {
                    apply(&pending, next)?;
                    pending.clear();
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => tracing::warn!(topic, partition, error = %e, "restore read error; retrying"),
            None if last_progress.elapsed() > KAFKA_TIMEOUT => {
                return Err(format!("reading {topic}/{partition}: no end reached within {KAFKA_TIMEOUT:?}"));
            }
            None => {}
        }
    }
    if total > 0 {
        apply(&pending, next)?;
    }
    Ok(total)
}

/// Global tables: every partition of their topics, read into local stores
/// before processing starts, then kept current.
struct GlobalTables {
    consumer: PlainConsumer,
    backend: Arc<EmbeddedBackend>,
    app: String,
    /// Topic → local store id.
    stores: HashMap<String, u32>,
    /// Next offset to apply, per partition.
    positions: BTreeMap<(String, u32), i64>,
}

impl GlobalTables {
    fn bootstrap(
        backend: &Arc<EmbeddedBackend>,
        settings: &KafkaSettings,
        topology: &Topology,
        store_ids: &HashMap<StoreId, u32>,
        stop: &AtomicBool,
    ) -> Result<Option<GlobalTables>, String> {
        if topology.globals.is_empty() {
            return Ok(None);
        }
        let counts = super::partition_counts(&settings.brokers)?;
        let consumer: PlainConsumer = client_config(&settings.brokers)
            .set("group.id", format!("{}-globals", topology.name))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create_with_context(QuietContext)
            .map_err(|e| format!("cannot create a global table consumer: {e}"))?;
        let mut tpl = TopicPartitionList::new();
        let mut stores = HashMap::new();
        let mut positions = BTreeMap::new();
        for g in &topology.globals {
            let store = store_ids[&g.store];
            stores.insert(g.input.topic.clone(), store);
            for p in 0..counts.get(&g.input.topic).copied().unwrap_or(0) {
                let from = backend.position(&topology.name, &g.input.topic, p).map_err(|e| e.to_string())?;
                // Bootstrap: each partition to its end first.
                read_to_end(settings, &g.input.topic, p, from, stop, |records, next| {
                    let mut batch = WriteBatch::default();
                    let db = backend.db();
                    db.write_state(&mut batch, StoreKey { store, partition: 0 }, records.iter().map(|(k, v)| (k, v)));
                    db.put_meta(
                        &mut batch,
                        &format!("pos/{}/{}/{p}", topology.name, g.input.topic),
                        &next.to_be_bytes(),
                    );
                    db.write(batch).map_err(|e| e.to_string())
                })?;
                let at = backend.position(&topology.name, &g.input.topic, p).map_err(|e| e.to_string())?;
                tpl.add_partition_offset(&g.input.topic, p as i32, Offset::Offset(at)).map_err(|e| e.to_string())?;
                positions.insert((g.input.topic.clone(), p), at);
            }
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        tracing::info!(app = %topology.name, tables = topology.globals.len(), "global tables bootstrapped");
        Ok(Some(GlobalTables { consumer, backend: backend.clone(), app: topology.name.clone(), stores, positions }))
    }

    /// Where each partition's store is, for the status.
    fn status(&self) -> Vec<InputStatus> {
        self.positions
            .iter()
            .map(|((topic, partition), at)| InputStatus {
                topic: topic.clone(),
                partition: *partition,
                committed: *at,
                end: *at,
                lag: 0,
            })
            .collect()
    }

    /// Applies what arrived since the last step.
    fn step(&mut self) -> Result<(), String> {
        let db = self.backend.db().clone();
        let mut batch = WriteBatch::default();
        let mut any = false;
        while let Some(polled) = self.consumer.poll(Duration::ZERO) {
            let m = polled.map_err(|e| e.to_string())?;
            let Some(&store) = self.stores.get(m.topic()) else { continue };
            if let Some(k) = m.key() {
                let writes = [(k.to_vec(), m.payload().map(<[u8]>::to_vec))];
                db.write_state(&mut batch, StoreKey { store, partition: 0 }, writes.iter().map(|(k, v)| (k, v)));
            }
            let key = format!("pos/{}/{}/{}", self.app, m.topic(), m.partition());
            db.put_meta(&mut batch, &key, &(m.offset() + 1).to_be_bytes());
            self.positions.insert((m.topic().to_owned(), m.partition() as u32), m.offset() + 1);
            any = true;
        }
        if any {
            db.write(batch).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
