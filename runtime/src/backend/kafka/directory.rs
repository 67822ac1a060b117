//! The instance directory, for interactive queries across instances: which
//! instance (by its HTTP address) runs which task of an application.
//!
//! Discovery is a compacted internal topic, `<app>-instances` (one
//! partition): every instance announces itself there — key = instance id,
//! value = `{"url", "tasks", "at_ms"}` — whenever the set of tasks it runs
//! changes and every few seconds, and an empty task list when it stops.
//! Every instance reads the topic to its end before answering a query for a
//! task it does not run. When two announcements claim a task (a killed
//! instance never withdraws its claim), the latest wins: the task's new
//! owner announces after its restore.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::{PlainConsumer, QuietContext, client_config, reader_config};

/// How long reading the directory to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The internal topic holding an application's instance announcements.
pub fn topic(app: &str) -> String {
    format!("{app}-instances")
}

/// One instance's announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Base URL of the instance's HTTP API.
    pub url: String,
    /// Ids (`subtopology_partition`) of the tasks it runs.
    pub tasks: Vec<String>,
    /// When it was made (ms since the epoch).
    pub at_ms: i64,
}

/// A reader and writer of one application's directory.
pub struct Directory {
    topic: String,
    producer: BaseProducer,
    reader: Mutex<PlainConsumer>,
    /// Instance id → its latest announcement.
    entries: Mutex<BTreeMap<String, Announcement>>,
    /// Next offset of the topic to read.
    next: Mutex<i64>,
}

impl Directory {
    pub fn open(brokers: &str, app: &str) -> Result<Directory, String> {
        let topic = topic(app);
        let producer: BaseProducer = client_config(brokers)
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| format!("instance directory: cannot create a producer: {e}"))?;
        let reader: PlainConsumer = reader_config(brokers, true)
            .create_with_context(QuietContext)
            .map_err(|e| format!("instance directory: cannot create a reader: {e}"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning).map_err(|e| e.to_string())?;
        reader.assign(&tpl).map_err(|e| format!("instance directory: {e}"))?;
        Ok(Directory {
            topic,
            producer,
            reader: Mutex::new(reader),
            entries: Mutex::new(BTreeMap::new()),
            next: Mutex::new(0),
        })
    }

    /// Writes this instance's announcement and waits for it to be stored.
    pub fn announce(&self, instance: &str, announcement: &Announcement) -> Result<(), String> {
        let value = serde_json::to_vec(announcement).expect("json");
        let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&self.topic).partition(0).key(instance).payload(&value);
        self.producer.send(record).map_err(|(e, _)| format!("announcing to {}: {e}", self.topic))?;
        self.producer.flush(READ_TIMEOUT).map_err(|e| format!("announcing to {}: {e}", self.topic))?;
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(instance.to_owned(), announcement.clone());
        Ok(())
    }

    /// Reads what was announced since the last refresh, up to the end the
    /// broker reports now. (End-of-partition events are no guide: a reader
    /// that follows the topic gets one after every fetch that reached the
    /// end, long since passed by the time they are read.)
    pub fn refresh(&self) -> Result<(), String> {
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let (_, end) = reader
            .fetch_watermarks(&self.topic, 0, READ_TIMEOUT)
            .map_err(|e| format!("reading the end of {}: {e}", self.topic))?;
        let deadline = std::time::Instant::now() + READ_TIMEOUT;
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        while *next < end {
            match reader.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    *next = m.offset() + 1;
                    let (Some(key), Some(value)) = (m.key(), m.payload()) else { continue };
                    let Ok(announcement) = serde_json::from_slice::<Announcement>(value) else {
                        tracing::warn!(topic = %self.topic, offset = m.offset(), "unreadable instance announcement");
                        continue;
                    };
                    let instance = String::from_utf8_lossy(key).into_owned();
                    let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                    if entries.get(&instance).is_none_or(|old| old.at_ms <= announcement.at_ms) {
                        entries.insert(instance, announcement);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(format!("reading {}: {e}", self.topic)),
                None if std::time::Instant::now() > deadline => {
                    return Err(format!("reading {}: offset {end} not reached within {READ_TIMEOUT:?}", self.topic));
                }
                None => {}
            }
        }
        Ok(())
    }

    /// The instance that most recently claimed `task`, other than `except`:
    /// (instance id, URL).
    pub fn owner(&self, task: &str, except: &str) -> Option<(String, String)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|(id, a)| id.as_str() != except && a.tasks.iter().any(|t| t == task))
            .max_by_key(|(_, a)| a.at_ms)
            .map(|(id, a)| (id.clone(), a.url.clone()))
    }
}
