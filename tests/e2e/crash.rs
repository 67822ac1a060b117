//! Exactly-once you can kill -9: `weir serve` on the embedded backend is
//! killed at random moments while it processes, restarted on the same data
//! dir each time, and its outputs and state are checked against an oracle
//! computed by the test from the input topic itself (so a produce request
//! cut short by a kill cannot confuse the check).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

use crate::server::{Options, Rng, Server, write_spec};

const KEY_COUNT: &str = r#"
name: key-count
processing_guarantee: {guarantee}
topics: { events: 4, counts: 4 }
sources:
  events: { topic: events, to: [count] }
processors:
  count:
    component: "{guests}/key_count.wasm"
    stores: [counts]
    outputs: { counts: counts }
stores: { counts: {} }
sinks:
  counts: { topic: counts }
"#;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Keeps producing key-count events from a second thread (so work is
/// always in flight) while killing the server with SIGKILL at random moments
/// and restarting it, until at least `kills` kills happened and the input
/// topic holds at least `total` records. A produce request cut by a kill
/// leaves its whole chunk or none of it (one atomic append); the producer
/// just goes on. Returns the kills, and how many hit while input was
/// processed but not yet committed.
fn produce_while_killing(server: &mut Server, rng: &mut Rng, total: usize, kills: usize, keys: u64) -> (usize, usize) {
    let mut chunks = Rng::new("producer");
    let make = move |chunk_no: usize| -> String {
        (0..1000).map(|i| format!("{{\"key\":\"k{}\",\"value\":\"e{chunk_no}-{i}\"}}\n", chunks.below(keys))).collect()
    };
    produce_and_kill(server, rng, "key-count", "events", make, total, kills)
}

