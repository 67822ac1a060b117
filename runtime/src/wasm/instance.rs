//! One live processor instance and its calls.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::Store;

use super::bindings::weir::processor0_1_0::types;
use super::bindings_v2::weir::processor0_2_0::batch_info::BatchContext;
use super::bindings_v3::weir::processor0_3_0::packed::PackedBatch;
use super::component::{LoadedComponent, Pre};
use super::engine::WasmEngine;
use super::host::{GuestState, HostFault, InstanceInfo, MemoryLimitExceeded};
use super::{Punctuation, TimeDomain};
use crate::record::{Emitted, TaskRecord};
use crate::state::TaskStores;
use crate::topology::Limits;

/// Time as the guest sees it during a call.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallTime {
    pub stream_time: i64,
    pub wall_clock: i64,
}

/// What a successful call produced.
#[derive(Debug, Default)]
pub struct CallOk {
    pub emitted: Vec<Emitted>,
    /// Schedules requested during the call: (kind, interval ms; 0 cancels).
    pub schedules: Vec<(Punctuation, u64)>,
    /// Stream-time timers set during the call: (time, index in the batch
    /// of the record that set it).
    pub stream_timers_set: Vec<(i64, u32)>,
}

/// The result of a call.
pub type CallOutcome = Result<CallOk, CallFailure>;

/// Why a call failed. Everything but `HostFault` is the guest's doing and
/// goes to the processor's error policy; a host fault aborts the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest returned an error.
    GuestError,
    /// The guest trapped (a Rust panic, an `unreachable`, ...).
    Trap,
    /// The call ran past its time limit.
    Timeout,
    /// The guest grew its memory past its limit.
    MemoryLimit,
    /// The guest broke the contract (e.g. emitted to an undeclared output).
    ContractViolation,
    /// Storage under the host failed during the call.
    HostFault,
}

impl FailureKind {
    /// The name used in dead-letter headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::GuestError => "guest-error",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryLimit => "memory-limit",
            FailureKind::ContractViolation => "contract-violation",
            FailureKind::HostFault => "host-fault",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallFailure {
    pub kind: FailureKind,
    pub message: String,
    /// For `process`: the index of the record the guest blamed.
    pub index: Option<u32>,
    /// The instance cannot be called again and must be replaced.
    pub poisoned: bool,
}

/// Why an instance could not be created.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot instantiate processor `{processor}`: {message}")]
pub struct InstantiateError {
    pub processor: String,
    pub message: String,
}

/// The exports of an instance, by contract version.
enum Bindings {
    V1(super::bindings::Processor),
    V2(super::bindings_v2::Processor),
    V3(super::bindings_v3::Processor),
}

/// One instance of a processor component, for one processor in one task.
pub struct ProcessorInstance {
    store: Store<GuestState>,
    bindings: Bindings,
    component: Arc<LoadedComponent>,
    timeout_ticks: u64,
    timeout: std::time::Duration,
    /// Reused between calls: the flat batch handed to `process`.
    batch: types::Batch,
    /// Reused between calls: 0.2.0's batch context.
    context: BatchContext,
    /// Reused between calls: 0.3.0's packed batch.
    packed: PackedBatch,
}

impl ProcessorInstance {
    /// Instantiates `component` with the given limits (from its precompiled
    /// form: tens of microseconds with the pooling allocator).
    pub fn instantiate(
        engine: &WasmEngine,
        component: Arc<LoadedComponent>,
        info: Arc<InstanceInfo>,
        limits: Limits,
    ) -> Result<Self, InstantiateError> {
        let processor = info.processor.clone();
        let mut store = Store::new(engine.engine(), GuestState::new(info, limits.memory_bytes));
        store.limiter(|s| &mut s.limits);
        let timeout_ticks = WasmEngine::ticks_for(limits.call_timeout);
        store.set_epoch_deadline(timeout_ticks);
        let bindings = match component.pre() {
            Pre::V1(pre) => pre.instantiate(&mut store).map(Bindings::V1),
            Pre::V2(pre) => pre.instantiate(&mut store).map(Bindings::V2),
            Pre::V3(pre) => pre.instantiate(&mut store).map(Bindings::V3),
        }
        .map_err(|e| InstantiateError {
            processor: processor.clone(),
            message: describe_instantiate_error(&e, engine),
        })?;
        let batch = types::Batch { data: Vec::new(), topics: Vec::new(), headers: Vec::new(), records: Vec::new() };
        let context = BatchContext { stream_times: Vec::new(), sources: Vec::new() };
        Ok(ProcessorInstance {
            store,
            bindings,
            component,
            timeout_ticks,
            timeout: limits.call_timeout,
            batch,
            context,
            packed: empty_packed(),
        })
    }

