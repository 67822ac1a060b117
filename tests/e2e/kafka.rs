//! The Kafka backend against a real Apache Kafka (see `broker.rs`): the
//! examples, instances joining, leaving and dying with their tasks' state
//! following through changelogs, fencing, broker outages and restarts,
//! co-partitioning, queries across instances, hot swap, at-least-once.
//!
//! Exactly-once is asserted strictly: outputs are read read_committed, and
//! per key the counts of key-count are exactly 1..n — an aborted
//! transaction's records must stay invisible, a repeat is a failure.
//!
//! Tests on the shared broker use names of their own ([`KeyCountApp`]);
//! the examples (fixed topic names) and the tests that freeze or kill the
//! broker start a broker each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::broker::Kafka;
use crate::broker::{KafkaBroker, free_port, shared, unique};
use crate::server::{Options, Rng, Server, write_spec};

/// A `weir serve --brokers` on `kafka`, committing every 100 ms, with a
/// 6 s group session (a dead instance's tasks move within ~6 s).
pub fn kafka_server(data_dir: &Path, kafka: &Kafka) -> Server {
    kafka_server_with(data_dir, kafka, &[])
}

/// [`kafka_server`] with more `WEIR_*` variables.
pub fn kafka_server_with(data_dir: &Path, kafka: &Kafka, env: &[(&str, &str)]) -> Server {
    let mut vars = vec![
        ("WEIR_BROKERS".to_owned(), kafka.bootstrap.clone()),
        ("WEIR_SESSION_TIMEOUT".to_owned(), "6s".to_owned()),
    ];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Server::start(data_dir, Options { commit_interval: Some("100ms".into()), env: vars, ..Options::default() })
}

/// Polls `f` until it gives a value, or panics naming `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Committed position (next offset) of every input partition the
/// instances' tasks and global tables own.
fn committed_positions(servers: &[&Server], app: &str) -> Option<BTreeMap<(String, u64), i64>> {
    let mut positions = BTreeMap::new();
    for server in servers {
        let status = server.get(&format!("/v1/apps/{app}")).ok()?;
        let tasks = status["tasks"].as_array()?;
        assert!(!tasks.iter().any(|t| t["state"] == "failed"), "a task failed: {status:#}");
        let task_inputs = tasks.iter().flat_map(|t| t["inputs"].as_array().into_iter().flatten());
        for input in task_inputs.chain(status["global_inputs"].as_array().into_iter().flatten()) {
            let key = (input["topic"].as_str()?.to_owned(), input["partition"].as_u64()?);
            positions.insert(key, input["committed"].as_i64()?);
        }
    }
    Some(positions)
}

