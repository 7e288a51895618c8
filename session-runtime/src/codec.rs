//! How session values become the bytes a storage keeps.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Turns a session value into bytes and back. Chosen per session type with
/// `#[session(codec = path::To::Codec)]`; [`Json`] by default.
pub trait Codec: Send + Sync + 'static {
    /// A short name for error messages ("json").
    const NAME: &'static str;

    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError>;

    /// Decodes bytes produced by [`Codec::encode`].
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;

    /// Encodes `value` at the end of `buffer`, the bytes [`Codec::encode`]
    /// returns. The runtime calls it to compare two values with a reused
    /// buffer; the default appends what `encode` returns.
    fn encode_into<T: Serialize + ?Sized>(
        value: &T,
        buffer: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        buffer.extend_from_slice(&Self::encode(value)?);
        Ok(())
    }
}

/// JSON through `serde_json`: readable in `redis-cli` and SQL, the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const NAME: &'static str = "json";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(CodecError::new)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(CodecError::new)
    }

    fn encode_into<T: Serialize + ?Sized>(
        value: &T,
        buffer: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        serde_json::to_writer(buffer, value).map_err(CodecError::new)
    }
}

/// MessagePack through `rmp-serde`: compact and self-describing, so serde's
/// untagged and flattened forms still work (feature `msgpack`).
///
/// Structs are encoded as maps with field names, so adding an optional field
/// with `#[serde(default)]` stays compatible with stored records.
#[cfg(feature = "msgpack")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

#[cfg(feature = "msgpack")]
impl Codec for MessagePack {
    const NAME: &'static str = "msgpack";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        rmp_serde::to_vec_named(value).map_err(CodecError::new)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        rmp_serde::from_slice(bytes).map_err(CodecError::new)
    }

    fn encode_into<T: Serialize + ?Sized>(
        value: &T,
        buffer: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        rmp_serde::encode::write_named(buffer, value).map_err(CodecError::new)
    }
}

/// The first byte of a record that carries its schema version.
///
/// `0xC1` can start neither a JSON document (it is not valid UTF-8 at all)
/// nor a MessagePack value (the one byte MessagePack marks "never used"), so
/// a tagged record never reads as an untagged one of either codec.
pub const SCHEMA_TAG: u8 = 0xC1;

/// Bytes of the envelope before the codec's payload: [`SCHEMA_TAG`] and the
/// schema version as a big-endian `u32`.
pub const SCHEMA_HEADER_LEN: usize = 5;

/// Splits a stored record into the schema version it was written with and
/// the codec's payload.
///
/// Session types that declare `#[session(version = N)]` write their records
/// in an envelope; all other types write the codec's bytes alone, exactly as
/// before versions existed. The envelope is
///
/// ```text
/// 0xC1 | version: u32, big-endian | payload: the codec's bytes
/// ```
///
/// A record that does not start with the envelope (shorter than its
/// [`SCHEMA_HEADER_LEN`] bytes, or another first byte) is returned whole,
/// with no version. A tool that shows stored records (a CLI printing them as
/// JSON) calls this first and decodes the payload with the session's codec:
///
/// ```
/// use tg_session::codec::{split_schema_version, with_schema_version};
///
/// let record = with_schema_version(3, br#"{"apple":2}"#);
/// assert_eq!(split_schema_version(&record), (Some(3), &br#"{"apple":2}"#[..]));
/// // A record written by a type without a version is all payload.
/// assert_eq!(split_schema_version(br#"{"apple":2}"#), (None, &br#"{"apple":2}"#[..]));
/// ```
pub fn split_schema_version(bytes: &[u8]) -> (Option<u32>, &[u8]) {
    match bytes {
        [SCHEMA_TAG, a, b, c, d, payload @ ..] => {
            (Some(u32::from_be_bytes([*a, *b, *c, *d])), payload)
        }
        _ => (None, bytes),
    }
}

/// The record of a value of schema `version` whose codec bytes are
/// `payload`: the envelope [`split_schema_version`] reads.
pub fn with_schema_version(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(SCHEMA_HEADER_LEN + payload.len());
    record.push(SCHEMA_TAG);
    record.extend_from_slice(&version.to_be_bytes());
    record.extend_from_slice(payload);
    record
}

/// A codec failed to encode or decode a value.
#[derive(Debug, Clone)]
pub struct CodecError(Arc<dyn StdError + Send + Sync + 'static>);

impl CodecError {
    /// Wraps the codec library's error.
    pub fn new(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self(Arc::from(source.into()))
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for CodecError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::{SCHEMA_TAG, split_schema_version, with_schema_version};

    #[test]
    fn the_envelope_round_trips_and_untagged_bytes_stay_whole() {
        let record = with_schema_version(0x0102_0304, b"[1]");
        assert_eq!(record, [SCHEMA_TAG, 1, 2, 3, 4, b'[', b'1', b']']);
        assert_eq!(
            split_schema_version(&record),
            (Some(0x0102_0304), &b"[1]"[..])
        );
        assert_eq!(
            split_schema_version(&with_schema_version(7, b"")),
            (Some(7), &b""[..])
        );
        for untagged in [
            &b""[..],
            b"{}",
            &[SCHEMA_TAG, 0, 0, 1],
            &[0x81, 0xA1, b'a', 1],
        ] {
            assert_eq!(split_schema_version(untagged), (None, untagged));
        }
    }
}
