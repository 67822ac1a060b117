//! The cluster's catalog: what a weir cluster on Kafka runs, kept in Kafka
//! itself, so that any instance can change it and every instance follows.
//!
//! Three compacted single-partition topics under the cluster's prefix `P`
//! (one prefix = one weir cluster on one Kafka cluster). Values are JSON,
//! every one carrying `"format": 1`; a reader skips (and logs) records of a
//! format it does not know, so a newer weir can add formats beside.
//!
//! - `P.components`: content-addressed components.
//!   - key `chunk/<sha256>/<index>`: raw bytes, at most [`CHUNK_BYTES`]
//!     (below the broker's default message size limit);
//!   - key `component/<sha256>`, written after its chunks:
//!     `{"format":1,"sha256","size","chunks","name"?,"version"?}`.
//!     Reassembly checks every chunk is there and the sha256 of the whole
//!     ([`assemble`]): a missing or corrupt chunk refuses the component,
//!     naming its sha256, and nothing of it is loaded.
//! - `P.apps`: key `<app>/<generation>/<instance>/<nonce>` (one key per
//!   proposal, so compaction never removes one: the log keeps every
//!   generation, which the rule below needs),
//!   `{"format":1,"app","generation","spec"|null,"by","at_ms","rollback_of"?}`.
//!   `spec` is the spec as JSON with every component referred to by
//!   `sha256:`; `null` means deleted. **Generations are ordered by the
//!   log**: a record is accepted when its generation is the accepted one
//!   plus one (1 for an application never seen); every reader applies the
//!   same rule in offset order, so of two deploys racing from the same
//!   generation exactly one is accepted (the first in the log) and the other
//!   is ignored everywhere. Its writer reads the log up to its record and
//!   tells its caller it lost ([`Catalog::propose`]).
//! - `P.instances`: key = instance id, written by that instance every
//!   [`HEARTBEAT`] and whenever what it runs changes:
//!   `{"format":1,"id","url","at_ms","stopped","apps":{name:{"generation","state","error"?,"tasks","components","swaps"}}}`
//!   (`tasks`: `{"id","partition","state","lag","restore"?}`; `swaps`: its
//!   latest updates, `{"id","kind","state","max_pause_ms","error"?}`).
//!   An instance whose last record is older than [`ALIVE_WITHIN`] (or says
//!   `stopped`) is not alive: a deploy does not wait for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::backend::kafka::{PlainConsumer, QuietContext, TopicRequest, client_config, reader_config};

/// The record format this weir writes and reads.
pub const FORMAT: u32 = 1;
/// The largest chunk of a component in `P.components`.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// How often an instance writes its record.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// An instance heard from within this long is alive.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(8);
/// How long reading a topic to its end or writing a record may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the catalog refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("the cluster catalog `{prefix}` is not usable on {brokers}: {error}")]
    Unavailable { prefix: String, brokers: String, error: String },
    #[error("component sha256:{sha256} is not in the cluster catalog")]
    UnknownComponent { sha256: String },
    #[error("component sha256:{sha256} is incomplete in the cluster catalog: chunk {index} of {chunks} is missing")]
    MissingChunk { sha256: String, index: u32, chunks: u32 },
    #[error("component sha256:{sha256} is corrupt in the cluster catalog: its chunks hash to sha256:{got}")]
    Corrupt { sha256: String, got: String },
    #[error(
        "application `{app}` is at generation {current} in the cluster, the deploy was based on {expected}; \
         read its status and deploy again"
    )]
    StaleGeneration { app: String, expected: u64, current: u64 },
    #[error("a concurrent deploy of `{app}` took generation {generation} first (by instance {by}); deploy again")]
    LostRace { app: String, generation: u64, by: String },
    #[error("the cluster catalog: {0}")]
    Kafka(String),
}