/// Waits until the application has committed every record of its inputs
/// (`topics`, plus every input its tasks report: repartition topics too).
/// Positions are read before the topics' records, so records produced by
/// processing anything uncommitted cannot slip past. Committed records
/// are compared, not log ends: a transactional input's log ends with a
/// commit marker that a consumer's position need not pass.
pub fn wait_drained(kafka: &Kafka, servers: &[&Server], app: &str, topics: &[&str]) {
    let what = format!("{app} to commit all of {topics:?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_records = LastRecords::default();
    while drained(kafka, servers, app, topics, &mut last_records).is_none() {
        if Instant::now() > deadline {
            let logs: Vec<String> = servers.iter().map(|s| s.log_tail()).collect();
            let statuses: Vec<String> = servers
                .iter()
                .map(|s| format!("{:#}", s.get(&format!("/v1/apps/{app}")).unwrap_or_default()))
                .collect();
            let ends: Vec<String> = topics.iter().map(|t| format!("{t}: {:?}", kafka.ends(t))).collect();
            panic!(
                "timed out waiting for {what}\nends: {ends:?}\nstatus:\n{}\nlogs:\n{}",
                statuses.join("\n-----\n"),
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per (topic, partition): the offset of the last committed record seen
/// and where to read on from (records only grow, so each poll reads only
/// what is new).
#[derive(Default)]
struct LastRecords(BTreeMap<(String, u64), (i64, i64)>);

impl LastRecords {
    fn refresh(&mut self, kafka: &Kafka, topic: &str) {
        let partitions = kafka.ends(topic);
        for (p, end) in partitions {
            let entry = self.0.entry((topic.to_owned(), p)).or_insert((-1, 0));
            if entry.1 >= end {
                continue;
            }
            let read = weir::backend::kafka::ReadOptions {
                from: entry.1,
                partition: Some(p as u32),
                offsets: true,
                ..Default::default()
            };
            let mut out = Vec::new();
            weir::backend::kafka::consume(&kafka.bootstrap, topic, &read, &mut out).unwrap();
            for line in String::from_utf8(out).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                entry.0 = entry.0.max(v["offset"].as_i64().unwrap());
            }
            // Everything below the end now is decided (committed or
            // aborted) unless a transaction is still open; read again from
            // just past the last committed record.
            entry.1 = entry.0 + 1;
        }
    }
}

fn drained(
    kafka: &Kafka,
    servers: &[&Server],
    app: &str,
    topics: &[&str],
    last_records: &mut LastRecords,
) -> Option<()> {
    let positions = committed_positions(servers, app)?;
    let mut all: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    all.extend(positions.keys().map(|(t, _)| t.clone()));
    all.sort();
    all.dedup();
    for topic in &all {
        last_records.refresh(kafka, topic);
    }
    for ((topic, p), (last, _)) in &last_records.0 {
        if *last >= 0 && positions.get(&(topic.clone(), *p)).copied().unwrap_or(-1) <= *last {
            return None;
        }
    }
    Some(())
}

/// Output lines as the multiset `weir test` prints (sorted: order between
/// partitions is not defined on Kafka).
fn sorted_lines(values: &[Value]) -> Vec<String> {
    let mut lines: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    lines.sort();
    lines
}

/// Runs an example on a broker of its own (its topic names are fixed): its
/// input produced one record at a time, each processed to the end
/// (repartition hops included) before the next, as `weir test` feeds them;
/// then every output topic is compared with `expected.jsonl`. (Fed all at
/// once, records of different partitions may be processed in any order —
/// Kafka orders only within a partition — and the examples' stock and
/// position outcomes depend on that order.)
fn run_example(example: &str) -> (KafkaBroker, Server, tempfile::TempDir) {
    let kafka = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let server = kafka_server(&dir.path().join("data"), &kafka);
    let example_dir = weir_tests::workspace_dir().join("guest-examples").join(example);
    server.deploy(&example_dir.join("app.yaml"));
    let spec = std::fs::read_to_string(example_dir.join("app.yaml")).unwrap();
    let app = spec.lines().find_map(|l| l.strip_prefix("name: ")).unwrap().trim().to_owned();
    let input = std::fs::read_to_string(example_dir.join("input.jsonl")).unwrap();
    let mut produced: Vec<String> = Vec::new();
    for line in input.lines().filter(|l| !l.trim().is_empty()) {
        let topic = serde_json::from_str::<Value>(line).unwrap()["topic"].as_str().unwrap().to_owned();
        kafka.produce(&topic, line);
        produced.push(topic);
        produced.sort();
        produced.dedup();
        let topics: Vec<&str> = produced.iter().map(String::as_str).collect();
        wait_drained(&kafka, &[&server], &app, &topics);
    }
    let expected = std::fs::read_to_string(example_dir.join("expected.jsonl")).unwrap();
    let expected: Vec<Value> = expected.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut topics: Vec<String> = expected.iter().map(|v| v["topic"].as_str().unwrap().to_owned()).collect();
    topics.push(format!("{app}-dlq"));
    topics.sort();
    topics.dedup();
    for topic in topics {
        let want: Vec<Value> = expected.iter().filter(|v| v["topic"] == topic.as_str()).cloned().collect();
        let got = if want.is_empty() && !kafka.topic_exists(&topic) { Vec::new() } else { kafka.consume(&topic) };
        assert_eq!(
            sorted_lines(&got),
            sorted_lines(&want),
            "{example}: topic {topic} on Kafka differs from expected.jsonl\n{}",
            server.log_tail()
        );
    }
    (kafka, server, dir)
}

#[test]
fn enrichment_on_kafka_matches_expected_and_dead_letters_the_wrong_partition() {
    let (kafka, server, _dir) = run_example("enrichment");
    // Its input has one order a producer wrote to partition 0 although
    // murmur2 puts its key elsewhere: counted, warned about, dead-lettered.
    let status = server.get("/v1/apps/enrichment").unwrap();
    let mismatches: u64 =
        status["tasks"].as_array().unwrap().iter().map(|t| t["partition_mismatches"].as_u64().unwrap()).sum();
    assert_eq!(mismatches, 1, "{status:#}");
    let log = std::fs::read_to_string(server.data_dir.with_extension("log")).unwrap();
    assert!(log.contains("record at orders/0@") && log.contains("did not use Kafka's default partitioner"), "{log}");
    let dlq = kafka.consume("enrichment-dlq");
    let kind = |r: &Value| r["headers"].as_array().unwrap().iter().find(|h| h[0] == "weir.error.kind").cloned();
    let mismatched: Vec<&Value> =
        dlq.iter().filter(|r| kind(r).is_some_and(|h| h[1] == "partition-mismatch")).collect();
    assert_eq!(mismatched.len(), 1, "{dlq:#?}");
}

#[test]
fn reservation_on_kafka_matches_expected() {
    run_example("reservation");
}

#[test]
fn customer_position_on_kafka_matches_expected() {
    run_example("customer-position");
}

#[test]
fn sellable_inventory_on_kafka_matches_expected() {
    run_example("sellable-inventory");
}

#[test]
fn key_count_on_kafka_matches_expected() {
    run_example("key-count");
}

/// Windows on Kafka: the same closed windows as `weir test`, and the window
/// store's changelog is compacted and deleted after the windows' retention
/// plus a day.
#[test]
fn page_views_on_kafka_matches_expected_and_its_window_changelog_expires() {
    let (kafka, _server, _dir) = run_example("page-views");
    let config = kafka.topic_config("page-views-views-changelog");
    assert_eq!(config.get("cleanup.policy").map(String::as_str), Some("compact,delete"), "{config:?}");
    let day = 24 * 60 * 60 * 1000;
    assert_eq!(config.get("retention.ms"), Some(&(11 * 60 * 1000 + day).to_string()), "{config:?}");
    let plain = kafka.topic_config("page-views-count.timers-changelog");
    assert_eq!(plain.get("cleanup.policy").map(String::as_str), Some("compact"), "{plain:?}");
}

#[test]
fn sessions_on_kafka_matches_expected() {
    run_example("sessions");
}

#[test]
fn order_payment_on_kafka_matches_expected() {
    run_example("order-payment");
}

/// A key-count application with names of its own (safe on the shared broker).
pub struct KeyCountApp {
    pub name: String,
    pub events: String,
    pub counts: String,
    pub spec: PathBuf,
}

impl KeyCountApp {
    /// key-count v1, exactly-once, 4 partitions; `head` goes first in the
    /// spec (e.g. `processing_guarantee: at-least-once`).
    pub fn new(dir: &Path, head: &str) -> KeyCountApp {
        KeyCountApp::with_component(dir, head, "{guests}/key_count.wasm", "spec.yaml")
    }

    pub fn with_component(dir: &Path, head: &str, component: &str, file: &str) -> KeyCountApp {
        let name = unique("key-count");
        KeyCountApp::named(dir, &name, head, component, file)
    }

    /// The same application (names) with another component, as another spec file.
    pub fn version(&self, dir: &Path, component: &str, file: &str) -> KeyCountApp {
        KeyCountApp::named(dir, &self.name, "", component, file)
    }

    fn named(dir: &Path, name: &str, head: &str, component: &str, file: &str) -> KeyCountApp {
        let (events, counts) = (format!("{name}-events"), format!("{name}-counts"));
        let yaml = format!("{head}\n{}", crate::hot_swap::key_count_named(name, &events, &counts, component, ""));
        KeyCountApp { name: name.to_owned(), events, counts, spec: write_spec(dir, file, &yaml) }
    }

    /// Waits until `servers` have committed every record of the input.
    pub fn wait_drained(&self, kafka: &Kafka, servers: &[&Server]) {
        wait_drained(kafka, servers, &self.name, &[&self.events]);
    }

    /// Asserts that, per key, the committed counts are exactly 1..n, where
    /// n is how many records of the key the input topic holds.
    pub fn assert_exactly_once(&self, kafka: &Kafka) -> usize {
        let mut sent: BTreeMap<String, i64> = BTreeMap::new();
        for r in kafka.consume(&self.events) {
            *sent.entry(r["key"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        kafka.wait_decided(&self.counts);
        let per_key = counts_per_key(kafka, &self.counts);
        assert_eq!(per_key.keys().collect::<Vec<_>>(), sent.keys().collect::<Vec<_>>(), "every key has counts");
        for (key, counts) in &per_key {
            let n = sent[key];
            assert_eq!(counts, &(1..=n).collect::<Vec<_>>(), "key {key}: each count exactly once, in order");
        }
        sent.values().sum::<i64>() as usize
    }
}

/// `rounds` records for each of `keys` keys, as JSONL.
pub fn events(keys: usize, rounds: usize, round0: usize) -> String {
    let mut lines = Vec::new();
    for round in round0..round0 + rounds {
        for k in 0..keys {
            lines.push(format!("{{\"key\":\"k{k}\",\"value\":\"{round}\"}}"));
        }
    }
    lines.join("\n")
}

/// Per key, the counts `key-count` emitted (read_committed), in partition order.
pub fn counts_per_key(kafka: &Kafka, topic: &str) -> BTreeMap<String, Vec<i64>> {
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in kafka.consume(topic) {
        per_key.entry(r["key"].as_str().unwrap().to_owned()).or_default().push(r["value"]["count"].as_i64().unwrap());
    }
    per_key
}

/// The tasks an instance runs (restored and started).
pub fn owned_tasks(server: &Server, app: &str) -> Vec<String> {
    let Ok(status) = server.get(&format!("/v1/apps/{app}")) else { return Vec::new() };
    let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
    tasks.iter().filter(|t| t["state"] == "running").map(|t| t["id"].as_str().unwrap().to_owned()).collect()
}

/// Waits until the instances' running tasks are all 4, split as `split` says.
pub fn wait_tasks(servers: &[&Server], app: &str, what: &str, split: impl Fn(&[usize]) -> bool) {
    wait_for(Duration::from_secs(90), what, || {
        let owned: Vec<usize> = servers.iter().map(|s| owned_tasks(s, app).len()).collect();
        (owned.iter().sum::<usize>() == 4 && split(&owned)).then_some(())
    });
}

/// Produces `keys` keys round-robin straight to Kafka from a thread until
/// stopped, 100 records every 20 ms.
pub fn keep_producing(kafka: &Kafka, topic: &str, keys: usize) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, bootstrap, topic) = (stop.clone(), kafka.bootstrap.clone(), topic.to_owned());
    let handle = std::thread::spawn(move || {
        let kafka = Kafka { bootstrap };
        let mut sent = 0;
        while !flag.load(Ordering::Acquire) {
            let chunk: Vec<String> =
                (sent..sent + 100).map(|i| format!("{{\"key\":\"k{}\",\"value\":\"{i}\"}}", i % keys)).collect();
            kafka.produce(&topic, &chunk.join("\n"));
            sent += 100;
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    });
    (stop, handle)
}

#[test]
fn instances_join_leave_cleanly_and_die_and_their_tasks_move_with_their_state() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    let first = kafka_server(&dir.path().join("first"), kafka);
    first.deploy(&app.spec);
    kafka.produce(&app.events, &events(20, 5, 0));
    app.wait_drained(kafka, &[&first]);
    wait_tasks(&[&first], &app.name, "the first instance, alone, to own every task", |_| true);

    // A second instance joins: tasks move, their state restored from the
    // changelogs on the second instance.
    let mut second = kafka_server(&dir.path().join("second"), kafka);
    second.deploy(&app.spec);
    wait_tasks(&[&first, &second], &app.name, "tasks to spread over both instances", |o| o.iter().all(|n| *n > 0));
    let restored: u64 = second.get(&format!("/v1/apps/{}", app.name)).unwrap()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["restore"][0].as_u64().unwrap_or(0))
        .sum();
    assert!(restored > 0, "the moved tasks restored their stores from the changelog");
    kafka.produce(&app.events, &events(20, 5, 5));
    app.wait_drained(kafka, &[&first, &second]);

    // The second leaves cleanly (SIGTERM: final commit, LeaveGroup): the
    // first takes every task at once, without waiting out a session.
    second.stop();
    wait_tasks(&[&first], &app.name, "the first to own every task again", |_| true);
    kafka.produce(&app.events, &events(20, 2, 10));
    app.wait_drained(kafka, &[&first]);
    // ... and comes back on its data dir (local state and checkpoints).
    second.restart();
    wait_tasks(&[&first, &second], &app.name, "tasks to spread again", |o| o.iter().all(|n| *n > 0));

    // The first dies (kill -9): the survivor takes its tasks once its
    // session expires, restores, and goes on.
    let mut first = first;
    first.kill();
    wait_tasks(&[&second], &app.name, "the survivor to own every task", |_| true);
    kafka.produce(&app.events, &events(20, 3, 12));
    app.wait_drained(kafka, &[&second]);
    assert_eq!(app.assert_exactly_once(kafka), 20 * 15);
}

#[test]
fn three_instances_joining_leaving_and_dying_under_load_count_each_record_once() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    // One group member each: 3 members share the 4 partitions (with two
    // workers each, 6 members, the range assignor leaves two without any).
    let one_worker = [("WEIR_WORKERS", "1")];
    let server = |name: &str| kafka_server_with(&dir.path().join(name), kafka, &one_worker);
    let a = server("a");
    a.deploy(&app.spec);
    let (stop, producer) = keep_producing(kafka, &app.events, 40);
    std::thread::sleep(Duration::from_secs(2));
    let mut b = server("b");
    b.deploy(&app.spec);
    let mut c = server("c");
    c.deploy(&app.spec);
    wait_tasks(&[&a, &b, &c], &app.name, "tasks over three instances", |o| o.iter().all(|n| *n > 0));
    std::thread::sleep(Duration::from_secs(2));
    b.stop(); // leaves cleanly
    wait_tasks(&[&a, &c], &app.name, "tasks over the two left", |_| true);
    std::thread::sleep(Duration::from_secs(1));
    c.kill(); // dies with work in flight
    wait_tasks(&[&a], &app.name, "the last instance to own every task", |_| true);
    b.restart(); // and one comes back
    wait_tasks(&[&a, &b], &app.name, "tasks over a and b", |o| o.iter().all(|n| *n > 0));
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    let sent = producer.join().unwrap();
    app.wait_drained(kafka, &[&a, &b]);
    assert_eq!(app.assert_exactly_once(kafka), sent);
}

#[test]
fn kill_9_during_open_transactions_leaves_read_committed_counts_exactly_1_to_n() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    let mut server = kafka_server(&dir.path().join("data"), kafka);
    server.deploy(&app.spec);
    let mut rng = Rng::new("kafka-kill-9");
    let (keys, rounds) = (50, 20);
    for round in 0..rounds {
        kafka.produce(&app.events, &events(keys, 1, round));
        // Kill while the batch is in flight: transactions are open.
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        server.kill();
        server.restart();
    }
    app.wait_drained(kafka, &[&server]);
    assert_eq!(app.assert_exactly_once(kafka), keys * rounds);
    // The aborted transactions' records are in the log (so a kill did hit
    // open transactions) and read_committed hides them.
    let all = kafka.consume_uncommitted(&app.counts).len();
    eprintln!("kill -9 x{rounds}: {all} records in the log, {} committed", keys * rounds);
}

#[test]
fn a_co_partitioning_mismatch_with_the_broker_is_refused_at_deploy() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    weir::backend::kafka::create_topics(
        &kafka.bootstrap,
        &[weir::backend::kafka::TopicRequest {
            name: app.events.clone(),
            partitions: 2,
            compact: false,
            retention_ms: None,
        }],
    )
    .unwrap();
    let server = kafka_server(&dir.path().join("data"), kafka);
    let err = weir::client::deploy(&app.spec, &server.url).expect_err("refused");
    let message = format!("{err:#}");
    let want = format!("topic `{}` exists with 2 partition(s), the application needs 4", app.events);
    assert!(message.contains("422") && message.contains(&want), "{message}");
    assert!(!kafka.topic_exists(&app.counts), "nothing was created for the refused application");
}

#[test]
fn the_broker_unreachable_at_start_is_a_clear_error_and_frozen_mid_run_loses_and_repeats_nothing() {
    let kafka = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    // At start: no broker on this port.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let lonely = Server::start(
        &dir.path().join("lonely"),
        Options { env: vec![("WEIR_BROKERS".into(), nowhere.clone())], ..Options::default() },
    );
    let err = weir::client::deploy(&app.spec, &lonely.url).expect_err("no broker");
    let message = format!("{err:#}");
    assert!(message.contains(&nowhere) && message.contains("metadata"), "{message}");
    drop(lonely);

    // Mid-run: the broker freezes with records in flight, then comes back.
    // (Running first: a broker frozen while the group was still forming was
    // once seen to leave it unassigned for over two minutes after the thaw;
    // that is another case than this test's, noted in the closing note.)
    let server = kafka_server(&dir.path().join("data"), &kafka);
    server.deploy(&app.spec);
    kafka.produce(&app.events, &events(10, 1, 0));
    wait_for(Duration::from_secs(60), "the first counts", || (!kafka.consume(&app.counts).is_empty()).then_some(()));
    kafka.produce(&app.events, &events(10, 2, 1));
    kafka.freeze();
    std::thread::sleep(Duration::from_secs(8));
    kafka.thaw();
    kafka.produce(&app.events, &events(10, 3, 3));
    app.wait_drained(&kafka, &[&server]);
    // A commit that failed during the outage was aborted: read_committed
    // shows none of it, so the counts are exactly 1..6.
    assert_eq!(app.assert_exactly_once(&kafka), 60);
}

