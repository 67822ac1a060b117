//! The [`Context`] a processor works through: stores, emits, time, logging.

use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, Json};
use crate::record::{Emitted, IntoBytes, Record, Span};
use crate::store::{SharedRawStore, Store};
use crate::{Error, Result};

/// What drives a punctuation (see [`Context::schedule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Punctuation {
    /// The task's stream time (largest record timestamp seen): deterministic.
    StreamTime,
    /// The host's wall clock: fires even when no records arrive.
    WallClock,
}

/// The clock a timer follows (see [`Context::set_timer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeDomain {
    /// Stream time: fires when the task's stream time reaches the timer's
    /// time; deterministic and replayable.
    StreamTime,
    /// The host's wall clock.
    WallClock,
}

/// A due timer, passed to [`Processor::on_timer`](crate::Processor::on_timer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    pub domain: TimeDomain,
    /// The key it was set for.
    pub key: Vec<u8>,
    /// The time it was set for (ms since the epoch); also the default
    /// timestamp of what `on_timer` emits.
    pub timestamp: i64,
}

impl Timer {
    /// The key as UTF-8 text.
    pub fn key_str(&self) -> Result<&str> {
        std::str::from_utf8(&self.key).map_err(|e| Error::msg(format!("timer key is not UTF-8: {e}")))
    }
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The side of [`Context`] that differs between a component (calls into the
/// weir host) and the native test harness (plain memory).
pub(crate) trait HostApi {
    fn open_store(&mut self, name: &str) -> std::result::Result<SharedRawStore, String>;
    fn task_id(&self) -> String;
    fn processor_name(&self) -> String;
    fn partition(&self) -> u32;
    fn stream_time(&self) -> i64;
    fn wall_clock_time(&self) -> i64;
    fn schedule(&mut self, kind: Punctuation, interval_ms: u64) -> Result<()>;
    /// Sets (`set`) or cancels a timer; `input_index` is the index in the
    /// batch of the record being processed.
    fn timer(&mut self, set: bool, domain: TimeDomain, key: &[u8], at: i64, input_index: u32) -> Result<()>;
    fn log(&mut self, level: LogLevel, message: &str);
    /// The processor tried to emit to an output it does not declare: the
    /// host is told, so that the call fails as a contract violation (not as
    /// an error of the record).
    fn undeclared_output(&mut self, _output: &str) {}
}

/// One emitted record inside an [`OutputBuffer`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutputEntry {
    pub output: u32,
    pub key: Option<Span>,
    pub value: Option<Span>,
    pub timestamp: i64,
    pub headers: (u32, u32),
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub input_index: u32,
}

/// Records emitted during one call, their bytes in one buffer: inside a
/// component the whole buffer goes to the host in a single call.
#[derive(Default)]
pub(crate) struct OutputBuffer {
    pub data: Vec<u8>,
    pub headers: Vec<(String, Span)>,
    pub records: Vec<OutputEntry>,
}

impl OutputBuffer {
    fn push(&mut self, bytes: &[u8]) -> Span {
        let span = Span { offset: self.data.len() as u32, len: bytes.len() as u32 };
        self.data.extend_from_slice(bytes);
        span
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn bytes(&self, span: Span) -> &[u8] {
        &self.data[span.offset as usize..(span.offset + span.len) as usize]
    }

    /// Sizes to roll back to.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn mark(&self) -> (usize, usize, usize) {
        (self.data.len(), self.headers.len(), self.records.len())
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn truncate(&mut self, (data, headers, records): (usize, usize, usize)) {
        self.data.truncate(data);
        self.headers.truncate(headers);
        self.records.truncate(records);
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.headers.clear();
        self.records.clear();
    }
}

/// Everything a processor can do besides computing: read and write its
/// stores, emit records to its named outputs, schedule punctuations, ask about
/// time and log.
pub struct Context {
    host: Box<dyn HostApi>,
    /// Stores opened so far, so the end of a call can flush or roll them back.
    stores: Vec<(Rc<str>, SharedRawStore)>,
    /// Outputs declared in the spec, by index.
    outputs: Vec<String>,
    /// The harness without declared outputs accepts any name.
    any_output: bool,
    /// Timestamp given to emitted records by default.
    current_timestamp: i64,
    /// Index in the current batch of the record being processed.
    current_index: u32,
    /// The stream time of the record being processed, when the host said
    /// (contract 0.2.0); otherwise [`Context::stream_time`] asks the host.
    current_stream_time: Option<i64>,
    out: OutputBuffer,
}

impl Context {
    /// `outputs: None` accepts any output name (the harness, when undeclared).
    pub(crate) fn new(host: Box<dyn HostApi>, outputs: Option<Vec<String>>) -> Self {
        Context {
            host,
            stores: Vec::new(),
            any_output: outputs.is_none(),
            outputs: outputs.unwrap_or_default(),
            current_timestamp: 0,
            current_index: 0,
            current_stream_time: None,
            out: OutputBuffer::default(),
        }
    }

