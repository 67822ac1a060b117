//! The Kafka backend: N `weir serve --brokers ...` instances of an
//! application share its partitions through a Kafka consumer group (group id
//! = application name).
//!
//! - Records come from a consumer (read_committed, manual offsets) and go out
//!   through a transactional producer (EOS v2: input offsets are sent to the
//!   transaction with the consumer group metadata). One transaction per commit
//!   interval holds the output records, the changelog records of every store
//!   written since the last commit, and the input offsets.
//! - Stores live in the instance's local RocksDB (the data dir), a cache of
//!   their changelog topics `<app>-<store>-changelog` (compacted). Only after a
//!   transaction commits are its store writes applied locally, in one write
//!   batch with the checkpoint: the changelog offset the store now reflects.
//!   A task assigned to an instance restores from its checkpoint to the end of
//!   the changelog (read_committed), or from the start with no local state.
//! - Tasks are created on assignment and committed and closed on revocation.
//!   The range assignor is used, not cooperative-sticky: it gives partition
//!   `p` of every co-partitioned topic to the same member, which is what a
//!   task (sub-topology × partition) needs; the sticky assignors do not.
//! - Admin: deploy creates missing topics (sources and sinks with the spec's
//!   partition counts, repartition topics, compacted changelogs, the
//!   dead-letter topic) and checks co-partitioning against real counts.

mod commit;
pub mod directory;
mod restore;
pub mod runner;
mod worker;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::jsonl::OutputLine;
use crate::record::Record;

/// How long admin calls may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a metadata request may take: the first call to a cluster, so
/// an unreachable one is reported this soon.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the Kafka backend (from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Consumer group session timeout; also bounds how fast a dead member's
    /// partitions move.
    pub session_timeout: Duration,
    /// `transaction.timeout.ms` of the transactional producers.
    pub transaction_timeout: Duration,
    /// This instance's stable id: transactional ids derive from it, so a
    /// restarted instance fences its previous incarnation.
    pub instance_id: String,
    /// Base URL of this instance's HTTP API, once it listens: announced in
    /// the instance directory for interactive queries.
    pub advertised_url: Arc<Mutex<Option<String>>>,
}

/// Base client configuration.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "weir")
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.max.ms", "2000")
        .set("log_level", "3");
    // librdkafka's own debug contexts (e.g. `cgrp,protocol`), for diagnosis.
    if let Ok(debug) = std::env::var("WEIR_KAFKA_DEBUG")
        && !debug.is_empty()
    {
        c.set("debug", &debug).set("log_level", "7");
    }
    c
}

/// A client context that does not report a partition's end as an error
/// (readers that stop at the end ask for those events) and logs other
/// client-level errors as warnings: librdkafka retries them itself.
#[derive(Default, Clone, Copy)]
pub struct QuietContext;