#[test]
fn the_broker_killed_and_restarted_on_its_log_dir_mid_run_loses_and_repeats_nothing() {
    let mut kafka = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    let server = kafka_server(&dir.path().join("data"), &kafka);
    server.deploy(&app.spec);
    kafka.produce(&app.events, &events(20, 5, 0));
    // kill -9 while the batch is being processed and committed.
    std::thread::sleep(Duration::from_millis(150));
    kafka.kill();
    std::thread::sleep(Duration::from_secs(3));
    kafka.restart();
    kafka.produce(&app.events, &events(20, 5, 5));
    app.wait_drained(&kafka, &[&server]);
    assert_eq!(app.assert_exactly_once(&kafka), 200);
    wait_tasks(&[&server], &app.name, "every task to run again", |_| true);
}

#[test]
fn an_instance_stalled_past_its_transaction_timeout_is_aborted_by_the_broker_and_nothing_repeats() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    let timeouts = [("WEIR_TRANSACTION_TIMEOUT", "3s"), ("WEIR_WORKERS", "1")];
    let stalled = kafka_server_with(&dir.path().join("stalled"), kafka, &timeouts);
    stalled.deploy(&app.spec);
    let survivor = kafka_server_with(&dir.path().join("survivor"), kafka, &timeouts);
    survivor.deploy(&app.spec);
    wait_tasks(&[&stalled, &survivor], &app.name, "tasks over both", |o| o.iter().all(|n| *n > 0));
    let (stop, producer) = keep_producing(kafka, &app.events, 30);
    std::thread::sleep(Duration::from_millis(1500));
    // SIGSTOP for longer than the transaction timeout (3 s) and the group
    // session (6 s): the broker aborts what was open, the group gives its
    // tasks to the survivor.
    let pid = stalled.pid();
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    wait_tasks(&[&survivor], &app.name, "the survivor to own every task", |_| true);
    std::thread::sleep(Duration::from_secs(1));
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    // Back, it either rejoins (its producer recovered) or says it was fenced.
    let outcome = wait_for(Duration::from_secs(60), "the stalled instance to rejoin or say it was fenced", || {
        let status = stalled.get(&format!("/v1/apps/{}", app.name)).ok()?;
        let state = status["state"].as_str()?.to_owned();
        if state.contains("fenced") {
            return Some(state);
        }
        (!owned_tasks(&stalled, &app.name).is_empty()).then(|| "rejoined".to_owned())
    });
    eprintln!("the stalled instance: {outcome}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    let sent = producer.join().unwrap();
    let alive: Vec<&Server> = if outcome == "rejoined" { vec![&stalled, &survivor] } else { vec![&survivor] };
    if outcome != "rejoined" {
        wait_tasks(&[&survivor], &app.name, "the survivor to own every task", |_| true);
    }
    app.wait_drained(kafka, &alive);
    assert_eq!(app.assert_exactly_once(kafka), sent);
    // Records of aborted transactions stay in the log, hidden from
    // read_committed readers.
    let in_log = kafka.consume_uncommitted(&app.counts).len();
    eprintln!("stalled instance: {in_log} count records in the log, {sent} committed");
    let log = stalled.log_text();
    // What the broker's abort looked like from the stalled instance.
    for line in log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("revoked")) {
        eprintln!("stalled instance: {line}");
    }
    assert!(
        outcome == "rejoined" || log.contains("fenced"),
        "a fenced instance says so in its log:\n{}",
        stalled.log_tail()
    );
}

