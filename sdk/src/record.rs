//! Records as a processor sees them, and records it emits.

use std::fmt;
use std::rc::Rc;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Where a byte string sits in a record's shared buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub offset: u32,
    pub len: u32,
}

/// The bytes a batch of records shares: records are views into it, so a
/// batch crosses into the component as one buffer and is never copied again.
#[derive(Default)]
pub(crate) struct Shared {
    pub data: Vec<u8>,
    pub topics: Vec<String>,
    /// The spec name of the source that read each topic (by topic index;
    /// empty when the host does not say: contract 0.1.0, tests).
    pub sources: Vec<String>,
    pub headers: Vec<(String, Span)>,
}

impl Shared {
    pub(crate) fn bytes(&self, span: Span) -> &[u8] {
        &self.data[span.offset as usize..(span.offset + span.len) as usize]
    }

    fn push(&mut self, bytes: &[u8]) -> Span {
        let span = Span { offset: self.data.len() as u32, len: bytes.len() as u32 };
        self.data.extend_from_slice(bytes);
        span
    }
}

/// A record delivered to [`Processor::process`](crate::Processor::process).
///
/// For records from a table, [`value`](Record::value) is the new value (`None`
/// on delete) and [`old_value`](Record::old_value) the value it replaced
/// (`None` on insert): the two halves an adder/subtractor reduction needs.
#[derive(Clone)]
pub struct Record {
    shared: Rc<Shared>,
    key: Option<Span>,
    value: Option<Span>,
    old_value: Option<Span>,
    timestamp: i64,
    headers: (u32, u32),
    topic: u32,
    partition: u32,
    offset: i64,
}

impl Record {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn view(
        shared: Rc<Shared>,
        key: Option<Span>,
        value: Option<Span>,
        old_value: Option<Span>,
        timestamp: i64,
        headers: (u32, u32),
        topic: u32,
        partition: u32,
        offset: i64,
    ) -> Self {
        Record { shared, key, value, old_value, timestamp, headers, topic, partition, offset }
    }

    /// A record with a key and a value, for tests: `Record::new("k1", "v")`.
    pub fn new(key: impl IntoBytes, value: impl IntoBytes) -> Self {
        Self::build(key.into_bytes_opt(), value.into_bytes_opt(), None)
    }

    /// A record whose value is `value` as JSON, for tests.
    pub fn from_json<T: serde::Serialize + ?Sized>(key: impl IntoBytes, value: &T) -> Self {
        let value = serde_json::to_vec(value).expect("value serialises to JSON");
        Self::build(key.into_bytes_opt(), Some(value), None)
    }

    /// A table change (new and old value as JSON; `None` for delete / insert), for tests.
    pub fn table_change<T: serde::Serialize>(key: impl IntoBytes, new: Option<&T>, old: Option<&T>) -> Self {
        let json = |v: &T| serde_json::to_vec(v).expect("value serialises to JSON");
        Self::build(key.into_bytes_opt(), new.map(json), old.map(json))
    }

    fn build(key: Option<Vec<u8>>, value: Option<Vec<u8>>, old_value: Option<Vec<u8>>) -> Self {
        let mut shared = Shared { topics: vec![String::new()], ..Shared::default() };
        let key = key.map(|b| shared.push(&b));
        let value = value.map(|b| shared.push(&b));
        let old_value = old_value.map(|b| shared.push(&b));
        Record::view(Rc::new(shared), key, value, old_value, 0, (0, 0), 0, 0, 0)
    }

