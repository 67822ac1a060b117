//! The byte layouts of contract 0.3.0's packed lists, shared by the host
//! (weir) and the guest (this SDK) so that both read and write one format.
//!
//! Up to 0.2.0 a batch carried its records as a `list<record>`: the host
//! lowered every field of every record into guest memory through the
//! canonical ABI, one checked store per field, and lifted emitted records
//! and store writes back the same way; in profiles that was most of the
//! host's share of a call. 0.3.0 carries the same metadata as fixed-size
//! little-endian entries in one `list<u8>`: one copy each way.
//!
//! - An input record is [`INPUT_ENTRY`] bytes ([`InputEntry`]), an emitted
//!   one [`OUTPUT_ENTRY`] bytes ([`OutputEntry`]); their byte strings are
//!   spans into the call's `data` list, absent ones have length [`NONE`].
//! - Store key and value lists (`get-many`, `write-many`) are items of a
//!   4-byte length ([`NONE`]: absent) followed by that many bytes.
//!
//! The lengths of what is read are checked: a short or truncated list is an
//! error, never a panic. Spans inside entries are the reader's to check:
//! the host checks the guest's (against the call's `data`), the SDK trusts
//! the host's.

/// The length of an absent byte string (a keyless record, a tombstone, a
/// key not found).
pub const NONE: u32 = u32::MAX;
/// Bytes of one input record's entry.
pub const INPUT_ENTRY: usize = 64;
/// Bytes of one emitted record's entry.
pub const OUTPUT_ENTRY: usize = 40;

/// A byte string of the call's `data`: (offset, length).
pub type Span = (u32, u32);

fn put_span(out: &mut Vec<u8>, span: Option<Span>) {
    let (offset, len) = span.unwrap_or((0, NONE));
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(v)
}

fn span_at(b: &[u8], at: usize) -> Option<Span> {
    let len = u32_at(b, at + 4);
    (len != NONE).then(|| (u32_at(b, at), len))
}

/// One input record of a `process` batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEntry {
    pub key: Option<Span>,
    pub value: Option<Span>,
    pub old_value: Option<Span>,
    pub timestamp: i64,
    /// The task's stream time when the record is processed.
    pub stream_time: i64,
    pub offset: i64,
    pub partition: u32,
    /// Index into the batch's topics (and sources).
    pub topic: u32,
    /// The record's headers: `headers[first_header..][..header_count]`.
    pub first_header: u32,
    pub header_count: u32,
}

impl InputEntry {
    /// Appends the entry's [`INPUT_ENTRY`] bytes.
    pub fn write(&self, out: &mut Vec<u8>) {
        put_span(out, self.key);
        put_span(out, self.value);
        put_span(out, self.old_value);
        for v in [self.timestamp, self.stream_time, self.offset] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.partition, self.topic, self.first_header, self.header_count] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// The entries of a packed list, or an error naming its length.
    pub fn read_all(bytes: &[u8]) -> Result<impl ExactSizeIterator<Item = InputEntry> + '_, String> {
        if !bytes.len().is_multiple_of(INPUT_ENTRY) {
            return Err(format!("{} bytes of input records: not a multiple of {INPUT_ENTRY}", bytes.len()));
        }
        Ok(bytes.chunks_exact(INPUT_ENTRY).map(|b| InputEntry {
            key: span_at(b, 0),
            value: span_at(b, 8),
            old_value: span_at(b, 16),
            timestamp: i64_at(b, 24),
            stream_time: i64_at(b, 32),
            offset: i64_at(b, 40),
            partition: u32_at(b, 48),
            topic: u32_at(b, 52),
            first_header: u32_at(b, 56),
            header_count: u32_at(b, 60),
        }))
    }
}

/// One emitted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputEntry {
    /// Index of the processor's declared output.
    pub output: u32,
    pub key: Option<Span>,
    pub value: Option<Span>,
    pub timestamp: i64,
    pub first_header: u32,
    pub header_count: u32,
    /// Index in the batch of the input record it came from.
    pub input_index: u32,
}