#[test]
fn a_zombie_is_fenced_and_says_so_while_its_successor_finishes_the_work() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    let instance = unique("twin");
    let twin = |data: &str| {
        kafka_server_with(&dir.path().join(data), kafka, &[("WEIR_INSTANCE_ID", &instance), ("WEIR_WORKERS", "1")])
    };
    let zombie = twin("zombie");
    zombie.deploy(&app.spec);
    // 16 keys: records on every partition, whichever the zombie keeps.
    kafka.produce(&app.events, &events(16, 2, 0));
    app.wait_drained(kafka, &[&zombie]);
    // Its successor starts with the same instance id: its producer takes
    // the transactional id, and the zombie's next commit is refused.
    let successor = twin("successor");
    successor.deploy(&app.spec);
    // Its producer has taken the transactional id once its worker joins the
    // group (init_transactions comes first); only then is the zombie's next
    // commit certain to be refused.
    wait_for(Duration::from_secs(60), "the successor to start its transactions", || {
        successor.log_text().contains("joining the consumer group").then_some(())
    });
    kafka.produce(&app.events, &events(16, 2, 2));
    let state = wait_for(Duration::from_secs(90), "the zombie to be fenced", || {
        let state = zombie.get(&format!("/v1/apps/{}", app.name)).ok()?["state"].as_str()?.to_owned();
        state.contains("fenced").then_some(state)
    });
    assert!(state.contains(&format!("transactional id `weir-{}-{instance}-0`", app.name)), "{state}");
    // The fenced zombie leaves the group; the successor finishes the work,
    // and nothing of the zombie's fenced transaction is visible.
    wait_tasks(&[&successor], &app.name, "the successor to own every task", |_| true);
    app.wait_drained(kafka, &[&successor]);
    assert_eq!(app.assert_exactly_once(kafka), 64);
}

