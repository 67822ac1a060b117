//! Runs a deployed application on Kafka: one worker thread per application
//! instance, holding a group consumer and a producer, and the tasks the
//! group assigned to this instance.
//!
//! The loop: poll a batch of records, hand each to its task (sub-topology ×
//! partition), send the outputs at once (into the open transaction), and
//! every `commit_interval` commit every task at once. A commit freezes the
//! open work and runs on in a commit thread (the last acknowledgements, the
//! offsets, the end of the transaction) while the worker keeps processing;
//! see [`super::commit`]. `weir_commit_deliveries_seconds` and
//! `weir_commit_offsets_seconds` show the commit's two parts,
//! `weir_commit_blocked_seconds` what it cost the worker.
//!
//! - exactly-once: one transaction holds the outputs, the changelog records
//!   of every store written since the last commit (last value per key,
//!   tombstones for deletes) and the input offsets (sent with the consumer
//!   group metadata: EOS v2). Only after it commits are the store writes
//!   applied to local RocksDB, with each changelog partition's checkpoint.
//!   A failed transaction is aborted, the tasks drop their open work and the
//!   consumer rewinds to the committed offsets; so does a task that must
//!   drop its open work (error policy `fail`, a swap failing probation)
//!   while records of the open transaction were sent: every task of the
//!   worker re-reads from its committed offsets. A fenced producer stops every
//!   task and says so.
//! - at-least-once: an idempotent producer; outputs are sent as they come,
//!   changelogs at the commit, every delivery awaited, then offsets
//!   committed, then local state applied. (A task that fails keeps the
//!   outputs it already sent: at-least-once may repeat, never lose.)
//!
//! Rebalancing (eager, range assignor): on revocation the tasks commit and
//! close inside the rebalance callback, before the partitions can move; on
//! assignment each task restores its stores from its local checkpoint to the
//! changelog's end (read_committed), or from the start without local state,
//! and is created.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::directory::{Announcement, Directory};
use super::{KafkaSettings, TopicRequest};
use crate::backend::control::Control;
use crate::backend::embedded::EmbeddedBackend;
use crate::node::TaskLocation;
use crate::state::SharedStore;
use crate::status::{AppStatus, InputStatus, SwapRecord, TaskState, TaskStatus};
use crate::task::{AppRuntime, TaskId};
use crate::topology::{StoreId, Topology};

use super::worker::WorkerSetup;

/// How long a transaction call, a flush or a restore may go without progress.
pub(super) const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the worker refreshes partition end offsets for lag.
pub(super) const LAG_REFRESH: Duration = Duration::from_secs(1);

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
/// Kept in a window store's changelog beyond the windows' retention: one day.
const WINDOW_CHANGELOG_MARGIN_MS: u64 = 24 * 60 * 60 * 1000;

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
                // A window store's changelog also forgets what is older
                // than its windows live (Kafka Streams adds a day too).
                retention_ms: topology
                    .stores
                    .iter()
                    .find(|s| s.changelog.as_deref() == Some(topic.as_str()))
                    .and_then(|s| s.retention)
                    .map(|r| {
                        u64::try_from(r.as_millis()).unwrap_or(u64::MAX).saturating_add(WINDOW_CHANGELOG_MARGIN_MS)
                    }),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(KafkaStartError::Topics(problems.join("; ")));
    }
    let directory = super::directory::topic(&topology.name);
    if !existing.contains_key(&directory) {
        missing.push(TopicRequest { name: directory, partitions: 1, compact: true, retention_ms: None });
    }
    super::create_topics(brokers, &missing).map_err(KafkaStartError::Broker)
}

/// What the worker shares with the API.
pub(super) struct Shared {
    pub(super) status: Mutex<BTreeMap<TaskId, TaskStatus>>,
    pub(super) stop: AtomicBool,
    /// Why the whole instance stopped (fenced, broker refused), if it did.
    pub(super) fatal: Mutex<Option<String>>,
    /// How far the global tables are loaded.
    pub(super) globals: Mutex<Vec<InputStatus>>,
    /// Bumped whenever tasks are created or closed: the directory announcer
    /// re-announces.
    pub(super) tasks_version: AtomicU64,
}

impl Shared {
    /// Ids of the tasks this instance runs now.
    pub(super) fn running_tasks(&self) -> Vec<String> {
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
