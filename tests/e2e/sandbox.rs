//! The sandbox holds: misbehaving guests are stopped, their records meet the
//! error policy, nothing of a failed call is applied, other tasks are not
//! affected; bad components are refused with a clear error.

use weir::task::TaskError;
use weir::wasm::LoadError;

use crate::common::{engine, header, on_topic, rec, runner, values};

/// One misbehave processor on a 2-partition topic; `{policy}` and `{limits}` filled in.
fn misbehave_spec(policy: &str, limits: &str) -> String {
    format!(
        r#"
name: sandbox
topics: {{ in: 2, out: 2 }}
sources:
  in: {{ topic: in, to: [m] }}
processors:
  m:
    component: "{{guests}}/misbehave.wasm"
    stores: [scratch]
    outputs: {{ out: out }}
    on_error: {policy}
    limits: {limits}
stores: {{ scratch: {{}} }}
sinks:
  out: {{ topic: out }}
"#
    )
}

/// Appends values to partition 0 of `in` without processing, then processes
/// them together so they reach the guest as one batch.
fn one_batch(r: &mut weir::testdriver::OfflineRunner, values: &[&str]) -> Result<(), (String, TaskError)> {
    for (i, v) in values.iter().enumerate() {
        r.append_input("in", Some(0), rec(&format!("k{i}"), v));
    }
    r.pump()
}

