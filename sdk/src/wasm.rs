//! The component side: the contract's exports, driven by the host, and the
//! [`HostApi`] over the contract's imports.
//!
//! Host calls are the dominant cost of a component, so per `process` call the
//! SDK makes a handful of them, whatever the batch size:
//! - the batch arrives as one buffer; records are views into it. Their
//!   metadata comes packed (contract 0.3.0, [`crate::packed`]), as do emits
//!   and store lists: each crosses the boundary as one byte list;
//! - emits are written into one output buffer, handed over in one `emit`;
//! - each store keeps a write-back cache for the call: writes reach the host
//!   in one `write-many` at the end, repeated reads of a key cost nothing;
//! - key prefetch: a store that the processor reads mostly by the record's own
//!   key (the common case after co-partitioning) gets the batch's keys in one
//!   `get-many` before the first record, instead of one `get` per record. The
//!   SDK learns this per store from the previous batch.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::bindings::weir::processor0_1_0::{context, store as host_store, types};
use crate::bindings::weir::processor0_2_0::timers;
use crate::bindings::weir::processor0_3_0::packed;
use crate::context::{HostApi, LogLevel, OutputBuffer, Punctuation, TimeDomain};
use crate::packed::{InputEntry, OutputEntry};
use crate::record::{Shared, Span};
use crate::store::{KeyVisitor, RawStore, SharedRawStore};
use crate::{Config, Context, Error, Processor, Record, Result, Timer};

struct Runtime {
    processor: Box<dyn Processor>,
    ctx: Context,
}

thread_local! {
    static RUNTIME: RefCell<Option<Runtime>> = const { RefCell::new(None) };
    /// Index in the current batch of the record being processed, so a write
    /// the host refuses at flush time is blamed on the record that made it.
    static CURRENT_INDEX: Cell<u32> = const { Cell::new(0) };
    /// The current batch and the span of the current record's key in it, to
    /// learn which stores are read by record key.
    static CURRENT_BATCH: RefCell<Option<Rc<Shared>>> = const { RefCell::new(None) };
    static CURRENT_KEY: Cell<Option<Span>> = const { Cell::new(None) };
}

fn to_wit_error(error: Error) -> types::Error {
    types::Error { message: error.message().to_owned() }
}

fn span(s: types::Span) -> Span {
    Span { offset: s.offset, len: s.len }
}

fn packed_span((offset, len): crate::packed::Span) -> Span {
    Span { offset, len }
}

fn wit_span(s: Span) -> types::Span {
    types::Span { offset: s.offset, len: s.len }
}

/// The `init` export.
pub fn init(make: impl FnOnce() -> Box<dyn Processor>, config: Vec<(String, String)>) -> Result<(), types::Error> {
    let outputs = context::outputs();
    let mut ctx = Context::new(Box::new(ComponentHost), Some(outputs));
    let mut processor = make();
    ctx.set_current(0, 0);
    let result = processor.init(&mut ctx, &Config::new(config));
    let result = match result {
        Ok(()) => finish_call(&mut ctx).map_err(|(_, e)| e),
        Err(e) => {
            abort_call(&mut ctx);
            Err(e)
        }
    };
    RUNTIME.with(|rt| *rt.borrow_mut() = Some(Runtime { processor, ctx }));
    result.map_err(to_wit_error)
}

/// The `process` export.
pub fn process(batch: packed::PackedBatch) -> Result<(), types::BatchError> {
    with_runtime(|rt| {
        let packed::PackedBatch { data, records, topics, sources, headers } = batch;
        let records: Vec<InputEntry> = match InputEntry::read_all(&records) {
            Ok(entries) => entries.collect(),
            Err(message) => return Err(types::BatchError { index: 0, error: types::Error { message } }),
        };
        let headers = headers.into_iter().map(|h| (h.name, span(h.value))).collect();
        let shared = Rc::new(Shared { data, topics, sources, headers });
        prefetch(&rt.ctx, &shared, &records);
        CURRENT_BATCH.with(|b| *b.borrow_mut() = Some(shared.clone()));
        for (index, r) in records.iter().enumerate() {
            let index = index as u32;
            CURRENT_INDEX.set(index);
            rt.ctx.set_current(index, r.timestamp);
            rt.ctx.set_current_stream_time(Some(r.stream_time));
            let record = Record::view(
                shared.clone(),
                r.key.map(packed_span),
                r.value.map(packed_span),
                r.old_value.map(packed_span),
                r.timestamp,
                (r.first_header, r.header_count),
                r.topic,
                r.partition,
                r.offset,
            );
            CURRENT_KEY.set(r.key.map(packed_span));
            if let Err(error) = rt.processor.process(&mut rt.ctx, record) {
                rt.ctx.set_current_stream_time(None);
                abort_call(&mut rt.ctx);
                return Err(types::BatchError { index, error: to_wit_error(error) });
            }
        }
        rt.ctx.set_current_stream_time(None);
        CURRENT_KEY.set(None);
        CURRENT_BATCH.with(|b| *b.borrow_mut() = None);
        finish_call(&mut rt.ctx).map_err(|(index, error)| types::BatchError { index, error: to_wit_error(error) })
    })
    .unwrap_or_else(|e| Err(types::BatchError { index: 0, error: e }))
}

