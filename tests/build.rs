//! Builds every guest component for `wasm32-wasip2` with the same cargo, so
//! the end-to-end tests always run components built from the current sources
//! (no `.wasm` is ever checked in).
//!
//! The nested build uses the workspace target directory with the `guest`
//! profile: it locks `target/guest` and `target/wasm32-wasip2/guest`, never
//! the `target/debug` or `target/release` the outer build holds, so the two
//! cannot deadlock.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest crates: the examples and the test guests.
const GUESTS: &[&str] = &[
    "key-count",
    "reservation",
    "customer-position",
    "sellable-inventory",
    "enrichment",
    "page-views",
    "sessions",
    "order-payment",
    "misbehave",
    "wrong-world",
    "passthrough",
    "windowed-count",
    "inactivity",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest_dir.parent().expect("tests/ is inside the workspace").to_path_buf();
    for dir in ["sdk", "wit", "guest-examples", "tests/guests", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { workspace.join(p) })
        .unwrap_or_else(|| workspace.join("target"));
    let out = target_dir.join("wasm32-wasip2").join("guest");

    // key-count v2 first (copied aside), then everything at v1, so the
    // uplifted key_count.wasm is version 1.
    build(&workspace, &target_dir, &["-p", "key-count", "--features", "key-count/v2"]);
    std::fs::copy(out.join("key_count.wasm"), out.join("key_count_v2.wasm")).expect("copy key-count v2");
    let mut args = Vec::new();
    for g in GUESTS {
        args.extend(["-p", g]);
    }
    build(&workspace, &target_dir, &args);

    println!("cargo:rustc-env=WEIR_GUESTS_DIR={}", out.display());
    println!("cargo:rustc-env=WEIR_WORKSPACE_DIR={}", workspace.display());
}

fn build(workspace: &Path, target_dir: &Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--profile", "guest", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(target_dir)
        .args(args);
    // Flags meant for the host build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && (k.starts_with("CARGO_PROFILE_") || k.starts_with("CARGO_CFG_") || k.starts_with("CARGO_FEATURE_"))
        {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().expect("run cargo for the guest build");
    assert!(status.success(), "building guest components failed: cargo {}", args.join(" "));
}
