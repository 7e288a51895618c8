//! Where sessions live: the [`Storage`] trait every backend implements.
//!
//! A storage keeps opaque bytes under string keys, each record with a
//! version. Calls take whole batches: an update loads its eager sessions of
//! one storage in one [`Storage::load`] and writes everything it changed there
//! in one [`Storage::write`], so a network storage can answer each in one
//! round trip. A lazy session, [`save`](crate::SessionRef::save) and
//! [`clear`](crate::SessionRef::clear) are calls of their own.
//!
//! A storage that several processes share also offers [`Leases`] (see
//! [`Storage::leases`]): the load takes a lease on each key and the commit
//! releases it, in the same round trips, so the updates of one key are
//! serialized across processes as they are inside one.
//!
//! The data operations ([`crate::data`]) need two more methods, optional
//! for a storage of your own: [`Storage::scan`] (the keys under a
//! [`KeyPrefix`], page by page) and [`Storage::restore`] (records written
//! with their own version and TTL, for copies).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::key::StorageKey;

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

mod error;
mod lease;
mod scan;
mod version;

/// The attribute [`Storage`] and [`Leases`] are written with: put
/// `#[async_trait]` on your `impl Storage for …` block.
pub use ::async_trait::async_trait;
pub use error::{StorageError, StorageErrorKind};
pub use lease::{Lease, LeaseOwner, LeasedLoad, Leases, ReleaseWatch};
pub use scan::{
    KeyPrefix, MAX_SCAN_PAGE, Restore, RestoreOutcome, ScanCursor, ScanPage, ScannedRecord,
};
pub use version::version_for_new_record;

/// A storage shared between the manager, session types registered in it and
/// the tasks that write back and release leases.
pub type SharedStorage = Arc<dyn Storage>;

/// A stored session: its encoded bytes and the version they were written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The bytes the session's codec produced.
    pub value: Bytes,
    /// Grows by one with every write; a new record (a first write, or one
    /// after a delete or expiry) starts above every version the key had
    /// before, so a version never repeats over the key's lifetime.
    pub version: u64,
}

/// One change to apply in a [`Storage::write`] batch.
#[derive(Clone, Debug)]
pub enum Write {
    /// Store `value` if the stored version still is `expected_version`
    /// (`None`: only if nothing is stored). The new version is
    /// `expected_version + 1`, and for a new record one the key never had
    /// ([`version_for_new_record`], or the storage's own clock).
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

    /// The version a successful put stores: one above the expected version,
    /// or [`version_for_new_record`] for a new record.
    // Inlined: the commit of every in-process update calls it.
    #[inline]
    pub fn next_version(expected_version: Option<u64>) -> u64 {
        expected_version.map_or_else(version_for_new_record, |version| version.saturating_add(1))
    }
}

/// What became of one [`Write`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The put was stored with this version.
    Written {
        /// The version now stored.
        version: u64,
    },
    /// The record is gone (or was not there).
    Deleted,
    /// The write was refused and nothing was changed; the cause says why.
    Conflict(Conflict),
    /// This write failed while others of the batch were applied (a Redis
    /// Cluster node down while the others answer). As with an `Err`, a write
    /// refused or never sent changed nothing, and one that timed out may
    /// still have been applied. A storage that fails as a whole answers
    /// `Err` for the whole batch.
    Failed(StorageError),
}

/// Why a [`Write`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Conflict {
    /// Another writer stored a newer version (or created the record) since
    /// this update read it.
    NewerVersion,
    /// The record this update read expired before the write.
    Expired,
    /// Another update holds the key's lease: this update's own lease ran out
    /// (its handler outlived the lease without renewing it) and was taken.
    LeaseLost,
}

