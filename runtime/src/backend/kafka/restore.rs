//! Reading changelogs and global tables back into local stores: the
//! restore of newly assigned tasks (each store partition from its local
//! checkpoint to the changelog's end, read_committed, every partition of a
//! changelog at once, with progress), and the global tables' bootstrap and
//! updates.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rocksdb::WriteBatch;

use super::{KafkaSettings, PlainConsumer, QuietContext, client_config};
use crate::backend::embedded::EmbeddedBackend;
use crate::state::rocks::StoreKey;
use crate::status::InputStatus;
use crate::task::TaskId;
use crate::topology::{StoreId, Topology};

use super::commit::checkpoint_key;
use super::runner::KAFKA_TIMEOUT;
use super::worker::{OwnedTask, Worker};

/// One store partition of a task to bring up to its changelog's end.
struct RestoreJob {
    task: TaskId,
    store: String,
    partition: u32,
    key: StoreKey,
    checkpoint: String,
    from: i64,
}

impl Worker {
    /// Brings the local stores of newly assigned tasks up to the end of
    /// their changelogs, every partition of a changelog at once (one reader
    /// per changelog topic, as Kafka Streams' restore consumer does), with
    /// progress in each task's status. Answers per task: restored, or why not.
    pub(super) fn restore_all(&self, tasks: &mut BTreeMap<TaskId, OwnedTask>) -> BTreeMap<TaskId, Result<(), String>> {
        let started = Instant::now();
        let topology = self.control.current().1.topology.clone();
        let app = &topology.name;
        let db = self.backend.db().clone();
        let mut outcome: BTreeMap<TaskId, Result<(), String>> = tasks.keys().map(|id| (*id, Ok(()))).collect();
        // Per changelog topic: the partitions to read, from where.
        let mut jobs: BTreeMap<&str, Vec<RestoreJob>> = BTreeMap::new();
        for id in tasks.keys() {
            for &sid in &topology.subtopologies[id.subtopology].stores {
                let store = &topology.stores[sid];
                let Some(changelog) = &store.changelog else { continue };
                let key = StoreKey { store: self.store_ids[&sid], partition: id.partition };
                let checkpoint = checkpoint_key(app, &store.name, id.partition);
                let from = match local_checkpoint(&db, key, &checkpoint) {
                    Ok(from) => from,
                    Err(e) => {
                        outcome.insert(*id, Err(e));
                        continue;
                    }
                };
                jobs.entry(changelog.as_str()).or_default().push(RestoreJob {
                    task: *id,
                    store: store.name.clone(),
                    partition: id.partition,
                    key,
                    checkpoint,
                    from,
                });
            }
        }
        // An estimate of what is to come, for progress: the ends now, minus
        // where each starts (transaction markers count too).
        let mut estimate: BTreeMap<TaskId, (u64, u64)> = BTreeMap::new();
        for (changelog, jobs) in &jobs {
            for job in jobs {
                let end = partition_end(&self.settings, changelog, job.partition).unwrap_or(job.from);
                estimate.entry(job.task).or_default().1 += (end - job.from).max(0) as u64;
            }
        }
        for (changelog, jobs) in &jobs {
            let reading = Instant::now();
            let from: Vec<(u32, i64)> =
                jobs.iter().filter(|j| outcome[&j.task].is_ok()).map(|j| (j.partition, j.from)).collect();
            let read = read_partitions_to_end(
                &self.settings,
                changelog,
                &from,
                &self.shared.stop,
                |partition, records, next| {
                    let Some(job) = jobs.iter().find(|j| j.partition == partition) else { return Ok(()) };
                    let mut batch = WriteBatch::default();
                    db.write_state(&mut batch, job.key, records.iter().map(|(k, v)| (k, v)));
                    db.put_meta(&mut batch, &job.checkpoint, &next.to_be_bytes());
                    db.write(batch).map_err(|e| e.to_string())?;
                    let progress = estimate.entry(job.task).or_default();
                    progress.0 += records.len() as u64;
                    progress.1 = progress.1.max(progress.0);
                    if let Some(owned) = tasks.get_mut(&job.task) {
                        owned.restored = Some(*progress);
                        self.publish(job.task, owned);
                    }
                    Ok(())
                },
            );
            match read {
                Ok(counts) => {
                    for job in jobs {
                        let records = counts.get(&job.partition).copied().unwrap_or(0);
                        tracing::info!(app, task = %job.task, store = %job.store, from = job.from, records, ms = reading.elapsed().as_millis() as u64, "restored store from its changelog");
                    }
                }
                Err(e) => {
                    for job in jobs {
                        outcome.insert(job.task, Err(e.clone()));
                    }
                }
            }
        }
        for (id, owned) in tasks.iter_mut() {
            let done = estimate.get(id).map_or(0, |p| p.0);
            owned.restored = Some((done, done));
            owned.restore_ms = Some(started.elapsed().as_millis() as u64);
        }
        outcome
    }
}

