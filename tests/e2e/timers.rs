//! Durable per-key timers (contract 0.2.0) as a user meets them: the spec
//! setting they need, wall-clock timers, and a failing `on_timer` under the
//! error policy. That stream-time timers fire at the same point however the
//! input is batched and crashed, on every backend, is in `time.rs`.

use weir::jsonl::InputLine;
use weir::record::Record;

use crate::common::{header, on_topic, runner, values};

fn spec(extra: &str) -> String {
    format!(
        r#"
name: sessions
topics: {{ events: 1, closed: 1 }}
sources:
  events: {{ topic: events, to: [inactivity] }}
processors:
  inactivity:
    component: "{{guests}}/inactivity.wasm"
    stores: [activity]
    outputs: {{ closed: closed }}
{extra}
stores: {{ activity: {{}} }}
sinks:
  closed: {{ topic: closed }}
"#
    )
}

fn event(key: &str, ts: i64) -> InputLine {
    let record = Record { key: Some(key.into()), value: Some(b"{}".to_vec()), timestamp: ts, headers: vec![] };
    InputLine::Record { topic: "events".into(), partition: None, record }
}

#[test]
fn timers_without_timers_true_in_the_spec_are_a_contract_violation_that_names_the_setting() {
    let mut r = runner(&spec(""));
    r.feed(event("a", 1_000)).unwrap();
    let out = r.outputs(false);
    let dlq = on_topic(&out, "sessions-dlq");
    assert_eq!(dlq.len(), 1, "{out:?}");
    assert_eq!(header(dlq[0], "weir.error.kind").as_deref(), Some("contract-violation"));
    let message = header(dlq[0], "weir.error").unwrap_or_default();
    assert!(message.contains("timers: true"), "{message}");
}

#[test]
fn the_spec_gives_a_processor_with_timers_a_changelogged_store_of_its_own() {
    let yaml = spec("    timers: true").replace("{guests}", "x");
    let topology = weir::topology::Topology::compile(weir::topology::parse_spec(&yaml).unwrap()).unwrap();
    let store = topology.stores.iter().find(|s| s.name == "inactivity.timers").expect("the timers store");
    assert_eq!(store.changelog.as_deref(), Some("sessions-inactivity.timers-changelog"));
    // A user store of that name clashes with it, with the field path.
    let clash =
        spec("    timers: true").replace("stores: { activity: {} }", "stores: { activity: {}, inactivity.timers: {} }");
    let err = weir::topology::Topology::compile(weir::topology::parse_spec(&clash).unwrap()).unwrap_err();
    assert!(err.to_string().contains("processors.inactivity.timers"), "{err}");
}

#[test]
fn wall_clock_timers_fire_between_records_once_the_wall_clock_reaches_them_in_time_then_key_order() {
    let mut r = runner(&spec("    timers: true\n    config: { domain: wall-clock, gap_ms: 20000 }"));
    r.feed(InputLine::WallClock(1_000)).unwrap();
    r.feed(event("b", 5)).unwrap();
    r.feed(event("a", 6)).unwrap();
    r.feed(InputLine::WallClock(5_000)).unwrap();
    r.feed(event("c", 7)).unwrap();
    r.feed(InputLine::WallClock(20_999)).unwrap();
    assert!(values(&r.outputs(false), "closed").is_empty(), "a and b are due at 21000");
    r.feed(InputLine::WallClock(21_000)).unwrap();
    let closed = values(&r.outputs(false), "closed");
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(
        closed[0].contains("\"key\":\"a\"") && closed[1].contains("\"key\":\"b\""),
        "same time: key order: {closed:?}"
    );
    r.feed(InputLine::WallClock(30_000)).unwrap();
    let lines = r.outputs(false);
    let closed = on_topic(&lines, "closed");
    assert_eq!(closed.len(), 3, "c, set at 5000, is due at 25000: {closed:?}");
    assert_eq!(closed[2].timestamp, 25_000, "emitted at the timer's time");
}

#[test]
fn a_failing_on_timer_meets_the_error_policy_and_its_timer_does_not_fire_again() {
    let mut r = runner(&spec("    timers: true\n    on_error: skip\n    config: { fail_key: bad }"));
    for (key, ts) in [("bad", 1_000), ("good", 1_000), ("x", 30_000), ("x", 60_000), ("x", 90_000)] {
        r.feed(event(key, ts)).unwrap();
    }
    // bad and good fire after x@30000 (bad's fails); x@60000 comes past x's
    // timer at 50000, before it fired, and closes the activity itself (the
    // guest's rule), as x@90000 does.
    let closed = values(&r.outputs(false), "closed");
    assert_eq!(closed.len(), 3, "good, then x twice, not bad: {closed:?}");
    assert!(closed[0].contains("\"good\"") && closed[1].contains("\"x\"") && closed[2].contains("\"x\""), "{closed:?}");
    let failures: u64 = r.tasks().iter().map(|t| t.metrics().failures.values().sum::<u64>()).sum();
    assert_eq!(failures, 1, "bad's timer failed once and was gone (skip)");
    let fired: u64 = r.tasks().iter().map(|t| t.metrics().timers_fired).sum();
    assert_eq!(fired, 2, "bad and good; x's were cancelled by the records that closed them");
}

/// The host's purge of window stores, seen on its own: with a retention
/// shorter than the windows live (the SDK's close timers would delete them
/// later), entries older than the retention are gone after each commit.
#[test]
fn a_window_store_keeps_no_window_older_than_its_retention() {
    let yaml = r#"
name: purge
topics: { views: 1, counts: 1, late: 1 }
sources:
  views: { topic: views, to: [count] }
processors:
  count:
    component: "{guests}/page_views.wasm"
    stores: [views]
    timers: true
    outputs: { counts: counts, late: late }
stores:
  views: { retention: 2m }
sinks:
  counts: { topic: counts }
  late: { topic: late }
"#;
    let mut r = runner(yaml);
    let mut kept = 0;
    for minute in 0..40 {
        let record = Record {
            key: Some(b"/home".to_vec()),
            value: Some(b"{}".to_vec()),
            timestamp: minute * 60_000,
            headers: vec![],
        };
        r.feed(InputLine::Record { topic: "views".into(), partition: None, record }).unwrap();
        let task = &r.tasks()[0];
        let oldest_kept = task.stream_time() - 2 * 60_000;
        let entries = task.store_entries("views").unwrap();
        kept += entries.len();
        for (k, _) in entries {
            let start = i64::from_be_bytes(k[..8].try_into().unwrap()) ^ i64::MIN;
            assert!(start > oldest_kept, "minute {minute}: window at {start} is past the retention");
        }
    }
    assert!(kept > 0, "windows younger than the retention are kept");
}