    pub fn component(&self) -> &Arc<LoadedComponent> {
        &self.component
    }

    /// True when the component was built against contract 0.2.0 or later:
    /// it gets each record's stream time and may set timers.
    pub fn has_record_stream_time(&self) -> bool {
        matches!(self.bindings, Bindings::V2(_) | Bindings::V3(_))
    }

    /// Calls `init` with the processor's config.
    pub fn init(&mut self, stores: &mut TaskStores, time: CallTime, config: &[(String, String)]) -> CallOutcome {
        self.call(stores, time, |b, s| {
            let result = match b {
                Bindings::V1(b) => b.call_init(s, config)?,
                Bindings::V2(b) => b.call_init(s, config)?,
                Bindings::V3(b) => b.call_init(s, config)?,
            };
            Ok(result.map_err(|e| (None, e.message)))
        })
    }

    /// Calls `process` with a batch of records; `stream_times[i]` is the
    /// stream time at which `records[i]` is processed (a 0.1.0 guest asks
    /// for the call's: `time.stream_time`).
    pub fn process(
        &mut self,
        stores: &mut TaskStores,
        time: CallTime,
        records: &[TaskRecord],
        stream_times: &[i64],
    ) -> CallOutcome {
        if let Bindings::V3(_) = self.bindings {
            let mut packed = std::mem::replace(&mut self.packed, empty_packed());
            let sources = &self.store.data().info.sources;
            super::packed::fill_packed(&mut packed, records, stream_times, |t| {
                sources.get(t).cloned().unwrap_or_default()
            });
            let outcome = self.call(stores, time, |b, s| match b {
                Bindings::V3(b) => Ok(b.call_process(s, &packed)?.map_err(|e| (Some(e.index), e.error.message))),
                _ => unreachable!("checked above"),
            });
            self.packed = packed;
            return outcome;
        }
        let mut batch = std::mem::replace(&mut self.batch, encode_batch(&[]));
        fill_batch(&mut batch, records);
        let mut context =
            std::mem::replace(&mut self.context, BatchContext { stream_times: Vec::new(), sources: Vec::new() });
        if let Bindings::V2(_) = self.bindings {
            context.stream_times.clear();
            context.stream_times.extend_from_slice(stream_times);
            let sources = &self.store.data().info.sources;
            context.sources.clear();
            context.sources.extend(batch.topics.iter().map(|t| sources.get(t).cloned().unwrap_or_default()));
        }
        let outcome = self.call(stores, time, |b, s| {
            let result = match b {
                Bindings::V1(b) => b.call_process(s, &batch)?,
                Bindings::V2(b) => b.call_process(s, &batch, &context)?,
                Bindings::V3(_) => unreachable!("packed above"),
            };
            Ok(result.map_err(|e| (Some(e.index), e.error.message)))
        });
        self.batch = batch;
        self.context = context;
        outcome
    }

    /// Calls `on-timer` (0.2.0 and 0.3.0 components only: a 0.1.0 one
    /// cannot set timers, so the executor never has one to fire for it).
    pub fn on_timer(
        &mut self,
        stores: &mut TaskStores,
        time: CallTime,
        domain: TimeDomain,
        key: &[u8],
        at: i64,
    ) -> CallOutcome {
        self.call(stores, time, |b, s| match b {
            Bindings::V1(_) => Ok(Err((None, "a 0.1.0 component has no timers".to_owned()))),
            Bindings::V2(b) => Ok(b.call_on_timer(s, domain, &key.to_vec(), at)?.map_err(|e| (None, e.message))),
            Bindings::V3(b) => Ok(b.call_on_timer(s, domain, &key.to_vec(), at)?.map_err(|e| (None, e.message))),
        })
    }

