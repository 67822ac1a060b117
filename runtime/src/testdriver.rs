//! `weir test`: runs a topology offline over a JSONL input file, through the
//! same executor and wasm engine as `weir serve`, on the in-memory backend.
//! A TopologyTestDriver for wasm processors.
//!
//! Determinism: input lines are appended to their topics in file order; after
//! each line every task processes whatever is pending (in task order, records
//! in the order they were written), and commits, until nothing is pending, so
//! repartitioned records are processed before the next input line. A task
//! with several inputs takes the smallest timestamp first among what it has,
//! and with `max_task_idle` set waits for an empty input until the simulated
//! wall clock (`{"wall_clock": MS}` lines) has moved that far, or the input
//! ends (`task::order`). The same spec and input always print the same
//! output, and `weir serve` gives it too however its input is batched
//! (`task::time`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::memory::MemoryBackend;
use crate::jsonl::{InputLine, OutputLine, parse_test_line};
use crate::partitioner::partition_for;
use crate::record::Record;
use crate::task::{AppRuntime, Task, TaskError, TaskId};
use crate::topology::{NodeId, NodeKind, SpecError, StoreId, Topology, load_spec};
use crate::wasm::{LoadError, LoadedComponent, WasmEngine};

/// Why `weir test` could not run (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("spec {path}:\n{error}")]
    Spec { path: String, error: SpecError },
    #[error("cannot read input {path}: {message}")]
    Input { path: String, message: String },
    #[error("{path} line {line}: {message}")]
    Line { path: String, line: usize, message: String },
    #[error("processor `{processor}`: component {reference}: {error}")]
    Component { processor: String, reference: String, error: LoadError },
    #[error(
        "processor `{processor}`: component `{reference}` is a registry name; `weir test` runs components from files: give a path to a .wasm file (relative to the spec) or --component {processor}=PATH"
    )]
    RegistryReference { processor: String, reference: String },
    #[error("task {task} stopped after input line {line}: {error}")]
    Task { task: String, line: usize, error: TaskError },
}

/// Options of a test run.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Component files by processor name, overriding the spec.
    pub components: BTreeMap<String, PathBuf>,
    /// Also print records written to repartition topics.
    pub include_internal: bool,
    /// The timestamp of input records without one (without it, such a
    /// line is an error).
    pub default_timestamp: Option<i64>,
}

/// What a run printed, and how it ended.
#[derive(Debug)]
pub struct TestRun {
    pub outputs: Vec<OutputLine>,
    /// Set when a task stopped (error policy `fail`); outputs before it are kept.
    pub stopped: Option<TestError>,
    /// Records a processor failed on by breaking the contract (emitting to
    /// an undeclared output, opening a store not granted to it): they were
    /// dead-lettered, as `weir serve` does, but the run fails.
    pub violations: Vec<String>,
    pub runner: OfflineRunner,
}

/// Resolves a processor's component reference to a file, if it is a path:
/// anything ending in `.wasm` or containing a `/`, relative to `base`.
pub fn component_path(reference: &str, base: &Path) -> Option<PathBuf> {
    let looks_like_path = reference.ends_with(".wasm") || reference.contains('/') || reference.contains('\\');
    looks_like_path.then(|| {
        let p = Path::new(reference);
        if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
    })
}

