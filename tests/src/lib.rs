//! Where the guest components built by this crate's build script are.
//!
//! The build script compiles every example (`guest-examples/*`) and test
//! guest (`tests/guests/*`) for `wasm32-wasip2`; this crate exposes their
//! paths to the end-to-end tests (`tests/e2e`, a test target of the `weir`
//! package).

use std::path::PathBuf;

/// The directory holding the built components.
pub fn guests_dir() -> PathBuf {
    PathBuf::from(env!("WEIR_GUESTS_DIR"))
}

/// The workspace root.
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("WEIR_WORKSPACE_DIR"))
}

/// The component built from crate `name` (`key-count` → `key_count.wasm`).
pub fn guest(name: &str) -> PathBuf {
    guests_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// `key-count` built with `--features v2` (emits `"version": 2`).
pub fn key_count_v2() -> PathBuf {
    guests_dir().join("key_count_v2.wasm")
}
