#![doc = include_str!("../README.md")]

// Lets generated bindings and macros name this crate as `weir_sdk` from inside it too.
extern crate self as weir_sdk;

pub mod codec;
mod config;
mod context;
mod error;
pub mod join;
#[doc(hidden)]
pub mod packed;
mod record;
mod store;
pub mod windows;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(any(test, all(target_arch = "wasm32", feature = "fast-allocator", not(target_feature = "atomics"))))]
mod alloc;
#[cfg(any(test, target_arch = "wasm32"))]
mod mem;

/// Free lists for small blocks in front of talc (see [`alloc`]); talc alone
/// is several times faster than dlmalloc inside a component, and the lists
/// cut its share again.
#[cfg(all(target_arch = "wasm32", feature = "fast-allocator", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: alloc::SizeClasses<talc::wasm::WasmDynamicTalc> =
    alloc::SizeClasses::new(talc::wasm::new_wasm_dynamic_allocator());

pub use config::duration;
pub use context::{Config, Context, LogLevel, Punctuation, TimeDomain, Timer};
pub use error::{Error, Result, ResultExt};
pub use record::{Emitted, IntoBytes, Record};
pub use store::Store;

/// The contract's generated bindings. Not for direct use: the [`Processor`]
/// trait and [`export_processor!`] cover it.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "weir:processor/processor@0.3.0",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_weir_world",
        default_bindings_module: "weir_sdk::bindings",
        runtime_path: "weir_sdk::__private::wit_bindgen::rt",
    });
}

/// Everything a processor usually needs, plus serde's derives.
pub mod prelude {
    pub use crate::codec::{Binary, Json};
    pub use crate::join::{JoinKind, JoinWindows, StreamJoin};
    pub use crate::windows::{Emit, SessionAggregate, SessionWindows, TimeWindows, WindowResult, WindowedAggregate};
    pub use crate::{
        Config, Context, Emitted, Error, LogLevel, Processor, Punctuation, Record, Result, ResultExt, Store,
        TimeDomain, Timer, bail, export_processor,
    };
    pub use serde::{Deserialize, Serialize};
}

/// A stream processor: implement this, then call [`export_processor!`].
///
/// One instance runs per task (sub-topology × partition). Keep state that must
/// survive restarts and rebalances in stores, not in fields: fields live only
/// as long as the instance, and the host replaces an instance after a trap.
pub trait Processor: 'static {
    /// Called once before the first record, with the `config` map of the spec.
    fn init(&mut self, ctx: &mut Context, config: &Config) -> Result<()> {
        let _ = (ctx, config);
        Ok(())
    }

    /// Processes one record. An error sends the record to the processor's
    /// error policy (dead-letter by default), and none of the store writes or
    /// emits made while processing it take effect.
    fn process(&mut self, ctx: &mut Context, record: Record) -> Result<()>;

    /// Called when a schedule set with [`Context::schedule`] is due.
    fn punctuate(&mut self, ctx: &mut Context, kind: Punctuation, timestamp: i64) -> Result<()> {
        let _ = (ctx, kind, timestamp);
        Ok(())
    }

    /// Called once when a timer set with [`Context::set_timer`] is due. An
    /// error meets the processor's error policy like a failed `punctuate`
    /// (under `skip` and `dead-letter` the timer is gone; under `fail` the
    /// task stops and the timer stays).
    fn on_timer(&mut self, ctx: &mut Context, timer: Timer) -> Result<()> {
        let _ = (ctx, timer);
        Ok(())
    }
}

/// Exports a [`Processor`] as the component's implementation of the weir
/// contract. The argument is an expression building the processor, evaluated
/// once per instance: a unit struct name, `MyProc::default()`, ...
///
/// Natively (for `cargo test`) the macro only type-checks its argument.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export_processor {
    ($make:expr) => {
        const _: () = {
            struct __WeirGuest;
            impl $crate::bindings::Guest for __WeirGuest {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), $crate::bindings::weir::processor0_1_0::types::Error> {
                    $crate::__private::init(|| ::std::boxed::Box::new($make), config)
                }
                fn process(
                    batch: $crate::bindings::weir::processor0_3_0::packed::PackedBatch,
                ) -> ::core::result::Result<(), $crate::bindings::weir::processor0_1_0::types::BatchError> {
                    $crate::__private::process(batch)
                }
                fn punctuate(
                    kind: $crate::bindings::weir::processor0_1_0::types::Punctuation,
                    timestamp: i64,
                ) -> ::core::result::Result<(), $crate::bindings::weir::processor0_1_0::types::Error> {
                    $crate::__private::punctuate(kind, timestamp)
                }
                fn on_timer(
                    domain: $crate::bindings::weir::processor0_2_0::timers::TimeDomain,
                    key: ::std::vec::Vec<u8>,
                    timestamp: i64,
                ) -> ::core::result::Result<(), $crate::bindings::weir::processor0_1_0::types::Error> {
                    $crate::__private::on_timer(domain, key, timestamp)
                }
            }
    $crate::bindings::__export_weir_world!(__WeirGuest with_types_in $crate::bindings);
        };
    };
}

/// Exports a [`Processor`] as the component's implementation of the weir
/// contract. The argument is an expression building the processor, evaluated
/// once per instance: a unit struct name, `MyProc::default()`, ...
///
/// Natively (for `cargo test`) the macro only type-checks its argument.
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! export_processor {
    ($make:expr) => {
        const _: fn() -> ::std::boxed::Box<dyn $crate::Processor> = || ::std::boxed::Box::new($make);
    };
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private {
    pub use crate::wasm::{init, on_timer, process, punctuate};
    pub use wit_bindgen;
}
