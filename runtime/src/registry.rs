//! The component registry: uploaded components, content-addressed by sha256,
//! kept on disk in `<data-dir>/components/<sha256>.wasm` and precompiled into
//! the engine's cache (`<data-dir>/cache/`), so a restart loads them in
//! milliseconds instead of recompiling.
//!
//! Components may also be named and versioned (`weir push FILE --name N
//! [--version V]`; versions default to 1, 2, 3, ...): the index lives in
//! `<data-dir>/components/names/<name>.json`. Specs served by `weir serve`
//! refer to components as `sha256:<hex>`, `name@version` or `name` (its
//! latest version); `weir deploy` uploads the files a spec names and rewrites
//! those references to `sha256:<hex>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::wasm::{LoadError, LoadedComponent, WasmEngine};

/// Why a component reference cannot be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("component `{0}` is not in the registry (upload it first: POST /v1/components, or `weir deploy` does it)")]
    Unknown(String),
    #[error(
        "component reference `{0}` is a file path; the server cannot read client files: `weir deploy` uploads them \
         and rewrites the spec to sha256:<hex> references"
    )]
    Path(String),
    #[error("component reference `{0}` is not `sha256:<64 hex digits>`, `name@version` or `name`")]
    Malformed(String),
    #[error("`{0}` is not a valid component name or version (1-200 of a-z A-Z 0-9 . _ -, not dots only)")]
    BadName(String),
    #[error(
        "component {name}@{version} already exists with other content (sha256:{sha256}); versions are immutable, push a new version"
    )]
    VersionExists { name: String, version: String, sha256: String },
    #[error("component {sha256}: {error}")]
    Load { sha256: String, error: LoadError },
    #[error("registry storage: {0}")]
    Io(String),
}

/// One named version of a component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionEntry {
    pub version: String,
    pub sha256: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub uploaded_ms: i64,
}

pub struct ComponentRegistry {
    dir: PathBuf,
    engine: Arc<WasmEngine>,
    /// Serialises changes to the name index.
    names: Mutex<()>,
}

/// Names and versions follow the spec's rule for names; they become file
/// names, so a name that is not valid never reaches the file system.
fn valid(name: &str) -> bool {
    crate::topology::valid_name(name)
}

impl ComponentRegistry {
    pub fn open(data_dir: &Path, engine: Arc<WasmEngine>) -> Result<Self, RegistryError> {
        let dir = data_dir.join("components");
        std::fs::create_dir_all(dir.join("names")).map_err(|e| RegistryError::Io(format!("{}: {e}", dir.display())))?;
        Ok(ComponentRegistry { dir, engine, names: Mutex::new(()) })
    }

    pub fn engine(&self) -> &Arc<WasmEngine> {
        &self.engine
    }

    /// Validates and precompiles `bytes`, then stores them.
    pub fn add(&self, bytes: &[u8]) -> Result<Arc<LoadedComponent>, LoadError> {
        let loaded = self.engine.load(bytes)?;
        self.store(bytes, &loaded)?;
        Ok(loaded)
    }

    fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }

    fn store(&self, bytes: &[u8], loaded: &LoadedComponent) -> Result<(), LoadError> {
        let path = self.path_of(loaded.sha256());
        if !path.exists() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path)).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                LoadError::Io { path: path.display().to_string(), message: e.to_string() }
            })?;
        }
        Ok(())
    }

    /// Adds a component and records it as `name@version` (the next number
    /// when `version` is `None`). Re-pushing the same content under the same
    /// version is a no-op; other content under an existing version is
    /// refused, and then nothing of the upload is kept.
    pub fn add_named(
        &self,
        bytes: &[u8],
        name: &str,
        version: Option<&str>,
    ) -> Result<(Arc<LoadedComponent>, VersionEntry), RegistryError> {
        if !valid(name) {
            return Err(RegistryError::BadName(name.to_owned()));
        }
        if let Some(v) = version
            && !valid(v)
        {
            return Err(RegistryError::BadName(v.to_owned()));
        }
        let known = |sha256: &str| self.path_of(sha256).exists();
        let loaded =
            self.engine.load(bytes).map_err(|error| RegistryError::Load { sha256: "(upload)".into(), error })?;
        let was_known = known(loaded.sha256());
        let _guard = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let mut versions = self.versions(name);
        let version = match version {
            Some(v) => v.to_owned(),
            None => (versions.iter().filter_map(|e| e.version.parse::<u64>().ok()).max().unwrap_or(0) + 1).to_string(),
        };
        if let Some(existing) = versions.iter().find(|e| e.version == version) {
            if existing.sha256 == loaded.sha256() {
                self.store(bytes, &loaded).map_err(|error| RegistryError::Load { sha256: "(upload)".into(), error })?;
                return Ok((loaded, existing.clone()));
            }
            if !was_known {
                self.engine.forget(loaded.sha256());
            }
            return Err(RegistryError::VersionExists { name: name.into(), version, sha256: existing.sha256.clone() });
        }
        self.store(bytes, &loaded).map_err(|error| RegistryError::Load { sha256: "(upload)".into(), error })?;
        let entry = VersionEntry {
            version,
            sha256: loaded.sha256().to_owned(),
            size: bytes.len() as u64,
            uploaded_ms: crate::backend::embedded::now_us() / 1000,
        };
        versions.push(entry.clone());
        self.write_versions(name, &versions)?;
        Ok((loaded, entry))
    }

    fn index(&self, name: &str) -> PathBuf {
        self.dir.join("names").join(format!("{name}.json"))
    }

    fn write_versions(&self, name: &str, versions: &[VersionEntry]) -> Result<(), RegistryError> {
        let path = self.index(name);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(versions).expect("json");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| RegistryError::Io(format!("{}: {e}", path.display())))
    }

    /// The versions of a named component, oldest first.
    pub fn versions(&self, name: &str) -> Vec<VersionEntry> {
        if !valid(name) {
            return Vec::new();
        }
        std::fs::read(self.index(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Every named component with its versions.
    pub fn names(&self) -> BTreeMap<String, Vec<VersionEntry>> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(self.dir.join("names")).into_iter().flatten().flatten() {
            if let Some(name) = entry.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                out.insert(name.to_owned(), self.versions(name));
            }
        }
        out
    }

    /// `name@version` of a content hash, if it was pushed under a name.
    pub fn name_of(&self, sha256: &str) -> Option<String> {
        self.names().into_iter().find_map(|(name, versions)| {
            versions.iter().rev().find(|v| v.sha256 == sha256).map(|v| format!("{name}@{}", v.version))
        })
    }

    /// Forgets `name@version` (and its file, if no other name points at it).
    pub fn remove(&self, name: &str, version: &str) -> Result<bool, RegistryError> {
        if !valid(name) || !valid(version) {
            return Err(RegistryError::BadName(format!("{name}@{version}")));
        }
        let _guard = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let mut versions = self.versions(name);
        let Some(i) = versions.iter().position(|v| v.version == version) else { return Ok(false) };
        let removed = versions.remove(i);
        if versions.is_empty() {
            let _ = std::fs::remove_file(self.index(name));
        } else {
            self.write_versions(name, &versions)?;
        }
        let still_named = self.names().values().flatten().any(|v| v.sha256 == removed.sha256);
        if !still_named {
            let _ = std::fs::remove_file(self.dir.join(format!("{}.wasm", removed.sha256)));
        }
        Ok(true)
    }

    /// Resolves a spec's component reference.
    pub fn resolve(&self, reference: &str) -> Result<Arc<LoadedComponent>, RegistryError> {
        let Some(hex) = reference.strip_prefix("sha256:") else {
            if crate::testdriver::component_path(reference, Path::new(".")).is_some() {
                return Err(RegistryError::Path(reference.to_owned()));
            }
            let (name, version) = match reference.split_once('@') {
                Some((n, v)) => (n, Some(v)),
                None => (reference, None),
            };
            if !valid(name) || version.is_some_and(|v| !valid(v)) {
                return Err(RegistryError::Malformed(reference.to_owned()));
            }
            let versions = self.versions(name);
            let entry = match version {
                Some(v) => versions.iter().find(|e| e.version == v),
                None => versions.last(),
            };
            let entry = entry.ok_or_else(|| RegistryError::Unknown(reference.to_owned()))?;
            return self.resolve(&format!("sha256:{}", entry.sha256));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::Malformed(reference.to_owned()));
        }
        let hex = hex.to_ascii_lowercase();
        let path = self.dir.join(format!("{hex}.wasm"));
        if !path.exists() {
            return Err(RegistryError::Unknown(reference.to_owned()));
        }
        self.engine.load_file(&path).map_err(|error| RegistryError::Load { sha256: hex, error })
    }

    /// The bytes of a stored component.
    pub fn bytes(&self, sha256: &str) -> Result<Vec<u8>, RegistryError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::Malformed(sha256.to_owned()));
        }
        let path = self.path_of(sha256);
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RegistryError::Unknown(format!("sha256:{sha256}")),
            _ => RegistryError::Io(format!("{}: {e}", path.display())),
        })
    }

    /// Whether a component is stored here.
    pub fn has(&self, sha256: &str) -> bool {
        self.path_of(sha256).exists()
    }

    /// Every stored component's sha256.
    pub fn list(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".wasm")).map(str::to_owned))
            .collect();
        out.sort();
        out
    }
}