/// A component's entry in `P.components`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub sha256: String,
    pub size: u64,
    pub chunks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// An application's generation in `P.apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub format: u32,
    pub app: String,
    pub generation: u64,
    /// The spec (components as `sha256:` references); `None`: deleted.
    pub spec: Option<serde_json::Value>,
    /// The instance that wrote it.
    pub by: String,
    pub at_ms: i64,
    /// Set when this generation puts back the spec before `rollback_of`,
    /// which failed on some instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// What an instance runs of one application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The generation it applied last (or failed to).
    pub generation: u64,
    /// `running`, `failed` (the generation could not run here: `error`
    /// says why) or `deleted`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The tasks it runs.
    #[serde(default)]
    pub tasks: Vec<TaskBrief>,
    /// Processor → the component it runs here (`sha256:<hex>`).
    #[serde(default)]
    pub components: BTreeMap<String, String>,
    /// Its latest updates here (at most [`SWAPS_KEPT`]), oldest first.
    #[serde(default)]
    pub swaps: Vec<SwapBrief>,
}

/// How many of an instance's latest updates its record carries per application.
pub const SWAPS_KEPT: usize = 5;

/// One task of an instance, as other instances see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBrief {
    pub id: String,
    pub partition: u32,
    pub state: String,
    pub lag: i64,
    /// Records restored / to restore, while restoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<(u64, u64)>,
    /// Records read and emitted by the task so far (0 from instances of
    /// before these fields: the record format's additions are optional).
    #[serde(default)]
    pub records_in: u64,
    #[serde(default)]
    pub records_out: u64,
}

/// One update of an instance, as other instances see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapBrief {
    pub id: u64,
    pub kind: String,
    pub state: String,
    pub max_pause_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An instance's record in `P.instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub format: u32,
    pub id: String,
    pub url: String,
    pub at_ms: i64,
    #[serde(default)]
    pub stopped: bool,
    #[serde(default)]
    pub apps: BTreeMap<String, Applied>,
}

impl InstanceRecord {
    /// Alive at `now_ms`: heard from recently and not stopped.
    pub fn alive(&self, now_ms: i64) -> bool {
        !self.stopped && now_ms - self.at_ms <= ALIVE_WITHIN.as_millis() as i64
    }
}

/// Splits a component into chunks of at most `size` bytes.
pub fn chunks(bytes: &[u8], size: usize) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    bytes.chunks(size.max(1)).collect()
}

/// Puts a component back together from its chunks, checking that none is
/// missing and that the whole has the manifest's sha256.
pub fn assemble(manifest: &Manifest, chunks: &HashMap<u32, Vec<u8>>) -> Result<Vec<u8>, CatalogError> {
    let mut bytes = Vec::with_capacity(manifest.size as usize);
    for index in 0..manifest.chunks {
        let Some(chunk) = chunks.get(&index) else {
            return Err(CatalogError::MissingChunk { sha256: manifest.sha256.clone(), index, chunks: manifest.chunks });
        };
        bytes.extend_from_slice(chunk);
    }
    let got = hex::encode(sha2::Sha256::digest(&bytes));
    if got != manifest.sha256 {
        return Err(CatalogError::Corrupt { sha256: manifest.sha256.clone(), got });
    }
    Ok(bytes)
}

/// Everything read from the catalog's topics so far.
#[derive(Debug, Default)]
pub struct CatalogState {
    /// Per application: its accepted generations' records, latest last.
    pub apps: BTreeMap<String, Vec<AppRecord>>,
    /// Offsets of accepted app records (to tell a writer whether its record won).
    accepted: BTreeMap<i64, (String, u64)>,
    pub instances: BTreeMap<String, InstanceRecord>,
    pub manifests: BTreeMap<String, Manifest>,
    /// Named manifests' sha256s in the order they were read (pushes by name).
    named: Vec<String>,
    /// Per component sha256: its chunks by index.
    chunks: HashMap<String, HashMap<u32, Vec<u8>>>,
}

/// Which catalog topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Components,
    Apps,
    Instances,
}

