//! The host side of the contract's imports (`store`, `emitter`, `context`,
//! 0.2.0's `timers`; 0.3.0's packed forms are in [`super::packed`]) and the
//! per-instance state they work on.
//!
//! Host functions never fail because of the guest by trapping: a guest
//! mistake (unknown store, write to a read-only store, emit to an undeclared
//! output) is returned to the guest as an `error`, and the ones that break the
//! contract (undeclared output) are also recorded so the call fails even if
//! the guest ignores the error. Traps from host functions mean a host fault
//! (storage failure): the executor aborts the transaction instead of blaming
//! the record.

use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::clocks::HostWallClock;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::weir::processor0_1_0::{context, emitter, store, types};
use super::bindings_v2::weir::processor0_2_0::{batch_info, timers};
use crate::record::Emitted;
use crate::state::{StateError, TaskStores};

/// What a store resource handle refers to: an index into the task's stores.
pub struct StoreHandle {
    pub(super) index: usize,
    writable: bool,
}

/// A store a processor may open, resolved to the task's store list.
#[derive(Debug, Clone)]
pub struct StoreGrantInfo {
    pub name: String,
    pub index: usize,
    pub writable: bool,
}

/// Who an instance is: fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub app: String,
    pub processor: String,
    pub task_id: String,
    pub partition: u32,
    pub outputs: Vec<String>,
    pub grants: Vec<StoreGrantInfo>,
    /// The task's store of this processor's timers (`timers: true`).
    pub timers: Option<usize>,
    /// Spec name of the source or table reading each input topic (0.2.0's
    /// batch context).
    pub sources: std::collections::BTreeMap<String, String>,
}

/// A host fault raised inside a host function; travels as the trap's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostFault(pub StateError);

/// The data of one instance's wasmtime `Store`.
pub struct GuestState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(crate) limits: GuestLimiter,
    pub(crate) info: Arc<InstanceInfo>,
    pub(crate) call: CallState,
    /// The task's wall clock, also what WASI's wall clock reports.
    pub(crate) wall_clock: Arc<AtomicI64>,
    /// Recent guest stderr, to explain a trap (a Rust panic prints there).
    pub(crate) stderr: GuestOutput,
}

/// What the host functions of one call read and produce. The executor moves
/// the task's stores in before the call and takes everything out after.
#[derive(Default)]
pub struct CallState {
    pub stores: TaskStores,
    /// Emitted records, in order.
    pub emitted: Vec<Emitted>,
    /// A contract violation seen during the call: the call fails.
    pub violation: Option<String>,
    pub stream_time: i64,
    pub schedules: Vec<(types::Punctuation, u64)>,
    /// The guest asked for stream time or set a stream-time schedule: what
    /// it did depends on the stream time of the record it was at, so the
    /// executor must not have mixed records of different stream times in
    /// this call (see `task::time`).
    pub used_stream_time: bool,
    /// Stream-time timers set during the call: (time, index in the batch of
    /// the record that set it). The executor checks that none fell due
    /// inside the batch (see `task::timers`).
    pub stream_timers_set: Vec<(i64, u32)>,
}

impl GuestState {
    pub(crate) fn new(info: Arc<InstanceInfo>, memory_bytes: u64) -> Self {
        let wall_clock = Arc::new(AtomicI64::new(0));
        let stdout = GuestOutput::new(info.clone(), "stdout");
        let stderr = GuestOutput::new(info.clone(), "stderr");
        let mut wasi = WasiCtxBuilder::new();
        // No preopens, no env, no args, no sockets (denied by default). Random
        // numbers are seeded so a replayed call computes the same thing.
        wasi.stdout(stdout)
            .stderr(stderr.clone())
            .wall_clock(TaskClock(wall_clock.clone()))
            .secure_random(seeded_rng())
            .insecure_random(seeded_rng())
            .insecure_random_seed(0)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let limits = GuestLimiter { memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX) };
        GuestState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits,
            info,
            call: CallState::default(),
            wall_clock,
            stderr,
        }
    }
}

fn seeded_rng() -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(0x5745_4952)
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

pub(super) fn guest_error(message: impl Into<String>) -> types::Error {
    types::Error { message: message.into() }
}

pub(super) fn fault(e: StateError) -> wasmtime::Error {
    wasmtime::Error::new(HostFault(e))
}

impl types::Host for GuestState {}

impl batch_info::Host for GuestState {}

