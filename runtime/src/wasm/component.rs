//! Loading a component: validate, precompile (or reuse the cached form), check
//! that it implements the contract, and prepare it for fast instantiation.

use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::bindings::ProcessorPre;
use super::engine::WasmEngine;
use super::host::GuestState;
use super::{CONTRACT, CONTRACT_0_1, CONTRACT_0_2};

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
    #[error(
        "the component does not implement the `processor` world of {CONTRACT}, {CONTRACT_0_2} or {CONTRACT_0_1}: {0}"
    )]
    WrongWorld(String),
    #[error("internal error loading component: {0}")]
    Internal(String),
}

/// A validated, precompiled component, ready to instantiate.
pub struct LoadedComponent {
    sha256: String,
    size: usize,
    component: Component,
    pre: Pre,
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
/// The exports the `processor` world requires (0.1.0; 0.2.0 adds `on-timer`).
const REQUIRED_EXPORTS: [&str; 3] = ["init", "process", "punctuate"];
/// The export only 0.2.0 and later components have (0.3.0 then differs in
/// the type of `process`).
const V2_EXPORT: &str = "on-timer";

/// A component prepared for instantiation, by the contract it was built against.
pub(crate) enum Pre {
    V1(ProcessorPre<GuestState>),
    V2(super::bindings_v2::ProcessorPre<GuestState>),
    V3(super::bindings_v3::ProcessorPre<GuestState>),
}

impl LoadedComponent {
    pub(crate) fn load(engine: &WasmEngine, bytes: &[u8], sha256: String) -> Result<Self, LoadError> {
        if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
            return Err(LoadError::NotWasm);
        }
        if bytes[4..8] == CORE_VERSION {
            return Err(LoadError::CoreModule);
        }
        let (component, compiled) = compile_or_cached(engine, bytes, &sha256)?;
        let cache_path = engine.cache_path(&sha256);
        match Self::check(engine, component, bytes.len(), sha256) {
            Ok(loaded) => {
                // Cached only once it is known to be a processor: a refused
                // upload leaves nothing behind.
                if let (Some(compiled), Some(path)) = (compiled, cache_path) {
                    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                    let written = std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &path));
                    if let Err(e) = written {
                        let _ = std::fs::remove_file(&tmp);
                        tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled component");
                    }
                }
                Ok(loaded)
            }
            Err(e) => {
                if let Some(path) = cache_path {
                    // A cached form of a component that is refused is of no use.
                    let _ = std::fs::remove_file(path);
                }
                Err(e)
            }
        }
    }

    /// Checks that a compiled component implements the world.
    fn check(engine: &WasmEngine, component: Component, size: usize, sha256: String) -> Result<Self, LoadError> {
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
                && ![CONTRACT, CONTRACT_0_2, CONTRACT_0_1].iter().any(|c| c.ends_with(&format!("@{version}")))
            {
                return Err(LoadError::WrongWorld(format!(
                    "it was built against weir:processor@{version}, this host implements {CONTRACT} (and runs \
                     {CONTRACT_0_2} and {CONTRACT_0_1}); rebuild it with a matching weir-sdk"
                )));
            }
        }
        let instance_pre = engine.linker().instantiate_pre(&component).map_err(|e| {
            LoadError::WrongWorld(format!(
                "{} (weir provides {CONTRACT} imports and WASI 0.2 without files, network or environment)",
                root_message(&e)
            ))
        })?;
        let v2 = exports.iter().any(|e| e == V2_EXPORT);
        if !v2 && let Some(newer) = imports.iter().find(|i| i.starts_with("weir:processor/") && !i.ends_with("@0.1.0"))
        {
            return Err(LoadError::WrongWorld(format!(
                "it imports {newer} but does not export `{V2_EXPORT}`: a {CONTRACT} component exports it, a \
                 {CONTRACT_0_1} one imports only 0.1.0 interfaces"
            )));
        }
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld(root_message(&e));
        let pre = if v2 {
            // 0.2.0 and 0.3.0 have the same exports by name; `process` takes
            // a packed batch in 0.3.0. Try the current contract first, and
            // name both mismatches when neither fits.
            match super::bindings_v3::ProcessorPre::new(instance_pre.clone()) {
                Ok(pre) => Pre::V3(pre),
                Err(v3) => match super::bindings_v2::ProcessorPre::new(instance_pre) {
                    Ok(pre) => Pre::V2(pre),
                    Err(v2) => {
                        return Err(LoadError::WrongWorld(format!(
                            "as {CONTRACT}: {}; as {CONTRACT_0_2}: {}",
                            root_message(&v3),
                            root_message(&v2)
                        )));
                    }
                },
            }
        } else {
            Pre::V1(ProcessorPre::new(instance_pre).map_err(wrong)?)
        };
        Ok(LoadedComponent { sha256, size, component, pre, exports, imports })
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

    pub(crate) fn pre(&self) -> &Pre {
        &self.pre
    }

    /// The contract the component was built against.
    pub fn contract(&self) -> &'static str {
        match self.pre {
            Pre::V1(_) => CONTRACT_0_1,
            Pre::V2(_) => CONTRACT_0_2,
            Pre::V3(_) => CONTRACT,
        }
    }
}

