//! A `weir serve` process: the backend, the wasm engine, the component
//! registry and the deployed applications. The HTTP API ([`crate::api`]) is
//! a thin layer over this.
//!
//! Deployed applications are saved in the data directory; a restarted
//! `weir serve` on the same directory resumes every one of them by itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::backend::embedded::runner::{EmbeddedApp, RunnerConfig, StartError};
use crate::backend::embedded::{BackendError, EmbeddedBackend};
use crate::config::Config;
use crate::registry::{ComponentRegistry, RegistryError};
use crate::state::rocks::DataDirError;
use crate::status::AppStatus;
use crate::task::AppRuntime;
use crate::topology::{NodeKind, Spec, SpecError, Topology};
use crate::wasm::{EngineConfig, WasmEngine};

/// Why a deploy was refused. Everything but `Internal` is the caller's to fix.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("invalid spec:\n{0}")]
    Spec(#[from] SpecError),
    #[error("processor `{processor}`: {error}")]
    Component {
        processor: String,
        error: RegistryError,
    },
    #[error("application `{0}` is already deployed; delete it first")]
    Exists(String),
    #[error("cannot deploy `{app}`: {error}")]
    Topics { app: String, error: String },
    #[error("cannot start `{app}`: {error}")]
    Start { app: String, error: String },
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
    app: EmbeddedApp,
}

/// One weir process.
pub struct Node {
    pub config: Config,
    pub backend: Arc<EmbeddedBackend>,
    pub registry: ComponentRegistry,
    apps: Mutex<BTreeMap<String, Deployed>>,
    /// Saved applications that could not be resumed, with why.
    broken: Mutex<BTreeMap<String, String>>,
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
        let registry = ComponentRegistry::open(&config.data_dir, Arc::new(engine))
            .map_err(|e| OpenError::Other(e.to_string()))?;
        let node = Arc::new(Node {
            config,
            backend,
            registry,
            apps: Mutex::new(BTreeMap::new()),
            broken: Mutex::new(BTreeMap::new()),
        });
        let saved = node
            .backend
            .applications()
            .map_err(|e| OpenError::Other(e.to_string()))?;
        for (name, definition) in saved {
            let resumed = serde_json::from_slice::<Spec>(&definition)
                .map_err(|e| format!("saved definition is unreadable: {e}"))
                .and_then(|spec| node.start(spec).map_err(|e| e.to_string()));
            match resumed {
                Ok(()) => tracing::info!(app = %name, "resumed application"),
                Err(e) => {
                    tracing::error!(app = %name, "cannot resume application: {e}");
                    node.broken
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, e);
                }
            }
        }
        Ok(node)
    }

    fn runner_config(&self) -> RunnerConfig {
        RunnerConfig {
            commit_interval: self.config.commit_interval,
            max_batch: self.config.max_batch,
            workers: self.config.workers,
        }
    }

    /// Validates, saves and starts an application.
    pub fn deploy(&self, spec: Spec) -> Result<AppStatus, DeployError> {
        let name = spec.name.clone();
        if self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&name)
        {
            return Err(DeployError::Exists(name));
        }
        self.start(spec.clone())?;
        let definition = serde_json::to_vec(&spec).expect("specs serialise");
        if let Err(e) = self.backend.save_application(&name, &definition) {
            self.undeploy(&name).ok();
            return Err(DeployError::Internal(e.to_string()));
        }
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        Ok(self.status(&name).expect("just started"))
    }

    /// Compiles against the real partition counts of existing topics,
    /// resolves components and starts the runner.
    fn start(&self, spec: Spec) -> Result<(), DeployError> {
        let actual: BTreeMap<String, u32> = self
            .backend
            .topics()
            .iter()
            .map(|t| (t.name.to_string(), t.partitions()))
            .collect();
        let topology = Topology::compile_with_counts(spec, &actual)?;
        let mut components = BTreeMap::new();
        for (id, node) in topology.nodes.iter().enumerate() {
            if let NodeKind::Processor(def) = &node.kind {
                let loaded = self.registry.resolve(&def.component).map_err(|error| {
                    DeployError::Component {
                        processor: node.name.clone(),
                        error,
                    }
                })?;
                components.insert(id, loaded);
            }
        }
        let name = topology.name.clone();
        let app = Arc::new(AppRuntime {
            topology: Arc::new(topology),
            engine: self.registry.engine().clone(),
            components,
        });
        let running = EmbeddedApp::start(self.backend.clone(), app, self.runner_config()).map_err(
            |e| match e {
                StartError::Topics(error) => DeployError::Topics {
                    app: name.clone(),
                    error,
                },
                StartError::Backend(BackendError::Storage(e)) => {
                    DeployError::Internal(e.to_string())
                }
                StartError::Backend(e) => DeployError::Start {
                    app: name.clone(),
                    error: e.to_string(),
                },
            },
        )?;
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, Deployed { app: running });
        Ok(())
    }

    /// Stops an application (final commit) and forgets it.
    pub fn undeploy(&self, name: &str) -> Result<bool, String> {
        let deployed = self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let broken = self
            .broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .is_some();
        let found = deployed.is_some() || broken;
        if let Some(d) = deployed {
            d.app.stop();
        }
        if found {
            self.backend
                .delete_application(name)
                .map_err(|e| e.to_string())?;
        }
        Ok(found)
    }

    pub fn status(&self, name: &str) -> Option<AppStatus> {
        if let Some(d) = self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Some(d.app.status());
        }
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|error| AppStatus {
                name: name.to_owned(),
                backend: "embedded".into(),
                guarantee: String::new(),
                state: format!("failed: {error}"),
                lag: 0,
                tasks: Vec::new(),
                components: BTreeMap::new(),
            })
    }

    /// Names of deployed applications (running or not).
    pub fn applications(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.extend(
            self.broken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        names.sort();
        names
    }

    /// The topology of a running application.
    pub fn topology(&self, name: &str) -> Option<Arc<Topology>> {
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|d| d.app.runtime().topology.clone())
    }

    /// Stops every application (final commits), for a clean shutdown.
    pub fn shutdown(&self) {
        let apps = std::mem::take(&mut *self.apps.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, d) in apps {
            d.app.stop();
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}
