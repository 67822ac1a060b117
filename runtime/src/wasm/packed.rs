//! The host side of contract 0.3.0's `packed` interface: emits and store
//! lists as packed byte lists (layouts in `weir_sdk::packed`), and the
//! packing of a `process` batch.
//!
//! They mean what 0.1.0's `emitter.emit` and `store.get-many`/`write-many`
//! mean, with the same checks: a malformed list from the guest breaks the
//! contract and writes or emits nothing. (An absent or malformed key in a
//! `get-many` list breaks the contract too; the answer stops there.)

use std::sync::Arc;

use wasmtime::component::Resource;
use weir_sdk::packed::{InputEntry, OutputEntry, items};

use super::bindings::weir::processor0_1_0::types;
use super::bindings_v3::weir::processor0_3_0::packed;
use super::host::{GuestState, StoreHandle, fault};
use crate::record::TaskRecord;

impl packed::Host for GuestState {
    fn emit(
        &mut self,
        data: Vec<u8>,
        records: Vec<u8>,
        headers: Vec<types::Header>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let entries = match OutputEntry::read_all(&records) {
            Ok(entries) => entries,
            Err(m) => return Ok(Err(self.violation(format!("emit: {m}")))),
        };
        Ok(self.take_emits(&data, &headers, entries))
    }

    fn get_many(&mut self, this: Resource<StoreHandle>, keys: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        let index = self.table.get(&this)?.index;
        let store = self.call.stores.get(index);
        // Room for small values; a guest's list says nothing of their size.
        let mut answer = Vec::with_capacity(keys.len().saturating_mul(2).min(64 * 1024));
        for key in items(&keys) {
            let key = match key {
                Ok(Some(k)) => k,
                Ok(None) => {
                    self.call.violation.get_or_insert_with(|| "get-many: an absent key".to_owned());
                    break;
                }
                Err(m) => {
                    self.call.violation.get_or_insert_with(|| format!("get-many: {m}"));
                    break;
                }
            };
            // The length goes before the value: written once it is known.
            let at = answer.len();
            answer.extend_from_slice(&[0; 4]);
            let len = if store.get_into(key, &mut answer).map_err(fault)? {
                (answer.len() - at - 4) as u32
            } else {
                weir_sdk::packed::NONE
            };
            answer[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        Ok(answer)
    }

    fn write_many(
        &mut self,
        this: Resource<StoreHandle>,
        writes: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        // A read-only store is refused first, as in 0.1.0's `write-many`.
        if let Err(refused) = self.writable_store(&this)? {
            return Ok(Err(refused));
        }
        // Check the whole list before writing anything: a bad one writes nothing.
        let mut pairs = Vec::new();
        let mut list = items(&writes);
        while let Some(key) = list.next() {
            let pair = match (key, list.next()) {
                (Ok(Some(k)), Some(Ok(v))) => (k.to_vec(), v.map(<[u8]>::to_vec)),
                (Ok(None), _) => return Ok(Err(self.violation("write-many: an absent key".to_owned()))),
                (Ok(Some(_)), None) => {
                    return Ok(Err(self.violation("write-many: a key without a value item".to_owned())));
                }
                (Err(m), _) | (_, Some(Err(m))) => return Ok(Err(self.violation(format!("write-many: {m}")))),
            };
            pairs.push(pair);
        }
        self.write_pairs(&this, pairs.into_iter())
    }
}

/// Lays records out packed, reusing `batch`'s buffers: every byte string
/// in `data`, one [`InputEntry`] per record; `stream_times[i]` is the
/// stream time at which `records[i]` is processed, `source_of` names the
/// source that read a topic.
pub(super) fn fill_packed(
    batch: &mut packed::PackedBatch,
    records: &[TaskRecord],
    stream_times: &[i64],
    source_of: impl Fn(&str) -> String,
) {
    assert_eq!(records.len(), stream_times.len(), "a stream time per record");
    batch.data.clear();
    batch.records.clear();
    batch.topics.clear();
    batch.sources.clear();
    batch.headers.clear();
    batch.data.reserve(super::instance::data_size(records));
    batch.records.reserve(records.len() * weir_sdk::packed::INPUT_ENTRY);
    let mut topics: Vec<&Arc<str>> = Vec::new();
    for (r, stream_time) in records.iter().zip(stream_times) {
        let data = &mut batch.data;
        let mut push = |bytes: &Option<Vec<u8>>| {
            bytes.as_ref().map(|b| {
                let span = (data.len() as u32, b.len() as u32);
                data.extend_from_slice(b);
                span
            })
        };
        let key = push(&r.key);
        let value = push(&r.value);
        let old_value = push(&r.old_value);
        let first_header = batch.headers.len() as u32;
        for (name, v) in &r.headers {
            let value = types::Span { offset: batch.data.len() as u32, len: v.len() as u32 };
            batch.data.extend_from_slice(v);
            batch.headers.push(types::Header { name: name.clone(), value });
        }
        let (topic, new) = super::instance::topic_index(&mut topics, &r.topic);
        if new {
            batch.topics.push(r.topic.to_string());
            batch.sources.push(source_of(&r.topic));
        }
        InputEntry {
            key,
            value,
            old_value,
            timestamp: r.timestamp,
            stream_time: *stream_time,
            offset: r.offset,
            partition: r.partition,
            topic: topic as u32,
            first_header,
            header_count: r.headers.len() as u32,
        }
        .write(&mut batch.records);
    }
}
