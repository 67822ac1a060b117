//! A `weir serve` process: the backend, the wasm engine, the component
//! registry and the deployed applications. The HTTP API ([`crate::api`]) is
//! a thin layer over this.
//!
//! Deployed applications are saved in the data directory; a restarted
//! `weir serve` on the same directory resumes every one of them by itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::embedded::runner::{EmbeddedApp, RunnerConfig, StartError};
use crate::backend::embedded::{BackendError, EmbeddedBackend};
use crate::backend::kafka::KafkaSettings;
use crate::backend::kafka::runner::{KafkaApp, KafkaStartError};
use crate::config::Config;
use crate::registry::{ComponentRegistry, RegistryError};
use crate::state::rocks::DataDirError;
use crate::status::{AppStatus, SwapRecord};
use crate::task::AppRuntime;
use crate::topology::{NodeKind, Spec, SpecError, Topology};
use crate::wasm::{EngineConfig, WasmEngine};

/// Why a deploy was refused. Everything but `Internal` is the caller's to fix.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("invalid spec:\n{0}")]
    Spec(#[from] SpecError),
    #[error("processor `{processor}`: {error}")]
    Component { processor: String, error: RegistryError },
    #[error("application `{0}` is being deployed, updated or deleted; try again when that is done")]
    Busy(String),
    #[error("application `{0}` was deleted during the update")]
    Gone(String),
    #[error("update of `{app}` rolled back: {error}")]
    UpdateFailed { app: String, error: String },
    #[error("cannot update `{app}`: {error}")]
    Incompatible { app: String, error: String },
    #[error("cannot deploy `{app}`: {error}")]
    Topics { app: String, error: String },
    #[error("cannot start `{app}`: {error}")]
    Start { app: String, error: String },
    #[error("cannot deploy `{app}`: {error}")]
    OverLimit { app: String, error: String },
    /// A cluster deploy based on a generation that is no longer current,
    /// or one that lost the race for the next generation.
    #[error("{0}")]
    Conflict(String),
    /// The cluster's catalog cannot be read or written.
    #[error("{0}")]
    Cluster(String),
    #[error("storage failure: {0}")]
    Internal(String),
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{0}")]
    Other(String),
}

struct Deployed {
    app: RunningApp,
}

/// An application running on one of the backends.
enum RunningApp {
    Embedded(EmbeddedApp),
    Kafka(KafkaApp),
}

/// Calls the same method on whichever backend runs the application.
macro_rules! on_backend {
    ($self:expr, $app:ident => $call:expr) => {
        match $self {
            RunningApp::Embedded($app) => $call,
            RunningApp::Kafka($app) => $call,
        }
    };
}

impl RunningApp {
    fn control(&self) -> &Arc<crate::backend::control::Control> {
        on_backend!(self, a => a.control())
    }
    fn runtime(&self) -> Arc<AppRuntime> {
        self.control().current().1
    }
    fn update(&self, new: Arc<AppRuntime>) -> Result<u64, String> {
        on_backend!(self, a => a.update(new))
    }
    fn on_rollback(&self, hook: crate::backend::control::RollbackHook) {
        self.control().on_rollback(hook)
    }
    fn set_last_pause(&self, pause: Duration) {
        self.control().set_last_pause(pause)
    }
    fn metrics(&self) -> Arc<crate::metrics::AppMetrics> {
        self.control().metrics.clone()
    }
    fn history(&self) -> Vec<SwapRecord> {
        self.control().history()
    }
    fn status(&self) -> AppStatus {
        on_backend!(self, a => a.status())
    }
    fn stop(self) {
        on_backend!(self, a => a.stop())
    }
}

/// What a deploy did.
#[derive(Debug, serde::Serialize)]
pub struct Deployment {
    /// `created`, or `updated` (hot swap or restart).
    pub action: &'static str,
    pub status: AppStatus,
    /// For updates: the update's record.
    pub update: Option<SwapRecord>,
    /// In a cluster: the generation and what every instance applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<serde_json::Value>,
}

/// Whether a hot swap's commits wait for the cluster to confirm it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    No,
    ForTheCluster,
}

/// How long a deploy waits for a trap on probation once every task switched
/// (how long it waits for the switch: [`crate::backend::control::SWITCH_TIMEOUT`]).
const PROBATION_WAIT: Duration = Duration::from_secs(2);

