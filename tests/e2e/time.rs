//! Batch-invariant time: a processor that reads stream time and punctuates
//! on it (a tumbling-window count, emitted when each window closes, late
//! records to `late`) gives the same output on `weir test` (one record at a
//! time) as when its input arrives in batches of any size, with crashes at
//! any point, in process, on `weir serve` (embedded) and on Kafka.
//!
//! The reference is always `weir test`'s runner fed line by line. Inputs are
//! random (seeded; the seed is printed, `WEIR_TEST_SEED` replays it): several
//! keys and partitions, two input topics (each with its own sub-topology),
//! timestamps out of order by up to 25 s against a 10 s grace, so windows
//! close, records arrive late, and stream time jumps over punctuation
//! intervals.
//!
//! The same property covers durable timers (a processor that sets and
//! cancels a stream-time timer on every record, closing a key's activity
//! when it fires) and a component built against contract 0.1.0.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use weir::jsonl::{InputLine, OutputLine};
use weir::record::Record;
use weir::task::AppRuntime;
use weir::testdriver::{OfflineRunner, load_components};
use weir::topology::{Topology, parse_spec};

use crate::broker::{shared, unique};
use crate::common::engine;
use crate::kafka::{kafka_server_with, wait_drained, wait_tasks};
use crate::server::{Options, Rng, Server, write_spec};

/// Two windowed counts, one per input topic; clicks' counts go through a
/// second processor (a relay), so punctuation output crosses processors.
/// `pinger` forwards pings and punctuates every 5 s of stream time without
/// ever asking for stream time: its batches are only cut where its
/// punctuation falls due, and its one task's output shows exactly where the
/// ticks fall between the records.
///
/// `page_views` is a hopping-window count through the SDK's windows (a
/// window store, a close timer per window). `sessions` runs the inactivity guest (durable stream-time timers, set
/// and cancelled on every record); `legacy_windows` runs the windowed count as built against
/// contract 0.1.0 (the pinned copy), which asks the host for stream time
/// instead of getting it per record.
fn windows_spec(name: &str, prefix: &str, max_batch: u32) -> String {
    let pinned = pinned_0_1_0().display().to_string();
    format!(
        r#"
name: {name}
topics: {{ {prefix}clicks: 3, {prefix}views: 2, {prefix}pings: 1, {prefix}sessions: 2, {prefix}legacy: 2, {prefix}click-counts: 2, {prefix}view-counts: 2, {prefix}click-late: 1, {prefix}view-late: 1, {prefix}ticks: 1, {prefix}closed: 2, {prefix}legacy-counts: 2, {prefix}legacy-late: 1, {prefix}pages: 2, {prefix}page-counts: 2, {prefix}page-late: 1 }}
sources:
  clicks: {{ topic: {prefix}clicks, to: [click_windows] }}
  views: {{ topic: {prefix}views, to: [view_windows] }}
  pings: {{ topic: {prefix}pings, to: [pinger] }}
  sessions: {{ topic: {prefix}sessions, to: [inactivity] }}
  legacy: {{ topic: {prefix}legacy, to: [legacy_windows] }}
  pages: {{ topic: {prefix}pages, to: [page_views] }}
processors:
  page_views:
    component: "{{guests}}/page_views.wasm"
    config: {{ size: 60s, advance: 20s, grace: 10s }}
    stores: [views]
    timers: true
    outputs: {{ counts: page_counts, late: page_late }}
    max_batch: {max_batch}
  inactivity:
    component: "{{guests}}/inactivity.wasm"
    config: {{ gap_ms: 20000 }}
    stores: [activity]
    timers: true
    outputs: {{ closed: closed }}
    max_batch: {max_batch}
  legacy_windows:
    component: "{pinned}"
    config: {{ size_ms: 30000, grace_ms: 10000, close_every_ms: 10000, store: legacy_windows }}
    stores: [legacy_windows]
    outputs: {{ counts: legacy_counts, late: legacy_late }}
    max_batch: {max_batch}
  click_windows:
    component: "{{guests}}/windowed_count.wasm"
    config: {{ size_ms: 60000, grace_ms: 10000, close_every_ms: 10000, store: click_windows }}
    stores: [click_windows]
    outputs: {{ counts: relay, late: click_late }}
    max_batch: {max_batch}
  relay:
    component: "{{guests}}/passthrough.wasm"
    outputs: {{ out: click_counts }}
    max_batch: {max_batch}
  view_windows:
    component: "{{guests}}/windowed_count.wasm"
    config: {{ size_ms: 30000, grace_ms: 5000, close_every_ms: 7000, store: view_windows }}
    stores: [view_windows]
    outputs: {{ counts: view_counts, late: view_late }}
    max_batch: {max_batch}
  pinger:
    component: "{{guests}}/misbehave.wasm"
    config: {{ stream_every: 5000 }}
    outputs: {{ out: ticks }}
    max_batch: {max_batch}
stores: {{ click_windows: {{}}, view_windows: {{}}, activity: {{}}, legacy_windows: {{}}, views: {{ retention: 70s }} }}
sinks:
  closed: {{ topic: {prefix}closed }}
  legacy_counts: {{ topic: {prefix}legacy-counts }}
  legacy_late: {{ topic: {prefix}legacy-late }}
  page_counts: {{ topic: {prefix}page-counts }}
  page_late: {{ topic: {prefix}page-late }}
  click_counts: {{ topic: {prefix}click-counts }}
  click_late: {{ topic: {prefix}click-late }}
  view_counts: {{ topic: {prefix}view-counts }}
  view_late: {{ topic: {prefix}view-late }}
  ticks: {{ topic: {prefix}ticks }}
"#
    )
}

