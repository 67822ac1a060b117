//! The WebAssembly side of the host: compiling and caching components,
//! instantiating them with limits, and the contract's host imports.
//!
//! Tour:
//! - [`WasmEngine`] owns the wasmtime `Engine` (pooling allocator, epoch
//!   interruption, component-model concurrency off), the `Linker` with WASI
//!   (no files, no network, no environment) and weir's imports, the compiled
//!   component cache (in memory, and on disk keyed by sha256 and engine
//!   configuration), and the epoch ticker thread that enforces call deadlines.
//! - [`LoadedComponent`] is a validated, precompiled component ready to
//!   instantiate (`InstancePre`): loading rejects non-components, core
//!   modules and components of another world with an error naming what is
//!   missing.
//! - [`ProcessorInstance`] is one live instance for one processor in one
//!   task. Each call moves the task's stores in, runs the guest under its
//!   deadline and memory cap, and reports a [`CallOutcome`]: success with the
//!   emitted records, or a failure classified as guest error, trap, timeout,
//!   memory limit, contract violation or host fault.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use weir::wasm::{EngineConfig, WasmEngine};
//! let engine = WasmEngine::new(EngineConfig::default())?;
//! let component = engine.load(&std::fs::read("key_count.wasm")?)?;
//! println!("loaded {} ({} bytes)", component.sha256(), component.size());
//! # Ok(()) }
//! ```

mod component;
mod engine;
mod host;
mod instance;
mod packed;

pub use component::{LoadError, LoadedComponent};
pub use engine::{EngineConfig, WasmEngine};
pub use host::{GuestState, InstanceInfo, StoreGrantInfo};
pub use instance::{CallFailure, CallOk, CallOutcome, CallTime, FailureKind, InstantiateError, ProcessorInstance};

/// Generated from `wit/deps/processor-0.1.0`: the host side of contract
/// 0.1.0, whose interfaces 0.2.0 imports unchanged.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "weir:processor/processor@0.1.0",
        imports: { default: trappable },
        with: {
            "weir:processor/store.store": super::host::StoreHandle,
        },
    });
}

/// Generated from `wit/deps/processor-0.2.0`: what contract 0.2.0 adds
/// (timers, the batch context, the `on-timer` export).
pub mod bindings_v2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "weir:processor/processor@0.2.0",
        imports: { default: trappable },
        with: {
            "weir:processor/types@0.1.0": super::bindings::weir::processor0_1_0::types,
            "weir:processor/store@0.1.0": super::bindings::weir::processor0_1_0::store,
            "weir:processor/emitter@0.1.0": super::bindings::weir::processor0_1_0::emitter,
            "weir:processor/context@0.1.0": super::bindings::weir::processor0_1_0::context,
        },
    });
}

/// Generated from `wit/processor.wit`: contract 0.3.0's packed batches,
/// emits and store lists.
pub mod bindings_v3 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "weir:processor/processor@0.3.0",
        imports: { default: trappable },
        with: {
            "weir:processor/types@0.1.0": super::bindings::weir::processor0_1_0::types,
            "weir:processor/store@0.1.0": super::bindings::weir::processor0_1_0::store,
            "weir:processor/context@0.1.0": super::bindings::weir::processor0_1_0::context,
            "weir:processor/timers@0.2.0": super::bindings_v2::weir::processor0_2_0::timers,
        },
    });
}

pub use bindings::weir::processor0_1_0::types::Punctuation;
pub use bindings_v2::weir::processor0_2_0::timers::TimeDomain;

/// The contract version this host implements (and builds components
/// against); it also runs components of [`CONTRACT_0_2`] and [`CONTRACT_0_1`].
pub const CONTRACT: &str = "weir:processor@0.3.0";
/// The previous contract (unpacked batches), still run unchanged.
pub const CONTRACT_0_2: &str = "weir:processor@0.2.0";
/// The first contract (no timers, no per-record stream time), still run unchanged.
pub const CONTRACT_0_1: &str = "weir:processor@0.1.0";