    pub(crate) fn set_current(&mut self, index: u32, timestamp: i64) {
        self.current_index = index;
        self.current_timestamp = timestamp;
    }

    /// The stream time of the record being processed (`None`: ask the host).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn set_current_stream_time(&mut self, stream_time: Option<i64>) {
        self.current_stream_time = stream_time;
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn output_names(&self) -> &[String] {
        &self.outputs
    }

    pub(crate) fn output(&mut self) -> &mut OutputBuffer {
        &mut self.out
    }

    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn opened_stores(&self) -> &[(Rc<str>, SharedRawStore)] {
        &self.stores
    }

    /// Ends a host call on every opened store; the first error wins.
    pub(crate) fn end_call(&mut self, success: bool) -> std::result::Result<(), (String, Error)> {
        let mut first = Ok(());
        for (name, store) in &self.stores {
            if let Err(e) = store.borrow_mut().end_call(success && first.is_ok())
                && first.is_ok()
            {
                first = Err((name.to_string(), e));
            }
        }
        first
    }

    /// A typed handle on a store with JSON values (see [`Store`]).
    pub fn store<K, V>(&mut self, name: &str) -> Store<K, V, Json>
    where
        V: Serialize + DeserializeOwned,
    {
        self.store_with::<K, V, Json>(name)
    }

    /// A typed handle on a store with values in codec `C`
    /// (e.g. [`Binary`](crate::codec::Binary)).
    pub fn store_with<K, V, C>(&mut self, name: &str) -> Store<K, V, C>
    where
        V: Serialize + DeserializeOwned,
        C: Codec,
    {
        if let Some((n, raw)) = self.stores.iter().find(|(n, _)| &**n == name) {
            return Store::new(n.clone(), Ok(raw.clone()));
        }
        let raw = self.host.open_store(name);
        let name: Rc<str> = Rc::from(name);
        if let Ok(raw) = &raw {
            self.stores.push((name.clone(), raw.clone()));
        }
        Store::new(name, raw)
    }

    fn output_index(&mut self, output: &str) -> Result<u32> {
        if let Some(i) = self.outputs.iter().position(|o| o == output) {
            return Ok(i as u32);
        }
        if self.any_output {
            self.outputs.push(output.to_owned());
            return Ok(self.outputs.len() as u32 - 1);
        }
        self.host.undeclared_output(output);
        Err(Error::msg(format!(
            "output `{output}` is not declared for processor `{}` (declared: {})",
            self.host.processor_name(),
            if self.outputs.is_empty() { "none".to_owned() } else { self.outputs.join(", ") }
        )))
    }

    fn push_entry(&mut self, output: u32, key: Option<Span>, value: Option<Span>, timestamp: i64, headers: (u32, u32)) {
        self.out.records.push(OutputEntry { output, key, value, timestamp, headers, input_index: self.current_index });
    }

    /// Emits a record with raw key and value bytes (`None` value: a tombstone)
    /// to `output`, timestamped like the record being processed.
    pub fn emit(&mut self, output: &str, key: impl IntoBytes, value: impl IntoBytes) -> Result<()> {
        let index = self.output_index(output)?;
        let key = key.as_bytes_opt().map(|k| self.out.push(k));
        let value = value.as_bytes_opt().map(|v| self.out.push(v));
        let start = self.out.headers.len() as u32;
        self.push_entry(index, key, value, self.current_timestamp, (start, 0));
        Ok(())
    }

    /// Emits `value` serialised as JSON.
    pub fn emit_json<T: Serialize + ?Sized>(&mut self, output: &str, key: impl IntoBytes, value: &T) -> Result<()> {
        let index = self.output_index(output)?;
        let key = key.as_bytes_opt().map(|k| self.out.push(k));
        // Serialise straight into the output buffer: no intermediate copy.
        let start = self.out.data.len();
        if let Err(e) = serde_json::to_writer(&mut self.out.data, value) {
            self.out.data.truncate(start);
            return Err(e.into());
        }
        let value = Span { offset: start as u32, len: (self.out.data.len() - start) as u32 };
        let first_header = self.out.headers.len() as u32;
        self.push_entry(index, key, Some(value), self.current_timestamp, (first_header, 0));
        Ok(())
    }

    /// Emits a tombstone (no value) for `key`.
    pub fn emit_tombstone(&mut self, output: &str, key: impl IntoBytes) -> Result<()> {
        self.emit(output, key, ())
    }

