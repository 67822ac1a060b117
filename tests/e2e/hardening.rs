//! Hardening (issue 8): bad names, sizes and bodies of every kind are
//! refused with a JSON 4xx and lose nothing; refused uploads leave nothing
//! behind; produce is idempotent per key; one application cannot take the
//! wasm instances another one needs.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};
use weir::state::rocks::Db;

use crate::races::{counting_spec, request, upload};
use crate::server::{Options, Server};

/// A request with extra headers: (status, headers, body).
fn request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, Vec<(String, String)>, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response = match method {
        "GET" => {
            let mut r = agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        "POST" => {
            let mut r = agent.post(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(&body.unwrap_or_default()[..])
        }
        _ => unreachable!(),
    }
    .expect("server answers");
    let status = response.status().as_u16();
    let hs = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let text = response.into_body().read_to_string().unwrap_or_default();
    (status, hs, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Raw HTTP/1.1 over TCP, for requests a client library will not send:
/// (status, body).
fn raw(server: &Server, head: &str, body: &[u8], read_timeout: Duration) -> (u16, String) {
    let addr = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&answer);
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let length = h
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok());
                    if length.is_some_and(|n| b.len() >= n) {
                        break;
                    }
                }
            }
            Err(e) => panic!("no answer: {e}; got so far: {}", String::from_utf8_lossy(&answer)),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

fn assert_json_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "a detail for people: {body}");
}

#[test]
fn names_with_dot_segments_are_refused_at_every_route_and_nothing_outside_the_data_dir_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let url = &server.url;
    // A file outside the data dir that looks like a component index.
    let component = upload(&server, &weir_tests::guest("key-count"));
    let sha = component.trim_start_matches("sha256:");
    let secret = dir.path().join("secret.json");
    let index = json!([{ "version": "1", "sha256": sha, "size": 1, "uploaded_ms": 0 }]).to_string();
    std::fs::write(&secret, &index).unwrap();
    let outside = "..%2F..%2F..%2Fsecret";
    for (method, path) in [
        ("GET", format!("/v1/components/{outside}")),
        ("GET", format!("/v1/components/{outside}/1")),
        ("DELETE", format!("/v1/components/{outside}/1")),
        ("GET", "/v1/components/%2E%2E".to_owned()),
        ("DELETE", "/v1/components/key-count/%2E%2E".to_owned()),
        ("GET", "/v1/components/key-count/%2E".to_owned()),
        ("GET", "/v1/apps/%2E%2E".to_owned()),
        ("DELETE", "/v1/apps/%2E".to_owned()),
        ("GET", format!("/v1/apps/{}", "a".repeat(201))),
        ("GET", "/v1/topics/%2E%2E/records".to_owned()),
        ("GET", "/v1/apps/x/stores/%2E%2E".to_owned()),
        ("GET", "/v1/apps/%2E%2E/stores/s/keys/k".to_owned()),
    ] {
        let (s, body) = request(method, &format!("{url}{path}"), None);
        assert_json_error(s, &body, 400, "bad-name");
    }
    let (s, body) = request("PUT", &format!("{url}/v1/apps/%2E%2E"), Some(("application/yaml", b"name: x".to_vec())));
    assert_json_error(s, &body, 400, "bad-name");
    let (s, body) = request(
        "POST",
        &format!("{url}/v1/components?name=%2E%2E&version=1"),
        Some(("application/wasm", std::fs::read(weir_tests::guest("key-count")).unwrap())),
    );
    assert_json_error(s, &body, 400, "bad-name");
    let (s, body) = request(
        "POST",
        &format!("{url}/v1/topics"),
        Some(("application/json", br#"{"name":"..","partitions":1}"#.to_vec())),
    );
    assert_json_error(s, &body, 400, "bad-name");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), index, "the file outside the data dir is untouched");
    // A store key is free text, not a name: dots are fine there.
    let (s, body) = request("GET", &format!("{url}/v1/apps/nothing/stores/s/keys/%2E%2E"), None);
    assert_json_error(s, &body, 404, "unknown-app");
}

