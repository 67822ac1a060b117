//! Loading a component: validate, precompile (or reuse the cached form), check
//! that it implements the contract, and prepare it for fast instantiation.

use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::CONTRACT;
use super::bindings::ProcessorPre;
use super::engine::WasmEngine;
use super::host::GuestState;

/// Why a component cannot be used. Every variant is the uploader's to fix,
/// except `Internal`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("not a WebAssembly file: it does not start with the bytes \\0asm")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build the processor for the wasm32-wasip2 target \
         (cargo build --release --target wasm32-wasip2), which produces a component"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("the component does not implement the {CONTRACT} `processor` world: {0}")]
    WrongWorld(String),
    #[error("internal error loading component: {0}")]
    Internal(String),
}

/// A validated, precompiled component, ready to instantiate.
pub struct LoadedComponent {
    sha256: String,
    size: usize,
    component: Component,
    pre: ProcessorPre<GuestState>,
    exports: Vec<String>,
    imports: Vec<String>,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent").field("sha256", &self.sha256).field("size", &self.size).finish()
    }
}

const WASM_MAGIC: &[u8] = b"\0asm";
/// Version field of a core module (a component has layer 1 in the upper half).
const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
/// The exports the `processor` world requires.
const REQUIRED_EXPORTS: [&str; 3] = ["init", "process", "punctuate"];

impl LoadedComponent {
    pub(crate) fn load(engine: &WasmEngine, bytes: &[u8], sha256: String) -> Result<Self, LoadError> {
        if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
            return Err(LoadError::NotWasm);
        }
        if bytes[4..8] == CORE_VERSION {
            return Err(LoadError::CoreModule);
        }
        let component = compile_or_cached(engine, bytes, &sha256)?;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine.engine()).map(|(name, _)| name.to_owned()).collect();
        let imports: Vec<String> = ty.imports(engine.engine()).map(|(name, _)| name.to_owned()).collect();

        // Name what is missing before asking wasmtime, whose messages are terser.
        let missing: Vec<&str> = REQUIRED_EXPORTS
            .iter()
            .copied()
            .filter(|want| {
                !ty.exports(engine.engine())
                    .any(|(name, item)| name == *want && matches!(item.ty, ComponentItem::ComponentFunc(_)))
            })
            .collect();
        if !missing.is_empty() {
            return Err(LoadError::WrongWorld(format!(
                "missing export{} {} (it exports: {})",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") }
            )));
        }
        for import in &imports {
            if let Some(rest) = import.strip_prefix("weir:processor/")
                && let Some((_, version)) = rest.split_once('@')
                && !CONTRACT.ends_with(&format!("@{version}"))
            {
                return Err(LoadError::WrongWorld(format!(
                    "it was built against weir:processor@{version}, this host implements {CONTRACT}; rebuild it with a matching weir-sdk"
                )));
            }
        }
        let instance_pre = engine.linker().instantiate_pre(&component).map_err(|e| {
            LoadError::WrongWorld(format!(
                "{} (weir provides {CONTRACT} imports and WASI 0.2 without files, network or environment)",
                root_message(&e)
            ))
        })?;
        let pre = ProcessorPre::new(instance_pre).map_err(|e| LoadError::WrongWorld(root_message(&e)))?;
        Ok(LoadedComponent { sha256, size: bytes.len(), component, pre, exports, imports })
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn exports(&self) -> &[String] {
        &self.exports
    }

    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    pub fn component(&self) -> &Component {
        &self.component
    }

    pub(crate) fn pre(&self) -> &ProcessorPre<GuestState> {
        &self.pre
    }
}

/// The error chain in one line: wasmtime wraps the useful part in context.
fn root_message(e: &wasmtime::Error) -> String {
    let parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.join(": ")
}

fn compile_or_cached(engine: &WasmEngine, bytes: &[u8], sha256: &str) -> Result<Component, LoadError> {
    let cache = engine.cache_path(sha256);
    if let Some(path) = &cache
        && path.exists()
    {
        // SAFETY: the file was written by `precompile_component` of an engine
        // with the same compatibility hash (it is part of the file name), in
        // weir's own cache directory.
        match unsafe { Component::deserialize_file(engine.engine(), path) } {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unreadable cached component")
            }
        }
    }
    let started = std::time::Instant::now();
    let compiled = engine.engine().precompile_component(bytes).map_err(|e| LoadError::Invalid(root_message(&e)))?;
    tracing::info!(
        sha256,
        bytes = bytes.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compiled component"
    );
    if let Some(path) = &cache {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled component");
        }
    }
    // SAFETY: `compiled` was produced just now by this engine.
    unsafe { Component::deserialize(engine.engine(), &compiled) }.map_err(|e| LoadError::Internal(root_message(&e)))
}
