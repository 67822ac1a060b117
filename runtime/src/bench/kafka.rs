//! `weir bench kafka --brokers ...`: throughput and end-to-end latency on a
//! Kafka cluster, exactly-once, all from one run on the same broker:
//!
//! - `raw`: plain rdkafka consume → produce with the same transactional
//!   cadence weir uses (a group member and a transactional producer per
//!   worker thread, offsets sent to the transaction, a commit every
//!   `commit_interval`), no wasm, no tasks, no stores: the baseline;
//! - `passthrough`, `key-count`, `reservation` run by weir's Kafka backend.
//!
//! Throughput: records pre-produced, time until every output is visible to a
//! read_committed consumer. Latency: a steady trickle, each output's
//! arrival at a read_committed consumer minus its input's timestamp (the
//! produce time). Every run uses fresh topic and group names.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Figures, PRODUCTS, bench_record};
use crate::backend::embedded::runner::RunnerConfig;
use crate::backend::embedded::{EmbeddedBackend, now_us};
use crate::backend::kafka::runner::KafkaApp;
use crate::backend::kafka::{KafkaSettings, PlainConsumer, QuietContext, TopicRequest, client_config, send};
use crate::partitioner::partition_for;
use crate::topology::Topology;
use crate::wasm::{EngineConfig, WasmEngine};

/// Settings of `weir bench kafka`.
#[derive(Debug, Clone)]
pub struct KafkaBench {
    pub brokers: String,
    pub guests: PathBuf,
    /// Records of the throughput phase.
    pub records: usize,
    /// Records per second offered in the latency phase.
    pub latency_rate: usize,
    pub commit_interval: Duration,
    pub workers: usize,
    pub partitions: u32,
}

const PASSTHROUGH: &str = r#"
name: bench-{S}
topics: { in-{S}: {P}, out-{S}: {P} }
sources: { in: { topic: in-{S}, to: [p] } }
processors:
  p: { component: "{G}/passthrough.wasm", outputs: { out: out } }
sinks: { out: { topic: out-{S} } }
"#;

const KEY_COUNT: &str = r#"
name: bench-{S}
topics: { in-{S}: {P}, out-{S}: {P} }
sources: { in: { topic: in-{S}, to: [count] } }
processors:
  count: { component: "{G}/key_count.wasm", stores: [counts], outputs: { counts: out } }
stores: { counts: {} }
sinks: { out: { topic: out-{S} } }
"#;

const RESERVATION: &str = r#"
name: bench-{S}
topics: { in-{S}: {P}, adjustments-{S}: {P}, validated-{S}: {P}, rejected-{S}: {P} }
sources:
  in: { topic: in-{S}, value_format: json, to: [rekey] }
  adjustments: { topic: adjustments-{S}, value_format: json, to: [reserve] }
processors:
  rekey: { component: "{G}/reservation.wasm", config: { role: rekey }, outputs: { by-product: by-product } }
  reserve:
    component: "{G}/reservation.wasm"
    config: { role: reserve, adjustments_topic: adjustments-{S} }
    stores: [stock]
    outputs: { validated: validated, rejected: rejected }
repartitions: { by-product: { to: [reserve] } }
stores: { stock: {} }
sinks: { validated: { topic: validated-{S} }, rejected: { topic: rejected-{S} } }
"#;

/// What a scenario runs, its input kind and output topics (unsuffixed).
struct Scenario {
    name: &'static str,
    spec: Option<&'static str>,
    input: &'static str,
    outputs: &'static [&'static str],
}

