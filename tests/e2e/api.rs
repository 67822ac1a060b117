//! The HTTP API through real HTTP: the component registry (names, versions,
//! describe, delete), bearer-token auth, metrics, the OpenAPI document, and
//! bad input of every kind — each a 4xx with a message, the server serving on.

use std::time::Duration;

use serde_json::Value;

use crate::server::{Options, Server, write_spec};

/// A raw request: (status, parsed JSON body or text).
fn request(method: &str, url: &str, body: Option<(&str, Vec<u8>)>, token: Option<&str>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let with = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &auth {
        Some(a) => r.header("authorization", a),
        None => r,
    };
    let with_body = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| match &auth {
        Some(a) => r.header("authorization", a),
        None => r,
    };
    let response = match (method, body) {
        ("GET", _) => with(agent.get(url)).call(),
        ("DELETE", _) => with(agent.delete(url)).call(),
        // Like weir's own client: ask before sending a body the server may refuse by size.
        ("POST", Some((ct, b))) => {
            with_body(agent.post(url)).header("content-type", ct).header("expect", "100-continue").send(&b[..])
        }
        ("PUT", Some((ct, b))) => {
            with_body(agent.put(url)).header("content-type", ct).header("expect", "100-continue").send(&b[..])
        }
        _ => unreachable!(),
    }
    .expect("server answers");
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn healthy(server: &Server) {
    let (status, _) = request("GET", &format!("{}/healthz", server.url), None, None);
    assert_eq!(status, 200, "the server keeps serving");
}

fn guest(name: &str) -> Vec<u8> {
    std::fs::read(weir_tests::guest(name)).unwrap()
}

#[test]
fn the_registry_names_versions_describes_and_protects_components() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let url = &server.url;
    let (s, v1) = request(
        "POST",
        &format!("{url}/v1/components?name=key-count"),
        Some(("application/wasm", guest("key-count"))),
        None,
    );
    assert_eq!(s, 201, "{v1}");
    assert_eq!((v1["reference"].as_str(), v1["version"].as_str()), (Some("key-count@1"), Some("1")));
    assert!(v1["exports"].as_array().unwrap().iter().any(|e| e == "process"));
    assert_eq!(v1["world"], "weir:processor@0.3.0 processor");
    // Same content again under the same version: idempotent. Other content: refused.
    let (s, _) = request(
        "POST",
        &format!("{url}/v1/components?name=key-count&version=1"),
        Some(("application/wasm", guest("key-count"))),
        None,
    );
    assert_eq!(s, 201);
    let v2_bytes = std::fs::read(weir_tests::key_count_v2()).unwrap();
    let (s, e) = request(
        "POST",
        &format!("{url}/v1/components?name=key-count&version=1"),
        Some(("application/wasm", v2_bytes.clone())),
        None,
    );
    assert_eq!((s, e["error"].as_str()), (409, Some("version-exists")), "{e}");
    // weir push: the next version.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["push", weir_tests::key_count_v2().to_str().unwrap(), "--name", "key-count", "--server", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "key-count@2");
    // Multipart upload, named.
    let boundary = "weirboundary";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\npassthrough\r\n").as_bytes(),
    );
    form.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.wasm\"\r\nContent-Type: application/wasm\r\n\r\n").as_bytes());
    form.extend_from_slice(&guest("passthrough"));
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (s, p) = request(
        "POST",
        &format!("{url}/v1/components"),
        Some((&format!("multipart/form-data; boundary={boundary}"), form)),
        None,
    );
    assert_eq!((s, p["reference"].as_str()), (201, Some("passthrough@1")), "{p}");

    // Deploy by name@version; status names the version; delete is refused while in use.
    let spec = "name: kc\ntopics: { events: 2, counts: 2 }\nsources: { events: { topic: events, to: [count] } }\nprocessors:\n  count: { component: key-count@1, stores: [counts], outputs: { counts: counts } }\nstores: { counts: {} }\nsinks: { counts: { topic: counts } }\n";
    let (s, d) =
        request("PUT", &format!("{url}/v1/apps/kc"), Some(("application/yaml", spec.as_bytes().to_vec())), None);
    assert_eq!(s, 201, "{d}");
    server.wait_idle("kc", Duration::from_secs(30));
    assert_eq!(server.get("/v1/apps/kc").unwrap()["component_versions"]["count"], "key-count@1");
    let (s, described) = request("GET", &format!("{url}/v1/components/key-count/1"), None, None);
    assert_eq!(s, 200);
    assert_eq!(described["used_by"], serde_json::json!(["kc"]));
    let (s, e) = request("DELETE", &format!("{url}/v1/components/key-count/1"), None, None);
    assert_eq!((s, e["error"].as_str()), (409, Some("component-in-use")), "{e}");
    assert!(e["detail"].as_str().unwrap().contains("used by kc"));
    // Update to the latest version by bare name: a hot swap.
    let latest = spec.replace("key-count@1", "key-count");
    let (s, u) = request("PUT", &format!("{url}/v1/apps/kc"), Some(("application/yaml", latest.into_bytes())), None);
    assert_eq!((s, u["action"].as_str()), (200, Some("updated")), "{u}");
    assert_eq!(server.get("/v1/apps/kc").unwrap()["component_versions"]["count"], "key-count@2");
    let (s, _) = request("DELETE", &format!("{url}/v1/components/key-count/1"), None, None);
    assert_eq!(s, 204, "no longer in use");
    let (s, all) = request("GET", &format!("{url}/v1/components/key-count"), None, None);
    assert_eq!(s, 200);
    assert_eq!(all["versions"].as_array().unwrap().len(), 1);
    let (s, _) = request("GET", &format!("{url}/v1/components/nope/1"), None, None);
    assert_eq!(s, 404);
}