impl timers::Host for GuestState {
    fn set(
        &mut self,
        domain: timers::TimeDomain,
        key: Vec<u8>,
        at: i64,
        input_index: u32,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let Some(index) = self.timer_store() else { return Ok(Err(self.no_timers())) };
        self.call.stores.get_mut(index).write(crate::task::timer_key(domain, at, &key), Some(Vec::new()));
        if domain == timers::TimeDomain::StreamTime {
            self.call.stream_timers_set.push((at, input_index));
        }
        Ok(Ok(()))
    }

    fn cancel(
        &mut self,
        domain: timers::TimeDomain,
        key: Vec<u8>,
        at: i64,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let Some(index) = self.timer_store() else { return Ok(Err(self.no_timers())) };
        self.call.stores.get_mut(index).write(crate::task::timer_key(domain, at, &key), None);
        Ok(Ok(()))
    }
}

impl GuestState {
    fn timer_store(&self) -> Option<usize> {
        self.info.timers
    }

    /// Timers without `timers: true` break the contract like an ungranted store.
    fn no_timers(&mut self) -> types::Error {
        self.violation(format!(
            "processor `{}` has no timers: set `timers: true` on it in the spec",
            self.info.processor
        ))
    }
}

impl store::Host for GuestState {}

/// The bytes of `span` within `data`, or why not.
pub(super) fn slice(data: &[u8], span: types::Span) -> Result<&[u8], String> {
    let start = span.offset as usize;
    data.get(start..start.saturating_add(span.len as usize))
        .ok_or_else(|| format!("span {}+{} is outside its buffer of {} bytes", span.offset, span.len, data.len()))
}

fn push_span(data: &mut Vec<u8>, bytes: &[u8]) -> types::Span {
    let span = types::Span { offset: data.len() as u32, len: bytes.len() as u32 };
    data.extend_from_slice(bytes);
    span
}

impl GuestState {
    /// Records a contract violation (the call fails) and returns it as the
    /// guest-visible error.
    pub(super) fn violation(&mut self, message: String) -> types::Error {
        self.call.violation.get_or_insert_with(|| message.clone());
        guest_error(message)
    }

    /// The task's index of the store behind `this` if the processor may
    /// write it, else the guest's error (a table's store is read-only).
    pub(super) fn writable_store(&self, this: &Resource<StoreHandle>) -> wasmtime::Result<Result<usize, types::Error>> {
        let handle = self.table.get(this)?;
        if handle.writable {
            return Ok(Ok(handle.index));
        }
        Ok(Err(guest_error(format!(
            "store `{}` is read-only for processor `{}` (it is a table's store)",
            self.call.stores.get(handle.index).name(),
            self.info.processor
        ))))
    }

    /// Writes checked key/value pairs to the store behind `this` (refused
    /// if read-only).
    pub(super) fn write_pairs(
        &mut self,
        this: &Resource<StoreHandle>,
        pairs: impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let index = match self.writable_store(this)? {
            Ok(index) => index,
            Err(refused) => return Ok(Err(refused)),
        };
        let store = self.call.stores.get_mut(index);
        for (key, value) in pairs {
            store.write(key, value);
        }
        Ok(Ok(()))
    }

    /// Takes a call's emitted records (either contract's form) after
    /// checking all of them: a bad one emits nothing and breaks the contract.
    pub(super) fn take_emits(
        &mut self,
        data: &[u8],
        headers: &[types::Header],
        records: impl ExactSizeIterator<Item = weir_sdk::packed::OutputEntry>,
    ) -> Result<(), types::Error> {
        let mut emitted = Vec::with_capacity(records.len());
        for r in records {
            let Some(_) = self.info.outputs.get(r.output as usize) else {
                let message = format!(
                    "output #{} is not declared for processor `{}` (declared: {})",
                    r.output,
                    self.info.processor,
                    if self.info.outputs.is_empty() { "none".to_owned() } else { self.info.outputs.join(", ") }
                );
                return Err(self.violation(message));
            };
            let first = r.first_header as usize;
            let Some(header_refs) = headers.get(first..first.saturating_add(r.header_count as usize)) else {
                return Err(self.violation("emit: header range outside the batch".to_owned()));
            };
            let bytes = |s: Option<(u32, u32)>| {
                s.map(|(offset, len)| slice(data, types::Span { offset, len }).map(<[u8]>::to_vec)).transpose()
            };
            let (key, value) = match (bytes(r.key), bytes(r.value)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(m), _) | (_, Err(m)) => return Err(self.violation(format!("emit: {m}"))),
            };
            let mut hs = Vec::with_capacity(header_refs.len());
            for h in header_refs {
                match slice(data, h.value) {
                    Ok(v) => hs.push((h.name.clone(), v.to_vec())),
                    Err(m) => return Err(self.violation(format!("emit: header {}: {m}", h.name))),
                }
            }
            emitted.push(Emitted {
                output: r.output as usize,
                key,
                value,
                timestamp: r.timestamp,
                headers: hs,
                input_index: r.input_index,
            });
        }
        self.call.emitted.append(&mut emitted);
        Ok(())
    }
}

