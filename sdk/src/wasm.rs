//! The component side: the contract's exports, driven by the host, and the
//! [`HostApi`] over the contract's imports.
//!
//! Per host call the SDK buffers emits and store writes in guest memory and
//! hands them to the host at the end of the call in one `emit-many` and one
//! `write-many` per store: host calls are the dominant cost of a component, so
//! a batch of records costs a handful of them instead of several per record.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::bindings::weir::processor::{context, emitter, store as host_store, types};
use crate::context::{HostApi, LogLevel, Punctuation};
use crate::store::{RawStore, SharedRawStore};
use crate::{Config, Context, Emitted, Error, Processor, Record, Result};

struct Runtime {
    processor: Box<dyn Processor>,
    ctx: Context,
}

thread_local! {
    static RUNTIME: RefCell<Option<Runtime>> = const { RefCell::new(None) };
    /// Index in the current batch of the record being processed, so a write
    /// the host refuses at flush time is blamed on the record that made it.
    static CURRENT_INDEX: Cell<u32> = const { Cell::new(0) };
}

fn to_wit_error(error: Error) -> types::Error {
    types::Error { message: error.message().to_owned() }
}

/// The `init` export.
pub fn init(make: impl FnOnce() -> Box<dyn Processor>, config: Vec<(String, String)>) -> Result<(), types::Error> {
    let outputs = context::outputs();
    let mut ctx = Context::new(Box::new(ComponentHost), Some(outputs));
    let mut processor = make();
    let result = processor.init(&mut ctx, &Config::new(config));
    let result = result.and_then(|()| finish_call(&mut ctx).map_err(|(_, e)| e));
    RUNTIME.with(|rt| *rt.borrow_mut() = Some(Runtime { processor, ctx }));
    result.map_err(to_wit_error)
}

/// The `process` export.
pub fn process(batch: Vec<types::Record>) -> Result<(), types::BatchError> {
    with_runtime(|rt| {
        for (index, record) in batch.into_iter().enumerate() {
            let index = index as u32;
            CURRENT_INDEX.set(index);
            rt.ctx.set_current_timestamp(record.timestamp);
            rt.ctx.set_current_index(index);
            if let Err(error) = rt.processor.process(&mut rt.ctx, from_wit(record)) {
                abort_call(&mut rt.ctx);
                return Err(types::BatchError { index, error: to_wit_error(error) });
            }
        }
        finish_call(&mut rt.ctx).map_err(|(index, error)| types::BatchError { index, error: to_wit_error(error) })
    })
    .unwrap_or_else(|e| Err(types::BatchError { index: 0, error: e }))
}

/// The `punctuate` export.
pub fn punctuate(kind: types::Punctuation, timestamp: i64) -> Result<(), types::Error> {
    with_runtime(|rt| {
        CURRENT_INDEX.set(0);
        rt.ctx.set_current_index(0);
        rt.ctx.set_current_timestamp(timestamp);
        let kind = match kind {
            types::Punctuation::StreamTime => Punctuation::StreamTime,
            types::Punctuation::WallClock => Punctuation::WallClock,
        };
        if let Err(error) = rt.processor.punctuate(&mut rt.ctx, kind, timestamp) {
            abort_call(&mut rt.ctx);
            return Err(to_wit_error(error));
        }
        finish_call(&mut rt.ctx).map_err(|(_, e)| to_wit_error(e))
    })
    .and_then(|r| r)
}

fn with_runtime<R>(f: impl FnOnce(&mut Runtime) -> R) -> Result<R, types::Error> {
    RUNTIME.with(|rt| match rt.borrow_mut().as_mut() {
        Some(rt) => Ok(f(rt)),
        None => Err(types::Error { message: "processor called before init".to_owned() }),
    })
}

fn from_wit(r: types::Record) -> Record {
    Record {
        key: r.key,
        value: r.value,
        old_value: r.old_value,
        timestamp: r.timestamp,
        headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        topic: r.topic,
        partition: r.partition,
        offset: r.offset,
    }
}