impl rdkafka::client::ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Configuration of a consumer that reads partitions by offset up to their
/// end (no group membership; nothing committed).
pub fn reader_config(brokers: &str, committed_only: bool) -> ClientConfig {
    let mut c = client_config(brokers);
    c.set("group.id", "weir-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // An offset below the log's start (retention deleted it, or a tail
        // longer than the log) reads from the start, never from the end.
        .set("auto.offset.reset", "earliest")
        // An empty fetch answers this soon: reaching a partition's end is quick.
        .set("fetch.wait.max.ms", "50")
        .set("isolation.level", if committed_only { "read_committed" } else { "read_uncommitted" });
    c
}

/// A consumer with no group use, for reading partitions by offset.
pub type PlainConsumer = BaseConsumer<QuietContext>;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRequest {
    pub name: String,
    pub partitions: u32,
    /// `cleanup.policy=compact` (changelogs).
    pub compact: bool,
    /// With `compact`: `cleanup.policy=compact,delete` and this
    /// `retention.ms` (window stores' changelogs).
    pub retention_ms: Option<u64>,
}

/// Creates topics that do not exist yet; existing ones are left as they are
/// (their partition counts were checked before).
pub fn create_topics(brokers: &str, topics: &[TopicRequest]) -> Result<(), String> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers).create().map_err(|e| format!("cannot create an admin client for {brokers}: {e}"))?;
    let retentions: Vec<Option<String>> = topics.iter().map(|t| t.retention_ms.map(|ms| ms.to_string())).collect();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&retentions)
        .map(|(t, retention)| {
            let topic = NewTopic::new(&t.name, t.partitions as i32, TopicReplication::Fixed(-1));
            match (t.compact, retention) {
                (true, Some(ms)) => topic.set("cleanup.policy", "compact,delete").set("retention.ms", ms),
                (true, None) => topic.set("cleanup.policy", "compact"),
                (false, _) => topic,
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    let results = block_on(admin.create_topics(new.iter(), &options))
        .map_err(|e| format!("creating topics on {brokers}: {e}"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("creating topic `{name}`: {code}")),
        }
    }
    // The controller answers before every broker's metadata has the new
    // topics: wait until it does, so that whoever asked can use them at once.
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let known = partition_counts(brokers)?;
        let missing: Vec<&str> =
            topics.iter().filter(|t| !known.contains_key(&t.name)).map(|t| t.name.as_str()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "topics {missing:?} were created but are not in {brokers}'s metadata after {ADMIN_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Partition counts of the topics that exist, from the cluster's metadata.
pub fn partition_counts(brokers: &str) -> Result<BTreeMap<String, u32>, String> {
    let consumer: PlainConsumer = client_config(brokers)
        .create_with_context(QuietContext)
        .map_err(|e| format!("cannot create a client for {brokers}: {e}"))?;
    let metadata = consumer
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(|e| format!("cannot read metadata from {brokers}: {e}"))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_owned(), t.partitions().len() as u32))
        .collect())
}

/// Parses JSONL records (the lines `weir produce` takes, `"topic"`
/// optional, default `topic`) for producing to `topic`.
pub fn parse_jsonl(topic: &str, input: impl std::io::BufRead) -> Result<Vec<(Option<u32>, Record)>, String> {
    let now = crate::backend::embedded::now_us() / 1000;
    let mut records = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("reading records: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("line {}: not a record line: {e}", i + 1))?;
        if let Some(map) = value.as_object_mut() {
            map.entry("topic").or_insert_with(|| serde_json::Value::String(topic.to_owned()));
        }
        match crate::jsonl::parse_input_line_at(&value.to_string(), now) {
            Ok(crate::jsonl::InputLine::Record { topic: t, partition, record }) if t == topic => {
                records.push((partition, record))
            }
            Ok(crate::jsonl::InputLine::Record { topic: t, .. }) => {
                return Err(format!("line {}: topic `{t}`, but producing to `{topic}`", i + 1));
            }
            Ok(crate::jsonl::InputLine::WallClock(_)) => {
                return Err(format!("line {}: wall_clock lines are for weir test only", i + 1));
            }
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        }
    }
    Ok(records)
}

/// Produces JSONL records (the CLI's `weir produce --brokers`), see
/// [`parse_jsonl`] and [`produce`]. Returns how many it produced.
pub fn produce_jsonl(brokers: &str, topic: &str, input: impl std::io::BufRead) -> anyhow::Result<usize> {
    let records = parse_jsonl(topic, input).map_err(anyhow::Error::msg)?;
    Ok(produce(brokers, topic, records)?.len())
}

/// Why records could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The request is wrong (unknown topic, partition out of range).
    #[error("{0}")]
    Refused(String),
    /// The cluster failed or could not be reached.
    #[error("{0}")]
    Broker(String),
}

/// Collects where each record was written.
#[derive(Default)]
struct Placement {
    written: std::sync::Mutex<Vec<Result<(u32, i64), String>>>,
}

