//! The trait `#[derive(Session)]` implements.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, CodecError, SCHEMA_HEADER_LEN, SCHEMA_TAG};
use crate::key::{KeyStrategy, Scope};
use crate::migrate::MigrationError;

/// What to do when stored bytes no longer decode as the session type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OnDecodeError {
    /// Return [`Error::Decode`](crate::Error::Decode) from the accessor and
    /// leave the stored bytes untouched (the default).
    #[default]
    Error,
    /// Log a warning and start from the initial value; the stored bytes are
    /// replaced only if the handler changes the session.
    ///
    /// For a type with a schema version, this applies only to a record of
    /// the current version (or one a newer build wrote, never): a record of
    /// an older version that does not migrate is an
    /// [`Error::Migration`](crate::Error::Migration) and is kept, whatever
    /// this policy says, since a migration exists to keep that data.
    Reset,
}

/// A type that lives in a session store. Implement it with `#[derive(Session)]`.
///
/// Hand-written implementations are possible: everything but `NAME`,
/// `Codec` and `initial` has a default.
///
/// # Schema versions
///
/// A type that sets [`SCHEMA_VERSION`](Session::SCHEMA_VERSION) writes its
/// records in an envelope that carries the version (see
/// [`codec::split_schema_version`](crate::codec::split_schema_version)).
/// A load then reads the version instead of guessing:
///
/// - the current version is decoded as `Self`;
/// - an older one, or a record with no envelope (written before the type had
///   a version), goes through [`migrate`](Session::migrate); the migrated
///   value is written back by the update's commit (or its `save()`), even if
///   the handler changes nothing;
/// - a newer one (a rolled-back build reading what a newer build wrote) is an
///   [`Error::NewerSchema`](crate::Error::NewerSchema), and the record is kept.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tg_session::{Json, Session};
///
/// #[derive(Serialize, Deserialize)]
/// struct Counter { apple: u32 }
///
/// impl Session for Counter {
///     const NAME: &'static str = "counter";
///     type Codec = Json;
///     fn initial() -> Self { Counter { apple: 1 } }
/// }
/// ```
pub trait Session: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The session's key name: the accessor's name and the middle of its storage key.
    const NAME: &'static str;
    /// Load on first access instead of before the handler.
    const LAZY: bool = false;
    /// Which ids of the update make the key.
    const KEY: KeyStrategy = KeyStrategy::Scope(Scope::User);
    /// How long a stored session lives after its last write.
    const TTL: Option<Duration> = None;
    /// What to do with stored bytes that no longer decode.
    const ON_DECODE_ERROR: OnDecodeError = OnDecodeError::Error;
    /// The schema version this type writes into its records, or `None` to
    /// write the codec's bytes alone (the default). Set by
    /// `#[session(version = N)]`; versions start at 1.
    const SCHEMA_VERSION: Option<u32> = None;
    /// How the value becomes bytes.
    type Codec: Codec;

    /// The value of a session that was never stored (or was cleared).
    ///
    /// A session still equal to it at the end of an update is not stored
    /// (a bot keeps no record for everyone who ever said hello). For a type
    /// without `PartialEq` "equal" means the same bytes as the initial value
    /// the manager encoded first: an `initial()` that is not the same value
    /// every time (a timestamp in it) makes every session stored.
    fn initial() -> Self;

    /// A copy of the value made without the codec, if the type can make one.
    ///
    /// The [`MemoryStorage`](crate::MemoryStorage) keeps session values as
    /// they are, not their encoded bytes; an update works on a copy made
    /// here. `#[derive(Session)]` returns `Some(self.clone())` for a type
    /// that is `Clone`. The default, `None`, makes that storage encode and
    /// decode instead, as a remote storage does.
    fn copy_value(&self) -> Option<Self> {
        None
    }

    /// Whether `self` and `other` are the same value, if the type can tell
    /// without its codec.
    ///
    /// A session that a handler borrowed mutably is written only if it
    /// changed. `#[derive(Session)]` returns `Some(self == other)` for a
    /// type that is `PartialEq`, which spares the
    /// [`MemoryStorage`](crate::MemoryStorage) encoding both values to
    /// compare their bytes. The default, `None`, compares the bytes.
    fn same_value(&self, other: &Self) -> Option<bool> {
        let _ = other;
        None
    }

    /// Reads a record of an older schema version as the current type.
    ///
    /// Called only for types with a [`SCHEMA_VERSION`](Session::SCHEMA_VERSION),
    /// with the version the record carries (`None` for a record written
    /// before the type had one, which is read as the oldest shape) and the
    /// codec's payload, the envelope removed.
    ///
    /// `#[derive(Session)]` generates it from the `migrate(...)` attributes:
    /// it decodes the payload as the shape declared for that version and
    /// converts it step by step into `Self`. The default, for a type with no
    /// previous shapes, decodes the payload as `Self`.
    fn migrate(stored_version: Option<u32>, payload: &[u8]) -> Result<Self, MigrationError> {
        crate::migrate::decode_shape::<Self::Codec, Self>(
            stored_version.or(Self::SCHEMA_VERSION).unwrap_or(0),
            payload,
        )
    }
}

