//! Hot swap: a running application gets a new component version, or a new
//! graph, without stopping and without losing or duplicating output; a
//! version that fails `init` or traps is rolled back with nothing of it
//! committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::server::{Options, Server, write_spec};

/// key-count with `{component}` and an optional extra config line.
pub fn key_count(component: &str, config: &str) -> String {
    key_count_named("key-count", "events", "counts", component, config)
}

/// The key-count spec every test builds on: application `name` counting
/// topic `events` into `counts`, with `component` and a config line.
pub fn key_count_named(name: &str, events: &str, counts: &str, component: &str, config: &str) -> String {
    format!(
        r#"name: {name}
topics: {{ {events}: 4, {counts}: 4 }}
sources:
  events: {{ topic: {events}, to: [count] }}
processors:
  count:
    component: "{component}"
    config: {{ {config} }}
    stores: [counts]
    outputs: {{ counts: counts }}
stores: {{ counts: {{}} }}
sinks:
  counts: {{ topic: {counts} }}
"#
    )
}

/// Produces to `events` from a thread until stopped; returns the stop flag and handle.
pub fn keep_producing(url: String) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    keep_producing_to(url, "events")
}

/// Produces to `topic` through the server at `url` from a thread until
/// stopped: 50 keys, 200 records a request.
pub fn keep_producing_to(url: String, topic: &str) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let topic = topic.to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut sent = 0;
        let mut n = 0u64;
        while !flag.load(Ordering::Acquire) {
            let chunk: String = (0..200)
                .map(|_| {
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    format!("{{\"key\":\"k{}\",\"value\":\"x\"}}\n", (n >> 33) % 50)
                })
                .collect();
            if weir::client::produce(&topic, &url, std::io::Cursor::new(chunk.into_bytes())).is_ok() {
                sent += 200;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    (stop, handle)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Per key: (count, version) in output order; checks counts are exactly 1..n
/// against the input topic.
pub fn checked_outputs(server: &Server) -> BTreeMap<String, Vec<(i64, i64)>> {
    checked_outputs_of(server, "events", "counts")
}

/// [`checked_outputs`] for other topic names.
pub fn checked_outputs_of(server: &Server, events: &str, counts: &str) -> BTreeMap<String, Vec<(i64, i64)>> {
    let mut n: BTreeMap<String, i64> = BTreeMap::new();
    for r in server.consume_all(events) {
        *n.entry(text(&r["key"])).or_insert(0) += 1;
    }
    let mut out: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for r in server.consume_all(counts) {
        let v = &r["value"];
        out.entry(text(&r["key"])).or_default().push((v["count"].as_i64().unwrap(), v["version"].as_i64().unwrap()));
    }
    for (key, total) in &n {
        let counts: Vec<i64> = out[key].iter().map(|(c, _)| *c).collect();
        assert_eq!(counts, (1..=*total).collect::<Vec<_>>(), "key {key}: exactly 1..{total}");
    }
    out
}

#[test]
fn swapping_v1_for_v2_under_load_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_spec(dir.path(), "v1.yaml", &key_count("{guests}/key_count.wasm", ""));
    let v2 = write_spec(dir.path(), "v2.yaml", &key_count(&weir_tests::key_count_v2().display().to_string(), ""));
    let server =
        Server::start(&dir.path().join("data"), Options { commit_interval: Some("50ms".into()), ..Options::default() });
    server.deploy(&v1);
    let (stop, producer) = keep_producing(server.url.clone());
    std::thread::sleep(Duration::from_millis(800));
    let started = std::time::Instant::now();
    weir::client::deploy(&v2, &server.url).expect("the update is accepted");
    let upload_to_running = started.elapsed();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Release);
    let sent = producer.join().unwrap();
    server.wait_idle("key-count", Duration::from_secs(60));

    let outputs = checked_outputs(&server);
    let (mut v1s, mut v2s) = (0, 0);
    for (key, seq) in &outputs {
        // Per key: version 1 up to the switch, version 2 after it, never back.
        let versions: Vec<i64> = seq.iter().map(|(_, v)| *v).collect();
        let switch = versions.iter().position(|v| *v == 2).unwrap_or(versions.len());
        assert!(
            versions[..switch].iter().all(|v| *v == 1) && versions[switch..].iter().all(|v| *v == 2),
            "key {key}: {versions:?}"
        );
        v1s += switch;
        v2s += versions.len() - switch;
    }
    assert!(v1s > 0 && v2s > 0, "both versions ran: v1 {v1s}, v2 {v2s}");
    let status = server.get("/v1/apps/key-count").unwrap();
    let update = status["swaps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(update["kind"], "component-swap");
    assert!(update["state"] == "switched" || update["state"] == "applied", "{update:#}");
    assert_eq!(update["switched"], 4);
    assert!(status["components"]["count"].as_str().unwrap().starts_with("sha256:"));
    eprintln!(
        "hot swap under load: {sent} records, v1 {v1s} / v2 {v2s} outputs, longest task pause {:.3} ms, upload-to-running {:?}",
        update["max_pause_ms"].as_f64().unwrap(),
        upload_to_running
    );
}

#[test]
fn a_version_that_traps_is_rolled_back_with_nothing_of_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_spec(dir.path(), "v1.yaml", &key_count("{guests}/key_count.wasm", ""));
    let bad = write_spec(dir.path(), "bad.yaml", &key_count("{guests}/misbehave.wasm", "always: panic"));
    let server =
        Server::start(&dir.path().join("data"), Options { commit_interval: Some("50ms".into()), ..Options::default() });
    server.deploy(&v1);
    let (stop, producer) = keep_producing(server.url.clone());
    std::thread::sleep(Duration::from_millis(500));
    let err = weir::client::deploy(&bad, &server.url).expect_err("the update must fail");
    let message = format!("{err:#}");
    assert!(message.contains("422 update-rolled-back"), "{message}");
    assert!(
        message.contains("misbehave: panic requested by record") || message.contains("trap"),
        "the guest's message: {message}"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    producer.join().unwrap();
    server.wait_idle("key-count", Duration::from_secs(60));
    // Counts exactly 1..n, all from version 1: the trapping version committed nothing.
    let outputs = checked_outputs(&server);
    assert!(outputs.values().flatten().all(|(_, v)| *v == 1));
    assert!(server.consume_all("key-count-dlq").is_empty(), "no record was blamed for the bad version");
    let status = server.get("/v1/apps/key-count").unwrap();
    assert_eq!(status["swaps"].as_array().unwrap().last().unwrap()["state"], "rolled-back");
    assert_eq!(status["state"], "running");
    // A restart runs the version that was rolled back to.
    drop(server);
    let server = Server::start(&dir.path().join("data"), Options::default());
    server.produce("events", "{\"key\":\"after\",\"value\":\"x\"}\n").unwrap();
    server.wait_idle("key-count", Duration::from_secs(30));
    let after: Vec<Value> = server.consume_all("counts").into_iter().filter(|r| r["key"] == "after").collect();
    assert_eq!(after[0]["value"]["version"], 1);
}

#[test]
fn a_version_whose_init_fails_is_refused_and_the_old_one_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_spec(dir.path(), "v1.yaml", &key_count("{guests}/key_count.wasm", ""));
    let bad = write_spec(dir.path(), "bad.yaml", &key_count("{guests}/misbehave.wasm", "init: fail"));
    let server = Server::start(&dir.path().join("data"), Options::default());
    server.deploy(&v1);
    let err = weir::client::deploy(&bad, &server.url).expect_err("refused");
    let message = format!("{err:#}");
    assert!(
        message.contains("422 update-rolled-back") && message.contains("init refused: configured to fail"),
        "{message}"
    );
    server.produce("events", "{\"key\":\"a\",\"value\":\"x\"}\n").unwrap();
    server.wait_idle("key-count", Duration::from_secs(30));
    let counts = server.consume_all("counts");
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0]["value"]["version"], 1);
}