#[test]
fn bad_uploads_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        Options { env: vec![("WEIR_MAX_UPLOAD".into(), "1MiB".into())], ..Options::default() },
    );
    let url = format!("{}/v1/components", server.url);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage", b"this is not wasm".to_vec(), 422, "not a WebAssembly file"),
        ("core module", wat::parse_str("(module)").unwrap(), 422, "core WebAssembly module, not a component"),
        ("wrong world", guest("wrong-world"), 422, "missing exports init, process, punctuate"),
        ("too large", vec![0u8; 2 << 20], 413, "too large"),
    ];
    for (what, body, status, fragment) in cases {
        let (s, e) = request("POST", &url, Some(("application/wasm", body)), None);
        assert_eq!(s, status, "{what}: {e}");
        assert!(e["detail"].as_str().unwrap_or_default().contains(fragment), "{what}: {e}");
        healthy(&server);
    }
    let (s, e) =
        request("POST", &format!("{url}?name=bad%20name"), Some(("application/wasm", guest("key-count"))), None);
    assert_eq!((s, e["error"].as_str()), (400, Some("bad-name")), "{e}");
}

#[test]
fn bad_specs_and_requests_get_4xx_with_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let url = &server.url;
    let put = |name: &str, body: &str| {
        request("PUT", &format!("{url}/v1/apps/{name}"), Some(("application/yaml", body.as_bytes().to_vec())), None)
    };
    let (s, e) = put("x", "name: x\nprocessors: { p: { component: c.wasm, stroes: [s] } }\n");
    assert_eq!(s, 400);
    assert!(e["detail"].as_str().unwrap().contains("unknown field `stroes`"), "{e}");
    let (s, e) = put(
        "x",
        "name: x\nsources: { in: { topic: in, to: [p] } }\nprocessors: { p: { component: nope@1, stores: [missing] } }\n",
    );
    assert_eq!(s, 400);
    assert_eq!(e["problems"][0]["path"], "processors.p.stores[0]", "{e}");
    let (s, e) =
        put("x", "name: x\nsources: { in: { topic: in, to: [p] } }\nprocessors: { p: { component: nope@1 } }\n");
    assert_eq!(s, 422);
    assert!(e["detail"].as_str().unwrap().contains("component `nope@1` is not in the registry"), "{e}");
    let (s, e) =
        put("x", "name: x\nsources: { in: { topic: in, to: [p] } }\nprocessors: { p: { component: ./local.wasm } }\n");
    assert_eq!(s, 422);
    assert!(e["detail"].as_str().unwrap().contains("is a file path"), "{e}");
    let (s, _) = put("y", "name: x\n");
    assert_eq!(s, 400);
    let (s, _) = put("x", "\u{0}\u{1}not yaml at all: [");
    assert_eq!(s, 400);
    for path in ["/v1/apps/ghost", "/v1/apps/ghost/stores/s/keys/k", "/v1/topics/ghost/records", "/v1/nowhere"] {
        let (s, e) = request("GET", &format!("{url}{path}"), None, None);
        assert_eq!(s, 404, "{path}: {e}");
        assert!(e["detail"].is_string(), "{path}: {e}");
    }
    let spec = write_spec(dir.path(), "kc.yaml", crate::crash::specs::KEY_COUNT_EOS);
    server.deploy(&spec);
    let (s, e) = request("GET", &format!("{url}/v1/apps/key-count/stores/nope/keys/k"), None, None);
    assert_eq!((s, e["error"].as_str()), (404, Some("unknown-store")), "{e}");
    let (s, e) = request("GET", &format!("{url}/v1/apps/key-count/stores/counts/keys/nobody"), None, None);
    assert_eq!((s, e["error"].as_str()), (404, Some("unknown-key")), "{e}");
    let (s, e) = request("GET", &format!("{url}/v1/topics/events/records?from=x"), None, None);
    assert_eq!(s, 400, "{e}");
    healthy(&server);
}

