//! `weir bench restore`: how long an application takes to get its state
//! back before it processes again.
//!
//! - On Kafka (`--brokers`): a `counts` store of `keys` keys (`value_bytes`
//!   each) is written straight into its changelog topic, then
//!   1. **full**: `weir serve` with an empty data dir restores it all (deploy
//!      until every task runs);
//!   2. **checkpoint**: that instance stops cleanly (its local checkpoint is
//!      the changelog's end), `tail_percent` of the keys are written to the
//!      changelog again, and it starts on the same data dir: only the tail is
//!      read (process start until every task runs);
//!   3. **kafka-streams** (with `--kafka-streams`): the Kafka Streams twin of
//!      key-count, application id = weir's application name, so its store's
//!      changelog is the very same topic, restores it with an empty state dir
//!      (`start()` until every partition's restore ended).
//!
//!   Last lines: `ratio checkpoint/full restore X` (target ≤ 0.1) and
//!   `ratio weir/kafka-streams restore Y` (keys/s over keys/s).
//! - On the embedded backend: stores have no changelog (they are committed
//!   with the log, so the data dir is their only copy and there is nothing
//!   to restore from scratch); what is measured is an instance restarting on
//!   a data dir whose store holds `keys` keys (process start until every
//!   task runs), with the store filled by key-count itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use super::kafka::{peer_jar, spawn_weir_serve, stop_child};
use crate::backend::kafka::{client_config, send, serve_producer_until};
use crate::partitioner::partition_for;
use crate::topology::Topology;

/// Settings of `weir bench restore`.
#[derive(Debug, Clone)]
pub struct RestoreBench {
    /// Kafka bootstrap servers; `None` measures the embedded backend only.
    pub brokers: Option<String>,
    pub guests: PathBuf,
    pub keys: usize,
    pub value_bytes: usize,
    /// Share of the keys rewritten before the checkpoint restore, in percent.
    pub tail_percent: f64,
    pub partitions: u32,
    pub workers: usize,
    pub kafka_streams: Option<PathBuf>,
}

const SPEC: &str = r#"
name: {N}
topics: { in-{N}: {P}, out-{N}: {P} }
sources: { in: { topic: in-{N}, to: [count] } }
processors:
  count: { component: "{G}/key_count.wasm", stores: [counts], outputs: { counts: out } }
stores: { counts: {} }
sinks: { out: { topic: out-{N} } }
"#;

/// How long any one phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(settings: RestoreBench) -> anyhow::Result<()> {
    let guest = settings.guests.join("key_count.wasm");
    anyhow::ensure!(guest.exists(), "{} not found: run `cargo guests` first, or pass --guests DIR", guest.display());
    if let Some(peer) = &settings.kafka_streams {
        anyhow::ensure!(
            peer_jar(peer).exists(),
            "{} not found: build the peer with `mvn -q -f {}/pom.xml package`",
            peer_jar(peer).display(),
            peer.display()
        );
    }
    println!(
        "restore of a store of {} keys ({} B values), {} partitions, {} threads",
        settings.keys, settings.value_bytes, settings.partitions, settings.workers
    );
    println!("{:36} {:>9} {:>15} {:>11} {:>10}", "phase", "keys", "until running s", "restore s", "keys/s");
    let line = |phase: &str, keys: u64, until_running: f64, restoring: Option<f64>| {
        println!(
            "{phase:36} {keys:>9} {until_running:>15.2} {:>11} {:>10.0}",
            restoring.map_or("-".to_owned(), |r| format!("{r:.3}")),
            keys as f64 / until_running.max(1e-9)
        );
    };
    let embedded = embedded_restart(&settings)?;
    line("embedded: restart on its data dir", embedded.0, embedded.1, None);
    let Some(brokers) = settings.brokers.clone() else {
        println!("ratio checkpoint/full restore not measured (no --brokers: the embedded backend has no changelogs)");
        println!("ratio weir/kafka-streams restore not measured (no --brokers)");
        return Ok(());
    };
    let kafka = on_kafka(&settings, &brokers)?;
    let (full, checkpoint) = (kafka.full, kafka.checkpoint);
    line("kafka: full (empty data dir; deploy)", full.keys, full.until_running, Some(full.restoring));
    let tail = format!("kafka: checkpoint + {}% tail (start)", settings.tail_percent);
    line(&tail, checkpoint.keys, checkpoint.until_running, Some(checkpoint.restoring));
    if let Some((keys, seconds)) = kafka.kafka_streams {
        line("kafka-streams: full (empty; start)", keys, seconds, None);
    }
    // The restore itself, and what a user waits for (process start, group
    // join and the rest included for the checkpoint case).
    println!("ratio checkpoint/full restore {:.3}", checkpoint.restoring / full.restoring.max(1e-9));
    println!("ratio checkpoint/full until running {:.3}", checkpoint.until_running / full.until_running);
    match kafka.kafka_streams {
        Some((keys, seconds)) => println!(
            "ratio weir/kafka-streams restore {:.2}",
            (full.keys as f64 / full.until_running) / (keys as f64 / seconds)
        ),
        None => println!("ratio weir/kafka-streams restore not measured (no --kafka-streams peer)"),
    }
    Ok(())
}