pub fn run(settings: KafkaBench) -> anyhow::Result<()> {
    for guest in ["passthrough", "key_count", "reservation"] {
        let path = settings.guests.join(format!("{guest}.wasm"));
        anyhow::ensure!(path.exists(), "{} not found: run `cargo guests` first, or pass --guests DIR", path.display());
    }
    crate::backend::kafka::partition_counts(&settings.brokers).map_err(anyhow::Error::msg)?;
    let engine = Arc::new(WasmEngine::new(EngineConfig::default())?);
    let scenarios = [
        Scenario { name: "raw", spec: None, input: "text", outputs: &["out"] },
        Scenario { name: "passthrough", spec: Some(PASSTHROUGH), input: "text", outputs: &["out"] },
        Scenario { name: "key-count", spec: Some(KEY_COUNT), input: "text", outputs: &["out"] },
        Scenario { name: "reservation", spec: Some(RESERVATION), input: "orders", outputs: &["validated", "rejected"] },
    ];
    println!(
        "kafka backend at {}, exactly-once, {} partitions, {} workers, commit interval {:?}; throughput over {} records, latency at {}/s",
        settings.brokers,
        settings.partitions,
        settings.workers,
        settings.commit_interval,
        settings.records,
        settings.latency_rate
    );
    let mut results = BTreeMap::new();
    for scenario in &scenarios {
        let f = run_scenario(&settings, &engine, scenario)?;
        println!(
            "{:12} {:>10.0} records/s   p50 {:>7.1} ms   p99 {:>7.1} ms",
            scenario.name, f.per_second, f.p50_ms, f.p99_ms
        );
        results.insert(scenario.name, f);
    }
    println!("ratio {:.2}", results["passthrough"].per_second / results["raw"].per_second);
    Ok(())
}