impl store::HostStore for GuestState {
    fn open(&mut self, name: String) -> wasmtime::Result<Result<Resource<StoreHandle>, types::Error>> {
        let Some(grant) = self.info.grants.iter().find(|g| g.name == name) else {
            let granted: Vec<&str> = self.info.grants.iter().map(|g| g.name.as_str()).collect();
            let message = format!(
                "store `{name}` is not granted to processor `{}` (granted: {})",
                self.info.processor,
                if granted.is_empty() { "none".to_owned() } else { granted.join(", ") }
            );
            // A contract violation, not a record's fault: the call fails as
            // one whatever the guest does with the error.
            self.call.violation.get_or_insert_with(|| message.clone());
            return Ok(Err(guest_error(message)));
        };
        let handle = StoreHandle { index: grant.index, writable: grant.writable };
        Ok(Ok(self.table.push(handle)?))
    }

    fn get(&mut self, this: Resource<StoreHandle>, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        let index = self.table.get(&this)?.index;
        self.call.stores.get(index).get(&key).map_err(fault)
    }

    fn get_many(
        &mut self,
        this: Resource<StoreHandle>,
        keys: types::ByteList,
    ) -> wasmtime::Result<types::OptionalByteList> {
        let index = self.table.get(&this)?.index;
        let store = self.call.stores.get(index);
        let mut data = Vec::new();
        let mut items = Vec::with_capacity(keys.items.len());
        for span in keys.items {
            let key = match slice(&keys.data, span) {
                Ok(k) => k,
                Err(message) => {
                    self.call.violation.get_or_insert(message);
                    items.push(None);
                    continue;
                }
            };
            let start = data.len();
            let found = store.get_into(key, &mut data).map_err(fault)?;
            items.push(found.then(|| types::Span { offset: start as u32, len: (data.len() - start) as u32 }));
        }
        Ok(types::OptionalByteList { data, items })
    }

    fn write_many(
        &mut self,
        this: Resource<StoreHandle>,
        writes: types::WriteBatch,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        // A read-only store is refused first, then every span is checked
        // before anything is written: a bad batch writes nothing.
        if let Err(refused) = self.writable_store(&this)? {
            return Ok(Err(refused));
        }
        for (k, v) in &writes.writes {
            if let Err(message) =
                slice(&writes.data, *k).and_then(|_| v.map_or(Ok(&[][..]), |v| slice(&writes.data, v)))
            {
                return Ok(Err(self.violation(format!("write-many: {message}"))));
            }
        }
        let data = &writes.data;
        let bytes = |s: types::Span| data[s.offset as usize..(s.offset + s.len) as usize].to_vec();
        self.write_pairs(&this, writes.writes.iter().map(|(k, v)| (bytes(*k), v.map(bytes))))
    }