/// Output topics of [`windows_spec`].
fn outputs(prefix: &str) -> Vec<String> {
    [
        "click-counts",
        "view-counts",
        "click-late",
        "view-late",
        "ticks",
        "closed",
        "legacy-counts",
        "legacy-late",
        "page-counts",
        "page-late",
    ]
    .iter()
    .map(|t| format!("{prefix}{t}"))
    .collect()
}

/// The inactivity guest as built against contract 0.2.0, kept as a binary
/// (see tests/pinned/contract-0.2.0/README.md).
fn pinned_0_2_0() -> std::path::PathBuf {
    weir_tests::workspace_dir().join("tests/pinned/contract-0.2.0/inactivity.wasm")
}

/// [`windows_spec`] with the inactivity guest as built against contract
/// 0.2.0 (the pinned copy: unpacked batches) instead of its current build.
fn windows_spec_0_2_0(name: &str, prefix: &str, max_batch: u32) -> String {
    let spec = windows_spec(name, prefix, max_batch);
    let current = "\"{guests}/inactivity.wasm\"";
    assert!(spec.contains(current), "{spec}");
    spec.replace(current, &format!("\"{}\"", pinned_0_2_0().display()))
}

/// The windowed-count guest as built against contract 0.1.0, kept as a
/// binary (see tests/pinned/contract-0.1.0/README.md).
fn pinned_0_1_0() -> std::path::PathBuf {
    weir_tests::workspace_dir().join("tests/pinned/contract-0.1.0/windowed_count.wasm")
}

fn app(spec: &str) -> Arc<AppRuntime> {
    let yaml = spec.replace("{guests}", &weir_tests::guests_dir().display().to_string());
    let topology = Topology::compile(parse_spec(&yaml).expect("spec parses")).expect("spec is valid");
    let engine = engine();
    let components = load_components(&topology, Path::new("."), &engine, &BTreeMap::new()).expect("components load");
    Arc::new(AppRuntime { topology: Arc::new(topology), engine, components })
}

