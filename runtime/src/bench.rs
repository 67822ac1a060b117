//! `weir bench`: measurements, never tests. Each benchmark measures its
//! baseline in the same run and prints a ratio, because the machines are
//! shared and noisy: absolute numbers mean little, ratios travel.

pub mod cluster;
pub mod kafka;
mod more_vs_native;
pub mod restore;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use reservation::{Adjustment, Order, Reservation};
use weir_sdk::testing::TestDriver;

use crate::record::TaskRecord;
use crate::state::memory::MemoryStore;
use crate::state::{StoreOverlay, TaskStores};
use crate::topology::{Limits, Topology};
use crate::wasm::{CallTime, EngineConfig, InstanceInfo, ProcessorInstance, StoreGrantInfo, WasmEngine};

/// Rounds; a round runs the native side, then the component.
const ROUNDS: usize = 9;
const PRODUCTS: usize = 1000;
const ADJUSTMENTS_TOPIC: &str = "adjustments";

fn orders(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let order =
                Order { order_id: format!("o{i}"), product_id: format!("p{}", i % PRODUCTS), qty: 1 + (i % 5) as i64 };
            (order.product_id.clone().into_bytes(), serde_json::to_vec(&order).expect("json"))
        })
        .collect()
}

fn adjustments() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..PRODUCTS)
        .map(|p| {
            let adj = Adjustment { product_id: format!("p{p}"), delta: 250 };
            (adj.product_id.clone().into_bytes(), serde_json::to_vec(&adj).expect("json"))
        })
        .collect()
}

/// The reservation processor, natively (SDK harness) vs as a component
/// (weir's engine, stores and call path), over the same records.
pub fn component_vs_native(component: Option<PathBuf>, records: usize, batch: usize) -> anyhow::Result<()> {
    let component = component.unwrap_or_else(|| PathBuf::from("target/wasm32-wasip2/guest/reservation.wasm"));
    anyhow::ensure!(
        component.exists(),
        "{} not found: build it with `cargo guests` or pass --component",
        component.display()
    );
    let batch = batch.max(1);
    let orders = orders(records);
    let adjustments = adjustments();
    let engine = WasmEngine::new(EngineConfig::default())?;
    let loaded = engine.load_file(&component)?;

    let mut native = Vec::new();
    let mut wasm = Vec::new();
    let mut outcomes = (0usize, 0usize);
    for _ in 0..ROUNDS {
        let (ns, emitted) = run_native(&orders, &adjustments)?;
        native.push(ns);
        outcomes.0 = emitted;
        let (ns, emitted) = run_component(&engine, loaded.clone(), &orders, &adjustments, batch)?;
        wasm.push(ns);
        outcomes.1 = emitted;
    }
    anyhow::ensure!(outcomes.0 == outcomes.1, "native emitted {} records, component {}", outcomes.0, outcomes.1);
    println!("reservation over {records} records ({PRODUCTS} products), batch {batch}, median of {ROUNDS} rounds");
    print_component_vs_native("", &native, &wasm);
    // The same for key-count and enrichment, from beside the component.
    let guests = component.parent().unwrap_or(std::path::Path::new("."));
    more_vs_native::run(&engine, guests, records, batch, ROUNDS)
}

