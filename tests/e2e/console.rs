//! The web console in a real browser: Debian's headless Chromium driven by
//! Playwright (`playwright-core` from npm, in tests/console) against a real
//! `weir serve` with an API token, running the reservation example. The
//! browser's steps and what each asserts are in
//! tests/console/console.test.mjs; this test starts the server, deploys,
//! runs the steps, then checks through the API that what the page did
//! happened. Screenshots: target/console-screenshots/.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::server::{Options, Server};

const TOKEN: &str = "console-s3cret";

/// `npm ci` in tests/console unless playwright-core is there already (once
/// at a time: the console tests of this binary may run in parallel).
fn playwright(dir: &Path) {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join("node_modules/playwright-core/package.json").is_file() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .expect("the console test needs npm (./dev test installs Node.js)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// The reservation component with one custom section more: other bytes
/// (another sha256), the same code, so a swap to it is a real swap.
fn second_build(component: &Path, out: &Path) {
    let mut bytes = std::fs::read(component).expect("the reservation component (cargo guests)");
    let name = b"weir-console-test";
    let payload = b"v2";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload);
    bytes.push(0); // custom section
    bytes.push(section.len() as u8); // one LEB128 byte: < 128
    bytes.extend_from_slice(&section);
    std::fs::write(out, bytes).unwrap();
}

/// Runs tests/console/console.test.mjs in Debian's headless Chromium with
/// `env` (a scenario's inputs, see the script), screenshots into
/// `screenshots`; fails the test with the script's output and the server's
/// log unless every step passed.
pub fn browser_steps(env: &[(&str, &str)], screenshots: &Path, server: &Server) {
    let chromium = std::env::var("WEIR_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "the console test runs Debian's Chromium at {chromium}: `apt-get install chromium` (./dev test does)"
    );
    let console_tests = weir_tests::workspace_dir().join("tests/console");
    playwright(&console_tests);
    let mut node = Command::new("node");
    node.arg(console_tests.join("console.test.mjs"))
        .current_dir(&console_tests)
        .env("WEIR_SCREENSHOTS", screenshots)
        .env("WEIR_CHROMIUM", &chromium);
    for (k, v) in env {
        node.env(k, v);
    }
    let run = node.output().expect("the console test needs Node.js (./dev test installs it)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && stdout.contains("console test passed"),
        "the browser steps failed (screenshot: {}/failure.png):\n{stdout}\n{stderr}\nserver log:\n{}",
        screenshots.display(),
        server.log_tail()
    );
}

#[test]
fn the_console_shows_and_drives_the_reservation_example_in_chromium() {
    let workspace = weir_tests::workspace_dir();

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        Options { env: vec![("WEIR_API_TOKEN".into(), TOKEN.into())], ..Options::default() },
    );
    let example = workspace.join("guest-examples/reservation");
    let weir = env!("CARGO_BIN_EXE_weir");
    let out = Command::new(weir)
        .args(["deploy"])
        .arg(example.join("app.yaml"))
        .args(["--server", &server.url])
        .env("WEIR_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "deploy: {}", String::from_utf8_lossy(&out.stderr));
    let input = std::fs::read_to_string(example.join("input.jsonl")).unwrap();
    let adjustments: String =
        input.lines().filter(|l| l.contains(r#""topic": "adjustments""#)).map(|l| format!("{l}\n")).collect();
    let mut produce = Command::new(weir)
        .args(["produce", "adjustments", "--server", &server.url])
        .env("WEIR_API_TOKEN", TOKEN)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut produce.stdin.take().unwrap(), adjustments.as_bytes()).unwrap();
    assert!(produce.wait().unwrap().success());
    server.wait_idle("reservation", Duration::from_secs(30));

    let v2 = dir.path().join("reservation-v2.wasm");
    second_build(&weir_tests::guest("reservation"), &v2);
    let screenshots = workspace.join("target/console-screenshots/reservation");
    let _ = std::fs::remove_dir_all(&screenshots);
    let v2 = v2.to_string_lossy().into_owned();
    browser_steps(&[("WEIR_URL", &server.url), ("WEIR_TOKEN", TOKEN), ("WEIR_V2_WASM", &v2)], &screenshots, &server);
    for shot in [
        "01-overview-read-only",
        "02-wrong-token-refused",
        "04-app-tasks-moving",
        "05-dead-letter-trap",
        "06-swap-in-history",
        "08-deleted",
    ] {
        assert!(screenshots.join(format!("{shot}.png")).is_file(), "screenshot {shot} missing");
    }

    // What the page did, seen through the API.
    let components = server.get("/v1/components/reservation").unwrap();
    let versions: Vec<&str> =
        components["versions"].as_array().into_iter().flatten().filter_map(|v| v["version"].as_str()).collect();
    assert_eq!(versions, ["2"], "the page uploaded reservation@2: {components}");
    let status = server.get("/v1/apps/reservation");
    assert!(status.is_err(), "the page deleted the application, yet it answers: {status:?}");
}