#[test]
fn counts_and_sizes_are_bounded_and_an_app_cannot_take_the_instances_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server =
        Server::start(&data, Options { env: vec![("WEIR_MAX_INSTANCES".into(), "16".into())], ..Options::default() });
    let url = server.url.clone();
    for partitions in [json!(4294967295u64), json!(1025), json!(0), json!(-1)] {
        let body = json!({ "name": "huge", "partitions": partitions }).to_string().into_bytes();
        let (s, answer) = request("POST", &format!("{url}/v1/topics"), Some(("application/json", body)));
        assert_json_error(s, &answer, 400, "bad-request");
    }
    let component = upload(&server, &weir_tests::guest("key-count"));
    let huge = counting_spec("huge", &component).replace("huge-in: 4", "huge-in: 100000");
    let (s, answer) = request("PUT", &format!("{url}/v1/apps/huge"), Some(("application/yaml", huge.into_bytes())));
    assert_json_error(s, &answer, 400, "bad-spec");
    assert!(answer["detail"].as_str().unwrap().contains("more than weir allows"), "{answer}");
    // 4 partitions × 1 processor × 2 (hot swap) = 8 of the 16 instances.
    let (s, answer) = request(
        "PUT",
        &format!("{url}/v1/apps/small"),
        Some(("application/yaml", counting_spec("small", &component).into_bytes())),
    );
    assert_eq!(s, 201, "{answer}");
    // 8 partitions need 16: more than is left. Refused up front, not failing later.
    let big = counting_spec("big", &component).replace("big-in: 4, big-out: 4", "big-in: 8, big-out: 8");
    let (s, answer) =
        request("PUT", &format!("{url}/v1/apps/big"), Some(("application/yaml", big.clone().into_bytes())));
    assert_json_error(s, &answer, 422, "cannot-deploy");
    assert!(answer["detail"].as_str().unwrap().contains("max_instances"), "{answer}");
    server.produce("small-in", "{\"key\":\"a\",\"value\":\"x\"}\n").unwrap();
    let status = server.wait_idle("small", Duration::from_secs(30));
    assert_eq!(status["state"], "running", "the running application is unharmed: {status:#}");
    // Once the first is gone, the second fits.
    let (s, answer) = request("DELETE", &format!("{url}/v1/apps/small"), None);
    assert_eq!(s, 204, "{answer}");
    let (s, answer) = request("PUT", &format!("{url}/v1/apps/big"), Some(("application/yaml", big.into_bytes())));
    assert_eq!(s, 201, "{answer}");
    server.produce("big-in", "{\"key\":\"a\",\"value\":\"x\"}\n").unwrap();
    server.wait_idle("big", Duration::from_secs(30));
    // A nested 200 KB spec is refused, and the server still answers.
    let nested = format!("name: nested\nconfig: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let (s, answer) = request("PUT", &format!("{url}/v1/apps/nested"), Some(("application/yaml", nested.into_bytes())));
    assert_json_error(s, &answer, 400, "bad-spec");
    assert!(answer["detail"].as_str().unwrap().contains("nested deeper"), "{answer}");
    let (s, answer) = request("PUT", &format!("{url}/v1/apps/large"), Some(("application/yaml", vec![b'#'; 2 << 20])));
    assert_json_error(s, &answer, 413, "too-large");
    let (s, _) = request("GET", &format!("{url}/healthz"), None);
    assert_eq!(s, 200);
    // The data dir starts again.
    server.restart();
    server.wait_idle("big", Duration::from_secs(30));
}

#[test]
fn a_data_dir_holding_an_over_limit_topic_refuses_to_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, Options::default());
    server.stop();
    {
        // As an older weir without bounds would have written it.
        let db = Db::open(&data, false).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        db.put_meta(&mut batch, "topic/huge", br#"{"id":77,"partitions":4294967295}"#);
        db.write(batch).unwrap();
    }
    let (code, log) = Server::start_failing(&data, Options::default());
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("topic/huge") && log.contains("more than this weir allows"), "{log}");
}

