//! `weir bench kafka --brokers ...`: weir on Kafka against a plain rdkafka
//! loop and against Kafka Streams, all from one run on the same broker,
//! exactly-once, the same partitions, threads and commit interval:
//!
//! - `raw`: rdkafka consume → produce with the cadence weir uses (a group
//!   member and a transactional producer per thread, offsets sent to the
//!   transaction, a commit every `commit_interval`), no wasm, no tasks, no
//!   stores: the floor of what any processor on this broker can cost;
//! - `passthrough`, `key-count`, `reservation`: a `weir serve --brokers`
//!   child process running the guest examples;
//! - `kafka-streams key-count`, `kafka-streams reservation`: the same logic
//!   in Kafka Streams (`tests/peers/kafka-streams`, `exactly_once_v2`,
//!   caching off), a `java` child process.
//!
//! Each scenario gets fresh topics with `records` records pre-produced.
//! Start-up (process start until the first output is visible to a
//! read_committed consumer: group join, restore, first commit) is reported
//! on its own; throughput is steady state, from the first output to the
//! last. Latency: outputs' arrival minus their input's timestamp at a
//! fixed offered rate. Memory: the peak RSS of the process that ran it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{PRODUCTS, bench_record};
use crate::backend::embedded::now_us;
use crate::backend::kafka::{PlainConsumer, QuietContext, client_config, send, serve_producer_until};
use crate::partitioner::partition_for;
use crate::topology::Topology;

