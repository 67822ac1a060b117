//! How typed keys and values become store bytes.
//!
//! Keys are encoded so that byte order equals the natural order of the type,
//! which makes `range` and `prefix` scans meaningful: text and bytes as they
//! are (so a key `"c1"` in a store is the same bytes as a Kafka key `c1`, and
//! interactive queries can address it by its text), integers big-endian with
//! the sign bit flipped, tuples of two to four keys component by
//! component (every component but the last self-delimiting: text and bytes
//! with their zero bytes escaped and a two-byte end mark, so a tuple sorts by
//! its first component, then the next, and a prefix scan on the first
//! component finds all its tuples). Values use a [`Codec`]: [`Json`] by default (readable
//! through interactive queries), or [`Binary`] (postcard, compact and fast).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Encodes a key into order-preserving bytes.
pub trait KeyEncode {
    /// Appends the encoded key to `out`.
    fn encode_key(&self, out: &mut Vec<u8>);

    /// Appends the key as a component of a tuple key, followed by more
    /// components: self-delimiting (fixed-width types are already).
    fn encode_key_part(&self, out: &mut Vec<u8>) {
        self.encode_key(out);
    }

    /// The encoded key as a new vector.
    fn to_key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_key(&mut out);
        out
    }

    /// The encoded key, borrowed when the encoding is the value's own bytes
    /// (text and byte keys), so lookups do not allocate.
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(self.to_key_bytes())
    }
}

/// Decodes a key produced by [`KeyEncode`].
pub trait KeyDecode: Sized {
    /// Decodes the whole of `bytes`.
    fn decode_key(bytes: &[u8]) -> Result<Self>;

    /// Decodes a component written by [`KeyEncode::encode_key_part`] at the
    /// start of `bytes`; returns it and the bytes after it.
    fn decode_key_part(bytes: &[u8]) -> Result<(Self, &[u8])>;
}

/// Ends an escaped text or bytes component of a tuple key.
const PART_END: [u8; 2] = [0x00, 0x01];

/// Writes `bytes` as a self-delimiting component: each zero byte as
/// `00 ff`, then `00 01` (order is kept: the end mark sorts below any
/// continuation).
fn encode_part(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&PART_END);
}

fn decode_part(bytes: &[u8]) -> Result<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (0, Some(0xff)) => {
                out.push(0);
                i += 2;
            }
            (0, Some(0x01)) => return Ok((out, &bytes[i + 2..])),
            (0, _) => return Err(Error::msg("tuple key component is badly escaped")),
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Err(Error::msg("tuple key component has no end mark"))
}

impl KeyEncode for str {
    fn encode_key_part(&self, out: &mut Vec<u8>) {
        encode_part(self.as_bytes(), out);
    }
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.as_bytes())
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}
impl KeyEncode for String {
    fn encode_key_part(&self, out: &mut Vec<u8>) {
        encode_part(self.as_bytes(), out);
    }
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.as_bytes())
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}
impl KeyDecode for String {
    fn decode_key(bytes: &[u8]) -> Result<Self> {
        String::from_utf8(bytes.to_vec()).map_err(|e| Error::msg(format!("store key is not UTF-8: {e}")))
    }
    fn decode_key_part(bytes: &[u8]) -> Result<(Self, &[u8])> {
        let (part, rest) = decode_part(bytes)?;
        Ok((String::decode_key(&part)?, rest))
    }
}
impl KeyEncode for [u8] {
    fn encode_key_part(&self, out: &mut Vec<u8>) {
        encode_part(self, out);
    }
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self)
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}
impl KeyEncode for Vec<u8> {
    fn encode_key_part(&self, out: &mut Vec<u8>) {
        encode_part(self, out);
    }
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self)
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}
impl KeyDecode for Vec<u8> {
    fn decode_key(bytes: &[u8]) -> Result<Self> {
        Ok(bytes.to_vec())
    }
    fn decode_key_part(bytes: &[u8]) -> Result<(Self, &[u8])> {
        decode_part(bytes)
    }
}

