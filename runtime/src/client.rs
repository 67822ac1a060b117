//! The CLI clients of a running `weir serve`: `deploy`, `produce`,
//! `consume`, `status`. Plain blocking HTTP; errors print the server's
//! `detail`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::testdriver::component_path;
use crate::topology::load_spec;

/// Lines per produce request.
const PRODUCE_CHUNK: usize = 5000;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// Sends a body. Large bodies ask the server first (`Expect: 100-continue`),
/// so a body the server refuses by size is never sent and its 413 reaches the
/// user instead of a broken pipe.
/// With `progress`, the body goes through a bar (its length declared, so the
/// server still sees `Content-Length`).
fn upload(
    request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    content_type: &str,
    auth: &str,
    body: &[u8],
    progress: Option<&indicatif::ProgressBar>,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let request = request.header("content-type", content_type).header("authorization", auth);
    let request = if body.len() > 64 * 1024 { request.header("expect", "100-continue") } else { request };
    match progress {
        Some(bar) => {
            let mut reader = crate::progress::reading(bar, body);
            request.header("content-length", body.len()).send(ureq::SendBody::from_reader(&mut reader))
        }
        None => request.send(body),
    }
}

/// Sends a request; returns the JSON body of a 2xx answer, or an error
/// carrying the server's `detail`.
pub fn call(method: &str, url: &str, body: Option<(&str, Vec<u8>)>) -> anyhow::Result<Value> {
    call_with_progress(method, url, body, None)
}

/// [`call`], the body's sending shown as a progress bar saying `what`
/// (on a terminal).
pub fn call_showing(method: &str, url: &str, body: (&str, Vec<u8>), what: &str) -> anyhow::Result<Value> {
    let bar = crate::progress::bytes(Some(body.1.len() as u64), what);
    let answer = call_with_progress(method, url, Some(body), Some(&bar));
    bar.finish_and_clear();
    answer
}

fn call_with_progress(
    method: &str,
    url: &str,
    body: Option<(&str, Vec<u8>)>,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<Value> {
    let agent = agent();
    // The API's bearer token, when the server requires one.
    let auth = std::env::var("WEIR_API_TOKEN").ok().filter(|t| !t.is_empty()).map(|t| format!("Bearer {t}"));
    let auth = auth.as_deref().unwrap_or("");
    let response = match (method, body) {
        ("GET", _) => agent.get(url).header("authorization", auth).call(),
        ("DELETE", _) => agent.delete(url).header("authorization", auth).call(),
        ("POST", Some((ct, b))) => upload(agent.post(url), ct, auth, &b, progress),
        ("PUT", Some((ct, b))) => upload(agent.put(url), ct, auth, &b, progress),
        _ => unreachable!("method {method} with body"),
    }
    .with_context(|| format!("cannot reach weir at {url}"))?;
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap_or_default();
    let json: Value =
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    if status >= 400 {
        let code = json.get("error").and_then(Value::as_str).unwrap_or("error");
        let detail = json.get("detail").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| json.to_string());
        bail!("server refused ({status} {code}): {detail}");
    }
    Ok(json)
}

/// Uploads the components a spec names by path, then deploys the spec.
pub fn deploy(spec_path: &Path, server: &str) -> anyhow::Result<()> {
    let answer = upload_and_deploy(spec_path, server)?;
    print_status(&answer["status"]);
    Ok(())
}

