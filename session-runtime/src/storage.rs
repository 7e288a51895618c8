//! Where sessions live: the [`Storage`] trait every backend implements.
//!
//! A storage keeps opaque bytes under string keys, each record with a
//! version. It is called at most twice per update: once with every eager key
//! ([`Storage::load`]) and once with every changed session
//! ([`Storage::write`]), so a network storage can do each in one round trip.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StorageError;
use crate::key::StorageKey;

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

/// A stored session: its encoded bytes and the version they were written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The bytes the session's codec produced.
    pub value: Bytes,
    /// Starts at 1 and grows by one with every write.
    pub version: u64,
}

/// One change to apply in a [`Storage::write`] batch.
#[derive(Clone, Debug)]
pub enum Write {
    /// Store `value` if the stored version still is `expected_version`
    /// (`None`: only if nothing is stored). The new version is
    /// `expected_version + 1` (1 for a new record).
    Put {
        /// Where.
        key: StorageKey,
        /// The encoded session.
        value: Bytes,
        /// The version this update read; the write is refused if it changed.
        expected_version: Option<u64>,
        /// Drop the record this long after the write; `None` keeps it.
        ttl: Option<Duration>,
    },
    /// Remove the record, whatever its version (`clear()`).
    Delete {
        /// Where.
        key: StorageKey,
    },
}

impl Write {
    /// The key this write touches.
    pub fn key(&self) -> &StorageKey {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }

    /// The version a successful put stores.
    pub fn next_version(expected_version: Option<u64>) -> u64 {
        expected_version.map_or(1, |version| version.saturating_add(1))
    }
}

/// What became of one [`Write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The put was stored with this version.
    Written {
        /// The version now stored.
        version: u64,
    },
    /// The record is gone (or was not there).
    Deleted,
    /// The stored version was not the expected one; nothing was changed.
    Conflict,
}

/// A place to keep sessions: memory, Redis, SQLite, PostgreSQL, or your own.
///
/// Implementations must be safe to call concurrently. Each method takes a
/// whole batch so a networked storage answers it in one round trip; results
/// come back in the order of the input. A failure of the storage itself is an
/// `Err`; a version mismatch is not a failure but a
/// [`WriteOutcome::Conflict`] for that write, and the other writes of the
/// batch still apply.
///
/// # Writing your own
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use tg_session_runtime::async_trait;
/// use tg_session_runtime::storage::{Record, Storage, Write, WriteOutcome};
/// use tg_session_runtime::{StorageError, StorageKey};
///
/// /// Sessions in a plain map (no TTL): the smallest complete storage.
/// #[derive(Default)]
/// struct MapStorage(Mutex<HashMap<String, Record>>);
///
/// #[async_trait]
/// impl Storage for MapStorage {
///     fn name(&self) -> &str {
///         "map"
///     }
///
///     async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
///         let map = self.0.lock().map_err(|_| StorageError::other("map poisoned"))?;
///         Ok(keys.iter().map(|key| map.get(key.as_str()).cloned()).collect())
///     }
///
///     async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
///         let mut map = self.0.lock().map_err(|_| StorageError::other("map poisoned"))?;
///         Ok(writes
///             .iter()
///             .map(|write| match write {
///                 Write::Put { key, value, expected_version, .. } => {
///                     let stored = map.get(key.as_str()).map(|record| record.version);
///                     if stored != *expected_version {
///                         return WriteOutcome::Conflict;
///                     }
///                     let version = Write::next_version(*expected_version);
///                     map.insert(key.to_string(), Record { value: value.clone(), version });
///                     WriteOutcome::Written { version }
///                 }
///                 Write::Delete { key } => {
///                     map.remove(key.as_str());
///                     WriteOutcome::Deleted
///                 }
///             })
///             .collect())
///     }
/// }
/// ```
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// A short description for error messages and traces (`memory`,
    /// `redis://127.0.0.1:6379`, …). Must not contain secrets.
    fn name(&self) -> &str;

    /// Reads the records under `keys`; `None` where nothing (or only an
    /// expired record) is stored.
    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError>;

    /// Applies `writes`, each conditional on its version as documented on [`Write`].
    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError>;
}

#[async_trait]
impl<S: Storage + ?Sized> Storage for Arc<S> {
    fn name(&self) -> &str {
        (**self).name()
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        (**self).load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        (**self).write(writes).await
    }
}