impl rdkafka::client::ClientContext for Placement {}

impl rdkafka::producer::ProducerContext for Placement {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, index: usize) {
        let outcome = match result {
            Ok(m) => Ok((m.partition() as u32, m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        if let Some(slot) = self.written.lock().unwrap_or_else(|e| e.into_inner()).get_mut(index) {
            *slot = outcome;
        }
    }
}

/// Produces records, partitioned with murmur2 when no partition is given
/// (a record without key and partition goes to partition 0). Idempotent
/// producer; waits for every delivery. Returns (partition, offset) per record.
pub fn produce(
    brokers: &str,
    topic: &str,
    records: Vec<(Option<u32>, Record)>,
) -> Result<Vec<(u32, i64)>, ProduceError> {
    let counts = partition_counts(brokers).map_err(ProduceError::Broker)?;
    let partitions = *counts
        .get(topic)
        .ok_or_else(|| ProduceError::Refused(format!("topic `{topic}` does not exist on {brokers}")))?;
    for (partition, _) in &records {
        if let Some(p) = partition.filter(|p| *p >= partitions) {
            return Err(ProduceError::Refused(format!(
                "partition {p} does not exist (topic `{topic}` has {partitions})"
            )));
        }
    }
    let context = Placement { written: std::sync::Mutex::new(vec![Err("not delivered".into()); records.len()]) };
    let producer: BaseProducer<Placement> = client_config(brokers)
        .set("enable.idempotence", "true")
        .create_with_context(context)
        .map_err(|e| ProduceError::Broker(format!("cannot create a producer for {brokers}: {e}")))?;
    for (index, (partition, r)) in records.iter().enumerate() {
        let partition = partition.unwrap_or_else(|| crate::partitioner::partition_for(r.key.as_deref(), partitions, 0));
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header { key: k, value: Some(v) });
        }
        let mut record = BaseRecord::<'_, [u8], [u8], usize>::with_opaque_to(topic, index)
            .partition(partition as i32)
            .timestamp(r.timestamp)
            .headers(headers);
        if let Some(k) = r.key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = r.value.as_deref() {
            record = record.payload(v);
        }
        send(&producer, record).map_err(|e| ProduceError::Broker(format!("producing to {topic}: {e}")))?;
    }
    producer.flush(ADMIN_TIMEOUT).map_err(|e| ProduceError::Broker(format!("producing to {topic}: {e}")))?;
    // Delivery reports are served by poll.
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    let pending = |p: &BaseProducer<Placement>| {
        p.context()
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|w| matches!(w, Err(e) if e == "not delivered"))
    };
    while pending(&producer) && std::time::Instant::now() < deadline {
        producer.poll(Duration::from_millis(10));
    }
    let written = std::mem::take(&mut *producer.context().written.lock().unwrap_or_else(|e| e.into_inner()));
    written
        .into_iter()
        .enumerate()
        .map(|(i, w)| w.map_err(|e| ProduceError::Broker(format!("record {} to {topic}: {e}", i + 1))))
        .collect()
}

/// Sends, waiting for room when the local queue is full.
pub fn send<C: rdkafka::producer::ProducerContext>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                let room = producer.in_flight_count();
                serve_producer_until(producer, Duration::from_millis(50), || producer.in_flight_count() < room);
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Serves a producer's delivery reports until `done` holds or `timeout`
/// passes; answers whether `done` held.
///
/// Not `BaseProducer::poll(timeout)` nor `flush`: rust-rdkafka's `poll`
/// keeps polling until its whole timeout has passed even when every event
/// has been served (and `flush` polls in steps of up to 100 ms), which made
/// each commit wait out a fixed 100 ms. Here each step polls without
/// blocking and naps briefly only when nothing was ready, so a wait ends
/// within a fraction of a millisecond of its last delivery report.
pub fn serve_producer_until<C: rdkafka::producer::ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let mut nap = Duration::from_micros(20);
    loop {
        producer.poll(Duration::ZERO);
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(1));
    }
}