/// One input record: topic (without prefix), key, timestamp.
type Input = (&'static str, String, i64);

/// `n` records over both topics, six keys, timestamps drifting forward and
/// out of order by up to 25 s.
fn random_input(rng: &mut Rng, n: usize) -> Vec<Input> {
    let mut clock = 1_000_000 + rng.below(100_000) as i64;
    (0..n)
        .map(|_| {
            clock += rng.below(6_000) as i64;
            let ts = clock - rng.below(25_000) as i64;
            let topic = match rng.below(8) {
                0 => "views",
                1 => "pings",
                2 => "sessions",
                3 => "legacy",
                4 => "pages",
                _ => "clicks",
            };
            (topic, format!("k{}", rng.below(6)), ts)
        })
        .collect()
}

fn record(key: &str, ts: i64) -> Record {
    record_of(key, "{}", ts)
}

fn record_of(key: &str, value: &str, ts: i64) -> Record {
    Record {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
        timestamp: ts,
        headers: vec![],
    }
}

/// Per (topic, partition, key): the records in order, as `value timestamp`.
/// Records of one key come from one task, in that task's order; records of
/// different tasks interleave on a shared output partition in commit order,
/// which no stream processor fixes (Kafka Streams neither). `ticks` has one
/// task: its whole order counts (key `*`).
type Outputs = BTreeMap<(String, u64, String), Vec<String>>;

fn from_lines(lines: &[OutputLine]) -> Outputs {
    let mut out = Outputs::new();
    for l in lines {
        let key = if l.topic.ends_with("ticks") { "*".to_owned() } else { l.key.to_string() };
        out.entry((l.topic.clone(), u64::from(l.partition), key))
            .or_default()
            .push(format!("{} {}", l.value, l.timestamp));
    }
    out
}

/// From consumed lines (`weir consume` and Kafka reads print output lines).
fn from_values(topic: &str, values: &[serde_json::Value]) -> Outputs {
    let lines: Vec<OutputLine> = values
        .iter()
        .map(|v| OutputLine {
            topic: topic.to_owned(),
            partition: v["partition"].as_u64().expect("partition") as u32,
            key: v["key"].clone(),
            value: v["value"].clone(),
            timestamp: v["timestamp"].as_i64().expect("timestamp"),
            headers: vec![],
        })
        .collect();
    from_lines(&lines)
}

/// `weir test`: every line fed and processed on its own.
fn reference(app: &Arc<AppRuntime>, prefix: &str, input: &[Input]) -> Outputs {
    let mut r = OfflineRunner::new(app.clone()).expect("tasks start");
    for (topic, key, ts) in input {
        let line = InputLine::Record { topic: format!("{prefix}{topic}"), partition: None, record: record(key, *ts) };
        r.feed(line).unwrap_or_else(|(task, e)| panic!("{task}: {e}"));
    }
    from_lines(&r.outputs(false))
}

/// The entries on which two outputs differ, to read a failure by.
fn differences(got: &Outputs, expected: &Outputs) -> String {
    let keys: std::collections::BTreeSet<_> = got.keys().chain(expected.keys()).collect();
    let mut out = String::new();
    for k in keys {
        let (g, e) = (got.get(k), expected.get(k));
        if g != e {
            out.push_str(&format!("{k:?}\n  got      {g:?}\n  expected {e:?}\n"));
        }
    }
    out
}

/// How many window counts, late records, ticks and closed sessions (timer
/// firings) an output holds.
fn counts_and_late(out: &Outputs) -> (usize, usize, usize, usize) {
    let sum = |what: &str| out.iter().filter(|((t, _, _), _)| t.ends_with(what)).map(|(_, v)| v.len()).sum();
    let ticks = out.iter().filter(|((t, _, _), _)| t.ends_with("ticks")).flat_map(|(_, v)| v);
    (sum("-counts"), sum("-late"), ticks.filter(|v| v.contains("punctuation")).count(), sum("closed"))
}

/// A batch size: mostly small, sometimes up to 1000.
fn batch_size(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=4 => 1 + rng.below(8) as usize,
        5..=7 => 1 + rng.below(100) as usize,
        _ => 1 + rng.below(1000) as usize,
    }
}

/// The pinned components really are 0.1.0 and 0.2.0 builds (the property
/// tests run them beside the current builds of the same sources), and all
/// load.
#[test]
fn components_built_against_contracts_0_1_0_and_0_2_0_still_load_as_such() {
    let engine = engine();
    let pinned = engine.load_file(&pinned_0_1_0()).expect("the 0.1.0 component loads");
    assert_eq!(pinned.contract(), weir::wasm::CONTRACT_0_1);
    assert!(!pinned.exports().iter().any(|e| e == "on-timer"), "{:?}", pinned.exports());
    let pinned = engine.load_file(&pinned_0_2_0()).expect("the 0.2.0 component loads");
    assert_eq!(pinned.contract(), weir::wasm::CONTRACT_0_2);
    assert!(pinned.imports().iter().all(|i| !i.contains("@0.3.0")), "{:?}", pinned.imports());
    for guest in ["windowed_count.wasm", "inactivity.wasm"] {
        let current = engine.load_file(&weir_tests::guests_dir().join(guest)).expect("loads");
        assert_eq!(current.contract(), weir::wasm::CONTRACT, "{guest}");
        assert!(current.imports().iter().any(|i| i == "weir:processor/packed@0.3.0"), "{:?}", current.imports());
    }
}

/// The issue's case: records that a poll hands over in one batch must not
/// all be judged at the batch's newest stream time (which sent 34 of 36
/// records to `late` and emitted no count).
#[test]
fn one_big_batch_gives_what_one_record_at_a_time_gives() {
    // Punctuation every 5 minutes: the 36 records (20 s apart) reach the
    // processor in a few calls only.
    let spec = windows_spec("windows", "", 256).replace("close_every_ms: 10000", "close_every_ms: 300000");
    let app = app(&spec);
    let input: Vec<Input> =
        (0..36).map(|i| ("clicks", format!("k{}", i % 3), 1_000_000 + i * 20_000)).collect::<Vec<_>>();
    let expected = reference(&app, "", &input);
    let (counts, late, _, _) = counts_and_late(&expected);
    assert!(counts > 0 && late == 0, "in-order input: windows close, nothing is late: {expected:#?}");

    let mut r = OfflineRunner::new(app).expect("tasks start");
    for (topic, key, ts) in &input {
        r.append_input(topic, None, record(key, *ts));
    }
    r.pump().unwrap_or_else(|(task, e)| panic!("{task}: {e}"));
    assert_eq!(from_lines(&r.outputs(false)), expected);
}

