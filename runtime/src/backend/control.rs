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

/// Every task runs the update's version: applied if they all passed too.
fn mark_switched(r: &mut SwapRecord) {
    r.state = if r.passed >= r.tasks { "applied" } else { "switched" }.into();
    r.switched_ms = Some(now_us() / 1000);
}

/// How long an update may keep tasks switching before it is rolled back:
/// an update always finishes, rolls back or times out.
pub const SWITCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether an update record is done (nothing will change it any more).
fn is_final(state: &str) -> bool {
    !matches!(state, "switching" | "switched")
}

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
    /// See [`SWITCH_TIMEOUT`].
    switch_timeout: Mutex<Duration>,
    /// A cluster-wide probation (see [`ClusterHold`]).
    cluster_hold: Mutex<Option<ClusterHold>>,
    /// The next update begins held (see [`Control::hold_next_update`]).
    hold_requested: std::sync::atomic::AtomicBool,
}

/// An update the cluster has not confirmed yet. In a weir cluster a hot swap
/// is on probation on every instance at once: until every live instance ran
/// the new version through its local probation, no instance commits work of
/// it (exactly-once: its outputs stay in the tasks, its transaction is not
/// committed). Released, commits go on and the version passes; refused
/// (another instance failed it, or the cluster did not confirm in time), it
/// rolls back like a local probation failure: each task drops its
/// uncommitted work of it and goes back, so nothing of it was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHold {
    pub update: u64,
}

/// See [`EmbeddedApp::on_rollback`].
pub type RollbackHook = Box<dyn Fn(&AppRuntime) + Send>;