/// The one operation (create, update or delete) running on an application:
/// taken before anything is checked, released when dropped, also when the
/// operation panics, so an application is never left busy.
struct Claim<'a> {
    node: &'a Node,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.node.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.name);
    }
}

/// The spec with everything a hot swap may change blanked out: two specs
/// with the same shape have the same graph, stores and topics.
fn shape(spec: &Spec) -> Spec {
    let mut s = spec.clone();
    for p in s.processors.values_mut() {
        p.component = String::new();
        p.config.clear();
        p.limits = Default::default();
        p.on_error = Default::default();
        p.max_batch = None;
    }
    s
}

/// A data dir's applications belong to one backend: their state and
/// positions mean nothing on the other (Kafka state is a cache of changelog
/// topics; embedded state is the only copy). Switching with applications
/// deployed is refused.
fn check_backend_kind(backend: &EmbeddedBackend, config: &Config) -> Result<(), String> {
    let kind = if config.brokers.is_empty() { "embedded" } else { "kafka" };
    let db = backend.db();
    let recorded = db.get_meta("backend").map_err(|e| e.to_string())?.map(|b| String::from_utf8_lossy(&b).into_owned());
    if let Some(recorded) = recorded.filter(|r| r != kind) {
        let apps = backend.applications().map_err(|e| e.to_string())?;
        if !apps.is_empty() {
            let names: Vec<&str> = apps.iter().map(|(n, _)| n.as_str()).collect();
            let how = if recorded == "kafka" { "with --brokers (WEIR_BROKERS)" } else { "without brokers" };
            return Err(format!(
                "data dir {}: its applications ({}) run on the {recorded} backend, and this weir was started for the {kind} \
                 backend; start it {how}, or use another data dir",
                db.path().display(),
                names.join(", ")
            ));
        }
    }
    let mut batch = rocksdb::WriteBatch::default();
    db.put_meta(&mut batch, "backend", kind.as_bytes());
    db.write(batch).map_err(|e| e.to_string())
}

/// The data dir's instance id, created on first use.
fn instance_id(backend: &EmbeddedBackend) -> Result<String, crate::state::StateError> {
    let db = backend.db();
    if let Some(id) = db.get_meta("instance-id")? {
        return Ok(String::from_utf8_lossy(&id).into_owned());
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = format!("{nanos}-{}-{}", std::process::id(), db.path().display());
    let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes()))[..12].to_owned();
    let mut batch = rocksdb::WriteBatch::default();
    db.put_meta(&mut batch, "instance-id", id.as_bytes());
    db.write(batch)?;
    Ok(id)
}

/// One weir process.
pub struct Node {
    pub config: Config,
    pub backend: Arc<EmbeddedBackend>,
    pub registry: ComponentRegistry,
    apps: Mutex<BTreeMap<String, Deployed>>,
    /// Saved applications that could not be resumed, with why.
    broken: Mutex<BTreeMap<String, String>>,
    /// Applications with a create, update or delete in progress: one at a
    /// time per application, so that checking whether it exists and
    /// starting it are one step (two starts of one application would both
    /// process its input).
    busy: Mutex<std::collections::BTreeSet<String>>,
    /// This node's stable id, kept in the data dir: on Kafka, transactional
    /// ids derive from it, so a restarted node fences its former self.
    instance_id: String,
    /// This node's API URL, once it listens.
    advertised_url: Arc<Mutex<Option<String>>>,
    /// The cluster this node is an instance of (Kafka with `cluster` set).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// Where a task runs, for interactive queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskLocation {
    Here,
    /// At the instance with this API URL.
    At(String),
    /// No instance claims it now (a rebalance is moving it).
    Unknown,
}