/// Lets `#[derive(Session)]` fill in [`Session::copy_value`] and
/// [`Session::same_value`] from the type's own `Clone` and `PartialEq`, when
/// it has them, with no bound on the type: method resolution on
/// `&&ValueProbe(value)` picks the impl on `&ValueProbe` where the bound
/// holds, and falls back to the one on `ValueProbe` otherwise
/// ("autoref specialization"; it works because the derive names a concrete type).
#[doc(hidden)]
pub struct ValueProbe<'a, T>(pub &'a T);

#[doc(hidden)]
pub trait CopyByClone<T> {
    fn copy_value(&self) -> Option<T>;
}

impl<T: Clone> CopyByClone<T> for &ValueProbe<'_, T> {
    fn copy_value(&self) -> Option<T> {
        Some(self.0.clone())
    }
}

#[doc(hidden)]
pub trait CopyUnavailable<T> {
    fn copy_value(&self) -> Option<T>;
}

impl<T> CopyUnavailable<T> for ValueProbe<'_, T> {
    fn copy_value(&self) -> Option<T> {
        None
    }
}

#[doc(hidden)]
pub trait SameByEq<T> {
    fn same_value(&self, other: &T) -> Option<bool>;
}

impl<T: PartialEq> SameByEq<T> for &ValueProbe<'_, T> {
    fn same_value(&self, other: &T) -> Option<bool> {
        Some(self.0 == other)
    }
}

#[doc(hidden)]
pub trait SameUnavailable<T> {
    fn same_value(&self, other: &T) -> Option<bool>;
}

impl<T> SameUnavailable<T> for ValueProbe<'_, T> {
    fn same_value(&self, _: &T) -> Option<bool> {
        None
    }
}

/// The bytes a storage keeps for `value`: its codec's, inside the schema
/// envelope when the type has a version.
pub(crate) fn encode_record<T: Session>(value: &T) -> Result<Vec<u8>, CodecError> {
    // serde_json's own first guess for a small value.
    let mut record = Vec::with_capacity(128);
    encode_record_into(value, &mut record)?;
    Ok(record)
}

/// [`encode_record`] at the end of `buffer`.
pub(crate) fn encode_record_into<T: Session>(
    value: &T,
    buffer: &mut Vec<u8>,
) -> Result<(), CodecError> {
    if let Some(version) = T::SCHEMA_VERSION {
        buffer.reserve(SCHEMA_HEADER_LEN);
        buffer.push(SCHEMA_TAG);
        buffer.extend_from_slice(&version.to_be_bytes());
    }
    T::Codec::encode_into(value, buffer)
}
