//! Every example's `weir test` output equals its `expected.jsonl`.
//!
//! Golden files: run with `WEIR_BLESS=1` to rewrite them, then review the
//! diff. The spec's component paths are used as written (the README command).

use std::path::Path;
use std::process::Command;

const EXAMPLES: &[&str] = &[
    "enrichment",
    "reservation",
    "customer-position",
    "sellable-inventory",
    "key-count",
    "page-views",
    "sessions",
    "order-payment",
];

pub fn run_weir_test(example: &str) -> (String, String, bool) {
    let dir = weir_tests::workspace_dir().join("guest-examples").join(example);
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["test", "--spec"])
        .arg(dir.join("app.yaml"))
        .arg("--input")
        .arg(dir.join("input.jsonl"))
        .env("WEIR_LOG", "warn")
        .output()
        .expect("run weir test");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn check_golden(example: &str) {
    let (stdout, stderr, ok) = run_weir_test(example);
    assert!(ok, "weir test failed for {example}:\n{stderr}");
    let expected_path = weir_tests::workspace_dir().join("guest-examples").join(example).join("expected.jsonl");
    if std::env::var_os("WEIR_BLESS").is_some() {
        std::fs::write(&expected_path, &stdout).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with WEIR_BLESS=1 to create it)", expected_path.display()));
    if stdout != expected {
        let diff: Vec<String> = expected
            .lines()
            .zip(stdout.lines().chain(std::iter::repeat("<missing>")))
            .enumerate()
            .filter(|(_, (e, g))| e != g)
            .map(|(i, (e, g))| format!("line {}:\n  expected {e}\n  got      {g}", i + 1))
            .collect();
        panic!(
            "{example}: weir test output differs from {} ({} vs {} lines)\n{}",
            expected_path.display(),
            stdout.lines().count(),
            expected.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn enrichment_matches_expected() {
    check_golden("enrichment");
}

#[test]
fn reservation_matches_expected() {
    check_golden("reservation");
}

#[test]
fn customer_position_matches_expected() {
    check_golden("customer-position");
}

#[test]
fn sellable_inventory_matches_expected() {
    check_golden("sellable-inventory");
}

#[test]
fn key_count_matches_expected() {
    check_golden("key-count");
}

#[test]
fn page_views_matches_expected() {
    check_golden("page-views");
}

#[test]
fn sessions_matches_expected() {
    check_golden("sessions");
}

#[test]
fn order_payment_matches_expected() {
    check_golden("order-payment");
}

#[test]
fn every_example_has_its_files() {
    for example in EXAMPLES {
        let dir = weir_tests::workspace_dir().join("guest-examples").join(example);
        for file in ["Cargo.toml", "src/lib.rs", "app.yaml", "input.jsonl", "expected.jsonl"] {
            assert!(Path::new(&dir.join(file)).exists(), "{example} lacks {file}");
        }
    }
}
