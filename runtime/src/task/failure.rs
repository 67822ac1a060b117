//! What happens to a record a task cannot process: the processor's error
//! policy (dead-letter, skip, fail), the dead-letter record and its headers,
//! the rate-limited co-partitioning warning, and the input format check.

use std::time::Instant;

use super::{RecordFailure, Task, TaskError};
use crate::partitioner::partition_for;
use crate::record::{Headers, ProducedRecord, Record, TaskRecord};
use crate::topology::{ErrorPolicy, Format};
use crate::wasm::CallFailure;

impl Task {
    pub(super) fn record_failed(
        &mut self,
        slot: usize,
        record: &TaskRecord,
        failure: &CallFailure,
    ) -> Result<(), TaskError> {
        let def = self.app.topology.processor(self.processors[slot].node).expect("processor");
        let policy = def.on_error;
        let name = self.processors[slot].name.clone();
        self.apply_policy(&name, policy, record, failure.kind.as_str(), &failure.message)
    }

    /// Applies an error policy to a record that could not be processed.
    pub(super) fn apply_policy(
        &mut self,
        processor: &str,
        policy: ErrorPolicy,
        record: &TaskRecord,
        kind: &'static str,
        message: &str,
    ) -> Result<(), TaskError> {
        match policy {
            ErrorPolicy::DeadLetter => self.dead_letter(processor, record, kind, message),
            ErrorPolicy::Skip => {
                self.metrics.skipped += 1;
                tracing::warn!(
                    task = %self.name, processor, topic = %record.topic, partition = record.partition,
                    offset = record.offset, kind, "skipped record: {message}"
                );
                Ok(())
            }
            ErrorPolicy::Fail => {
                tracing::error!(
                    task = %self.name, processor, topic = %record.topic, partition = record.partition,
                    offset = record.offset, kind, "task stops (error policy `fail`): {message}"
                );
                Err(TaskError::Failed(Box::new(RecordFailure {
                    processor: processor.to_owned(),
                    topic: record.topic.to_string(),
                    partition: record.partition,
                    offset: record.offset,
                    kind,
                    message: message.to_owned(),
                })))
            }
        }
    }

    /// Sends a record to `<app>-dlq` with headers naming what went wrong.
    pub(super) fn dead_letter(
        &mut self,
        processor: &str,
        record: &TaskRecord,
        kind: &str,
        message: &str,
    ) -> Result<(), TaskError> {
        self.metrics.dead_letters += 1;
        tracing::warn!(
            task = %self.name, processor, topic = %record.topic, partition = record.partition,
            offset = record.offset, kind, "dead-lettered record: {message}"
        );
        let topology = &self.app.topology;
        let mut headers: Headers = record.headers.clone();
        headers.extend([
            ("weir.error".to_owned(), message.as_bytes().to_vec()),
            ("weir.error.kind".to_owned(), kind.as_bytes().to_vec()),
            ("weir.processor".to_owned(), processor.as_bytes().to_vec()),
            ("weir.task".to_owned(), self.name.as_bytes().to_vec()),
            ("weir.source.topic".to_owned(), record.topic.as_bytes().to_vec()),
            ("weir.source.partition".to_owned(), record.partition.to_string().into_bytes()),
            ("weir.source.offset".to_owned(), record.offset.to_string().into_bytes()),
        ]);
        let topic = self.topic_names[&topology.dead_letter_topic].clone();
        let partitions = topology.partitions_of(&topology.dead_letter_topic).unwrap_or(1);
        let partition = partition_for(record.key.as_deref(), partitions, self.id.partition);
        self.produced.push(ProducedRecord {
            topic,
            partition,
            record: Record {
                key: record.key.clone(),
                value: record.value.clone(),
                timestamp: record.timestamp,
                headers,
            },
        });
        Ok(())
    }

    pub(super) fn warn_mismatch(&mut self, message: &str) {
        let now = Instant::now();
        let due = self.last_mismatch_warning.is_none_or(|t| now.duration_since(t).as_secs() >= 10);
        if due {
            tracing::warn!(
                task = %self.name, suppressed = self.suppressed_mismatch_warnings,
                "co-partitioning violation: {message}"
            );
            self.last_mismatch_warning = Some(now);
            self.suppressed_mismatch_warnings = 0;
        } else {
            self.suppressed_mismatch_warnings += 1;
        }
    }
}

/// Checks key and value bytes against the declared formats.
pub(super) fn check_format(record: &TaskRecord, key: Format, value: Format) -> Result<(), String> {
    fn check(bytes: Option<&[u8]>, format: Format, what: &str) -> Result<(), String> {
        let Some(bytes) = bytes else { return Ok(()) };
        match format {
            Format::Bytes => Ok(()),
            Format::String => {
                std::str::from_utf8(bytes).map(|_| ()).map_err(|e| format!("{what} is not UTF-8 text: {e}"))
            }
            Format::Json => serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                .map(|_| ())
                .map_err(|e| format!("{what} is not valid JSON: {e}")),
        }
    }
    check(record.key.as_deref(), key, "key")?;
    check(record.value.as_deref(), value, "value")
}