#[test]
fn the_topics_api_and_cli_work_against_kafka_and_a_kafka_data_dir_refuses_the_embedded_backend() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    let data = dir.path().join("data");
    let mut server = kafka_server(&data, kafka);
    server.deploy(&app.spec);
    // The same client commands as on the embedded backend, through the server.
    let written =
        weir::client::produce(&app.events, &server.url, "{\"key\":\"a\",\"value\":\"1\"}\n".as_bytes()).unwrap();
    assert_eq!(written, 1);
    let err = weir::client::produce(&app.events, &server.url, "{\"key\":\"a\",\"partition\":9}\n".as_bytes())
        .expect_err("no partition 9");
    let want = format!("partition 9 does not exist (topic `{}` has 4)", app.events);
    assert!(format!("{err:#}").contains(&want), "{err:#}");
    let nope = unique("nope");
    let err = weir::client::produce(&nope, &server.url, "{\"key\":\"a\"}\n".as_bytes()).expect_err("no topic");
    assert!(format!("{err:#}").contains("404"), "{err:#}");
    app.wait_drained(kafka, &[&server]);
    let mut out = Vec::new();
    weir::client::consume(&app.counts, &server.url, 0, None, None, true, &mut out).unwrap();
    let line: Value = serde_json::from_slice(out.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!((line["key"].as_str(), line["value"]["count"].as_i64()), (Some("a"), Some(1)), "{line}");
    assert!(line["offset"].is_i64(), "{line}");
    let topics = server.get("/v1/topics").unwrap();
    let changelog = format!("{}-counts-changelog", app.name);
    assert!(topics["topics"].as_array().unwrap().iter().any(|t| t["name"] == changelog.as_str()), "{topics}");
    server.stop();

    // The data dir's application runs on Kafka: starting it without brokers is refused.
    let (code, log) = Server::start_failing(&data, Options::default());
    assert_ne!(code, 0);
    assert!(log.contains("run on the kafka backend") && log.contains("--brokers"), "{log}");
}