impl OutputEntry {
    /// Appends the entry's [`OUTPUT_ENTRY`] bytes.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.output.to_le_bytes());
        put_span(out, self.key);
        put_span(out, self.value);
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        for v in [self.first_header, self.header_count, self.input_index] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// The entries of a packed list, or an error naming its length.
    pub fn read_all(bytes: &[u8]) -> Result<impl ExactSizeIterator<Item = OutputEntry> + '_, String> {
        if !bytes.len().is_multiple_of(OUTPUT_ENTRY) {
            return Err(format!("{} bytes of output records: not a multiple of {OUTPUT_ENTRY}", bytes.len()));
        }
        Ok(bytes.chunks_exact(OUTPUT_ENTRY).map(|b| OutputEntry {
            output: u32_at(b, 0),
            key: span_at(b, 4),
            value: span_at(b, 12),
            timestamp: i64_at(b, 20),
            first_header: u32_at(b, 28),
            header_count: u32_at(b, 32),
            input_index: u32_at(b, 36),
        }))
    }
}

/// Appends one item of a store list: its length, then its bytes.
pub fn put_item(out: &mut Vec<u8>, item: Option<&[u8]>) {
    match item {
        Some(bytes) => {
            // NONE is not a length: such a list would not fit a wasm memory anyway.
            let len = u32::try_from(bytes.len()).ok().filter(|l| *l != NONE).expect("a store item under 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        None => out.extend_from_slice(&NONE.to_le_bytes()),
    }
}

/// The items of a store list, in order.
pub struct Items<'a> {
    rest: &'a [u8],
}

/// Reads a store list written with [`put_item`].
pub fn items(bytes: &[u8]) -> Items<'_> {
    Items { rest: bytes }
}

impl<'a> Iterator for Items<'a> {
    /// An item (`None`: absent), or what is wrong with the list.
    type Item = Result<Option<&'a [u8]>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 4 {
            self.rest = &[];
            return Some(Err("a store list ends inside an item's length".to_owned()));
        }
        let len = u32_at(self.rest, 0);
        if len == NONE {
            self.rest = &self.rest[4..];
            return Some(Ok(None));
        }
        let end = (len as usize).checked_add(4);
        let Some(bytes) = end.and_then(|end| self.rest.get(4..end)) else {
            let left = self.rest.len() - 4;
            self.rest = &[];
            return Some(Err(format!("a store list item of {len} bytes has only {left} left")));
        };
        self.rest = &self.rest[4 + len as usize..];
        Some(Ok(Some(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_items_read_back_as_written_and_short_lists_are_errors() {
        let input = InputEntry {
            key: Some((0, 3)),
            value: None,
            old_value: Some((3, 0)),
            timestamp: -5,
            stream_time: 1 << 40,
            offset: 7,
            partition: 2,
            topic: 1,
            first_header: 4,
            header_count: 2,
        };
        let mut bytes = Vec::new();
        input.write(&mut bytes);
        input.write(&mut bytes);
        assert_eq!(bytes.len(), 2 * INPUT_ENTRY);
        assert_eq!(InputEntry::read_all(&bytes).unwrap().collect::<Vec<_>>(), [input, input]);
        assert!(InputEntry::read_all(&bytes[1..]).is_err());

        let output = OutputEntry {
            output: 1,
            key: None,
            value: Some((9, 4)),
            timestamp: 3,
            first_header: 0,
            header_count: 0,
            input_index: 255,
        };
        let mut bytes = Vec::new();
        output.write(&mut bytes);
        assert_eq!(bytes.len(), OUTPUT_ENTRY);
        assert_eq!(OutputEntry::read_all(&bytes).unwrap().collect::<Vec<_>>(), [output]);
        assert!(OutputEntry::read_all(&bytes[..39]).is_err());

        let mut list = Vec::new();
        put_item(&mut list, Some(b"key"));
        put_item(&mut list, None);
        put_item(&mut list, Some(b""));
        let read: Vec<_> = items(&list).collect::<Result<_, _>>().unwrap();
        assert_eq!(read, [Some(&b"key"[..]), None, Some(&b""[..])]);
        let truncated: Vec<_> = items(&list[..5]).collect();
        assert!(truncated[0].as_ref().is_err_and(|e| e.contains("3 bytes has only 1")), "{truncated:?}");
        assert!(items(&[1, 0]).next().unwrap().is_err());
    }
}
