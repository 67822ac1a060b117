//! The JSONL record format shared by `weir test`, `weir produce` and
//! `weir consume`.
//!
//! Input line: `{"topic": T, "key": K, "value": V, "timestamp": MS,
//! "headers": {..}, "partition": P}`; only `topic` is required. Keys and
//! values: a JSON string becomes its UTF-8 text as bytes (`"c1"` → `c1`);
//! `{"b64": "..."}` becomes the decoded bytes; `null` or absent means none (a
//! tombstone for a value); any other JSON (object, array, number, bool)
//! becomes its JSON text. Without `partition`, the partition is Kafka's
//! murmur2 partition of the key (keyless records go to partition 0).
//!
//! A control line `{"wall_clock": MS}` (only in `weir test`) sets the
//! simulated wall clock, firing wall-clock punctuations that are due.
//!
//! Output line: `{"topic","partition","key","value","timestamp","headers"}`:
//! keys and values as JSON when the bytes are a JSON document, else as a
//! string when they are UTF-8, else as `{"b64": "..."}`; headers as a list of
//! `[name, value]` pairs, each value as a string when it is UTF-8 (a header
//! `"1"` stays the text `"1"`: headers are text, not JSON), else as
//! `{"b64": "..."}`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::{Headers, Record};

/// One parsed input line.
#[derive(Debug, Clone, PartialEq)]
pub enum InputLine {
    Record { topic: String, partition: Option<u32>, record: Record },
    WallClock(i64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    topic: Option<String>,
    #[serde(default)]
    key: Option<Value>,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    wall_clock: Option<i64>,
}

/// Parses one input line (without its number: callers add it to errors).
/// A record without `"timestamp"` gets timestamp 0 (deterministic for `weir test`).
pub fn parse_input_line(line: &str) -> Result<InputLine, String> {
    parse_input_line_at(line, 0)
}

/// Like [`parse_input_line`], giving records without `"timestamp"` the
/// timestamp `default_timestamp` (the produce API uses the current time, as
/// a Kafka producer does).
pub fn parse_input_line_at(line: &str, default_timestamp: i64) -> Result<InputLine, String> {
    parse_line(line, Some(default_timestamp))
}

/// `weir test`'s input: like [`parse_input_line_at`], but without a default
/// a record line without `"timestamp"` is an error (silently processing it
/// at time 0 hides a mistake that changes windows and joins).
pub fn parse_test_line(line: &str, default_timestamp: Option<i64>) -> Result<InputLine, String> {
    parse_line(line, default_timestamp)
}

fn parse_line(line: &str, default_timestamp: Option<i64>) -> Result<InputLine, String> {
    let raw: RawLine = serde_json::from_str(line).map_err(|e| format!("not a record line: {e}"))?;
    if let Some(ms) = raw.wall_clock {
        if raw.topic.is_some() || raw.key.is_some() || raw.value.is_some() {
            return Err("a wall_clock line carries nothing else".into());
        }
        return Ok(InputLine::WallClock(ms));
    }
    let topic = raw.topic.ok_or("missing \"topic\"")?;
    if topic.is_empty() {
        return Err("\"topic\" is empty".into());
    }
    let headers = match raw.headers {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| Ok((k, to_bytes(Some(v), "header")?.unwrap_or_default())))
            .collect::<Result<Headers, String>>()?,
        Some(Value::Array(pairs)) => pairs
            .into_iter()
            .map(|p| match p {
                Value::Array(mut nv) if nv.len() == 2 => {
                    let v = nv.pop().expect("two");
                    let Value::String(n) = nv.pop().expect("two") else {
                        return Err("header names are strings".to_string());
                    };
                    Ok((n, to_bytes(Some(v), "header")?.unwrap_or_default()))
                }
                _ => Err("headers as a list are [name, value] pairs".to_string()),
            })
            .collect::<Result<Headers, String>>()?,
        Some(_) => return Err("\"headers\" is an object or a list of [name, value] pairs".into()),
    };
    Ok(InputLine::Record {
        topic,
        partition: raw.partition,
        record: Record {
            key: to_bytes(raw.key, "key")?,
            value: to_bytes(raw.value, "value")?,
            timestamp: match raw.timestamp.or(default_timestamp) {
                Some(t) => t,
                None => {
                    return Err("no \"timestamp\": give each record its event time in milliseconds \
                                since the epoch, or run `weir test --default-timestamp MS`"
                        .into());
                }
            },
            headers,
        },
    })
}

fn to_bytes(v: Option<Value>, what: &str) -> Result<Option<Vec<u8>>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.into_bytes())),
        Some(Value::Object(map)) if map.len() == 1 && map.contains_key("b64") => match &map["b64"] {
            Value::String(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Some)
                .map_err(|e| format!("{what}: invalid base64: {e}")),
            _ => Err(format!("{what}: \"b64\" must be a string")),
        },
        Some(other) => Ok(Some(other.to_string().into_bytes())),
    }
}

