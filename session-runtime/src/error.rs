//! The one error type users see, and the errors storages and codecs report.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A shareable error source (cloned when one failure is reported to several accessors).
pub type BoxError = Arc<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong with a session.
///
/// Each message names the session (its `key` name), the storage key and the
/// storage involved, and says how to fix what can be fixed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The update lacks an id the session's scope needs (a channel post has no
    /// sender, an inline query has no chat). Only this session's accessor fails.
    #[error(
        "session `{session}` needs {needs} to build its key, but this update has none; \
         choose a scope this kind of update has (e.g. `scope = \"chat\"`) or a `key_fn` \
         that returns `None` for it"
    )]
    MissingId {
        /// The session's key name.
        session: &'static str,
        /// What was missing, e.g. "the sender's user id".
        needs: &'static str,
    },

    /// An eager session type was used without being registered on the manager,
    /// so it could not be loaded before the handler.
    #[error(
        "session `{session}` ({type_name}) is eager but was not registered: call \
         `.register::<{type_name}>()` on the `SessionManager` builder, or mark it \
         `#[session(lazy)]`"
    )]
    NotRegistered {
        /// The session's key name.
        session: &'static str,
        /// The Rust type of the session.
        type_name: &'static str,
    },

    /// Two session types use the same `key` name: their data would overwrite each other.
    #[error(
        "session types `{first}` and `{second}` both use the key `{session}`: give one of \
         them another `#[session(key = \"...\")]`"
    )]
    DuplicateSession {
        /// The shared key name.
        session: &'static str,
        /// The first type registered with it.
        first: &'static str,
        /// The type that collided.
        second: &'static str,
    },

    /// The session is already borrowed in this update: a `SessionRef` to it is
    /// still alive.
    #[error(
        "session `{session}` (key `{key}`) is already in use in this update: drop the \
         first `SessionRef` before taking another, and before the handler returns"
    )]
    AlreadyBorrowed {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
    },

    /// Another update kept the key locked for longer than the manager's lock timeout.
    #[error(
        "session `{session}` (key `{key}`): another update held this key for more than \
         {waited:?}; raise `SessionManagerBuilder::lock_timeout` if handlers are this slow"
    )]
    LockTimeout {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// How long this update waited.
        waited: Duration,
    },

    /// The storage failed (unreachable, timed out, refused the command).
    #[error("session `{session}` (key `{key}`): storage `{storage}` failed: {source}")]
    Storage {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The storage's name, from [`Storage::name`](crate::Storage::name).
        storage: Arc<str>,
        /// What the storage reported.
        #[source]
        source: StorageError,
    },

    /// The stored bytes do not decode as the session type (its shape changed).
    /// The stored data is left untouched.
    #[error(
        "session `{session}` (key `{key}`): the bytes stored in `{storage}` do not decode \
         as `{type_name}` with the {codec} codec: {source}; the stored data was left in \
         place: migrate or delete it, or opt in to `#[session(on_decode_error = \"reset\")]`"
    )]
    Decode {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The storage's name.
        storage: Arc<str>,
        /// The Rust type of the session.
        type_name: &'static str,
        /// The codec's name.
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// The session value could not be encoded (e.g. a map with non-string keys in JSON).
    #[error(
        "session `{session}` (key `{key}`): the value does not encode with the {codec} codec: {source}"
    )]
    Encode {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The codec's name.
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// Another writer (another process) changed the record since this update read
    /// it. Nothing was written; the other writer's data is intact.
    #[error(
        "session `{session}` (key `{key}`): storage `{storage}` holds a newer version written \
         by another process since this update loaded it; this update's change was not saved \
         (handle the update again to apply it on top)"
    )]
    Conflict {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The storage's name.
        storage: Arc<str>,
    },

    /// The update's sessions were already committed; the context can no longer be used.
    #[error(
        "session `{session}`: this update's sessions were already committed; take sessions \
         only inside the handler"
    )]
    Finished {
        /// The session's key name.
        session: &'static str,
    },
}

/// What a [`Storage`](crate::Storage) reports when it fails.
#[derive(Debug, Clone)]
pub struct StorageError {
    kind: StorageErrorKind,
    source: BoxError,
}

/// The broad class of a [`StorageError`], for retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The storage could not be reached (connection refused or lost).
    Unavailable,
    /// The storage did not answer in time.
    Timeout,
    /// The storage answered with an error, or held something it should not.
    Other,
}

impl StorageError {
    /// A storage error of the given kind with its cause.
    pub fn new(kind: StorageErrorKind, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            kind,
            source: Arc::from(source.into()),
        }
    }

    /// The storage could not be reached.
    pub fn unavailable(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(StorageErrorKind::Unavailable, source)
    }

    /// The storage did not answer within `after`.
    pub fn timeout(after: Duration) -> Self {
        Self::new(
            StorageErrorKind::Timeout,
            format!("no answer within {after:?}"),
        )
    }

    /// Any other failure.
    pub fn other(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(StorageErrorKind::Other, source)
    }

    /// The class of failure.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            StorageErrorKind::Unavailable => "unavailable",
            StorageErrorKind::Timeout => "timed out",
            StorageErrorKind::Other => "error",
        };
        write!(f, "{kind}: {}", self.source)
    }
}

impl StdError for StorageError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// A codec failed to encode or decode a value.
#[derive(Debug, Clone)]
pub struct CodecError(BoxError);

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