#[test]
fn an_infinite_loop_is_stopped_at_the_deadline_and_dead_lettered() {
    let mut r = runner(&misbehave_spec("dead-letter", "{ call_timeout: 100ms }"));
    let started = std::time::Instant::now();
    one_batch(&mut r, &["a", "loop", "b"]).unwrap();
    let out = r.outputs(false);
    assert_eq!(values(&out, "out"), ["a", "b"], "the records around the loop are processed once each");
    let dlq = on_topic(&out, "sandbox-dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(dlq[0], "weir.error.kind").as_deref(), Some("timeout"));
    assert!(header(dlq[0], "weir.error").unwrap().contains("time limit"));
    assert_eq!(header(dlq[0], "weir.source.offset").as_deref(), Some("1"));
    // Stopped, not hung: (batch call + replay of the looping record) deadlines, with slack.
    assert!(started.elapsed().as_secs() < 30);
}

#[test]
fn unbounded_allocation_hits_the_memory_cap_and_is_dead_lettered() {
    let mut r = runner(&misbehave_spec("dead-letter", "{ memory: 16MiB }"));
    one_batch(&mut r, &["alloc", "after"]).unwrap();
    let out = r.outputs(false);
    assert_eq!(values(&out, "out"), ["after"]);
    let dlq = on_topic(&out, "sandbox-dlq");
    assert_eq!(header(dlq[0], "weir.error.kind").as_deref(), Some("memory-limit"), "{:?}", dlq[0]);
    assert!(header(dlq[0], "weir.error").unwrap().contains("limit is 16777216"));
}

#[test]
fn a_panic_affects_only_its_record_and_task() {
    let mut r = runner(&misbehave_spec("dead-letter", "{}"));
    // Partition 1 gets a healthy stream while partition 0's guest panics.
    r.append_input("in", Some(1), rec("x", "one"));
    one_batch(&mut r, &["ok1", "ok2", "panic", "ok3"]).unwrap();
    r.append_input("in", Some(1), rec("x", "two"));
    r.append_input("in", Some(0), rec("y", "after-panic"));
    r.pump().unwrap();
    let out = r.outputs(false);
    let mut got = values(&out, "out");
    got.sort();
    // Each healthy record exactly once: the emits of the failed batch call were dropped.
    assert_eq!(got, ["after-panic", "ok1", "ok2", "ok3", "one", "two"]);
    let dlq = on_topic(&out, "sandbox-dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(dlq[0], "weir.error.kind").as_deref(), Some("trap"));
    let error = header(dlq[0], "weir.error").unwrap();
    assert!(error.contains("misbehave: panic requested by record"), "the guest's panic message is reported: {error}");
    assert_eq!(header(dlq[0], "weir.task").as_deref(), Some("sandbox/0_0"));
}

#[test]
fn emitting_to_an_undeclared_output_is_refused_by_the_host() {
    let mut r = runner(&misbehave_spec("dead-letter", "{}"));
    one_batch(&mut r, &["undeclared", "fine"]).unwrap();
    let out = r.outputs(false);
    assert_eq!(values(&out, "out"), ["fine"]);
    let dlq = on_topic(&out, "sandbox-dlq");
    assert_eq!(header(dlq[0], "weir.error.kind").as_deref(), Some("contract-violation"));
    assert!(
        header(dlq[0], "weir.error").unwrap().contains("output #99 is not declared for processor `m` (declared: out)")
    );
}

/// Contract 0.3.0's packed lists are checked whole: an entry cut short, a
/// span outside the data or a store list cut inside an item breaks the
/// contract, emits and writes nothing, and fails only its record.
#[test]
fn malformed_packed_lists_from_a_guest_are_contract_violations() {
    let mut r = runner(&misbehave_spec("dead-letter", "{}"));
    one_batch(&mut r, &["fine", "short-entry", "span-outside", "truncated-write", "after"]).unwrap();
    let out = r.outputs(false);
    assert_eq!(values(&out, "out"), ["fine", "after"]);
    let dlq = on_topic(&out, "sandbox-dlq");
    let errors: Vec<(String, String)> =
        dlq.iter().map(|d| (header(d, "weir.error.kind").unwrap(), header(d, "weir.error").unwrap())).collect();
    let expected = [
        "emit: 30 bytes of output records: not a multiple of 40",
        "emit: span 0+5 is outside its buffer of 2 bytes",
        "write-many: a store list item of 10 bytes has only 3 left",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:?}");
    for ((kind, error), says) in errors.iter().zip(expected) {
        assert_eq!(kind, "contract-violation", "{error}");
        assert!(error.contains(says), "{error} should say {says}");
    }
}

#[test]
fn the_sdk_refuses_undeclared_outputs_and_the_host_counts_them_as_contract_violations() {
    let mut r = runner(&misbehave_spec("dead-letter", "{}"));
    one_batch(&mut r, &["fine", "emit-nowhere"]).unwrap();
    let out = r.outputs(false);
    assert_eq!(values(&out, "out"), ["fine"]);
    let dlq = on_topic(&out, "sandbox-dlq");
    assert_eq!(header(dlq[0], "weir.error.kind").as_deref(), Some("contract-violation"));
    assert!(header(dlq[0], "weir.error").unwrap().contains("output `nowhere` is not declared for processor `m`"));
}

#[test]
fn a_guest_error_with_policy_skip_drops_only_that_record() {
    let mut r = runner(&misbehave_spec("skip", "{}"));
    one_batch(&mut r, &["a", "fail", "b"]).unwrap();
    let out = r.outputs(false);
    assert_eq!(values(&out, "out"), ["a", "b"]);
    assert!(on_topic(&out, "sandbox-dlq").is_empty());
    assert_eq!(r.tasks()[0].metrics().skipped, 1);
}

#[test]
fn policy_fail_stops_the_task_and_commits_nothing_of_its_transaction() {
    let mut r = runner(&misbehave_spec("fail", "{}"));
    let err = one_batch(&mut r, &["a", "fail", "b"]).unwrap_err();
    let (task, error) = err;
    assert_eq!(task, "sandbox/0_0");
    match &error {
        TaskError::Failed(f) => {
            assert_eq!((f.processor.as_str(), f.offset, f.kind), ("m", 1, "guest-error"));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(error.to_string().contains("error policy is `fail`"));
    // "a" was processed in the aborted transaction: it must not be visible.
    assert!(r.outputs(false).is_empty());
    assert_eq!(r.backend.position(&(std::sync::Arc::from("in"), 0)), 0, "input offsets stay uncommitted");
}

#[test]
fn guest_stdout_and_stderr_go_to_the_host_log_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let spec = misbehave_spec("dead-letter", "{}").replace("{guests}", &weir_tests::guests_dir().display().to_string());
    std::fs::write(dir.path().join("app.yaml"), spec).unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"topic\": \"in\", \"key\": \"k\", \"value\": \"print\", \"timestamp\": 1}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["test", "--spec"])
        .arg(dir.path().join("app.yaml"))
        .arg("--input")
        .arg(dir.path().join("in.jsonl"))
        .env("WEIR_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for stream in ["stdout", "stderr"] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("misbehave says hello on {stream}")))
            .unwrap_or_else(|| panic!("guest {stream} not in the host log:\n{stderr}"));
        assert!(line.contains("processor=m") && line.contains("task=sandbox/0_") && line.contains(stream), "{line}");
    }
    // Guest output never mixes into the records on stdout.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("says hello"));
}

#[test]
fn a_failing_init_stops_the_task_with_the_guests_message() {
    let spec = misbehave_spec("dead-letter", "{}").replace("    outputs:", "    config: { init: fail }\n    outputs:");
    let yaml = spec.replace("{guests}", &weir_tests::guests_dir().display().to_string());
    let topology = weir::topology::Topology::compile(weir::topology::parse_spec(&yaml).unwrap()).unwrap();
    let engine = engine();
    let components =
        weir::testdriver::load_components(&topology, std::path::Path::new("."), &engine, &Default::default()).unwrap();
    let app =
        std::sync::Arc::new(weir::task::AppRuntime { topology: std::sync::Arc::new(topology), engine, components });
    let err = weir::testdriver::OfflineRunner::new(app).unwrap_err();
    assert!(err.to_string().contains("init refused: configured to fail"), "{err}");
}

#[test]
fn a_corrupt_file_is_not_wasm() {
    let err = engine().load(b"definitely not a component").unwrap_err();
    assert!(matches!(err, LoadError::NotWasm), "{err}");
    assert!(err.to_string().contains("not a WebAssembly file"));
}

#[test]
fn a_truncated_component_is_invalid() {
    let bytes = std::fs::read(weir_tests::guest("key-count")).unwrap();
    let err = engine().load(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
}

#[test]
fn a_core_module_is_refused_with_how_to_build_a_component() {
    let module = wat::parse_str("(module (func (export \"process\")))").unwrap();
    let err = engine().load(&module).unwrap_err();
    assert!(matches!(err, LoadError::CoreModule), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"));
}

#[test]
fn a_component_of_another_world_is_refused_naming_what_is_missing() {
    let err = engine().load_file(&weir_tests::guest("wrong-world")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{text}");
    assert!(text.contains("missing exports init, process, punctuate"), "{text}");
    assert!(text.contains("it exports: greet"), "{text}");
}

#[test]
fn the_examples_load_and_are_cached_by_content() {
    let a = engine().load_file(&weir_tests::guest("reservation")).unwrap();
    let b = engine().load_file(&weir_tests::guest("reservation")).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(a.sha256().len(), 64);
    for export in ["init", "process", "punctuate"] {
        assert!(a.exports().iter().any(|e| e == export));
    }
}

/// Punctuation runs inside the same machinery as records: stream time fires
/// when record timestamps pass each interval (once per crossing, as Kafka
/// Streams does), wall-clock time when the (simulated) clock does.
#[test]
fn punctuation_fires_on_stream_time_and_wall_clock() {
    let spec = misbehave_spec("dead-letter", "{}")
        .replace("    outputs:", "    config: { stream_every: 1000, wall_every: 500 }\n    outputs:");
    let mut r = runner(&spec);
    let at = |key: &str, ts: i64| weir::record::Record { timestamp: ts, ..rec(key, "x") };
    use weir::jsonl::InputLine::{Record as Line, WallClock};
    for line in [
        Line { topic: "in".into(), partition: Some(0), record: at("a", 100) },
        Line { topic: "in".into(), partition: Some(0), record: at("a", 900) },
        Line { topic: "in".into(), partition: Some(0), record: at("a", 1100) },
        Line { topic: "in".into(), partition: Some(0), record: at("a", 3500) },
        WallClock(400),
        WallClock(600),
        WallClock(2000),
    ] {
        r.feed(line).unwrap();
    }
    let ticks: Vec<String> =
        values(&r.outputs(false), "out").into_iter().filter(|v| v.contains("punctuation")).collect();
    // Partition 0's task: stream time first seen at 100 → due at 1100 (fires
    // at 1100), then 2100 (stream time jumps to 3500: fires once, at 3500).
    // Wall clock: first due at 0 + 500 → fires at 600, then at 2000 (once).
    let task0: Vec<&String> = ticks.iter().filter(|t| t.contains("stream-time")).collect();
    assert_eq!(task0, [r#"{"punctuation":"stream-time","at":1100}"#, r#"{"punctuation":"stream-time","at":3500}"#]);
    let wall: Vec<&String> = ticks.iter().filter(|t| t.contains("wall-clock")).collect();
    // Both tasks (partitions 0 and 1) tick on the wall clock.
    assert_eq!(wall.len(), 4, "{wall:?}");
    assert!(wall.iter().all(|w| w.ends_with("\"at\":600}") || w.ends_with("\"at\":2000}")), "{wall:?}");
}

/// `weir test` as a CLI: exit code and message for a record a processor
/// fails on by breaking its contract, and for a line without a timestamp.
#[test]
fn weir_test_fails_on_contract_violations_and_on_lines_without_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let spec = misbehave_spec("dead-letter", "{}").replace("{guests}", &weir_tests::guests_dir().display().to_string());
    std::fs::write(dir.path().join("app.yaml"), spec).unwrap();
    let weir_test = |input: &str, extra: &[&str]| {
        std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["test", "--spec"])
            .arg(dir.path().join("app.yaml"))
            .arg("--input")
            .arg(dir.path().join("in.jsonl"))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let line = |value: &str| format!("{{\"topic\":\"in\",\"key\":\"k\",\"value\":\"{value}\",\"timestamp\":5}}\n");

    let (code, stdout, _) = weir_test(&line("fine"), &[]);
    assert_eq!(code, Some(0), "{stdout}");
    for (value, says) in [
        ("emit-nowhere", "output `nowhere` is not declared for processor `m`"),
        ("undeclared", "is not declared for processor `m`"),
        ("ungranted", "store `secret` is not granted to processor `m`"),
    ] {
        let (code, stdout, stderr) = weir_test(&format!("{}{}", line("fine"), line(value)), &[]);
        assert_eq!(code, Some(1), "{value}: {stderr}");
        assert!(stderr.contains("1 record(s) failed because a processor broke its contract"), "{stderr}");
        assert!(stderr.contains("processor `m` on in/") && stderr.contains(says), "{value}: {stderr}");
        // The output is still printed, the dead letter included.
        assert!(stdout.contains("\"fine\"") && stdout.contains("contract-violation"), "{stdout}");
    }

    let no_time = "{\"topic\":\"in\",\"key\":\"k\",\"value\":\"fine\"}\n";
    let (code, stdout, stderr) = weir_test(&format!("{}{no_time}", line("fine")), &[]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("line 2") && stderr.contains("no \"timestamp\"") && stderr.contains("--default-timestamp"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "nothing runs: {stdout}");
    let (code, stdout, stderr) = weir_test(no_time, &["--default-timestamp", "42"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"timestamp\":42"), "{stdout}");
}
