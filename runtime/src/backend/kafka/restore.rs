//! Reading changelogs and global tables back into local stores: a task's
//! restore on assignment (from its local checkpoint to the changelog's
//! end, read_committed, with progress), and the global tables' bootstrap
//! and updates.

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

use super::runner::KAFKA_TIMEOUT;
use super::worker::{OwnedTask, Worker, checkpoint_key};

impl Worker {
    /// Brings the task's local stores up to the end of their changelogs.
    pub(super) fn restore(&self, id: TaskId, owned: &mut OwnedTask) -> Result<(), String> {
        let topology = self.control.current().1.topology.clone();
        let app = &topology.name;
        let db = self.backend.db().clone();
        let mut restored = 0u64;
        for &sid in &topology.subtopologies[id.subtopology].stores {
            let store = &topology.stores[sid];
            let Some(changelog) = &store.changelog else { continue };
            let key = StoreKey { store: self.store_ids[&sid], partition: id.partition };
            let checkpoint_name = checkpoint_key(app, &store.name, id.partition);
            let checkpoint = db
                .get_meta(&checkpoint_name)
                .map_err(|e| e.to_string())?
                .map(|b| i64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])));
            let from = match checkpoint {
                Some(offset) => offset,
                None => {
                    // No checkpoint: whatever is local is not known to match; start over.
                    let mut batch = WriteBatch::default();
                    db.drop_state(&mut batch, key);
                    db.write(batch).map_err(|e| e.to_string())?;
                    0
                }
            };
            let started = Instant::now();
            // An estimate of what is to come, for progress: the end now,
            // minus where we start (transaction markers count too).
            let end = partition_end(&self.settings, changelog, id.partition).unwrap_or(from);
            let to_restore = restored + (end - from).max(0) as u64;
            let mut so_far = restored;
            let n = read_to_end(&self.settings, changelog, id.partition, from, &self.shared.stop, |records, next| {
                let mut batch = WriteBatch::default();
                db.write_state(&mut batch, key, records.iter().map(|(k, v)| (k, v)));
                db.put_meta(&mut batch, &checkpoint_name, &next.to_be_bytes());
                db.write(batch).map_err(|e| e.to_string())?;
                so_far += records.len() as u64;
                owned.restored = Some((so_far, to_restore.max(so_far)));
                self.publish(id, owned);
                tracing::info!(app, task = %id, store = %store.name, restored = so_far, of_about = to_restore, "restoring");
                Ok(())
            })?;
            restored += n;
            tracing::info!(app, task = %id, store = %store.name, from, records = n, ms = started.elapsed().as_millis() as u64, "restored store from its changelog");
        }
        owned.restored = Some((restored, restored));
        Ok(())
    }
}

/// The end offset of a partition, as the broker reports it now.
fn partition_end(settings: &KafkaSettings, topic: &str, partition: u32) -> Option<i64> {
    let client: PlainConsumer = client_config(&settings.brokers).create_with_context(QuietContext).ok()?;
    client.fetch_watermarks(topic, partition as i32, Duration::from_secs(5)).ok().map(|(_, high)| high)
}

/// Reads one partition from `from` to its end (read_committed), handing
/// batches of (key, value) to `apply` with the next offset to read. Returns
/// how many records it read. Gives up when nothing arrives for
/// [`KAFKA_TIMEOUT`].
fn read_to_end(
    settings: &KafkaSettings,
    topic: &str,
    partition: u32,
    from: i64,
    stop: &AtomicBool,
    mut apply: impl FnMut(&[(Vec<u8>, Option<Vec<u8>>)], i64) -> Result<(), String>,
) -> Result<u64, String> {
    let consumer: PlainConsumer = super::reader_config(&settings.brokers, true)
        .create_with_context(QuietContext)
        .map_err(|e| format!("cannot create a restore consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, Offset::Offset(from)).map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut next = from;
    let mut total = 0u64;
    let mut last_progress = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            return Err("stopped while restoring".into());
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    pending.push((k.to_vec(), m.payload().map(<[u8]>::to_vec)));
                }
                next = m.offset() + 1;
                total += 1;
                last_progress = Instant::now();
                if pending.len() >= 10_000 {
                    apply(&pending, next)?;
                    pending.clear();
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => tracing::warn!(topic, partition, error = %e, "restore read error; retrying"),
            None if last_progress.elapsed() > KAFKA_TIMEOUT => {
                return Err(format!("reading {topic}/{partition}: no end reached within {KAFKA_TIMEOUT:?}"));
            }
            None => {}
        }
    }
    if total > 0 {
        apply(&pending, next)?;
    }
    Ok(total)
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
