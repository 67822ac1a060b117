//! The authoring loop: `weir new` (a processor crate from a template that
//! builds and passes its own test as it is), `weir build` (the component,
//! checked against the contract this host implements), and the comparison
//! of `weir test`'s output with an expected file (`--expect`, `--bless`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::jsonl::OutputLine;
use crate::wasm::{EngineConfig, WasmEngine};

/// What `weir new --template` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// Routes each record by a field of its value; no state.
    Stateless,
    /// Counts records per key in a store.
    Stateful,
    /// Counts per key in tumbling event-time windows, one result per window
    /// when it closes, late records to an output of their own.
    Windowed,
}

/// The files of a template: (path in the new folder, text with
/// `{{name}}`, `{{crate}}` and `{{sdk}}` to fill in).
fn template_files(template: Template) -> Vec<(&'static str, &'static str)> {
    let (lib, app, input, expected) = match template {
        Template::Stateless => (
            include_str!("../templates/stateless/lib.rs"),
            include_str!("../templates/stateless/app.yaml"),
            include_str!("../templates/stateless/input.jsonl"),
            include_str!("../templates/stateless/expected.jsonl"),
        ),
        Template::Stateful => (
            include_str!("../templates/stateful/lib.rs"),
            include_str!("../templates/stateful/app.yaml"),
            include_str!("../templates/stateful/input.jsonl"),
            include_str!("../templates/stateful/expected.jsonl"),
        ),
        Template::Windowed => (
            include_str!("../templates/windowed/lib.rs"),
            include_str!("../templates/windowed/app.yaml"),
            include_str!("../templates/windowed/input.jsonl"),
            include_str!("../templates/windowed/expected.jsonl"),
        ),
    };
    vec![
        ("Cargo.toml", include_str!("../templates/Cargo.toml.in")),
        (".gitignore", include_str!("../templates/gitignore.in")),
        ("src/lib.rs", lib),
        ("app.yaml", app),
        ("input.jsonl", input),
        ("expected.jsonl", expected),
    ]
}