/// The `punctuate` export.
pub fn punctuate(kind: types::Punctuation, timestamp: i64) -> Result<(), types::Error> {
    with_runtime(|rt| {
        CURRENT_INDEX.set(0);
        rt.ctx.set_current(0, timestamp);
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

/// The `on-timer` export.
pub fn on_timer(domain: timers::TimeDomain, key: Vec<u8>, timestamp: i64) -> Result<(), types::Error> {
    with_runtime(|rt| {
        CURRENT_INDEX.set(0);
        rt.ctx.set_current(0, timestamp);
        let domain = match domain {
            timers::TimeDomain::StreamTime => TimeDomain::StreamTime,
            timers::TimeDomain::WallClock => TimeDomain::WallClock,
        };
        if let Err(error) = rt.processor.on_timer(&mut rt.ctx, Timer { domain, key, timestamp }) {
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

/// Fetches the batch's record keys in one call for stores read by record key.
fn prefetch(ctx: &Context, shared: &Shared, records: &[InputEntry]) {
    for (_, store) in ctx.opened_stores() {
        let mut store = store.borrow_mut();
        // Only our own store type prefetches.
        store.prefetch(&mut |keys: &mut dyn FnMut(&[u8])| {
            for r in records {
                if let Some(k) = r.key {
                    keys(shared.bytes(packed_span(k)));
                }
            }
        });
    }
}

/// Hands buffered writes and emits to the host. On failure returns the index
/// of the record to blame.
fn finish_call(ctx: &mut Context) -> Result<(), (u32, Error)> {
    ctx.end_call(true).map_err(|(store, e)| (CURRENT_INDEX.get(), e.context(format_args!("store `{store}`"))))?;
    let out = ctx.output();
    if !out.records.is_empty() {
        let (data, records, headers) = to_packed_output(out);
        out.clear();
        packed::emit(&data, &records, &headers).map_err(|e| (CURRENT_INDEX.get(), Error::msg(e.message)))?;
    }
    Ok(())
}

fn abort_call(ctx: &mut Context) {
    let _ = ctx.end_call(false);
    ctx.output().clear();
}

/// The output buffer as `emit`'s arguments: data, packed entries, headers.
fn to_packed_output(out: &mut OutputBuffer) -> (Vec<u8>, Vec<u8>, Vec<types::Header>) {
    let headers = out.headers.drain(..).map(|(name, s)| types::Header { name, value: wit_span(s) }).collect();
    let mut records = Vec::with_capacity(out.records.len() * crate::packed::OUTPUT_ENTRY);
    for e in &out.records {
        OutputEntry {
            output: e.output,
            key: e.key.map(|s| (s.offset, s.len)),
            value: e.value.map(|s| (s.offset, s.len)),
            timestamp: e.timestamp,
            first_header: e.headers.0,
            header_count: e.headers.1,
            input_index: e.input_index,
        }
        .write(&mut records);
    }
    (std::mem::take(&mut out.data), records, headers)
}

/// [`HostApi`] over the contract's imports.
struct ComponentHost;

impl HostApi for ComponentHost {
    fn open_store(&mut self, name: &str) -> Result<SharedRawStore, String> {
        let handle = host_store::Store::open(name).map_err(|e| e.message)?;
        Ok(Rc::new(RefCell::new(CachedStore {
            handle,
            cache: CacheMap::default(),
            first_write: None,
            prefetch: false,
            reads: 0,
            reads_by_record_key: 0,
        })))
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
    fn timer(&mut self, set: bool, domain: TimeDomain, key: &[u8], at: i64, input_index: u32) -> Result<()> {
        let domain = match domain {
            TimeDomain::StreamTime => timers::TimeDomain::StreamTime,
            TimeDomain::WallClock => timers::TimeDomain::WallClock,
        };
        let done = if set { timers::set(domain, key, at, input_index) } else { timers::cancel(domain, key, at) };
        done.map_err(|e| Error::msg(e.message))
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
    fn undeclared_output(&mut self, _output: &str) {
        // An output index no processor has: the host refuses the emit and
        // fails the call as a contract violation (the SDK's own error,
        // naming the output, is the message the host reports).
        let mut records = Vec::new();
        OutputEntry {
            output: u32::MAX,
            key: None,
            value: None,
            timestamp: 0,
            first_header: 0,
            header_count: 0,
            input_index: 0,
        }
        .write(&mut records);
        let _ = packed::emit(&[], &records, &[]);
    }
}

struct Cached {
    value: Option<Vec<u8>>,
    dirty: bool,
}

/// The cache of one store for one call. hashbrown's own map, for
/// `entry_ref`: a lookup by borrowed key that inserts an owned one on a
/// miss, with one hash. A fast hasher with a fixed seed: the cache lives
/// for one call, and a fixed seed keeps a replayed call identical.
type CacheMap = hashbrown::HashMap<Vec<u8>, Cached, foldhash::fast::FixedState>;

/// A host store behind a per-call write-back cache.
struct CachedStore {
    handle: host_store::Store,
    cache: CacheMap,
    /// Index of the first record that wrote since the last flush.
    first_write: Option<u32>,
    /// Prefetch the batch's record keys (learned from the previous call).
    prefetch: bool,
    reads: u32,
    reads_by_record_key: u32,
}

impl CachedStore {
    fn flush(&mut self) -> Result<()> {
        if self.first_write.is_none() {
            return Ok(());
        }
        let mut writes = Vec::new();
        for (key, c) in self.cache.iter_mut().filter(|(_, c)| c.dirty) {
            c.dirty = false;
            crate::packed::put_item(&mut writes, Some(key));
            crate::packed::put_item(&mut writes, c.value.as_deref());
        }
        let blamed = self.first_write.take();
        packed::write_many(&self.handle, &writes).map_err(|e| {
            if let Some(index) = blamed {
                CURRENT_INDEX.set(index);
            }
            Error::msg(e.message)
        })
    }
}

impl RawStore for CachedStore {
    fn get(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        self.reads += 1;
        if let Some(k) = CURRENT_KEY.get()
            && CURRENT_BATCH.with(|b| b.borrow().as_ref().is_some_and(|b| b.bytes(k) == key))
        {
            self.reads_by_record_key += 1;
        }
        // One hash per read: a miss inserts where the lookup ended.
        let handle = &self.handle;
        let slot = self.cache.entry_ref(key).or_insert_with(|| Cached { value: handle.get(key), dirty: false });
        Ok(slot.value.as_deref())
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Result<()> {
        if self.first_write.is_none() {
            self.first_write = Some(CURRENT_INDEX.get());
        }
        let slot = self.cache.entry_ref(key).or_insert(Cached { value: None, dirty: false });
        slot.value = value;
        slot.dirty = true;
        Ok(())
    }

    fn range(&mut self, start: Option<&[u8]>, end: Option<&[u8]>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // The host merges its own state; our unflushed writes must be there first.
        self.flush()?;
        let entries = self.handle.range(start, end, limit);
        let bytes = |s: types::Span| entries.data[s.offset as usize..(s.offset + s.len) as usize].to_vec();
        Ok(entries.items.iter().map(|(k, v)| (bytes(*k), bytes(*v))).collect())
    }

    fn prefetch(&mut self, keys: &mut KeyVisitor<'_>) {
        if !self.prefetch {
            return;
        }
        // Each new key gets a (clean, empty) cache slot at once: that dedups
        // the batch's keys with one allocation per distinct key.
        let mut asked = Vec::new();
        let cache = &mut self.cache;
        keys(&mut |k| {
            if let hashbrown::hash_map::EntryRef::Vacant(slot) = cache.entry_ref(k) {
                slot.insert(Cached { value: None, dirty: false });
                crate::packed::put_item(&mut asked, Some(k));
            }
        });
        if asked.is_empty() {
            return;
        }
        let found = packed::get_many(&self.handle, &asked);
        // A slot filled here says "no value" when the answer has none, so
        // only a whole answer (one item per key) fills them; a broken one
        // (a host bug) drops the slots, and each read asks the host again.
        let keys: Vec<&[u8]> = crate::packed::items(&asked).filter_map(|k| k.ok().flatten()).collect();
        let values: Option<Vec<Option<&[u8]>>> = crate::packed::items(&found).map(Result::ok).collect();
        match values {
            Some(values) if values.len() == keys.len() => {
                for (key, value) in keys.into_iter().zip(values) {
                    if let Some(slot) = self.cache.get_mut(key) {
                        slot.value = value.map(<[u8]>::to_vec);
                    }
                }
            }
            _ => {
                for key in keys {
                    self.cache.remove(key);
                }
            }
        }
    }

    fn end_call(&mut self, success: bool) -> Result<()> {
        let result = if success { self.flush() } else { Ok(()) };
        self.cache.clear();
        self.first_write = None;
        // Prefetch next time if most reads of this call were by record key.
        self.prefetch = self.reads > 0 && self.reads_by_record_key * 2 >= self.reads;
        self.reads = 0;
        self.reads_by_record_key = 0;
        result
    }
}
