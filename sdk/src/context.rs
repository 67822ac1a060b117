//! The [`Context`] a processor works through: stores, emits, time, logging.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, Json};
use crate::record::{Emitted, IntoBytes, Record};
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
    fn log(&mut self, level: LogLevel, message: &str);
}

/// Everything a processor can do besides computing: read and write its
/// stores, emit records to its named outputs, schedule punctuations, ask about
/// time and log.
pub struct Context {
    host: Box<dyn HostApi>,
    /// Stores opened so far, so the end of a call can flush or roll them back.
    stores: Vec<(String, SharedRawStore)>,
    /// Outputs declared in the spec; `None` accepts any name.
    outputs: Option<Vec<String>>,
    /// Timestamp given to emitted records by default.
    current_timestamp: i64,
    /// Index in the current batch of the record being processed.
    current_index: u32,
    emitted: Vec<Emitted>,
    /// For each emitted record, the batch index of the record it derives from.
    emitted_from: Vec<u32>,
}

impl Context {
    pub(crate) fn new(host: Box<dyn HostApi>, outputs: Option<Vec<String>>) -> Self {
        Context {
            host,
            stores: Vec::new(),
            outputs,
            current_timestamp: 0,
            current_index: 0,
            emitted: Vec::new(),
            emitted_from: Vec::new(),
        }
    }

    pub(crate) fn set_current_timestamp(&mut self, timestamp: i64) {
        self.current_timestamp = timestamp;
    }

    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn set_current_index(&mut self, index: u32) {
        self.current_index = index;
    }

    pub(crate) fn take_emitted(&mut self) -> Vec<Emitted> {
        self.emitted_from.clear();
        std::mem::take(&mut self.emitted)
    }

    /// Emitted records with the batch index of the record each derives from.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn take_emitted_with_index(&mut self) -> Vec<(Emitted, u32)> {
        let from = std::mem::take(&mut self.emitted_from);
        std::mem::take(&mut self.emitted).into_iter().zip(from).collect()
    }

    /// Number of records emitted so far in this call (the harness rolls back to it).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn emitted_len(&self) -> usize {
        self.emitted.len()
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn truncate_emitted(&mut self, len: usize) {
        self.emitted.truncate(len);
        self.emitted_from.truncate(len);
    }

    /// Ends a host call on every opened store; the first error wins.
    pub(crate) fn end_call(&mut self, success: bool) -> std::result::Result<(), (String, Error)> {
        let mut first = Ok(());
        for (name, store) in &self.stores {
            if let Err(e) = store.borrow_mut().end_call(success && first.is_ok())
                && first.is_ok()
            {
                first = Err((name.clone(), e));
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
        if let Some((_, raw)) = self.stores.iter().find(|(n, _)| n == name) {
            return Store::new(name, Ok(raw.clone()));
        }
        let raw = self.host.open_store(name);
        if let Ok(raw) = &raw {
            self.stores.push((name.to_owned(), raw.clone()));
        }
        Store::new(name, raw)
    }

    /// Emits a record with raw key and value bytes (`None` value: a tombstone)
    /// to `output`, timestamped like the record being processed.
    pub fn emit(&mut self, output: &str, key: impl IntoBytes, value: impl IntoBytes) -> Result<()> {
        self.emit_record(Emitted {
            output: output.to_owned(),
            key: key.into_bytes_opt(),
            value: value.into_bytes_opt(),
            timestamp: self.current_timestamp,
            headers: Vec::new(),
        })
    }

    /// Emits `value` serialised as JSON.
    pub fn emit_json<T: Serialize + ?Sized>(&mut self, output: &str, key: impl IntoBytes, value: &T) -> Result<()> {
        let value = serde_json::to_vec(value)?;
        self.emit(output, key, value)
    }

    /// Emits a tombstone (no value) for `key`.
    pub fn emit_tombstone(&mut self, output: &str, key: impl IntoBytes) -> Result<()> {
        self.emit(output, key, ())
    }

    /// Forwards `record` unchanged (key, value, headers, timestamp) to `output`.
    pub fn forward(&mut self, output: &str, record: &Record) -> Result<()> {
        self.emit_record(Emitted {
            output: output.to_owned(),
            key: record.key.clone(),
            value: record.value.clone(),
            timestamp: record.timestamp,
            headers: record.headers.clone(),
        })
    }

    /// Emits a fully specified record (own timestamp, headers).
    pub fn emit_record(&mut self, record: Emitted) -> Result<()> {
        if let Some(outputs) = &self.outputs
            && !outputs.iter().any(|o| *o == record.output)
        {
            return Err(Error::msg(format!(
                "output `{}` is not declared for processor `{}` (declared: {})",
                record.output,
                self.host.processor_name(),
                if outputs.is_empty() { "none".to_owned() } else { outputs.join(", ") }
            )));
        }
        self.emitted.push(record);
        self.emitted_from.push(self.current_index);
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

    /// The task this instance runs in (`app/subtopology-partition`).
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

    /// The task's stream time (largest record timestamp seen).
    pub fn stream_time(&self) -> i64 {
        self.host.stream_time()
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