/// Unique names per run: the broker may be shared.
fn run_name(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("bench-restore-{what}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn spec(settings: &RestoreBench, name: &str, dir: &Path) -> anyhow::Result<(PathBuf, Topology)> {
    let yaml = SPEC
        .replace("{N}", name)
        .replace("{P}", &settings.partitions.to_string())
        .replace("{G}", &std::fs::canonicalize(&settings.guests)?.display().to_string());
    let path = dir.join("app.yaml");
    std::fs::write(&path, &yaml)?;
    Ok((path, Topology::compile(crate::topology::parse_spec(&yaml)?)?))
}

/// Polls the application's status until every task runs with its restore
/// done; answers the keys restored (the sum of the tasks' restore counts)
/// and how long the restore itself took (the longest task's: they restore
/// together).
fn wait_running(url: &str, app: &str, child: &mut Child, tasks: usize) -> anyhow::Result<(u64, f64)> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("weir serve exited ({status}) before the application ran");
        }
        if let Ok(status) = crate::client::call("GET", &format!("{url}/v1/apps/{app}"), None) {
            let list = status["tasks"].as_array().cloned().unwrap_or_default();
            let running = list.iter().filter(|t| t["state"] == "running").count();
            if running == tasks {
                let keys = list.iter().map(|t| t["restore"][0].as_u64().unwrap_or(0)).sum();
                let ms = list.iter().filter_map(|t| t["restore_ms"].as_u64()).max().unwrap_or(0);
                return Ok((keys, ms as f64 / 1000.0));
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the application did not run within {PHASE_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One restore: keys restored, seconds until every task ran, seconds of
/// the restore itself.
#[derive(Clone, Copy)]
struct Restored {
    keys: u64,
    until_running: f64,
    restoring: f64,
}

struct KafkaFigures {
    full: Restored,
    checkpoint: Restored,
    /// Keys and seconds from `start()` until every partition was restored.
    kafka_streams: Option<(u64, f64)>,
}

fn on_kafka(settings: &RestoreBench, brokers: &str) -> anyhow::Result<KafkaFigures> {
    let name = run_name("kafka");
    let dir = tempfile::tempdir()?;
    let (spec_path, topology) = spec(settings, &name, dir.path())?;
    crate::backend::kafka::runner::create_topics(brokers, &topology)?;
    let changelog = format!("{name}-counts-changelog");
    let tasks = settings.partitions as usize;
    fill_changelog(brokers, &changelog, settings.partitions, 0..settings.keys, settings.value_bytes)?;

    let data = dir.path().join("data");
    let log = dir.path().join("weir.log");
    let (mut child, url) = spawn_weir_serve(Some(brokers), settings.workers, Duration::from_millis(100), &data, &log)?;
    let started = Instant::now();
    crate::client::deploy(&spec_path, &url)?;
    let (keys, restoring) = wait_running(&url, &name, &mut child, tasks)?;
    let full = Restored { keys, until_running: started.elapsed().as_secs_f64(), restoring };
    stop_child(&mut child)?;

    let tail = ((settings.keys as f64 * settings.tail_percent / 100.0).round() as usize).max(1);
    fill_changelog(brokers, &changelog, settings.partitions, 0..tail, settings.value_bytes)?;
    let started = Instant::now();
    let (mut child, url) = spawn_weir_serve(Some(brokers), settings.workers, Duration::from_millis(100), &data, &log)?;
    let (keys, restoring) = wait_running(&url, &name, &mut child, tasks)?;
    let checkpoint = Restored { keys, until_running: started.elapsed().as_secs_f64(), restoring };
    stop_child(&mut child)?;

    let kafka_streams = match &settings.kafka_streams {
        Some(peer) => Some(kafka_streams_restore(settings, brokers, peer, &name, dir.path())?),
        None => None,
    };
    Ok(KafkaFigures { full, checkpoint, kafka_streams })
}

/// Writes `keys` (`key-00000001`, ...) with values of `value_bytes` into the
/// changelog, each on the partition murmur2 gives its key (as the store's
/// owner would have).
fn fill_changelog(
    brokers: &str,
    topic: &str,
    partitions: u32,
    keys: std::ops::Range<usize>,
    value_bytes: usize,
) -> anyhow::Result<()> {
    let producer: BaseProducer = client_config(brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let value = vec![b'v'; value_bytes];
    for i in keys {
        let key = format!("key-{i:08}");
        let partition = partition_for(Some(key.as_bytes()), partitions, 0);
        let record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).partition(partition as i32).key(key.as_bytes()).payload(&value);
        send(&producer, record)?;
    }
    anyhow::ensure!(
        serve_producer_until(&producer, Duration::from_secs(120), || producer.in_flight_count() == 0),
        "the changelog records were not all acknowledged"
    );
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// The Kafka Streams peer restoring the same changelog: (keys, seconds).
fn kafka_streams_restore(
    settings: &RestoreBench,
    brokers: &str,
    peer: &Path,
    name: &str,
    dir: &Path,
) -> anyhow::Result<(u64, f64)> {
    let log = dir.join("kafka-streams.log");
    let child = Command::new("java")
        .args(["-Xms256m", "-Xmx1g", "-cp"])
        .arg(format!("{}:{}/*", peer_jar(peer).display(), peer.join("target/libs").display()))
        .arg("dev.weir.peer.Main")
        .arg("bench-restore")
        .args(["--bootstrap", brokers, "--application-id", name])
        .args(["--input", &format!("in-{name}"), "--output", &format!("out-{name}")])
        .args(["--partitions", &settings.partitions.to_string(), "--threads", &settings.workers.to_string()])
        .arg("--state-dir")
        .arg(dir.join("ks-state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start java for the Kafka Streams peer: {e}"))?;
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let figures = text.lines().find_map(|l| {
        let mut words = l.strip_prefix("restored ")?.split_whitespace();
        Some((words.next()?.parse::<u64>().ok()?, words.next()?.parse::<u64>().ok()?))
    });
    let Some((keys, ms)) = figures else {
        anyhow::bail!(
            "the Kafka Streams peer did not report its restore ({}):\n{}",
            output.status,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    Ok((keys, ms as f64 / 1000.0))
}

/// The embedded backend: key-count fills its store with `keys` keys, the
/// instance stops cleanly and starts again on the data dir: (keys, seconds
/// from process start until every task runs).
fn embedded_restart(settings: &RestoreBench) -> anyhow::Result<(u64, f64)> {
    let name = run_name("embedded");
    let dir = tempfile::tempdir()?;
    let (spec_path, _) = spec(settings, &name, dir.path())?;
    let data = dir.path().join("data");
    let log = dir.path().join("weir.log");
    let (mut child, url) = spawn_embedded(&data, &log)?;
    crate::client::deploy(&spec_path, &url)?;
    let input: String = (0..settings.keys).map(|i| format!("{{\"key\":\"key-{i:08}\",\"value\":\"x\"}}\n")).collect();
    crate::client::produce(&format!("in-{name}"), &url, input.as_bytes())?;
    // Filled when every record was processed (committed positions at the end).
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let status: Value = crate::client::call("GET", &format!("{url}/v1/apps/{name}"), None)?;
        let processed: u64 = status["tasks"]
            .as_array()
            .map(|ts| ts.iter().map(|t| t["records_in"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0);
        if processed >= settings.keys as u64 && status["lag"].as_i64() == Some(0) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "key-count did not fill its store within {PHASE_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_child(&mut child)?;
    let started = Instant::now();
    let (mut child, url) = spawn_embedded(&data, &log)?;
    wait_running(&url, &name, &mut child, settings.partitions as usize)?;
    let seconds = started.elapsed().as_secs_f64();
    stop_child(&mut child)?;
    Ok((settings.keys as u64, seconds))
}

fn spawn_embedded(data_dir: &Path, log: &Path) -> anyhow::Result<(Child, String)> {
    spawn_weir_serve(None, 1, Duration::from_millis(100), data_dir, log)
}
