//! A weir cluster on the real broker: instances started with the same
//! `cluster` prefix share one catalog, and one instance's API drives them
//! all (issue [cluster]).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::broker::{Kafka, shared, unique};
use crate::kafka::{KeyCountApp, events, kafka_server_with, owned_tasks, query_count, wait_for, wait_tasks};
use crate::server::Server;

/// One instance of `cluster`. One worker thread each: with the range
/// assignor, N instances then split 4 partitions as evenly as they can
/// (with two, a fourth instance's members could both get none).
fn instance(dir: &Path, name: &str, kafka: &Kafka, cluster: &str) -> Server {
    kafka_server_with(&dir.join(name), kafka, &[("WEIR_CLUSTER", cluster), ("WEIR_WORKERS", "1")])
}

/// A raw request with optional headers: (status, parsed body).
fn request(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response = match (method, body) {
        ("PUT", Some(b)) => {
            let mut r = agent.put(url).header("content-type", "application/yaml");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(b.as_bytes())
        }
        ("DELETE", _) => agent.delete(url).call(),
        _ => agent.get(url).call(),
    }
    .expect("the server answers");
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// key-count of `app` with `component` and a config line, as YAML.
fn key_count_yaml(app: &KeyCountApp, component: &str, config: &str) -> String {
    crate::hot_swap::key_count_named(&app.name, &app.events, &app.counts, component, config)
}

/// key-count of `app` with `component` and a config line, as a spec file.
fn key_count_spec(dir: &Path, app: &KeyCountApp, file: &str, component: &str, config: &str) -> std::path::PathBuf {
    crate::server::write_spec(dir, file, &key_count_yaml(app, component, config))
}

/// The spec `app` runs on `server` (its component by `sha256:`) with a
/// `note` config: what a client re-sends with an `If-Match`.
fn running_spec_yaml(server: &Server, app: &KeyCountApp, note: &str) -> String {
    let status = server.get(&format!("/v1/apps/{}", app.name)).unwrap();
    let sha = status["components"]["count"].as_str().unwrap().to_owned();
    key_count_yaml(app, &sha, &format!("note: \"{note}\""))
}

/// Three instances of a new cluster with key-count deployed through the
/// first, its tasks spread over all three.
fn three_running(dir: &Path, kafka: &Kafka) -> (String, [Server; 3], KeyCountApp) {
    let cluster = unique("cluster");
    let instances = ["a", "b", "c"].map(|name| instance(dir, name, kafka, &cluster));
    let app = KeyCountApp::new(dir, "");
    instances[0].deploy(&app.spec);
    let [a, b, c] = &instances;
    wait_tasks(&[a, b, c], &app.name, "the tasks spread over the three instances", |owned| {
        owned.iter().all(|n| *n >= 1)
    });
    (cluster, instances, app)
}

#[test]
fn one_instance_s_api_drives_the_cluster_deploy_runs_everywhere_generations_race_and_delete_stops_all() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let (cluster, [a, b, c], app) = three_running(dir.path(), kafka);

    // Deployed to A only (three_running): B and C run it too.
    kafka.produce(&app.events, &events(30, 10, 0));
    app.wait_drained(kafka, &[&a, &b, &c]);
    assert_eq!(app.assert_exactly_once(kafka), 300);

    // Status from any instance: the generation and every instance.
    let status = c.get(&format!("/v1/apps/{}", app.name)).unwrap();
    assert_eq!(status["cluster"]["generation"], 1, "{status:#}");
    let instances = status["cluster"]["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3, "{status:#}");
    assert!(
        instances.iter().all(|i| i["alive"] == true && i["generation"] == 1 && i["state"] == "running"),
        "{status:#}"
    );
    // Every instance's tasks, seen from C: the four partitions, each once,
    // running, with their lag; every instance on the same component.
    wait_for(Duration::from_secs(10), "every instance's tasks in C's view", || {
        let status = c.get(&format!("/v1/apps/{}", app.name)).ok()?;
        let instances = status["cluster"]["instances"].as_array()?.clone();
        let mut partitions: Vec<u64> = instances
            .iter()
            .flat_map(|i| i["tasks"].as_array().cloned().unwrap_or_default())
            .filter(|t| t["state"] == "running" && t["lag"].is_i64())
            .filter_map(|t| t["partition"].as_u64())
            .collect();
        partitions.sort();
        let one_component = instances.iter().all(|i| i["components"] == status["components"]);
        (partitions == [0, 1, 2, 3] && one_component).then_some(())
    });
    // The console on C shows the same: every instance, every task (in Chromium).
    let ids: Vec<&str> = instances.iter().filter_map(|i| i["id"].as_str()).collect();
    let screenshots = weir_tests::workspace_dir().join("target/console-screenshots/cluster");
    let _ = std::fs::remove_dir_all(&screenshots);
    let instances_arg = ids.join(",");
    crate::console::browser_steps(
        &[
            ("WEIR_SCENARIO", "cluster"),
            ("WEIR_URL", &c.url),
            ("WEIR_APP", &app.name),
            ("WEIR_INSTANCES", &instances_arg),
        ],
        &screenshots,
        &c,
    );
    assert!(screenshots.join("cluster-02-app.png").is_file());
    let overview = b.get("/v1/cluster").unwrap();
    assert_eq!(overview["instances"].as_array().unwrap().len(), 3, "{overview:#}");
    assert_eq!(overview["apps"][0]["name"], app.name.as_str());

    // Versions of a name are numbered across the cluster: pushed to A, then
    // (other bytes) to B, they are 1 and 2, and B lists both.
    let name = unique("kc");
    let first = weir::client::push(&weir_tests::guest("key-count"), &name, None, &a.url).unwrap();
    let second = weir::client::push(&weir_tests::key_count_v2(), &name, None, &b.url).unwrap();
    assert_eq!((first["version"].as_str(), second["version"].as_str()), (Some("1"), Some("2")), "{first} {second}");
    let listed = b.get(&format!("/v1/components/{name}")).unwrap();
    let versions: Vec<&str> =
        listed["versions"].as_array().unwrap().iter().filter_map(|v| v["version"].as_str()).collect();
    assert_eq!(versions, ["1", "2"], "{listed:#}");

    // Optimistic concurrency: a deploy based on a generation that is not
    // current is refused; two racing from the current one: exactly one wins.
    let url = |s: &Server| format!("{}/v1/apps/{}", s.url, app.name);
    let (code, body) = request("PUT", &url(&b), Some(&running_spec_yaml(&a, &app, "stale")), &[("if-match", "7")]);
    assert_eq!(code, 409, "{body:#}");
    assert_eq!(body["error"], "stale-generation", "{body:#}");
    let (spec_a, spec_b) = (running_spec_yaml(&a, &app, "from-a"), running_spec_yaml(&a, &app, "from-b"));
    let (ua, ub) = (url(&a), url(&b));
    let racer_a = std::thread::spawn(move || request("PUT", &ua, Some(&spec_a), &[("if-match", "1")]));
    let racer_b = std::thread::spawn(move || request("PUT", &ub, Some(&spec_b), &[("if-match", "1")]));
    let (ra, rb) = (racer_a.join().unwrap(), racer_b.join().unwrap());
    let codes = [ra.0, rb.0];
    assert!(codes.contains(&200) && codes.contains(&409), "exactly one of two racing deploys wins: {ra:#?} {rb:#?}");
    let winner = if ra.0 == 200 { &ra.1 } else { &rb.1 };
    assert_eq!(winner["cluster"]["generation"], 2, "{winner:#}");
    // Every instance runs the winner's version.
    for s in [&a, &b, &c] {
        wait_for(Duration::from_secs(30), "every instance on generation 2", || {
            let st = s.get(&format!("/v1/apps/{}", app.name)).ok()?;
            // Each instance's swap history is in the cluster view too.
            let all = st["cluster"]["instances"].as_array()?.iter().all(|i| {
                i["generation"] == 2
                    && i["swaps"].as_array().and_then(|u| u.last()).is_some_and(|u| u["kind"] == "component-swap")
            });
            all.then_some(())
        });
    }

    // A fourth instance with an empty data dir takes tasks and serves
    // queries for the keys they hold.
    let d = instance(dir.path(), "d", kafka, &cluster);
    wait_tasks(&[&a, &b, &c, &d], &app.name, "a task on the new instance", |owned| owned[3] >= 1);
    let held = owned_tasks(&d, &app.name);
    assert!(!held.is_empty());
    for k in 0..30 {
        let (count, _) = wait_for(Duration::from_secs(30), "a query answered on the new instance", || {
            query_count(&d, &app.name, &format!("k{k}"))
        });
        assert_eq!(count, 10, "key k{k}");
    }

    // A delete sent to C stops the application everywhere.
    let (code, body) = request("DELETE", &url(&c), None, &[]);
    assert_eq!(code, 204, "{body:#}");
    for s in [&a, &b, &c, &d] {
        wait_for(Duration::from_secs(30), "the application gone from every instance", || {
            let (code, _) = request("GET", &format!("{}/v1/apps/{}", s.url, app.name), None, &[]);
            (code == 404 && owned_tasks(s, &app.name).is_empty()).then_some(())
        });
    }
    let (code, _) = request("DELETE", &url(&a), None, &[]);
    assert_eq!(code, 404, "deleted already");
}

#[test]
fn an_instance_that_was_down_applies_what_it_missed_and_bad_cluster_settings_are_clear_errors() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let cluster = unique("cluster");
    let a = instance(dir.path(), "a", kafka, &cluster);
    let mut b = instance(dir.path(), "b", kafka, &cluster);
    b.stop();
    // Deployed while B is down: the deploy does not wait for it (its last
    // record says it stopped).
    let app = KeyCountApp::new(dir.path(), "");
    a.deploy(&app.spec);
    b.restart();
    wait_tasks(&[&a, &b], &app.name, "B running what it missed", |owned| owned[1] >= 1);

    // Updated while B is down: B starts on the new version at once (the
    // catalog, not its data dir, says what runs), never on the one it saved.
    b.stop();
    let v2 = key_count_spec(dir.path(), &app, "v2.yaml", &weir_tests::key_count_v2().display().to_string(), "");
    let answer = weir::client::upload_and_deploy(&v2, &a.url).expect("updated without B");
    let v2_sha = answer["status"]["components"]["count"].as_str().unwrap().to_owned();
    b.restart();
    let status = b.get(&format!("/v1/apps/{}", app.name)).unwrap();
    assert_eq!(status["components"]["count"], v2_sha.as_str(), "B runs v2 as soon as it listens: {status:#}");
    wait_tasks(&[&a, &b], &app.name, "B back with tasks", |owned| owned[1] >= 1);
    kafka.produce(&app.events, &events(10, 3, 0));
    app.wait_drained(kafka, &[&a, &b]);
    assert_eq!(app.assert_exactly_once(kafka), 30);
    for r in kafka.consume(&app.counts) {
        assert_eq!(r["value"]["version"], 2, "only v2 ran: {r}");
    }

    // A cluster without Kafka is refused at start, saying why.
    let err = std::panic::catch_unwind(|| {
        crate::server::Server::start(
            &dir.path().join("embedded"),
            crate::server::Options { env: vec![("WEIR_CLUSTER".into(), cluster.clone())], ..Default::default() },
        )
    });
    let message = match err {
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
        Ok(_) => panic!("a cluster on the embedded backend started"),
    };
    assert!(message.contains("needs Kafka"), "{message}");
}

#[test]
fn a_cluster_wide_hot_swap_under_load_and_a_trapping_version_rolled_back_on_every_instance() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let (_, [a, b, c], app) = three_running(dir.path(), kafka);
    let (stop, producer) = crate::kafka::keep_producing(kafka, &app.events, 40);
    std::thread::sleep(Duration::from_millis(1500));

    // v1 → v2, sent to B: one deploy, every instance swaps.
    let v2 = key_count_spec(dir.path(), &app, "v2.yaml", &weir_tests::key_count_v2().display().to_string(), "");
    let started = std::time::Instant::now();
    let answer = weir::client::upload_and_deploy(&v2, &b.url).expect("the swap is accepted");
    let deploy_to_all = started.elapsed();
    assert_eq!(answer["cluster"]["generation"], 2, "{answer:#}");
    assert!(
        answer["cluster"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["generation"] == 2 && i["state"] == "running"),
        "{answer:#}"
    );
    std::thread::sleep(Duration::from_millis(1500));

    // A version that traps, sent to C: rolled back on all three.
    let bad = key_count_spec(dir.path(), &app, "bad.yaml", "{guests}/misbehave.wasm", "always: panic");
    let err = weir::client::upload_and_deploy(&bad, &c.url).expect_err("the trapping version must be refused");
    let message = format!("{err:#}");
    assert!(message.contains("422 update-rolled-back"), "{message}");
    assert!(
        message.contains("panic requested by record") || message.contains("trap"),
        "the guest's message: {message}"
    );
    assert!(message.contains("every instance went back"), "{message}");

    // A version that traps on one instance only (the one owning partition
    // 3), sent to A: the others run it through its probation and process
    // records with it, yet none of it is committed anywhere, because every
    // instance holds a swap's commits until all of them ran it.
    let partial =
        key_count_spec(dir.path(), &app, "partial.yaml", "{guests}/misbehave.wasm", "out: counts, trap_partition: 3");
    let err = weir::client::upload_and_deploy(&partial, &a.url).expect_err("a version trapping on one instance");
    let message = format!("{err:#}");
    assert!(message.contains("422 update-rolled-back"), "{message}");
    assert!(message.contains("trap on partition 3"), "the guest's message: {message}");
    assert!(message.contains("every instance went back"), "{message}");
    // The instances that did not trap refused it for the cluster, with
    // nothing of it committed.
    let refused = wait_for(Duration::from_secs(20), "an instance refusing the swap for the cluster", || {
        let status = a.get(&format!("/v1/apps/{}", app.name)).ok()?;
        let swaps: Vec<Value> = status["cluster"]["instances"]
            .as_array()?
            .iter()
            .flat_map(|i| i["swaps"].as_array().cloned().unwrap_or_default())
            .collect();
        swaps
            .iter()
            .any(|s| {
                s["state"] == "rolled-back" && s["error"].as_str().is_some_and(|e| e.contains("with nothing committed"))
            })
            .then_some(swaps)
    });
    assert!(!refused.is_empty());
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Release);
    let sent = producer.join().unwrap();
    app.wait_drained(kafka, &[&a, &b, &c]);

    // Per key: exactly 1..n (read_committed), version 1 then 2, nothing of
    // the trapping version.
    assert_eq!(app.assert_exactly_once(kafka), sent);
    let mut versions: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    let outputs = kafka.consume(&app.counts);
    let leaked: Vec<&Value> = outputs.iter().filter(|r| !r["value"]["version"].is_i64()).collect();
    assert!(leaked.is_empty(), "records of the rolled-back versions were committed: {leaked:?}");
    for r in outputs {
        versions
            .entry(r["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(r["value"]["version"].as_i64().unwrap());
    }
    let (mut v1s, mut v2s) = (0, 0);
    for (key, seq) in &versions {
        let switch = seq.iter().position(|v| *v == 2).unwrap_or(seq.len());
        assert!(seq[..switch].iter().all(|v| *v == 1) && seq[switch..].iter().all(|v| *v == 2), "key {key}: {seq:?}");
        v1s += switch;
        v2s += seq.len() - switch;
    }
    assert!(v1s > 0 && v2s > 0, "both versions ran: v1 {v1s}, v2 {v2s}");
    let status = a.get(&format!("/v1/apps/{}", app.name)).unwrap();
    let generations = status["cluster"]["generations"].as_array().unwrap();
    // Each failed version was followed by its rollback.
    let rollbacks = generations.iter().filter(|g| g["rollback_of"].is_u64()).count();
    assert_eq!(rollbacks, 2, "{status:#}");
    let pauses: Vec<f64> = [&a, &b, &c]
        .iter()
        .filter_map(|s| {
            let st = s.get(&format!("/v1/apps/{}", app.name)).ok()?;
            st["swaps"].as_array()?.iter().find(|u| u["kind"] == "component-swap")?["max_pause_ms"].as_f64()
        })
        .collect();
    eprintln!(
        "cluster-wide swap under load: {sent} records, v1 {v1s} / v2 {v2s} outputs, deploy to every instance running {deploy_to_all:?}, \
         longest task pause per instance {pauses:?} ms"
    );
}

#[test]
fn an_instance_that_cannot_load_the_application_fails_the_deploy_everywhere_and_a_frozen_one_catches_up() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let cluster = unique("cluster");
    let a = instance(dir.path(), "a", kafka, &cluster);
    let b = instance(dir.path(), "b", kafka, &cluster);
    // C may hold 4 wasm instances; key-count on 4 partitions reserves 8.
    let c = kafka_server_with(
        &dir.path().join("c"),
        kafka,
        &[("WEIR_CLUSTER", &cluster), ("WEIR_WORKERS", "1"), ("WEIR_MAX_INSTANCES", "4")],
    );
    let app = KeyCountApp::new(dir.path(), "");
    let err = weir::client::upload_and_deploy(&app.spec, &a.url).expect_err("C cannot run it");
    let message = format!("{err:#}");
    assert!(message.contains("422"), "{message}");
    assert!(message.contains("max_instances"), "C's own error: {message}");
    assert!(message.contains("removed again"), "{message}");
    for s in [&a, &b, &c] {
        wait_for(Duration::from_secs(30), "the application removed from every instance", || {
            let (code, _) = request("GET", &format!("{}/v1/apps/{}", s.url, app.name), None, &[]);
            (code == 404).then_some(())
        });
    }
    drop(c);

    // An instance frozen (SIGSTOP) during a deploy: the deploy answers with
    // what it knows once the instance stops answering, and the instance
    // applies the deploy when it runs again.
    let mut c = instance(dir.path(), "c2", kafka, &cluster);
    let c_id = c.get("/v1/cluster").unwrap()["instance"].as_str().unwrap().to_owned();
    a.deploy(&app.spec);
    let pid = c.pid();
    // SAFETY: a signal to a child of this test.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let v2 = key_count_spec(dir.path(), &app, "v2.yaml", &weir_tests::key_count_v2().display().to_string(), "");
    let answer = weir::client::upload_and_deploy(&v2, &b.url).expect("answered without the frozen instance");
    let frozen = answer["cluster"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == c_id.as_str())
        .cloned()
        .unwrap_or_default();
    let generation = answer["cluster"]["generation"].as_u64().unwrap();
    assert_eq!(frozen["alive"], false, "{answer:#}");
    assert_ne!(frozen["generation"], generation, "{answer:#}");
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let st = b.get(&format!("/v1/apps/{}", app.name)).unwrap();
        let me = st["cluster"]["instances"].as_array().unwrap().iter().find(|i| i["id"] == c_id.as_str()).cloned();
        let me = me.unwrap_or_default();
        if me["alive"] == true && me["generation"] == generation && me["state"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the thawed instance: {me:#}\n{}", c.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
    kafka.produce(&app.events, &events(20, 5, 0));
    app.wait_drained(kafka, &[&a, &b, &c]);
    assert_eq!(app.assert_exactly_once(kafka), 100);
    c.stop();
}

#[test]
fn a_corrupt_or_incomplete_component_in_the_catalog_is_refused_naming_it_and_an_unreachable_catalog_stops_the_start() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let cluster = unique("cluster");
    let a = instance(dir.path(), "a", kafka, &cluster);
    let app = KeyCountApp::new(dir.path(), "");
    // Two components written into the catalog by hand: one whose chunk does
    // not hash to its sha256, one whose second chunk never came.
    let components = format!("{cluster}.components");
    let sha = |text: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
    let (corrupt, incomplete) = (sha("the real component"), sha("part one and part two"));
    let manifest = |sha: &str, chunks: u32| {
        serde_json::json!({ "format": 1, "sha256": sha, "size": 21, "chunks": chunks }).to_string()
    };
    let line = |key: String, value: String| serde_json::json!({ "key": key, "value": value }).to_string();
    let records = [
        line(format!("chunk/{corrupt}/0"), "not the real component".into()),
        line(format!("component/{corrupt}"), manifest(&corrupt, 1)),
        line(format!("chunk/{incomplete}/0"), "part one".into()),
        line(format!("component/{incomplete}"), manifest(&incomplete, 2)),
    ];
    kafka.produce(&components, &records.join("\n"));
    for (sha, says) in [(&corrupt, "is corrupt"), (&incomplete, "chunk 1 of 2 is missing")] {
        let spec = key_count_spec(dir.path(), &app, "bad-component.yaml", &format!("sha256:{sha}"), "");
        let err = weir::client::upload_and_deploy(&spec, &a.url).expect_err("refused");
        let message = format!("{err:#}");
        assert!(message.contains("422 cannot-deploy"), "{message}");
        assert!(message.contains(sha.as_str()) && message.contains(says), "names the component and why: {message}");
        // Nothing of it was kept.
        let (code, _) = request("GET", &format!("{}/v1/apps/{}", a.url, app.name), None, &[]);
        assert_eq!(code, 404);
        assert!(a.get("/v1/components").unwrap().to_string().find(sha.as_str()).is_none(), "nothing half-loaded");
    }

    // A catalog that cannot be read or created (no broker there): the
    // instance does not start, and says why.
    let nowhere = format!("127.0.0.1:{}", crate::broker::free_port());
    let started = std::panic::catch_unwind(|| {
        crate::server::Server::start(
            &dir.path().join("nowhere"),
            crate::server::Options {
                env: vec![("WEIR_BROKERS".into(), nowhere.clone()), ("WEIR_CLUSTER".into(), cluster.clone())],
                ..Default::default()
            },
        )
    });
    let message = match started {
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
        Ok(_) => panic!("an instance started without its cluster catalog"),
    };
    assert!(message.contains(&format!("the cluster catalog `{cluster}` is not usable")), "{message}");
}