/// Converts a consumed Kafka message into weir's record.
pub fn to_record<M: Message>(m: &M) -> Record {
    let headers = m
        .headers()
        .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
        .unwrap_or_default();
    Record {
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        timestamp: m.timestamp().to_millis().unwrap_or(0),
        headers,
    }
}

/// What `weir consume --brokers` reads.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Offset to start from in each partition.
    pub from: i64,
    /// Instead of `from`: this many offsets before each partition's end
    /// (transaction markers take offsets too, so at most this many records).
    pub last: Option<i64>,
    pub limit: Option<usize>,
    pub partition: Option<u32>,
    /// Also records of open or aborted transactions.
    pub uncommitted: bool,
    /// Add each record's offset to its line.
    pub offsets: bool,
}

/// Prints a topic's records as JSONL (the CLI's `weir consume --brokers`):
/// committed records only unless `uncommitted`; each partition from `from`
/// to its end. Returns how many it printed.
pub fn consume(brokers: &str, topic: &str, read: &ReadOptions, out: &mut impl Write) -> anyhow::Result<usize> {
    let ReadOptions { from, last, limit, partition, uncommitted, offsets } = read.clone();
    let counts = partition_counts(brokers).map_err(anyhow::Error::msg)?;
    let partitions =
        *counts.get(topic).ok_or_else(|| anyhow::anyhow!("topic `{topic}` does not exist on {brokers}"))?;
    let consumer: PlainConsumer = reader_config(brokers, !uncommitted).create_with_context(QuietContext)?;
    let wanted: Vec<u32> = match partition {
        Some(p) if p < partitions => vec![p],
        Some(p) => anyhow::bail!("partition {p} does not exist (topic `{topic}` has {partitions})"),
        None => (0..partitions).collect(),
    };
    // Every partition at once, each buffered until its end; printed in
    // partition order.
    let mut tpl = TopicPartitionList::new();
    for p in &wanted {
        let start = match last {
            Some(n) => Offset::OffsetTail(n.max(0)),
            None => Offset::Offset(from),
        };
        tpl.add_partition_offset(topic, *p as i32, start)?;
    }
    consumer.assign(&tpl)?;
    let mut lines: BTreeMap<u32, Vec<serde_json::Value>> = wanted.iter().map(|p| (*p, Vec::new())).collect();
    let mut open: std::collections::BTreeSet<u32> = wanted.iter().copied().collect();
    let mut last_progress = std::time::Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let p = m.partition() as u32;
                let r = to_record(&m);
                let mut line = serde_json::to_value(OutputLine::new(topic, p, &r))?;
                if offsets {
                    line["offset"] = serde_json::json!(m.offset());
                }
                let buffered = lines.entry(p).or_default();
                buffered.push(line);
                last_progress = std::time::Instant::now();
                if wanted.len() == 1 && limit.is_some_and(|l| buffered.len() >= l) {
                    break; // One partition, read in order: enough.
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&(p as u32));
            }
            // librdkafka reconnects by itself: a dropped connection is only
            // an error when no progress follows within the timeout.
            Some(Err(
                e @ KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure,
                ),
            )) if last_progress.elapsed() > ADMIN_TIMEOUT => {
                anyhow::bail!("reading {topic}: {e}")
            }
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure,
            ))) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            None if last_progress.elapsed() > ADMIN_TIMEOUT => {
                anyhow::bail!("reading {topic}: partitions {open:?} reached no end within {ADMIN_TIMEOUT:?}")
            }
            None => {}
        }
    }
    let mut printed = 0;
    for line in lines.into_values().flatten() {
        if limit.is_some_and(|l| printed >= l) {
            break;
        }
        writeln!(out, "{line}")?;
        printed += 1;
    }
    Ok(printed)
}
