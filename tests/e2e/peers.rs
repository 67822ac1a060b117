//! Kafka Streams as an oracle: the examples whose semantics come from Kafka
//! Streams (customer-position: KTable groupBy + reduce with adder and
//! subtractor; enrichment: stream–table and stream–GlobalKTable joins) are
//! written in its DSL in `tests/peers/kafka-streams` and run through
//! `TopologyTestDriver` over the example's `input.jsonl`. Per sink topic and
//! key, weir's `weir test` output must hold the same sequence of values
//! (order across keys and partitions is not defined on Kafka, within a key
//! it is), with consecutive repeats of one value counted once: Kafka
//! Streams' aggregation forwards an update that leaves the result as it was
//! (KIP-904: one repartition record carries old and new value when the
//! group key does not change, subtractor and adder run, the unchanged
//! result is forwarded), which weir's customer-position guest does not
//! emit. A table's state is the same either way; the README says so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// `tests/peers/kafka-streams`, built with Maven the first time it is missing.
pub fn kafka_streams_peer() -> PathBuf {
    static PEER: OnceLock<PathBuf> = OnceLock::new();
    PEER.get_or_init(|| {
        let dir = weir_tests::workspace_dir().join("tests").join("peers").join("kafka-streams");
        let jar = dir.join("target").join("kafka-streams-peer.jar");
        if !jar.exists() {
            let out = Command::new("mvn")
                .args(["-q", "-B", "-f"])
                .arg(dir.join("pom.xml"))
                .args(["package", "-DskipTests"])
                .output()
                .unwrap_or_else(|e| {
                    panic!("the Kafka Streams peer needs Maven and Java 17+ (`./dev test` installs them): {e}")
                });
            assert!(
                out.status.success() && jar.exists(),
                "building the Kafka Streams peer (mvn -f tests/peers/kafka-streams/pom.xml package) failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
    .clone()
}

/// Per (topic, key): the values in output order.
type PerKey = BTreeMap<(String, String), Vec<Value>>;

fn per_key(lines: &str, topics: &[&str]) -> PerKey {
    let mut out = PerKey::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line: {line}: {e}"));
        let topic = v["topic"].as_str().unwrap().to_owned();
        if topics.contains(&topic.as_str()) {
            let values = out.entry((topic, v["key"].to_string())).or_default();
            if values.last() != Some(&v["value"]) {
                values.push(v["value"].clone());
            }
        }
    }
    out
}

/// weir test's output for an example, per sink topic and key.
fn weir_output(example: &str, topics: &[&str]) -> PerKey {
    let (stdout, stderr, ok) = crate::examples::run_weir_test(example);
    assert!(ok, "weir test {example}: {stderr}");
    per_key(&stdout, topics)
}

/// The Kafka Streams oracle's output for an example, per sink topic and key.
fn oracle_output(example: &str, topics: &[&str]) -> PerKey {
    let peer = kafka_streams_peer();
    let input = weir_tests::workspace_dir().join("guest-examples").join(example).join("input.jsonl");
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!(
            "{}:{}/*",
            peer.join("target/kafka-streams-peer.jar").display(),
            peer.join("target/libs").display()
        ))
        .args(["dev.weir.peer.Main", "oracle", example])
        .arg(&input)
        .output()
        .expect("run java");
    assert!(
        out.status.success(),
        "the Kafka Streams oracle failed for {example}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    per_key(&String::from_utf8_lossy(&out.stdout), topics)
}

fn assert_same_per_key(example: &str, topics: &[&str]) {
    let weir = weir_output(example, topics);
    let oracle = oracle_output(example, topics);
    assert!(!oracle.is_empty(), "{example}: the oracle printed nothing for {topics:?}");
    let keys: std::collections::BTreeSet<_> = weir.keys().chain(oracle.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|k| weir.get(*k) != oracle.get(*k))
        .map(|k| {
            format!("{} key {}:\n  weir          {:?}\n  kafka-streams {:?}", k.0, k.1, weir.get(k), oracle.get(k))
        })
        .collect();
    assert!(differences.is_empty(), "{example}: weir and Kafka Streams differ:\n{}", differences.join("\n"));
}

#[test]
fn customer_position_agrees_with_kafka_streams_groupby_reduce() {
    assert_same_per_key("customer-position", &["us-share-holders"]);
}

#[test]
fn enrichment_agrees_with_kafka_streams_table_and_global_table_joins() {
    assert_same_per_key("enrichment", &["orders-enriched", "orders-unmatched"]);
}