    fn range(
        &mut self,
        this: Resource<StoreHandle>,
        start: Option<Vec<u8>>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> wasmtime::Result<types::Entries> {
        let index = self.table.get(&this)?.index;
        let lower = start.as_deref().map_or(Bound::Unbounded, Bound::Included);
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let found = self.call.stores.get(index).range(lower, upper, limit as usize).map_err(fault)?;
        let mut data = Vec::new();
        let items = found.iter().map(|(k, v)| (push_span(&mut data, k), push_span(&mut data, v))).collect();
        Ok(types::Entries { data, items })
    }

    fn drop(&mut self, this: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl emitter::Host for GuestState {
    fn emit(&mut self, batch: types::OutputBatch) -> wasmtime::Result<Result<(), types::Error>> {
        let types::OutputBatch { data, headers, records } = batch;
        let span = |s: types::Span| (s.offset, s.len);
        let entries = records.iter().map(|r| weir_sdk::packed::OutputEntry {
            output: r.output,
            key: r.key.map(span),
            value: r.value.map(span),
            timestamp: r.timestamp,
            first_header: r.first_header,
            header_count: r.header_count,
            input_index: r.input_index,
        });
        Ok(self.take_emits(&data, &headers, entries))
    }
}

impl context::Host for GuestState {
    fn task_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.info.task_id.clone())
    }
    fn processor_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.info.processor.clone())
    }
    fn partition(&mut self) -> wasmtime::Result<u32> {
        Ok(self.info.partition)
    }
    fn outputs(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.info.outputs.clone())
    }
    fn stream_time(&mut self) -> wasmtime::Result<i64> {
        self.call.used_stream_time = true;
        Ok(self.call.stream_time)
    }
    fn wall_clock_time(&mut self) -> wasmtime::Result<i64> {
        Ok(self.wall_clock.load(Ordering::Relaxed))
    }
    fn schedule(&mut self, kind: types::Punctuation, interval_ms: u64) -> wasmtime::Result<Result<(), types::Error>> {
        if matches!(kind, types::Punctuation::StreamTime) {
            self.call.used_stream_time = true;
        }
        self.call.schedules.push((kind, interval_ms));
        Ok(Ok(()))
    }
    fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        let (app, processor, task) = (&self.info.app, &self.info.processor, &self.info.task_id);
        match level {
            types::LogLevel::Trace => {
                tracing::trace!(target: "weir::guest", app, processor, task, "{message}")
            }
            types::LogLevel::Debug => {
                tracing::debug!(target: "weir::guest", app, processor, task, "{message}")
            }
            types::LogLevel::Info => {
                tracing::info!(target: "weir::guest", app, processor, task, "{message}")
            }
            types::LogLevel::Warn => {
                tracing::warn!(target: "weir::guest", app, processor, task, "{message}")
            }
            types::LogLevel::Error => {
                tracing::error!(target: "weir::guest", app, processor, task, "{message}")
            }
        }
        Ok(())
    }
}

/// The memory cap of one instance. Growing past it traps with
/// [`MemoryLimitExceeded`] (rather than failing the grow), so the executor can
/// tell the guest exactly why it was stopped.
pub(crate) struct GuestLimiter {
    memory_bytes: usize,
}

/// The trap raised when a guest grows its memory past its limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: the guest asked for {desired} bytes of linear memory, its limit is {limit}")]
pub struct MemoryLimitExceeded {
    pub desired: usize,
    pub limit: usize,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitExceeded { desired, limit: self.memory_bytes }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// WASI's wall clock, pinned to the task's notion of wall-clock time.
struct TaskClock(Arc<AtomicI64>);

impl HostWallClock for TaskClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed).max(0) as u64)
    }
}

/// Longest line kept from a guest's output; longer lines are cut.
const MAX_LINE: usize = 4096;
/// How much recent stderr is kept to explain a trap.
const MAX_RECENT: usize = 2048;

/// A guest's stdout or stderr: each line goes to the host log, tagged with
/// app, processor and task; stderr also keeps its recent lines.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<OutputState>>,
}

struct OutputState {
    info: Arc<InstanceInfo>,
    stream: &'static str,
    line: Vec<u8>,
    recent: String,
}

impl GuestOutput {
    fn new(info: Arc<InstanceInfo>, stream: &'static str) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(OutputState { info, stream, line: Vec::new(), recent: String::new() })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for &b in bytes {
            if b == b'\n' {
                state.flush_line();
            } else if state.line.len() < MAX_LINE {
                state.line.push(b);
            }
        }
    }

    /// Forgets recent output (at the start of a call).
    pub(crate) fn clear_recent(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).recent.clear();
    }

    /// What the guest wrote since the last clear, including an unfinished line.
    pub(crate) fn recent(&self) -> String {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !state.line.is_empty() {
            state.flush_line();
        }
        state.recent.trim().to_owned()
    }
}

impl OutputState {
    fn flush_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        let info = &self.info;
        tracing::info!(
            target: "weir::guest",
            app = %info.app, processor = %info.processor, task = %info.task_id, stream = self.stream,
            "{line}"
        );
        if self.recent.len() + line.len() < MAX_RECENT {
            self.recent.push_str(&line);
            self.recent.push('\n');
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