/// The property, in process: random inputs, random call sizes (1 … 1000)
/// and processor batch limits, crashes (open work lost, tasks restarted
/// from committed positions, stores and stream time) at random points.
#[test]
fn batching_and_crashes_never_change_output() {
    let mut rng = Rng::new("batching_and_crashes_never_change_output");
    let apps = [app(&windows_spec("windows", "", 1000)), app(&windows_spec("windows", "", 3))];
    let (mut total_counts, mut total_late, mut total_ticks, mut total_closed, mut crashes) = (0, 0, 0, 0, 0);
    for round in 0..40 {
        let app = &apps[round % 2];
        let n = 1 + rng.below(400) as usize;
        let input = random_input(&mut rng, n);
        let expected = reference(app, "", &input);
        let (counts, late, ticks, closed) = counts_and_late(&expected);
        total_counts += counts;
        total_late += late;
        total_ticks += ticks;
        total_closed += closed;

        let mut r = OfflineRunner::new(app.clone()).expect("tasks start");
        for (topic, key, ts) in &input {
            r.append_input(topic, None, record(key, *ts));
        }
        let mut batch_rng = Rng::seeded(rng.next());
        let mut crash_rng = Rng::seeded(rng.next());
        let mut crashed = 0;
        r.pump_with(&mut || batch_size(&mut batch_rng), &mut || {
            let crash = crash_rng.below(6) == 0;
            crashed += usize::from(crash);
            crash
        })
        .unwrap_or_else(|(task, e)| panic!("{task}: {e}"));
        crashes += crashed;
        let got = from_lines(&r.outputs(false));
        assert!(
            got == expected,
            "round {round}: {} records, {crashed} crashes:\n{}",
            input.len(),
            differences(&got, &expected)
        );
    }
    eprintln!(
        "40 rounds: {total_counts} window counts, {total_late} late, {total_ticks} ticks, {total_closed} timers fired, \
         {crashes} crashes"
    );
    assert!(
        total_counts > 100 && total_late > 3 && total_ticks > 100 && total_closed > 50 && crashes > 10,
        "the inputs exercise closing, lateness, punctuation, timers and crashes"
    );
}

/// Produces `input` in random chunks, killing (SIGKILL) and restarting the
/// server between chunks at random, via `produce(topic, jsonl)`.
fn produce_in_chunks_with_kills(
    rng: &mut Rng,
    prefix: &str,
    input: &[Input],
    server: &mut Server,
    produce: &dyn Fn(&Server, &str, &str),
) -> usize {
    let mut kills = 0;
    let mut at = 0;
    while at < input.len() {
        let n = batch_size(rng).min(input.len() - at);
        // One produce call per topic for the chunk, in input order per topic.
        let mut per_topic: BTreeMap<&str, String> = BTreeMap::new();
        for (topic, key, ts) in &input[at..at + n] {
            per_topic
                .entry(topic)
                .or_default()
                .push_str(&format!("{{\"key\":\"{key}\",\"value\":{{}},\"timestamp\":{ts}}}\n"));
        }
        for (topic, jsonl) in per_topic {
            produce(server, &format!("{prefix}{topic}"), &jsonl);
        }
        at += n;
        // At random, and at least once past the middle.
        if rng.below(4) == 0 || (kills == 0 && at >= input.len() / 2) {
            std::thread::sleep(Duration::from_millis(rng.below(200)));
            server.restart();
            kills += 1;
        }
    }
    kills
}

#[test]
fn serve_embedded_matches_weir_test_however_input_is_batched_and_killed() {
    let mut rng = Rng::new("serve_embedded_matches_weir_test_however_input_is_batched_and_killed");
    let dir = tempfile::tempdir().unwrap();
    let spec = windows_spec("windows", "", 256);
    let input = random_input(&mut rng, 1500);
    let expected = reference(&app(&spec), "", &input);
    let path = write_spec(dir.path(), "windows.yaml", &spec);
    let mut server = Server::start(&dir.path().join("data"), Options::default());
    server.deploy(&path);
    let produce = |s: &Server, topic: &str, jsonl: &str| {
        s.produce(topic, jsonl).unwrap_or_else(|e| panic!("produce: {e:#}\n{}", s.log_tail()));
    };
    let kills = produce_in_chunks_with_kills(&mut rng, "", &input, &mut server, &produce);
    server.wait_idle("windows", Duration::from_secs(120));
    let mut got = Outputs::new();
    for topic in outputs("") {
        got.extend(from_values(&topic, &server.consume_all(&topic)));
    }
    eprintln!(
        "embedded: {} records, {kills} kills, {:?} (counts, late, ticks, timers fired)",
        input.len(),
        counts_and_late(&expected)
    );
    assert!(got == expected, "kills: {kills}:\n{}", differences(&got, &expected));
}

