//! `weir serve` through the command line: the same commands the README
//! shows (deploy, produce, consume, status), punctuation on the real wall
//! clock, retention of the embedded log.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{Options, Server, write_spec};

fn weir(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().map(str::to_owned).collect();
    v.sort();
    v
}

#[test]
fn the_cli_runs_an_example_like_weir_test_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let url = server.url.as_str();
    let example = weir_tests::workspace_dir().join("guest-examples/key-count");
    let spec = example.join("app.yaml");
    let (ok, out, err) = weir(&["deploy", spec.to_str().unwrap(), "--server", url], None);
    assert!(ok, "deploy: {err}");
    assert!(err.contains("deployed key-count"), "{err}");
    assert!(out.contains("key-count:"), "{out}");
    let input = std::fs::read_to_string(example.join("input.jsonl")).unwrap();
    let (ok, _, err) = weir(&["produce", "events", "--server", url], Some(&input));
    assert!(ok && err.contains("produced 7 records to events"), "{err}");
    server.wait_idle("key-count", Duration::from_secs(30));
    let (ok, counts, err) = weir(&["consume", "counts", "--server", url], None);
    assert!(ok, "{err}");
    let (ok, dlq, _) = weir(&["consume", "key-count-dlq", "--server", url], None);
    assert!(ok);
    // Same records as `weir test` prints; consume lists partition by partition.
    let expected = std::fs::read_to_string(example.join("expected.jsonl")).unwrap();
    assert_eq!(sorted_lines(&format!("{counts}{dlq}")), sorted_lines(&expected));
    let (ok, page, _) = weir(
        &["consume", "counts", "--server", url, "--partition", "1", "--from", "1", "--limit", "1", "--offsets"],
        None,
    );
    assert!(ok);
    assert!(page.trim().ends_with("\"offset\":1}") && page.lines().count() == 1, "{page}");
    let (ok, status, _) = weir(&["status", "key-count", "--server", url], None);
    assert!(ok && status.starts_with("key-count: running (embedded, exactly-once), lag 0"), "{status}");
    let (ok, alice, _) = weir(&["query", "key-count", "counts", "alice", "--server", url], None);
    assert!(ok && alice.trim() == r#"{"key":"alice","partition":1,"value":3}"#, "{alice}");
    let (ok, all, _) = weir(&["query", "key-count", "counts", "--prefix", "b", "--server", url], None);
    assert!(ok && all.trim() == r#"{"key":"bob","partition":2,"value":2}"#, "{all}");
    let (ok, _, err) = weir(&["query", "key-count", "counts", "zed", "--server", url], None);
    assert!(!ok && err.contains("404 unknown-key"), "{err}");
    let (ok, _, err) = weir(&["status", "nope", "--server", url], None);
    assert!(!ok && err.contains("404 unknown-app") && err.contains("no application `nope`"), "{err}");
    let (ok, _, err) = weir(&["produce", "nowhere", "--server", url], Some("{\"key\":\"k\"}\n"));
    assert!(!ok && err.contains("topic `nowhere` does not exist"), "{err}");
    let (ok, _, err) = weir(&["produce", "events", "--server", url], Some("{\"key\":\"k\"}\nnot json\n"));
    assert!(!ok && err.contains("line 2"), "a bad line is named, and nothing of the request is written: {err}");
}

#[test]
fn client_commands_say_when_no_server_answers() {
    let (ok, _, err) = weir(&["status", "x", "--server", "http://127.0.0.1:9"], None);
    assert!(!ok && err.contains("cannot reach weir at http://127.0.0.1:9"), "{err}");
}

#[test]
fn wall_clock_punctuation_fires_without_input() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "tick.yaml",
        r#"
name: tick
topics: { in: 1, out: 1 }
sources:
  in: { topic: in, to: [m] }
processors:
  m:
    component: "{guests}/misbehave.wasm"
    config: { wall_every: 100 }
    outputs: { out: out }
sinks:
  out: { topic: out }
"#,
    );
    let server =
        Server::start(&dir.path().join("data"), Options { commit_interval: Some("20ms".into()), ..Options::default() });
    server.deploy(&spec);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ticks = server.consume_all("out");
        if ticks.len() >= 3 {
            assert!(ticks.iter().all(|t| t["value"]["punctuation"] == "wall-clock"));
            break;
        }
        assert!(Instant::now() < deadline, "no wall-clock punctuation: {ticks:?}\n{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn retention_drops_old_records_by_age_and_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let env = |age: &str, bytes: &str| Options {
        env: vec![
            ("WEIR_RETENTION".into(), age.into()),
            ("WEIR_RETENTION_BYTES".into(), bytes.into()),
            ("WEIR_RETENTION_CHECK".into(), "100ms".into()),
        ],
        ..Options::default()
    };
    let end_and_first = |server: &Server| {
        let records = server.consume_all("log");
        let topics = server.get("/v1/topics").unwrap();
        let end = topics["topics"][0]["end_offsets"][0].as_i64().unwrap();
        (end, records.first().map(|r| r["offset"].as_i64().unwrap()), records.len())
    };
    // By size: 200 records of ~120 bytes, at most 4 KiB kept.
    let server = Server::start(&dir.path().join("size"), env("0", "4KiB"));
    weir::client::call(
        "POST",
        &format!("{}/v1/topics", server.url),
        Some(("application/json", br#"{"name":"log","partitions":1}"#.to_vec())),
    )
    .unwrap();
    let lines: String = (0..200).map(|i| format!("{{\"key\":\"k{i}\",\"value\":\"{:0>100}\"}}\n", i)).collect();
    server.produce("log", &lines).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let (end, first, kept) = end_and_first(&server);
    assert_eq!(end, 200, "offsets never move back");
    assert!(kept > 10 && kept < 40, "about 4 KiB of the newest records remain, got {kept}");
    assert_eq!(first, Some(200 - kept as i64), "the oldest went first");
    drop(server);
    // By age: everything older than 300ms goes.
    let server = Server::start(&dir.path().join("age"), env("300ms", "0"));
    weir::client::call(
        "POST",
        &format!("{}/v1/topics", server.url),
        Some(("application/json", br#"{"name":"log","partitions":1}"#.to_vec())),
    )
    .unwrap();
    server.produce("log", &lines).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let (end, _, kept) = end_and_first(&server);
    assert_eq!((end, kept), (200, 0));
    server.produce("log", "{\"key\":\"fresh\"}\n").unwrap();
    let (end, first, kept) = end_and_first(&server);
    assert_eq!((end, first, kept), (201, Some(200), 1), "new records get the next offset");
}

/// Runs a shell command line under a pseudo-terminal (util-linux `script`),
/// as a person at a terminal would; returns everything the terminal got.
fn on_a_terminal(command: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .env("WEIR_LOG", "warn")
        .env("COLUMNS", "120")
        .output()
        .expect("util-linux `script` runs commands on a pseudo-terminal");
    assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn producing_a_file_and_uploading_show_progress_bars_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let url = &server.url;
    let (ok, _, err) = weir(&["produce", "t", "--server", url], Some(r#"{"key": "k", "value": 1}"#));
    assert!(!ok && err.contains("`t`"), "producing to a missing topic is refused, naming it: {err}");
    weir::client::call(
        "POST",
        &format!("{url}/v1/topics"),
        Some(("application/json", br#"{"name": "t", "partitions": 2}"#.to_vec())),
    )
    .unwrap();
    let records = dir.path().join("records.jsonl");
    let lines: String = (0..60_000)
        .map(|i| format!("{{\"key\": \"k{i}\", \"value\": {{\"n\": {i}, \"pad\": \"{:040}\"}}}}\n", i))
        .collect();
    std::fs::write(&records, lines).unwrap();
    let weir_bin = env!("CARGO_BIN_EXE_weir");

    let shown = on_a_terminal(&format!("{weir_bin} produce t --server {url} < {}", records.display()));
    assert!(shown.contains("producing to t ["), "a bar while producing the file: {shown}");
    assert!(shown.contains("MiB"), "the bar counts bytes of the file's size: {shown}");
    assert!(shown.contains("produced 60000 records to t"), "{shown}");
    let file = std::fs::File::open(&records).unwrap();
    let piped = Command::new(weir_bin).args(["produce", "t", "--server", url]).stdin(file).output().unwrap();
    assert!(piped.status.success());
    assert_eq!(
        String::from_utf8_lossy(&piped.stderr),
        "produced 60000 records to t\n",
        "no bar when stderr is no terminal"
    );
    assert_eq!(server.consume_all("t").len(), 120_000, "both runs produced every record");
    // The latest records of each partition (what the console's dead-letter browser asks for).
    let latest = server.get("/v1/topics/t/records?last=3").unwrap();
    let mut offsets: Vec<(u64, u64)> = latest["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap()))
        .collect();
    offsets.sort();
    let ends: Vec<u64> = server.get("/v1/topics").unwrap()["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "t")
        .unwrap()["end_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_u64().unwrap())
        .collect();
    let want: Vec<(u64, u64)> =
        (0..2u64).flat_map(|p| (ends[p as usize] - 3..ends[p as usize]).map(move |o| (p, o))).collect();
    assert_eq!(offsets, want, "?last=3: the last three of each partition");

    let component = weir_tests::guest("reservation");
    let shown = on_a_terminal(&format!("{weir_bin} push {} --name reservation --server {url}", component.display()));
    assert!(shown.contains("uploading reservation.wasm ["), "a bar while uploading: {shown}");
    assert!(shown.contains("reservation@1"), "{shown}");
}

#[test]
fn status_watch_refreshes_counts_and_lag_until_interrupted() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Options::default());
    let example = weir_tests::workspace_dir().join("guest-examples/reservation");
    server.deploy(&example.join("app.yaml"));
    let mut watch = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["status", "reservation", "--watch", "--server", &server.url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let frames = |screen: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(screen).split("\x1b[2J\x1b[H").filter(|f| !f.is_empty()).map(str::to_owned).collect()
    };
    let records_in = |frame: &str| -> u64 {
        frame.split(": in ").skip(1).filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok()).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut produced = false;
    loop {
        assert!(Instant::now() < deadline, "no refreshed frame with the new records: {:?}", frames(&screen));
        if let Ok(bytes) = rx.recv_timeout(Duration::from_millis(200)) {
            screen.extend(bytes);
        }
        let all = frames(&screen);
        let Some(last) = all.last() else { continue };
        assert!(last.starts_with("reservation: running (embedded, exactly-once), lag"), "{last}");
        if !produced {
            let input = std::fs::read_to_string(example.join("input.jsonl")).unwrap();
            server
                .produce(
                    "orders",
                    &input.lines().filter(|l| l.contains(r#""topic": "orders""#)).collect::<Vec<_>>().join("\n"),
                )
                .unwrap();
            produced = true;
        } else if records_in(last) >= 9 + 9 - 2 {
            // 9 orders read by `rekey`, the 7 it passes on read by `reserve`.
            assert!(all.len() >= 2, "the first frame showed nothing yet, a later one the records");
            assert_eq!(records_in(&all[0]), 0, "{}", all[0]);
            break;
        }
    }
    watch.kill().unwrap();
    watch.wait().unwrap();
}
