//! How session values become the bytes a storage keeps.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;

/// Turns a session value into bytes and back. Chosen per session type with
/// `#[session(codec = path::To::Codec)]`; [`Json`] by default.
pub trait Codec: Send + Sync + 'static {
    /// A short name for error messages ("json").
    const NAME: &'static str;

    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError>;

    /// Decodes bytes produced by [`Codec::encode`].
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;
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
}