    /// Forwards `record` unchanged (key, value, headers, timestamp) to `output`.
    pub fn forward(&mut self, output: &str, record: &Record) -> Result<()> {
        let index = self.output_index(output)?;
        let key = record.key().map(|k| self.out.push(k));
        let value = record.value().map(|v| self.out.push(v));
        let first = self.out.headers.len() as u32;
        for (name, v) in record.headers() {
            let span = self.out.push(v);
            self.out.headers.push((name.to_owned(), span));
        }
        let count = self.out.headers.len() as u32 - first;
        self.push_entry(index, key, value, record.timestamp(), (first, count));
        Ok(())
    }

    /// Emits a fully specified record (own timestamp, headers).
    pub fn emit_record(&mut self, record: Emitted) -> Result<()> {
        let index = self.output_index(&record.output)?;
        let key = record.key.as_deref().map(|k| self.out.push(k));
        let value = record.value.as_deref().map(|v| self.out.push(v));
        let first = self.out.headers.len() as u32;
        for (name, v) in &record.headers {
            let span = self.out.push(v);
            self.out.headers.push((name.clone(), span));
        }
        let count = self.out.headers.len() as u32 - first;
        self.push_entry(index, key, value, record.timestamp, (first, count));
        Ok(())
    }

    /// The timestamp of the record being processed (or of the punctuation).
    pub fn timestamp(&self) -> i64 {
        self.current_timestamp
    }

    /// Calls [`Processor::punctuate`](crate::Processor::punctuate) every
    /// `interval` of stream time or wall-clock time, replacing an earlier
    /// schedule of the same kind.
    pub fn schedule(&mut self, kind: Punctuation, interval: Duration) -> Result<()> {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Err(Error::msg("punctuation interval must be at least 1 ms"));
        }
        self.host.schedule(kind, ms)
    }

    /// Cancels the schedule of `kind`.
    pub fn cancel_schedule(&mut self, kind: Punctuation) -> Result<()> {
        self.host.schedule(kind, 0)
    }

    /// The task this instance runs in (`app/subtopology_partition`).
    pub fn task_id(&self) -> String {
        self.host.task_id()
    }

    /// The processor's name in the spec.
    pub fn processor_name(&self) -> String {
        self.host.processor_name()
    }

    /// The task's partition.
    pub fn partition(&self) -> u32 {
        self.host.partition()
    }

    /// The task's stream time: the largest record timestamp seen, the
    /// current record's included (-1 before the first record). In
    /// `punctuate` and `on_timer`, the stream time they fire at.
    pub fn stream_time(&self) -> i64 {
        self.current_stream_time.unwrap_or_else(|| self.host.stream_time())
    }

    /// Sets a timer for `key` at `at` (ms since the epoch), in `domain`:
    /// [`Processor::on_timer`](crate::Processor::on_timer) is called with it
    /// once when it is due. The host keeps timers durably (the processor
    /// needs `timers: true` in the spec), so they survive restarts and fire
    /// exactly once. Setting the same (domain, key, time) again is one timer;
    /// a key may have timers at several times. A stream-time timer fires
    /// right after the record that makes stream time reach `at` (a time
    /// already reached: at the next advance of stream time); a wall-clock
    /// timer, between records once the wall clock reaches `at`. Like store
    /// writes, a timer set while processing a record that fails is not set.
    pub fn set_timer(&mut self, domain: TimeDomain, key: impl IntoBytes, at: i64) -> Result<()> {
        let key = key.as_bytes_opt().unwrap_or_default();
        self.host.timer(true, domain, key, at, self.current_index)
    }

    /// Cancels the timer (`domain`, `key`, `at`); nothing happens when there
    /// is none.
    pub fn cancel_timer(&mut self, domain: TimeDomain, key: impl IntoBytes, at: i64) -> Result<()> {
        let key = key.as_bytes_opt().unwrap_or_default();
        self.host.timer(false, domain, key, at, self.current_index)
    }

    /// The host's wall clock in ms (simulated by `weir test` and the harness).
    pub fn wall_clock_time(&self) -> i64 {
        self.host.wall_clock_time()
    }

    /// Writes to the host log, tagged with processor and task.
    pub fn log(&mut self, level: LogLevel, message: impl AsRef<str>) {
        self.host.log(level, message.as_ref());
    }

    /// Logs at info level.
    pub fn info(&mut self, message: impl AsRef<str>) {
        self.log(LogLevel::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(&mut self, message: impl AsRef<str>) {
        self.log(LogLevel::Warn, message);
    }
}

/// The processor's `config` map from the spec, passed to
/// [`Processor::init`](crate::Processor::init).
#[derive(Clone, Debug, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value for `key`, or an error naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| Error::msg(format!("config key `{key}` is required")))
    }

    /// The value for `key` parsed as `T`, `None` when absent.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|v| v.parse::<T>().map_err(|e| Error::msg(format!("config key `{key}` = `{v}`: {e}"))))
            .transpose()
    }

    /// All entries, in spec order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }
}
