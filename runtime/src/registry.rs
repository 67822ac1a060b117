//! The component registry: uploaded components, content-addressed by sha256,
//! kept on disk in `<data-dir>/components/<sha256>.wasm` and precompiled into
//! the engine's cache (`<data-dir>/cache/`), so a restart loads them in
//! milliseconds instead of recompiling.
//!
//! Specs served by `weir serve` refer to components as `sha256:<hex>`;
//! `weir deploy` uploads the files a spec names and rewrites the references.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    #[error("component reference `{0}` is not `sha256:<64 hex digits>`")]
    Malformed(String),
    #[error("component {sha256}: {error}")]
    Load { sha256: String, error: LoadError },
    #[error("registry storage: {0}")]
    Io(String),
}

pub struct ComponentRegistry {
    dir: PathBuf,
    engine: Arc<WasmEngine>,
}

impl ComponentRegistry {
    pub fn open(data_dir: &Path, engine: Arc<WasmEngine>) -> Result<Self, RegistryError> {
        let dir = data_dir.join("components");
        std::fs::create_dir_all(&dir).map_err(|e| RegistryError::Io(format!("{}: {e}", dir.display())))?;
        Ok(ComponentRegistry { dir, engine })
    }

    pub fn engine(&self) -> &Arc<WasmEngine> {
        &self.engine
    }

    /// Validates and precompiles `bytes`, then stores them.
    pub fn add(&self, bytes: &[u8]) -> Result<Arc<LoadedComponent>, LoadError> {
        let loaded = self.engine.load(bytes)?;
        let path = self.dir.join(format!("{}.wasm", loaded.sha256()));
        if !path.exists() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| LoadError::Io { path: path.display().to_string(), message: e.to_string() })?;
        }
        Ok(loaded)
    }

    /// Resolves a spec's component reference.
    pub fn resolve(&self, reference: &str) -> Result<Arc<LoadedComponent>, RegistryError> {
        let Some(hex) = reference.strip_prefix("sha256:") else {
            if crate::testdriver::component_path(reference, Path::new(".")).is_some() {
                return Err(RegistryError::Path(reference.to_owned()));
            }
            return Err(RegistryError::Malformed(reference.to_owned()));
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
