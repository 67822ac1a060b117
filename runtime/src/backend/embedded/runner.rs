//! Runs a deployed application on the embedded backend: its tasks spread over
//! worker threads, each worker looping read → process → commit.
//!
//! Exactly-once (default): each task commits every `commit_interval` — its
//! outputs, store changes and input positions in one write batch. On
//! restart, tasks resume from their committed positions; uncommitted work is
//! redone as if it had never happened.
//!
//! At-least-once: outputs and store changes are written after every batch of
//! input, positions only every `commit_interval`, in a separate write. A
//! crash in between re-processes records whose effects were already written:
//! nothing is lost, some outputs (and state updates) repeat. It trades
//! repeats for lower latency.
//!
//! A task whose processor fails under error policy `fail` (or whose `init`
//! fails) stops; the others go on. A commit that fails (full disk, read-only
//! data dir) stalls the task with the error in its status; it is retried
//! every few seconds from its last committed state.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rocksdb::WriteBatch;

use super::{BackendError, EmbeddedBackend, Topic};
use crate::backend::control::Control;
use crate::state::SharedStore;
use crate::status::{AppStatus, InputStatus, SwapRecord, TaskState, TaskStatus};
use crate::task::{AppRuntime, Task, TaskError, TaskId};
use crate::topology::{ProcessingGuarantee, StoreId, Topology};

/// How long a stalled task waits before trying again.
const STALL_RETRY: Duration = Duration::from_secs(5);

/// Runner settings (from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub commit_interval: Duration,
    pub max_batch: usize,
    pub workers: usize,
}

/// Why an application could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Topics(String),
}

/// A running application on the embedded backend.
pub struct EmbeddedApp {
    control: Arc<Control>,
    status: Arc<Mutex<BTreeMap<TaskId, TaskStatus>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    backend: Arc<EmbeddedBackend>,
    /// Tasks of the application: until each has reported, it is starting.
    tasks: usize,
}

