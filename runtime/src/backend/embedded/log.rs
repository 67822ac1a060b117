//! How the embedded backend lays out topic records in RocksDB.
//!
//! Key: `topic id (u32 BE) ‖ partition (u32 BE) ‖ offset (u64 BE)`, so a
//! partition is one contiguous, offset-ordered key range. Value: a versioned
//! binary encoding of the record plus the time it was appended (for
//! retention by age and end-to-end latency).

use crate::record::Record;

/// Version byte of the record encoding.
const RECORD_FORMAT: u8 = 1;
/// Length marker of an absent key or value.
const NONE: u32 = u32::MAX;

pub fn log_key(topic: u32, partition: u32, offset: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&topic.to_be_bytes());
    k[4..8].copy_from_slice(&partition.to_be_bytes());
    k[8..].copy_from_slice(&(offset as u64).to_be_bytes());
    k
}

pub fn partition_prefix(topic: u32, partition: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&topic.to_be_bytes());
    k[4..].copy_from_slice(&partition.to_be_bytes());
    k
}

/// The offset in a log key.
pub fn offset_of(key: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[8..16]);
    u64::from_be_bytes(b) as i64
}

fn put_opt(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.extend_from_slice(&NONE.to_le_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// Encodes a record with the time (µs since the epoch) it is appended.
pub fn encode(record: &Record, appended_us: i64) -> Vec<u8> {
    let size = 1 + 16 + 8 + record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len) + 2;
    let mut out = Vec::with_capacity(size);
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&record.timestamp.to_le_bytes());
    out.extend_from_slice(&appended_us.to_le_bytes());
    put_opt(&mut out, record.key.as_deref());
    put_opt(&mut out, record.value.as_deref());
    out.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
    for (name, value) in &record.headers {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or("record is truncated")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn opt(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.u32()? {
            NONE => Ok(None),
            n => Ok(Some(self.take(n as usize)?.to_vec())),
        }
    }
}

/// Decodes a record and its append time (µs).
pub fn decode(bytes: &[u8]) -> Result<(Record, i64), String> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.take(1)?[0];
    if version != RECORD_FORMAT {
        return Err(format!("record format {version} is not {RECORD_FORMAT}"));
    }
    let timestamp = r.i64()?;
    let appended = r.i64()?;
    let key = r.opt()?;
    let value = r.opt()?;
    let count = r.u16()?;
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let n = r.u16()? as usize;
        let name = String::from_utf8(r.take(n)?.to_vec()).map_err(|_| "header name is not UTF-8")?;
        let len = r.u32()? as usize;
        headers.push((name, r.take(len)?.to_vec()));
    }
    Ok((Record { key, value, timestamp, headers }, appended))
}

/// The append time (µs) of an encoded record, without decoding the rest.
pub fn appended_at(bytes: &[u8]) -> Option<i64> {
    bytes.get(9..17).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            key: Some(b"k".to_vec()),
            value: None,
            timestamp: -5,
            headers: vec![("a".into(), b"1".to_vec()), ("a".into(), vec![])],
        };
        let bytes = encode(&r, 42);
        assert_eq!(decode(&bytes).unwrap(), (r, 42));
        assert_eq!(appended_at(&bytes), Some(42));
        assert!(decode(&bytes[..bytes.len() - 1]).unwrap_err().contains("truncated"));
    }

    #[test]
    fn keys_sort_by_topic_partition_offset() {
        let mut keys = vec![log_key(1, 0, 300), log_key(1, 0, 2), log_key(0, 5, 9), log_key(1, 1, 0)];
        keys.sort();
        assert_eq!(keys, vec![log_key(0, 5, 9), log_key(1, 0, 2), log_key(1, 0, 300), log_key(1, 1, 0)]);
        assert_eq!(offset_of(&log_key(3, 4, 77)), 77);
    }
}