/// Hands buffered writes and emits to the host. On failure returns the index
/// of the record to blame.
fn finish_call(ctx: &mut Context) -> Result<(), (u32, Error)> {
    ctx.end_call(true).map_err(|(store, e)| (CURRENT_INDEX.get(), e.context(format_args!("store `{store}`"))))?;
    let emitted = ctx.take_emitted_with_index();
    if !emitted.is_empty() {
        let records: Vec<types::OutputRecord> = emitted.into_iter().map(to_wit_output).collect();
        emitter::emit_many(&records).map_err(|e| (CURRENT_INDEX.get(), Error::msg(e.message)))?;
    }
    Ok(())
}

fn abort_call(ctx: &mut Context) {
    let _ = ctx.end_call(false);
    ctx.take_emitted();
}

fn to_wit_output((e, input_index): (Emitted, u32)) -> types::OutputRecord {
    types::OutputRecord {
        input_index,
        output: e.output,
        key: e.key,
        value: e.value,
        timestamp: e.timestamp,
        headers: e.headers.into_iter().map(|(name, value)| types::Header { name, value }).collect(),
    }
}

/// [`HostApi`] over the contract's imports.
struct ComponentHost;

impl HostApi for ComponentHost {
    fn open_store(&mut self, name: &str) -> Result<SharedRawStore, String> {
        let handle = host_store::Store::open(name).map_err(|e| e.message)?;
        Ok(Rc::new(RefCell::new(CachedStore { handle, cache: HashMap::new(), first_write: None })))
    }
    fn task_id(&self) -> String {
        context::task_id()
    }
    fn processor_name(&self) -> String {
        context::processor_name()
    }
    fn partition(&self) -> u32 {
        context::partition()
    }
    fn stream_time(&self) -> i64 {
        context::stream_time()
    }
    fn wall_clock_time(&self) -> i64 {
        context::wall_clock_time()
    }
    fn schedule(&mut self, kind: Punctuation, interval_ms: u64) -> Result<()> {
        let kind = match kind {
            Punctuation::StreamTime => types::Punctuation::StreamTime,
            Punctuation::WallClock => types::Punctuation::WallClock,
        };
        context::schedule(kind, interval_ms).map_err(|e| Error::msg(e.message))
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Trace => types::LogLevel::Trace,
            LogLevel::Debug => types::LogLevel::Debug,
            LogLevel::Info => types::LogLevel::Info,
            LogLevel::Warn => types::LogLevel::Warn,
            LogLevel::Error => types::LogLevel::Error,
        };
        context::log(level, message);
    }
}

struct Cached {
    value: Option<Vec<u8>>,
    dirty: bool,
}

/// A host store behind a per-call write-back cache.
struct CachedStore {
    handle: host_store::Store,
    cache: HashMap<Vec<u8>, Cached>,
    /// Index of the first record that wrote since the last flush.
    first_write: Option<u32>,
}

impl CachedStore {
    fn flush(&mut self) -> Result<()> {
        if self.first_write.is_none() {
            return Ok(());
        }
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .cache
            .iter_mut()
            .filter(|(_, c)| c.dirty)
            .map(|(k, c)| {
                c.dirty = false;
                (k.clone(), c.value.clone())
            })
            .collect();
        let blamed = self.first_write.take();
        self.handle.write_many(&writes).map_err(|e| {
            if let Some(index) = blamed {
                CURRENT_INDEX.set(index);
            }
            Error::msg(e.message)
        })
    }
}

impl RawStore for CachedStore {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(c) = self.cache.get(key) {
            return Ok(c.value.clone());
        }
        let value = self.handle.get(key);
        self.cache.insert(key.to_vec(), Cached { value: value.clone(), dirty: false });
        Ok(value)
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Result<()> {
        if self.first_write.is_none() {
            self.first_write = Some(CURRENT_INDEX.get());
        }
        match self.cache.get_mut(key) {
            Some(c) => {
                c.value = value;
                c.dirty = true;
            }
            None => {
                self.cache.insert(key.to_vec(), Cached { value, dirty: true });
            }
        }
        Ok(())
    }

    fn range(&mut self, start: Option<&[u8]>, end: Option<&[u8]>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // The host merges its own state; our unflushed writes must be there first.
        self.flush()?;
        Ok(self.handle.range(start, end, limit))
    }

    fn end_call(&mut self, success: bool) -> Result<()> {
        let result = if success { self.flush() } else { Ok(()) };
        self.cache.clear();
        self.first_write = None;
        result
    }
}