/// A place to keep sessions: memory, Redis, SQLite, PostgreSQL, or your own.
///
/// Implementations must be safe to call concurrently. Each method takes a
/// whole batch so a networked storage answers it in one round trip; results
/// come back in the order of the input. A failure of the storage itself is an
/// `Err`; a version mismatch is not a failure but a
/// [`WriteOutcome::Conflict`] for that write, and the other writes of the
/// batch still apply. When part of a batch was applied and the rest failed,
/// the applied writes must still be reported (fail only the others), so the
/// caller never mistakes a write that happened for one that did not.
///
/// A storage that several processes share should also implement [`Leases`]
/// and return it from [`Storage::leases`]; without it, the updates of one key
/// are serialized inside each process only, and a concurrent update of
/// another process ends in a [`Conflict`].
///
/// # Writing your own
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use tg_session::storage::async_trait;
/// use tg_session::storage::{Conflict, Record, Storage, Write, WriteOutcome};
/// use tg_session::{StorageError, StorageKey};
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
///                         return WriteOutcome::Conflict(Conflict::NewerVersion);
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
///
/// The `Any` bound costs an implementation nothing (every `'static` type is
/// `Any`): it lets the manager recognise a [`MemoryStorage`] handed over as a
/// [`SharedStorage`] and keep its sessions as values.
///
/// [`MemoryStorage`]: crate::MemoryStorage
#[async_trait]
pub trait Storage: Any + Send + Sync {
    /// A short description for error messages and traces (`memory`,
    /// `redis://127.0.0.1:6379`, …). Must not contain secrets.
    fn name(&self) -> &str;

    /// Reads the records under `keys`; `None` where nothing (or only an
    /// expired record) is stored.
    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError>;

    /// Applies `writes`, each conditional on its version as documented on [`Write`].
    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError>;

    /// The cross-process leases of this storage, if it serializes the updates
    /// of one key across processes; `None` (the default) when it is used by
    /// one process only (memory) or was configured so.
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }

    /// One page of the keys selected by `prefix`, in an order of the
    /// storage's choosing, each once over a whole scan (a key written or
    /// removed while the scan runs may or may not be seen); with
    /// `with_values`, each with its record and remaining TTL. Start with
    /// `cursor` `None`, then pass the page's [`ScanPage::next`] until it is
    /// `None`. At most `limit` entries a page (at least 1, at most
    /// [`MAX_SCAN_PAGE`]), or a few more where the storage's own paging is
    /// a hint (Redis: its last `SCAN` step's keys); memory stays bounded by
    /// the page, whatever the number of keys. Expired records and the storage's own bookkeeping
    /// (leases) are never listed.
    ///
    /// The default answers an error of kind
    /// [`Unsupported`](crate::storage::StorageErrorKind::Unsupported), so a storage
    /// written before scans existed still compiles; the data operations
    /// ([`crate::data`]) need it.
    async fn scan(
        &self,
        prefix: &KeyPrefix,
        cursor: Option<&ScanCursor>,
        limit: usize,
        with_values: bool,
    ) -> Result<ScanPage, StorageError> {
        let _ = (prefix, cursor, limit, with_values);
        Err(scan::unsupported(self.name(), "scan"))
    }

    /// Writes each record with its own version and TTL, unless its key
    /// holds (or held) the same or a newer version, or an update holds the
    /// key's lease ([`RestoreOutcome::Skipped`]): copying between storages
    /// and putting a backup back keep every record as it was, and running
    /// a copy again changes nothing.
    ///
    /// The default answers an error of kind
    /// [`Unsupported`](crate::storage::StorageErrorKind::Unsupported).
    async fn restore(&self, records: &[Restore]) -> Result<Vec<RestoreOutcome>, StorageError> {
        let _ = records;
        Err(scan::unsupported(self.name(), "restore"))
    }
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

    fn leases(&self) -> Option<&dyn Leases> {
        (**self).leases()
    }

    async fn scan(
        &self,
        prefix: &KeyPrefix,
        cursor: Option<&ScanCursor>,
        limit: usize,
        with_values: bool,
    ) -> Result<ScanPage, StorageError> {
        (**self).scan(prefix, cursor, limit, with_values).await
    }

    async fn restore(&self, records: &[Restore]) -> Result<Vec<RestoreOutcome>, StorageError> {
        (**self).restore(records).await
    }
}

/// `limit` within 1 and [`MAX_SCAN_PAGE`].
pub(crate) fn page_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_SCAN_PAGE)
}