/// Settings of `weir bench kafka`.
#[derive(Debug, Clone)]
pub struct KafkaBench {
    pub brokers: String,
    pub guests: PathBuf,
    /// Records of the throughput phase (pre-produced).
    pub records: usize,
    /// Records per second offered in the latency phase.
    pub latency_rate: usize,
    /// How long the latency phase offers them.
    pub latency_seconds: u64,
    pub commit_interval: Duration,
    /// Processing threads of weir, Kafka Streams and the raw loop alike.
    pub workers: usize,
    pub partitions: u32,
    /// The Kafka Streams peer (`tests/peers/kafka-streams`, built); `None`
    /// leaves its scenarios out.
    pub kafka_streams: Option<PathBuf>,
    /// Scenarios to run (empty: all).
    pub only: Vec<String>,
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

/// A tumbling-window count (60 s, 10 s grace, emitted on close) through
/// the SDK's windows: the page-views example configured as a tumbling window.
const WINDOWED_COUNT: &str = r#"
name: bench-{S}
topics: { in-{S}: {P}, out-{S}: {P}, late-{S}: {P} }
sources: { in: { topic: in-{S}, to: [count] } }
processors:
  count:
    component: "{G}/page_views.wasm"
    config: { size: 60s, advance: 60s, grace: 10s }
    stores: [views]
    timers: true
    outputs: { counts: out, late: late }
stores: { views: { retention: 70s } }
sinks: { out: { topic: out-{S} }, late: { topic: late-{S} } }
"#;

/// Window size and grace of [`WINDOWED_COUNT`] (and of the peer's twin).
const WINDOW_MS: i64 = 60_000;
const GRACE_MS: i64 = 10_000;

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

/// Who processes a scenario's input.
#[derive(Clone, Copy)]
enum Runner {
    Raw,
    Weir,
    /// The peer's mode: `bench-key-count` or `bench-reservation`.
    KafkaStreams(&'static str),
}

/// What a scenario runs, its input kind and output topics (unsuffixed).
struct Scenario {
    name: &'static str,
    runner: Runner,
    /// The weir spec; its topics are every runner's topics.
    spec: &'static str,
    /// `text` (keyed events), `orders` (reservation orders, after stock) or
    /// `events-in-time` (keyed events 1 ms apart in event time: windowed,
    /// one output per closed window rather than per record).
    input: &'static str,
    outputs: &'static [&'static str],
}

/// One scenario's figures.
struct Figures {
    startup_s: f64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Peak resident memory of the processing process, MiB (`None`: in process).
    rss_mib: Option<f64>,
}

pub fn run(settings: KafkaBench) -> anyhow::Result<()> {
    for guest in ["passthrough", "key_count", "reservation", "page_views"] {
        let path = settings.guests.join(format!("{guest}.wasm"));
        anyhow::ensure!(path.exists(), "{} not found: run `cargo guests` first, or pass --guests DIR", path.display());
    }
    if let Some(peer) = &settings.kafka_streams {
        anyhow::ensure!(
            peer_jar(peer).exists(),
            "{} not found: build the peer with `mvn -q -f {}/pom.xml package`",
            peer_jar(peer).display(),
            peer.display()
        );
    }
    crate::backend::kafka::partition_counts(&settings.brokers).map_err(anyhow::Error::msg)?;
    let scenario = |name, runner, spec, input, outputs| Scenario { name, runner, spec, input, outputs };
    const OUT: &[&str] = &["out"];
    const VALIDATED_REJECTED: &[&str] = &["validated", "rejected"];
    let mut scenarios = vec![
        scenario("raw", Runner::Raw, PASSTHROUGH, "text", OUT),
        scenario("passthrough", Runner::Weir, PASSTHROUGH, "text", OUT),
        scenario("key-count", Runner::Weir, KEY_COUNT, "text", OUT),
        scenario("reservation", Runner::Weir, RESERVATION, "orders", VALIDATED_REJECTED),
        scenario("windowed", Runner::Weir, WINDOWED_COUNT, "events-in-time", OUT),
    ];
    if settings.kafka_streams.is_some() {
        scenarios.push(scenario("ks-key-count", Runner::KafkaStreams("bench-key-count"), KEY_COUNT, "text", OUT));
        scenarios.push(scenario(
            "ks-reservation",
            Runner::KafkaStreams("bench-reservation"),
            RESERVATION,
            "orders",
            VALIDATED_REJECTED,
        ));
        scenarios.push(scenario(
            "ks-windowed",
            Runner::KafkaStreams("bench-windowed-count"),
            WINDOWED_COUNT,
            "events-in-time",
            OUT,
        ));
    }
    if !settings.only.is_empty() {
        for name in &settings.only {
            anyhow::ensure!(scenarios.iter().any(|s| s.name == name), "no scenario `{name}` (--only)");
        }
        scenarios.retain(|s| settings.only.iter().any(|o| o == s.name));
    }
    println!(
        "kafka at {}, exactly-once, {} partitions, {} threads, commit interval {:?}; throughput over {} \
         pre-produced records (steady state: first output to last), latency at {}/s for {} s",
        settings.brokers,
        settings.partitions,
        settings.workers,
        settings.commit_interval,
        settings.records,
        settings.latency_rate,
        settings.latency_seconds
    );
    println!(
        "{:15} {:>10} {:>12} {:>9} {:>9} {:>9}",
        "scenario", "start-up s", "records/s", "p50 ms", "p99 ms", "RSS MiB"
    );
    let mut results = BTreeMap::new();
    for scenario in &scenarios {
        let f = run_scenario(&settings, scenario)?;
        println!(
            "{:15} {:>10.2} {:>12.0} {:>9.1} {:>9.1} {:>9}",
            scenario.name,
            f.startup_s,
            f.per_second,
            f.p50_ms,
            f.p99_ms,
            f.rss_mib.map_or("-".to_owned(), |m| format!("{m:.0}"))
        );
        results.insert(scenario.name, f);
    }
    let ratio = |a: &str, b: &str| match (results.get(a), results.get(b)) {
        (Some(a), Some(b)) => format!("{:.2}", a.per_second / b.per_second),
        _ => "not measured (a side was not run: --only, or no --kafka-streams peer)".to_owned(),
    };
    println!("ratio weir/kafka-streams key-count {}", ratio("key-count", "ks-key-count"));
    println!("ratio weir/kafka-streams reservation {}", ratio("reservation", "ks-reservation"));
    println!("ratio weir/kafka-streams windowed {}", ratio("windowed", "ks-windowed"));
    println!("ratio windowed/key-count {}", ratio("windowed", "key-count"));
    println!("ratio passthrough/raw {}", ratio("passthrough", "raw"));
    Ok(())
}

fn run_scenario(settings: &KafkaBench, scenario: &Scenario) -> anyhow::Result<Figures> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let suffix = format!("{}-{}-{}", scenario.name, std::process::id(), nanos % 1_000_000_000);
    let topic = |t: &str| format!("{t}-{suffix}");
    let brokers = &settings.brokers;
    let dir = tempfile::tempdir()?;