/// Where the SDK is: `--sdk`, else `WEIR_SDK`, else the SDK this weir was
/// built beside (a source checkout).
pub fn find_sdk(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => std::env::var_os("WEIR_SDK")
            .map(PathBuf::from)
            .into_iter()
            .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")])
            .collect(),
    };
    for c in &candidates {
        if c.join("Cargo.toml").is_file() {
            return c.canonicalize().with_context(|| format!("resolving {}", c.display()));
        }
    }
    bail!(
        "cannot find weir-sdk (looked at {}): pass --sdk PATH to the sdk/ folder of a weir checkout, or set WEIR_SDK",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// Creates `dir` (it must not exist) with a processor crate from `template`.
pub fn new_project(dir: &Path, template: Template, sdk: &Path) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| crate::topology::valid_name(n) && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{}` is not a usable name: start with a letter, then letters, digits, `-` or `_`",
                dir.display()
            )
        })?;
    if name.contains('.') {
        bail!("`{name}` is not a usable crate name: no dots");
    }
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let crate_name = name.replace('-', "_");
    let sdk_text = sdk.display().to_string();
    for (path, text) in template_files(template) {
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().expect("has a parent"))?;
        let text = text.replace("{{name}}", name).replace("{{crate}}", &crate_name).replace("{{sdk}}", &sdk_text);
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
    }
    // The versions weir itself was tested with, so the first build resolves
    // the same crates (cargo drops what the new crate does not use).
    let lock = sdk.join("../Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, dir.join("Cargo.lock"))?;
    }
    Ok(())
}

/// A built component.
#[derive(Debug)]
pub struct Built {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// The contract version the component was built against.
    pub contract: &'static str,
}

/// The wasm target, installed if missing (saying so).
fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") => Ok(()),
        Ok(_) => {
            eprintln!("weir build: installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
            let status = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status()?;
            anyhow::ensure!(status.success(), "`rustup target add wasm32-wasip2` failed");
            Ok(())
        }
        // No rustup: let cargo say what is missing.
        Err(_) => Ok(()),
    }
}

/// Builds the crate in `dir` as a component (release, `wasm32-wasip2`) into
/// `dir/target/wasm32-wasip2/release/`, where its `app.yaml` looks (with
/// `CARGO_TARGET_DIR` set, cargo builds there and the component is copied
/// in), and checks it against the contract. Cargo's messages pass through.
pub fn build(dir: &Path) -> anyhow::Result<Built> {
    anyhow::ensure!(dir.join("Cargo.toml").is_file(), "no Cargo.toml in {}", dir.display());
    ensure_wasm_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--message-format=json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    anyhow::ensure!(out.status.success(), "cargo build failed (its messages are above)");
    let mut wasm = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] == "compiler-artifact" {
            for f in msg["filenames"].as_array().into_iter().flatten() {
                if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                    wasm = Some(PathBuf::from(f));
                }
            }
        }
    }
    let built = wasm.ok_or_else(|| anyhow::anyhow!("cargo built no .wasm: is the crate a `cdylib`?"))?;
    let expected_dir = dir.join("target/wasm32-wasip2/release");
    let path = expected_dir.join(built.file_name().expect("a file"));
    if built.canonicalize().ok() != path.canonicalize().ok() {
        std::fs::create_dir_all(&expected_dir)?;
        std::fs::copy(&built, &path).with_context(|| format!("copying {} to {}", built.display(), path.display()))?;
    }
    let engine = WasmEngine::new(EngineConfig::default())?;
    let loaded = engine
        .load_file(&path)
        .map_err(|e| anyhow::anyhow!("{} is not a weir component this host can run: {e}", path.display()))?;
    let bytes = std::fs::metadata(&path)?.len();
    Ok(Built { path, bytes, sha256: loaded.sha256().to_owned(), contract: loaded.contract() })
}

/// What `weir build` reports.
pub fn describe(b: &Built) -> String {
    format!(
        "built {}\n  size     {} bytes\n  sha256   {}\n  contract {}",
        b.path.display(),
        b.bytes,
        b.sha256,
        b.contract
    )
}

/// Compares output lines with an expected JSONL file's text, per topic and
/// partition in order (records of different partitions may interleave in
/// any order). `Err` holds a readable diff.
pub fn compare(expected: &str, got: &[OutputLine]) -> Result<(), String> {
    type Lines = BTreeMap<(String, u64), Vec<serde_json::Value>>;
    let mut want = Lines::new();
    for (i, line) in expected.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("expected file line {}: not JSON: {e}", i + 1))?;
        let key = (v["topic"].as_str().unwrap_or("?").to_owned(), v["partition"].as_u64().unwrap_or(0));
        want.entry(key).or_default().push(v);
    }
    let mut have = Lines::new();
    for l in got {
        let v = serde_json::to_value(l).expect("output lines serialise");
        have.entry((l.topic.clone(), u64::from(l.partition))).or_default().push(v);
    }
    let mut diff = String::new();
    let keys: std::collections::BTreeSet<_> = want.keys().chain(have.keys()).cloned().collect();
    for key in keys {
        let (w, h) = (want.get(&key).map_or(&[][..], Vec::as_slice), have.get(&key).map_or(&[][..], Vec::as_slice));
        if w == h {
            continue;
        }
        diff.push_str(&format!("{}/{}: expected {} record(s), got {}\n", key.0, key.1, w.len(), h.len()));
        for i in 0..w.len().max(h.len()) {
            match (w.get(i), h.get(i)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => {
                    let show = |v: Option<&serde_json::Value>| v.map_or("(none)".to_owned(), |v| v.to_string());
                    diff.push_str(&format!("  #{i}\n    - {}\n    + {}\n", show(a), show(b)));
                }
            }
        }
    }
    if diff.is_empty() { Ok(()) } else { Err(diff) }
}

/// The text of an expected file for `lines` (what `--bless` writes).
pub fn bless(lines: &[OutputLine]) -> String {
    lines.iter().map(|l| l.to_json() + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    fn line(topic: &str, partition: u32, value: &str) -> OutputLine {
        let r =
            Record { key: Some(b"k".to_vec()), value: Some(value.as_bytes().to_vec()), timestamp: 1, headers: vec![] };
        OutputLine::new(topic, partition, &r)
    }

    #[test]
    fn comparison_is_per_partition_in_order_and_says_what_differs() {
        let got = [line("a", 0, "1"), line("b", 0, "x"), line("a", 0, "2")];
        // Other interleaving across partitions, other formatting: equal.
        let expected = format!("{}\n{}\n\n{}\n", got[1].to_json(), got[0].to_json(), got[2].to_json());
        assert_eq!(compare(&expected, &got), Ok(()));
        assert_eq!(compare(&bless(&got), &got), Ok(()));
        let swapped = format!("{}\n{}\n{}\n", got[2].to_json(), got[0].to_json(), got[1].to_json());
        let diff = compare(&swapped, &got).unwrap_err();
        assert!(diff.starts_with("a/0: expected 2 record(s), got 2"), "{diff}");
        assert!(diff.contains("#0") && diff.contains("#1") && !diff.contains("b/0"), "{diff}");
        let diff = compare(&got[0].to_json(), &got).unwrap_err();
        assert!(diff.contains("a/0: expected 1 record(s), got 2") && diff.contains("- (none)"), "{diff}");
        assert!(diff.contains("b/0: expected 0 record(s), got 1"), "{diff}");
        assert!(compare("{", &got).unwrap_err().contains("line 1: not JSON"));
    }
}