fn timeout_message(record: &SwapRecord, timeout: Duration) -> String {
    format!("timed out after {:?} with {} of {} task(s) switched", timeout, record.switched, record.tasks)
}

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
            switch_timeout: Mutex::new(SWITCH_TIMEOUT),
            cluster_hold: Mutex::new(None),
            hold_requested: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Holds the commits of the update the next [`begin`](Self::begin)
    /// starts until the cluster releases or refuses it. `begin` turns this
    /// into the hold under its lock, with the id it assigns, so no task can
    /// commit work of the update in between and no other bump of the
    /// generation can misdirect it. Cleared by [`clear_hold_request`](Self::clear_hold_request)
    /// when the update does not begin.
    pub fn hold_next_update(&self) {
        self.hold_requested.store(true, Ordering::Release);
    }

    pub fn clear_hold_request(&self) {
        self.hold_requested.store(false, Ordering::Release);
    }

    /// The update the cluster holds, if any.
    pub fn cluster_hold(&self) -> Option<ClusterHold> {
        self.cluster_hold.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The cluster confirmed update `update`: its commits go on.
    pub fn release(&self, update: u64) {
        let mut hold = self.cluster_hold.lock().unwrap_or_else(|e| e.into_inner());
        if hold.as_ref().is_some_and(|h| h.update == update) {
            *hold = None;
        }
    }

    /// The cluster refused update `update`: it rolls back here (see
    /// [`failed`](Self::failed)); the workers drop its uncommitted work.
    /// The rollback is recorded before the hold ends, so a worker that sees
    /// no hold any more also sees the update rolled back. False when it was
    /// not held (released already, or another update).
    pub fn refuse(&self, update: u64, error: String) -> bool {
        if self.cluster_hold().is_none_or(|h| h.update != update) {
            return false;
        }
        // Even an update every local task passed already (a task whose code
        // did not change, or none here) goes back: the cluster refused it.
        self.roll_back(update, error, true);
        self.release(update);
        true
    }

    /// Whether update `update` was rolled back (its work must never commit).
    pub fn rolled_back(&self, update: u64) -> bool {
        let swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        swaps.iter().rev().find(|r| r.id == update).is_some_and(|r| r.state == "rolled-back")
    }

    pub fn current(&self) -> (u64, Arc<AppRuntime>) {
        let runtime = self.runtime.read().unwrap_or_else(|e| e.into_inner());
        (self.generation.load(Ordering::Acquire), runtime.clone())
    }

    /// How many tasks this instance runs (an update is switched when all
    /// of them are): fixed on the embedded backend, moving on Kafka. An
    /// update still switching counts the tasks there are now: one begun in
    /// the middle of a rebalance must wait for the tasks still to come
    /// (they start on the new version and count as switched then).
    pub fn set_tasks(&self, tasks: usize) {
        self.tasks.store(tasks, Ordering::Release);
        let mut swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = swaps.last_mut().filter(|r| r.state == "switching") {
            r.tasks = tasks;
            // Fewer tasks now (they moved away): those left may all have switched.
            if tasks > 0 && r.switched >= r.tasks {
                mark_switched(r);
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts a component swap to `new`; refused while another is switching
    /// (unless that one has been switching for longer than
    /// [`SWITCH_TIMEOUT`]: it is rolled back first). An update still on
    /// probation (`switched`) is accepted by the new one, as a task accepts
    /// the version on probation when it swaps again: a late trap of the old
    /// version can then no longer roll back over the new one.
    pub fn begin(&self, new: Arc<AppRuntime>) -> Result<u64, String> {
        let mut swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = swaps.last_mut() {
            match last.state.as_str() {
                "switching" => {
                    let age_ms = (now_us() / 1000).saturating_sub(last.started_ms);
                    if age_ms < self.switch_timeout().as_millis() as i64 {
                        return Err(format!("update {} is still switching tasks; try again when it is done", last.id));
                    }
                    let id = last.id;
                    let error = timeout_message(last, self.switch_timeout());
                    drop(swaps);
                    self.failed(id, error);
                    swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
                }
                "switched" => last.state = "applied".into(),
                _ => {}
            }
        }
        let mut runtime = self.runtime.write().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        // A hold is for the update it names: an older one ends with this
        // one, which is held itself if the cluster's agent asked for that.
        let held = self.hold_requested.swap(false, Ordering::AcqRel);
        *self.cluster_hold.lock().unwrap_or_else(|e| e.into_inner()) =
            held.then_some(ClusterHold { update: generation });
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

    /// How long an update may keep tasks switching.
    pub fn switch_timeout(&self) -> Duration {
        *self.switch_timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_switch_timeout(&self, timeout: Duration) {
        *self.switch_timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
    }

    /// Rolls the update `id` back if it is still switching tasks (it has
    /// taken too long); returns its record.
    pub fn time_out(&self, id: u64) -> Option<SwapRecord> {
        let error = {
            let swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
            let record = swaps.iter().find(|r| r.id == id)?;
            (record.state == "switching").then(|| timeout_message(record, self.switch_timeout()))
        };
        if let Some(error) = error {
            self.failed(id, error);
        }
        self.record(id)
    }

    pub fn with_record(&self, generation: u64, f: impl FnOnce(&mut SwapRecord)) {
        let mut swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = swaps.iter_mut().rev().find(|r| r.id == generation) {
            f(r);
        }
    }

    /// A task runs the version of update `generation` now (or, without an
    /// instance, will start on it). Counted once per task, while switching.
    pub fn switched(&self, generation: u64, pause: Duration) {
        self.with_record(generation, |r| {
            if r.state != "switching" {
                return;
            }
            r.switched += 1;
            r.max_pause_ms = r.max_pause_ms.max(pause.as_secs_f64() * 1000.0);
            if r.switched >= r.tasks {
                mark_switched(r);
            }
        });
    }

    pub fn passed(&self, generation: u64) {
        self.with_record(generation, |r| {
            if is_final(&r.state) {
                return;
            }
            r.passed += 1;
            if r.passed >= r.tasks && r.state == "switched" {
                r.state = "applied".into();
            }
        });
    }

    /// The new version of update `generation` failed: every task goes back
    /// to the previous one. Only the latest update, while it is not final,
    /// can roll back: a failure reported for an older update (a task still
    /// on probation of a version a newer update replaced) changes nothing
    /// here, and false tells the task to switch to the current version.
    pub fn failed(&self, generation: u64, error: String) -> bool {
        self.roll_back(generation, error, false)
    }

    /// [`failed`](Self::failed); `even_if_applied`: also an update that
    /// went `applied` (not one rolled back already).
    fn roll_back(&self, generation: u64, error: String, even_if_applied: bool) -> bool {
        let mut swaps = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = swaps
            .last_mut()
            .filter(|r| r.id == generation && (!is_final(&r.state) || (even_if_applied && r.state == "applied")))
        else {
            return false;
        };
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
        true
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

    /// True while update `generation` has tasks still to switch.
    pub fn is_switching(&self, generation: u64) -> bool {
        self.swaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r.id == generation && r.state == "switching")
    }

    /// The update a generation belongs to (a rollback generation belongs to none).
    pub fn owns(&self, generation: u64) -> bool {
        self.swaps.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|r| r.id == generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Topology, parse_spec};
    use crate::wasm::{EngineConfig, WasmEngine};

    /// A runtime without processors: enough for the control plane, which
    /// only swaps `Arc`s; `tag` tells versions apart by their name.
    fn version(tag: &str) -> Arc<AppRuntime> {
        let spec = format!(
            "name: {tag}\ntopics: {{ a: 2, b: 2 }}\nsources: {{ a: {{ topic: a, to: [p] }} }}\n\
             processors: {{ p: {{ component: c.wasm, outputs: {{ out: b }} }} }}\nsinks: {{ b: {{ topic: b }} }}\n"
        );
        let topology = Topology::compile(parse_spec(&spec).expect("parses")).expect("valid");
        static ENGINE: std::sync::OnceLock<Arc<WasmEngine>> = std::sync::OnceLock::new();
        let engine = ENGINE.get_or_init(|| Arc::new(WasmEngine::new(EngineConfig::default()).expect("engine"))).clone();
        Arc::new(AppRuntime { topology: Arc::new(topology), engine, components: BTreeMap::new() })
    }

    fn running(control: &Control) -> String {
        control.current().1.topology.name.clone()
    }

    #[test]
    fn a_late_failure_of_a_superseded_update_does_not_roll_back_over_the_new_one() {
        let control = Control::new(version("v0"), Vec::new(), 2);
        let a = control.begin(version("va")).unwrap();
        control.switched(a, Duration::ZERO);
        control.switched(a, Duration::ZERO);
        assert_eq!(control.record(a).unwrap().state, "switched", "on probation");
        let b = control.begin(version("vb")).expect("an update on probation does not block the next one");
        assert_eq!(control.record(a).unwrap().state, "applied", "accepted by the next update");
        // A task still on probation of `a` traps before it switches to `b`.
        assert!(!control.failed(a, "late trap".into()), "a superseded update cannot roll back");
        assert_eq!(running(&control), "vb");
        assert_eq!(control.record(b).unwrap().state, "switching");
        control.switched(b, Duration::ZERO);
        control.switched(b, Duration::ZERO);
        assert_eq!(control.record(b).unwrap().state, "switched", "the update finishes");
        assert!(control.failed(b, "trap".into()));
        assert_eq!(running(&control), "va", "back to the version before `b`");
        assert!(control.begin(version("vc")).is_ok(), "nothing is left blocking updates");
    }

    #[test]
    fn an_update_that_never_finishes_switching_times_out_and_rolls_back() {
        let control = Control::new(version("v0"), Vec::new(), 3);
        control.set_switch_timeout(Duration::from_millis(50));
        let a = control.begin(version("va")).unwrap();
        control.switched(a, Duration::ZERO);
        assert!(control.begin(version("vb")).is_err(), "refused while switching");
        // Too old: the next update rolls it back first instead of waiting forever.
        std::thread::sleep(Duration::from_millis(60));
        let b = control.begin(version("vb")).expect("a stuck update does not block forever");
        let record = control.record(a).unwrap();
        assert_eq!(record.state, "rolled-back");
        assert!(record.error.unwrap().contains("1 of 3"));
        assert_eq!(running(&control), "vb");
        // A deploy whose wait ran out rolls its update back at once.
        let record = control.time_out(b).unwrap();
        assert_eq!(record.state, "rolled-back");
        assert!(record.error.unwrap().contains("timed out"));
        assert_eq!(running(&control), "v0", "back to the version that ran before");
        assert!(control.begin(version("vc")).is_ok(), "nothing is left blocking updates");
    }

    #[test]
    fn tasks_that_pass_before_the_last_one_switched_still_apply_the_update() {
        let control = Control::new(version("v0"), Vec::new(), 2);
        let a = control.begin(version("va")).unwrap();
        control.switched(a, Duration::ZERO);
        control.passed(a);
        control.passed(a);
        control.switched(a, Duration::ZERO);
        assert_eq!(control.record(a).unwrap().state, "applied");
        // Counted only while switching: a late report changes nothing.
        control.switched(a, Duration::ZERO);
        assert_eq!(control.record(a).unwrap().switched, 2);
    }
}