    /// Rebuilds this record into a buffer of its own, then lets `f` change
    /// it (the test helpers below).
    fn rebuild(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            topics: vec![self.topic().to_owned()],
            sources: vec![self.source().unwrap_or_default().to_owned()],
            ..Shared::default()
        };
        let key = self.key().map(|b| shared.push(b));
        let value = self.value().map(|b| shared.push(b));
        let old_value = self.old_value().map(|b| shared.push(b));
        for (name, v) in self.headers() {
            let span = shared.push(v);
            shared.headers.push((name.to_owned(), span));
        }
        f(&mut shared);
        let count = shared.headers.len() as u32;
        Record { shared: Rc::new(shared), key, value, old_value, headers: (0, count), topic: 0, ..self }
    }

    /// The same record with another timestamp.
    pub fn at(mut self, timestamp: i64) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The same record as if read from `topic`.
    pub fn on_topic(self, topic: &str) -> Self {
        self.rebuild(|s| s.topics = vec![topic.to_owned()])
    }

    /// The same record as if read by the spec's source (or table) `source`.
    pub fn from_source(self, source: &str) -> Self {
        self.rebuild(|s| s.sources = vec![source.to_owned()])
    }

    /// The same record with one more header.
    pub fn with_header(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.rebuild(|s| {
            let span = s.push(value.as_ref());
            s.headers.push((name.to_owned(), span));
        })
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn set_position(&mut self, partition: u32, offset: i64) {
        self.partition = partition;
        self.offset = offset;
    }

    /// The key bytes, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.map(|s| self.shared.bytes(s))
    }

    /// The key as UTF-8 text; an error for a keyless or non-UTF-8 key.
    pub fn key_str(&self) -> Result<&str> {
        let key = self.key().ok_or_else(|| Error::msg("record has no key"))?;
        std::str::from_utf8(key).map_err(|e| Error::msg(format!("record key is not UTF-8: {e}")))
    }

    /// The value bytes, if any (`None` for a tombstone or a table delete).
    pub fn value(&self) -> Option<&[u8]> {
        self.value.map(|s| self.shared.bytes(s))
    }

    /// The previous value for a table change.
    pub fn old_value(&self) -> Option<&[u8]> {
        self.old_value.map(|s| self.shared.bytes(s))
    }

    /// True when the record has no value.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Event time, milliseconds since the Unix epoch.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The topic of the input record this one derives from.
    pub fn topic(&self) -> &str {
        self.shared.topics.get(self.topic as usize).map_or("", String::as_str)
    }

    /// The name, in the spec, of the source, table or repartition that read
    /// the input record this one derives from (`None` when the host does not
    /// say: a host of contract 0.1.0). Lets a processor fed by several
    /// sources tell them apart without knowing their topic names.
    pub fn source(&self) -> Option<&str> {
        self.shared.sources.get(self.topic as usize).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// The partition of that input record.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The offset of that input record.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let (first, count) = self.headers;
        self.shared.headers[first as usize..(first + count) as usize]
            .iter()
            .map(|(n, s)| (n.as_str(), self.shared.bytes(*s)))
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The value parsed as JSON; an error for a tombstone or invalid JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let value = self.value().ok_or_else(|| Error::msg("record has no value (tombstone)"))?;
        crate::codec::parse_json(value).map_err(|e| Error::msg(format!("value is not the expected JSON: {e}")))
    }

    /// The new value of a table change parsed as JSON (`None` on delete).
    pub fn new_json<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        parse_optional(self.value(), "value")
    }

    /// The old value of a table change parsed as JSON (`None` on insert).
    pub fn old_json<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        parse_optional(self.old_value(), "old value")
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        f.debug_struct("Record")
            .field("key", &text(self.key()))
            .field("value", &text(self.value()))
            .field("old_value", &text(self.old_value()))
            .field("timestamp", &self.timestamp)
            .field("topic", &self.topic())
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .finish()
    }
}

fn parse_optional<T: DeserializeOwned>(bytes: Option<&[u8]>, what: &str) -> Result<Option<T>> {
    match bytes {
        None => Ok(None),
        Some(b) => crate::codec::parse_json(b)
            .map(Some)
            .map_err(|e| Error::msg(format!("{what} is not the expected JSON: {e}"))),
    }
}

/// A record sent to a named output (what the test harness collects, and
/// what [`Context::emit_record`](crate::Context::emit_record) takes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    pub output: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: i64,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Emitted {
    /// A record for `output` with `value` as JSON, to give its own
    /// timestamp ([`at`](Self::at)) and headers ([`with_header`](Self::with_header))
    /// before [`Context::emit_record`](crate::Context::emit_record).
    /// Without `at`, its timestamp is 0: set it.
    pub fn new_json<T: serde::Serialize + ?Sized>(output: &str, key: impl IntoBytes, value: &T) -> Result<Self> {
        Ok(Emitted {
            output: output.to_owned(),
            key: key.into_bytes_opt(),
            value: Some(serde_json::to_vec(value)?),
            timestamp: 0,
            headers: Vec::new(),
        })
    }

    /// The same record with event time `timestamp` (ms since the epoch).
    pub fn at(mut self, timestamp: i64) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The same record with one more header.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

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
/// nothing (`None` or `()`: a keyless record, or a tombstone value).
pub trait IntoBytes {
    /// The bytes, or `None`.
    fn into_bytes_opt(self) -> Option<Vec<u8>>;
    /// Borrowed bytes, when available without copying.
    fn as_bytes_opt(&self) -> Option<&[u8]>;
}

macro_rules! borrowed_bytes {
    ($($t:ty => |$s:ident| $borrow:expr),* $(,)?) => {$(
        impl IntoBytes for $t {
            fn into_bytes_opt(self) -> Option<Vec<u8>> {
                let $s = &self;
                $borrow.map(<[u8]>::to_vec)
            }
            fn as_bytes_opt(&self) -> Option<&[u8]> {
                let $s = self;
                $borrow
            }
        }
    )*};
}

borrowed_bytes!(
    Option<&[u8]> => |s| *s,
    Option<&str> => |s| s.map(str::as_bytes),
    &[u8] => |s| Some(*s),
    &str => |s| Some(s.as_bytes()),
    &String => |s| Some(s.as_bytes()),
    &Vec<u8> => |s| Some(s.as_slice()),
    () => |_s| None,
);

impl IntoBytes for Vec<u8> {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        Some(self)
    }
    fn as_bytes_opt(&self) -> Option<&[u8]> {
        Some(self)
    }
}
impl IntoBytes for String {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        Some(self.into_bytes())
    }
    fn as_bytes_opt(&self) -> Option<&[u8]> {
        Some(self.as_bytes())
    }
}
impl IntoBytes for Option<Vec<u8>> {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        self
    }
    fn as_bytes_opt(&self) -> Option<&[u8]> {
        self.as_deref()
    }
}
impl IntoBytes for Option<String> {
    fn into_bytes_opt(self) -> Option<Vec<u8>> {
        self.map(String::into_bytes)
    }
    fn as_bytes_opt(&self) -> Option<&[u8]> {
        self.as_deref().map(str::as_bytes)
    }
}