/// Creates every topic the application uses, checking existing ones.
/// Changelog topics are not created: here stores are committed in the same
/// write batch as the log, so the data directory itself is their durable copy.
pub fn create_topics(backend: &EmbeddedBackend, topology: &Topology) -> Result<(), StartError> {
    let changelogs: Vec<&str> = topology.stores.iter().filter_map(|s| s.changelog.as_deref()).collect();
    let topics: Vec<(&String, &u32)> =
        topology.partitions.iter().filter(|(t, _)| !changelogs.contains(&t.as_str())).collect();
    let mut problems = Vec::new();
    for (topic, partitions) in topics.iter().copied() {
        if let Some(existing) = backend.topic(topic)
            && existing.partitions() != *partitions
        {
            problems.push(format!(
                "topic `{topic}` exists with {} partition(s), the application needs {partitions}",
                existing.partitions()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(StartError::Topics(problems.join("; ")));
    }
    for (topic, partitions) in topics {
        backend.create_topic(topic, *partitions)?;
    }
    Ok(())
}

impl EmbeddedApp {
    /// Starts the application: registers its stores, bootstraps its global
    /// tables, and spawns the workers.
    pub fn start(
        backend: Arc<EmbeddedBackend>,
        app: Arc<AppRuntime>,
        config: RunnerConfig,
    ) -> Result<Self, StartError> {
        Self::start_with_history(backend, app, config, Vec::new())
    }

    /// Like [`start`](Self::start), carrying the update history of a previous run.
    pub fn start_with_history(
        backend: Arc<EmbeddedBackend>,
        app: Arc<AppRuntime>,
        config: RunnerConfig,
        history: Vec<SwapRecord>,
    ) -> Result<Self, StartError> {
        let topology = app.topology.clone();
        create_topics(&backend, &topology)?;
        let mut store_ids: HashMap<StoreId, u32> = HashMap::new();
        for (sid, store) in topology.stores.iter().enumerate() {
            store_ids.insert(sid, backend.register_store(&topology.name, &store.name)?);
        }
        let store_ids = Arc::new(store_ids);
        let globals: BTreeMap<StoreId, SharedStore> =
            topology.globals.iter().map(|g| (g.store, backend.open_store(store_ids[&g.store], 0, &g.name))).collect();
        // Global tables are complete before any task processes a record.
        let mut updater = GlobalUpdater::new(&backend, &topology, &store_ids);
        updater.catch_up()?;

        let status = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let total_tasks = topology.subtopologies.iter().map(|s| s.partitions as usize).sum();
        let first_generation = history.last().map_or(0, |r| r.id);
        let _ = first_generation;
        let control = Arc::new(Control::new(app.clone(), history, total_tasks));
        let mut assignments: Vec<Vec<TaskId>> = vec![Vec::new(); config.workers.max(1)];
        let mut n = 0;
        for sub in &topology.subtopologies {
            for partition in 0..sub.partitions {
                let worker = n % assignments.len();
                assignments[worker].push(TaskId { subtopology: sub.id, partition });
                n += 1;
            }
        }
        let mut workers = Vec::new();
        for (i, tasks) in assignments.into_iter().enumerate() {
            // Worker 0 also keeps global tables current, even without tasks.
            let updates_globals = i == 0 && !topology.globals.is_empty();
            if tasks.is_empty() && !updates_globals {
                continue;
            }
            let worker = Worker {
                backend: backend.clone(),
                control: control.clone(),
                config: config.clone(),
                store_ids: store_ids.clone(),
                globals: globals.clone(),
                status: status.clone(),
                stop: stop.clone(),
                global_updater: if i == 0 { Some(GlobalUpdater::new(&backend, &topology, &store_ids)) } else { None },
            };
            let name = format!("weir-{}-{i}", topology.name);
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || worker.run(tasks))
                .map_err(|e| StartError::Topics(format!("cannot start worker thread: {e}")))?;
            workers.push(handle);
        }
        tracing::info!(app = %topology.name, tasks = n, workers = workers.len(), "application started");
        Ok(EmbeddedApp { control, status, stop, workers, backend, tasks: total_tasks })
    }

    /// The version the application runs (or is switching to).
    pub fn runtime(&self) -> Arc<AppRuntime> {
        self.control.current().1
    }

    /// Starts a hot swap to `new` (same graph): each task switches at its
    /// next commit boundary. Returns the update's id.
    pub fn update(&self, new: Arc<AppRuntime>) -> Result<u64, String> {
        let id = self.control.begin(new)?;
        self.backend.notify();
        Ok(id)
    }

    /// The application's control plane: versions, updates, metrics.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The application's status, with lag computed now.
    pub fn status(&self) -> AppStatus {
        let mut tasks: Vec<TaskStatus> =
            self.status.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for t in &mut tasks {
            for input in &mut t.inputs {
                if let Some(topic) = self.backend.topic(&input.topic) {
                    input.end = topic.end_offset(input.partition);
                    input.committed = input.committed.max(topic.start_offset(input.partition));
                    input.lag = (input.end - input.committed).max(0);
                }
            }
        }
        let mut status = self.control.app_status("embedded", tasks);
        // A task that has not reported yet is starting: without this, the
        // tasks of one worker could say `running`, lag 0, while another
        // worker's tasks (with lag) had not reported at all.
        if status.tasks.len() < self.tasks && status.state == "running" {
            status.state = "starting".to_owned();
        }
        status
    }

    /// Stops the workers after a final commit of every task.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        self.backend.notify();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        tracing::info!(app = %self.runtime().topology.name, "application stopped");
    }
}

impl Drop for EmbeddedApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.backend.notify();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Keeps the global tables' stores up to date with their topics.
struct GlobalUpdater {
    backend: Arc<EmbeddedBackend>,
    app: String,
    /// Per global table: topic, store id, next offset per partition.
    tables: Vec<(Arc<Topic>, u32, Vec<i64>)>,
}

impl GlobalUpdater {
    fn new(backend: &Arc<EmbeddedBackend>, topology: &Topology, store_ids: &HashMap<StoreId, u32>) -> Self {
        let tables = topology
            .globals
            .iter()
            .filter_map(|g| {
                let topic = backend.topic(&g.input.topic)?;
                let positions = (0..topic.partitions())
                    .map(|p| backend.position(&topology.name, &g.input.topic, p).unwrap_or(0))
                    .collect();
                Some((topic, store_ids[&g.store], positions))
            })
            .collect();
        GlobalUpdater { backend: backend.clone(), app: topology.name.clone(), tables }
    }

    /// Applies everything new; true if anything was.
    fn step(&mut self) -> Result<bool, BackendError> {
        let mut any = false;
        let db = self.backend.db().clone();
        for (topic, store_id, positions) in &mut self.tables {
            for (p, position) in positions.iter_mut().enumerate() {
                let records = self.backend.read(topic, p as u32, *position, 10_000)?;
                let Some(last) = records.last().map(|r| r.offset) else {
                    continue;
                };
                let mut batch = WriteBatch::default();
                let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                    records.into_iter().filter_map(|r| r.record.key.map(|k| (k, r.record.value))).collect();
                db.write_state(
                    &mut batch,
                    crate::state::rocks::StoreKey { store: *store_id, partition: 0 },
                    writes.iter().map(|(k, v)| (k, v)),
                );
                db.put_meta(&mut batch, &format!("pos/{}/{}/{p}", self.app, topic.name), &(last + 1).to_be_bytes());
                db.write(batch)?;
                *position = last + 1;
                any = true;
            }
        }
        Ok(any)
    }

    fn catch_up(&mut self) -> Result<(), BackendError> {
        while self.step()? {}
        Ok(())
    }
}

struct Worker {
    backend: Arc<EmbeddedBackend>,
    control: Arc<Control>,
    config: RunnerConfig,
    store_ids: Arc<HashMap<StoreId, u32>>,
    globals: BTreeMap<StoreId, SharedStore>,
    status: Arc<Mutex<BTreeMap<TaskId, TaskStatus>>>,
    stop: Arc<AtomicBool>,
    global_updater: Option<GlobalUpdater>,
}

/// One task and its reading state.
struct Slot {
    id: TaskId,
    task: Option<Task>,
    inputs: Vec<(Arc<Topic>, u32)>,
    /// Per input, the slot's own `Arc` of the topic's name for the records
    /// it reads (see [`EmbeddedBackend::read_as`]).
    names: Vec<Arc<str>>,
    /// Next offset to read, per input.
    read: Vec<i64>,
    /// Committed position, per input.
    committed: Vec<i64>,
    last_commit: Instant,
    /// Uncommitted positions exist (at-least-once: outputs already written).
    positions_dirty: bool,
    /// Started directly on the version of an update not yet applied: its
    /// first commit counts as that version passing here.
    proving: bool,
    state: TaskState,
    error: Option<String>,
    retry_at: Option<Instant>,
    commits: u64,
    /// The control generation this task's version belongs to.
    generation: u64,
}

impl Worker {
    fn run(mut self, ids: Vec<TaskId>) {
        let mut slots: Vec<Slot> = ids.into_iter().map(|id| self.new_slot(id)).collect();
        for slot in &mut slots {
            self.start_task(slot);
        }
        let topology = self.control.current().1.topology.clone();
        let exactly_once = topology.guarantee == ProcessingGuarantee::ExactlyOnce;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let seen = self.backend.data_version();
            let mut worked = false;
            if let Some(updater) = &mut self.global_updater {
                match updater.step() {
                    Ok(any) => worked |= any,
                    Err(e) => {
                        tracing::error!(app = %topology.name, error = %e, "global table update failed")
                    }
                }
            }
            let now_ms = super::now_us() / 1000;
            for slot in &mut slots {
                if slot.state != TaskState::Running && slot.generation != self.control.generation() {
                    // No instance to swap: a stalled task restarts on the
                    // current version, a failed one never runs again. Either
                    // way it must not hold an update in `switching` forever.
                    let generation = self.control.generation();
                    slot.generation = generation;
                    self.control.switched(generation, Duration::ZERO);
                }
                if slot.state == TaskState::Stalled && slot.retry_at.is_some_and(|t| Instant::now() >= t) {
                    self.start_task(slot);
                }
                if slot.state != TaskState::Running || stopping {
                    continue;
                }
                if slot.generation != self.control.generation() {
                    self.switch_version(slot);
                    worked = true;
                }
                match self.poll(slot) {
                    Ok(read_any) => worked |= read_any,
                    Err(e) => {
                        self.task_error(slot, e);
                        continue;
                    }
                }
                if let Some(task) = &mut slot.task
                    && let Err(e) = task.advance_wall_clock(now_ms)
                {
                    self.task_error(slot, e);
                    continue;
                }
                let due = slot.last_commit.elapsed() >= self.config.commit_interval;
                if exactly_once {
                    if due {
                        self.commit(slot, true);
                    }
                } else {
                    // At-least-once: effects now, positions on the interval.
                    self.commit(slot, due);
                }
                self.publish_status(slot);
            }
            if stopping {
                for slot in &mut slots {
                    if slot.state == TaskState::Running {
                        self.commit(slot, true);
                        self.publish_status(slot);
                    }
                }
                return;
            }
            if !worked {
                let wait = self.config.commit_interval.min(Duration::from_millis(50));
                self.backend.wait_for_data(seen, wait);
            }
        }
    }

    /// Moves a task to the version the control plane wants, at a commit
    /// boundary: commit, then swap (instantiate + init); stores are kept.
    fn switch_version(&self, slot: &mut Slot) {
        let started = Instant::now();
        self.commit(slot, true);
        let Some(task) = slot.task.as_mut() else { return };
        if slot.state != TaskState::Running || task.has_uncommitted() {
            return; // The commit failed: the task stalls and restarts on the current version.
        }
        let (generation, target) = self.control.current();
        match task.swap(target) {
            Ok(_) => {
                slot.generation = generation;
                self.control.switched(generation, started.elapsed());
                if !task.in_probation() {
                    // Nothing of this task changed: there is nothing to prove.
                    self.control.passed(generation);
                }
                let app = self.control.current().1.topology.name.clone();
                tracing::info!(app, task = %slot.id, update = generation, pause_us = started.elapsed().as_micros() as u64, "switched version");
            }
            Err(e) => {
                // Nothing changed in this task; everyone goes back (unless a
                // newer update replaced this one meanwhile: then switch again).
                slot.generation = if self.control.failed(generation, format!("task {}: {e}", slot.id)) {
                    self.control.generation()
                } else {
                    u64::MAX
                };
            }
        }
    }

    /// A task error: a failed swap rolls back; anything else stops the task.
    fn task_error(&self, slot: &mut Slot, error: TaskError) {
        if let TaskError::SwapFailed { .. } = &error
            && let Some(task) = slot.task.as_mut()
        {
            // Nothing of the new version's transaction is committed.
            task.abort();
            task.rollback_swap();
            for i in 0..slot.read.len() {
                slot.read[i] = slot.committed[i];
            }
            if self.control.failed(slot.generation, format!("task {}: {error}", slot.id)) {
                // Every task goes back to the version this one runs again.
                slot.generation = self.control.generation();
            } else {
                // A newer update replaced the version that failed: this task
                // runs the one before it now and must switch to the current one.
                slot.generation = u64::MAX;
            }
            self.publish_status(slot);
            return;
        }
        self.fail(slot, error.to_string(), false);
    }

    fn new_slot(&self, id: TaskId) -> Slot {
        let topology = self.control.current().1.topology.clone();
        let inputs: Vec<(Arc<Topic>, u32)> = topology.subtopologies[id.subtopology]
            .inputs
            .iter()
            .filter_map(|(topic, _)| self.backend.topic(topic).map(|t| (t, id.partition)))
            .collect();
        Slot {
            id,
            task: None,
            read: vec![0; inputs.len()],
            committed: vec![0; inputs.len()],
            names: inputs.iter().map(|(t, _)| Arc::from(&*t.name)).collect(),
            inputs,
            last_commit: Instant::now(),
            positions_dirty: false,
            proving: false,
            state: TaskState::Starting,
            error: None,
            retry_at: None,
            commits: 0,
            generation: 0,
        }
    }

    /// (Re)creates a task from committed state.
    fn start_task(&self, slot: &mut Slot) {
        let (generation, app) = self.control.current();
        let topology = &app.topology;
        slot.state = TaskState::Starting;
        self.publish_status(slot);
        let result = (|| -> Result<Task, String> {
            for (i, (topic, p)) in slot.inputs.iter().enumerate() {
                let committed = self.backend.position(&topology.name, &topic.name, *p).map_err(|e| e.to_string())?;
                slot.committed[i] = committed;
                slot.read[i] = committed;
            }
            let backend = &self.backend;
            let store_ids = &self.store_ids;
            let mut task = Task::new(
                app.clone(),
                slot.id,
                |sid| Ok(backend.open_store(store_ids[&sid], slot.id.partition, &topology.stores[sid].name)),
                &self.globals,
            )
            .map_err(|e| e.to_string())?;
            task.restore_stream_time(self.backend.stream_time(&topology.name, slot.id).map_err(|e| e.to_string())?);
            task.set_wall_clock(super::now_us() / 1000);
            task.start().map_err(|e| e.to_string())?;
            Ok(task)
        })();
        match result {
            Ok(task) => {
                slot.task = Some(task);
                if slot.generation != generation && self.control.is_switching(generation) {
                    // Started on the version of an update still switching
                    // (it began before this task first started, or while it
                    // stalled): the task runs it, so it counts as switched,
                    // and as passed once it has committed.
                    self.control.switched(generation, Duration::ZERO);
                    slot.proving = true;
                }
                slot.generation = generation;
                slot.state = TaskState::Running;
                slot.error = None;
                slot.retry_at = None;
                slot.last_commit = Instant::now();
            }
            Err(e) => {
                let storage = e.contains("storage") || e.contains("IO error");
                self.fail(slot, e, storage);
            }
        }
        self.publish_status(slot);
    }

    /// Reads new input and processes it. True if there was any.
    fn poll(&self, slot: &mut Slot) -> Result<bool, TaskError> {
        let task = slot.task.as_mut().expect("running task");
        let mut records = Vec::new();
        for (i, (topic, p)) in slot.inputs.iter().enumerate() {
            // Not more than a batch ahead per input: a task waiting for one
            // input (timestamp order) need not hold all of the others.
            let room = self.config.max_batch.saturating_sub(records.len().max(task.buffered(Some(&topic.name))));
            let read = self.backend.read_as(topic, &slot.names[i], *p, slot.read[i], room).map_err(|e| {
                TaskError::State(crate::state::StateError { store: topic.name.to_string(), message: e.to_string() })
            })?;
            if let Some(last) = read.last() {
                slot.read[i] = last.offset + 1;
            }
            task.set_input_behind(&topic.name, topic.end_offset(*p) > slot.read[i]);
            records.extend(read);
        }
        if records.is_empty() {
            return Ok(false);
        }
        let started = Instant::now();
        task.process(records)?;
        self.control.metrics.process.observe(started.elapsed());
        slot.positions_dirty = true;
        Ok(true)
    }

    /// Commits the task's transaction. With `with_positions` false
    /// (at-least-once between intervals), positions stay in the task.
    fn commit(&self, slot: &mut Slot, with_positions: bool) {
        let runtime = self.control.current().1;
        let app = &runtime.topology.name;
        let Some(task) = slot.task.as_mut() else {
            return;
        };
        if !task.has_uncommitted() {
            slot.last_commit = Instant::now();
            return;
        }
        let on_probation = task.in_probation();
        let mut commit = task.prepare_commit();
        let positions = std::mem::take(&mut commit.positions);
        if with_positions {
            commit.positions = positions.clone();
        } else {
            commit.stream_time = None;
        }
        let started = Instant::now();
        let result = self.backend.commit(app, commit, &self.store_ids);
        self.control.metrics.commit.observe(started.elapsed());
        match result {
            Ok(()) => {
                task.commit_succeeded();
                let proven = (on_probation && !task.in_probation()) || slot.proving;
                if proven && self.control.owns(slot.generation) {
                    self.control.passed(slot.generation);
                }
                slot.proving = false;
                if with_positions {
                    for (i, (topic, p)) in slot.inputs.iter().enumerate() {
                        if let Some(offset) = positions.get(&(topic.name.clone(), *p)) {
                            slot.committed[i] = *offset;
                        }
                    }
                    slot.positions_dirty = false;
                    slot.last_commit = Instant::now();
                } else {
                    // Keep the positions for the next commit.
                    task.restore_positions(positions);
                }
                slot.commits += 1;
            }
            Err(e) => {
                let storage = matches!(e, BackendError::Storage(_));
                self.fail(slot, format!("commit failed: {e}"), storage);
            }
        }
    }

    /// Stops a task: `stall` (storage trouble) retries later, else for good.
    fn fail(&self, slot: &mut Slot, error: String, stall: bool) {
        if let Some(task) = &mut slot.task {
            task.abort();
        }
        slot.task = None;
        for i in 0..slot.read.len() {
            slot.read[i] = slot.committed[i];
        }
        let runtime = self.control.current().1;
        let app = &runtime.topology.name;
        if stall {
            tracing::error!(app, task = %slot.id, "task stalled, retrying in {STALL_RETRY:?}: {error}");
            slot.state = TaskState::Stalled;
            slot.retry_at = Some(Instant::now() + STALL_RETRY);
        } else {
            tracing::error!(app, task = %slot.id, "task stopped: {error}");
            slot.state = TaskState::Failed;
        }
        slot.error = Some(error);
        self.publish_status(slot);
    }

    fn publish_status(&self, slot: &Slot) {
        let metrics = slot.task.as_ref().map(|t| t.metrics().clone()).unwrap_or_default();
        let previous = self.status.lock().unwrap_or_else(|e| e.into_inner()).get(&slot.id).cloned();
        // Counters survive a task being re-created after a stall.
        let keep = |f: fn(&TaskStatus) -> u64, now: u64| now.max(previous.as_ref().map_or(0, f));
        let status = TaskStatus {
            id: slot.id.to_string(),
            subtopology: slot.id.subtopology,
            partition: slot.id.partition,
            state: slot.state,
            error: slot.error.clone(),
            inputs: slot
                .inputs
                .iter()
                .zip(&slot.committed)
                .map(|((topic, p), committed)| InputStatus {
                    topic: topic.name.to_string(),
                    partition: *p,
                    committed: *committed,
                    end: topic.end_offset(*p),
                    lag: (topic.end_offset(*p) - committed).max(0),
                })
                .collect(),
            records_in: keep(|s| s.records_in, metrics.records_in),
            processed: metrics.processed.clone(),
            emitted: metrics.emitted.clone(),
            dead_letters: keep(|s| s.dead_letters, metrics.dead_letters),
            skipped: keep(|s| s.skipped, metrics.skipped),
            failures: metrics.failures.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            partition_mismatches: keep(|s| s.partition_mismatches, metrics.partition_mismatches),
            commits: slot.commits,
            restore: None,
            restore_ms: None,
        };
        self.status.lock().unwrap_or_else(|e| e.into_inner()).insert(slot.id, status);
    }
}