    // Topics: as weir would create them for the spec (every runner reads
    // and writes the same names); Kafka Streams adds its internal ones.
    let yaml = scenario
        .spec
        .replace("{S}", &suffix)
        .replace("{P}", &settings.partitions.to_string())
        .replace("{G}", &std::fs::canonicalize(&settings.guests)?.display().to_string());
    let topology = Topology::compile(crate::topology::parse_spec(&yaml)?)?;
    crate::backend::kafka::runner::create_topics(brokers, &topology)?;

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
        // Plenty of stock, loaded before the input.
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
    for chunk in (0..settings.records).collect::<Vec<_>>().chunks(50_000) {
        produce(&input, chunk.iter().map(|i| bench_record(scenario.input, *i, now_ms)).collect())?;
    }
    let windowed = scenario.input == "events-in-time";
    // Windowed: how many (key, window) results the input makes, and a record
    // per partition far enough ahead in event time to close every window.
    let expected = if windowed {
        let records: Vec<_> = (0..settings.records).map(|i| bench_record(scenario.input, i, now_ms)).collect();
        let last = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
        let windows: std::collections::BTreeSet<(Vec<u8>, i64)> = records
            .iter()
            .map(|r| (r.key.clone().unwrap_or_default(), r.timestamp - r.timestamp.rem_euclid(WINDOW_MS)))
            .collect();
        produce(&input, closers(settings.partitions, last + 2 * (WINDOW_MS + GRACE_MS)))?;
        windows.len()
    } else {
        settings.records
    };
    producer.flush(Duration::from_secs(300))?;

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

    let started = Instant::now();
    let mut processor = match scenario.runner {
        Runner::Raw => Processor::raw(settings, &suffix),
        Runner::Weir => Processor::weir(settings, &yaml, dir.path())?,
        Runner::KafkaStreams(mode) => Processor::kafka_streams(settings, mode, &suffix, dir.path())?,
    };
    let deadline = started + Duration::from_secs(900);
    let mut seen = 0usize;
    let first = read_outputs(&reader, &mut seen, 1, None, deadline, &mut processor)?;
    let startup_s = first.duration_since(started).as_secs_f64();
    let last = read_outputs(&reader, &mut seen, expected, None, deadline, &mut processor)?;
    let elapsed = last.duration_since(first).as_secs_f64().max(1e-9);
    if windowed {
        // The first result comes when the first window closes, after the
        // records of its first 70 s of event time (1 ms apart): the records
        // processed from then to the last result.
        let before_first = (WINDOW_MS + GRACE_MS) as f64;
        let per_second = (settings.records as f64 - before_first).max(1.0) / elapsed;
        let rss_mib = processor.peak_rss_mib();
        processor.stop()?;
        return Ok(Figures { startup_s, per_second, p50_ms: f64::NAN, p99_ms: f64::NAN, rss_mib });
    }
    let per_second = (settings.records - 1) as f64 / elapsed;