#[test]
fn refused_uploads_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, Options::default());
    let url = &server.url;
    let files = |sub: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(data.join(sub))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| n != "names");
        names.sort();
        names
    };
    let wrong = std::fs::read(weir_tests::guest("wrong-world")).unwrap();
    let (s, body) = request("POST", &format!("{url}/v1/components?name=w"), Some(("application/wasm", wrong.clone())));
    assert_json_error(s, &body, 422, "bad-component");
    let (s, body) = request("POST", &format!("{url}/v1/components"), Some(("application/wasm", wrong)));
    assert_json_error(s, &body, 422, "bad-component");
    assert_eq!(files("cache"), Vec::<String>::new(), "no precompiled form of a refused component");
    assert_eq!(files("components"), Vec::<String>::new(), "no stored file of a refused component");
    let v1 = std::fs::read(weir_tests::guest("key-count")).unwrap();
    let v2 = std::fs::read(weir_tests::key_count_v2()).unwrap();
    let (s, body) = request("POST", &format!("{url}/v1/components?name=kc&version=1"), Some(("application/wasm", v1)));
    assert_eq!(s, 201, "{body}");
    let (cache, stored) = (files("cache"), files("components"));
    assert_eq!((cache.len(), stored.len()), (1, 1), "{cache:?} {stored:?}");
    let (s, body) = request("POST", &format!("{url}/v1/components?name=kc&version=1"), Some(("application/wasm", v2)));
    assert_json_error(s, &body, 409, "version-exists");
    assert_eq!((files("cache"), files("components")), (cache, stored), "the refused version left nothing");
    let (_, list) = request("GET", &format!("{url}/v1/components"), None);
    assert_eq!(list["unnamed"], json!([]), "{list}");
}

#[test]
fn produce_with_an_idempotency_key_stores_a_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let url = &server.url;
    let topic = json!({ "name": "in", "partitions": 3 }).to_string().into_bytes();
    assert_eq!(request("POST", &format!("{url}/v1/topics"), Some(("application/json", topic))).0, 201);
    let batch = b"{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\",\"value\":\"2\"}\n".to_vec();
    let produce = |key: &str, body: Vec<u8>| {
        request_with(
            "POST",
            &format!("{url}/v1/topics/in/records"),
            &[("idempotency-key", key), ("content-type", "application/x-ndjson")],
            Some(body),
        )
    };
    let (s, headers, first) = produce("batch-1", batch.clone());
    assert_eq!(s, 200, "{first}");
    assert!(!headers.iter().any(|(k, _)| k == "idempotent-replayed"));
    for _ in 0..3 {
        let (s, headers, again) = produce("batch-1", batch.clone());
        assert_eq!((s, &again), (200, &first), "a resend answers as the first did");
        assert!(headers.iter().any(|(k, v)| k == "idempotent-replayed" && v == "true"), "{headers:?}");
    }
    assert_eq!(server.consume_all("in").len(), 2, "stored once");
    let (s, _, other) = produce("batch-1", b"{\"key\":\"c\",\"value\":\"3\"}\n".to_vec());
    assert_json_error(s, &other, 422, "idempotency-key-reused");
    let (s, _, _) = produce("batch-2", batch.clone());
    assert_eq!(s, 200);
    assert_eq!(server.consume_all("in").len(), 4, "another key is another batch");
    let (s, _, bad) = produce("", batch);
    assert_json_error(s, &bad, 400, "bad-idempotency-key");
    assert_eq!(server.consume_all("in").len(), 4, "a refused batch loses and adds nothing");
}

