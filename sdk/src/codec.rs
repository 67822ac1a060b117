//! How typed keys and values become store bytes.
//!
//! Keys are encoded so that byte order equals the natural order of the type,
//! which makes `range` and `prefix` scans meaningful: text and bytes as they
//! are (so a key `"c1"` in a store is the same bytes as a Kafka key `c1`, and
//! interactive queries can address it by its text), integers big-endian with
//! the sign bit flipped. Values use a [`Codec`]: [`Json`] by default (readable
//! through interactive queries), or [`Binary`] (postcard, compact and fast).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Encodes a key into order-preserving bytes.
pub trait KeyEncode {
    /// Appends the encoded key to `out`.
    fn encode_key(&self, out: &mut Vec<u8>);

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
}

impl KeyEncode for str {
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.as_bytes())
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}
impl KeyEncode for String {
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
}
impl KeyEncode for [u8] {
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self)
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}
impl KeyEncode for Vec<u8> {
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
        }
    )*};
}
int_keys!(i64 => u64, i32 => u32, u64 => u64, u32 => u32);

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
        serde_json::from_slice(bytes).map_err(|e| Error::msg(format!("stored value is not the expected JSON: {e}")))
    }
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
