//! One weir cluster on Kafka: instances started with the same `cluster`
//! prefix share one catalog ([`catalog`]), and an upload, a deploy, an
//! update or a delete sent to any of them is one act for all of them.
//!
//! The instance that receives a deploy validates it as it would alone,
//! puts its components into the catalog, and proposes the next generation
//! of the application. Every instance, itself included, runs an agent
//! ([`Cluster::start`]) that follows the catalog and applies each new
//! generation locally — a create, a hot swap or a restart, with the local
//! probation of a swap — and reports what it runs in its instance record.
//! The deploy answers once every live instance reports the generation:
//! `200`/`201`; when one reports that it failed, the previous generation's
//! spec is proposed again (every instance goes back to it) and the answer
//! is `422 update-rolled-back` naming the instance and its error; when the
//! instances have not all answered in [`DEPLOY_WAIT`], `202` with what each
//! reported. A deploy based on a generation that is no longer current
//! (`If-Match`), or one that lost a race for the next generation, is `409`.
//!
//! An instance that was down applies on start what it missed (its agent
//! reads the catalog from the beginning); one with an empty data dir runs
//! every application, its tasks restoring state from the changelogs.

pub mod catalog;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::node::{DeployError, Deployment, Node};
use crate::topology::Spec;
use catalog::{
    AppRecord, Applied, Catalog, CatalogError, FORMAT, HEARTBEAT, InstanceRecord, SWAPS_KEPT, SwapBrief, TaskBrief,
};

/// How long a deploy waits for every live instance to apply it.
pub const DEPLOY_WAIT: Duration = Duration::from_secs(60);
/// How often an agent reads the catalog.
const AGENT_TICK: Duration = Duration::from_millis(200);
/// How long an instance waits before it tries again a generation it failed
/// to apply that is still the latest (a deploy that failed here while the
/// deploy was waiting is rolled back by then; one that failed after the
/// deploy answered, e.g. a swap timed out in a rebalance, is retried).
const RETRY_FAILED: Duration = Duration::from_secs(10);
/// How long an instance holds a hot swap's commits for the cluster (see
/// [`crate::backend::control::ClusterHold`]) before it refuses the swap: longer
/// than an instance that stopped answering takes to count as dead, so a
/// frozen instance is left behind instead of failing the swap everywhere.
const HOLD_TIMEOUT: Duration = Duration::from_secs(20);

/// A hot swap applied here whose commits wait for the cluster.
#[derive(Debug, Clone)]
struct Held {
    generation: u64,
    /// The local update's id (its control plane's generation).
    update: u64,
    since: Instant,
}

/// This instance's membership of a cluster.
pub struct Cluster {
    pub catalog: Arc<Catalog>,
    instance_id: String,
    url: String,
    /// Per application: what this instance applied last.
    applied: Mutex<BTreeMap<String, Applied>>,
    /// Per application: when applying its latest generation failed here.
    failed_at: Mutex<BTreeMap<String, Instant>>,
    /// Per application: the hot swap here whose commits wait for the cluster.
    held: Mutex<BTreeMap<String, Held>>,
    stop: AtomicBool,
    /// The agent (applies generations) and the heartbeat (writes this
    /// instance's record: a long swap must not make it look dead).
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn now_ms() -> i64 {
    crate::backend::embedded::now_us() / 1000
}

/// Why a component could not be fetched from the catalog.
enum FetchError {
    /// Its manifest has not been read yet.
    NotYet,
    Failed(String),
}

/// How a deploy's generation went across the cluster.
enum Outcome {
    Applied(Value),
    Failed { instance: String, error: String },
    Pending(Value),
}

impl Cluster {
    /// Opens the catalog (creating its topics) and starts this instance's
    /// agent. Fails with a clear error when the catalog is not usable.
    pub fn start(node: &Arc<Node>, brokers: &str, prefix: &str) -> Result<Arc<Cluster>, CatalogError> {
        let catalog = Arc::new(Catalog::open(brokers, prefix)?);
        let cluster = Arc::new(Cluster {
            catalog,
            instance_id: node.instance_id().to_owned(),
            url: node.advertised_url().unwrap_or_default(),
            applied: Mutex::new(BTreeMap::new()),
            failed_at: Mutex::new(BTreeMap::new()),
            held: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        // What the catalog holds is applied before the instance says it is
        // up, so a deploy sent to it right away finds it current.
        cluster.step(node);
        cluster.announce(node, false);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| CatalogError::Kafka(format!("cannot start the cluster's {name} thread: {e}")))
        };
        let (agent, weak) = (cluster.clone(), Arc::downgrade(node));
        let applying = spawn("weir-cluster", Box::new(move || agent.run(weak)))?;
        let (beat, weak) = (cluster.clone(), Arc::downgrade(node));
        let heartbeat = spawn("weir-heartbeat", Box::new(move || beat.heartbeat(weak)))?;
        cluster.threads.lock().unwrap_or_else(|e| e.into_inner()).extend([applying, heartbeat]);
        tracing::info!(cluster = prefix, instance = %cluster.instance_id, "joined the cluster");
        Ok(cluster)
    }