/// Uploads the component files a spec names and deploys it; says what
/// happened on stderr and returns the server's answer.
pub fn upload_and_deploy(spec_path: &Path, server: &str) -> anyhow::Result<Value> {
    let mut spec = load_spec(spec_path).map_err(|e| anyhow::anyhow!("{}:\n{e}", spec_path.display()))?;
    let base = spec_path.parent().unwrap_or(Path::new("."));
    let mut uploaded: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (name, processor) in spec.processors.iter_mut() {
        let Some(path) = component_path(&processor.component, base) else {
            continue;
        };
        if let Some(reference) = uploaded.get(&path) {
            processor.component = reference.clone();
            continue;
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("processor `{name}`: cannot read {}", path.display()))?;
        let what = format!("uploading {}", file_name(&path));
        let answer = call_showing("POST", &format!("{server}/v1/components"), ("application/wasm", bytes), &what)
            .with_context(|| format!("processor `{name}`: uploading {}", path.display()))?;
        let reference = answer["reference"].as_str().context("upload answer without reference")?.to_owned();
        eprintln!("uploaded {} as {reference}", path.display());
        processor.component = reference.clone();
        uploaded.insert(path, reference);
    }
    let body = serde_json::to_vec(&spec)?;
    let answer = call("PUT", &format!("{server}/v1/apps/{}", spec.name), Some(("application/json", body)))?;
    let cluster = &answer["cluster"];
    if cluster.is_object() {
        let instances = cluster["instances"].as_array().cloned().unwrap_or_default();
        let generation = cluster["generation"].as_u64().unwrap_or(0);
        let behind: Vec<&str> = instances
            .iter()
            .filter(|i| i["alive"] == true && i["generation"].as_u64() != Some(generation))
            .filter_map(|i| i["id"].as_str())
            .collect();
        let running = instances.iter().filter(|i| i["generation"].as_u64() == Some(generation)).count();
        match answer["action"].as_str() {
            Some("pending") => eprintln!(
                "{} generation {generation} accepted; {running} instance(s) run it, not yet: {} (see `weir status {}`)",
                spec.name,
                behind.join(", "),
                spec.name
            ),
            action => eprintln!(
                "{} {} (generation {generation}, on {running} instance(s) of cluster {})",
                action.unwrap_or("deployed"),
                spec.name,
                cluster["cluster"].as_str().unwrap_or("?")
            ),
        }
        return Ok(answer);
    }
    match answer["action"].as_str() {
        Some("updated") => {
            let u = &answer["update"];
            eprintln!(
                "updated {} ({}: {}, {} task(s) switched, longest pause {:.2} ms)",
                spec.name,
                u["kind"].as_str().unwrap_or("?"),
                u["state"].as_str().unwrap_or("?"),
                u["switched"],
                u["max_pause_ms"].as_f64().unwrap_or(0.0)
            );
        }
        _ => eprintln!("deployed {}", spec.name),
    }
    Ok(answer)
}

/// Sends JSONL records from `input` to a topic.
pub fn produce(topic: &str, server: &str, input: impl BufRead) -> anyhow::Result<u64> {
    let url = format!("{server}/v1/topics/{topic}/records");
    let mut chunk = String::new();
    let mut lines = 0usize;
    let mut total = 0u64;
    let mut line_no = 0usize;
    let mut first_in_chunk = 1usize;
    for line in input.lines() {
        let line = line.context("reading records from stdin")?;
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        if lines == 0 {
            first_in_chunk = line_no;
        }
        chunk.push_str(&line);
        chunk.push('\n');
        lines += 1;
        if lines == PRODUCE_CHUNK {
            total += send_chunk(&url, std::mem::take(&mut chunk), first_in_chunk)?;
            lines = 0;
        }
    }
    if lines > 0 {
        total += send_chunk(&url, chunk, first_in_chunk)?;
    }
    Ok(total)
}

fn send_chunk(url: &str, chunk: String, first_line: usize) -> anyhow::Result<u64> {
    let answer = call("POST", url, Some(("application/x-ndjson", chunk.into_bytes())))
        .with_context(|| format!("records starting at input line {first_line}"))?;
    Ok(answer["records"].as_array().map_or(0, |a| a.len() as u64))
}