/// Runs `spec` over `input`, printing nothing: returns the output lines.
pub fn run(spec: &Path, input: &Path, engine: Arc<WasmEngine>, options: &TestOptions) -> Result<TestRun, TestError> {
    let topology = load_spec(spec)
        .and_then(Topology::compile)
        .map_err(|error| TestError::Spec { path: spec.display().to_string(), error })?;
    let base = spec.parent().unwrap_or(Path::new("."));
    let components = load_components(&topology, base, &engine, &options.components)?;
    let text = std::fs::read_to_string(input)
        .map_err(|e| TestError::Input { path: input.display().to_string(), message: e.to_string() })?;
    // Every line is parsed before anything runs: a malformed line stops the
    // run before any record is processed, so nothing after it is dropped silently.
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_test_line(line, options.default_timestamp).map_err(|message| TestError::Line {
            path: input.display().to_string(),
            line: i + 1,
            message,
        })?;
        lines.push((i + 1, parsed));
    }

    let app = Arc::new(AppRuntime { topology: Arc::new(topology), engine, components });
    let mut runner =
        OfflineRunner::new(app).map_err(|error| TestError::Task { task: "(start)".into(), line: 0, error })?;
    for (line, parsed) in &lines {
        runner.validate(parsed).map_err(|message| TestError::Line {
            path: input.display().to_string(),
            line: *line,
            message,
        })?;
    }
    let mut stopped = None;
    let mut last = 0;
    for (line, parsed) in lines {
        last = line;
        if let Err((task, error)) = runner.feed(parsed) {
            stopped = Some(TestError::Task { task, line, error });
            break;
        }
    }
    if stopped.is_none()
        && let Err((task, error)) = runner.end_of_input()
    {
        stopped = Some(TestError::Task { task, line: last, error });
    }
    let outputs = runner.outputs(options.include_internal);
    let violations = contract_violations(&outputs);
    Ok(TestRun { outputs, stopped, violations, runner })
}

/// The dead letters of kind `contract-violation`, described.
fn contract_violations(outputs: &[OutputLine]) -> Vec<String> {
    let header = |l: &OutputLine, name: &str| {
        l.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    outputs
        .iter()
        .filter(|l| header(l, "weir.error.kind").as_deref() == Some("contract-violation"))
        .map(|l| {
            format!(
                "processor `{}` on {}/{}@{}: {}",
                header(l, "weir.processor").unwrap_or_default(),
                header(l, "weir.source.topic").unwrap_or_default(),
                header(l, "weir.source.partition").unwrap_or_default(),
                header(l, "weir.source.offset").unwrap_or_default(),
                header(l, "weir.error").unwrap_or_default()
            )
        })
        .collect()
}

/// Loads the component of every processor: a path in the spec (relative to
/// `base`) unless `overrides` names a file for the processor.
pub fn load_components(
    topology: &Topology,
    base: &Path,
    engine: &WasmEngine,
    overrides: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<NodeId, Arc<LoadedComponent>>, TestError> {
    let mut components = BTreeMap::new();
    for (id, node) in topology.nodes.iter().enumerate() {
        let NodeKind::Processor(def) = &node.kind else {
            continue;
        };
        let path = match overrides.get(&node.name) {
            Some(p) => p.clone(),
            None => component_path(&def.component, base).ok_or_else(|| TestError::RegistryReference {
                processor: node.name.clone(),
                reference: def.component.clone(),
            })?,
        };
        let loaded = engine.load_file(&path).map_err(|error| TestError::Component {
            processor: node.name.clone(),
            reference: path.display().to_string(),
            error,
        })?;
        components.insert(id, loaded);
    }
    Ok(components)
}

/// Creates and starts every task (sub-topology × partition) of `app` from
/// what `backend` has committed, and commits what their `init` did.
fn start_tasks(app: &Arc<AppRuntime>, backend: &mut MemoryBackend) -> Result<Vec<Task>, TaskError> {
    let globals = backend.global_stores();
    let mut tasks = Vec::new();
    for sub in &app.topology.subtopologies {
        for partition in 0..sub.partitions {
            let id = TaskId { subtopology: sub.id, partition };
            let mut task = Task::new(app.clone(), id, |store| Ok(backend.open_store(store, partition)), &globals)?;
            task.restore_stream_time(backend.stream_time(id));
            task.start()?;
            let commit = task.prepare_commit();
            backend.commit(commit);
            task.commit_succeeded();
            tasks.push(task);
        }
    }
    Ok(tasks)
}

/// Every task of one application over the in-memory backend, pumped to quiescence.
pub struct OfflineRunner {
    app: Arc<AppRuntime>,
    pub backend: MemoryBackend,
    tasks: Vec<Task>,
    /// Global table topics and their stores.
    globals: BTreeMap<String, StoreId>,
    wall_clock: i64,
    /// Per task, per input topic: the next offset to hand it (what it was
    /// handed and has not processed yet sits in its buffer); absent: the
    /// committed position.
    read: Vec<BTreeMap<Arc<str>, i64>>,
}

impl std::fmt::Debug for OfflineRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineRunner").field("app", &self.app.topology.name).field("tasks", &self.tasks.len()).finish()
    }
}