impl CatalogState {
    /// Applies one record of `part` at `offset` (records must come in offset
    /// order per part). Unknown formats and unreadable records are skipped.
    pub fn apply(&mut self, part: Part, key: &str, value: Option<&[u8]>, offset: i64) {
        let Some(value) = value else { return };
        match part {
            Part::Components => {
                if let Some(rest) = key.strip_prefix("chunk/") {
                    let Some((sha, index)) = rest.split_once('/') else { return };
                    let Ok(index) = index.parse::<u32>() else { return };
                    self.chunks.entry(sha.to_owned()).or_default().insert(index, value.to_vec());
                } else if key.starts_with("component/") {
                    match serde_json::from_slice::<Manifest>(value) {
                        Ok(m) if m.format == FORMAT => {
                            if m.name.is_some() {
                                self.named.push(m.sha256.clone());
                            }
                            self.manifests.insert(m.sha256.clone(), m);
                        }
                        _ => tracing::warn!(key, offset, "skipping an unreadable component manifest in the catalog"),
                    }
                }
            }
            Part::Apps => match serde_json::from_slice::<AppRecord>(value) {
                Ok(r) if r.format == FORMAT && key.split('/').next() == Some(r.app.as_str()) => {
                    let history = self.apps.entry(r.app.clone()).or_default();
                    let current = history.last().map_or(0, |h| h.generation);
                    if r.generation == current + 1 {
                        self.accepted.insert(offset, (r.app.clone(), r.generation));
                        history.push(r);
                    }
                }
                _ => tracing::warn!(key, offset, "skipping an unreadable application record in the catalog"),
            },
            Part::Instances => match serde_json::from_slice::<InstanceRecord>(value) {
                Ok(r) if r.format == FORMAT && r.id == key => {
                    self.instances.insert(r.id.clone(), r);
                }
                _ => tracing::warn!(key, offset, "skipping an unreadable instance record in the catalog"),
            },
        }
    }

    /// The accepted record of the application's latest generation.
    pub fn app(&self, name: &str) -> Option<&AppRecord> {
        self.apps.get(name).and_then(|h| h.last())
    }

    /// The generation an application is at (0: never deployed).
    pub fn generation(&self, name: &str) -> u64 {
        self.app(name).map_or(0, |r| r.generation)
    }

    /// Whether the app record written at `offset` was accepted.
    pub fn accepted_at(&self, offset: i64) -> bool {
        self.accepted.contains_key(&offset)
    }

    /// The component pushed as `name@version` (`version` `None`: the latest
    /// pushed under the name).
    pub fn named(&self, name: &str, version: Option<&str>) -> Option<&Manifest> {
        self.named
            .iter()
            .rev()
            .filter_map(|sha| self.manifests.get(sha))
            .find(|m| m.name.as_deref() == Some(name) && version.is_none_or(|v| m.version.as_deref() == Some(v)))
    }

    /// A component's bytes, put back together from its chunks.
    pub fn component(&self, sha256: &str) -> Result<Vec<u8>, CatalogError> {
        let manifest =
            self.manifests.get(sha256).ok_or_else(|| CatalogError::UnknownComponent { sha256: sha256.to_owned() })?;
        let empty = HashMap::new();
        assemble(manifest, self.chunks.get(sha256).unwrap_or(&empty))
    }
}

/// The outcomes of the catalog writer's deliveries (offset or error) by
/// write number, so that a late report is never taken for another write's.
#[derive(Default)]
struct Delivered {
    outcomes: Mutex<HashMap<usize, Result<i64, String>>>,
}

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, write: usize) {
        let outcome = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.to_string()),
        };
        self.outcomes.lock().unwrap_or_else(|e| e.into_inner()).insert(write, outcome);
    }
}

/// The catalog of one cluster: a writer, a reader of its three topics, and
/// what has been read.
pub struct Catalog {
    pub prefix: String,
    brokers: String,
    /// Writes one record at a time (the lock), waiting for its offset.
    producer: Mutex<BaseProducer<Delivered>>,
    writes: std::sync::atomic::AtomicUsize,
    reader: Mutex<PlainConsumer>,
    /// Next offset to read per part.
    next: Mutex<BTreeMap<&'static str, i64>>,
    state: Mutex<CatalogState>,
}

fn now_ms() -> i64 {
    crate::backend::embedded::now_us() / 1000
}

impl Catalog {
    pub fn topic(prefix: &str, part: Part) -> String {
        match part {
            Part::Components => format!("{prefix}.components"),
            Part::Apps => format!("{prefix}.apps"),
            Part::Instances => format!("{prefix}.instances"),
        }
    }

    fn part_of(&self, topic: &str) -> Option<Part> {
        [Part::Components, Part::Apps, Part::Instances].into_iter().find(|p| Catalog::topic(&self.prefix, *p) == topic)
    }

