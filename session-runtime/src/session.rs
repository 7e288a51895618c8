//! The trait `#[derive(Session)]` implements.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::key::{KeyStrategy, Scope};

/// What to do when stored bytes no longer decode as the session type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OnDecodeError {
    /// Return [`Error::Decode`](crate::Error::Decode) from the accessor and
    /// leave the stored bytes untouched (the default).
    #[default]
    Error,
    /// Log a warning and start from the initial value; the stored bytes are
    /// replaced only if the handler changes the session.
    Reset,
}

/// A type that lives in a session store. Implement it with `#[derive(Session)]`.
///
/// Hand-written implementations are possible: everything but `NAME`,
/// `Codec` and `initial` has a default.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tg_session_runtime::{Json, Session};
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
    /// How the value becomes bytes.
    type Codec: Codec;

    /// The value of a session that was never stored (or was cleared).
    fn initial() -> Self;
}