impl OfflineRunner {
    /// Creates and starts every task (sub-topology × partition).
    pub fn new(app: Arc<AppRuntime>) -> Result<Self, TaskError> {
        let topology = app.topology.clone();
        let mut backend = MemoryBackend::new(&topology);
        let tasks = start_tasks(&app, &mut backend)?;
        let globals = topology.globals.iter().map(|g| (g.input.topic.clone(), g.store)).collect();
        let read = vec![BTreeMap::new(); tasks.len()];
        Ok(OfflineRunner { app, backend, tasks, globals, wall_clock: 0, read })
    }

    /// Like [`pump`](Self::pump), batched and with crashes, to check that
    /// batching never changes output: each task takes its pending records in
    /// calls of `batch()` records and commits after each; before a commit,
    /// `crash()` may say the process dies there: every task's open work is
    /// lost and all tasks start again from committed state (positions,
    /// stores, stream time), as after kill -9.
    pub fn pump_with(
        &mut self,
        batch: &mut dyn FnMut() -> usize,
        crash: &mut dyn FnMut() -> bool,
    ) -> Result<(), (String, TaskError)> {
        self.run_pending(batch, crash)?;
        self.end_of_input()
    }

    /// Hands every task its pending input in calls of `batch()` records,
    /// committing after each (or restarting all when `crash()` says so),
    /// until no task has input it was not handed.
    fn run_pending(
        &mut self,
        batch: &mut dyn FnMut() -> usize,
        crash: &mut dyn FnMut() -> bool,
    ) -> Result<(), (String, TaskError)> {
        loop {
            let mut progressed = false;
            for i in 0..self.tasks.len() {
                let pending = self.undelivered(i);
                if pending.is_empty() {
                    continue;
                }
                progressed = true;
                let mut records = pending.into_iter().peekable();
                while records.peek().is_some() {
                    let call: Vec<_> = records.by_ref().take(batch().max(1)).collect();
                    let result = self.tasks[i].process(call);
                    if result.is_ok() && crash() {
                        self.restart().map_err(|e| ("(restart)".to_owned(), e))?;
                        break;
                    }
                    self.finish(i, result)?;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Every task loses its open work and starts again from committed state.
    pub fn restart(&mut self) -> Result<(), TaskError> {
        for task in &mut self.tasks {
            task.abort();
        }
        self.tasks = start_tasks(&self.app, &mut self.backend)?;
        self.read = vec![BTreeMap::new(); self.tasks.len()];
        Ok(())
    }

    pub fn topology(&self) -> &Topology {
        &self.app.topology
    }

    /// Checks that an input line can be fed (its topic is an input).
    pub fn validate(&self, line: &InputLine) -> Result<(), String> {
        let InputLine::Record { topic, partition, .. } = line else {
            return Ok(());
        };
        let topology = &self.app.topology;
        let is_input = topology.input_topics().any(|t| t == topic);
        if !is_input {
            let mut inputs: Vec<&str> = topology.input_topics().filter(|t| !t.ends_with("-repartition")).collect();
            inputs.sort_unstable();
            return Err(format!(
                "topic `{topic}` is not an input of application `{}` (inputs: {})",
                topology.name,
                inputs.join(", ")
            ));
        }
        if let Some(p) = partition {
            let n = topology.partitions_of(topic).unwrap_or(1);
            if *p >= n {
                return Err(format!("partition {p} does not exist: topic `{topic}` has {n} partition(s)"));
            }
        }
        Ok(())
    }

    /// Appends one input line and processes everything that follows from it.
    pub fn feed(&mut self, line: InputLine) -> Result<(), (String, TaskError)> {
        match line {
            InputLine::WallClock(ms) => {
                self.wall_clock = ms;
                for i in 0..self.tasks.len() {
                    let result = self.tasks[i].advance_wall_clock(ms);
                    self.finish(i, result)?;
                }
            }
            InputLine::Record { topic, partition, record } => self.append_input(&topic, partition, record),
        }
        self.pump()
    }

    /// Appends a record to an input topic (global tables apply at once).
    pub fn append_input(&mut self, topic: &str, partition: Option<u32>, record: Record) {
        let partitions = self.backend.partitions(topic).unwrap_or(1);
        let partition = partition.unwrap_or_else(|| partition_for(record.key.as_deref(), partitions, 0));
        if let Some(store) = self.globals.get(topic) {
            self.backend.apply_global(*store, &record);
        }
        let t = self.backend.topic(topic).expect("validated input topic");
        self.backend.append(&t, partition, record);
    }

    /// Runs tasks until none has pending input.
    pub fn pump(&mut self) -> Result<(), (String, TaskError)> {
        self.run_pending(&mut || usize::MAX, &mut || false)
    }

    /// The input is over: tasks still waiting for one of their inputs
    /// (timestamp order across inputs, `max_task_idle`) go on with what they
    /// have, until nothing is pending.
    pub fn end_of_input(&mut self) -> Result<(), (String, TaskError)> {
        while self.flush_waiting()? {
            self.pump()?;
        }
        Ok(())
    }

    /// Task `i`'s input records it has not been handed yet, in the order
    /// they were written.
    fn undelivered(&mut self, i: usize) -> Vec<crate::record::ConsumedRecord> {
        let partition = self.tasks[i].id().partition;
        let mut pending = Vec::new();
        let topics: Vec<Arc<str>> = self.tasks[i].input_topics().cloned().collect();
        for topic in topics {
            let from =
                self.read[i].get(&topic).copied().unwrap_or_else(|| self.backend.position(&(topic.clone(), partition)));
            let records = self.backend.read(&topic, partition, from, usize::MAX);
            if let Some((_, last)) = records.last() {
                self.read[i].insert(topic.clone(), last.offset + 1);
            }
            pending.extend(records);
        }
        pending.sort_by_key(|(sequence, _)| *sequence);
        pending.into_iter().map(|(_, r)| r).collect()
    }

    /// Nothing more will come: tasks waiting for an input (timestamp order)
    /// go on with what they have. True if any had something.
    fn flush_waiting(&mut self) -> Result<bool, (String, TaskError)> {
        let mut any = false;
        for i in 0..self.tasks.len() {
            if self.tasks[i].buffered(None) > 0 {
                any = true;
                let result = self.tasks[i].flush_buffered();
                self.finish(i, result)?;
            }
        }
        Ok(any)
    }

    /// Commits task `i`'s transaction, or aborts it and reports the error.
    fn finish(&mut self, i: usize, result: Result<(), TaskError>) -> Result<(), (String, TaskError)> {
        let task = &mut self.tasks[i];
        match result {
            Ok(()) => {
                let commit = task.prepare_commit();
                self.backend.commit(commit);
                task.commit_succeeded();
                Ok(())
            }
            Err(e) => {
                task.abort();
                self.read[i].clear();
                Err((task.name().to_owned(), e))
            }
        }
    }

    /// Records written to sinks and the dead-letter topic (and repartition
    /// topics if asked), in the order they were written.
    pub fn outputs(&self, include_internal: bool) -> Vec<OutputLine> {
        let topology = &self.app.topology;
        let inputs: Vec<&str> = topology.input_topics().collect();
        self.backend
            .appended()
            .iter()
            .filter(|a| {
                let repartition = a.topic.ends_with("-repartition") && inputs.contains(&&*a.topic);
                if repartition { include_internal } else { !inputs.contains(&&*a.topic) }
            })
            .filter_map(|a| {
                self.backend.get(&a.topic, a.partition, a.offset).map(|r| OutputLine::new(&a.topic, a.partition, r))
            })
            .collect()
    }

    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }
}