    // Latency: a steady trickle well below capacity.
    let per_tick = (settings.latency_rate / 100).max(1);
    let ticks = settings.latency_seconds as usize * 100;
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
    read_outputs(
        &reader,
        &mut seen,
        settings.records + ticks * per_tick,
        Some(&mut latencies),
        deadline,
        &mut processor,
    )?;
    let rss_mib = processor.peak_rss_mib();
    processor.stop()?;
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(f64::NAN);
    Ok(Figures { startup_s, per_second, p50_ms: pick(0.5), p99_ms: pick(0.99), rss_mib })
}

/// One record per partition at event time `at`: past the close of every
/// window of the input.
fn closers(partitions: u32, at: i64) -> Vec<crate::record::Record> {
    let mut found = std::collections::BTreeMap::new();
    for i in 0.. {
        let key = format!("close-{i}");
        found.entry(partition_for(Some(key.as_bytes()), partitions, 0)).or_insert(key);
        if found.len() as u32 == partitions {
            break;
        }
    }
    found
        .into_values()
        .map(|key| crate::record::Record {
            key: Some(key.into_bytes()),
            value: Some(b"close".to_vec()),
            timestamp: at,
            headers: Vec::new(),
        })
        .collect()
}

/// Reads outputs until `until` were seen (recording each one's latency
/// when asked); answers when the last of them arrived.
fn read_outputs(
    reader: &PlainConsumer,
    seen: &mut usize,
    until: usize,
    mut latencies: Option<&mut Vec<f64>>,
    deadline: Instant,
    processor: &mut Processor,
) -> anyhow::Result<Instant> {
    let mut at = Instant::now();
    while *seen < until {
        anyhow::ensure!(Instant::now() < deadline, "only {seen} of {until} outputs arrived");
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                at = Instant::now();
                *seen += 1;
                if let Some(l) = latencies.as_mut() {
                    l.push(now_us() as f64 / 1000.0 - m.timestamp().to_millis().unwrap_or(0) as f64);
                }
            }
            Some(Err(e)) => anyhow::bail!("reading outputs: {e}"),
            None => processor.check()?,
        }
    }
    Ok(at)
}

/// The process (or threads) doing a scenario's work.
enum Processor {
    Raw { stop: Arc<AtomicBool>, threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>> },
    Child { what: &'static str, child: Child, log: PathBuf },
}

impl Processor {
    fn raw(settings: &KafkaBench, suffix: &str) -> Processor {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..settings.workers)
            .map(|w| {
                let (settings, stop, suffix) = (settings.clone(), stop.clone(), suffix.to_owned());
                std::thread::spawn(move || raw_loop(&settings, &suffix, w, &stop))
            })
            .collect();
        Processor::Raw { stop, threads }
    }

    /// `weir serve --brokers` (this binary) with the spec deployed.
    fn weir(settings: &KafkaBench, yaml: &str, dir: &Path) -> anyhow::Result<Processor> {
        let spec = dir.join("app.yaml");
        std::fs::write(&spec, yaml)?;
        let log = dir.join("weir.log");
        let (child, url) = spawn_weir_serve(
            Some(&settings.brokers),
            settings.workers,
            settings.commit_interval,
            &dir.join("data"),
            &log,
        )?;
        let processor = Processor::Child { what: "weir serve", child, log };
        crate::client::deploy(&spec, &url)?;
        Ok(processor)
    }

