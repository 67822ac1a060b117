//! Races on the API: parallel creates, updates and deletes of one
//! application and of several, under load. Whatever the interleaving, an
//! application runs at most once (one `201 created`), its output holds every
//! count exactly once, and no application is left busy.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{Options, Server};

/// A raw request: (status, parsed JSON body or text).
pub fn request(method: &str, url: &str, body: Option<(&str, Vec<u8>)>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        ("POST", Some((ct, b))) => agent.post(url).header("content-type", ct).send(&b[..]),
        ("PUT", Some((ct, b))) => agent.put(url).header("content-type", ct).send(&b[..]),
        _ => unreachable!(),
    }
    .expect("server answers");
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Uploads a built guest; returns its `sha256:` reference.
pub fn upload(server: &Server, path: &std::path::Path) -> String {
    let (s, body) = request(
        "POST",
        &format!("{}/v1/components", server.url),
        Some(("application/wasm", std::fs::read(path).unwrap())),
    );
    assert_eq!(s, 201, "{body}");
    body["reference"].as_str().unwrap().to_owned()
}

/// key-count named `app`, reading `<app>-in`, writing `<app>-out`.
pub fn counting_spec(app: &str, component: &str) -> String {
    format!(
        r#"
name: {app}
topics: {{ {app}-in: 4, {app}-out: 4 }}
sources:
  events: {{ topic: {app}-in, to: [count] }}
processors:
  count:
    component: "{component}"
    stores: [counts]
    outputs: {{ counts: counts }}
stores: {{ counts: {{}} }}
sinks:
  counts: {{ topic: {app}-out }}
"#
    )
}

/// `n` records over `keys` keys, as JSONL.
pub fn records(n: usize, keys: usize, seed: usize) -> String {
    (0..n).map(|i| format!("{{\"key\":\"k{}\",\"value\":\"x\"}}\n", (i * 7 + seed) % keys)).collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Per key of `input`, the counts in `output` are exactly 1..n.
pub fn assert_counted_once(server: &Server, input: &str, output: &str) {
    let mut n: BTreeMap<String, i64> = BTreeMap::new();
    for r in server.consume_all(input) {
        *n.entry(text(&r["key"])).or_insert(0) += 1;
    }
    let mut counts: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in server.consume_all(output) {
        counts.entry(text(&r["key"])).or_default().push(r["value"]["count"].as_i64().unwrap());
    }
    for (key, total) in &n {
        let got = counts.get(key).cloned().unwrap_or_default();
        assert_eq!(got, (1..=*total).collect::<Vec<_>>(), "{output}: key {key} must count exactly 1..{total}");
    }
}

/// Creates `app`'s input topic and fills it before the application exists.
fn fill_input(server: &Server, app: &str, n: usize) {
    let topic = json!({ "name": format!("{app}-in"), "partitions": 4 }).to_string().into_bytes();
    let (s, body) = request("POST", &format!("{}/v1/topics", server.url), Some(("application/json", topic)));
    assert_eq!(s, 201, "{body}");
    server.produce(&format!("{app}-in"), &records(n, 40, 0)).unwrap();
}

/// Sends `spec` to PUT /v1/apps/{app} from `n` threads at once; the statuses.
fn parallel_puts(server: &Server, app: &str, specs: Vec<String>) -> Vec<(u16, Value)> {
    let barrier = Arc::new(Barrier::new(specs.len()));
    let handles: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            let url = format!("{}/v1/apps/{app}", server.url);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                request("PUT", &url, Some(("application/yaml", spec.into_bytes())))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn parallel_creates_of_one_new_app_start_it_once_and_count_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::start(&dir.path().join("data"), Options { commit_interval: Some("20ms".into()), ..Options::default() });
    let component = upload(&server, &weir_tests::guest("key-count"));
    for round in 0..4 {
        let app = format!("race{round}");
        fill_input(&server, &app, 3000);
        let answers = parallel_puts(&server, &app, vec![counting_spec(&app, &component); 10]);
        let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "round {round}: one create: {answers:#?}");
        for (s, body) in &answers {
            assert!(matches!(s, 200 | 201 | 409), "round {round}: {s} {body}");
            if *s == 409 {
                assert_eq!(body["error"], "update-in-progress", "{body}");
            }
        }
        server.wait_idle(&app, Duration::from_secs(60));
        assert_counted_once(&server, &format!("{app}-in"), &format!("{app}-out"));
        // Nothing is left busy: the next deploy is an update, answered.
        let (s, body) = request(
            "PUT",
            &format!("{}/v1/apps/{app}", server.url),
            Some(("application/yaml", counting_spec(&app, &component).into_bytes())),
        );
        assert_eq!(s, 200, "round {round}: a later deploy is not refused: {body}");
    }
    assert!(!server.log_text().contains("panicked"), "no handler panicked:\n{}", server.log_tail());
}

