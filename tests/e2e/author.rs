//! The authoring loop as a new user runs it: `weir new` for each template,
//! `cargo test` (the native unit test), `weir build`, `weir test --expect`;
//! a diff when the output changes, `--bless` to accept it, rustc's own
//! message when the code does not compile, and refusals of bad names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the new crates build: one target dir for all (their dependencies
/// are the same), under $HOME's cache when there is one.
fn target_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/weir-author-target"),
        None => std::env::temp_dir().join("weir-author-target"),
    }
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    // The outer build's settings must not reach the nested cargo.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"]
    {
        cmd.env_remove(var);
    }
    let Output { status, stdout, stderr } = cmd.env("CARGO_TARGET_DIR", target_dir()).output().expect("runs");
    (status.success(), String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

fn weir(dir: &Path, args: &[&str]) -> (bool, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_weir")).current_dir(dir).args(args))
}

#[test]
fn new_build_and_test_pass_for_every_template_and_say_what_changed() {
    let root = tempfile::tempdir().unwrap();
    for template in ["stateless", "stateful", "windowed"] {
        let name = format!("my-{template}");
        let (ok, out, err) = weir(root.path(), &["new", &name, "--template", template]);
        assert!(ok, "weir new {template}: {err}");
        assert!(out.contains("created my-"), "{out}");
        let dir = root.path().join(&name);
        for file in ["Cargo.toml", "src/lib.rs", "app.yaml", "input.jsonl", "expected.jsonl"] {
            assert!(dir.join(file).is_file(), "{template}: {file}");
        }
        let (ok, _, err) = run(Command::new(env!("CARGO")).current_dir(&dir).args(["test", "-q"]));
        assert!(ok, "{template}: the native unit test passes: {err}");
        let (ok, out, err) = weir(&dir, &["build"]);
        assert!(ok, "{template}: weir build: {err}");
        let crate_name = name.replace('-', "_");
        assert!(out.contains(&format!("target/wasm32-wasip2/release/{crate_name}.wasm")), "{out}");
        assert!(out.contains("sha256") && out.contains("contract weir:processor@0.1.0"), "{out}");
        let (ok, _, err) = weir(&dir, &["test", "--expect", "expected.jsonl"]);
        assert!(ok && err.contains("records match expected.jsonl"), "{template}: {err}");
    }

    // A changed output: a readable diff and exit 1; --bless accepts it.
    let dir = root.path().join("my-stateful");
    let expected = std::fs::read_to_string(dir.join("expected.jsonl")).unwrap();
    std::fs::write(dir.join("expected.jsonl"), expected.replace("\"count\":2", "\"count\":7")).unwrap();
    let (ok, _, err) = weir(&dir, &["test", "--expect", "expected.jsonl"]);
    assert!(!ok, "{err}");
    assert!(err.contains("output differs from expected.jsonl") && err.contains("counts/1"), "{err}");
    assert!(err.contains("\"count\":7") && err.contains("\"count\":2"), "the diff shows both: {err}");
    let (ok, _, err) = weir(&dir, &["test", "--bless"]);
    assert!(ok && err.contains("wrote"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("expected.jsonl")).unwrap(), expected);
    let (ok, _, err) = weir(root.path(), &["test", "my-stateful", "--expect", "my-stateful/expected.jsonl"]);
    assert!(ok, "a folder argument works too: {err}");

    // Code that does not compile: rustc's message, unchanged.
    let lib = dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, code.replace("let count = counts", "let count = countz")).unwrap();
    let (ok, _, err) = weir(&dir, &["build"]);
    assert!(!ok, "{err}");
    assert!(err.contains("cannot find value `countz`") && err.contains("src/lib.rs"), "{err}");

    // Names and folders weir new refuses.
    let (ok, _, err) = weir(root.path(), &["new", "my-stateful"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = weir(root.path(), &["new", "9lives"]);
    assert!(!ok && err.contains("not a usable name"), "{err}");
}