#[test]
fn concurrent_updates_of_one_application_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let spec = write_spec(dir.path(), "kc.yaml", crate::crash::specs::KEY_COUNT_EOS);
    server.deploy(&spec);
    let v2 = write_spec(
        dir.path(),
        "kc2.yaml",
        &crate::crash::specs::KEY_COUNT_EOS.replace("key_count.wasm", "key_count_v2.wasm"),
    );
    // Upload v2 (an update), so both racing requests below only deploy.
    weir::client::deploy(&v2, &server.url).unwrap();
    let url = server.url.clone();
    let status = server.get("/v1/apps/key-count").unwrap();
    let current = status["components"]["count"].as_str().unwrap().to_owned();
    let other = weir::client::call("GET", &format!("{url}/v1/components"), None).unwrap()["unnamed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("sha256:{}", v.as_str().unwrap()))
        .find(|r| *r != current)
        .unwrap();
    let make = |component: &str| {
        crate::crash::specs::KEY_COUNT_EOS.replace("\"{guests}/key_count.wasm\"", component).into_bytes()
    };
    let (a, b) = (make(&other), make(&current));
    let first = {
        let url = url.clone();
        std::thread::spawn(move || {
            request("PUT", &format!("{url}/v1/apps/key-count"), Some(("application/yaml", a)), None)
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    let (s, e) = request("PUT", &format!("{url}/v1/apps/key-count"), Some(("application/yaml", b)), None);
    assert_eq!((s, e["error"].as_str()), (409, Some("update-in-progress")), "{e}");
    let (s, _) = first.join().unwrap();
    assert_eq!(s, 200);
    healthy(&server);
}

#[test]
fn a_token_guards_mutating_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        Options { env: vec![("WEIR_API_TOKEN".into(), "s3cret".into())], ..Options::default() },
    );
    let url = format!("{}/v1/topics", server.url);
    let body = || Some(("application/json", br#"{"name":"t","partitions":1}"#.to_vec()));
    let (s, e) = request("POST", &url, body(), None);
    assert_eq!((s, e["error"].as_str()), (401, Some("unauthorized")), "{e}");
    let (s, e) = request("POST", &url, body(), Some("wrong"));
    assert_eq!((s, e["error"].as_str()), (403, Some("forbidden")), "{e}");
    let (s, _) = request("POST", &url, body(), Some("s3cret"));
    assert_eq!(s, 201);
    let (s, _) = request("GET", &url, None, None);
    assert_eq!(s, 200, "reads are open unless api_token_reads");
    drop(server);
    let server = Server::start(
        &dir.path().join("data"),
        Options {
            env: vec![("WEIR_API_TOKEN".into(), "s3cret".into()), ("WEIR_API_TOKEN_READS".into(), "true".into())],
            ..Options::default()
        },
    );
    let (s, _) = request("GET", &format!("{}/v1/topics", server.url), None, None);
    assert_eq!(s, 401);
    let (s, _) = request("GET", &format!("{}/healthz", server.url), None, None);
    assert_eq!(s, 200, "health stays open");
}

#[test]
fn metrics_and_the_openapi_document_describe_the_running_system() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let spec = write_spec(dir.path(), "kc.yaml", crate::crash::specs::KEY_COUNT_EOS);
    server.deploy(&spec);
    server.produce("events", "{\"key\":\"a\",\"value\":\"1\"}\n{\"value\":\"keyless\"}\n").unwrap();
    server.wait_idle("key-count", Duration::from_secs(30));
    let want = [
        "weir_records_processed_total{app=\"key-count\",processor=\"count\"} 1",
        "weir_records_out_total{app=\"key-count\",processor=\"count\"} 1",
        "weir_dead_letters_total{app=\"key-count\"} 1",
        "weir_call_failures_total{app=\"key-count\",kind=\"guest-error\"} 1",
        "weir_tasks_running{app=\"key-count\"} 4",
        "# TYPE weir_commit_seconds histogram",
        "weir_lag{app=\"key-count\",topic=\"events\",partition=\"0\"} 0",
    ];
    // `wait_idle` can answer before every task has reported its counters
    // (status is published per task after its commit): read until they are
    // all there, then assert on the last answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (s, text) = request("GET", &format!("{}/metrics", server.url), None, None);
        assert_eq!(s, 200);
        let text = text.as_str().unwrap().to_owned();
        if want.iter().all(|line| text.contains(line)) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in want {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    let (s, doc) = request("GET", &format!("{}/v1/openapi.json", server.url), None, None);
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/apps/{name}", "put"),
        ("/v1/apps/{name}", "delete"),
        ("/v1/components", "post"),
        ("/v1/components/{name}/{version}", "delete"),
        ("/v1/topics/{topic}/records", "post"),
        ("/v1/apps/{app}/stores/{store}/keys/{key}", "get"),
        ("/metrics", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not documented");
    }
}