impl Node {
    /// Opens the data directory and resumes every saved application.
    pub fn open(config: Config) -> Result<Arc<Node>, OpenError> {
        let backend = EmbeddedBackend::open(&config.data_dir, config.fsync)?;
        let engine = WasmEngine::new(EngineConfig {
            cache_dir: Some(config.data_dir.join("cache")),
            max_instances: config.max_instances,
            ..EngineConfig::default()
        })
        .map_err(|e| OpenError::Other(format!("wasm engine: {e}")))?;
        let registry =
            ComponentRegistry::open(&config.data_dir, Arc::new(engine)).map_err(|e| OpenError::Other(e.to_string()))?;
        check_backend_kind(&backend, &config).map_err(OpenError::Other)?;
        let instance_id = if config.instance_id.is_empty() {
            instance_id(&backend).map_err(|e| OpenError::Other(e.to_string()))?
        } else {
            config.instance_id.clone()
        };
        let node = Arc::new(Node {
            advertised_url: Arc::new(Mutex::new(None)),
            instance_id,
            config,
            backend,
            registry,
            apps: Mutex::new(BTreeMap::new()),
            broken: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(Default::default()),
            cluster: std::sync::OnceLock::new(),
        });
        // In a cluster the catalog says what runs: joining it starts the
        // applications (a saved version may be one the cluster left).
        let saved = if node.config.cluster.is_empty() {
            node.backend.applications().map_err(|e| OpenError::Other(e.to_string()))?
        } else {
            Vec::new()
        };
        for (name, definition) in saved {
            let resumed = serde_json::from_slice::<Spec>(&definition)
                .map_err(|e| format!("saved definition is unreadable: {e}"))
                .and_then(|spec| node.start(spec, Vec::new()).map_err(|e| e.to_string()));
            match resumed {
                Ok(()) => tracing::info!(app = %name, "resumed application"),
                Err(e) => {
                    tracing::error!(app = %name, "cannot resume application: {e}");
                    node.broken.lock().unwrap_or_else(|e| e.into_inner()).insert(name, e);
                }
            }
        }
        Ok(node)
    }

    /// The Kafka backend's settings, when this node runs on Kafka.
    fn kafka_settings(&self) -> Option<KafkaSettings> {
        if self.config.brokers.is_empty() {
            return None;
        }
        Some(KafkaSettings {
            brokers: self.config.brokers.clone(),
            session_timeout: self.config.session_timeout,
            transaction_timeout: self.config.transaction_timeout,
            instance_id: self.instance_id.clone(),
            advertised_url: self.advertised_url.clone(),
        })
    }

    /// Sets the URL other instances reach this one's API at (from the
    /// bound address unless `advertised_url` is configured).
    pub fn set_listening(&self, bound: std::net::SocketAddr) {
        let url = if self.config.advertised_url.is_empty() {
            format!("http://{bound}")
        } else {
            self.config.advertised_url.trim_end_matches('/').to_owned()
        };
        *self.advertised_url.lock().unwrap_or_else(|e| e.into_inner()) = Some(url);
    }