    /// The Kafka Streams peer; its topics are the scenario's.
    fn kafka_streams(settings: &KafkaBench, mode: &str, suffix: &str, dir: &Path) -> anyhow::Result<Processor> {
        let peer = settings.kafka_streams.as_ref().expect("only with a peer");
        let topic = |t: &str| format!("{t}-{suffix}");
        let mut cmd = Command::new("java");
        cmd.args(["-Xms256m", "-Xmx1g", "-cp"])
            .arg(format!("{}:{}/*", peer_jar(peer).display(), peer.join("target/libs").display()))
            .arg("dev.weir.peer.Main")
            .arg(mode)
            .args(["--bootstrap", &settings.brokers, "--application-id", &format!("ks-{suffix}")])
            .args(["--commit-interval-ms", &settings.commit_interval.as_millis().to_string()])
            .args(["--threads", &settings.workers.to_string()])
            .arg("--state-dir")
            .arg(dir.join("ks-state"));
        if mode == "bench-reservation" {
            cmd.args(["--orders", &topic("in"), "--adjustments", &topic("adjustments")]).args([
                "--validated",
                &topic("validated"),
                "--rejected",
                &topic("rejected"),
            ]);
        } else {
            cmd.args(["--input", &topic("in"), "--output", &topic("out")]);
        }
        let log = dir.join("kafka-streams.log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("kafka-streams.out"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start java for the Kafka Streams peer: {e}"))?;
        Ok(Processor::Child { what: "Kafka Streams", child, log })
    }

    /// Fails when the process died early.
    fn check(&mut self) -> anyhow::Result<()> {
        match self {
            Processor::Raw { threads, .. } => {
                anyhow::ensure!(!threads.iter().any(|t| t.is_finished()), "the raw loop stopped early");
            }
            Processor::Child { what, child, log } => {
                if let Some(status) = child.try_wait()? {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    anyhow::bail!("{what} exited ({status}):\n{}", tail.join("\n"));
                }
            }
        }
        Ok(())
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        let Processor::Child { child, .. } = self else { return None };
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
        let kib: f64 =
            status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib / 1024.0)
    }

    fn stop(self) -> anyhow::Result<()> {
        match self {
            Processor::Raw { stop, threads } => {
                stop.store(true, Ordering::Release);
                for t in threads {
                    t.join().map_err(|_| anyhow::anyhow!("raw loop panicked"))??;
                }
            }
            Processor::Child { mut child, .. } => stop_child(&mut child)?,
        }
        Ok(())
    }
}

/// Starts `weir serve` (this binary; on Kafka with `brokers`) on
/// `data_dir`, logging to `log`; answers the child and its API URL once it
/// listens.
pub(super) fn spawn_weir_serve(
    brokers: Option<&str>,
    workers: usize,
    commit_interval: Duration,
    data_dir: &Path,
    log: &Path,
) -> anyhow::Result<(Child, String)> {
    spawn_weir_serve_with(brokers, workers, commit_interval, data_dir, log, &[])
}

/// [`spawn_weir_serve`] with more `WEIR_*` variables.
pub(super) fn spawn_weir_serve_with(
    brokers: Option<&str>,
    workers: usize,
    commit_interval: Duration,
    data_dir: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<(Child, String)> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("serve").arg("--data-dir").arg(data_dir).args(["--http", "127.0.0.1:0"]);
    if let Some(brokers) = brokers {
        command.args(["--brokers", brokers]);
    }
    let mut child = command
        .arg("--commit-interval")
        .arg(format!("{}ms", commit_interval.as_millis()))
        .env("WEIR_WORKERS", workers.to_string())
        .env("WEIR_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let Some(url) = line.trim().strip_prefix("listening ").map(str::to_owned) else {
        let _ = child.kill();
        anyhow::bail!("weir serve did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
    };
    Ok((child, url))
}

/// Stops a child with SIGTERM (a clean stop: final commit, checkpoints,
/// LeaveGroup), killing it after 30 s.
pub(super) fn stop_child(child: &mut Child) -> anyhow::Result<()> {
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(super) fn peer_jar(peer: &Path) -> PathBuf {
    peer.join("target").join("kafka-streams-peer.jar")
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
        .set("linger.ms", "2")
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
        producer.poll(Duration::ZERO);
        if last_commit.elapsed() >= settings.commit_interval && !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in std::mem::take(&mut offsets) {
                tpl.add_partition_offset(&input, p, Offset::Offset(o))?;
            }
            serve_producer_until(&producer, Duration::from_secs(30), || producer.in_flight_count() == 0);
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
