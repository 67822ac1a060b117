//! One worker thread of an application on Kafka: a consumer-group member
//! with its transactional producer and the tasks the group gave it. It
//! polls and processes; sending and committing are [`super::commit`]'s (see
//! the module docs of [`super::runner`] for the guarantees). The rebalance
//! callbacks commit and close revoked tasks and restore and open assigned
//! ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::commit::{DeliveryContext, InFlightCommit, TransactionalProducer, is_fatal};
use super::{KafkaSettings, PlainConsumer, QuietContext, client_config, to_record};
use crate::backend::control::Control;
use crate::backend::embedded::EmbeddedBackend;
use crate::record::ConsumedRecord;
use crate::state::SharedStore;
use crate::status::{InputStatus, TaskState, TaskStatus};
use crate::task::{Task, TaskError, TaskId};
use crate::topology::{ProcessingGuarantee, StoreId};

use super::restore::GlobalTables;
use super::runner::{KAFKA_TIMEOUT, LAG_REFRESH, Shared};

/// Everything a worker needs before it connects.
pub(super) struct WorkerSetup {
    /// Which worker thread of the instance: part of its transactional id.
    pub(super) index: usize,
    pub(super) backend: Arc<EmbeddedBackend>,
    pub(super) settings: KafkaSettings,
    pub(super) config: crate::backend::embedded::runner::RunnerConfig,
    pub(super) control: Arc<Control>,
    pub(super) shared: Arc<Shared>,
    pub(super) store_ids: HashMap<StoreId, u32>,
    pub(super) globals: BTreeMap<StoreId, SharedStore>,
    pub(super) globals_ready: Arc<AtomicBool>,
}

/// The group consumer's context: rebalances commit and close revoked tasks
/// and create assigned ones, inside the callback.
pub(super) struct GroupContext {
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

pub(super) type GroupConsumer = BaseConsumer<GroupContext>;

/// Per input partition of a task: committed offset (next to read) and end offset.
type InputPositions = BTreeMap<(String, u32), (i64, i64)>;

/// A task this instance owns.
pub(super) struct OwnedTask {
    pub(super) task: Option<Task>,
    pub(super) state: TaskState,
    pub(super) error: Option<String>,
    pub(super) commits: u64,
    pub(super) generation: u64,
    pub(super) inputs: InputPositions,
    pub(super) restored: Option<(u64, u64)>,
    /// How long its restore took, once done.
    pub(super) restore_ms: Option<u64>,
    /// The stream time committed with the input offsets (their metadata).
    pub(super) committed_stream_time: i64,
    /// Started directly on the version of an update not yet applied: its
    /// first commit counts as that version passing here.
    pub(super) proving: bool,
}

/// Prefix of the offset-commit metadata that carries a task's stream time
/// (Kafka Streams keeps its partition time there too).
pub(super) const STREAM_TIME_METADATA: &str = "weir.stream-time=";

/// The stream time in an offset's commit metadata, if weir wrote it.
fn stream_time_of(metadata: &str) -> Option<i64> {
    metadata.strip_prefix(STREAM_TIME_METADATA)?.parse().ok()
}

/// The worker's state, shared with the rebalance callbacks (same thread).
pub(super) struct Worker {
    pub(super) backend: Arc<EmbeddedBackend>,
    pub(super) settings: KafkaSettings,
    pub(super) control: Arc<Control>,
    pub(super) shared: Arc<Shared>,
    pub(super) store_ids: HashMap<StoreId, u32>,
    pub(super) globals: BTreeMap<StoreId, SharedStore>,
    pub(super) producer: TransactionalProducer,
    pub(super) exactly_once: bool,
    pub(super) tasks: BTreeMap<TaskId, OwnedTask>,
    /// Input topic → sub-topology.
    pub(super) routes: HashMap<String, usize>,
    pub(super) last_commit: Instant,
    /// Set when the producer was fenced or failed fatally: nothing more runs.
    pub(super) fatal: Option<String>,
    pub(super) transactional_id: String,
    /// A transaction is open on the producer (exactly-once).
    pub(super) in_transaction: bool,
    /// An abort failed without being fatal (it timed out): librdkafka
    /// finishes it only when it is called again, and begins no transaction
    /// before that.
    pub(super) abort_pending: bool,
    /// Records were sent since the last commit (into the open transaction,
    /// under exactly-once): dropping one task's open work then means
    /// abandoning everyone's.
    pub(super) sent_in_transaction: bool,
    /// The commit whose answer the worker has not taken yet.
    pub(super) in_flight: Option<InFlightCommit>,
    /// Bumped on every rewind: records polled before it are dropped (the
    /// consumer re-reads them from the committed offsets).
    pub(super) rewinds: u64,
}

impl WorkerSetup {
    pub(super) fn run(self) {
        let WorkerSetup { index, backend, settings, config, control, shared, store_ids, globals, globals_ready } = self;
        let topology = control.current().1.topology.clone();
        let app = topology.name.clone();
        let exactly_once = topology.guarantee == ProcessingGuarantee::ExactlyOnce;
        let fail = |message: String| {
            tracing::error!(app, "{message}");
            *shared.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        };
        let mut producer_config = client_config(&settings.brokers);
        producer_config.set("enable.idempotence", "true").set("linger.ms", "2");
        if exactly_once {
            producer_config
                .set("transactional.id", transactional_id(&app, &settings.instance_id, index))
                .set("transaction.timeout.ms", settings.transaction_timeout.as_millis().to_string());
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
            producer: Arc::new(producer),
            exactly_once,
            tasks: BTreeMap::new(),
            routes: routes.clone(),
            last_commit: Instant::now(),
            fatal: None,
            transactional_id: transactional_id(&app, &settings.instance_id, index),
            in_transaction: false,
            abort_pending: false,
            sent_in_transaction: false,
            in_flight: None,
            rewinds: 0,
        })));
        let epoch = Arc::new(AtomicU64::new(0));
        let rebalancing = Arc::new(AtomicBool::new(false));
        let session = settings.session_timeout.as_millis();
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
            if w.commit_answered() {
                w.settle(&consumer);
            }
            // Commits start every `commit_interval`; one still in flight
            // then is waited for (at most one interval of overlap).
            if w.last_commit.elapsed() >= config.commit_interval {
                w.settle(&consumer);
                w.last_commit = Instant::now();
                w.begin_commit(&consumer);
            }
            w.switch_versions(&consumer);
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