    /// This instance's API URL, once it listens.
    pub fn advertised_url(&self) -> Option<String> {
        self.advertised_url.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where the task `task` of `app` runs: here, at another instance, or
    /// nowhere known (rebalancing). On the embedded backend, always here.
    pub fn locate_task(&self, app: &str, task: crate::task::TaskId) -> TaskLocation {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        match apps.get(app).map(|d| &d.app) {
            Some(RunningApp::Kafka(k)) => k.locate(task),
            _ => TaskLocation::Here,
        }
    }

    /// Whether applications run on Kafka (else on the embedded backend).
    pub fn on_kafka(&self) -> bool {
        !self.config.brokers.is_empty()
    }

    fn runner_config(&self) -> RunnerConfig {
        RunnerConfig {
            commit_interval: self.config.commit_interval,
            max_batch: self.config.max_batch,
            workers: self.config.workers,
        }
    }

    /// Claims `name` for one operation, or says it is busy.
    fn claim(&self, name: &str) -> Result<Claim<'_>, DeployError> {
        if !self.busy.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned()) {
            return Err(DeployError::Busy(name.to_owned()));
        }
        Ok(Claim { node: self, name: name.to_owned() })
    }

    /// Joins the cluster named by `cluster` (on Kafka): opens its catalog
    /// and starts following it. A clear error when the catalog is not usable.
    pub fn join_cluster(self: &Arc<Self>) -> Result<(), String> {
        if self.config.cluster.is_empty() {
            return Ok(());
        }
        if !self.on_kafka() {
            return Err(format!(
                "cluster `{}` needs Kafka: set brokers (WEIR_BROKERS), or no cluster for the embedded backend",
                self.config.cluster
            ));
        }
        let cluster = crate::cluster::Cluster::start(self, &self.config.brokers, &self.config.cluster)
            .map_err(|e| e.to_string())?;
        let _ = self.cluster.set(cluster);
        Ok(())
    }

    /// The cluster this node is an instance of, if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// This node's stable instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Validates, saves and starts an application; if it runs already,
    /// updates it without stopping it (see [`update`](Self::update)). One
    /// operation at a time per application: a concurrent one is refused
    /// with [`DeployError::Busy`]. In a cluster, for every instance (see
    /// [`crate::cluster`]).
    pub fn deploy(&self, spec: Spec) -> Result<Deployment, DeployError> {
        self.deploy_expecting(spec, None)
    }

    /// [`deploy`](Self::deploy), in a cluster only if the application is
    /// still at generation `expected` (`If-Match`).
    pub fn deploy_expecting(&self, spec: Spec, expected: Option<u64>) -> Result<Deployment, DeployError> {
        match self.cluster() {
            Some(cluster) => cluster.deploy(self, spec, expected),
            None => self.deploy_local(spec),
        }
    }

    /// Deploys on this instance only.
    pub fn deploy_local(&self, spec: Spec) -> Result<Deployment, DeployError> {
        let _claim = self.claim(&spec.name)?;
        self.deploy_claimed(spec)
    }

    /// [`deploy_local`](Self::deploy_local) for the cluster's agent applying
    /// a generation: a hot swap's commits are held for the cluster
    /// ([`crate::backend::control::ClusterHold`]); the agent releases or
    /// refuses the update the answer's record names.
    pub fn apply_for_cluster(&self, spec: Spec) -> Result<Deployment, DeployError> {
        let _claim = self.claim(&spec.name)?;
        if self.apps.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&spec.name) {
            return self.update_now(spec, Hold::ForTheCluster);
        }
        self.deploy_claimed(spec)
    }

    /// The control plane of an application running here.
    pub fn control(&self, name: &str) -> Option<Arc<crate::backend::control::Control>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner()).get(name).map(|d| d.app.control().clone())
    }

    /// The spec an application runs here.
    pub fn running_spec(&self, name: &str) -> Option<Spec> {
        self.topology(name).map(|t| t.spec.clone())
    }

    /// The status, or (not running here yet) an empty one saying `pending`.
    pub fn status_or_pending(&self, name: &str) -> AppStatus {
        self.status(name).unwrap_or_else(|| self.status_without_tasks(name, "pending".into()))
    }

    /// The status of an application that runs no task here, saying `state`.
    fn status_without_tasks(&self, name: &str, state: String) -> AppStatus {
        AppStatus {
            name: name.to_owned(),
            backend: if self.on_kafka() { "kafka" } else { "embedded" }.into(),
            guarantee: String::new(),
            state,
            lag: 0,
            tasks: Vec::new(),
            components: BTreeMap::new(),
            component_versions: BTreeMap::new(),
            swaps: Vec::new(),
            global_inputs: Vec::new(),
        }
    }

    fn deploy_claimed(&self, spec: Spec) -> Result<Deployment, DeployError> {
        let name = spec.name.clone();
        if self.apps.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&name) {
            return self.update_now(spec, Hold::No);
        }
        self.start(spec.clone(), Vec::new())?;
        let definition = serde_json::to_vec(&spec).expect("specs serialise");
        if let Err(e) = self.backend.save_application(&name, &definition) {
            if let Some(d) = self.apps.lock().unwrap_or_else(|e| e.into_inner()).remove(&name) {
                d.app.stop();
            }
            return Err(DeployError::Internal(e.to_string()));
        }
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
        let status = self.status(&name).ok_or_else(|| DeployError::Gone(name.clone()))?;
        Ok(Deployment { action: "created", status, update: None, cluster: None })
    }

    /// Updates a running application. Everything is validated before
    /// anything changes. A change of components, configs or limits only is a
    /// hot swap: each task commits, switches to the new version and goes on,
    /// stores kept; if the new version fails `init` or traps before its
    /// first commit, every task goes back to the old one and the update
    /// fails with the guest's message. A change of the graph (nodes, stores,
    /// topics) restarts the application on the new graph after a final
    /// commit; stores that remain keep their state.
    pub fn update(&self, spec: Spec) -> Result<Deployment, DeployError> {
        let _claim = self.claim(&spec.name)?;
        self.update_now(spec, Hold::No)
    }

    fn update_now(&self, spec: Spec, hold: Hold) -> Result<Deployment, DeployError> {
        let name = spec.name.clone();
        let new = self.prepare(spec.clone())?;
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(deployed) = apps.get(&name) else {
            drop(apps);
            return self.deploy_claimed(spec);
        };
        let old = deployed.app.runtime();
        if shape(&old.topology.spec) == shape(&spec) && old.topology.partitions == new.topology.partitions {
            let control = deployed.app.control().clone();
            if hold == Hold::ForTheCluster {
                control.hold_next_update();
            }
            let id = deployed.app.update(new).map_err(|_| {
                control.clear_hold_request();
                DeployError::Busy(name.clone())
            })?;
            drop(apps);
            let record = self.wait_for_switch(&name, id).ok_or_else(|| DeployError::Gone(name.clone()))?;
            if record.state == "rolled-back" {
                return Err(DeployError::UpdateFailed { app: name, error: record.error.unwrap_or_default() });
            }
            self.save(&spec)?;
            let status = self.status(&name).ok_or_else(|| DeployError::Gone(name.clone()))?;
            return Ok(Deployment { action: "updated", status, update: Some(record), cluster: None });
        }
        // The graph changed: check that state can follow, then restart.
        check_stores(&old.topology, &new.topology)
            .map_err(|error| DeployError::Incompatible { app: name.clone(), error })?;
        let started = Instant::now();
        let mut history = deployed.app.history();
        let Some(deployed) = apps.remove(&name) else { return Err(DeployError::Gone(name)) };
        deployed.app.stop();
        let record = SwapRecord {
            id: history.last().map_or(0, |r| r.id) + 1,
            started_ms: crate::backend::embedded::now_us() / 1000,
            kind: "restart".into(),
            from: old
                .components
                .iter()
                .map(|(n, c)| (old.topology.nodes[*n].name.clone(), format!("sha256:{}", c.sha256())))
                .collect(),
            to: new
                .components
                .iter()
                .map(|(n, c)| (new.topology.nodes[*n].name.clone(), format!("sha256:{}", c.sha256())))
                .collect(),
            state: "applied".into(),
            error: None,
            tasks: new.topology.subtopologies.iter().map(|s| s.partitions as usize).sum(),
            switched: 0,
            passed: 0,
            max_pause_ms: 0.0,
            switched_ms: None,
        };
        history.push(record);
        let result = self.run(new, history.clone(), &mut apps);
        drop(apps);
        if let Err(e) = result {
            // Put the old version back: it was running a moment ago.
            let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
            history.pop();
            self.run(old, history, &mut apps).ok();
            return Err(e);
        }
        let pause = started.elapsed();
        if let Some(d) = self.apps.lock().unwrap_or_else(|e| e.into_inner()).get(&name) {
            // A restart pauses every task for as long as the whole switch took.
            d.app.set_last_pause(pause);
        }
        self.save(&spec)?;
        let status = self.status(&name).ok_or_else(|| DeployError::Gone(name.clone()))?;
        let update = status.swaps.last().cloned();
        Ok(Deployment { action: "updated", status, update, cluster: None })
    }

    fn save(&self, spec: &Spec) -> Result<(), DeployError> {
        let definition = serde_json::to_vec(spec).expect("specs serialise");
        self.backend.save_application(&spec.name, &definition).map_err(|e| DeployError::Internal(e.to_string()))
    }

    /// Waits until every task switched (or the update rolled back), then a
    /// little longer for a trap on probation. An update still switching
    /// after the control plane's switch timeout is rolled back: an update
    /// always finishes, rolls back or times out. `None` when the
    /// application went away meanwhile.
    fn wait_for_switch(&self, app: &str, id: u64) -> Option<SwapRecord> {
        let control = self.apps.lock().unwrap_or_else(|e| e.into_inner()).get(app).map(|d| d.app.control().clone())?;
        let deadline = Instant::now() + control.switch_timeout();
        let mut last = control.record(id)?;
        while last.state == "switching" {
            if Instant::now() >= deadline {
                last = control.time_out(id)?;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            last = control.record(id)?;
        }
        let probation_end = Instant::now() + PROBATION_WAIT;
        while last.state == "switched" && Instant::now() < probation_end {
            std::thread::sleep(Duration::from_millis(10));
            last = control.record(id)?;
        }
        Some(last)
    }

    /// Compiles a spec against the real partition counts of existing topics
    /// and resolves its components: everything checked, nothing changed.
    pub(crate) fn prepare_runtime(&self, spec: Spec) -> Result<Arc<AppRuntime>, DeployError> {
        self.prepare(spec)
    }

    fn prepare(&self, spec: Spec) -> Result<Arc<AppRuntime>, DeployError> {
        let actual: BTreeMap<String, u32> =
            self.backend.topics().iter().map(|t| (t.name.to_string(), t.partitions())).collect();
        let mismatched: Vec<String> = spec
            .topics
            .iter()
            .filter_map(|(t, want)| {
                actual.get(t).filter(|have| **have != want.partitions()).map(|have| {
                    format!("topic `{t}` exists with {have} partition(s), the spec says {}", want.partitions())
                })
            })
            .collect();
        if !mismatched.is_empty() {
            return Err(DeployError::Topics {
                app: spec.name.clone(),
                error: format!("{} (weir does not re-partition existing topics)", mismatched.join("; ")),
            });
        }
        let topology = Topology::compile_with_counts(spec, &actual)?;
        let mut components = BTreeMap::new();
        for (id, node) in topology.nodes.iter().enumerate() {
            if let NodeKind::Processor(def) = &node.kind {
                let loaded = self
                    .registry
                    .resolve(&def.component)
                    .map_err(|error| DeployError::Component { processor: node.name.clone(), error })?;
                components.insert(id, loaded);
            }
        }
        Ok(Arc::new(AppRuntime { topology: Arc::new(topology), engine: self.registry.engine().clone(), components }))
    }

    fn start(&self, spec: Spec, history: Vec<SwapRecord>) -> Result<(), DeployError> {
        let app = self.prepare(spec)?;
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        self.run(app, history, &mut apps)
    }

    fn run(
        &self,
        app: Arc<AppRuntime>,
        history: Vec<SwapRecord>,
        apps: &mut BTreeMap<String, Deployed>,
    ) -> Result<(), DeployError> {
        let name = app.topology.name.clone();
        if apps.contains_key(&name) {
            // Never two runs of one application (each would process its input).
            return Err(DeployError::Busy(name));
        }
        // Admission, under the same lock as the insert: the instances every
        // application may need are reserved up front, so one application
        // can never take the instances another one runs on.
        let need = instances_needed(&app.topology);
        let reserved: u64 = apps.values().map(|d| instances_needed(&d.app.runtime().topology)).sum();
        let limit = u64::from(self.config.max_instances);
        if reserved + need > limit {
            return Err(DeployError::OverLimit {
                app: name,
                error: format!(
                    "it needs {need} wasm instance(s) (partitions × processors, twice for hot swaps) and {} of the \
                     {limit} this weir allows are free (max_instances, WEIR_MAX_INSTANCES)",
                    limit.saturating_sub(reserved)
                ),
            });
        }
        let running = match self.kafka_settings() {
            None => EmbeddedApp::start_with_history(self.backend.clone(), app, self.runner_config(), history)
                .map(RunningApp::Embedded)
                .map_err(|e| match e {
                    StartError::Topics(error) => DeployError::Topics { app: name.clone(), error },
                    StartError::Backend(BackendError::Storage(e)) => DeployError::Internal(e.to_string()),
                    StartError::Backend(e) => DeployError::Start { app: name.clone(), error: e.to_string() },
                })?,
            Some(settings) => KafkaApp::start(self.backend.clone(), settings, app, self.runner_config(), history)
                .map(RunningApp::Kafka)
                .map_err(|e| match e {
                    KafkaStartError::Topics(error) => DeployError::Topics { app: name.clone(), error },
                    KafkaStartError::Broker(error) => DeployError::Start { app: name.clone(), error },
                })?,
        };
        let backend = self.backend.clone();
        let app_name = name.clone();
        running.on_rollback(Box::new(move |previous| {
            // The application runs the previous version again: so must a restart.
            let definition = serde_json::to_vec(&previous.topology.spec).expect("specs serialise");
            if let Err(e) = backend.save_application(&app_name, &definition) {
                tracing::error!(app = %app_name, error = %e, "cannot save the rolled-back definition");
            }
        }));
        apps.insert(name, Deployed { app: running });
        Ok(())
    }

    /// Stops an application (final commit) and forgets it. Refused with
    /// [`DeployError::Busy`] while it is being deployed or updated. In a
    /// cluster, on every instance.
    pub fn undeploy(&self, name: &str) -> Result<bool, DeployError> {
        match self.cluster() {
            Some(cluster) => cluster.undeploy(name),
            None => self.undeploy_local(name),
        }
    }

    /// Undeploys on this instance only.
    pub fn undeploy_local(&self, name: &str) -> Result<bool, DeployError> {
        let _claim = self.claim(name)?;
        let deployed = self.apps.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        let broken = self.broken.lock().unwrap_or_else(|e| e.into_inner()).remove(name).is_some();
        let found = deployed.is_some() || broken;
        if let Some(d) = deployed {
            d.app.stop();
        }
        if found {
            self.backend.delete_application(name).map_err(|e| DeployError::Internal(e.to_string()))?;
        }
        Ok(found)
    }

    pub fn status(&self, name: &str) -> Option<AppStatus> {
        if let Some(d) = self.apps.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            let mut status = d.app.status();
            for (processor, reference) in &status.components {
                let sha = reference.trim_start_matches("sha256:");
                let named = self.registry.name_of(sha).unwrap_or_else(|| "(unnamed)".to_owned());
                status.component_versions.insert(processor.clone(), named);
            }
            return Some(status);
        }
        let broken = self.broken.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        broken.map(|error| self.status_without_tasks(name, format!("failed: {error}")))
    }

    /// Names of deployed applications (running or not).
    pub fn applications(&self) -> Vec<String> {
        let mut names: Vec<String> = self.apps.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        names.extend(self.broken.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned());
        names.sort();
        names
    }

    /// The topology of a running application.
    pub fn topology(&self, name: &str) -> Option<Arc<Topology>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner()).get(name).map(|d| d.app.runtime().topology.clone())
    }

    /// Every application's metrics in Prometheus text format.
    pub fn metrics(&self) -> String {
        let names = self.applications();
        let mut apps = Vec::new();
        for name in names {
            let metrics = self.apps.lock().unwrap_or_else(|e| e.into_inner()).get(&name).map(|d| d.app.metrics());
            if let (Some(status), Some(metrics)) = (self.status(&name), metrics) {
                apps.push((status, metrics));
            }
        }
        crate::metrics::render(&apps)
    }

    /// Applications running a component (by sha256).
    pub fn used_by(&self, sha256: &str) -> Vec<String> {
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, d)| d.app.runtime().components.values().any(|c| c.sha256() == sha256))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Stops every application (final commits), for a clean shutdown; in a
    /// cluster, says first that this instance stops.
    pub fn shutdown(&self) {
        if let Some(cluster) = self.cluster() {
            cluster.leave(self);
        }
        let apps = std::mem::take(&mut *self.apps.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, d) in apps {
            d.app.stop();
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

/// The processor instances an application may hold at once: one per
/// processor per task, twice over, since a task on probation after a hot
/// swap keeps the previous version's instance to go back to.
fn instances_needed(topology: &Topology) -> u64 {
    let per_version: u64 =
        topology.subtopologies.iter().map(|s| u64::from(s.partitions) * s.processors.len() as u64).sum();
    per_version * 2
}

/// Checks that every store the old and the new graph share can keep its
/// state: same kind, same partitioning.
fn check_stores(old: &Topology, new: &Topology) -> Result<(), String> {
    let mut problems = Vec::new();
    for store in &new.stores {
        let Some(before) = old.stores.iter().find(|s| s.name == store.name) else { continue };
        let kind = |t: &Topology, s: &crate::topology::StoreDef| match s.owner {
            crate::topology::StoreOwner::Processor(_) => {
                ("a processor store", s.subtopology.map(|i| t.subtopologies[i].partitions))
            }
            crate::topology::StoreOwner::Table(_) => {
                ("a table store", s.subtopology.map(|i| t.subtopologies[i].partitions))
            }
            crate::topology::StoreOwner::Global(_) => ("a global table store", None),
        };
        let (was, was_parts) = kind(old, before);
        let (is, is_parts) = kind(new, store);
        if was != is {
            problems.push(format!("store `{}` was {was} and would become {is}", store.name));
        } else if was_parts != is_parts {
            problems.push(format!(
                "store `{}` would move from {} to {} partitions; weir cannot re-shard existing state (deploy it as a new application)",
                store.name,
                was_parts.unwrap_or(1),
                is_parts.unwrap_or(1)
            ));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}