#[test]
fn a_graph_change_restarts_on_the_new_graph_keeping_state() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_spec(dir.path(), "v1.yaml", &key_count("{guests}/key_count.wasm", ""));
    let bigger = key_count("{guests}/key_count.wasm", "").replace(
        "stores: { counts: {} }",
        "  echo:\n    component: \"{guests}/passthrough.wasm\"\n    outputs: { out: echoed }\nstores: { counts: {} }",
    );
    let bigger = bigger
        .replace("to: [count] }", "to: [count, echo] }")
        .replace("sinks:\n", "sinks:\n  echoed: { topic: echoed }\n");
    let v2 = write_spec(dir.path(), "v2.yaml", &bigger);
    let server = Server::start(&dir.path().join("data"), Options::default());
    server.deploy(&v1);
    server.produce("events", "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"a\",\"value\":\"2\"}\n").unwrap();
    server.wait_idle("key-count", Duration::from_secs(30));
    weir::client::deploy(&v2, &server.url).expect("graph change accepted");
    server.produce("events", "{\"key\":\"a\",\"value\":\"3\"}\n").unwrap();
    server.wait_idle("key-count", Duration::from_secs(30));
    let counts: Vec<i64> = server.consume_all("counts").iter().map(|r| r["value"]["count"].as_i64().unwrap()).collect();
    assert_eq!(counts, [1, 2, 3], "state survived the restart");
    assert_eq!(server.consume_all("echoed").len(), 1, "the new processor runs from the switch on");
    let status = server.get("/v1/apps/key-count").unwrap();
    assert_eq!(status["swaps"].as_array().unwrap().last().unwrap()["kind"], "restart");
}

#[test]
fn an_incompatible_graph_change_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_spec(dir.path(), "v1.yaml", &key_count("{guests}/key_count.wasm", ""));
    let resharded = write_spec(
        dir.path(),
        "v2.yaml",
        &key_count("{guests}/key_count.wasm", "").replace("events: 4, counts: 4", "events: 8, counts: 8"),
    );
    let server = Server::start(&dir.path().join("data"), Options::default());
    server.deploy(&v1);
    let before = server.wait_idle("key-count", Duration::from_secs(30));
    let err = weir::client::deploy(&resharded, &server.url).expect_err("refused");
    let message = format!("{err:#}");
    assert!(message.contains("422") && message.contains("topic `events` exists with 4 partition(s)"), "{message}");
    let after = server.get("/v1/apps/key-count").unwrap();
    assert_eq!(after["state"], "running", "{after:#}");
    assert_eq!(after["components"], before["components"], "the running components are untouched: {after:#}");
    assert_eq!(after["swaps"], before["swaps"], "no swap was started: {after:#}");
}
