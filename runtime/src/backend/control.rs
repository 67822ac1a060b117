//! The control plane an application's workers share, whatever the backend:
//! the version to run (hot swap), the history of updates, latency metrics.
//! An update bumps `generation`; each task switches at its next commit
//! boundary and reports back; a failure rolls every task back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::backend::embedded::now_us;
use crate::metrics::AppMetrics;
use crate::status::SwapRecord;
use crate::task::AppRuntime;

/// What an application's workers share besides data: the version to run and
/// the history of updates. An update bumps `generation`; each task switches
/// at its next commit boundary.
pub struct Control {
    pub(crate) runtime: RwLock<Arc<AppRuntime>>,
    generation: AtomicU64,
    /// The version before the current update, to roll back to.
    previous: Mutex<Option<Arc<AppRuntime>>>,
    pub(crate) swaps: Mutex<Vec<SwapRecord>>,
    pub(crate) tasks: AtomicUsize,
    /// Called with the version an update rolled back to (to persist it).
    pub(crate) on_rollback: Mutex<Option<RollbackHook>>,
    pub(crate) metrics: Arc<AppMetrics>,
}

/// See [`EmbeddedApp::on_rollback`].
pub type RollbackHook = Box<dyn Fn(&AppRuntime) + Send>;

pub fn components_of(app: &AppRuntime) -> BTreeMap<String, String> {
    app.components
        .iter()
        .map(|(node, c)| (app.topology.nodes[*node].name.clone(), format!("sha256:{}", c.sha256())))
        .collect()
}

impl Control {
    pub fn new(app: Arc<AppRuntime>, history: Vec<SwapRecord>, tasks: usize) -> Self {
        Control {
            runtime: RwLock::new(app),
            generation: AtomicU64::new(history.last().map_or(0, |r| r.id)),
            previous: Mutex::new(None),
            swaps: Mutex::new(history),
            tasks: AtomicUsize::new(tasks),
            on_rollback: Mutex::new(None),
            metrics: Arc::new(AppMetrics::default()),
        }
    }

    pub fn current(&self) -> (u64, Arc<AppRuntime>) {
        let runtime = self.runtime.read().unwrap_or_else(|e| e.into_inner());
        (self.generation.load(Ordering::Acquire), runtime.clone())
    }

    /// How many tasks this instance runs (an update is switched when all
    /// of them are): fixed on the embedded backend, moving on Kafka.
    pub fn set_tasks(&self, tasks: usize) {
        self.tasks.store(tasks, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts a component swap to `new`; refused while another is switching.
    pub fn begin(&self, new: Arc<AppRuntime>) -> Result<u64, String> {
        let mut swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = swaps.last()
            && last.state == "switching"
        {
            return Err(format!("update {} is still switching tasks; try again when it is done", last.id));
        }
        let mut runtime = self.runtime.write().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        swaps.push(SwapRecord {
            id: generation,
            started_ms: now_us() / 1000,
            kind: "component-swap".into(),
            from: components_of(&runtime),
            to: components_of(&new),
            state: "switching".into(),
            error: None,
            tasks: self.tasks.load(Ordering::Acquire),
            switched: 0,
            passed: 0,
            max_pause_ms: 0.0,
            switched_ms: None,
        });
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(runtime.clone());
        *runtime = new;
        Ok(generation)
    }

    pub fn with_record(&self, generation: u64, f: impl FnOnce(&mut SwapRecord)) {
        let mut swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = swaps.iter_mut().rev().find(|r| r.id == generation) {
            f(r);
        }
    }

    pub fn switched(&self, generation: u64, pause: Duration) {
        self.with_record(generation, |r| {
            r.switched += 1;
            r.max_pause_ms = r.max_pause_ms.max(pause.as_secs_f64() * 1000.0);
            if r.switched >= r.tasks && r.state == "switching" {
                r.state = "switched".into();
                r.switched_ms = Some(now_us() / 1000);
            }
        });
    }

    pub fn passed(&self, generation: u64) {
        self.with_record(generation, |r| {
            r.passed += 1;
            if r.passed >= r.tasks && r.state == "switched" {
                r.state = "applied".into();
            }
        });
    }

    /// The new version failed: every task goes back to the previous one.
    pub fn failed(&self, generation: u64, error: String) {
        let mut swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = swaps.iter_mut().rev().find(|r| r.id == generation) else { return };
        if record.state == "rolled-back" {
            return;
        }
        tracing::error!(update = generation, "update rolled back: {error}");
        record.state = "rolled-back".into();
        record.error = Some(error);
        if let Some(previous) = self.previous.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if let Some(hook) = self.on_rollback.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                hook(&previous);
            }
            let mut runtime = self.runtime.write().unwrap_or_else(|e| e.into_inner());
            *runtime = previous;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The application's status from its tasks (state and lag derived).
    pub fn app_status(&self, backend: &str, tasks: Vec<crate::status::TaskStatus>) -> crate::status::AppStatus {
        let app = self.current().1;
        let guarantee = match app.topology.guarantee {
            crate::topology::ProcessingGuarantee::ExactlyOnce => "exactly-once",
            crate::topology::ProcessingGuarantee::AtLeastOnce => "at-least-once",
        };
        let mut status = crate::status::AppStatus {
            name: app.topology.name.clone(),
            backend: backend.into(),
            guarantee: guarantee.into(),
            state: String::new(),
            lag: 0,
            tasks,
            components: components_of(&app),
            component_versions: BTreeMap::new(),
            swaps: self.history(),
            global_inputs: Vec::new(),
        };
        status.summarize();
        status
    }

    /// The record of an update.
    pub fn record(&self, id: u64) -> Option<SwapRecord> {
        self.swaps.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|r| r.id == id).cloned()
    }

    /// Every update so far, oldest first.
    pub fn history(&self) -> Vec<SwapRecord> {
        self.swaps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Registers what to do when an update rolls back (e.g. persist the
    /// version the application runs again).
    pub fn on_rollback(&self, hook: RollbackHook) {
        *self.on_rollback.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Records how long the latest update paused processing.
    pub fn set_last_pause(&self, pause: Duration) {
        if let Some(r) = self.swaps.lock().unwrap_or_else(|e| e.into_inner()).last_mut() {
            r.max_pause_ms = pause.as_secs_f64() * 1000.0;
        }
    }

    /// The update a generation belongs to (a rollback generation belongs to none).
    pub fn owns(&self, generation: u64) -> bool {
        self.swaps.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|r| r.id == generation)
    }
}