macro_rules! int_keys {
    ($($t:ty => $u:ty),*) => {$(
        impl KeyEncode for $t {
            fn encode_key(&self, out: &mut Vec<u8>) {
                // Flipping the sign bit makes two's complement sort as unsigned bytes.
                #[allow(clippy::cast_sign_loss, trivial_numeric_casts, clippy::unnecessary_cast)]
                let flipped = (*self as $u) ^ ((<$t>::MIN as $u) & (1 << (<$u>::BITS - 1)));
                out.extend_from_slice(&flipped.to_be_bytes());
            }
        }
        impl KeyDecode for $t {
            fn decode_key(bytes: &[u8]) -> Result<Self> {
                let array = bytes.try_into().map_err(|_| {
                    Error::msg(format!("store key has {} bytes, expected {}", bytes.len(), size_of::<$t>()))
                })?;
                let raw = <$u>::from_be_bytes(array);
                #[allow(clippy::cast_possible_wrap, trivial_numeric_casts, clippy::unnecessary_cast)]
                let value = (raw ^ ((<$t>::MIN as $u) & (1 << (<$u>::BITS - 1)))) as $t;
                Ok(value)
            }
            fn decode_key_part(bytes: &[u8]) -> Result<(Self, &[u8])> {
                if bytes.len() < size_of::<$t>() {
                    return Err(Error::msg(format!("tuple key component has {} bytes, expected {}", bytes.len(), size_of::<$t>())));
                }
                let (head, rest) = bytes.split_at(size_of::<$t>());
                Ok((<$t>::decode_key(head)?, rest))
            }
        }
    )*};
}
int_keys!(i64 => u64, i32 => u32, u64 => u64, u32 => u32);

/// Tuple keys: every component but the last as a part, the last as it is.
macro_rules! tuple_keys {
    ($($name:ident),+ ; $last:ident) => {
        #[allow(non_snake_case)]
        impl<$($name: KeyEncode,)+ $last: KeyEncode> KeyEncode for ($($name,)+ $last) {
            fn encode_key(&self, out: &mut Vec<u8>) {
                let ($($name,)+ $last) = self;
                $($name.encode_key_part(out);)+
                $last.encode_key(out);
            }
            fn encode_key_part(&self, out: &mut Vec<u8>) {
                let ($($name,)+ $last) = self;
                $($name.encode_key_part(out);)+
                $last.encode_key_part(out);
            }
        }
        #[allow(non_snake_case)]
        impl<$($name: KeyDecode,)+ $last: KeyDecode> KeyDecode for ($($name,)+ $last) {
            fn decode_key(bytes: &[u8]) -> Result<Self> {
                let rest = bytes;
                $(let ($name, rest) = $name::decode_key_part(rest)?;)+
                Ok(($($name,)+ $last::decode_key(rest)?))
            }
            fn decode_key_part(bytes: &[u8]) -> Result<(Self, &[u8])> {
                let rest = bytes;
                $(let ($name, rest) = $name::decode_key_part(rest)?;)+
                let ($last, rest) = $last::decode_key_part(rest)?;
                Ok((($($name,)+ $last), rest))
            }
        }
    };
}
tuple_keys!(A; B);
tuple_keys!(A, B; C);
tuple_keys!(A, B, C; D);

/// A value encoding for stores.
pub trait Codec {
    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>>;
    /// Decodes a value.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T>;
}

/// JSON values: readable in interactive queries and the changelog. The default.
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(value)?)
    }
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        parse_json(bytes).map_err(|e| Error::msg(format!("stored value is not the expected JSON: {e}")))
    }
}

/// Parses JSON bytes: one UTF-8 check of the whole text, then serde_json's
/// reader for text known to be valid, which checks no string again. Reading
/// the bytes directly checks each string on its own, and in a component
/// those many short checks cost more than one long one. Bytes that are not
/// UTF-8 throughout go to the byte reader, which accepts what it accepted
/// before (invalid bytes in a string it skips) and says where it fails.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
    .map_err(|e| e.to_string())
}