    /// True when the last call asked for stream time or set a stream-time
    /// schedule.
    pub fn used_stream_time(&self) -> bool {
        self.store.data().call.used_stream_time
    }

    /// Calls `punctuate`.
    pub fn punctuate(
        &mut self,
        stores: &mut TaskStores,
        time: CallTime,
        kind: Punctuation,
        timestamp: i64,
    ) -> CallOutcome {
        self.call(stores, time, |b, s| {
            let result = match b {
                Bindings::V1(b) => b.call_punctuate(s, kind, timestamp)?,
                Bindings::V2(b) => b.call_punctuate(s, kind, timestamp)?,
                Bindings::V3(b) => b.call_punctuate(s, kind, timestamp)?,
            };
            Ok(result.map_err(|e| (None, e.message)))
        })
    }

    fn call(
        &mut self,
        stores: &mut TaskStores,
        time: CallTime,
        f: impl FnOnce(&Bindings, &mut Store<GuestState>) -> wasmtime::Result<Result<(), (Option<u32>, String)>>,
    ) -> CallOutcome {
        let data = self.store.data_mut();
        data.call.stores = std::mem::take(stores);
        data.call.stream_time = time.stream_time;
        data.call.used_stream_time = false;
        data.call.stream_timers_set.clear();
        data.wall_clock.store(time.wall_clock, Ordering::Relaxed);
        data.stderr.clear_recent();
        self.store.set_epoch_deadline(self.timeout_ticks);

        let result = f(&self.bindings, &mut self.store);

        let data = self.store.data_mut();
        *stores = std::mem::take(&mut data.call.stores);
        let emitted = std::mem::take(&mut data.call.emitted);
        let schedules = std::mem::take(&mut data.call.schedules);
        let stream_timers_set = std::mem::take(&mut data.call.stream_timers_set);
        let violation = data.call.violation.take();
        match result {
            Ok(Ok(())) => match violation {
                None => Ok(CallOk { emitted, schedules, stream_timers_set }),
                Some(message) => {
                    Err(CallFailure { kind: FailureKind::ContractViolation, message, index: None, poisoned: false })
                }
            },
            Ok(Err((index, message))) => {
                let kind = if violation.is_some() { FailureKind::ContractViolation } else { FailureKind::GuestError };
                Err(CallFailure { kind, message, index, poisoned: false })
            }
            Err(trap) => Err(self.classify_trap(trap)),
        }
    }

