//! `weir bench cluster --brokers ...`: one deploy and one hot swap for a
//! whole cluster, against the same on a single instance in the same run.
//!
//! For each setup (one instance without a cluster: the baseline; then
//! `instances` instances of one cluster), key-count is deployed through the
//! first instance: seconds until the deploy answers and until every task
//! runs on the instances. Then, while records are produced to its input,
//! key-count v2 is deployed through the last instance: seconds until the
//! answer, and the longest task pause of the swap on any instance. Last
//! lines: `ratio cluster/single deploy X` and `ratio cluster/single swap Y`
//! (seconds over seconds), and the longest pauses.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord};

use super::kafka::{spawn_weir_serve_with, stop_child};
use crate::backend::kafka::{client_config, send, serve_producer_until};
use crate::partitioner::partition_for;

/// Settings of `weir bench cluster`.
#[derive(Debug, Clone)]
pub struct ClusterBench {
    pub brokers: String,
    pub guests: PathBuf,
    pub instances: usize,
}

struct Figures {
    deploy_answered: f64,
    deploy_running: f64,
    swap_answered: f64,
    /// Longest task pause of the swap, per instance (ms).
    pauses: Vec<f64>,
}

const SPEC: &str = r#"
name: {N}
topics: { in-{N}: 4, out-{N}: 4 }
sources: { in: { topic: in-{N}, to: [count] } }
processors:
  count: { component: "{C}", stores: [counts], outputs: { counts: out } }
stores: { counts: {} }
sinks: { out: { topic: out-{N} } }
"#;

pub fn run(settings: ClusterBench) -> anyhow::Result<()> {
    for guest in ["key_count.wasm", "key_count_v2.wasm"] {
        let path = settings.guests.join(guest);
        anyhow::ensure!(path.exists(), "{} not found: run `cargo guests` and the test build first", path.display());
    }
    let instances = settings.instances.max(2);
    println!(
        "key-count, 4 partitions, one worker per instance; deploy through the first instance, swap through the last"
    );
    println!(
        "{:24} {:>17} {:>17} {:>15} {:>18}",
        "setup", "deploy answered s", "every task runs s", "swap answered s", "longest pause ms"
    );
    let single = measure(&settings, 1, None)?;
    let cluster_name = unique("bench-cluster");
    let cluster = measure(&settings, instances, Some(&cluster_name))?;
    for (setup, f) in [("1 instance".to_owned(), &single), (format!("{instances} instances, 1 cluster"), &cluster)] {
        println!(
            "{setup:24} {:>17.2} {:>17.2} {:>15.2} {:>18.3}",
            f.deploy_answered,
            f.deploy_running,
            f.swap_answered,
            f.pauses.iter().copied().fold(0.0, f64::max)
        );
    }
    println!("swap pauses per instance (ms): {:?}", cluster.pauses);
    println!("ratio cluster/single deploy {:.2}", cluster.deploy_running / single.deploy_running);
    println!("ratio cluster/single swap {:.2}", cluster.swap_answered / single.swap_answered);
    Ok(())
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{what}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn write_spec(dir: &Path, file: &str, name: &str, component: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(file);
    let component = std::fs::canonicalize(component)?;
    std::fs::write(&path, SPEC.replace("{N}", name).replace("{C}", &component.display().to_string()))?;
    Ok(path)
}

fn running_tasks(url: &str, app: &str) -> usize {
    crate::client::call("GET", &format!("{url}/v1/apps/{app}"), None)
        .ok()
        .and_then(|s| s["tasks"].as_array().map(|t| t.iter().filter(|t| t["state"] == "running").count()))
        .unwrap_or(0)
}

fn measure(settings: &ClusterBench, instances: usize, cluster: Option<&str>) -> anyhow::Result<Figures> {
    let name = unique("bench-cl");
    let dir = tempfile::tempdir()?;
    let v1 = write_spec(dir.path(), "v1.yaml", &name, &settings.guests.join("key_count.wasm"))?;
    let v2 = write_spec(dir.path(), "v2.yaml", &name, &settings.guests.join("key_count_v2.wasm"))?;
    let env: Vec<(&str, &str)> = cluster.map(|c| vec![("WEIR_CLUSTER", c)]).unwrap_or_default();
    let mut children: Vec<(Child, String)> = Vec::new();
    for i in 0..instances {
        let log = dir.path().join(format!("weir-{i}.log"));
        children.push(spawn_weir_serve_with(
            Some(&settings.brokers),
            1,
            Duration::from_millis(100),
            &dir.path().join(format!("data-{i}")),
            &log,
            &env,
        )?);
    }
    let urls: Vec<String> = children.iter().map(|(_, u)| u.clone()).collect();
    let result = (|| -> anyhow::Result<Figures> {
        let started = Instant::now();
        crate::client::upload_and_deploy(&v1, &urls[0])?;
        let deploy_answered = started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(120);
        while urls.iter().map(|u| running_tasks(u, &name)).sum::<usize>() < 4 {
            anyhow::ensure!(Instant::now() < deadline, "the tasks did not all run within 120 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let deploy_running = started.elapsed().as_secs_f64();

        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (brokers, topic, stop) = (settings.brokers.clone(), format!("in-{name}"), stop.clone());
            std::thread::spawn(move || produce_until(&brokers, &topic, &stop))
        };
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let swapped = crate::client::upload_and_deploy(&v2, urls.last().expect("instances"));
        let swap_answered = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Release);
        let _ = load.join();
        swapped?;
        let pauses = urls
            .iter()
            .filter_map(|u| {
                let status = crate::client::call("GET", &format!("{u}/v1/apps/{name}"), None).ok()?;
                let swaps = status["swaps"].as_array()?.clone();
                swaps.iter().rev().find(|s| s["kind"] == "component-swap")?["max_pause_ms"].as_f64()
            })
            .collect();
        Ok(Figures { deploy_answered, deploy_running, swap_answered, pauses })
    })();
    for (mut child, _) in children {
        let _ = stop_child(&mut child);
    }
    result
}

/// Records for 200 keys, a few thousand a second, until stopped.
fn produce_until(brokers: &str, topic: &str, stop: &AtomicBool) -> anyhow::Result<()> {
    let producer: BaseProducer = client_config(brokers).set("linger.ms", "5").create()?;
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) {
        for _ in 0..50 {
            i += 1;
            let key = format!("k{}", i % 200);
            let partition = partition_for(Some(key.as_bytes()), 4, 0);
            let record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(topic).partition(partition as i32).key(key.as_bytes()).payload(b"x");
            send(&producer, record)?;
        }
        serve_producer_until(&producer, Duration::from_millis(10), || false);
    }
    serve_producer_until(&producer, Duration::from_secs(10), || {
        rdkafka::producer::Producer::in_flight_count(&producer) == 0
    });
    Ok(())
}