#[test]
fn kafka_matches_weir_test_however_input_is_batched_and_killed() {
    let kafka = shared();
    let mut rng = Rng::new("kafka_matches_weir_test_however_input_is_batched_and_killed");
    let dir = tempfile::tempdir().unwrap();
    let name = unique("windows");
    let prefix = format!("{name}-");
    let spec = windows_spec(&name, &prefix, 256);
    let input = random_input(&mut rng, 1000);
    let expected = reference(&app(&spec), &prefix, &input);
    let path = write_spec(dir.path(), "windows.yaml", &spec);
    let mut server = kafka_server_with(&dir.path().join("data"), kafka, &[]);
    server.deploy(&path);
    let produce = |_: &Server, topic: &str, jsonl: &str| {
        kafka.produce(topic, jsonl);
    };
    let kills = produce_in_chunks_with_kills(&mut rng, &prefix, &input, &mut server, &produce);
    let inputs = [format!("{prefix}clicks"), format!("{prefix}views"), format!("{prefix}pings")];
    wait_drained(kafka, &[&server], &name, &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let mut got = Outputs::new();
    for topic in outputs(&prefix) {
        got.extend(from_values(&topic, &kafka.consume(&topic)));
    }
    eprintln!(
        "kafka: {} records, {kills} kills, {:?} (counts, late, ticks, timers fired)",
        input.len(),
        counts_and_late(&expected)
    );
    assert!(got == expected, "kills: {kills}:\n{}", differences(&got, &expected));
}

/// Restarts `server` (SIGKILL) after its first records are committed, then
/// sends a record that is late only against the stream time committed
/// before the restart: it must go to `late`.
fn late_after_restart(
    server: &mut Server,
    prefix: &str,
    produce: &dyn Fn(&Server, &str, &str),
    wait: &dyn Fn(&Server),
    consume: &dyn Fn(&Server, &str) -> Vec<serde_json::Value>,
) {
    let clicks = format!("{prefix}clicks");
    produce(server, &clicks, "{\"key\":\"k0\",\"value\":{},\"timestamp\":1000000}\n");
    produce(server, &clicks, "{\"key\":\"k0\",\"value\":{},\"timestamp\":1200000}\n");
    wait(server);
    server.restart();
    // Its window [960000, 1020000) closed at 1030000 <= 1200000.
    produce(server, &clicks, "{\"key\":\"k0\",\"value\":{},\"timestamp\":1000500}\n");
    wait(server);
    let late = consume(server, &format!("{prefix}click-late"));
    let stamps: Vec<i64> = late.iter().map(|v| v["timestamp"].as_i64().unwrap()).collect();
    assert_eq!(stamps, [1000500], "late against the stream time committed before the restart: {late:?}");
}

#[test]
fn a_restart_resumes_at_the_committed_stream_time_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_spec(dir.path(), "windows.yaml", &windows_spec("windows", "", 256));
    let mut server = Server::start(&dir.path().join("data"), Options::default());
    server.deploy(&path);
    late_after_restart(
        &mut server,
        "",
        &|s, topic, jsonl| {
            s.produce(topic, jsonl).unwrap();
        },
        &|s| {
            s.wait_idle("windows", Duration::from_secs(60));
        },
        &|s, topic| s.consume_all(topic),
    );
}

#[test]
fn a_restart_resumes_at_the_committed_stream_time_on_kafka() {
    let kafka = shared();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("windows");
    let prefix = format!("{name}-");
    let path = write_spec(dir.path(), "windows.yaml", &windows_spec(&name, &prefix, 256));
    let mut server = kafka_server_with(&dir.path().join("data"), kafka, &[]);
    server.deploy(&path);
    let clicks = format!("{prefix}clicks");
    late_after_restart(
        &mut server,
        &prefix,
        &|_, topic, jsonl| {
            kafka.produce(topic, jsonl);
        },
        &|s| wait_drained(kafka, &[s], &name, &[&clicks]),
        &|_, topic| kafka.consume(topic),
    );
}