/// Renders bytes for output: JSON if they are JSON, else text, else base64.
pub fn render_bytes(bytes: Option<&[u8]>) -> Value {
    let Some(bytes) = bytes else {
        return Value::Null;
    };
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return v;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => {
            serde_json::json!({ "b64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    }
}

/// A header value: its text when UTF-8, else `{"b64": ...}`.
fn render_header(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => serde_json::json!({ "b64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

/// One output line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputLine {
    pub topic: String,
    pub partition: u32,
    pub key: Value,
    pub value: Value,
    pub timestamp: i64,
    pub headers: Vec<(String, Value)>,
}

impl OutputLine {
    pub fn new(topic: &str, partition: u32, record: &Record) -> Self {
        OutputLine {
            topic: topic.to_owned(),
            partition,
            key: render_bytes(record.key.as_deref()),
            value: render_bytes(record.value.as_deref()),
            timestamp: record.timestamp,
            headers: record.headers.iter().map(|(n, v)| (n.clone(), render_header(v))).collect(),
        }
    }

    /// The line as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("output lines serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_raw_bytes_and_other_json_is_its_text() {
        let line = r#"{"topic":"t","key":"c1","value":{"qty":2},"timestamp":5}"#;
        let InputLine::Record { topic, partition, record } = parse_input_line(line).unwrap() else { panic!() };
        assert_eq!((topic.as_str(), partition), ("t", None));
        assert_eq!(record.key.as_deref(), Some(&b"c1"[..]));
        assert_eq!(record.value.as_deref(), Some(&br#"{"qty":2}"#[..]));
        assert_eq!(record.timestamp, 5);
    }

    #[test]
    fn null_value_is_a_tombstone_and_b64_is_decoded() {
        let InputLine::Record { record, .. } =
            parse_input_line(r#"{"topic":"t","key":{"b64":"/wA="},"value":null}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(record.key, Some(vec![0xff, 0]));
        assert_eq!(record.value, None);
    }

    #[test]
    fn header_values_print_as_text_not_as_json() {
        let headers = vec![
            ("n".to_owned(), b"1".to_vec()),
            ("j".to_owned(), br#"{"a":1}"#.to_vec()),
            ("b".to_owned(), vec![0xff]),
        ];
        let r = Record { key: None, value: None, timestamp: 0, headers };
        let line = OutputLine::new("t", 0, &r).to_json();
        assert!(line.contains(r#"["n","1"]"#) && line.contains(r#"["j","{\"a\":1}"]"#), "{line}");
        assert!(line.contains(r#"["b",{"b64":"/w=="}]"#), "{line}");
    }

    #[test]
    fn malformed_lines_say_why() {
        assert!(parse_input_line("{").unwrap_err().contains("not a record line"));
        assert!(parse_input_line(r#"{"key":"k"}"#).unwrap_err().contains("missing \"topic\""));
        assert!(parse_input_line(r#"{"topic":"t","colour":"red"}"#).unwrap_err().contains("unknown field"));
        assert_eq!(parse_input_line(r#"{"wall_clock": 10}"#).unwrap(), InputLine::WallClock(10));
    }

    #[test]
    fn rendering_prefers_json_then_text_then_base64() {
        assert_eq!(render_bytes(Some(br#"{"a":1}"#)), serde_json::json!({"a": 1}));
        assert_eq!(render_bytes(Some(b"c1")), serde_json::json!("c1"));
        assert_eq!(render_bytes(Some(&[0xff, 0x00])), serde_json::json!({"b64": "/wA="}));
        assert_eq!(render_bytes(None), Value::Null);
    }

    #[test]
    fn output_lines_have_a_fixed_field_order() {
        let r = Record { key: Some(b"k".to_vec()), value: Some(b"1".to_vec()), timestamp: 3, headers: vec![] };
        assert_eq!(
            OutputLine::new("out", 2, &r).to_json(),
            r#"{"topic":"out","partition":2,"key":"k","value":1,"timestamp":3,"headers":[]}"#
        );
    }
}

/// Property tests of the record parser (bounded; failures are kept by
/// proptest in `proptest-regressions/` and replayed first).
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn any_line_is_parsed_or_refused_without_panicking(line in any::<String>()) {
            let _ = parse_input_line(&line);
        }

        #[test]
        fn json_like_lines_are_parsed_or_refused_without_panicking(
            line in "\\{(\"(topic|key|value|timestamp|headers|partition|wall_clock|b64)\": ?([0-9-]{1,20}|\"[a-z=/+]{0,8}\"|null|\\[|\\]|\\{|\\}|,| ){0,6}){0,6}\\}?"
        ) {
            let _ = parse_input_line(&line);
        }

        #[test]
        fn bytes_survive_base64_and_text_survives_as_text(
            key in prop::collection::vec(any::<u8>(), 0..64),
            value in any::<String>(),
            timestamp in any::<i64>(),
            partition in prop::option::of(any::<u32>()),
        ) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
            let mut line = serde_json::json!({ "topic": "t", "key": { "b64": b64 }, "value": value, "timestamp": timestamp });
            if let Some(p) = partition {
                line["partition"] = p.into();
            }
            let InputLine::Record { topic, partition: parsed, record } = parse_input_line(&line.to_string()).unwrap() else {
                panic!("a record line");
            };
            prop_assert_eq!(topic, "t");
            prop_assert_eq!(parsed, partition);
            prop_assert_eq!(record.key, Some(key));
            prop_assert_eq!(record.value, Some(value.into_bytes()));
            prop_assert_eq!(record.timestamp, timestamp);
        }
    }
}