/// The general form: `make(n)` builds the n-th JSONL chunk for `topic`.
fn produce_and_kill(
    server: &mut Server,
    rng: &mut Rng,
    app: &str,
    topic: &'static str,
    mut make: impl FnMut(usize) -> String + Send + 'static,
    total: usize,
    kills: usize,
) -> (usize, usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let url = Arc::new(Mutex::new(server.url.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (url, stop) = (url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut chunk_no = 0;
            while !stop.load(Ordering::Acquire) {
                let chunk = make(chunk_no);
                chunk_no += 1;
                let target = url.lock().unwrap().clone();
                if weir::client::produce(topic, &target, std::io::Cursor::new(chunk.into_bytes())).is_err() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    let mut done = 0;
    let mut mid_work = 0;
    while done < kills || input_size(server, topic) < total {
        std::thread::sleep(Duration::from_millis(30 + rng.below(300)));
        if server.get(&format!("/v1/apps/{app}")).is_ok_and(|s| s["lag"].as_i64() > Some(0)) {
            mid_work += 1;
        }
        server.kill();
        done += 1;
        server.restart();
        *url.lock().unwrap() = server.url.clone();
    }
    stop.store(true, Ordering::Release);
    producer.join().unwrap();
    (done, mid_work)
}

/// Records in an input topic.
fn input_size(server: &Server, topic: &str) -> usize {
    let topics = server.get("/v1/topics").expect("topics");
    topics["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == topic))
        .map_or(0, |t| t["end_offsets"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap() as usize).sum())
}

/// Per key: the number of input records (from the input topic itself).
fn input_counts(server: &Server) -> BTreeMap<String, i64> {
    let mut n = BTreeMap::new();
    for r in server.consume_all("events") {
        *n.entry(text(&r["key"])).or_insert(0) += 1;
    }
    n
}

/// Per key: the emitted counts, in output order.
fn emitted_counts(server: &Server) -> BTreeMap<String, Vec<i64>> {
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in server.consume_all("counts") {
        seen.entry(text(&r["key"])).or_default().push(r["value"]["count"].as_i64().expect("count"));
    }
    seen
}

#[test]
fn key_count_is_exactly_once_across_repeated_kill_9() {
    let mut rng = Rng::new("key_count_is_exactly_once_across_repeated_kill_9");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "key-count.yaml", &KEY_COUNT.replace("{guarantee}", "exactly-once"));
    let options = Options { commit_interval: Some("50ms".into()), ..Options::default() };
    let mut server = Server::start(&dir.path().join("data"), options);
    server.deploy(&spec);

    let (kills, mid_work) = produce_while_killing(&mut server, &mut rng, 100_000, 25, 500);
    assert!(kills >= 20);
    // The kills must land while there is work in flight, or they prove nothing.
    assert!(mid_work >= 5, "only {mid_work} of {kills} kills hit uncommitted work");
    server.wait_idle("key-count", Duration::from_secs(180));

    let expected = input_counts(&server);
    let produced: i64 = expected.values().sum();
    assert!(produced >= 100_000, "at least 100k input records: {produced}");
    let emitted = emitted_counts(&server);
    assert_eq!(emitted.len(), expected.len(), "every key has outputs");
    for (key, n) in &expected {
        let counts = &emitted[key];
        let want: Vec<i64> = (1..=*n).collect();
        assert!(
            counts == &want,
            "key {key}: counts must be exactly 1..{n} (no gap, no repeat), got {} values: {:?}...",
            counts.len(),
            &counts[..counts.len().min(20)]
        );
    }
    // The final store equals the oracle.
    let store = server.get("/v1/apps/key-count/stores/counts?limit=10000").unwrap();
    let state: HashMap<String, i64> =
        store["entries"].as_array().unwrap().iter().map(|e| (text(&e["key"]), e["value"].as_i64().unwrap())).collect();
    assert_eq!(state.len(), expected.len());
    for (key, n) in &expected {
        assert_eq!(state.get(key), Some(n), "store value of {key}");
    }
    eprintln!("key-count: {produced} records, {kills} kill -9 ({mid_work} with work in flight), exactly once");
}

#[test]
fn at_least_once_never_loses_across_kill_9() {
    let mut rng = Rng::new("at_least_once_never_loses_across_kill_9");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "key-count.yaml", &KEY_COUNT.replace("{guarantee}", "at-least-once"));
    let options = Options { commit_interval: Some("200ms".into()), ..Options::default() };
    let mut server = Server::start(&dir.path().join("data"), options);
    server.deploy(&spec);
    let _ = produce_while_killing(&mut server, &mut rng, 20_000, 6, 100);
    server.wait_idle("key-count", Duration::from_secs(120));
    let expected = input_counts(&server);
    let emitted = emitted_counts(&server);
    let mut repeats = 0;
    for (key, n) in &expected {
        let counts = &emitted[key];
        let max = *counts.iter().max().unwrap();
        // Nothing lost: every count up to the largest was emitted, and the
        // largest covers every input (state may have counted a record twice).
        for c in 1..=max {
            assert!(counts.contains(&c), "key {key}: count {c} missing");
        }
        assert!(max >= *n, "key {key}: {n} inputs but counts stop at {max}");
        repeats += counts.len() as i64 - n;
    }
    eprintln!("at-least-once: {repeats} repeated outputs (allowed)");
}

const RESERVATION: &str = r#"
name: reservation
topics: { orders: 4, adjustments: 4, orders-validated: 4, orders-rejected: 4 }
sources:
  orders: { topic: orders, value_format: json, to: [rekey] }
  adjustments: { topic: adjustments, value_format: json, to: [reserve] }
processors:
  rekey:
    component: "{guests}/reservation.wasm"
    config: { role: rekey }
    outputs: { by-product: orders-by-product }
  reserve:
    component: "{guests}/reservation.wasm"
    config: { role: reserve, adjustments_topic: adjustments }
    stores: [stock]
    outputs: { validated: validated, rejected: rejected }
repartitions:
  orders-by-product: { to: [reserve] }
stores: { stock: {} }
sinks:
  validated: { topic: orders-validated }
  rejected: { topic: orders-rejected }
"#;

#[test]
fn reservation_is_exactly_once_across_repeated_kill_9() {
    let mut rng = Rng::new("reservation_is_exactly_once_across_repeated_kill_9");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "reservation.yaml", RESERVATION);
    let options = Options { commit_interval: Some("50ms".into()), ..Options::default() };
    let mut server = Server::start(&dir.path().join("data"), options);
    server.deploy(&spec);

    // Stock first, fully processed, so the oracle knows each product's start.
    let products = 50;
    let mut stock: BTreeMap<String, i64> = BTreeMap::new();
    let adjustments: String = (0..products)
        .map(|p| {
            let delta = 100 + rng.below(200) as i64;
            *stock.entry(format!("p{p}")).or_default() += delta;
            format!("{{\"key\":\"p{p}\",\"value\":{{\"product_id\":\"p{p}\",\"delta\":{delta}}}}}\n")
        })
        .collect();
    server.produce("adjustments", &adjustments).unwrap();
    server.wait_idle("reservation", Duration::from_secs(60));

    let mut orders = Rng::new("orders");
    let make = move |chunk_no: usize| -> String {
        (0..500)
            .map(|i| {
                let id = chunk_no * 500 + i;
                // Every 97th order is invalid: it must be dead-lettered exactly once.
                let qty = if id.is_multiple_of(97) { -1 } else { 1 + orders.below(4) as i64 };
                format!(
                    "{{\"key\":\"o{id}\",\"value\":{{\"order_id\":\"o{id}\",\"product_id\":\"p{}\",\"qty\":{qty}}}}}\n",
                    orders.below(products)
                )
            })
            .collect()
    };
    let (kills, mid_work) = produce_and_kill(&mut server, &mut rng, "reservation", "orders", make, 30_000, 20);
    assert!(mid_work >= 5, "only {mid_work} of {kills} kills hit uncommitted work");
    server.wait_idle("reservation", Duration::from_secs(180));

    // Oracle: replay the reservation logic over the repartition topic, in its
    // per-partition order, which is the order the reserve tasks saw.
    let repartitioned = server.consume_all("reservation-orders-by-product-repartition");
    let mut expected: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut level = stock.clone();
    for r in &repartitioned {
        let order = &r["value"];
        let id = text(&order["order_id"]);
        let product = text(&order["product_id"]);
        let qty = order["qty"].as_i64().unwrap();
        let left = level[&product];
        let decision = if left >= qty {
            *level.get_mut(&product).unwrap() -= qty;
            ("validated".to_owned(), left - qty)
        } else {
            ("rejected".to_owned(), left)
        };
        assert!(expected.insert(id.clone(), decision).is_none(), "order {id} repartitioned twice");
    }
    let mut decided: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for topic in ["orders-validated", "orders-rejected"] {
        for r in server.consume_all(topic) {
            let id = text(&r["key"]);
            let d = (text(&r["value"]["status"]), r["value"]["stock"].as_i64().unwrap());
            assert!(decided.insert(id.clone(), d).is_none(), "order {id} decided twice");
        }
    }
    assert_eq!(decided, expected, "every valid order decided exactly once, as the oracle decides it");
    let dead: Vec<String> = server.consume_all("reservation-dlq").iter().map(|r| text(&r["key"])).collect();
    let input = server.consume_all("orders");
    let invalid = input.iter().filter(|r| r["value"]["qty"].as_i64() == Some(-1)).count();
    assert_eq!(dead.len(), invalid, "each invalid order dead-lettered exactly once");
    assert_eq!(expected.len() + invalid, input.len(), "every order accounted for");
    for (product, left) in &level {
        let v = server.get(&format!("/v1/apps/reservation/stores/stock/keys/{product}")).unwrap();
        assert_eq!(v["value"].as_i64(), Some(*left), "stock of {product}");
    }
    eprintln!("reservation: {} orders, {kills} kill -9 ({mid_work} with work in flight), exactly once", input.len());
}

/// Specs other test modules reuse.
pub mod specs {
    /// key-count, exactly-once, `{guests}` to be filled in.
    pub const KEY_COUNT_EOS: &str = r#"
name: key-count
topics: { events: 4, counts: 4 }
sources:
  events: { topic: events, to: [count] }
processors:
  count:
    component: "{guests}/key_count.wasm"
    stores: [counts]
    outputs: { counts: counts }
stores: { counts: {} }
sinks:
  counts: { topic: counts }
"#;
}
