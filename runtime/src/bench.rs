//! `weir bench`: measurements, never tests. Each benchmark measures its
//! baseline in the same run and prints a ratio, because the machines are
//! shared and noisy: absolute numbers mean little, ratios travel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use reservation::{Adjustment, Order, Reservation};
use weir_sdk::testing::TestDriver;

use crate::record::TaskRecord;
use crate::state::memory::MemoryStore;
use crate::state::{StoreOverlay, TaskStores};
use crate::topology::Limits;
use crate::wasm::{
    CallTime, EngineConfig, InstanceInfo, ProcessorInstance, StoreGrantInfo, WasmEngine,
};

/// Rounds per side; each side reports its median.
const ROUNDS: usize = 5;
const PRODUCTS: usize = 1000;
const ADJUSTMENTS_TOPIC: &str = "adjustments";

fn orders(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let order = Order {
                order_id: format!("o{i}"),
                product_id: format!("p{}", i % PRODUCTS),
                qty: 1 + (i % 5) as i64,
            };
            (
                order.product_id.clone().into_bytes(),
                serde_json::to_vec(&order).expect("json"),
            )
        })
        .collect()
}

fn adjustments() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..PRODUCTS)
        .map(|p| {
            let adj = Adjustment {
                product_id: format!("p{p}"),
                delta: 250,
            };
            (
                adj.product_id.clone().into_bytes(),
                serde_json::to_vec(&adj).expect("json"),
            )
        })
        .collect()
}

/// The reservation processor, natively (SDK harness) vs as a component
/// (weir's engine, stores and call path), over the same records.
pub fn component_vs_native(
    component: Option<PathBuf>,
    records: usize,
    batch: usize,
) -> anyhow::Result<()> {
    let component =
        component.unwrap_or_else(|| PathBuf::from("target/wasm32-wasip2/guest/reservation.wasm"));
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
    anyhow::ensure!(
        outcomes.0 == outcomes.1,
        "native emitted {} records, component {}",
        outcomes.0,
        outcomes.1
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (n, c) = (median(&mut native), median(&mut wasm));
    println!(
        "reservation over {records} records ({PRODUCTS} products), batch {batch}, median of {ROUNDS} rounds"
    );
    println!("native     {n:8.1} ns/record");
    println!("component  {c:8.1} ns/record");
    println!("ratio {:.2}", c / n);
    Ok(())
}

fn run_native(
    orders: &[(Vec<u8>, Vec<u8>)],
    adjustments: &[(Vec<u8>, Vec<u8>)],
) -> anyhow::Result<(f64, usize)> {
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
    let input: Vec<weir_sdk::Record> = orders
        .iter()
        .map(|(k, v)| weir_sdk::Record::new(k.clone(), v.clone()).on_topic("orders-by-product"))
        .collect();
    let started = Instant::now();
    for r in input {
        driver.process(r).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let elapsed = started.elapsed();
    let emitted = driver.take_emitted().len();
    Ok((elapsed.as_nanos() as f64 / orders.len() as f64, emitted))
}

fn guest_record(key: &[u8], value: &[u8], topic: &Arc<str>, offset: usize) -> TaskRecord {
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
        grants: vec![StoreGrantInfo {
            name: "stock".into(),
            index: 0,
            writable: true,
        }],
    });
    let base = Arc::new(MemoryStore::default());
    let mut stores = TaskStores::new(vec![StoreOverlay::new("stock", base)]);
    let mut instance = ProcessorInstance::instantiate(engine, component, info, Limits::default())?;
    let time = CallTime::default();
    let config = [
        ("role".to_owned(), "reserve".to_owned()),
        ("adjustments_topic".to_owned(), ADJUSTMENTS_TOPIC.to_owned()),
    ];
    instance
        .init(&mut stores, time, &config)
        .map_err(|f| anyhow::anyhow!("init: {}", f.message))?;
    let adj: Vec<TaskRecord> = adjustments
        .iter()
        .enumerate()
        .map(|(i, (k, v))| guest_record(k, v, &Arc::from(ADJUSTMENTS_TOPIC), i))
        .collect();
    instance
        .process(&mut stores, time, &adj)
        .map_err(|f| anyhow::anyhow!("{}", f.message))?;
    stores.release_savepoint();
    let input: Vec<TaskRecord> = orders
        .iter()
        .enumerate()
        .map(|(i, (k, v))| guest_record(k, v, &Arc::from("orders-by-product"), i))
        .collect();
    let mut emitted: BTreeMap<usize, usize> = BTreeMap::new();
    let started = Instant::now();
    for chunk in input.chunks(batch) {
        let ok = instance
            .process(&mut stores, time, chunk)
            .map_err(|f| anyhow::anyhow!("{}", f.message))?;
        stores.release_savepoint();
        for e in ok.emitted {
            *emitted.entry(e.output).or_default() += 1;
        }
    }
    let elapsed = started.elapsed();
    Ok((
        elapsed.as_nanos() as f64 / orders.len() as f64,
        emitted.values().sum(),
    ))
}