/// Event time from the data: an ISO 8601 field on one source, milliseconds
/// on the other; a record without a valid one is dead-lettered with kind
/// `bad-timestamp` and does not move stream time.
#[test]
fn timestamps_come_from_a_field_of_the_value_when_the_spec_says_so() {
    let spec = windows_spec("windows", "", 256)
        .replace(
            "clicks: { topic: clicks, to: [click_windows] }",
            "clicks: { topic: clicks, to: [click_windows], timestamp: { field: at, format: iso8601 } }",
        )
        .replace(
            "views: { topic: views, to: [view_windows] }",
            "views: { topic: views, to: [view_windows], timestamp: { field: meta.ms } }",
        );
    let mut r = OfflineRunner::new(app(&spec)).expect("tasks start");
    let line = |topic: &str, value: &str| InputLine::Record {
        topic: topic.into(),
        partition: None,
        record: record_of("k0", value, 0),
    };
    for (topic, value) in [
        ("clicks", r#"{"at":"2026-12-01T13:45:10Z"}"#),
        ("clicks", r#"{"at":"2026-12-01T14:45:20.5+01:00"}"#), // the same minute, another offset
        ("clicks", r#"{"at":"yesterday"}"#),
        ("clicks", r#"{"no":"time"}"#),
        ("clicks", r#"{"at":"2026-12-01T13:47:00Z"}"#), // closes 13:45 (end 13:46 + 10 s grace)
        ("views", r#"{"meta":{"ms":1000000}}"#),
        ("views", r#"{"meta":{"ms":"x"}}"#),
        ("views", r#"{"meta":{"ms":1050000}}"#), // closes [990000, 1020000)
    ] {
        r.feed(line(topic, value)).unwrap_or_else(|(task, e)| panic!("{task}: {e}"));
    }
    let out = r.outputs(false);
    let on = |topic: &str| out.iter().filter(|l| l.topic == topic).collect::<Vec<_>>();
    let clicks = on("click-counts");
    assert_eq!(clicks.len(), 1, "{out:#?}");
    assert_eq!(clicks[0].value["start"], 1_796_132_700_000i64, "the 13:45 window, from the field");
    assert_eq!(clicks[0].value["count"], 2);
    let views = on("view-counts");
    assert_eq!((views.len(), &views[0].value["start"], &views[0].value["count"]), (1, &json!(990000), &json!(1)));
    let dead = on("windows-dlq");
    assert_eq!(dead.len(), 3, "{dead:#?}");
    for d in &dead {
        let kind = d.headers.iter().find(|(n, _)| n == "weir.error.kind").map(|(_, v)| v.clone());
        assert_eq!(kind, Some(json!("bad-timestamp")), "{d:?}");
    }
    let error = |i: usize| dead[i].headers.iter().find(|(n, _)| n == "weir.error").unwrap().1.to_string();
    assert!(error(0).contains("`at`") && error(0).contains("ISO 8601"), "{}", error(0));
    assert!(error(1).contains("no timestamp field `at`"), "{}", error(1));
    assert!(error(2).contains("`meta.ms`"), "{}", error(2));
    // Stream time stayed with the valid records.
    let click_task = r.tasks().iter().find(|t| t.input_topics().any(|t| &**t == "clicks") && t.stream_time() > 0);
    assert_eq!(click_task.map(|t| t.stream_time()), Some(1_796_132_820_000));

    // A field path must name a field.
    let bad = spec.replace("field: meta.ms", "field: meta.");
    let err = Topology::compile(parse_spec(&bad.replace("{guests}", "g")).unwrap()).unwrap_err();
    assert!(err.to_string().contains("sources.views.timestamp.field"), "{err}");
}

/// A stream–table join (orders enriched with their customer) whose table
/// updates arrive after the orders they must come before.
fn join_spec(name: &str, prefix: &str, max_task_idle: &str) -> String {
    format!(
        r#"
name: {name}
max_task_idle: {max_task_idle}
topics: {{ {prefix}orders: 4, {prefix}customers: 4, {prefix}enriched: 4, {prefix}unmatched: 4 }}
sources:
  orders: {{ topic: {prefix}orders, value_format: json, to: [enrich] }}
tables:
  customers: {{ topic: {prefix}customers, value_format: json }}
processors:
  enrich:
    component: "{{guests}}/enrichment.wasm"
    config: {{ store: customers, field: customer_id, into: customer }}
    stores: [customers]
    outputs: {{ enriched: enriched, unmatched: unmatched }}
sinks:
  enriched: {{ topic: {prefix}enriched }}
  unmatched: {{ topic: {prefix}unmatched }}
"#
    )
}

const ORDERS: &[(&str, &str, i64)] = &[
    ("c1", r#"{"order_id":"o1","customer_id":"c1"}"#, 1500),
    ("c1", r#"{"order_id":"o2","customer_id":"c1"}"#, 2500),
    ("c2", r#"{"order_id":"o3","customer_id":"c2"}"#, 1200),
];
const CUSTOMERS: &[(&str, &str, i64)] = &[
    ("c1", r#"{"name":"Ada","v":1}"#, 1000),
    ("c2", r#"{"name":"Alan"}"#, 1100),
    ("c1", r#"{"name":"Ada","v":2}"#, 2000),
];

fn jsonl(records: &[(&str, &str, i64)]) -> String {
    records.iter().map(|(k, v, ts)| format!("{{\"key\":\"{k}\",\"value\":{v},\"timestamp\":{ts}}}\n")).collect()
}

/// The timestamp-ordered oracle: `weir test` fed every record in timestamp order.
fn join_oracle(prefix: &str) -> Outputs {
    let mut all: Vec<(&str, &(&str, &str, i64))> =
        ORDERS.iter().map(|r| ("orders", r)).chain(CUSTOMERS.iter().map(|r| ("customers", r))).collect();
    all.sort_by_key(|(_, r)| r.2);
    let mut r = OfflineRunner::new(app(&join_spec("join", prefix, "0ms"))).expect("tasks start");
    for (topic, (key, value, ts)) in all {
        let record = record_of(key, value, *ts);
        r.feed(InputLine::Record { topic: format!("{prefix}{topic}"), partition: None, record }).unwrap();
    }
    let out = from_lines(&r.outputs(false));
    let enriched = out.iter().filter(|((t, _, _), _)| t.ends_with("enriched")).map(|(_, v)| v.len()).sum::<usize>();
    assert_eq!(enriched, 3, "in timestamp order every order finds its customer: {out:#?}");
    out
}

/// Orders first, the customers half a second later: with `max_task_idle`
/// the task waits for the table and joins in timestamp order; with 0 it
/// does not wait (so the test can tell).
fn orders_then_customers(produce: &dyn Fn(&str, &str), prefix: &str) {
    produce(&format!("{prefix}orders"), &jsonl(ORDERS));
    std::thread::sleep(Duration::from_millis(500));
    produce(&format!("{prefix}customers"), &jsonl(CUSTOMERS));
}

#[test]
fn a_stream_table_join_waits_for_the_table_and_joins_in_timestamp_order_embedded() {
    let expected = join_oracle("");
    for (idle, must_match) in [("3s", true), ("0ms", false)] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_spec(dir.path(), "join.yaml", &join_spec("join", "", idle));
        let server = Server::start(&dir.path().join("data"), Options::default());
        server.deploy(&path);
        orders_then_customers(
            &|topic, jsonl| {
                server.produce(topic, jsonl).unwrap();
            },
            "",
        );
        server.wait_idle("join", Duration::from_secs(60));
        let mut got = Outputs::new();
        for topic in ["enriched", "unmatched"] {
            got.extend(from_values(topic, &server.consume_all(topic)));
        }
        if must_match {
            assert_eq!(got, expected, "max_task_idle {idle}");
        } else {
            assert_ne!(got, expected, "without waiting the orders come before their customers");
        }
    }
}

#[test]
fn a_stream_table_join_waits_for_the_table_and_joins_in_timestamp_order_on_kafka() {
    let kafka = shared();
    let name = unique("join");
    let prefix = format!("{name}-");
    let expected = join_oracle(&prefix);
    let dir = tempfile::tempdir().unwrap();
    let path = write_spec(dir.path(), "join.yaml", &join_spec(&name, &prefix, "3s"));
    let server = kafka_server_with(&dir.path().join("data"), kafka, &[]);
    server.deploy(&path);
    // Wait for the task to be assigned, so the wait starts with the orders.
    crate::kafka::wait_for(Duration::from_secs(60), "tasks assigned", || {
        let s = server.get(&format!("/v1/apps/{name}")).ok()?;
        (s["tasks"].as_array().is_some_and(|t| !t.is_empty()) && s["state"] == "running").then_some(())
    });
    orders_then_customers(
        &|topic, jsonl| {
            kafka.produce(topic, jsonl);
        },
        &prefix,
    );
    let inputs = [format!("{prefix}orders"), format!("{prefix}customers")];
    wait_drained(kafka, &[&server], &name, &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let mut got = Outputs::new();
    for topic in ["enriched", "unmatched"].map(|t| format!("{prefix}{t}")) {
        got.extend(from_values(&topic, &kafka.consume(&topic)));
    }
    assert_eq!(got, expected);
}

/// `weir test` with the same arrival order (orders first): the task waits
/// for the table until the input ends, and prints the oracle's output.
#[test]
fn weir_test_with_max_task_idle_joins_in_timestamp_order() {
    let expected = join_oracle("");
    let mut r = OfflineRunner::new(app(&join_spec("join", "", "3s"))).expect("tasks start");
    for (topic, records) in [("orders", ORDERS), ("customers", CUSTOMERS)] {
        for (key, value, ts) in records {
            r.feed(InputLine::Record { topic: topic.into(), partition: None, record: record_of(key, value, *ts) })
                .unwrap();
        }
    }
    r.end_of_input().unwrap();
    assert_eq!(from_lines(&r.outputs(false)), expected);
}

/// Timers alone, many short rounds: every record of a key moves its timer
/// (cancel + set), so timers fall due inside batches, right after them and
/// across drains and crashes.
#[test]
fn timers_fire_at_the_same_point_however_input_is_batched_and_crashed() {
    let mut rng = Rng::new("timers_fire_at_the_same_point_however_input_is_batched_and_crashed");
    // The current build of the timers guest, and its pinned 0.2.0 build:
    // the contract changed how records cross, not what a processor sees.
    let apps = [
        app(&windows_spec("windows", "", 1000)),
        app(&windows_spec("windows", "", 3)),
        app(&windows_spec_0_2_0("windows", "", 1000)),
        app(&windows_spec_0_2_0("windows", "", 3)),
    ];
    let (mut fired, mut crashes) = (0, 0);
    for round in 0..200 {
        let app = &apps[round % 4];
        let n = 1 + rng.below(60) as usize;
        let input: Vec<Input> = random_input(&mut rng, n).into_iter().map(|(_, k, ts)| ("sessions", k, ts)).collect();
        let expected = reference(app, "", &input);
        let other = &apps[(round + 2) % 4];
        let by_other = reference(other, "", &input);
        assert!(by_other == expected, "round {round}: 0.3.0 vs 0.2.0\n{}", differences(&by_other, &expected));
        fired += counts_and_late(&expected).3;
        let mut r = OfflineRunner::new(app.clone()).expect("tasks start");
        for (topic, key, ts) in &input {
            r.append_input(topic, None, record(key, *ts));
        }
        let mut batch_rng = Rng::seeded(rng.next());
        let mut crash_rng = Rng::seeded(rng.next());
        r.pump_with(&mut || batch_size(&mut batch_rng), &mut || {
            let crash = crash_rng.below(6) == 0;
            crashes += usize::from(crash);
            crash
        })
        .unwrap_or_else(|(task, e)| panic!("{task}: {e}"));
        let got = from_lines(&r.outputs(false));
        assert!(got == expected, "round {round}: {input:?}\n{}", differences(&got, &expected));
    }
    eprintln!("200 rounds: {fired} timers fired, {crashes} crashes");
    assert!(fired > 500 && crashes > 50, "timers fire and crashes happen");
}

/// Timers move with their tasks: two instances share an application whose
/// every record sets and cancels a durable timer; one joins mid-stream, the
/// other is killed (SIGKILL) later, and the closed activities are exactly
/// those `weir test` gives, none lost or repeated.
#[test]
fn timers_move_with_their_tasks_when_instances_join_and_die_on_kafka() {
    let kafka = shared();
    let mut rng = Rng::new("timers_move_with_their_tasks_when_instances_join_and_die_on_kafka");
    let dir = tempfile::tempdir().unwrap();
    let name = unique("timers");
    let spec = format!(
        r#"
name: {name}
topics: {{ {name}-sessions: 4, {name}-closed: 4 }}
sources:
  sessions: {{ topic: {name}-sessions, to: [inactivity] }}
processors:
  inactivity:
    component: "{{guests}}/inactivity.wasm"
    stores: [activity]
    timers: true
    outputs: {{ closed: closed }}
stores: {{ activity: {{}} }}
sinks:
  closed: {{ topic: {name}-closed }}
"#
    );
    let input: Vec<Input> = random_input(&mut rng, 900).into_iter().map(|(_, k, ts)| ("sessions", k, ts)).collect();
    let expected = reference(&app(&spec), &format!("{name}-"), &input);
    let path = write_spec(dir.path(), "timers.yaml", &spec);
    let one_worker = [("WEIR_WORKERS", "1")];
    let produce = |records: &[Input]| {
        let jsonl: String = records
            .iter()
            .map(|(_, key, ts)| format!("{{\"key\":\"{key}\",\"value\":{{}},\"timestamp\":{ts}}}\n"))
            .collect();
        kafka.produce(&format!("{name}-sessions"), &jsonl);
    };
    let mut a = kafka_server_with(&dir.path().join("a"), kafka, &one_worker);
    a.deploy(&path);
    produce(&input[..300]);
    let b = kafka_server_with(&dir.path().join("b"), kafka, &one_worker);
    b.deploy(&path);
    wait_tasks(&[&a, &b], &name, "tasks over both instances", |o| o.iter().all(|n| *n > 0));
    produce(&input[300..600]);
    std::thread::sleep(Duration::from_millis(500));
    a.kill();
    wait_tasks(&[&b], &name, "the survivor to own every task", |_| true);
    produce(&input[600..]);
    wait_drained(kafka, &[&b], &name, &[&format!("{name}-sessions")]);
    kafka.wait_decided(&format!("{name}-closed"));
    let got = from_values(&format!("{name}-closed"), &kafka.consume(&format!("{name}-closed")));
    let expected: Outputs = expected.into_iter().filter(|((t, _, _), _)| t.ends_with("-closed")).collect();
    eprintln!("timers on kafka: {} records, {} closed activities", input.len(), counts_and_late(&expected).3);
    assert!(got == expected, "{}", differences(&got, &expected));
}
