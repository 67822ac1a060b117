//! The producer side of a Kafka worker: outputs sent into the open
//! transaction as they come, and commits, which run in the background while
//! the worker goes on polling and processing.
//!
//! A commit has two halves. On the worker thread, [`Worker::begin_commit`]
//! freezes every task's open work (`Task::prepare_commit`: its store writes
//! move to the overlay's committing layer, where reads still see them),
//! sends the outputs not sent yet and the changelog records, and gathers
//! the input offsets with each task's stream time. A commit thread then
//! waits for every acknowledgement and, under exactly-once, sends the
//! offsets to the transaction and commits it. Meanwhile the worker keeps
//! processing; what the tasks produce stays in them, because a producer
//! takes no records while it commits a transaction and the next one cannot
//! begin before that. [`Worker::settle`] takes the commit's answer: on
//! success the frozen writes go to local RocksDB with their changelog
//! checkpoints (at-least-once: the offsets are committed first), and the
//! held outputs go out into a new transaction; on failure everything
//! uncommitted, frozen or not, is dropped and the consumer rewinds to the
//! committed offsets (or, fenced, every task stops).
//!
//! At most one commit is in flight. The worker waits for it before the next
//! commit, a rebalance, a task's failure, a stop, and at once when a task
//! runs a swapped version on probation (its first commit must prove what it
//! processed, no more). `weir_commit_seconds` is a commit from its start to
//! its answer, `weir_commit_blocked_seconds` how long it held processing up,
//! `weir_processed_during_commit_total` the records processed meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use rocksdb::WriteBatch;

use super::runner::KAFKA_TIMEOUT;
use super::worker::{GroupConsumer, OwnedTask, STREAM_TIME_METADATA, Worker};
use crate::record::ProducedRecord;
use crate::state::rocks::StoreKey;
use crate::status::TaskState;
use crate::task::{Task, TaskId};
use crate::topology::StoreId;

/// The worker's producer; shared with the commit thread.
pub(super) type TransactionalProducer = Arc<BaseProducer<DeliveryContext>>;

/// Counts deliveries and remembers the last offset written to each
/// changelog partition (the checkpoint its local state reaches).
#[derive(Default)]
pub(super) struct DeliveryContext {
    pub(super) pending: AtomicUsize,
    /// Changelog slot (see [`changelog_slot`]) → last offset delivered.
    last_offsets: Mutex<HashMap<usize, i64>>,
    /// The first delivery error since the last check.
    error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        match result {
            Ok(m) => {
                if slot != NO_SLOT {
                    let mut last = self.last_offsets.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = last.entry(slot).or_insert(-1);
                    *entry = (*entry).max(m.offset());
                }
            }
            Err((e, m)) => {
                let mut error = self.error.lock().unwrap_or_else(|e| e.into_inner());
                error.get_or_insert_with(|| format!("delivery to {}/{} failed: {e}", m.topic(), m.partition()));
            }
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

const NO_SLOT: usize = usize::MAX;

/// A changelog partition as a delivery opaque: store index and partition.
fn changelog_slot(store: StoreId, partition: u32) -> usize {
    (store << 20) | partition as usize
}
/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommitError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Failed(String),
}

/// Fatal transaction errors (fenced, ...) end the producer for good.
pub(super) fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => false,
    }
}

/// The last value of each key a store partition was given (`None` = deleted).
type KeyWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The input offsets a commit commits for one task: (topic, partition) →
/// the next offset to read.
type TaskPositions = Vec<((String, u32), i64)>;

/// A commit whose second half runs on a commit thread.
pub(super) struct InFlightCommit {
    answer: JoinHandle<Result<Answered, CommitError>>,
    /// The frozen store writes, for local RocksDB once they are committed.
    local: Vec<(StoreId, u32, KeyWrites)>,
    /// The tasks whose open work it covers, with the input offsets it
    /// commits for each (the next offset to read).
    tasks: Vec<(TaskId, TaskPositions)>,
    /// Tasks that were on probation when it began.
    on_probation: Vec<TaskId>,
    /// It ends a swapped version's probation (`TaskCommit::proves_probation`).
    proves_probation: bool,
    started: Instant,
    /// How long preparing it held the worker up.
    preparing: Duration,
}

/// What the commit thread did.
struct Answered {
    offsets: TopicPartitionList,
    deliveries: Duration,
    /// Offsets sent and the transaction committed (exactly-once).
    transaction: Duration,
    finished: Instant,
}