/// Retries a deploy while another operation holds the application (409).
fn deploy_when_free(server: &Server, app: &str, spec: &str) -> (u16, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let answer = request(
            "PUT",
            &format!("{}/v1/apps/{app}", server.url),
            Some(("application/yaml", spec.as_bytes().to_vec())),
        );
        if answer.0 != 409 || std::time::Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn parallel_creates_updates_and_deletes_under_load_keep_exactly_once_and_leave_no_app_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(
        &dir.path().join("data"),
        Options { commit_interval: Some("20ms".into()), ..Options::default() },
    ));
    let v1 = upload(&server, &weir_tests::guest("key-count"));
    let v2 = upload(&server, &weir_tests::key_count_v2());
    let steady = ["steady0", "steady1"];
    let churn = "churn";
    for app in steady.iter().chain([&churn]) {
        let topic = json!({ "name": format!("{app}-in"), "partitions": 4 }).to_string().into_bytes();
        assert_eq!(request("POST", &format!("{}/v1/topics", server.url), Some(("application/json", topic))).0, 201);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                for app in ["steady0", "steady1", "churn"] {
                    server.produce(&format!("{app}-in"), &records(100, 30, round)).unwrap();
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let rng = Arc::new(std::sync::Mutex::new(crate::server::Rng::new("parallel_creates_updates_and_deletes")));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (server, stop, rng, v1, v2) = (server.clone(), stop.clone(), rng.clone(), v1.clone(), v2.clone());
            std::thread::spawn(move || {
                let mut answers: Vec<(String, &'static str, u16, Value)> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let (pick, version, delete) = {
                        let mut r = rng.lock().unwrap();
                        (r.below(3), r.below(2), r.below(4) == 0)
                    };
                    let app = ["steady0", "steady1", "churn"][pick as usize];
                    let component = if version == 0 { &v1 } else { &v2 };
                    let url = format!("{}/v1/apps/{app}", server.url);
                    let (op, (s, body)) = if delete && app == "churn" {
                        ("delete", request("DELETE", &url, None))
                    } else {
                        let spec = counting_spec(app, component).into_bytes();
                        ("put", request("PUT", &url, Some(("application/yaml", spec))))
                    };
                    answers.push((app.to_owned(), op, s, body));
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Release);
    producer.join().unwrap();
    let answers: Vec<_> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for (app, op, s, body) in &answers {
        assert!(matches!(s, 200 | 201 | 204 | 404 | 409), "{op} {app}: {s} {body}");
        if *s == 201 {
            *created.entry(app.clone()).or_default() += 1;
        }
    }
    eprintln!("{} operations: {:?} creates", answers.len(), created);
    for app in steady {
        assert_eq!(created.get(app), Some(&1), "{app} was created once (it was never deleted)");
        // Not stuck: the next deploy is answered, and every update is done.
        let (s, body) = deploy_when_free(&server, app, &counting_spec(app, &v2));
        assert_eq!(s, 200, "{app}: {body}");
        let status = server.wait_idle(app, Duration::from_secs(60));
        for swap in status["swaps"].as_array().unwrap() {
            assert_ne!(swap["state"], "switching", "{app}: an update left switching: {swap:#}");
        }
        assert_counted_once(&server, &format!("{app}-in"), &format!("{app}-out"));
    }
    // The churned application can still be deleted and created again.
    let (s, body) = request("DELETE", &format!("{}/v1/apps/{churn}", server.url), None);
    assert!(matches!(s, 204 | 404 | 409), "{s} {body}");
    if s == 409 {
        std::thread::sleep(Duration::from_secs(1));
        let (s, body) = request("DELETE", &format!("{}/v1/apps/{churn}", server.url), None);
        assert!(matches!(s, 204 | 404), "{s} {body}");
    }
    let (s, body) = deploy_when_free(&server, churn, &counting_spec(churn, &v1));
    assert_eq!(s, 201, "{body}");
    server.wait_idle(churn, Duration::from_secs(60));
    assert!(!server.log_text().contains("panicked"), "no handler panicked:\n{}", server.log_tail());
}

/// The same probes on Kafka mode, on the shared real broker: counts bounded
/// before anything reaches the broker, parallel creates of one new app
/// start it once, and updates racing each other under load all finish
/// (none left switching, none rolled back) with every record counted once.
#[test]
fn on_kafka_bounds_hold_parallel_creates_start_once_and_racing_updates_all_finish() {
    use crate::broker::{shared, unique};
    use crate::kafka::{kafka_server_with, wait_drained, wait_for};
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(kafka_server_with(&dir.path().join("data"), kafka, &[]));
    let url = server.url.clone();
    let huge = unique("huge");
    for partitions in [json!(4294967295u64), json!(1025), json!(0), json!(-1)] {
        let body = json!({ "name": huge, "partitions": partitions }).to_string().into_bytes();
        let (s, answer) = request("POST", &format!("{url}/v1/topics"), Some(("application/json", body)));
        assert_eq!((s, answer["error"].as_str()), (400, Some("bad-request")), "{partitions}: {answer}");
    }
    let v1 = upload(&server, &weir_tests::guest("key-count"));
    let v2 = upload(&server, &weir_tests::key_count_v2());
    let spec = counting_spec(&huge, &v1).replace(&format!("{huge}-in: 4"), &format!("{huge}-in: 100000"));
    let (s, answer) = request("PUT", &format!("{url}/v1/apps/{huge}"), Some(("application/yaml", spec.into_bytes())));
    assert_eq!((s, answer["error"].as_str()), (400, Some("bad-spec")), "{answer}");
    assert!(!kafka.topic_exists(&huge) && !kafka.topic_exists(&format!("{huge}-in")), "nothing reached the broker");

    let app = unique("race");
    fill_input(&server, &app, 3000);
    let answers = parallel_puts(&server, &app, vec![counting_spec(&app, &v1); 10]);
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 1, "one create: {answers:#?}");
    for (s, body) in &answers {
        assert!(matches!(s, 200 | 201 | 409), "{s} {body}");
    }
    let input = format!("{app}-in");
    wait_drained(kafka, &[&server], &app, &[&input]);
    assert_counted_once(&server, &input, &format!("{app}-out"));

    // Updates from three threads (v1 and v2 alternately) while records flow.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (server, stop, input) = (server.clone(), stop.clone(), input.clone());
        std::thread::spawn(move || {
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                server.produce(&input, &records(200, 40, round)).unwrap();
                round += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let updaters: Vec<_> = (0..3)
        .map(|t| {
            let (server, stop, app) = (server.clone(), stop.clone(), app.clone());
            let versions = [v1.clone(), v2.clone()];
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                let mut i = t;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let spec = counting_spec(&app, &versions[i % 2]).into_bytes();
                    let (s, body) =
                        request("PUT", &format!("{}/v1/apps/{app}", server.url), Some(("application/yaml", spec)));
                    assert!(matches!(s, 200 | 409), "update: {s} {body}");
                    statuses.push(s);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                statuses
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, std::sync::atomic::Ordering::Release);
    producer.join().unwrap();
    let statuses: Vec<u16> = updaters.into_iter().flat_map(|u| u.join().unwrap()).collect();
    let applied = statuses.iter().filter(|s| **s == 200).count();
    eprintln!("kafka: {} updates tried, {applied} accepted", statuses.len());
    assert!(applied >= 2, "some updates went through: {statuses:?}");
    wait_drained(kafka, &[&server], &app, &[&input]);
    let swaps = wait_for(Duration::from_secs(60), "every update to finish", || {
        let status = server.get(&format!("/v1/apps/{app}")).ok()?;
        let swaps = status["swaps"].as_array()?.clone();
        swaps.iter().all(|s| s["state"] != "switching").then_some(swaps)
    });
    for swap in &swaps {
        assert!(matches!(swap["state"].as_str(), Some("applied" | "switched")), "an update did not finish: {swap:#}");
    }
    assert_counted_once(&server, &input, &format!("{app}-out"));
    assert!(!server.log_text().contains("panicked"), "no handler panicked:\n{}", server.log_tail());
}