    fn classify_trap(&mut self, trap: wasmtime::Error) -> CallFailure {
        if let Some(HostFault(e)) = trap.downcast_ref::<HostFault>() {
            return CallFailure { kind: FailureKind::HostFault, message: e.to_string(), index: None, poisoned: true };
        }
        if let Some(e) = trap.downcast_ref::<MemoryLimitExceeded>() {
            return CallFailure { kind: FailureKind::MemoryLimit, message: e.to_string(), index: None, poisoned: true };
        }
        if let Some(wasmtime::Trap::Interrupt) = trap.downcast_ref::<wasmtime::Trap>() {
            return CallFailure {
                kind: FailureKind::Timeout,
                message: format!("call exceeded its time limit of {:?} and was stopped", self.timeout),
                index: None,
                poisoned: true,
            };
        }
        let what = match trap.downcast_ref::<wasmtime::Trap>() {
            Some(code) => format!("guest trapped: {code}"),
            None => format!("guest trapped: {trap}"),
        };
        let what = match guest_location(&trap) {
            Some(at) => format!("{what} at {at}"),
            None => what,
        };
        let stderr = self.store.data().stderr.recent();
        let message = if stderr.is_empty() { what } else { format!("{what}; guest stderr: {stderr}") };
        CallFailure { kind: FailureKind::Trap, message, index: None, poisoned: true }
    }
}

fn describe_instantiate_error(e: &wasmtime::Error, engine: &WasmEngine) -> String {
    let text: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let text = text.join(": ");
    if text.contains("concurrent") || text.contains("limit") && text.contains("instance") {
        format!(
            "{text} (the engine allows {} live processor instances; raise wasm.max_instances)",
            engine.config().max_instances
        )
    } else {
        text
    }
}

/// A packed batch with no buffers yet (the generated type has no `Default`).
fn empty_packed() -> PackedBatch {
    PackedBatch { data: Vec::new(), records: Vec::new(), topics: Vec::new(), sources: Vec::new(), headers: Vec::new() }
}

fn encode_batch(records: &[TaskRecord]) -> types::Batch {
    let mut batch = types::Batch { data: Vec::new(), topics: Vec::new(), headers: Vec::new(), records: Vec::new() };
    fill_batch(&mut batch, records);
    batch
}

/// The bytes of every byte string of `records` (keys, values, old values,
/// header values): what a batch's `data` holds.
pub(super) fn data_size(records: &[TaskRecord]) -> usize {
    records
        .iter()
        .map(|r| {
            r.key.as_ref().map_or(0, Vec::len)
                + r.value.as_ref().map_or(0, Vec::len)
                + r.old_value.as_ref().map_or(0, Vec::len)
                + r.headers.iter().map(|(_, v)| v.len()).sum::<usize>()
        })
        .sum()
}

/// The index of `topic` among a batch's `topics` (by pointer, else by
/// name), and whether it is new there.
pub(super) fn topic_index<'a>(
    topics: &mut Vec<&'a std::sync::Arc<str>>,
    topic: &'a std::sync::Arc<str>,
) -> (usize, bool) {
    match topics.iter().position(|t| std::sync::Arc::ptr_eq(t, topic) || *t == topic) {
        Some(i) => (i, false),
        None => {
            topics.push(topic);
            (topics.len() - 1, true)
        }
    }
}

/// Lays records out flat: every byte string in `data`, records by span.
fn fill_batch(batch: &mut types::Batch, records: &[TaskRecord]) {
    batch.data.clear();
    batch.topics.clear();
    batch.headers.clear();
    batch.records.clear();
    batch.data.reserve(data_size(records));
    let mut topics: Vec<&std::sync::Arc<str>> = Vec::new();
    for r in records {
        let mut push = |bytes: &Option<Vec<u8>>| {
            bytes.as_ref().map(|b| {
                let span = types::Span { offset: batch.data.len() as u32, len: b.len() as u32 };
                batch.data.extend_from_slice(b);
                span
            })
        };
        let key = push(&r.key);
        let value = push(&r.value);
        let old_value = push(&r.old_value);
        let first_header = batch.headers.len() as u32;
        for (name, v) in &r.headers {
            let span = types::Span { offset: batch.data.len() as u32, len: v.len() as u32 };
            batch.data.extend_from_slice(v);
            batch.headers.push(types::Header { name: name.clone(), value: span });
        }
        let (topic, new) = topic_index(&mut topics, &r.topic);
        if new {
            batch.topics.push(r.topic.to_string());
        }
        batch.records.push(types::Record {
            key,
            value,
            old_value,
            timestamp: r.timestamp,
            first_header,
            header_count: r.headers.len() as u32,
            topic: topic as u32,
            partition: r.partition,
            offset: r.offset,
        });
    }
}

/// `file:line` of the innermost frame of a trap in the guest's own code
/// (not the standard library or a dependency), when the component carries
/// line tables.
fn guest_location(trap: &wasmtime::Error) -> Option<String> {
    let backtrace = trap.downcast_ref::<wasmtime::WasmBacktrace>()?;
    backtrace.frames().iter().flat_map(|f| f.symbols()).find_map(|s| {
        let file = s.file()?;
        let foreign = file.contains("/rustc/") || file.contains("/.cargo/") || file.contains("/library/");
        (!foreign).then(|| format!("{file}:{}", s.line().unwrap_or(0)))
    })
}