impl Worker {
    /// Commits every task's open work and waits for the answer: before a
    /// rebalance moves partitions, and at a stop.
    pub(super) fn commit_all(&mut self, consumer: &GroupConsumer) {
        self.settle(consumer);
        if let Some(update) = self.cluster_holds()
            && self.has_work_of(update)
        {
            // Tasks close (a rebalance, a stop) while the cluster holds an
            // update: its work may not be committed, so it is dropped; the
            // partitions' next owner reads it again.
            tracing::info!(app = %self.app(), update, "tasks close while the cluster holds an update: open work dropped");
            self.abandon_open_work(consumer);
            self.last_commit = Instant::now();
            return;
        }
        self.begin_commit(consumer);
        self.settle(consumer);
        self.last_commit = Instant::now();
    }

    /// The commit in flight, if any, has its answer (settling will not wait).
    pub(super) fn commit_answered(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|c| c.answer.is_finished())
    }

    /// A commit is in flight: outputs stay in their tasks until it is settled.
    pub(super) fn committing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Starts a commit of every task's open work (see the module docs);
    /// nothing happens when nothing is open. The previous commit must have
    /// been settled.
    pub(super) fn begin_commit(&mut self, consumer: &GroupConsumer) {
        debug_assert!(self.in_flight.is_none(), "a commit is already in flight");
        // Records sent without anything else open (wall-clock punctuation)
        // are committed too: a transaction left open would time out.
        // The work of an update the cluster holds stays out of commits
        // until it is released (see `ClusterHold`); the other tasks commit.
        // A hold refused after this check is a rollback recorded already,
        // whose work the next line drops.
        let held = self.cluster_holds();
        self.drop_rolled_back_work(consumer);
        let committable =
            |o: &OwnedTask| Some(o.generation) != held && o.task.as_ref().is_some_and(Task::has_uncommitted);
        let open = self.sent_in_transaction || self.tasks.values().any(committable);
        if self.fatal.is_some() || !open {
            return;
        }
        let started = Instant::now();
        match self.prepare_commit(consumer, started, held) {
            Ok(in_flight) => {
                // A commit that ends a swapped version's probation is waited
                // for at once: a trap after it is no longer the version's
                // probation failing (it would be, in the middle of the commit).
                // So is one while an update waits for tasks to switch: they
                // switch only with nothing uncommitted and nothing in flight.
                let proves = in_flight.proves_probation;
                self.in_flight = Some(in_flight);
                let generation = self.control.generation();
                let switch_waits = self.tasks.values().any(|o| o.task.is_some() && o.generation != generation);
                if proves || switch_waits {
                    self.settle(consumer);
                }
            }
            Err(e) => {
                self.control.metrics.commit_blocked.observe(started.elapsed());
                self.commit_failed(consumer, e, started);
            }
        }
    }

    /// The worker-thread half: freeze, send, gather offsets; then hand the
    /// rest to a commit thread.
    fn prepare_commit(
        &mut self,
        consumer: &GroupConsumer,
        started: Instant,
        held: Option<u64>,
    ) -> Result<InFlightCommit, CommitError> {
        if self.exactly_once && !self.in_transaction {
            if !self.finish_pending_abort() {
                return Err(CommitError::Failed("an earlier abort has not finished yet".into()));
            }
            self.producer.begin_transaction()?;
            self.in_transaction = true;
        }
        let mut offsets = TopicPartitionList::new();
        let mut local = Vec::new();
        let mut tasks = Vec::new();
        let mut on_probation = Vec::new();
        let mut proves_probation = false;
        for (id, owned) in &mut self.tasks {
            let Some(task) = owned.task.as_mut() else { continue };
            if !task.has_uncommitted() || Some(owned.generation) == held {
                continue;
            }
            if task.in_probation() {
                on_probation.push(*id);
            }
            let commit = task.prepare_commit();
            proves_probation |= commit.proves_probation;
            for p in &commit.produced {
                send(&self.producer, p, NO_SLOT)?;
            }
            for change in &commit.changes {
                let slot = changelog_slot(change.store, change.partition);
                let mut writes = Vec::with_capacity(change.writes.len());
                for (k, v) in &change.writes {
                    let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(change.changelog, slot)
                        .partition(change.partition as i32)
                        .key(k.as_slice());
                    if let Some(v) = v.as_deref() {
                        record = record.payload(v);
                    }
                    send_raw(&self.producer, record)?;
                    writes.push(((*k).clone(), (*v).clone()));
                }
                local.push((change.store, change.partition, writes));
            }
            let mut positions = Vec::with_capacity(commit.positions.len());
            for ((topic, p), offset) in &commit.positions {
                offsets.add_partition_offset(topic, *p as i32, Offset::Offset(*offset))?;
                if let (Some(stream_time), Some(mut e)) = (commit.stream_time, offsets.find_partition(topic, *p as i32))
                {
                    e.set_metadata(format!("{STREAM_TIME_METADATA}{stream_time}"));
                }
                positions.push(((topic.to_string(), *p), *offset));
            }
            tasks.push((*id, positions));
        }
        let metadata =
            if self.exactly_once {
                Some(consumer.group_metadata().ok_or_else(|| {
                    CommitError::Failed("the consumer has no group metadata (not in the group)".into())
                })?)
            } else {
                None
            };
        let producer = self.producer.clone();
        let answer = std::thread::Builder::new()
            .name("weir-commit".into())
            .spawn(move || finish_in_background(&producer, offsets, metadata))
            .map_err(|e| CommitError::Failed(format!("cannot start a commit thread: {e}")))?;
        Ok(InFlightCommit {
            answer,
            local,
            tasks,
            on_probation,
            proves_probation,
            started,
            preparing: started.elapsed(),
        })
    }

    /// Takes the answer of the commit in flight (waiting for it if need
    /// be) and acts on it: see the module docs. Nothing when none is.
    pub(super) fn settle(&mut self, consumer: &GroupConsumer) {
        let Some(in_flight) = self.in_flight.take() else { return };
        let settling = Instant::now();
        let result = in_flight
            .answer
            .join()
            .unwrap_or_else(|_| Err(CommitError::Failed("the commit thread panicked".into())))
            .and_then(|answered| {
                self.control.metrics.commit_deliveries.observe(answered.deliveries);
                let offsets_at = Instant::now();
                if !self.exactly_once && answered.offsets.count() > 0 {
                    consumer.commit(&answered.offsets, CommitMode::Sync)?;
                }
                self.control.metrics.commit_offsets.observe(answered.transaction + offsets_at.elapsed());
                // At-least-once ends with the offsets committed here.
                Ok(if self.exactly_once { answered.finished } else { Instant::now() })
            });
        match result {
            Ok(finished) => {
                self.control.metrics.commit.observe(finished.duration_since(in_flight.started));
                self.in_transaction = false;
                self.sent_in_transaction = false;
                self.apply_committed(in_flight.local, &in_flight.tasks, &in_flight.on_probation);
                self.send_held(consumer);
            }
            Err(e) => self.commit_failed(consumer, e, in_flight.started),
        }
        self.control.metrics.commit_blocked.observe(in_flight.preparing + settling.elapsed());
    }

    /// Committed: the stores' local copies catch up, with checkpoints, and
    /// the tasks hear it.
    fn apply_committed(
        &mut self,
        local: Vec<(StoreId, u32, KeyWrites)>,
        tasks: &[(TaskId, TaskPositions)],
        on_probation: &[TaskId],
    ) {
        let app = self.app();
        let last = std::mem::take(&mut *self.producer.context().last_offsets.lock().unwrap_or_else(|e| e.into_inner()));
        let topology = self.control.current().1.topology.clone();
        let mut batch = WriteBatch::default();
        let db = self.backend.db().clone();
        for (store, partition, writes) in &local {
            let key = StoreKey { store: self.store_ids[store], partition: *partition };
            db.write_state(&mut batch, key, writes.iter().map(|(k, v)| (k, v)));
            if let Some(offset) = last.get(&changelog_slot(*store, *partition)) {
                let name = &topology.stores[*store].name;
                db.put_meta(&mut batch, &checkpoint_key(&app, name, *partition), &(offset + 1).to_be_bytes());
            }
        }
        let stored = db.write(batch);
        for (id, positions) in tasks {
            let Some(owned) = self.tasks.get_mut(id) else { continue };
            for (input, offset) in positions {
                owned.inputs.entry(input.clone()).or_insert((0, 0)).0 = *offset;
            }
            let Some(task) = owned.task.as_mut() else { continue };
            if let Err(e) = &stored {
                // The changelog has it: a restore from the older checkpoint redoes it.
                tracing::error!(app, task = %id, error = %e, "cannot apply committed store writes locally; they will be restored from the changelog");
                task.abort();
                owned.task = None;
                owned.state = TaskState::Stalled;
                owned.error = Some(format!("local state: {e}"));
                continue;
            }
            task.commit_succeeded();
            owned.commits += 1;
            let proven = (on_probation.contains(id) && !task.in_probation()) || owned.proving;
            if proven && self.control.owns(owned.generation) {
                self.control.passed(owned.generation);
            }
            owned.proving = false;
        }
    }

    /// Sends what the tasks produced while a commit was in flight.
    fn send_held(&mut self, consumer: &GroupConsumer) {
        let held: Vec<ProducedRecord> =
            self.tasks.values_mut().filter_map(|o| o.task.as_mut()).flat_map(Task::take_produced).collect();
        self.send_eagerly(consumer, held);
    }

    /// A commit failed: open work dropped and the consumer rewound, or
    /// (fenced, fatal) every task stopped.
    fn commit_failed(&mut self, consumer: &GroupConsumer, e: CommitError, started: Instant) {
        self.control.metrics.commit.observe(started.elapsed());
        match e {
            CommitError::Kafka(e) if is_fatal(&e) => self.stop_fatally(&e),
            e => {
                tracing::warn!(app = %self.app(), error = %e, "commit failed: open work dropped, rewinding to the committed offsets");
                self.abandon_open_work(consumer);
            }
        }
    }

    /// Sends a task's outputs at once, into the open transaction (begun
    /// here if none is): the broker receives them while processing goes
    /// on, and the commit only waits for the last acknowledgements.
    /// Under exactly-once they stay invisible to read_committed consumers
    /// until the commit; an abort discards them.
    pub(super) fn send_eagerly(&mut self, consumer: &GroupConsumer, produced: Vec<ProducedRecord>) {
        debug_assert!(produced.is_empty() || self.in_flight.is_none(), "sends while a commit is in flight");
        if produced.is_empty() || self.fatal.is_some() {
            return;
        }
        if self.exactly_once && !self.in_transaction {
            if !self.finish_pending_abort() {
                return self.abandon_open_work(consumer);
            }
            match self.producer.begin_transaction() {
                Ok(()) => self.in_transaction = true,
                Err(e) if is_fatal(&e) => return self.stop_fatally(&e),
                Err(e) => {
                    tracing::warn!(app = %self.app(), error = %e, "cannot begin a transaction: open work dropped");
                    return self.abandon_open_work(consumer);
                }
            }
        }
        self.sent_in_transaction = true;
        for p in &produced {
            if let Err(e) = send(&self.producer, p, NO_SLOT) {
                tracing::warn!(app = %self.app(), error = %e, "send failed: open work dropped, rewinding");
                return self.abandon_open_work(consumer);
            }
        }
    }

    /// Gives up the open transaction: aborted (exactly-once), every task's
    /// open work dropped, the consumer back at the committed offsets. A
    /// commit in flight is settled first (its failure leads back here).
    pub(super) fn abandon_open_work(&mut self, consumer: &GroupConsumer) {
        self.settle(consumer);
        if self.exactly_once && (self.in_transaction || self.abort_pending) {
            match self.producer.abort_transaction(KAFKA_TIMEOUT) {
                Ok(()) => self.abort_pending = false,
                Err(abort) if is_fatal(&abort) => return self.stop_fatally(&abort),
                Err(abort) => {
                    // Called again before the next transaction begins.
                    tracing::warn!(error = %abort, "abort failed; it is tried again before the next transaction");
                    self.abort_pending = true;
                }
            }
        }
        self.in_transaction = false;
        self.sent_in_transaction = false;
        self.rewind(consumer);
    }

    /// Finishes an abort that failed before (see `abort_pending`); true
    /// when no abort is pending any more.
    fn finish_pending_abort(&mut self) -> bool {
        if !self.abort_pending {
            return true;
        }
        match self.producer.abort_transaction(KAFKA_TIMEOUT) {
            Ok(()) => {
                self.abort_pending = false;
                true
            }
            Err(e) if is_fatal(&e) => {
                self.stop_fatally(&e);
                false
            }
            Err(e) => {
                tracing::warn!(app = %self.app(), error = %e, "the earlier abort has not finished yet");
                false
            }
        }
    }

    /// Drops every task's open work and seeks back to the committed offsets.
    pub(super) fn rewind(&mut self, consumer: &GroupConsumer) {
        self.rewinds += 1;
        let context = self.producer.context();
        context.last_offsets.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // Deliveries purged with the aborted transaction must not fail the next commit.
        context.error.lock().unwrap_or_else(|e| e.into_inner()).take();
        for owned in self.tasks.values_mut() {
            if let Some(task) = owned.task.as_mut() {
                task.abort();
            }
        }
        let committed = match consumer.committed(KAFKA_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read committed offsets to rewind; restarting tasks");
                return;
            }
        };
        for e in committed.elements() {
            let to = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            if let Err(err) = consumer.seek(e.topic(), e.partition(), to, KAFKA_TIMEOUT) {
                tracing::warn!(topic = e.topic(), partition = e.partition(), error = %err, "seek failed");
            }
        }
    }

    /// The producer cannot go on (fenced by a newer instance with the same
    /// transactional id, or another fatal error): every task stops.
    pub(super) fn stop_fatally(&mut self, e: &KafkaError) {
        if let Some(in_flight) = self.in_flight.take() {
            let _ = in_flight.answer.join(); // Its outcome no longer matters.
        }
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        );
        let message = if fenced {
            format!(
                "this instance was fenced: another producer with transactional id `{}` took over ({e}); its tasks stopped, \
                 nothing of their open transaction was committed",
                self.transactional_id
            )
        } else {
            format!("the transactional producer `{}` failed fatally: {e}; its tasks stopped", self.transactional_id)
        };
        tracing::error!(app = %self.app(), "{message}");
        self.stop_all(&message);
        self.fatal = Some(message);
    }

    pub(super) fn stop_all(&mut self, message: &str) {
        for owned in self.tasks.values_mut() {
            if let Some(task) = owned.task.as_mut() {
                task.abort();
            }
            owned.task = None;
            owned.state = TaskState::Failed;
            owned.error = Some(message.to_owned());
        }
        self.publish_all();
    }
}