/// A key's count as the instance at `server` answers it (from wherever
/// the key's partition is served), and who served it.
pub fn query_count(server: &Server, app: &str, key: &str) -> Option<(i64, String)> {
    let answer = server
        .get(&format!("/v1/apps/{app}/stores/counts/keys/{key}"))
        .inspect_err(|e| eprintln!("query {key} at {}: {e:#}", server.url))
        .ok()?;
    Some((answer["value"].as_i64()?, answer["served_by"].as_str()?.to_owned()))
}

#[test]
fn any_instance_answers_queries_for_any_key_forwarding_to_the_owner() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "");
    let first = kafka_server(&dir.path().join("first"), kafka);
    let second = kafka_server(&dir.path().join("second"), kafka);
    first.deploy(&app.spec);
    second.deploy(&app.spec);
    wait_tasks(&[&first, &second], &app.name, "tasks to spread over both instances", |o| o.iter().all(|n| *n > 0));
    let keys = 16;
    kafka.produce(&app.events, &events(keys, 3, 0));
    app.wait_drained(kafka, &[&first, &second]);
    // Every key from either instance: the same count, served by the owner.
    let mut served_by = std::collections::BTreeSet::new();
    for k in 0..keys {
        let key = format!("k{k}");
        let from_first = wait_for(Duration::from_secs(30), &format!("{key} from the first"), || {
            query_count(&first, &app.name, &key)
        });
        let from_second = wait_for(Duration::from_secs(30), &format!("{key} from the second"), || {
            query_count(&second, &app.name, &key)
        });
        assert_eq!(from_first, from_second, "{key}: both instances answer the same, from the owner");
        assert_eq!(from_first.0, 3, "{key}");
        served_by.insert(from_first.1);
    }
    assert_eq!(served_by, [first.url.clone(), second.url.clone()].into(), "keys live on both instances");
    // A scan from one instance covers every partition, wherever it runs.
    let scan = first.get(&format!("/v1/apps/{}/stores/counts?limit=1000", app.name)).unwrap();
    assert_eq!(scan["entries"].as_array().unwrap().len(), keys, "{scan:#}");
    // `local=true` never forwards: a partition served elsewhere is refused, saying so.
    let elsewhere = (0..keys)
        .map(|k| format!("k{k}"))
        .find(|k| query_count(&first, &app.name, k).is_some_and(|(_, by)| by == second.url))
        .unwrap();
    let err = first.get(&format!("/v1/apps/{}/stores/counts/keys/{elsewhere}?local=true", app.name)).unwrap_err();
    assert!(format!("{err:#}").contains("not served by this instance"), "{err:#}");
    let missing = first.get(&format!("/v1/apps/{}/stores/counts/keys/nobody", app.name)).unwrap_err();
    assert!(format!("{missing:#}").contains("has no key `nobody`"), "{missing:#}");
}

