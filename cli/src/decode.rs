//! A stored record as JSON, whichever codec wrote it.

use clap::ValueEnum;
use serde_json::Value;
use tg_session::codec::split_schema_version;

/// The codec the records were written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CodecChoice {
    /// JSON if the bytes are JSON, else MessagePack.
    Auto,
    /// `tg_session::Json`, the default codec.
    Json,
    /// `tg_session::MessagePack`.
    Msgpack,
}

/// A record's payload decoded: its schema version (the envelope a versioned
/// session type writes, see `#[session(version = …)]`) and its value.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// `None` for a record of a type without versions.
    pub schema_version: Option<u32>,
    /// The value as JSON.
    pub value: Value,
}

/// Decodes `bytes` with `codec`; the error says which codecs were tried.
pub fn decode(bytes: &[u8], codec: CodecChoice) -> Result<Decoded, String> {
    let (schema_version, payload) = split_schema_version(bytes);
    let json = || serde_json::from_slice::<Value>(payload).map_err(|e| format!("not JSON: {e}"));
    let msgpack =
        || rmp_serde::from_slice::<Value>(payload).map_err(|e| format!("not MessagePack: {e}"));
    let value = match codec {
        CodecChoice::Json => json()?,
        CodecChoice::Msgpack => msgpack()?,
        CodecChoice::Auto => json().or_else(|not_json| {
            msgpack().map_err(|not_msgpack| format!("{not_json}; {not_msgpack}"))
        })?,
    };
    Ok(Decoded {
        schema_version,
        value,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tg_session::codec::with_schema_version;

    #[test]
    fn reads_both_codecs_and_the_schema_envelope() {
        let json = br#"{"apple":2}"#;
        let expected = serde_json::json!({"apple": 2});
        let plain = decode(json, CodecChoice::Auto).unwrap();
        assert_eq!(plain.schema_version, None);
        assert_eq!(plain.value, expected);

        let versioned = decode(&with_schema_version(3, json), CodecChoice::Json).unwrap();
        assert_eq!(versioned.schema_version, Some(3));
        assert_eq!(versioned.value, expected);

        let packed = rmp_serde::to_vec_named(&expected).unwrap();
        assert_eq!(decode(&packed, CodecChoice::Auto).unwrap().value, expected);
        let error = decode(&packed, CodecChoice::Json).unwrap_err();
        assert!(error.starts_with("not JSON"), "{error}");
        let error = decode(b"\xc1\x00", CodecChoice::Auto).unwrap_err();
        assert!(
            error.contains("not JSON") && error.contains("not MessagePack"),
            "{error}"
        );
    }
}