/// The error chain in one line: wasmtime wraps the useful part in context.
fn root_message(e: &wasmtime::Error) -> String {
    let parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.join(": ")
}

/// The compiled component, and its precompiled bytes when it was compiled
/// now (to be cached once it has passed every check).
fn compile_or_cached(
    engine: &WasmEngine,
    bytes: &[u8],
    sha256: &str,
) -> Result<(Component, Option<Vec<u8>>), LoadError> {
    let cache = engine.cache_path(sha256);
    if let Some(path) = &cache
        && path.exists()
    {
        // SAFETY: the file was written by `precompile_component` of an engine
        // with the same compatibility hash (it is part of the file name), in
        // weir's own cache directory.
        match unsafe { Component::deserialize_file(engine.engine(), path) } {
            Ok(c) => return Ok((c, None)),
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
    // SAFETY: `compiled` was produced just now by this engine.
    let component = unsafe { Component::deserialize(engine.engine(), &compiled) }
        .map_err(|e| LoadError::Internal(root_message(&e)))?;
    Ok((component, Some(compiled)))
}

/// Property tests of component loading: arbitrary bytes, and a real
/// component with bytes overwritten or cut off, load or are refused with a
/// [`LoadError`], never a panic; nothing refused is cached. Bounded (each
/// case may compile); failures are kept by proptest in
/// `proptest-regressions/` and replayed first.
#[cfg(test)]
mod properties {
    use std::sync::{Arc, OnceLock};

    use proptest::prelude::*;

    use super::*;
    use crate::wasm::EngineConfig;

    fn engine() -> &'static (Arc<WasmEngine>, tempfile::TempDir) {
        static ENGINE: OnceLock<(Arc<WasmEngine>, tempfile::TempDir)> = OnceLock::new();
        ENGINE.get_or_init(|| {
            let cache = tempfile::tempdir().expect("temp dir");
            let config = EngineConfig { cache_dir: Some(cache.path().to_path_buf()), ..EngineConfig::default() };
            (Arc::new(WasmEngine::new(config).expect("engine")), cache)
        })
    }

    fn real() -> &'static [u8] {
        static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
        BYTES.get_or_init(|| std::fs::read(weir_tests::guest("passthrough")).expect("built guest"))
    }

    fn cached_files() -> usize {
        std::fs::read_dir(engine().1.path()).map_or(0, |d| d.count())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_refused_without_panicking(mut bytes in prop::collection::vec(any::<u8>(), 0..2048), magic in any::<bool>()) {
            if magic && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(b"\0asm\x0d\0\x01\0");
            }
            let before = cached_files();
            prop_assert!(engine().0.load(&bytes).is_err());
            prop_assert_eq!(cached_files(), before, "nothing refused is cached");
        }

        #[test]
        fn a_damaged_component_loads_or_is_refused_without_panicking(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = real().to_vec();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            let before = cached_files();
            match engine().0.load(&bytes) {
                Ok(loaded) => prop_assert!(loaded.exports().iter().any(|e| e == "process")),
                Err(_) => prop_assert_eq!(cached_files(), before, "nothing refused is cached"),
            }
        }
    }
}