#[test]
fn every_error_is_json_bodies_time_out_and_the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        Options {
            env: vec![("WEIR_API_TOKEN".into(), "s3cret".into()), ("WEIR_BODY_TIMEOUT".into(), "300ms".into())],
            ..Options::default()
        },
    );
    let url = &server.url;
    let topic = json!({ "name": "t", "partitions": 1 }).to_string().into_bytes();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} s3cret");
        let (s, _, body) = request_with(
            "POST",
            &format!("{url}/v1/topics"),
            &[("authorization", &auth), ("content-type", "application/json")],
            Some(topic.clone()),
        );
        assert_eq!(s, 201, "{scheme}: {body}");
    }
    let (s, _, body) = request_with("POST", &format!("{url}/v1/topics"), &[], Some(topic.clone()));
    assert_json_error(s, &body, 401, "unauthorized");
    for (path, code) in [
        ("/v1/topics/t/records?from=abc", "bad-query"),
        ("/v1/topics/t/records?what=1", "bad-query"),
        ("/v1/topics/t/records?limit=-1", "bad-query"),
        ("/v1/apps/x/stores/s?limit=x", "bad-query"),
    ] {
        let (s, _, body) = request_with("GET", &format!("{url}{path}"), &[], None);
        assert_json_error(s, &body, 400, code);
    }
    let (s, body) = raw(
        &server,
        "GET /v1/apps/%FF%FE HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
        Duration::from_secs(10),
    );
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    assert_json_error(s, &body, 400, "bad-path");
    let (s, body) = raw(
        &server,
        "PATCH /v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"",
        Duration::from_secs(10),
    );
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    assert_json_error(s, &body, 405, "method-not-allowed");
    // A client that stops sending its body gets 408, in the error shape.
    let (s, body) = raw(
        &server,
        "POST /v1/topics/t/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n",
        b"{\"key\":",
        Duration::from_secs(20),
    );
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    assert_json_error(s, &body, 408, "body-timeout");
    assert!(server.consume_all("t").is_empty(), "nothing of the cut body was stored");
}

#[test]
fn the_openapi_document_declares_security_errors_schemas_and_body_types() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let doc = server.get("/v1/openapi.json").unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12);
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            assert!(op["security"].is_array(), "{what} declares its security: {op:#}");
            let responses = op["responses"].as_object().unwrap();
            if path.starts_with("/v1/") && path != "/v1/openapi.json" {
                assert!(responses.keys().any(|k| k.starts_with('4')), "{what} declares its 4xx answers");
            }
            for (code, r) in responses {
                if code == "204" {
                    continue;
                }
                assert!(r["content"].as_object().is_some_and(|c| !c.is_empty()), "{what} {code} has a schema: {r:#}");
                if code.starts_with('4') || code.starts_with('5') {
                    let schema = &r["content"]["application/json"]["schema"];
                    assert_eq!(schema["$ref"], "#/components/schemas/Error", "{what} {code}");
                }
            }
        }
    }
    let body_types = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["requestBody"]["content"].as_object().unwrap().keys().cloned().collect()
    };
    assert!(body_types("/v1/topics/{topic}/records", "post").contains(&"application/x-ndjson".to_owned()));
    assert!(body_types("/v1/components", "post").contains(&"application/wasm".to_owned()));
    assert!(body_types("/v1/components", "post").contains(&"multipart/form-data".to_owned()));
    let spec_types = body_types("/v1/apps/{name}", "put");
    assert!(spec_types.contains(&"application/yaml".to_owned()) && spec_types.contains(&"application/json".to_owned()));
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error", "detail"]), "{error:#}");
}

/// schemathesis against a running server's OpenAPI document, every check,
/// bounded (tests/schemathesis/run.sh: 20 examples per operation, 30 s
/// per run), without and with a token: no server error, no answer outside
/// the document. The script installs schemathesis with pip when missing.
#[test]
fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let script = weir_tests::workspace_dir().join("tests/schemathesis/run.sh");
    let output = std::process::Command::new(&script)
        .arg(env!("CARGO_BIN_EXE_weir"))
        .env("ST_MAX_EXAMPLES", "20")
        .env("ST_MAX_TIME", "30")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let text = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found problems:\n{text}");
}