/// Prints records of a topic as JSONL (the `weir test` output format).
pub fn consume(
    topic: &str,
    server: &str,
    from: i64,
    limit: Option<usize>,
    partition: Option<u32>,
    offsets: bool,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let topics = call("GET", &format!("{server}/v1/topics"), None)?;
    let count = topics["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == topic))
        .and_then(|t| t["partitions"].as_u64())
        .with_context(|| format!("topic `{topic}` does not exist on {server}"))? as u32;
    let partitions: Vec<u32> = match partition {
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let mut printed = 0;
    for p in partitions {
        let mut next = from;
        loop {
            let room = limit.map_or(1000, |l| l.saturating_sub(printed).min(1000));
            if room == 0 {
                return Ok(printed);
            }
            let page = call(
                "GET",
                &format!("{server}/v1/topics/{topic}/records?partition={p}&from={next}&limit={room}"),
                None,
            )?;
            let records = page["records"].as_array().cloned().unwrap_or_default();
            if records.is_empty() {
                break;
            }
            for mut r in records {
                next = r["offset"].as_i64().unwrap_or(next) + 1;
                if !offsets && let Some(map) = r.as_object_mut() {
                    map.remove("offset");
                }
                writeln!(out, "{r}")?;
                printed += 1;
            }
        }
    }
    Ok(printed)
}

/// Prints an application's status.
pub fn status(app: &str, server: &str, json: bool) -> anyhow::Result<()> {
    let status = call("GET", &format!("{server}/v1/apps/{app}"), None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(())
}

/// `weir status --watch`: the status again every `every`, the screen
/// cleared in between, until interrupted.
pub fn watch_status(app: &str, server: &str, every: std::time::Duration) -> anyhow::Result<()> {
    loop {
        let status = call("GET", &format!("{server}/v1/apps/{app}"), None);
        // Clear the screen and go home (ANSI), then the status.
        print!("\x1b[2J\x1b[H");
        match status {
            Ok(s) => print_status(&s),
            Err(e) => println!("{server}: {e:#}"),
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        std::thread::sleep(every);
    }
}

fn print_status(s: &Value) {
    println!(
        "{}: {} ({}, {}), lag {}",
        s["name"].as_str().unwrap_or("?"),
        s["state"].as_str().unwrap_or("?"),
        s["backend"].as_str().unwrap_or("?"),
        s["guarantee"].as_str().unwrap_or("?"),
        s["lag"]
    );
    for t in s["tasks"].as_array().into_iter().flatten() {
        let error = t["error"].as_str().map(|e| format!(" — {e}")).unwrap_or_default();
        let lag: i64 = t["inputs"].as_array().into_iter().flatten().filter_map(|i| i["lag"].as_i64()).sum();
        let restore = match (t["restore"][0].as_u64(), t["restore"][1].as_u64()) {
            (Some(done), Some(total)) if done < total => format!(" restoring {done}/{total}"),
            _ => String::new(),
        };
        println!(
            "  task {} {}: in {} lag {lag} dead-letters {} commits {}{restore}{error}",
            t["id"].as_str().unwrap_or("?"),
            t["state"].as_str().unwrap_or("?"),
            t["records_in"],
            t["dead_letters"],
            t["commits"]
        );
    }
    let cluster = &s["cluster"];
    if cluster.is_object() {
        println!("cluster {}: generation {}", cluster["cluster"].as_str().unwrap_or("?"), cluster["generation"]);
        println!(
            "  {:14} {:28} {:6} {:>10} {:9} tasks (state, lag)",
            "instance", "url", "alive", "generation", "state"
        );
        for i in cluster["instances"].as_array().into_iter().flatten() {
            let tasks: Vec<String> = i["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let restore = match (t["restore"][0].as_u64(), t["restore"][1].as_u64()) {
                        (Some(d), Some(n)) => format!(" restoring {d}/{n}"),
                        _ => String::new(),
                    };
                    format!(
                        "{} {} lag {}{restore}",
                        t["id"].as_str().unwrap_or("?"),
                        t["state"].as_str().unwrap_or("?"),
                        t["lag"]
                    )
                })
                .collect();
            let error = i["error"].as_str().map(|e| format!("  — {e}")).unwrap_or_default();
            println!(
                "  {:14} {:28} {:6} {:>10} {:9} {}{error}",
                i["id"].as_str().unwrap_or("?"),
                i["url"].as_str().unwrap_or("?"),
                if i["alive"] == true { "yes" } else { "no" },
                i["generation"].as_u64().map_or("-".to_owned(), |g| g.to_string()),
                i["state"].as_str().unwrap_or("-"),
                tasks.join("; ")
            );
        }
    }
    if let Some(last) = s["swaps"].as_array().and_then(|v| v.last()) {
        println!(
            "last update {}: {} ({} task(s) switched, longest pause {:.2} ms)",
            last["id"],
            last["state"].as_str().unwrap_or("?"),
            last["switched"],
            last["max_pause_ms"].as_f64().unwrap_or(0.0)
        );
    }
}

/// Prints a store's value for a key, or its entries (optionally under a
/// prefix), as JSON lines.
pub fn query(
    app: &str,
    store: &str,
    key: Option<&str>,
    prefix: Option<&str>,
    limit: usize,
    server: &str,
) -> anyhow::Result<()> {
    match key {
        Some(key) => {
            let v = call("GET", &format!("{server}/v1/apps/{app}/stores/{store}/keys/{}", encode_path(key)), None)?;
            println!("{v}");
        }
        None => {
            let prefix = prefix.map(|p| format!("&prefix={}", encode_path(p))).unwrap_or_default();
            let v = call("GET", &format!("{server}/v1/apps/{app}/stores/{store}?limit={limit}{prefix}"), None)?;
            for entry in v["entries"].as_array().into_iter().flatten() {
                println!("{entry}");
            }
        }
    }
    Ok(())
}

/// Percent-encodes everything but unreserved URL characters.
fn encode_path(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Uploads a component under a name (and version).
pub fn push(file: &Path, name: &str, version: Option<&str>, server: &str) -> anyhow::Result<Value> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let version = version.map(|v| format!("&version={}", encode_path(v))).unwrap_or_default();
    call_showing(
        "POST",
        &format!("{server}/v1/components?name={}{version}", encode_path(name)),
        ("application/wasm", bytes),
        &format!("uploading {}", file_name(file)),
    )
}