/// Where a store partition's restore starts: its local checkpoint, or (none:
/// whatever is local is not known to match) an emptied store from the start.
fn local_checkpoint(db: &crate::state::rocks::Db, key: StoreKey, checkpoint: &str) -> Result<i64, String> {
    let saved = db
        .get_meta(checkpoint)
        .map_err(|e| e.to_string())?
        .map(|b| i64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])));
    match saved {
        Some(offset) => Ok(offset),
        None => {
            let mut batch = WriteBatch::default();
            db.drop_state(&mut batch, key);
            db.write(batch).map_err(|e| e.to_string())?;
            Ok(0)
        }
    }
}

/// The end offset of a partition, as the broker reports it now.
fn partition_end(settings: &KafkaSettings, topic: &str, partition: u32) -> Option<i64> {
    let client: PlainConsumer = client_config(&settings.brokers).create_with_context(QuietContext).ok()?;
    client.fetch_watermarks(topic, partition as i32, Duration::from_secs(5)).ok().map(|(_, high)| high)
}

/// Reads one partition from `from` to its end (read_committed), handing
/// batches of (key, value) to `apply` with the next offset to read. Returns
/// how many records it read.
fn read_to_end(
    settings: &KafkaSettings,
    topic: &str,
    partition: u32,
    from: i64,
    stop: &AtomicBool,
    mut apply: impl FnMut(&[(Vec<u8>, Option<Vec<u8>>)], i64) -> Result<(), String>,
) -> Result<u64, String> {
    let counts =
        read_partitions_to_end(settings, topic, &[(partition, from)], stop, |_, records, next| apply(records, next))?;
    Ok(counts.get(&partition).copied().unwrap_or(0))
}