#[test]
fn a_hot_swap_on_kafka_loses_and_repeats_nothing() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let v1 = KeyCountApp::new(dir.path(), "");
    let v2 = v1.version(dir.path(), &weir_tests::key_count_v2().display().to_string(), "v2.yaml");
    let server = kafka_server(&dir.path().join("data"), kafka);
    server.deploy(&v1.spec);
    wait_tasks(&[&server], &v1.name, "every task to run", |_| true);
    let (stop, producer) = crate::hot_swap::keep_producing_to(server.url.clone(), &v1.events);
    std::thread::sleep(Duration::from_millis(1500));
    weir::client::deploy(&v2.spec, &server.url).expect("the update is accepted");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Release);
    let sent = producer.join().unwrap();
    assert!(sent > 0);
    v1.wait_drained(kafka, &[&server]);
    // Per key: counts exactly 1..n; version 1 up to the switch, 2 after it.
    let outputs = crate::hot_swap::checked_outputs_of(&server, &v1.events, &v1.counts);
    let (mut v1s, mut v2s) = (0, 0);
    for (key, seq) in &outputs {
        let versions: Vec<i64> = seq.iter().map(|(_, v)| *v).collect();
        let switch = versions.iter().position(|v| *v == 2).unwrap_or(versions.len());
        assert!(versions[switch..].iter().all(|v| *v == 2), "key {key}: {versions:?}");
        v1s += switch;
        v2s += versions.len() - switch;
    }
    assert!(v1s > 0 && v2s > 0, "both versions ran: v1 {v1s}, v2 {v2s}");
    let status = server.get(&format!("/v1/apps/{}", v1.name)).unwrap();
    let update = status["swaps"].as_array().unwrap().last().unwrap().clone();
    assert!(update["state"] == "switched" || update["state"] == "applied", "{update:#}");
    // Every task switched: none is left on v1 (tasks the group moves during
    // the update start on v2 and count as switched only while it is still
    // switching, so the record's counter is not a task count here; the
    // application's component is).
    assert!(update["switched"].as_u64().unwrap() >= 1, "{update:#}");
    assert_eq!(status["components"]["count"], update["to"]["count"], "{status:#}");
}

