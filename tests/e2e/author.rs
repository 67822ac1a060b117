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

/// A nested cargo (or weir running cargo) builds into [`target_dir`], with
/// none of the outer build's settings.
fn isolated(cmd: &mut Command) -> &mut Command {
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"]
    {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_TARGET_DIR", target_dir())
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let Output { status, stdout, stderr } = isolated(cmd).output().expect("runs");
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
        assert!(out.contains("sha256") && out.contains("contract weir:processor@0.3.0"), "{out}");
        let (ok, _, err) = weir(&dir, &["test", "--expect", "expected.jsonl"]);
        assert!(ok && err.contains("records match expected.jsonl"), "{template}: {err}");
    }

    // A trap in the guest's own code names its file and line (the crate
    // keeps line tables in release builds).
    let stateless = root.path().join("my-stateless");
    let lib = stateless.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    let trapping = "let order: Order = rec.json()?;\n        if order.amount == 20 {\n            core::arch::wasm32::unreachable();\n        }";
    std::fs::write(&lib, code.replace("let order: Order = rec.json()?;", trapping)).unwrap();
    let (ok, _, err) = weir(&stateless, &["build"]);
    assert!(ok, "{err}");
    let (_, out, _) = weir(&stateless, &["test"]);
    let dead = out.lines().find(|l| l.contains("\"o2\"")).unwrap_or_else(|| panic!("o2 is dead-lettered: {out}"));
    // The `unreachable()` call's line, or the `if` just above it (where the
    // line tables may place the branch).
    let line = std::fs::read_to_string(&lib).unwrap().lines().position(|l| l.contains("unreachable()")).unwrap() + 1;
    let at = |n: usize| format!("src/lib.rs:{n}");
    assert!(dead.contains("unreachable"), "{dead}");
    assert!(dead.contains(&at(line)) || dead.contains(&at(line - 1)), "the trap names line {line}: {dead}");

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

/// `weir dev` over a stateful crate, fed on stdin: outputs appear; an edit
/// is rebuilt and swapped in with the store kept; a compile error shows
/// rustc's message and the old version goes on; a version that panics is
/// rolled back with the guest's message.
#[test]
fn weir_dev_rebuilds_and_swaps_on_every_edit_keeping_state() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let root = tempfile::tempdir().unwrap();
    assert!(weir(root.path(), &["new", "dev-count", "--template", "stateful"]).0);
    let dir = root.path().join("dev-count");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    let mut child = isolated(cmd.current_dir(&dir).args(["dev", "--stdin"]))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (out_tx, out_rx) = mpsc::channel::<String>();
    let (err_tx, err_rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| drop(out_tx.send(l))));
    std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).for_each(|l| drop(err_tx.send(l))));
    let mut stdin = child.stdin.take().unwrap();
    let _child = Kill(child);
    let mut stderr_seen = String::new();
    fn wait_err(seen: &mut String, what: &str, rx: &mpsc::Receiver<String>) {
        let deadline = Instant::now() + Duration::from_secs(240);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(what) {
                    return;
                }
            }
        }
        panic!("weir dev never said {what:?}; it said:\n{seen}");
    }
    let next_output = |rx: &mpsc::Receiver<String>| -> serde_json::Value {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("an output record");
        serde_json::from_str(&line).unwrap()
    };
    let mut send = |ts: i64| {
        writeln!(stdin, "{{\"topic\":\"events\",\"key\":\"alice\",\"value\":\"x\",\"timestamp\":{ts}}}").unwrap();
        stdin.flush().unwrap();
    };

    wait_err(&mut stderr_seen, "watching", &err_rx);
    send(1);
    assert_eq!(next_output(&out_rx)["value"], serde_json::json!({ "key": "alice", "count": 1 }));

    // An edit: rebuilt, swapped in, the count goes on from the store.
    let lib = dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, code.replace("Counted { key, count }", "Counted { key: format!(\"{key}!\"), count }"))
        .unwrap();
    wait_err(&mut stderr_seen, "updated dev-count", &err_rx);
    send(2);
    assert_eq!(next_output(&out_rx)["value"], serde_json::json!({ "key": "alice!", "count": 2 }));

    // A compile error: rustc's message, and the running version goes on.
    std::fs::write(&lib, code.replace("let count = counts", "let count = countz")).unwrap();
    wait_err(&mut stderr_seen, "the previous version keeps running", &err_rx);
    assert!(stderr_seen.contains("cannot find value `countz`"), "{stderr_seen}");
    send(3);
    assert_eq!(next_output(&out_rx)["value"], serde_json::json!({ "key": "alice!", "count": 3 }));

    // A version that panics on its first record: rolled back, the guest's
    // message shown, the record processed by the version before it.
    std::fs::write(
        &lib,
        code.replace(
            "let key = rec.key_str()?.to_owned();",
            "let key: String = if rec.offset() >= 0 { panic!(\"dev-count v3 is broken\") } else { String::new() };",
        ),
    )
    .unwrap();
    wait_err(&mut stderr_seen, "updated dev-count", &err_rx);
    send(4);
    wait_err(&mut stderr_seen, "rolled back", &err_rx);
    wait_err(&mut stderr_seen, "dev-count v3 is broken", &err_rx);
    assert_eq!(next_output(&out_rx)["value"], serde_json::json!({ "key": "alice!", "count": 4 }));
}