/// Reads partitions of one topic, each from its offset to its end
/// (read_committed), all at once through one reader, handing batches of
/// (key, value) to `apply` with the partition and the next offset to read.
/// Returns how many records it read per partition. Gives up when nothing
/// arrives for [`KAFKA_TIMEOUT`].
fn read_partitions_to_end(
    settings: &KafkaSettings,
    topic: &str,
    from: &[(u32, i64)],
    stop: &AtomicBool,
    mut apply: impl FnMut(u32, &[(Vec<u8>, Option<Vec<u8>>)], i64) -> Result<(), String>,
) -> Result<BTreeMap<u32, u64>, String> {
    let mut totals: BTreeMap<u32, u64> = BTreeMap::new();
    if from.is_empty() {
        return Ok(totals);
    }
    let consumer: PlainConsumer = super::reader_config(&settings.brokers, true)
        .create_with_context(QuietContext)
        .map_err(|e| format!("cannot create a restore consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in from {
        tpl.add_partition_offset(topic, *partition as i32, Offset::Offset(*offset)).map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    // Per partition still being read: its batch and next offset.
    type Pending = Vec<(Vec<u8>, Option<Vec<u8>>)>;
    let mut open: BTreeMap<u32, (Pending, i64)> = from.iter().map(|(p, offset)| (*p, (Vec::new(), *offset))).collect();
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        if stop.load(Ordering::Acquire) {
            return Err("stopped while restoring".into());
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let partition = m.partition() as u32;
                last_progress = Instant::now();
                let Some((pending, next)) = open.get_mut(&partition) else { continue };
                if let Some(k) = m.key() {
                    pending.push((k.to_vec(), m.payload().map(<[u8]>::to_vec)));
                }
                *next = m.offset() + 1;
                *totals.entry(partition).or_default() += 1;
                if pending.len() >= 10_000 {
                    apply(partition, pending, *next)?;
                    pending.clear();
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                let partition = p as u32;
                if let Some((pending, next)) = open.remove(&partition)
                    && totals.get(&partition).copied().unwrap_or(0) > 0
                {
                    apply(partition, &pending, next)?;
                }
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "restore read error; retrying"),
            None if last_progress.elapsed() > KAFKA_TIMEOUT => {
                let left: Vec<u32> = open.keys().copied().collect();
                return Err(format!("reading {topic} partitions {left:?}: no end reached within {KAFKA_TIMEOUT:?}"));
            }
            None => {}
        }
    }
    Ok(totals)
}

/// Global tables: every partition of their topics, read into local stores
/// before processing starts, then kept current.
pub(super) struct GlobalTables {
    consumer: PlainConsumer,
    backend: Arc<EmbeddedBackend>,
    app: String,
    /// Topic → local store id.
    stores: HashMap<String, u32>,
    /// Next offset to apply, per partition.
    positions: BTreeMap<(String, u32), i64>,
}

impl GlobalTables {
    pub(super) fn bootstrap(
        backend: &Arc<EmbeddedBackend>,
        settings: &KafkaSettings,
        topology: &Topology,
        store_ids: &HashMap<StoreId, u32>,
        stop: &AtomicBool,
    ) -> Result<Option<GlobalTables>, String> {
        if topology.globals.is_empty() {
            return Ok(None);
        }
        let counts = super::partition_counts(&settings.brokers)?;
        let consumer: PlainConsumer = client_config(&settings.brokers)
            .set("group.id", format!("{}-globals", topology.name))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create_with_context(QuietContext)
            .map_err(|e| format!("cannot create a global table consumer: {e}"))?;
        let mut tpl = TopicPartitionList::new();
        let mut stores = HashMap::new();
        let mut positions = BTreeMap::new();
        for g in &topology.globals {
            let store = store_ids[&g.store];
            stores.insert(g.input.topic.clone(), store);
            for p in 0..counts.get(&g.input.topic).copied().unwrap_or(0) {
                let from = backend.position(&topology.name, &g.input.topic, p).map_err(|e| e.to_string())?;
                // Bootstrap: each partition to its end first.
                read_to_end(settings, &g.input.topic, p, from, stop, |records, next| {
                    let mut batch = WriteBatch::default();
                    let db = backend.db();
                    db.write_state(&mut batch, StoreKey { store, partition: 0 }, records.iter().map(|(k, v)| (k, v)));
                    db.put_meta(
                        &mut batch,
                        &format!("pos/{}/{}/{p}", topology.name, g.input.topic),
                        &next.to_be_bytes(),
                    );
                    db.write(batch).map_err(|e| e.to_string())
                })?;
                let at = backend.position(&topology.name, &g.input.topic, p).map_err(|e| e.to_string())?;
                tpl.add_partition_offset(&g.input.topic, p as i32, Offset::Offset(at)).map_err(|e| e.to_string())?;
                positions.insert((g.input.topic.clone(), p), at);
            }
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        tracing::info!(app = %topology.name, tables = topology.globals.len(), "global tables bootstrapped");
        Ok(Some(GlobalTables { consumer, backend: backend.clone(), app: topology.name.clone(), stores, positions }))
    }

    /// Where each partition's store is, for the status.
    pub(super) fn status(&self) -> Vec<InputStatus> {
        self.positions
            .iter()
            .map(|((topic, partition), at)| InputStatus {
                topic: topic.clone(),
                partition: *partition,
                committed: *at,
                end: *at,
                lag: 0,
            })
            .collect()
    }

    /// Applies what arrived since the last step.
    pub(super) fn step(&mut self) -> Result<(), String> {
        let db = self.backend.db().clone();
        let mut batch = WriteBatch::default();
        let mut any = false;
        while let Some(polled) = self.consumer.poll(Duration::ZERO) {
            let m = polled.map_err(|e| e.to_string())?;
            let Some(&store) = self.stores.get(m.topic()) else { continue };
            if let Some(k) = m.key() {
                let writes = [(k.to_vec(), m.payload().map(<[u8]>::to_vec))];
                db.write_state(&mut batch, StoreKey { store, partition: 0 }, writes.iter().map(|(k, v)| (k, v)));
            }
            let key = format!("pos/{}/{}/{}", self.app, m.topic(), m.partition());
            db.put_meta(&mut batch, &key, &(m.offset() + 1).to_be_bytes());
            self.positions.insert((m.topic().to_owned(), m.partition() as u32), m.offset() + 1);
            any = true;
        }
        if any {
            db.write(batch).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