fn run_scenario(settings: &KafkaBench, engine: &Arc<WasmEngine>, scenario: &Scenario) -> anyhow::Result<Figures> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let suffix = format!("{}-{}-{}", scenario.name, std::process::id(), nanos % 1_000_000_000);
    let topic = |t: &str| format!("{t}-{suffix}");
    let brokers = &settings.brokers;
    let dir = tempfile::tempdir()?;
    let topology = match scenario.spec {
        Some(spec) => {
            let yaml = spec
                .replace("{S}", &suffix)
                .replace("{P}", &settings.partitions.to_string())
                .replace("{G}", &settings.guests.display().to_string());
            let topology = Topology::compile(crate::topology::parse_spec(&yaml)?)?;
            crate::backend::kafka::runner::create_topics(brokers, &topology)?;
            Some(topology)
        }
        None => {
            let topics =
                ["in", "out"].map(|t| TopicRequest { name: topic(t), partitions: settings.partitions, compact: false });
            crate::backend::kafka::create_topics(brokers, &topics).map_err(anyhow::Error::msg)?;
            None
        }
    };
    let producer: BaseProducer =
        client_config(brokers).set("enable.idempotence", "true").set("linger.ms", "5").create()?;
    let produce = |t: &str, records: Vec<crate::record::Record>| -> anyhow::Result<()> {
        for r in &records {
            let p = partition_for(r.key.as_deref(), settings.partitions, 0);
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(t).partition(p as i32).timestamp(r.timestamp);
            if let Some(k) = r.key.as_deref() {
                record = record.key(k);
            }
            if let Some(v) = r.value.as_deref() {
                record = record.payload(v);
            }
            send(&producer, record)?;
        }
        producer.poll(Duration::ZERO);
        Ok(())
    };
    if scenario.input == "orders" {
        // Plenty of stock, loaded before the clock starts.
        let adjustments = (0..PRODUCTS)
            .map(|p| {
                let adj = reservation::Adjustment { product_id: format!("p{p}"), delta: 1_000_000 };
                crate::record::Record {
                    key: Some(adj.product_id.clone().into_bytes()),
                    value: Some(serde_json::to_vec(&adj).expect("json")),
                    timestamp: now_us() / 1000,
                    headers: Vec::new(),
                }
            })
            .collect();
        produce(&topic("adjustments"), adjustments)?;
    }
    let input = topic("in");
    let now_ms = now_us() / 1000;
    produce(&input, (0..settings.records).map(|i| bench_record(scenario.input, i, now_ms)).collect())?;
    producer.flush(Duration::from_secs(120))?;

    // Outputs, as a downstream exactly-once consumer sees them.
    let outputs: Vec<String> = scenario.outputs.iter().map(|o| topic(o)).collect();
    let reader: PlainConsumer = client_config(brokers)
        .set("group.id", format!("bench-reader-{suffix}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(QuietContext)?;
    let mut tpl = TopicPartitionList::new();
    for t in &outputs {
        for p in 0..settings.partitions {
            tpl.add_partition_offset(t, p as i32, Offset::Beginning)?;
        }
    }
    reader.assign(&tpl)?;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut app = None;
    match &topology {
        None => {
            for w in 0..settings.workers {
                let (settings, stop, suffix) = (settings.clone(), stop.clone(), suffix.clone());
                raw.push(std::thread::spawn(move || raw_loop(&settings, &suffix, w, &stop)));
            }
        }
        Some(t) => {
            let runtime = super::app_runtime(t, engine)?;
            let local = EmbeddedBackend::open(dir.path(), false)?;
            let kafka = KafkaSettings {
                brokers: brokers.clone(),
                session_timeout: Duration::from_secs(6),
                instance_id: format!("bench-{suffix}"),
                advertised_url: Default::default(),
            };
            let config =
                RunnerConfig { commit_interval: settings.commit_interval, max_batch: 1000, workers: settings.workers };
            app = Some(KafkaApp::start(local, kafka, runtime, config, Vec::new())?);
        }
    }
    let mut seen = 0usize;
    let deadline = started + Duration::from_secs(900);
    read_outputs(&reader, &mut seen, settings.records, None, deadline)?;
    let per_second = settings.records as f64 / started.elapsed().as_secs_f64();

    // Latency: a steady trickle well below capacity.
    let per_tick = (settings.latency_rate / 100).max(1);
    let ticks = 300;
    let mut latencies = Vec::new();
    let mut next = settings.records;
    for _ in 0..ticks {
        let now_ms = now_us() / 1000;
        produce(&input, (next..next + per_tick).map(|i| bench_record(scenario.input, i, now_ms)).collect())?;
        next += per_tick;
        let tick_end = Instant::now() + Duration::from_millis(10);
        while Instant::now() < tick_end {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(1)) {
                seen += 1;
                latencies.push(now_us() as f64 / 1000.0 - m.timestamp().to_millis().unwrap_or(0) as f64);
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    read_outputs(&reader, &mut seen, settings.records + ticks * per_tick, Some(&mut latencies), deadline)?;
    stop.store(true, Ordering::Release);
    for t in raw {
        t.join().map_err(|_| anyhow::anyhow!("raw loop panicked"))??;
    }
    if let Some(app) = app {
        app.stop();
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(f64::NAN);
    Ok(Figures { per_second, p50_ms: pick(0.5), p99_ms: pick(0.99) })
}

/// Reads outputs until `until` were seen, recording each one's latency.
fn read_outputs(
    reader: &PlainConsumer,
    seen: &mut usize,
    until: usize,
    mut latencies: Option<&mut Vec<f64>>,
    deadline: Instant,
) -> anyhow::Result<()> {
    while *seen < until {
        anyhow::ensure!(Instant::now() < deadline, "only {seen} of {until} outputs arrived");
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                *seen += 1;
                if let Some(l) = latencies.as_mut() {
                    l.push(now_us() as f64 / 1000.0 - m.timestamp().to_millis().unwrap_or(0) as f64);
                }
            }
            Some(Err(e)) => anyhow::bail!("reading outputs: {e}"),
            None => {}
        }
    }
    Ok(())
}

/// The baseline: a group member and a transactional producer copying
/// `in` to `out` (same partition, same timestamp), committing offsets in
/// the transaction every commit interval.
fn raw_loop(settings: &KafkaBench, suffix: &str, worker: usize, stop: &AtomicBool) -> anyhow::Result<()> {
    let brokers = &settings.brokers;
    let (input, output) = (format!("in-{suffix}"), format!("out-{suffix}"));
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", format!("bench-raw-{suffix}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "2000")
        .create()?;
    consumer.subscribe(&[&input])?;
    let producer: BaseProducer = client_config(brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("transactional.id", format!("bench-raw-{suffix}-{worker}"))
        .create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    producer.begin_transaction()?;
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if let Some(polled) = consumer.poll(Duration::from_millis(20)) {
            let m = polled?;
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&output).partition(m.partition()).timestamp(m.timestamp().to_millis().unwrap_or(0));
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(v) = m.payload() {
                record = record.payload(v);
            }
            send(&producer, record)?;
            offsets.insert(m.partition(), m.offset() + 1);
        }
        if last_commit.elapsed() >= settings.commit_interval && !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in std::mem::take(&mut offsets) {
                tpl.add_partition_offset(&input, p, Offset::Offset(o))?;
            }
            let metadata = consumer.group_metadata().ok_or_else(|| anyhow::anyhow!("no group metadata"))?;
            producer.send_offsets_to_transaction(&tpl, &metadata, Duration::from_secs(30))?;
            producer.commit_transaction(Duration::from_secs(30))?;
            producer.begin_transaction()?;
            last_commit = Instant::now();
        }
    }
    producer.abort_transaction(Duration::from_secs(30))?;
    Ok(())
}
