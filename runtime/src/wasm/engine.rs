//! The wasmtime engine, linker, component cache and epoch ticker.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::component::{LoadError, LoadedComponent};
use super::host::GuestState;

/// How often the epoch advances: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Engine-wide settings (per-processor limits live in the spec).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where precompiled components are cached across runs (none: memory only).
    pub cache_dir: Option<PathBuf>,
    /// Most processor instances alive at once (pooling allocator slots).
    pub max_instances: u32,
    /// Largest memory limit any processor may ask for.
    pub max_memory_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { cache_dir: None, max_instances: 256, max_memory_bytes: 1 << 30 }
    }
}

/// The wasm engine shared by every task of a weir process.
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<GuestState>,
    config: EngineConfig,
    /// Compiled components by sha256.
    loaded: Mutex<HashMap<String, Arc<LoadedComponent>>>,
    /// Identifies the engine configuration in on-disk cache file names.
    engine_hash: String,
    ticker: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl WasmEngine {
    pub fn new(config: EngineConfig) -> anyhow::Result<Self> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true);
        // Deadlines: every call gets an epoch deadline; the ticker advances epochs.
        wasm.epoch_interruption(true);
        wasm.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // A component built with line tables (`weir new` crates are) gets
        // traps that name the guest's file and line.
        wasm.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        if std::env::var("WEIR_WASM_PROFILER").as_deref() == Ok("perfmap") {
            // `perf record` can then name guest functions (/tmp/perf-PID.map).
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.max_instances.max(1);
        pool.total_component_instances(instances);
        // A Rust component has one core module instance plus a few adapter shims.
        pool.total_core_instances(instances.saturating_mul(8));
        pool.total_memories(instances.saturating_mul(2));
        pool.total_tables(instances.saturating_mul(4));
        pool.max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX));
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(8);
        pool.max_core_instances_per_component(16);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)?;

        let mut linker: Linker<GuestState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        super::bindings::Processor::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |s| s)?;
        // 0.2.0 imports 0.1.0's interfaces unchanged, and adds timers.
        super::bindings_v2::weir::processor0_2_0::timers::add_to_linker::<GuestState, HasSelf<GuestState>>(
            &mut linker,
            |s| s,
        )?;
        super::bindings_v3::weir::processor0_3_0::packed::add_to_linker::<GuestState, HasSelf<GuestState>>(
            &mut linker,
            |s| s,
        )?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new().name("weir-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?
        };
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(WasmEngine {
            engine,
            linker,
            config,
            loaded: Mutex::new(HashMap::new()),
            engine_hash,
            ticker: Some(ticker),
            stop,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(crate) fn linker(&self) -> &Linker<GuestState> {
        &self.linker
    }

    /// Validates, precompiles (or fetches from cache) and prepares a component.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedComponent>, LoadError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        if let Some(found) = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(&sha256) {
            return Ok(found.clone());
        }
        let loaded = Arc::new(LoadedComponent::load(self, bytes, sha256.clone())?);
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(sha256, loaded.clone());
        Ok(loaded)
    }

    /// Drops a component from the in-memory and on-disk caches (it was
    /// refused after loading: nothing of it stays behind).
    pub fn forget(&self, sha256: &str) {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).remove(sha256);
        if let Some(path) = self.cache_path(sha256) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Loads a component from a file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedComponent>, LoadError> {
        let bytes = std::fs::read(path)
            .map_err(|e| LoadError::Io { path: path.display().to_string(), message: e.to_string() })?;
        self.load(&bytes)
    }

    /// Where the precompiled form of a component lives on disk, if caching.
    pub(crate) fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        self.config.cache_dir.as_ref().map(|d| d.join(format!("{sha256}-{}.cwasm", self.engine_hash)))
    }

    /// Converts a wall-clock deadline into epoch ticks.
    pub(crate) fn ticks_for(timeout: Duration) -> u64 {
        (timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