    /// Stops the agent and says so in the catalog (other instances stop
    /// waiting for this one at once).
    pub fn leave(&self, node: &Node) {
        self.stop.store(true, Ordering::Release);
        for h in std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = h.join();
        }
        self.announce(node, true);
    }

    fn run(&self, node: Weak<Node>) {
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(AGENT_TICK);
            let Some(node) = node.upgrade() else { return };
            if self.step(&node) {
                self.announce(&node, false);
            }
        }
    }

    fn heartbeat(&self, node: Weak<Node>) {
        let mut last = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() < HEARTBEAT {
                continue;
            }
            let Some(node) = node.upgrade() else { return };
            self.announce(&node, false);
            last = Instant::now();
        }
    }

    /// Reads the catalog and applies every generation not applied here
    /// yet; true when something changed.
    fn step(&self, node: &Node) -> bool {
        if let Err(e) = self.catalog.refresh() {
            tracing::warn!(error = %e, "cannot read the cluster catalog; retrying");
            return false;
        }
        // Held swaps first: one a newer generation replaces is refused before
        // that generation applies (its work must never commit).
        let mut changed = self.tend_holds(node);
        let latest: Vec<AppRecord> = self.catalog.read(|s| s.apps.values().filter_map(|h| h.last().cloned()).collect());
        for record in latest {
            let previous = self.applied.lock().unwrap_or_else(|e| e.into_inner()).get(&record.app).cloned();
            let previous_state = previous.clone();
            let retry = previous.as_ref().is_some_and(|a| a.state == "failed")
                && self
                    .failed_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&record.app)
                    .is_some_and(|at| at.elapsed() >= RETRY_FAILED);
            let mut previous = previous;
            if let Some(p) = previous.as_mut().filter(|p| p.generation == record.generation && p.state == "running")
                && let Some(spec) = &record.spec
                && node.running_spec(&record.app).and_then(|s| serde_json::to_value(s).ok()).as_ref() != Some(spec)
            {
                // Rolled back here after the deploy answered (a trap once its
                // probation wait was over): say so, and try again later.
                p.state = "failed".into();
                p.error = Some("the new version failed here after it was applied and was rolled back locally".into());
                self.applied.lock().unwrap_or_else(|e| e.into_inner()).insert(record.app.clone(), p.clone());
                self.failed_at.lock().unwrap_or_else(|e| e.into_inner()).insert(record.app.clone(), Instant::now());
                changed = true;
                continue;
            }
            if previous.is_some_and(|a| a.generation == record.generation) && !retry {
                continue;
            }
            // Others wait for this instance while it applies.
            self.applied.lock().unwrap_or_else(|e| e.into_inner()).insert(
                record.app.clone(),
                Applied { generation: record.generation, state: "applying".into(), ..Applied::default() },
            );
            self.announce(node, false);
            if let Some(applied) = self.apply(node, &record) {
                tracing::info!(app = %record.app, generation = record.generation, state = %applied.state, error = applied.error.as_deref().unwrap_or(""), "applied a cluster generation");
                let mut failed_at = self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
                if applied.state == "failed" {
                    failed_at.insert(record.app.clone(), Instant::now());
                } else {
                    failed_at.remove(&record.app);
                }
                self.applied.lock().unwrap_or_else(|e| e.into_inner()).insert(record.app.clone(), applied);
                changed = true;
            } else if let Some(p) = previous_state {
                // Not applied yet (busy, or its component not read yet): as before.
                self.applied.lock().unwrap_or_else(|e| e.into_inner()).insert(record.app.clone(), p);
            } else {
                self.applied.lock().unwrap_or_else(|e| e.into_inner()).remove(&record.app);
            }
        }
        changed
    }

    /// Applies one generation here; `None` to try again later (the
    /// application is busy with another operation).
    fn apply(&self, node: &Node, record: &AppRecord) -> Option<Applied> {
        let applied = |state: &str, error: Option<String>| Applied {
            generation: record.generation,
            state: state.into(),
            error,
            ..Applied::default()
        };
        let Some(value) = &record.spec else {
            return match node.undeploy_local(&record.app) {
                Ok(_) => Some(applied("deleted", None)),
                Err(DeployError::Busy(_)) => None,
                Err(e) => Some(applied("failed", Some(e.to_string()))),
            };
        };
        let spec: Spec = match serde_json::from_value(value.clone()) {
            Ok(s) => s,
            Err(e) => return Some(applied("failed", Some(format!("the catalog's spec is unreadable: {e}")))),
        };
        for p in spec.processors.values() {
            let Some(hex) = p.component.strip_prefix("sha256:") else { continue };
            match self.fetch_component(node, hex) {
                Ok(()) => {}
                // Not read yet (written just before the generation): next tick.
                Err(FetchError::NotYet) => return None,
                Err(FetchError::Failed(e)) => return Some(applied("failed", Some(e))),
            }
        }
        if node.running_spec(&record.app).as_ref() == Some(&spec) {
            return Some(applied("running", None));
        }
        let result = node.apply_for_cluster(spec);
        // A hot swap's commits wait until every live instance runs it; a
        // hold this instance does not follow up (the apply failed after the
        // swap began, say) is refused at once, or it would hold forever.
        let control = node.control(&record.app);
        let hold = control.as_ref().and_then(|c| c.cluster_hold());
        let swap = result.as_ref().ok().and_then(|d| d.update.as_ref()).filter(|u| u.kind == "component-swap");
        match (hold, swap, &control) {
            (Some(h), Some(u), Some(_)) if h.update == u.id && u.state != "rolled-back" => {
                let held = Held { generation: record.generation, update: u.id, since: Instant::now() };
                self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(record.app.clone(), held);
            }
            (Some(h), _, Some(control)) => {
                control.refuse(h.update, format!("applying generation {} did not finish here", record.generation));
            }
            _ => {}
        }
        match result {
            Ok(_) => Some(applied("running", None)),
            Err(DeployError::Busy(_) | DeployError::Gone(_)) => None,
            Err(e) => Some(applied("failed", Some(e.to_string()))),
        }
    }

    /// Releases each held swap once every live instance runs its generation;
    /// refuses it (it rolls back here, nothing of it committed) when an
    /// instance failed it, a newer generation replaced it, or the cluster
    /// did not confirm it within [`HOLD_TIMEOUT`]. True when a refusal
    /// changed what this instance reports.
    fn tend_holds(&self, node: &Node) -> bool {
        let held: Vec<(String, Held)> =
            self.held.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(a, h)| (a.clone(), h.clone())).collect();
        let mut changed = false;
        for (app, h) in held {
            let forget = || self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(&app);
            let Some(control) = node.control(&app).filter(|c| c.cluster_hold().is_some_and(|c| c.update == h.update))
            else {
                forget(); // Rolled back here, or replaced: nothing held any more.
                continue;
            };
            let now = now_ms();
            let verdict: Result<bool, String> = self.catalog.read(|s| {
                let latest = s.app(&app).map(|r| r.generation);
                if latest != Some(h.generation) {
                    return Err(format!(
                        "generation {} was replaced by generation {} before every instance ran it",
                        h.generation,
                        latest.unwrap_or(0)
                    ));
                }
                let mut waiting = Vec::new();
                for i in s.instances.values().filter(|i| i.alive(now) || i.id == self.instance_id) {
                    match i.apps.get(&app) {
                        Some(a) if a.generation == h.generation && a.state == "failed" => {
                            return Err(format!(
                                "instance {} failed generation {}: {}",
                                i.id,
                                h.generation,
                                a.error.as_deref().unwrap_or("?")
                            ));
                        }
                        Some(a) if a.generation == h.generation && a.state == "running" => {}
                        _ => waiting.push(i.id.clone()),
                    }
                }
                if waiting.is_empty() {
                    return Ok(true);
                }
                if h.since.elapsed() >= HOLD_TIMEOUT {
                    return Err(format!(
                        "not every instance ran generation {} within {HOLD_TIMEOUT:?} (waiting for {})",
                        h.generation,
                        waiting.join(", ")
                    ));
                }
                Ok(false)
            });
            match verdict {
                Ok(true) => {
                    tracing::info!(
                        app,
                        generation = h.generation,
                        "every live instance runs the generation: its commits go on"
                    );
                    control.release(h.update);
                    forget();
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(app, generation = h.generation, "swap refused for the cluster: {error}");
                    let error = format!("rolled back here with nothing committed: {error}");
                    if control.refuse(h.update, error.clone()) {
                        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(a) = applied.get_mut(&app).filter(|a| a.generation == h.generation) {
                            a.state = "failed".into();
                            a.error = Some(error);
                            self.failed_at
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(app.clone(), Instant::now());
                            changed = true;
                        }
                    }
                    forget();
                }
            }
        }
        changed
    }

    /// Makes sure component `hex` is in the local registry, from the catalog.
    fn fetch_component(&self, node: &Node, hex: &str) -> Result<(), FetchError> {
        if node.registry.has(hex) {
            return Ok(());
        }
        let bytes = self.catalog.read(|s| s.component(hex)).map_err(|e| match e {
            CatalogError::UnknownComponent { .. } => FetchError::NotYet,
            e => FetchError::Failed(e.to_string()),
        })?;
        node.registry.add(&bytes).map_err(|e| FetchError::Failed(format!("component sha256:{hex}: {e}")))?;
        Ok(())
    }

    /// Copies a component pushed by name to another instance into the
    /// local registry under the same name and version (quietly: if it is
    /// not in the catalog, resolving the spec says so).
    /// Copies into the local registry every version pushed to the cluster
    /// under `name` that this instance does not have yet, so a push here
    /// numbers on from the cluster's latest version, not this instance's.
    /// (Two pushes of one name to two instances at the same moment can
    /// still pick the same number; the catalog keeps the later one.)
    pub fn learn_versions(&self, node: &Node, name: &str) -> Result<(), String> {
        self.catalog.refresh().map_err(|e| e.to_string())?;
        let known: Vec<String> = node.registry.versions(name).into_iter().map(|v| v.version).collect();
        let missing: Vec<(String, Result<Vec<u8>, CatalogError>)> = self.catalog.read(|s| {
            s.manifests
                .values()
                .filter(|m| m.name.as_deref() == Some(name))
                .filter_map(|m| m.version.clone().map(|v| (v, m.sha256.clone())))
                .filter(|(v, _)| !known.contains(v))
                .map(|(v, sha)| (v, s.component(&sha)))
                .collect()
        });
        for (version, bytes) in missing {
            let bytes = bytes.map_err(|e| format!("component {name}@{version} in the catalog: {e}"))?;
            if let Err(e) = node.registry.add_named(&bytes, name, Some(&version)) {
                tracing::warn!(component = name, version, error = %e, "cannot copy a version from the cluster catalog");
            }
        }
        Ok(())
    }

    fn fetch_named(&self, node: &Node, reference: &str) {
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (reference, None),
        };
        let found = self.catalog.read(|s| {
            let m = s.named(name, version)?;
            Some((s.component(&m.sha256), m.version.clone()))
        });
        if let Some((Ok(bytes), version)) = found
            && let Err(e) = node.registry.add_named(&bytes, name, version.as_deref())
        {
            tracing::warn!(component = reference, error = %e, "cannot copy a component from the cluster catalog");
        }
    }

    fn announce(&self, node: &Node, stopped: bool) {
        let mut apps = self.applied.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, applied) in apps.iter_mut() {
            let Some(status) = node.status(name) else { continue };
            applied.tasks = status
                .tasks
                .iter()
                .map(|t| TaskBrief {
                    id: t.id.clone(),
                    partition: t.partition,
                    state: serde_json::to_value(t.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    lag: t.inputs.iter().map(|i| i.lag).sum(),
                    restore: t.restore.filter(|(done, total)| done < total),
                    records_in: t.records_in,
                    records_out: t.emitted.values().sum(),
                })
                .collect();
            applied.components = status.components.clone();
            let from = status.swaps.len().saturating_sub(SWAPS_KEPT);
            applied.swaps = status.swaps[from..]
                .iter()
                .map(|u| SwapBrief {
                    id: u.id,
                    kind: u.kind.clone(),
                    state: u.state.clone(),
                    max_pause_ms: u.max_pause_ms,
                    error: u.error.clone(),
                })
                .collect();
        }
        let url = node.advertised_url().unwrap_or_else(|| self.url.clone());
        let record =
            InstanceRecord { format: FORMAT, id: self.instance_id.clone(), url, at_ms: now_ms(), stopped, apps };
        if let Err(e) = self.catalog.announce(&record) {
            tracing::warn!(error = %e, "cannot write this instance's record to the cluster catalog");
        }
    }

    /// A deploy (create or update) for the whole cluster: see the module docs.
    pub fn deploy(&self, node: &Node, mut spec: Spec, expected: Option<u64>) -> Result<Deployment, DeployError> {
        let name = spec.name.clone();
        let unavailable = |e: CatalogError| DeployError::Cluster(e.to_string());
        self.catalog.refresh().map_err(unavailable)?;
        for (processor, p) in &spec.processors {
            // A component pushed to another instance: fetched here first. A
            // corrupt or incomplete one is refused, naming it; one the catalog
            // does not have is left to resolving (which says it is unknown).
            if let Some(hex) = p.component.strip_prefix("sha256:") {
                if let Err(FetchError::Failed(error)) = self.fetch_component(node, hex) {
                    return Err(DeployError::Start { app: name, error: format!("processor `{processor}`: {error}") });
                }
            } else if node.registry.resolve(&p.component).is_err() {
                self.fetch_named(node, &p.component);
            }
        }
        let runtime = node.prepare_runtime(spec.clone())?;
        for (id, component) in &runtime.components {
            let processor = &runtime.topology.nodes[*id].name;
            let bytes = node.registry.bytes(component.sha256()).map_err(|e| DeployError::Internal(e.to_string()))?;
            self.catalog.put_component(&bytes, None, None).map_err(unavailable)?;
            if let Some(p) = spec.processors.get_mut(processor) {
                p.component = format!("sha256:{}", component.sha256());
            }
        }
        let value = serde_json::to_value(&spec).expect("specs serialise");
        let current = self.catalog.read(|s| s.app(&name).cloned());
        let created = current.as_ref().is_none_or(|r| r.spec.is_none());
        let generation = match &current {
            // The same spec again: nothing to propose; it answers like a deploy.
            Some(r) if r.spec.as_ref() == Some(&value) && expected.is_none_or(|e| e == r.generation) => r.generation,
            _ => self.catalog.propose(&name, expected, Some(value), &self.instance_id, None).map_err(conflict)?,
        };
        match self.wait_applied(&name, generation) {
            Outcome::Applied(view) => Ok(Deployment {
                action: if created { "created" } else { "updated" },
                status: node.status_or_pending(&name),
                update: None,
                cluster: Some(view),
            }),
            Outcome::Pending(view) => Ok(Deployment {
                action: "pending",
                status: node.status_or_pending(&name),
                update: None,
                cluster: Some(view),
            }),
            Outcome::Failed { instance, error } => {
                // Every instance goes back to the previous generation's spec
                // (or, for a create, the application is removed again).
                let previous = self.catalog.read(|s| rollback_target(s.apps.get(&name)?, generation));
                let back = self
                    .catalog
                    .propose(&name, Some(generation), previous.clone(), &self.instance_id, Some(generation))
                    .map_err(conflict)?;
                let settled = matches!(self.wait_applied(&name, back), Outcome::Applied(_));
                let error = format!(
                    "instance {instance}: {error}; {} (generation {back}{})",
                    if previous.is_some() {
                        "every instance went back to the previous version"
                    } else {
                        "the application was removed again"
                    },
                    if settled { "" } else { ", not yet applied everywhere" }
                );
                if previous.is_some() || !created {
                    Err(DeployError::UpdateFailed { app: name, error })
                } else {
                    Err(DeployError::Start { app: name, error })
                }
            }
        }
    }

    /// A delete for the whole cluster; false when the cluster does not run
    /// the application.
    pub fn undeploy(&self, name: &str) -> Result<bool, DeployError> {
        self.catalog.refresh().map_err(|e| DeployError::Cluster(e.to_string()))?;
        let Some(current) = self.catalog.read(|s| s.app(name).cloned()).filter(|r| r.spec.is_some()) else {
            return Ok(false);
        };
        let generation =
            self.catalog.propose(name, Some(current.generation), None, &self.instance_id, None).map_err(conflict)?;
        if let Outcome::Failed { instance, error } = self.wait_applied(name, generation) {
            return Err(DeployError::Internal(format!("instance {instance} could not stop `{name}`: {error}")));
        }
        Ok(true)
    }

    /// Waits until every live instance reports `generation` of `app` (or
    /// one reports it failed), up to [`DEPLOY_WAIT`].
    fn wait_applied(&self, app: &str, generation: u64) -> Outcome {
        let deadline = Instant::now() + DEPLOY_WAIT;
        loop {
            if let Err(e) = self.catalog.refresh() {
                tracing::warn!(error = %e, "cannot read the cluster catalog while a deploy waits");
            }
            let now = now_ms();
            let (failed, waiting) = self.catalog.read(|s| {
                let alive: Vec<&InstanceRecord> = s.instances.values().filter(|i| i.alive(now)).collect();
                let failed = alive.iter().find_map(|i| {
                    i.apps
                        .get(app)
                        .filter(|a| a.generation == generation && a.state == "failed")
                        .map(|a| (i.id.clone(), a.error.clone().unwrap_or_default()))
                });
                // Done: at this generation and not still applying it, or past it.
                let done =
                    |a: &Applied| a.generation > generation || (a.generation == generation && a.state != "applying");
                let waiting = alive.iter().any(|i| i.apps.get(app).is_none_or(|a| !done(a)))
                    || !alive.iter().any(|i| i.id == self.instance_id);
                (failed, waiting)
            });
            if let Some((instance, error)) = failed {
                return Outcome::Failed { instance, error };
            }
            if !waiting {
                return Outcome::Applied(self.view(app).unwrap_or(Value::Null));
            }
            if Instant::now() >= deadline {
                return Outcome::Pending(self.view(app).unwrap_or(Value::Null));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The application's state across the cluster: its generation and, per
    /// instance, what it applied and the tasks it runs.
    pub fn view(&self, app: &str) -> Option<Value> {
        let now = now_ms();
        self.catalog.read(|s| {
            let history = s.apps.get(app)?;
            let current = history.last()?;
            let instances: Vec<Value> = s
                .instances
                .values()
                .map(|i| {
                    let applied = i.apps.get(app);
                    json!({
                        "id": i.id,
                        "url": i.url,
                        "alive": i.alive(now),
                        "at_ms": i.at_ms,
                        "generation": applied.map(|a| a.generation),
                        "state": applied.map(|a| a.state.clone()),
                        "error": applied.and_then(|a| a.error.clone()),
                        "tasks": applied.map(|a| a.tasks.clone()).unwrap_or_default(),
                        "components": applied.map(|a| a.components.clone()).unwrap_or_default(),
                        "swaps": applied.map(|a| a.swaps.clone()).unwrap_or_default(),
                    })
                })
                .collect();
            let generations: Vec<Value> = history
                .iter()
                .map(|r| json!({ "generation": r.generation, "by": r.by, "at_ms": r.at_ms, "deleted": r.spec.is_none(), "rollback_of": r.rollback_of }))
                .collect();
            Some(json!({
                "cluster": self.catalog.prefix,
                "instance": self.instance_id,
                "generation": current.generation,
                "deleted": current.spec.is_none(),
                "instances": instances,
                "generations": generations,
            }))
        })
    }

    /// Every instance and application of the cluster (`GET /v1/cluster`).
    pub fn overview(&self) -> Value {
        if let Err(e) = self.catalog.refresh() {
            tracing::warn!(error = %e, "cannot read the cluster catalog");
        }
        let now = now_ms();
        self.catalog.read(|s| {
            let instances: Vec<Value> = s
                .instances
                .values()
                .map(|i| json!({ "id": i.id, "url": i.url, "alive": i.alive(now), "at_ms": i.at_ms, "apps": i.apps }))
                .collect();
            let apps: Vec<Value> = s
                .apps
                .iter()
                .filter_map(|(name, h)| h.last().map(|r| (name, r)))
                .map(|(name, r)| json!({ "name": name, "generation": r.generation, "deleted": r.spec.is_none(), "by": r.by }))
                .collect();
            json!({ "cluster": self.catalog.prefix, "instance": self.instance_id, "instances": instances, "apps": apps })
        })
    }
}

/// The spec to go back to when `failed` failed: the latest earlier
/// generation that was not itself rolled back and differs from it (`None`:
/// there is none, the application goes away).
fn rollback_target(history: &[AppRecord], failed: u64) -> Option<Value> {
    let failed_spec = history.iter().find(|r| r.generation == failed).and_then(|r| r.spec.clone());
    let rolled_back: Vec<u64> = history.iter().filter_map(|r| r.rollback_of).collect();
    history
        .iter()
        .rev()
        .filter(|r| r.generation < failed && !rolled_back.contains(&r.generation))
        .find(|r| r.spec.is_none() || r.spec != failed_spec)
        .and_then(|r| r.spec.clone())
}

fn conflict(e: CatalogError) -> DeployError {
    match e {
        e @ (CatalogError::StaleGeneration { .. } | CatalogError::LostRace { .. }) => {
            DeployError::Conflict(e.to_string())
        }
        e => DeployError::Cluster(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u64, spec: Option<&str>, rollback_of: Option<u64>) -> AppRecord {
        AppRecord {
            format: FORMAT,
            app: "a".into(),
            generation,
            spec: spec.map(|s| json!({ "v": s })),
            by: "i".into(),
            at_ms: 0,
            rollback_of,
        }
    }

    #[test]
    fn a_failed_generation_goes_back_to_the_latest_one_not_itself_rolled_back() {
        // 1 = v1, 2 = v2, 3 = bad (failed), 4 = back to v2 (rollback of 3).
        let history = vec![
            record(1, Some("v1"), None),
            record(2, Some("v2"), None),
            record(3, Some("bad"), None),
            record(4, Some("v2"), Some(3)),
        ];
        assert_eq!(rollback_target(&history[..3], 3), Some(json!({ "v": "v2" })));
        // Generation 4 failing somewhere goes to v1, never to the bad 3.
        assert_eq!(rollback_target(&history, 4), Some(json!({ "v": "v1" })));
        // A create that failed has nothing to go back to.
        assert_eq!(rollback_target(&history[..1], 1), None);
        // Back past a delete: the application goes away again.
        let deleted = vec![record(1, Some("v1"), None), record(2, None, None), record(3, Some("v3"), None)];
        assert_eq!(rollback_target(&deleted, 3), None);
    }
}
