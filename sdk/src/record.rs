//! Records as a processor sees them, and records it emits.

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// A record delivered to [`Processor::process`](crate::Processor::process).
///
/// For records from a table, [`value`](Record::value) is the new value (`None`
/// on delete) and [`old_value`](Record::old_value) the value it replaced
/// (`None` on insert): the two halves an adder/subtractor reduction needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub old_value: Option<Vec<u8>>,
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Topic, partition and offset of the input record this one derives from.
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
}

impl Record {
    /// The key bytes, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The key as UTF-8 text; an error for a keyless or non-UTF-8 key.
    pub fn key_str(&self) -> Result<&str> {
        let key = self.key.as_deref().ok_or_else(|| Error::msg("record has no key"))?;
        std::str::from_utf8(key).map_err(|e| Error::msg(format!("record key is not UTF-8: {e}")))
    }

    /// The value bytes, if any (`None` for a tombstone or a table delete).
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// The previous value for a table change.
    pub fn old_value(&self) -> Option<&[u8]> {
        self.old_value.as_deref()
    }

    /// True when the record has no value.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The value parsed as JSON; an error for a tombstone or invalid JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let value = self
            .value
            .as_deref()
            .ok_or_else(|| Error::msg("record has no value (tombstone)"))?;
        serde_json::from_slice(value).map_err(|e| Error::msg(format!("value is not the expected JSON: {e}")))
    }

    /// The new value of a table change parsed as JSON (`None` on delete).
    pub fn new_json<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        parse_optional(self.value.as_deref(), "value")
    }

    /// The old value of a table change parsed as JSON (`None` on insert).
    pub fn old_json<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        parse_optional(self.old_value.as_deref(), "old value")
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

impl Record {
    /// A record with a key and a value, for tests: `Record::new("k1", "v")`.
    pub fn new(key: impl IntoBytes, value: impl IntoBytes) -> Self {
        Record { key: key.into_bytes_opt(), value: value.into_bytes_opt(), ..Record::default() }
    }

    /// A record whose value is `value` as JSON, for tests.
    pub fn from_json<T: serde::Serialize + ?Sized>(key: impl IntoBytes, value: &T) -> Self {
        let value = serde_json::to_vec(value).expect("value serialises to JSON");
        Record { key: key.into_bytes_opt(), value: Some(value), ..Record::default() }
    }

    /// A table change (new and old value as JSON; `None` for delete / insert), for tests.
    pub fn table_change<T: serde::Serialize>(key: impl IntoBytes, new: Option<&T>, old: Option<&T>) -> Self {
        let json = |v: &T| serde_json::to_vec(v).expect("value serialises to JSON");
        Record { key: key.into_bytes_opt(), value: new.map(json), old_value: old.map(json), ..Record::default() }
    }

    /// The same record with another timestamp.
    pub fn at(mut self, timestamp: i64) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The same record as if read from `topic`.
    pub fn on_topic(mut self, topic: &str) -> Self {
        self.topic = topic.to_owned();
        self
    }
}

fn parse_optional<T: DeserializeOwned>(bytes: Option<&[u8]>, what: &str) -> Result<Option<T>> {
    match bytes {
        None => Ok(None),
        Some(b) => serde_json::from_slice(b)
            .map(Some)
            .map_err(|e| Error::msg(format!("{what} is not the expected JSON: {e}"))),
    }
}

/// A record sent to a named output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    pub output: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: i64,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Emitted {
    /// The key as UTF-8 text (lossy), for assertions in tests.
    pub fn key_str(&self) -> Option<String> {
        self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The value parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let value = self.value.as_deref().ok_or_else(|| Error::msg("emitted record has no value"))?;
        Ok(serde_json::from_slice(value)?)
    }
}

/// Anything usable as the key or value of an emitted record: bytes, text, or
/// nothing (`None`: a keyless record, or a tombstone value).
pub trait IntoBytes {
    /// The bytes, or `None`.
    fn into_bytes_opt(self) -> Option<Vec<u8>>;
}

impl IntoBytes for Option<&[u8]> {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        self.map(<[u8]>::to_vec)
    }
}
impl IntoBytes for Option<Vec<u8>> {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        self
    }
}
impl IntoBytes for Option<&str> {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        self.map(|s| s.as_bytes().to_vec())
    }
}
impl IntoBytes for &[u8] {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        Some(self.to_vec())
    }
}
impl IntoBytes for Vec<u8> {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        Some(self)
    }
}
impl IntoBytes for &str {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        Some(self.as_bytes().to_vec())
    }
}
impl IntoBytes for &String {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        Some(self.as_bytes().to_vec())
    }
}
impl IntoBytes for String {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        Some(self.into_bytes())
    }
}
impl IntoBytes for () {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        None
    }
}
impl IntoBytes for Option<String> {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        self.map(String::into_bytes)
    }
}