fn run_native(orders: &[(Vec<u8>, Vec<u8>)], adjustments: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<(f64, usize)> {
    let mut driver = TestDriver::new(Reservation::default())
        .with_config("role", "reserve")
        .with_config("adjustments_topic", ADJUSTMENTS_TOPIC)
        .with_store("stock")
        .with_outputs(["validated", "rejected"]);
    driver.init().map_err(|e| anyhow::anyhow!("init: {e}"))?;
    for (k, v) in adjustments {
        let r = weir_sdk::Record::new(k.clone(), v.clone()).on_topic(ADJUSTMENTS_TOPIC);
        driver.process(r).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    driver.take_emitted();
    let input: Vec<weir_sdk::Record> =
        orders.iter().map(|(k, v)| weir_sdk::Record::new(k.clone(), v.clone()).on_topic("orders-by-product")).collect();
    let started = Instant::now();
    for r in input {
        driver.process(r).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let elapsed = started.elapsed();
    let emitted = driver.take_emitted().len();
    Ok((elapsed.as_nanos() as f64 / orders.len() as f64, emitted))
}

/// An input record as the host hands it to a component.
pub(crate) fn guest_record(key: &[u8], value: &[u8], topic: &Arc<str>, offset: usize) -> TaskRecord {
    TaskRecord {
        key: Some(key.to_vec()),
        value: Some(value.to_vec()),
        old_value: None,
        timestamp: 0,
        headers: Vec::new(),
        topic: topic.clone(),
        partition: 0,
        offset: offset as i64,
    }
}

fn run_component(
    engine: &WasmEngine,
    component: Arc<crate::wasm::LoadedComponent>,
    orders: &[(Vec<u8>, Vec<u8>)],
    adjustments: &[(Vec<u8>, Vec<u8>)],
    batch: usize,
) -> anyhow::Result<(f64, usize)> {
    let info = Arc::new(InstanceInfo {
        app: "bench".into(),
        processor: "reserve".into(),
        task_id: "bench/0_0".into(),
        partition: 0,
        outputs: vec!["validated".into(), "rejected".into()],
        grants: vec![StoreGrantInfo { name: "stock".into(), index: 0, writable: true }],
        timers: None,
        sources: BTreeMap::new(),
    });
    let base = Arc::new(MemoryStore::default());
    let mut stores = TaskStores::new(vec![StoreOverlay::new("stock", base)]);
    let mut instance = ProcessorInstance::instantiate(engine, component, info, Limits::default())?;
    let time = CallTime::default();
    let config =
        [("role".to_owned(), "reserve".to_owned()), ("adjustments_topic".to_owned(), ADJUSTMENTS_TOPIC.to_owned())];
    instance.init(&mut stores, time, &config).map_err(|f| anyhow::anyhow!("init: {}", f.message))?;
    let adj: Vec<TaskRecord> = adjustments
        .iter()
        .enumerate()
        .map(|(i, (k, v))| guest_record(k, v, &Arc::from(ADJUSTMENTS_TOPIC), i))
        .collect();
    instance.process(&mut stores, time, &adj, &vec![0; adj.len()]).map_err(|f| anyhow::anyhow!("{}", f.message))?;
    stores.release_savepoint();
    let input: Vec<TaskRecord> =
        orders.iter().enumerate().map(|(i, (k, v))| guest_record(k, v, &Arc::from("orders-by-product"), i)).collect();
    let mut emitted: BTreeMap<usize, usize> = BTreeMap::new();
    let stream_times = vec![0; batch];
    let started = Instant::now();
    for chunk in input.chunks(batch) {
        let ok = instance
            .process(&mut stores, time, chunk, &stream_times[..chunk.len()])
            .map_err(|f| anyhow::anyhow!("{}", f.message))?;
        stores.release_savepoint();
        for e in ok.emitted {
            *emitted.entry(e.output).or_default() += 1;
        }
    }
    let elapsed = started.elapsed();
    Ok((elapsed.as_nanos() as f64 / orders.len() as f64, emitted.values().sum()))
}

/// Settings of `weir bench embedded`.
#[derive(Debug, Clone)]
pub struct EmbeddedBench {
    /// Directory holding the guest components (default: the workspace build output).
    pub guests: PathBuf,
    /// Records of the throughput phase.
    pub records: usize,
    /// Records per second offered in the latency phase.
    pub latency_rate: usize,
    pub commit_interval: std::time::Duration,
    pub workers: usize,
    pub partitions: u32,
    /// Scenarios to run (empty: all), e.g. to profile one.
    pub only: Vec<String>,
    /// Times every scenario runs, in turn; figures are medians.
    pub rounds: usize,
}

impl Default for EmbeddedBench {
    fn default() -> Self {
        EmbeddedBench {
            guests: PathBuf::from("target/wasm32-wasip2/guest"),
            records: 1_000_000,
            latency_rate: 2_000,
            commit_interval: std::time::Duration::from_millis(100),
            workers: 2,
            partitions: 4,
            only: Vec::new(),
            rounds: 3,
        }
    }
}

/// One scenario's figures.
struct Figures {
    /// Inputs over the wall-clock time from start to the last output.
    per_second: f64,
    /// See [`steady_throughput`].
    steady_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// What runs in a scenario.
enum Scenario {
    /// The backend's own read → write loop, no wasm.
    Raw,
    /// A spec run by weir.
    App { spec: String, input: &'static str, outputs: &'static [&'static str] },
}

const PASSTHROUGH_SPEC: &str = r#"
name: bench
topics: { in: {P}, out: {P} }
sources: { in: { topic: in, to: [p] } }
processors:
  p: { component: "{G}/passthrough.wasm", outputs: { out: out } }
sinks: { out: { topic: out } }
"#;

const KEY_COUNT_SPEC: &str = r#"
name: bench
topics: { in: {P}, out: {P} }
sources: { in: { topic: in, to: [count] } }
processors:
  count: { component: "{G}/key_count.wasm", stores: [counts], outputs: { counts: out } }
stores: { counts: {} }
sinks: { out: { topic: out } }
"#;

/// A tumbling-window count (60 s windows, 10 s grace, emitted on close) by
/// the hand-written test guest `windowed-count` (it reads stream time in
/// `process` and closes windows from a punctuation).
const WINDOWED_SPEC: &str = r#"
name: bench
topics: { in: {P}, out: {P}, late: {P} }
sources: { in: { topic: in, to: [w] } }
processors:
  w:
    component: "{G}/windowed_count.wasm"
    config: { size_ms: 60000, grace_ms: 10000, close_every_ms: 10000 }
    stores: [windows]
    outputs: { counts: out, late: late }
stores: { windows: {} }
sinks: { out: { topic: out }, late: { topic: late } }
"#;

/// The same count through the SDK's windows (the page-views example as a
/// tumbling window): a window store, one close timer per window.
const SDK_WINDOWED_SPEC: &str = r#"
name: bench
topics: { in: {P}, out: {P}, late: {P} }
sources: { in: { topic: in, to: [w] } }
processors:
  w:
    component: "{G}/page_views.wasm"
    config: { size: 60s, advance: 60s, grace: 10s }
    stores: [views]
    timers: true
    outputs: { counts: out, late: late }
stores: { views: { retention: 70s } }
sinks: { out: { topic: out }, late: { topic: late } }
"#;

const RESERVATION_SPEC: &str = r#"
name: bench
topics: { in: {P}, adjustments: {P}, validated: {P}, rejected: {P} }
sources:
  in: { topic: in, value_format: json, to: [rekey] }
  adjustments: { topic: adjustments, value_format: json, to: [reserve] }
processors:
  rekey: { component: "{G}/reservation.wasm", config: { role: rekey }, outputs: { by-product: by-product } }
  reserve:
    component: "{G}/reservation.wasm"
    config: { role: reserve, adjustments_topic: adjustments }
    stores: [stock]
    outputs: { validated: validated, rejected: rejected }
repartitions: { by-product: { to: [reserve] } }
stores: { stock: {} }
sinks: { validated: { topic: validated }, rejected: { topic: rejected } }
"#;

/// `weir bench embedded`: throughput and end-to-end latency on the embedded
/// backend, exactly-once, for the raw loop, a passthrough component,
/// key-count and reservation; last line `ratio <passthrough/raw>`.
pub fn embedded(settings: EmbeddedBench) -> anyhow::Result<()> {
    for guest in ["passthrough", "key_count", "reservation"] {
        let path = settings.guests.join(format!("{guest}.wasm"));
        anyhow::ensure!(path.exists(), "{} not found: run `cargo guests` first, or pass --guests DIR", path.display());
    }
    let engine = Arc::new(WasmEngine::new(EngineConfig::default())?);
    let fill = |spec: &str| {
        spec.replace("{P}", &settings.partitions.to_string()).replace("{G}", &settings.guests.display().to_string())
    };
    let windowed = ["windowed_count.wasm", "page_views.wasm"].iter().all(|g| settings.guests.join(g).exists());
    let mut scenarios = vec![
        ("raw", Scenario::Raw),
        ("passthrough", Scenario::App { spec: fill(PASSTHROUGH_SPEC), input: "text", outputs: &["out"] }),
        ("key-count", Scenario::App { spec: fill(KEY_COUNT_SPEC), input: "text", outputs: &["out"] }),
        (
            "reservation",
            Scenario::App { spec: fill(RESERVATION_SPEC), input: "orders", outputs: &["validated", "rejected"] },
        ),
    ];
    if windowed {
        // Records 1 ms apart in event time: every record moves stream time.
        scenarios
            .push(("windowed", Scenario::App { spec: fill(WINDOWED_SPEC), input: "events-in-time", outputs: &[] }));
        scenarios.push((
            "sdk-windows",
            Scenario::App { spec: fill(SDK_WINDOWED_SPEC), input: "events-in-time", outputs: &[] },
        ));
    } else {
        println!(
            "(windowed left out: no windowed_count.wasm or page_views.wasm in {}; run cargo guests)",
            settings.guests.display()
        );
    }
    if !settings.only.is_empty() {
        for name in &settings.only {
            anyhow::ensure!(scenarios.iter().any(|(s, _)| s == name), "no scenario `{name}` (--only)");
        }
        scenarios.retain(|(s, _)| settings.only.iter().any(|o| o == s));
    }
    println!(
        "embedded backend, exactly-once, {} partitions, {} workers, commit interval {:?}; throughput over {} records, latency at {}/s",
        settings.partitions, settings.workers, settings.commit_interval, settings.records, settings.latency_rate
    );
    // Rounds run every scenario in turn, so a slow spell of the machine
    // (shared, noisy) falls on all of them alike; each ratio is the median
    // of the rounds' own ratios.
    let mut rounds: BTreeMap<&str, Vec<Figures>> = BTreeMap::new();
    for round in 1..=settings.rounds {
        for (name, scenario) in &scenarios {
            let f = run_embedded_scenario(&settings, &engine, scenario)?;
            if f.p50_ms.is_nan() {
                println!(
                    "round {round} {name:12} {:>10.0} records/s   (no latency: outputs are not one per input)",
                    f.per_second
                );
            } else {
                println!(
                    "round {round} {name:12} {:>10.0} records/s   steady {:>10.0} records/s   p50 {:>6.1} ms   p99 {:>6.1} ms",
                    f.per_second, f.steady_per_second, f.p50_ms, f.p99_ms
                );
            }
            rounds.entry(*name).or_default().push(f);
        }
    }
    for (name, _) in &scenarios {
        let figures = &rounds[name];
        let of = |f: fn(&Figures) -> f64| median(figures.iter().map(f).collect());
        println!(
            "median {name:12} {:>10.0} records/s   steady {:>10.0} records/s   p50 {:>6.1} ms   p99 {:>6.1} ms",
            of(|f| f.per_second),
            of(|f| f.steady_per_second),
            of(|f| f.p50_ms),
            of(|f| f.p99_ms)
        );
    }
    let ratio = |a: &str, b: &str, figure: fn(&Figures) -> f64| match (rounds.get(a), rounds.get(b)) {
        (Some(a), Some(b)) => {
            let each: Vec<f64> = a.iter().zip(b).map(|(a, b)| figure(a) / figure(b)).collect();
            let listed: Vec<String> = each.iter().map(|r| format!("{r:.2}")).collect();
            format!("{:.2} (rounds: {})", median(each), listed.join(" "))
        }
        _ => "not measured (--only)".to_owned(),
    };
    let wall = |f: &Figures| f.per_second;
    let steady = |f: &Figures| f.steady_per_second;
    for name in ["windowed", "sdk-windows"] {
        if rounds.contains_key(name) {
            println!("ratio {name}/key-count {}", ratio(name, "key-count", wall));
        }
    }
    println!("ratio key-count/raw {}", ratio("key-count", "raw", wall));
    println!("ratio reservation/raw {}", ratio("reservation", "raw", wall));
    println!("ratio steady key-count/raw {}", ratio("key-count", "raw", steady));
    println!("ratio steady reservation/raw {}", ratio("reservation", "raw", steady));
    println!("ratio steady passthrough/raw {}", ratio("passthrough", "raw", steady));
    println!("ratio passthrough/raw {}", ratio("passthrough", "raw", wall));
    Ok(())
}

/// Each side's median ns/record, then `ratio<label>`: the median of the
/// rounds' own component/native ratios. A round's two sides run back to
/// back, so a slow spell of the (shared, noisy) machine falls on both.
pub(crate) fn print_component_vs_native(label: &str, native: &[f64], component: &[f64]) {
    println!("native     {:8.1} ns/record", median(native.to_vec()));
    println!("component  {:8.1} ns/record", median(component.to_vec()));
    let each: Vec<f64> = native.iter().zip(component).map(|(n, c)| c / n).collect();
    let listed: Vec<String> = each.iter().map(|r| format!("{r:.2}")).collect();
    println!("ratio{label} {:.2} (rounds: {})", median(each), listed.join(" "));
}

/// The middle value (NaN for none; NaNs sort last).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A compiled application with its components loaded from the spec's paths.
fn app_runtime(topology: &Topology, engine: &Arc<WasmEngine>) -> anyhow::Result<Arc<crate::task::AppRuntime>> {
    let mut components = BTreeMap::new();
    for (id, node) in topology.nodes.iter().enumerate() {
        if let crate::topology::NodeKind::Processor(def) = &node.kind {
            components.insert(id, engine.load_file(std::path::Path::new(&def.component))?);
        }
    }
    Ok(Arc::new(crate::task::AppRuntime { topology: Arc::new(topology.clone()), engine: engine.clone(), components }))
}

fn bench_record(kind: &str, i: usize, now_ms: i64) -> crate::record::Record {
    let (key, value) = match kind {
        "orders" => {
            let order =
                Order { order_id: format!("o{i}"), product_id: format!("p{}", i % PRODUCTS), qty: 1 + (i % 3) as i64 };
            (order.order_id.clone(), serde_json::to_vec(&order).expect("json"))
        }
        _ => (format!("k{}", i % 10_000), format!("event {i} with a little payload to carry along").into_bytes()),
    };
    let timestamp = if kind == "events-in-time" { 1_000_000 + i as i64 } else { now_ms };
    crate::record::Record { key: Some(key.into_bytes()), value: Some(value), timestamp, headers: Vec::new() }
}

fn run_embedded_scenario(
    settings: &EmbeddedBench,
    engine: &Arc<WasmEngine>,
    scenario: &Scenario,
) -> anyhow::Result<Figures> {
    use crate::backend::embedded::runner::{EmbeddedApp, RunnerConfig};
    use crate::backend::embedded::{EmbeddedBackend, now_us};
    use crate::partitioner::partition_for;

    let dir = tempfile::tempdir()?;
    let backend = EmbeddedBackend::open(dir.path(), false)?;
    let (input_kind, outputs): (&str, Vec<&str>) = match scenario {
        Scenario::Raw => ("text", vec!["out"]),
        Scenario::App { input, outputs, .. } => (input, outputs.to_vec()),
    };
    let topology = match scenario {
        Scenario::Raw => None,
        Scenario::App { spec, .. } => Some(Topology::compile(crate::topology::parse_spec(spec)?)?),
    };
    match &topology {
        Some(t) => crate::backend::embedded::runner::create_topics(&backend, t)?,
        None => {
            backend.create_topic("in", settings.partitions)?;
            backend.create_topic("out", settings.partitions)?;
        }
    }
    let input = backend.topic("in").expect("created");
    let produce = |from: usize, count: usize| -> anyhow::Result<()> {
        let now_ms = now_us() / 1000;
        let batch: Vec<_> = (from..from + count)
            .map(|i| {
                let r = bench_record(input_kind, i, now_ms);
                let p = partition_for(r.key.as_deref(), settings.partitions, 0);
                (input.clone(), p, r)
            })
            .collect();
        backend.append(batch)?;
        Ok(())
    };
    if input_kind == "orders" {
        // Plenty of stock, loaded before the clock starts.
        let adjustments = backend.topic("adjustments").expect("created");
        let batch: Vec<_> = (0..PRODUCTS)
            .map(|p| {
                let adj = Adjustment { product_id: format!("p{p}"), delta: 1_000_000 };
                let r = crate::record::Record {
                    key: Some(adj.product_id.clone().into_bytes()),
                    value: Some(serde_json::to_vec(&adj).expect("json")),
                    timestamp: 0,
                    headers: Vec::new(),
                };
                (adjustments.clone(), partition_for(r.key.as_deref(), settings.partitions, 0), r)
            })
            .collect();
        backend.append(batch)?;
    }
    for start in (0..settings.records).step_by(10_000) {
        produce(start, 10_000.min(settings.records - start))?;
    }
    // RocksDB flushes and compacts the load before the clock starts, not
    // during the scenario (raw's figure moved by half between runs without).
    backend.settle(std::time::Duration::from_secs(60))?;
    let out_topics: Vec<_> = outputs.iter().map(|o| backend.topic(o).expect("output topic")).collect();
    // Done when every input is out (one output per input), or, for an
    // application without such outputs, when every input is committed.
    let written = || -> i64 {
        if out_topics.is_empty() {
            return backend.positions("bench").map_or(0, |p| p.values().sum());
        }
        out_topics.iter().map(|t| (0..t.partitions()).map(|p| t.end_offset(p)).sum::<i64>()).sum()
    };
    let expected = settings.records as i64;

    // Components compile before the clock starts: compiling is a deploy's
    // cost (the raw loop has none), the figure is processing throughput.
    let runtime = topology.as_ref().map(|t| app_runtime(t, engine)).transpose()?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut raw_threads = Vec::new();
    let mut app = None;
    match runtime {
        None => {
            for w in 0..settings.workers {
                let backend = backend.clone();
                let stop = stop.clone();
                let settings = settings.clone();
                raw_threads.push(std::thread::spawn(move || raw_loop(&backend, &settings, w, &stop)));
            }
        }
        Some(runtime) => {
            let config =
                RunnerConfig { commit_interval: settings.commit_interval, max_batch: 1000, workers: settings.workers };
            app = Some(EmbeddedApp::start(backend.clone(), runtime, config)?);
        }
    }
    while written() < expected {
        anyhow::ensure!(
            started.elapsed().as_secs() < 600,
            "scenario did not finish: {} of {expected} outputs",
            written()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let per_second = expected as f64 / started.elapsed().as_secs_f64();
    if out_topics.is_empty() {
        if let Some(app) = app {
            app.stop();
        }
        return Ok(Figures { per_second, steady_per_second: f64::NAN, p50_ms: f64::NAN, p99_ms: f64::NAN });
    }
    let steady_per_second = steady_throughput(&backend, &out_topics)?;

    // Latency: a steady trickle well below capacity; each output's append
    // time minus its input's timestamp (the produce time, in ms).
    let mark: Vec<Vec<i64>> =
        out_topics.iter().map(|t| (0..t.partitions()).map(|p| t.end_offset(p)).collect()).collect();
    let tick = std::time::Duration::from_millis(10);
    let per_tick = (settings.latency_rate / 100).max(1);
    let ticks = 300;
    let mut next = settings.records;
    for _ in 0..ticks {
        produce(next, per_tick)?;
        next += per_tick;
        std::thread::sleep(tick);
    }
    let total = expected + (ticks * per_tick) as i64;
    while written() < total {
        anyhow::ensure!(started.elapsed().as_secs() < 900, "latency phase did not finish");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut latencies = Vec::new();
    for (t, marks) in out_topics.iter().zip(&mark) {
        for p in 0..t.partitions() {
            for (r, appended_us) in backend.read_with_time(t, p, marks[p as usize], usize::MAX)? {
                latencies.push((appended_us as f64 / 1000.0) - r.record.timestamp as f64);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    backend.notify();
    for t in raw_threads {
        let _ = t.join();
    }
    if let Some(app) = app {
        app.stop();
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(f64::NAN);
    Ok(Figures { per_second, steady_per_second, p50_ms: pick(0.5), p99_ms: pick(0.99) })
}

/// Records per second between the first commit that wrote outputs and the
/// last one, from the outputs' append times: the records of every commit
/// after the first over the time those commits span. Unlike the wall-clock
/// figure it leaves out start-up (before the first commit) and the wait for
/// the commit interval that ends the run, which at 100 ms commits moves a
/// 1M-record figure by up to a sixth. NaN with fewer than two commits.
fn steady_throughput(
    backend: &crate::backend::embedded::EmbeddedBackend,
    out_topics: &[Arc<crate::backend::embedded::Topic>],
) -> anyhow::Result<f64> {
    let mut appended = Vec::new();
    for t in out_topics {
        for p in 0..t.partitions() {
            appended.extend(backend.read_with_time(t, p, 0, usize::MAX)?.into_iter().map(|(_, us)| us));
        }
    }
    Ok(steady_rate(&appended))
}

/// [`steady_throughput`] over append times (µs): records appended after the
/// first append time, over the span from it to the last.
fn steady_rate(appended_us: &[i64]) -> f64 {
    let (Some(first), Some(last)) = (appended_us.iter().min(), appended_us.iter().max()) else {
        return f64::NAN;
    };
    if last == first {
        return f64::NAN;
    }
    let after_first = appended_us.iter().filter(|t| *t > first).count();
    after_first as f64 / ((last - first) as f64 / 1e6)
}

/// The raw baseline: what a processing loop costs with no wasm, no tasks and
/// no stores: read a batch, write it to `out`, commit outputs and positions
/// together every commit interval (the same exactly-once batch weir writes).
fn raw_loop(
    backend: &Arc<crate::backend::embedded::EmbeddedBackend>,
    settings: &EmbeddedBench,
    worker: usize,
    stop: &std::sync::atomic::AtomicBool,
) {
    use crate::record::ProducedRecord;
    use crate::task::TaskCommit;
    let input = backend.topic("in").expect("in");
    let out: Arc<str> = Arc::from("out");
    // This worker's own `Arc` of the input's name, as the runner's tasks have.
    let name: Arc<str> = Arc::from(&*input.name);
    let partitions: Vec<u32> = (0..settings.partitions).filter(|p| *p as usize % settings.workers == worker).collect();
    let mut read: BTreeMap<u32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    let mut produced = Vec::new();
    let mut positions = BTreeMap::new();
    let mut last_commit = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let seen = backend.data_version();
        let mut any = false;
        for p in &partitions {
            let records = backend.read_as(&input, &name, *p, read[p], 1000).expect("read");
            if let Some(last) = records.last() {
                read.insert(*p, last.offset + 1);
                positions.insert((input.name.clone(), *p), last.offset + 1);
                any = true;
            }
            produced.extend(records.into_iter().map(|r| ProducedRecord {
                topic: out.clone(),
                partition: r.partition,
                record: r.record,
            }));
        }
        if last_commit.elapsed() >= settings.commit_interval && !positions.is_empty() {
            let commit = TaskCommit {
                task: crate::task::TaskId { subtopology: 0, partition: worker as u32 },
                produced: std::mem::take(&mut produced),
                changes: Vec::new(),
                positions: std::mem::take(&mut positions),
                stream_time: None,
                proves_probation: false,
            };
            backend.commit("raw", commit, &std::collections::HashMap::new()).expect("commit");
            last_commit = Instant::now();
        }
        if !any {
            backend.wait_for_data(seen, settings.commit_interval.min(std::time::Duration::from_millis(50)));
        }
    }
}

/// `weir bench swap`: hot swap on a loaded application, in-process on the
/// embedded backend: per round, upload (validate + precompile) time, the
/// time from the update request to every task running the new version
/// (upload-to-running = both), and the longest pause of a task.
pub fn swap(guests: PathBuf, rounds: usize) -> anyhow::Result<()> {
    use crate::node::Node;
    let v1 = std::fs::read(guests.join("key_count.wasm"))?;
    let v2_path = guests.join("key_count_v2.wasm");
    anyhow::ensure!(
        v2_path.exists(),
        "{} not found: build it with `cargo build --profile guest --target wasm32-wasip2 -p key-count --features v2` \
         and copy target/wasm32-wasip2/guest/key_count.wasm there (the test build does this)",
        v2_path.display()
    );
    let v2 = std::fs::read(&v2_path)?;
    let dir = tempfile::tempdir()?;
    let config = crate::config::Config { data_dir: dir.path().join("data"), workers: 2, ..Default::default() };
    let node = Node::open(config)?;
    let spec_for = |sha: &str| -> anyhow::Result<crate::topology::Spec> {
        Ok(crate::topology::parse_spec(&format!(
            "name: swap\ntopics: {{ events: 4, counts: 4 }}\nsources: {{ events: {{ topic: events, to: [count] }} }}\n\
             processors:\n  count: {{ component: \"sha256:{sha}\", stores: [counts], outputs: {{ counts: counts }} }}\n\
             stores: {{ counts: {{}} }}\nsinks: {{ counts: {{ topic: counts }} }}\n"
        ))?)
    };
    let first = node.registry.add(&v1)?;
    node.deploy(spec_for(first.sha256())?)?;
    let events = node.backend.topic("events").expect("created by deploy");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (backend, stop) = (node.backend.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let batch: Vec<_> = (0..100)
                    .map(|_| {
                        i += 1;
                        let key = format!("k{}", i % 1000).into_bytes();
                        let p = crate::partitioner::partition_for(Some(&key), 4, 0);
                        let r = crate::record::Record {
                            key: Some(key),
                            value: Some(b"x".to_vec()),
                            timestamp: 0,
                            headers: Vec::new(),
                        };
                        (events.clone(), p, r)
                    })
                    .collect();
                let _ = backend.append(batch);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    println!("hot swap of key-count under load (~50k records/s offered), {rounds} rounds, 4 tasks");
    let mut pauses = Vec::new();
    for round in 0..rounds {
        let bytes = if round % 2 == 0 { &v2 } else { &v1 };
        let started = Instant::now();
        let loaded = node.registry.add(bytes)?;
        let uploaded = started.elapsed();
        let deployment = node.deploy(spec_for(loaded.sha256())?)?;
        let update = deployment.update.expect("an update");
        anyhow::ensure!(update.state != "rolled-back", "round {round} rolled back: {:?}", update.error);
        println!(
            "round {round}: upload+precompile {:7.1} ms   upload-to-running {:7.1} ms   longest task pause {:6.3} ms   ({})",
            uploaded.as_secs_f64() * 1000.0,
            uploaded.as_secs_f64() * 1000.0 + update.switched_ms.map_or(f64::NAN, |t| (t - update.started_ms) as f64),
            update.max_pause_ms,
            update.state
        );
        pauses.push(update.max_pause_ms);
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = load.join();
    node.shutdown();
    pauses.sort_by(f64::total_cmp);
    println!("pause per task: median {:.3} ms, max {:.3} ms", pauses[pauses.len() / 2], pauses[pauses.len() - 1]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::steady_rate;

    #[test]
    fn steady_rate_counts_the_commits_after_the_first_over_their_span() {
        // Commits at 0, 0.1 s and 0.2 s of 10 records each: the 20 after the
        // first over 0.2 s.
        let times: Vec<i64> = [0, 100_000, 200_000].iter().flat_map(|t| [*t; 10]).collect();
        assert_eq!(steady_rate(&times), 100.0);
    }

    #[test]
    fn steady_rate_is_not_a_number_with_one_commit_or_none() {
        assert!(steady_rate(&[]).is_nan());
        assert!(steady_rate(&[5, 5, 5]).is_nan());
    }
}