#[test]
fn at_least_once_on_kafka_loses_nothing_across_a_clean_restart_and_a_kill() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let app = KeyCountApp::new(dir.path(), "processing_guarantee: at-least-once");
    let mut server = kafka_server(&dir.path().join("data"), kafka);
    server.deploy(&app.spec);
    assert_eq!(server.get(&format!("/v1/apps/{}", app.name)).unwrap()["guarantee"], "at-least-once");
    kafka.produce(&app.events, &events(10, 3, 0));
    app.wait_drained(kafka, &[&server]);
    // A clean stop (final commit, LeaveGroup) and a start on the same data
    // dir: nothing repeats.
    server.stop();
    server.restart();
    kafka.produce(&app.events, &events(10, 3, 3));
    app.wait_drained(kafka, &[&server]);
    assert_eq!(app.assert_exactly_once(kafka), 60);
    // A kill -9 while work is in flight: nothing is lost; at-least-once may
    // repeat what was processed after the last commit.
    kafka.produce(&app.events, &events(10, 3, 6));
    std::thread::sleep(Duration::from_millis(50));
    server.kill();
    server.restart();
    app.wait_drained(kafka, &[&server]);
    for (key, counts) in counts_per_key(kafka, &app.counts) {
        let mut distinct = counts.clone();
        distinct.sort();
        distinct.dedup();
        // Nothing lost: every count up to 9 was emitted. A replay after
        // the kill counts its records again, so counts may go past 9.
        assert!((1..=9).all(|c| distinct.contains(&c)), "key {key}: {counts:?}");
    }
}

/// A metric of `weir serve`'s `/metrics` for `app`, summed over its series.
fn metric(server: &Server, name: &str, app: &str) -> f64 {
    let text = ureq::get(&format!("{}/metrics", server.url)).call().unwrap().into_body().read_to_string().unwrap();
    let series = format!("{name}{{app=\"{app}\"");
    text.lines().filter(|l| l.starts_with(&series)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Commits run in the background while the worker goes on processing: a
/// large input is processed partly while commits are in flight (the metric
/// says so), and under both guarantees every count is still exactly 1..n:
/// the records processed meanwhile read the frozen writes of the commit in
/// flight under their own, and their outputs wait for its answer.
#[test]
fn processing_goes_on_while_a_commit_is_in_flight_and_counts_stay_exactly_1_to_n() {
    let kafka = shared();
    for guarantee in ["exactly-once", "at-least-once"] {
        let dir = tempfile::tempdir().unwrap();
        let app = KeyCountApp::new(dir.path(), &format!("processing_guarantee: {guarantee}"));
        let server = kafka_server(&dir.path().join("data"), kafka);
        server.deploy(&app.spec);
        let (keys, rounds) = (40, 1000);
        kafka.produce(&app.events, &events(keys, rounds, 0));
        app.wait_drained(kafka, &[&server]);
        assert_eq!(app.assert_exactly_once(kafka), keys * rounds, "{guarantee}");
        let overlapped = metric(&server, "weir_processed_during_commit_total", &app.name);
        let commits = metric(&server, "weir_commit_seconds_count", &app.name);
        let blocked = metric(&server, "weir_commit_blocked_seconds_sum", &app.name);
        let committing = metric(&server, "weir_commit_seconds_sum", &app.name);
        eprintln!(
            "{guarantee}: {commits} commits, {overlapped} of {} records processed while one was in flight; \
             commits took {committing:.3} s, held processing up {blocked:.3} s",
            keys * rounds
        );
        assert!(overlapped > 0.0, "{guarantee}: no record was processed while a commit was in flight");
    }
}

/// Wall-clock punctuation runs on Kafka with no input at all (the worker
/// moves its tasks' clocks on every poll, records or not).
#[test]
fn wall_clock_punctuation_fires_on_kafka_without_input() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("tick");
    let (input, out) = (format!("{name}-in"), format!("{name}-out"));
    let spec = write_spec(
        dir.path(),
        "tick.yaml",
        &format!(
            r#"
name: {name}
topics: {{ {input}: 1, {out}: 1 }}
sources:
  in: {{ topic: {input}, to: [m] }}
processors:
  m:
    component: "{{guests}}/misbehave.wasm"
    config: {{ wall_every: 100 }}
    outputs: {{ out: out }}
sinks:
  out: {{ topic: {out} }}
"#
        ),
    );
    let server = kafka_server(&dir.path().join("data"), kafka);
    server.deploy(&spec);
    let ticks = wait_for(Duration::from_secs(60), "three wall-clock ticks", || {
        let ticks = kafka.consume(&out);
        (ticks.len() >= 3).then_some(ticks)
    });
    assert!(ticks.iter().all(|t| t["value"]["punctuation"] == "wall-clock"), "{ticks:?}");
}