    /// Creates the catalog's topics if missing and reads them to their end.
    /// A clear error when they can be neither found nor created.
    pub fn open(brokers: &str, prefix: &str) -> Result<Catalog, CatalogError> {
        let unavailable =
            |error: String| CatalogError::Unavailable { prefix: prefix.to_owned(), brokers: brokers.to_owned(), error };
        let requests: Vec<TopicRequest> = [Part::Components, Part::Apps, Part::Instances]
            .into_iter()
            .map(|p| TopicRequest { name: Catalog::topic(prefix, p), partitions: 1, compact: true, retention_ms: None })
            .collect();
        crate::backend::kafka::create_topics(brokers, &requests).map_err(unavailable)?;
        let producer: BaseProducer<Delivered> = client_config(brokers)
            .set("enable.idempotence", "true")
            .set("message.max.bytes", (CHUNK_BYTES + 64 * 1024).to_string())
            // A write not acknowledged in time is given up, not retried into the next one's wait.
            .set("message.timeout.ms", IO_TIMEOUT.as_millis().to_string())
            .create_with_context(Delivered::default())
            .map_err(|e| unavailable(format!("cannot create a producer: {e}")))?;
        let reader: PlainConsumer = reader_config(brokers, true)
            .set("auto.offset.reset", "earliest")
            .create_with_context(QuietContext)
            .map_err(|e| unavailable(format!("cannot create a reader: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        for r in &requests {
            tpl.add_partition_offset(&r.name, 0, Offset::Beginning).map_err(|e| unavailable(e.to_string()))?;
        }
        reader.assign(&tpl).map_err(|e| unavailable(e.to_string()))?;
        let catalog = Catalog {
            prefix: prefix.to_owned(),
            brokers: brokers.to_owned(),
            producer: Mutex::new(producer),
            writes: std::sync::atomic::AtomicUsize::new(0),
            reader: Mutex::new(reader),
            next: Mutex::new(BTreeMap::new()),
            state: Mutex::new(CatalogState::default()),
        };
        catalog.refresh().map_err(|e| unavailable(e.to_string()))?;
        Ok(catalog)
    }

    /// Reads what was written since the last refresh, up to the ends the
    /// broker reports now.
    pub fn refresh(&self) -> Result<(), CatalogError> {
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut ends = BTreeMap::new();
        // Components last: a generation read here was written after its
        // components, so their end, taken after, covers them.
        for part in [Part::Apps, Part::Instances, Part::Components] {
            let topic = Catalog::topic(&self.prefix, part);
            let (_, end) = reader
                .fetch_watermarks(&topic, 0, IO_TIMEOUT)
                .map_err(|e| CatalogError::Kafka(format!("reading the end of {topic}: {e}")))?;
            ends.insert(topic, end);
        }
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let behind = |next: &BTreeMap<&'static str, i64>| {
            ends.iter().any(|(topic, end)| {
                let part = self.part_of(topic).expect("a catalog topic");
                next.get(part_name(part)).copied().unwrap_or(0) < *end
            })
        };
        while behind(&next) {
            match reader.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let Some(part) = self.part_of(m.topic()) else { continue };
                    next.insert(part_name(part), m.offset() + 1);
                    let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                    self.state.lock().unwrap_or_else(|e| e.into_inner()).apply(part, &key, m.payload(), m.offset());
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(CatalogError::Kafka(format!("reading the catalog: {e}"))),
                None if std::time::Instant::now() > deadline => {
                    return Err(CatalogError::Kafka(format!(
                        "the catalog's ends {ends:?} not reached in {IO_TIMEOUT:?}"
                    )));
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Reads the state under the lock.
    pub fn read<T>(&self, f: impl FnOnce(&CatalogState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes one record and waits for it to be stored; answers its offset.
    fn write(&self, part: Part, key: &str, value: &[u8]) -> Result<i64, CatalogError> {
        let topic = Catalog::topic(&self.prefix, part);
        let failed = |e: String| CatalogError::Kafka(format!("writing to {topic} on {}: {e}", self.brokers));
        let producer = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        let write = self.writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&topic, write).partition(0).key(key.as_bytes()).payload(value);
        crate::backend::kafka::send(&producer, record).map_err(|e| failed(e.to_string()))?;
        let outcomes = &producer.context().outcomes;
        let delivered = || outcomes.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&write);
        crate::backend::kafka::serve_producer_until(&producer, IO_TIMEOUT, delivered);
        let outcome = outcomes.lock().unwrap_or_else(|e| e.into_inner()).remove(&write);
        match outcome {
            Some(Ok(offset)) => Ok(offset),
            Some(Err(e)) => Err(failed(e)),
            None => Err(failed(format!("not acknowledged within {IO_TIMEOUT:?}"))),
        }
    }

    /// Writes a component (chunks, then its manifest) unless the catalog
    /// has it already.
    pub fn put_component(
        &self,
        bytes: &[u8],
        name: Option<&str>,
        version: Option<&str>,
    ) -> Result<String, CatalogError> {
        let sha256 = hex::encode(sha2::Sha256::digest(bytes));
        if self.read(|s| s.manifests.contains_key(&sha256)) && name.is_none() {
            return Ok(sha256);
        }
        let parts = chunks(bytes, CHUNK_BYTES);
        for (index, chunk) in parts.iter().enumerate() {
            self.write(Part::Components, &format!("chunk/{sha256}/{index}"), chunk)?;
        }
        let manifest = Manifest {
            format: FORMAT,
            sha256: sha256.clone(),
            size: bytes.len() as u64,
            chunks: parts.len() as u32,
            name: name.map(str::to_owned),
            version: version.map(str::to_owned),
        };
        self.write(Part::Components, &format!("component/{sha256}"), &serde_json::to_vec(&manifest).expect("json"))?;
        self.refresh()?;
        Ok(sha256)
    }

    /// Writes generation `expected + 1` of `app` (`spec` `None`: deleted)
    /// and tells whether it was accepted: refused when the application is no
    /// longer at `expected`, or when a concurrent writer took the generation
    /// first. `expected` `None`: whatever generation it is at now.
    pub fn propose(
        &self,
        app: &str,
        expected: Option<u64>,
        spec: Option<serde_json::Value>,
        by: &str,
        rollback_of: Option<u64>,
    ) -> Result<u64, CatalogError> {
        self.refresh()?;
        let current = self.read(|s| s.generation(app));
        if let Some(expected) = expected.filter(|e| *e != current) {
            return Err(CatalogError::StaleGeneration { app: app.to_owned(), expected, current });
        }
        let generation = current + 1;
        let record = AppRecord {
            format: FORMAT,
            app: app.to_owned(),
            generation,
            spec,
            by: by.to_owned(),
            at_ms: now_ms(),
            rollback_of,
        };
        let nonce = crate::backend::embedded::now_us();
        let key = format!("{app}/{generation}/{by}/{nonce}");
        let offset = self.write(Part::Apps, &key, &serde_json::to_vec(&record).expect("json"))?;
        self.refresh()?;
        let won = self.read(|s| s.accepted_at(offset));
        if !won {
            let by = self.read(|s| {
                s.apps.get(app).and_then(|h| h.iter().find(|r| r.generation == generation)).map(|r| r.by.clone())
            });
            return Err(CatalogError::LostRace { app: app.to_owned(), generation, by: by.unwrap_or_default() });
        }
        Ok(generation)
    }

    /// Writes this instance's record.
    pub fn announce(&self, record: &InstanceRecord) -> Result<(), CatalogError> {
        self.write(Part::Instances, &record.id, &serde_json::to_vec(record).expect("json"))?;
        self.state.lock().unwrap_or_else(|e| e.into_inner()).instances.insert(record.id.clone(), record.clone());
        Ok(())
    }
}

fn part_name(part: Part) -> &'static str {
    match part {
        Part::Components => "components",
        Part::Apps => "apps",
        Part::Instances => "instances",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_of(bytes: &[u8], chunks: u32) -> Manifest {
        Manifest {
            format: FORMAT,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            size: bytes.len() as u64,
            chunks,
            name: None,
            version: None,
        }
    }

    #[test]
    fn a_component_split_into_chunks_comes_back_whole_and_a_missing_or_corrupt_chunk_is_refused() {
        let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let parts = chunks(&bytes, CHUNK_BYTES);
        assert_eq!(parts.len(), 5);
        assert!(parts.iter().all(|c| c.len() <= CHUNK_BYTES));
        let manifest = manifest_of(&bytes, parts.len() as u32);
        let mut stored: HashMap<u32, Vec<u8>> = parts.iter().enumerate().map(|(i, c)| (i as u32, c.to_vec())).collect();
        assert_eq!(assemble(&manifest, &stored).unwrap(), bytes);

        let third = stored.remove(&3).unwrap();
        assert_eq!(
            assemble(&manifest, &stored),
            Err(CatalogError::MissingChunk { sha256: manifest.sha256.clone(), index: 3, chunks: 5 })
        );
        let mut corrupt = third.clone();
        corrupt[10] ^= 1;
        stored.insert(3, corrupt);
        let err = assemble(&manifest, &stored).unwrap_err();
        assert!(matches!(&err, CatalogError::Corrupt { sha256, .. } if *sha256 == manifest.sha256), "{err}");
        assert!(err.to_string().contains(&manifest.sha256), "the error names the sha: {err}");
    }

    fn app_record(app: &str, generation: u64, by: &str) -> Vec<u8> {
        serde_json::to_vec(&AppRecord {
            format: FORMAT,
            app: app.into(),
            generation,
            spec: Some(serde_json::json!({ "name": app })),
            by: by.into(),
            at_ms: 0,
            rollback_of: None,
        })
        .unwrap()
    }

    #[test]
    fn of_two_records_for_the_same_generation_the_first_in_the_log_wins_everywhere() {
        let mut state = CatalogState::default();
        state.apply(Part::Apps, "a/1/x/1", Some(&app_record("a", 1, "x")), 0);
        // Two deploys based on generation 1 race: both write generation 2.
        state.apply(Part::Apps, "a/2/x/2", Some(&app_record("a", 2, "x")), 1);
        state.apply(Part::Apps, "a/2/y/3", Some(&app_record("a", 2, "y")), 2);
        assert_eq!(state.generation("a"), 2);
        assert_eq!(state.app("a").unwrap().by, "x");
        assert!(state.accepted_at(1) && !state.accepted_at(2));
        // A record skipping a generation is not accepted either.
        state.apply(Part::Apps, "a/4/y/4", Some(&app_record("a", 4, "y")), 3);
        assert_eq!(state.generation("a"), 2);
        // Unknown formats and records filed under another key are skipped.
        let mut future: serde_json::Value = serde_json::from_slice(&app_record("a", 3, "z")).unwrap();
        future["format"] = 2.into();
        state.apply(Part::Apps, "a/3/z/5", Some(&serde_json::to_vec(&future).unwrap()), 4);
        state.apply(Part::Apps, "b/3/z/6", Some(&app_record("a", 3, "z")), 5);
        assert_eq!(state.generation("a"), 2);
    }

    #[test]
    fn an_instance_is_alive_while_it_is_heard_from_and_not_stopped() {
        let record = InstanceRecord {
            format: FORMAT,
            id: "i".into(),
            url: "u".into(),
            at_ms: 1_000,
            stopped: false,
            apps: BTreeMap::new(),
        };
        assert!(record.alive(1_000 + ALIVE_WITHIN.as_millis() as i64));
        assert!(!record.alive(1_001 + ALIVE_WITHIN.as_millis() as i64));
        assert!(!InstanceRecord { stopped: true, ..record }.alive(1_000));
    }

    #[test]
    fn components_are_found_by_sha_once_their_manifest_and_chunks_are_read() {
        let bytes = b"\0asm component bytes".to_vec();
        let m = manifest_of(&bytes, 1);
        let mut state = CatalogState::default();
        assert!(matches!(state.component(&m.sha256), Err(CatalogError::UnknownComponent { .. })));
        state.apply(Part::Components, &format!("chunk/{}/0", m.sha256), Some(&bytes), 0);
        state.apply(Part::Components, &format!("component/{}", m.sha256), Some(&serde_json::to_vec(&m).unwrap()), 1);
        assert_eq!(state.component(&m.sha256).unwrap(), bytes);
    }
}