impl Worker {
    pub(super) fn app(&self) -> String {
        self.control.current().1.topology.name.clone()
    }

    /// Hands each record to its task, keeping each partition's order; then
    /// moves every task's wall clock (called on every poll, records or not:
    /// wall-clock punctuation and waits for an empty input run out without
    /// input too).
    fn process(&mut self, consumer: &GroupConsumer, records: Vec<ConsumedRecord>) {
        let mut per_task: BTreeMap<TaskId, Vec<ConsumedRecord>> = BTreeMap::new();
        for r in records {
            let Some(&subtopology) = self.routes.get(&*r.topic) else { continue };
            per_task.entry(TaskId { subtopology, partition: r.partition }).or_default().push(r);
        }
        // Taken before switching: a rolled-back version's work dropped there
        // rewinds, and then nothing of this batch may be processed.
        let rewinds = self.rewinds;
        self.switch_versions(consumer);
        // Outputs stay in their tasks while a commit is in flight, and while
        // the cluster holds an update (nothing of it may reach Kafka yet).
        let hold_outputs = self.cluster_holds().is_some();
        for (id, records) in per_task {
            if self.rewinds != rewinds || self.fatal.is_some() {
                // Rewound (or stopped): the rest of the batch comes again from
                // the committed offsets; processing it now would count it twice.
                return;
            }
            let Some(owned) = self.tasks.get_mut(&id) else {
                continue; // Not ours (any more): its new owner reads it.
            };
            if owned.state != TaskState::Running {
                continue;
            }
            // Tasks with several inputs are never told an empty input is
            // `behind`: log end offsets count transaction markers, so they
            // cannot say whether records are left to fetch. They wait
            // `max_task_idle` only.
            let Some(task) = owned.task.as_mut() else { continue };
            let started = Instant::now();
            let count = records.len() as u64;
            let result = task.process(records);
            self.control.metrics.process.observe(started.elapsed());
            if self.in_flight.is_some() {
                self.control.metrics.processed_during_commit.fetch_add(count, Ordering::Relaxed);
            }
            match result {
                Ok(()) if self.in_flight.is_some() || hold_outputs => {}
                Ok(()) => {
                    let produced = task.take_produced();
                    self.send_eagerly(consumer, produced);
                }
                Err(error) => self.task_failed(consumer, id, error),
            }
        }
        let now_ms = crate::backend::embedded::now_us() / 1000;
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            if self.rewinds != rewinds || self.fatal.is_some() {
                return;
            }
            let Some(owned) = self.tasks.get_mut(&id) else { continue };
            let Some(task) = owned.task.as_mut() else { continue };
            match task.advance_wall_clock(now_ms) {
                Ok(()) if self.in_flight.is_some() || hold_outputs => {}
                Ok(()) => {
                    let produced = task.take_produced();
                    self.send_eagerly(consumer, produced);
                }
                Err(e) => self.task_failed(consumer, id, e),
            }
        }
        // Serve delivery reports as they come, so they do not pile up
        // until the commit (the commit thread serves them while it runs).
        if self.in_flight.is_none() {
            self.producer.poll(Duration::ZERO);
        }
    }

    /// A task's batch failed: the swapped version on probation trapped
    /// (back to the previous version, re-read from the committed offsets),
    /// or the error policy says `fail` (the task stops). A commit in flight
    /// is answered first: either way open work is dropped.
    fn task_failed(&mut self, consumer: &GroupConsumer, id: TaskId, error: TaskError) {
        // What it produced since the last freeze is dropped with its open
        // work: the commit's answer must not send it.
        if let Some(task) = self.tasks.get_mut(&id).and_then(|o| o.task.as_mut()) {
            drop(task.take_produced());
        }
        self.settle(consumer);
        if self.fatal.is_some() {
            return; // The commit's answer stopped every task.
        }
        if !matches!(error, TaskError::SwapFailed { .. }) {
            // Error policy `fail` (or a task-level error).
            return self.stop_task(consumer, id, &error);
        }
        let Some(owned) = self.tasks.get_mut(&id) else { return };
        let Some(task) = owned.task.as_mut() else { return };
        // Every other task goes back too (the control plane rolls back).
        task.abort();
        task.rollback_swap();
        owned.generation = if self.control.failed(owned.generation, format!("task {id}: {error}")) {
            // Every task goes back to the version this one runs again.
            self.control.generation()
        } else {
            // A newer update replaced the version that failed: this
            // task runs the one before it now and must switch on.
            u64::MAX
        };
        if self.sent_in_transaction {
            // Records of it may be in the open transaction.
            self.abandon_open_work(consumer);
        } else {
            for ((topic, p), (committed, _)) in &owned.inputs {
                if let Err(e) = consumer.seek(topic, *p as i32, Offset::Offset(*committed), KAFKA_TIMEOUT) {
                    tracing::warn!(topic, partition = p, error = %e, "seek back failed");
                }
            }
        }
    }

    /// Stops a task for good: its open work is never committed (when
    /// records of the open transaction were sent, every task's open work
    /// is abandoned with it).
    fn stop_task(&mut self, consumer: &GroupConsumer, id: TaskId, error: &TaskError) {
        self.settle(consumer);
        if self.fatal.is_some() {
            return; // Every task stopped already, with the reason.
        }
        tracing::error!(app = %self.app(), task = %id, "task stopped: {error}");
        if let Some(owned) = self.tasks.get_mut(&id) {
            if let Some(task) = owned.task.as_mut() {
                task.abort();
            }
            owned.task = None;
            owned.state = TaskState::Failed;
            owned.error = Some(error.to_string());
        }
        if self.sent_in_transaction {
            self.abandon_open_work(consumer);
        }
    }

    /// Moves tasks with nothing uncommitted (at a commit boundary) to the
    /// version the control plane wants: instantiate + init; stores kept.
    /// Tasks of a rolled-back update go back first, their uncommitted work
    /// dropped.
    fn switch_versions(&mut self, consumer: &GroupConsumer) {
        self.drop_rolled_back_work(consumer);
        if self.committing() {
            return; // A swap waits for a commit boundary with nothing in flight.
        }
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
                    if !task.in_probation() {
                        // Nothing of this task changed: there is nothing to prove.
                        self.control.passed(generation);
                    }
                    tracing::info!(task = %id, update = generation, pause_us = started.elapsed().as_micros() as u64, "switched version");
                }
                Err(e) => {
                    // Nothing changed in this task; every task goes back
                    // (unless a newer update replaced this one meanwhile:
                    // then switch again).
                    owned.generation = if self.control.failed(generation, format!("task {id}: {e}")) {
                        self.control.generation()
                    } else {
                        u64::MAX
                    };
                }
            }
        }
    }
    /// The update the cluster holds, when this worker must hold its commits
    /// (exactly-once only: at-least-once sends outputs as they come).
    pub(super) fn cluster_holds(&self) -> Option<u64> {
        self.control.cluster_hold().filter(|_| self.exactly_once).map(|h| h.update)
    }

    /// Some task running update `update` (swapped to it, or started on it)
    /// has uncommitted work.
    pub(super) fn has_work_of(&self, update: u64) -> bool {
        self.tasks.values().any(|o| o.generation == update && o.task.as_ref().is_some_and(Task::has_uncommitted))
    }

    /// Tasks still running a version that was rolled back (by another
    /// task's trap, here or in another worker, or refused by the cluster)
    /// go back to the version before it, and every task's open work is
    /// dropped: the consumer reads it again from the committed offsets.
    /// Checked before every commit and every batch: none of it is ever
    /// committed, and nothing polled before is processed after.
    pub(super) fn drop_rolled_back_work(&mut self, consumer: &GroupConsumer) {
        let current = self.control.generation();
        let rolled_back: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, o)| o.generation != current && o.task.is_some() && self.control.rolled_back(o.generation))
            .map(|(id, _)| *id)
            .collect();
        if rolled_back.is_empty() {
            return;
        }
        self.settle(consumer);
        for id in &rolled_back {
            let Some(owned) = self.tasks.get_mut(id) else { continue };
            let Some(task) = owned.task.as_mut() else { continue };
            drop(task.take_produced());
            task.abort();
            // A task started on the rolled-back version has nothing to go
            // back to: it switches to the current one (nothing uncommitted now).
            owned.generation = if task.rollback_swap() { current } else { u64::MAX };
            owned.proving = false;
            tracing::warn!(task = %id, "the version was rolled back: its uncommitted work dropped, back to the previous version");
        }
        self.abandon_open_work(consumer);
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
        self.settle(consumer); // Revocation settled it already; this is for a first assignment.
        if self.fatal.is_some() {
            return; // Stopped for good: it only waits to leave the group.
        }
        let committed =
            consumer.committed_offsets(assigned.clone(), KAFKA_TIMEOUT).unwrap_or_else(|_| assigned.clone());
        let mut inputs: BTreeMap<TaskId, InputPositions> = BTreeMap::new();
        let mut stream_times: BTreeMap<TaskId, i64> = BTreeMap::new();
        for e in committed.elements() {
            let Some(&subtopology) = self.routes.get(e.topic()) else { continue };
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            let id = TaskId { subtopology, partition: e.partition() as u32 };
            inputs.entry(id).or_default().insert((e.topic().to_owned(), e.partition() as u32), (offset, offset));
            // Every commit writes it on the partitions it consumed: the
            // largest is the latest (stream time only grows).
            let time = stream_time_of(e.metadata()).unwrap_or(-1);
            let entry = stream_times.entry(id).or_insert(-1);
            *entry = (*entry).max(time);
        }
        let mut assigned: BTreeMap<TaskId, OwnedTask> = BTreeMap::new();
        for (id, inputs) in inputs {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let owned = OwnedTask {
                task: None,
                state: TaskState::Starting,
                error: None,
                commits: 0,
                generation: 0,
                inputs,
                restored: None,
                restore_ms: None,
                committed_stream_time: stream_times.get(&id).copied().unwrap_or(-1),
                proving: false,
            };
            self.publish(id, &owned);
            assigned.insert(id, owned);
        }
        // Every task's stores together, then the tasks.
        let restored = self.restore_all(&mut assigned);
        for (id, mut owned) in assigned {
            let started = match restored.get(&id) {
                Some(Err(e)) => Err(e.clone()),
                _ => self.create_task(id, &mut owned),
            };
            match started {
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
        task.restore_stream_time(owned.committed_stream_time);
        task.set_wall_clock(crate::backend::embedded::now_us() / 1000);
        task.start().map_err(|e| e.to_string())?;
        owned.task = Some(task);
        if self.control.is_switching(generation) {
            // Started on the version of an update still switching (it began
            // before this task existed here): the task runs it, so it
            // counts as switched, and as passed once it has committed.
            self.control.switched(generation, Duration::ZERO);
            owned.proving = true;
        }
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

    pub(super) fn publish_all(&self) {
        for (id, owned) in &self.tasks {
            self.publish(*id, owned);
        }
    }

    pub(super) fn publish(&self, id: TaskId, owned: &OwnedTask) {
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
            restore_ms: owned.restore_ms,
        };
        let previous = self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).insert(id, status);
        if previous.is_none_or(|p| p.state != owned.state) {
            self.shared.tasks_version.fetch_add(1, Ordering::AcqRel);
            self.control.set_tasks(self.shared.running_tasks().len());
        }
    }
}