/// The commit thread's half: every acknowledgement awaited, then (with
/// group metadata: exactly-once) the offsets sent to the transaction and
/// the transaction committed.
fn finish_in_background(
    producer: &BaseProducer<DeliveryContext>,
    offsets: TopicPartitionList,
    metadata: Option<ConsumerGroupMetadata>,
) -> Result<Answered, CommitError> {
    let sent_at = Instant::now();
    serve_deliveries(producer)?;
    let deliveries = sent_at.elapsed();
    let transaction_at = Instant::now();
    if let Some(metadata) = metadata {
        if offsets.count() > 0 {
            producer.send_offsets_to_transaction(&offsets, &metadata, KAFKA_TIMEOUT)?;
        }
        producer.commit_transaction(KAFKA_TIMEOUT)?;
    }
    Ok(Answered { offsets, deliveries, transaction: transaction_at.elapsed(), finished: Instant::now() })
}

/// Waits for every delivery report; fails on the first failed delivery.
fn serve_deliveries(producer: &BaseProducer<DeliveryContext>) -> Result<(), CommitError> {
    let context = producer.context();
    super::serve_producer_until(producer, KAFKA_TIMEOUT, || context.pending.load(Ordering::Acquire) == 0);
    if let Some(e) = context.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(CommitError::Failed(e));
    }
    if context.pending.load(Ordering::Acquire) > 0 {
        return Err(CommitError::Failed(format!("deliveries unconfirmed after {KAFKA_TIMEOUT:?}")));
    }
    Ok(())
}

pub(super) fn checkpoint_key(app: &str, store: &str, partition: u32) -> String {
    format!("ckpt/{app}/{store}/{partition}")
}

fn send(producer: &BaseProducer<DeliveryContext>, p: &ProducedRecord, slot: usize) -> Result<(), KafkaError> {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &p.record.headers {
        headers = headers.insert(Header { key: k, value: Some(v) });
    }
    let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&p.topic, slot)
        .partition(p.partition as i32)
        .timestamp(p.record.timestamp)
        .headers(headers);
    if let Some(k) = p.record.key.as_deref() {
        record = record.key(k);
    }
    if let Some(v) = p.record.value.as_deref() {
        record = record.payload(v);
    }
    send_raw(producer, record)
}

fn send_raw(
    producer: &BaseProducer<DeliveryContext>,
    record: BaseRecord<'_, [u8], [u8], usize>,
) -> Result<(), KafkaError> {
    producer.context().pending.fetch_add(1, Ordering::AcqRel);
    super::send(producer, record).inspect_err(|_| {
        producer.context().pending.fetch_sub(1, Ordering::AcqRel);
    })
}