/// Compact binary values ([postcard](https://docs.rs/postcard)): smaller and
/// faster than JSON, but opaque to interactive queries.
pub struct Binary;

impl Codec for Binary {
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        postcard::to_allocvec(value).map_err(|e| Error::msg(format!("cannot encode value: {e}")))
    }
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes)
            .map_err(|e| Error::msg(format!("stored value is not the expected binary form: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_parses_from_text_and_bytes_that_are_not_utf8_outside_what_is_read() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Order {
            id: String,
            qty: i64,
        }
        let text = br#"{"id":"o1","qty":2,"note":"caf\u00e9"}"#;
        assert_eq!(parse_json::<Order>(text).unwrap(), Order { id: "o1".into(), qty: 2 });
        // A Latin-1 byte in a field the processor does not read: accepted,
        // as serde_json's byte reader always did.
        let latin1 = b"{\"id\":\"o1\",\"qty\":2,\"note\":\"caf\xe9\"}";
        assert_eq!(parse_json::<Order>(latin1).unwrap(), Order { id: "o1".into(), qty: 2 });
        // In a field it reads: refused, saying where.
        let bad = b"{\"id\":\"o\xe9\",\"qty\":2}";
        let e = parse_json::<Order>(bad).unwrap_err();
        assert!(e.contains("line 1 column"), "{e}");
        assert!(parse_json::<Order>(br#"{"id":"o1"}"#).unwrap_err().contains("missing field `qty`"));
    }

    #[test]
    fn signed_integer_keys_sort_as_bytes() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let encoded: Vec<Vec<u8>> = values.iter().map(KeyEncode::to_key_bytes).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        for (v, e) in values.iter().zip(&encoded) {
            assert_eq!(i64::decode_key(e).unwrap(), *v);
        }
    }

    #[test]
    fn unsigned_integer_keys_round_trip() {
        for v in [0u32, 1, 255, u32::MAX] {
            assert_eq!(u32::decode_key(&v.to_key_bytes()).unwrap(), v);
        }
        assert!(u64::decode_key(b"abc").is_err());
    }

    #[test]
    fn text_keys_are_raw_bytes() {
        assert_eq!("c1".to_key_bytes(), b"c1");
        assert_eq!(String::decode_key(b"c1").unwrap(), "c1");
    }

    #[test]
    fn tuple_keys_sort_by_component_and_round_trip() {
        let keys: Vec<(String, i64)> = vec![
            ("a".into(), -1),
            ("a".into(), 5),
            ("a\0".into(), 0),
            ("a\0b".into(), 0),
            ("ab".into(), i64::MIN),
            ("b".into(), 0),
        ];
        let encoded: Vec<Vec<u8>> = keys.iter().map(KeyEncode::to_key_bytes).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted, "byte order is (text, number) order");
        for (k, e) in keys.iter().zip(&encoded) {
            assert_eq!(&<(String, i64)>::decode_key(e).unwrap(), k);
        }
        // The last component is as it is: (i64, text) is the text's own bytes after 8.
        let window = (7i64, "page-1".to_owned()).to_key_bytes();
        assert_eq!(&window[8..], b"page-1");
        assert_eq!(<(i64, String)>::decode_key(&window).unwrap(), (7, "page-1".to_owned()));
        let three = ("x".to_owned(), 3u32, "y".to_owned());
        assert_eq!(<(String, u32, String)>::decode_key(&three.to_key_bytes()).unwrap(), three);
        assert!(<(String, i64)>::decode_key(b"no end mark").is_err());
    }

    #[test]
    fn codecs_round_trip() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct V {
            a: i64,
            b: String,
        }
        let v = V { a: -3, b: "x".into() };
        assert_eq!(Json::decode::<V>(&Json::encode(&v).unwrap()).unwrap(), v);
        assert_eq!(Binary::decode::<V>(&Binary::encode(&v).unwrap()).unwrap(), v);
        assert!(Json::decode::<V>(b"nope").is_err());
    }
}
