//! The component/native ratio of `weir bench component-vs-native` for two
//! more examples, beside reservation's: key-count (a read-modify-write of
//! one store per record) and enrichment (a table lookup, the order JSON
//! parsed, extended and written again). Native: the example crate in the
//! SDK's harness; component: the same crate built as a component, through
//! weir's engine, stores and call path; the same records on both sides.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use weir_sdk::testing::TestDriver;

use crate::record::TaskRecord;
use crate::state::memory::MemoryStore;
use crate::state::{StoreOverlay, TaskStores};
use crate::topology::Limits;
use crate::wasm::{CallTime, InstanceInfo, ProcessorInstance, StoreGrantInfo, WasmEngine};

const KEYS: usize = 1000;

/// Key and value bytes.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One example's case: what its component is given.
struct Case {
    processor: &'static str,
    config: Vec<(String, String)>,
    outputs: Vec<String>,
    /// (store, writable, entries it starts with)
    store: (&'static str, bool, Entries),
    topic: &'static str,
    input: Entries,
}

fn customers() -> Entries {
    (0..KEYS)
        .map(|c| {
            let customer =
                json!({ "name": format!("customer {c}"), "tier": if c % 3 == 0 { "gold" } else { "basic" } });
            (format!("c{c}").into_bytes(), serde_json::to_vec(&customer).expect("json"))
        })
        .collect()
}

/// Prints the key-count and enrichment ratios; skips an example whose
/// component is not in `guests`.
pub fn run(engine: &WasmEngine, guests: &Path, records: usize, batch: usize, rounds: usize) -> anyhow::Result<()> {
    let key_count = Case {
        processor: "count",
        config: Vec::new(),
        outputs: vec!["counts".into()],
        store: ("counts", true, Vec::new()),
        topic: "events",
        input: (0..records).map(|i| (format!("k{}", i % KEYS).into_bytes(), b"x".to_vec())).collect(),
    };
    let enrichment = Case {
        processor: "enrich",
        config: [("store", "customers"), ("field", "customer_id"), ("into", "customer")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec(),
        outputs: vec!["enriched".into(), "unmatched".into()],
        store: ("customers", false, customers()),
        topic: "orders",
        input: (0..records)
            .map(|i| {
                let customer = format!("c{}", i % (KEYS + KEYS / 10)); // some unmatched
                let order = json!({ "order_id": format!("o{i}"), "customer_id": customer, "qty": 1 + i % 5 });
                (customer.into_bytes(), serde_json::to_vec(&order).expect("json"))
            })
            .collect(),
    };
    for (name, file, case) in
        [("key-count", "key_count.wasm", key_count), ("enrichment", "enrichment.wasm", enrichment)]
    {
        let path = guests.join(file);
        if !path.exists() {
            println!("{name}: {} not found, left out", path.display());
            continue;
        }
        let loaded = engine.load_file(&path)?;
        let (mut native, mut wasm) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (ns, n_out) = match name {
                "key-count" => run_native(key_count::KeyCount, &case)?,
                _ => run_native(enrichment::Enrichment::default(), &case)?,
            };
            native.push(ns);
            let (ns, c_out) = run_component(engine, loaded.clone(), &case, batch)?;
            wasm.push(ns);
            anyhow::ensure!(n_out == c_out, "{name}: native emitted {n_out} records, component {c_out}");
        }
        println!("{name} over {records} records ({KEYS} keys), batch {batch}, median of {rounds} rounds");
        super::print_component_vs_native(&format!(" {name}"), &native, &wasm);
    }
    Ok(())
}

fn run_native<P: weir_sdk::Processor>(processor: P, case: &Case) -> anyhow::Result<(f64, usize)> {
    let (store, writable, entries) = &case.store;
    let outputs: Vec<&str> = case.outputs.iter().map(String::as_str).collect();
    let mut driver = match outputs[..] {
        [a] => TestDriver::new(processor).with_outputs([a]),
        [a, b] => TestDriver::new(processor).with_outputs([a, b]),
        _ => anyhow::bail!("one or two outputs"),
    };
    driver = if *writable { driver.with_store(store) } else { driver.with_table_store(store) };
    for (k, v) in &case.config {
        driver = driver.with_config(k, v);
    }
    driver.init().map_err(|e| anyhow::anyhow!("init: {e}"))?;
    for (k, v) in entries {
        let key = String::from_utf8(k.clone())?;
        let value: serde_json::Value = serde_json::from_slice(v)?;
        driver.store::<String, serde_json::Value>(store).put(&key, &value).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let input: Vec<weir_sdk::Record> =
        case.input.iter().map(|(k, v)| weir_sdk::Record::new(k.clone(), v.clone()).on_topic(case.topic)).collect();
    let started = Instant::now();
    for r in input {
        driver.process(r).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let elapsed = started.elapsed();
    Ok((elapsed.as_nanos() as f64 / case.input.len() as f64, driver.take_emitted().len()))
}

fn run_component(
    engine: &WasmEngine,
    component: Arc<crate::wasm::LoadedComponent>,
    case: &Case,
    batch: usize,
) -> anyhow::Result<(f64, usize)> {
    let (store, writable, entries) = &case.store;
    let info = Arc::new(InstanceInfo {
        app: "bench".into(),
        processor: case.processor.into(),
        task_id: "bench/0_0".into(),
        partition: 0,
        outputs: case.outputs.clone(),
        grants: vec![StoreGrantInfo { name: (*store).into(), index: 0, writable: *writable }],
        timers: None,
        sources: BTreeMap::new(),
    });
    let base = Arc::new(MemoryStore::default());
    for (k, v) in entries {
        base.put(k.clone(), Some(v.clone()));
    }
    let overlay = if *writable { StoreOverlay::new(*store, base) } else { StoreOverlay::read_only(*store, base) };
    let mut stores = TaskStores::new(vec![overlay]);
    let mut instance = ProcessorInstance::instantiate(engine, component, info, Limits::default())?;
    let time = CallTime::default();
    instance.init(&mut stores, time, &case.config).map_err(|f| anyhow::anyhow!("init: {}", f.message))?;
    let topic: Arc<str> = Arc::from(case.topic);
    let input: Vec<TaskRecord> =
        case.input.iter().enumerate().map(|(i, (k, v))| super::guest_record(k, v, &topic, i)).collect();
    let stream_times = vec![0; batch];
    let mut emitted = 0;
    let started = Instant::now();
    for chunk in input.chunks(batch) {
        let ok = instance
            .process(&mut stores, time, chunk, &stream_times[..chunk.len()])
            .map_err(|f| anyhow::anyhow!("{}", f.message))?;
        stores.release_savepoint();
        emitted += ok.emitted.len();
    }
    let elapsed = started.elapsed();
    Ok((elapsed.as_nanos() as f64 / case.input.len() as f64, emitted))
}
