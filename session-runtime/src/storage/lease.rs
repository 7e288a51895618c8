//! Leases: the cross-process lock on a session key, taken with the load and
//! released with the commit.
//!
//! Inside one process, the updates of one key wait for each other on an
//! in-process lock. Processes sharing a storage (webhook replicas, workers
//! reading a queue) cannot see that lock, so a storage built for sharing
//! keeps a lease per key: who holds it and until when. An update takes the
//! leases of its keys in the round trip that loads them, and gives them back
//! in the round trip that writes its changes. A lease ends by itself after
//! its time to live, so a process that dies holding one blocks that key for
//! at most that long; a handler that runs longer has its leases renewed.
//!
//! A write is fenced by its lease: while another owner holds the key's
//! lease, the write is refused with [`Conflict::LeaseLost`], and the version
//! check refuses it anyway once the other owner wrote. A late write from a
//! process whose lease ran out can never overwrite anything.
//!
//! [`Conflict::LeaseLost`]: crate::storage::Conflict::LeaseLost

use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use crate::key::StorageKey;
use crate::storage::StorageError;
use crate::storage::{Record, Write, WriteOutcome};

/// Who holds a lease: one per update, unique across processes and time.
///
/// Its text (`<pid>-<random>-<sequence>`, ASCII) is what a storage keeps as
/// the lease's holder.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaseOwner(Arc<str>);

impl LeaseOwner {
    /// A new owner no other update, in any process, uses.
    pub fn new() -> Self {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let process = *PROCESS.get_or_init(|| {
            // The standard library seeds `RandomState` from the OS's
            // randomness: enough to tell processes (and restarts) apart.
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.finish()
        });
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        // Written on the stack (at most 44 bytes): the `Arc` is the one
        // allocation.
        let mut text: smallvec::SmallVec<[u8; 64]> = smallvec::SmallVec::new();
        let _ = write!(text, "{}-{process:016x}-{sequence:x}", std::process::id());
        // ASCII: borrowed as it is.
        Self(Arc::from(&*String::from_utf8_lossy(&text)))
    }

    /// The owner's text, as storages keep it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LeaseOwner {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LeaseOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LeaseOwner").field(&&*self.0).finish()
    }
}

impl std::fmt::Display for LeaseOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lease to take or renew: whose, and how long it lives unless renewed or
/// released.
#[derive(Clone, Copy, Debug)]
pub struct Lease<'a> {
    /// The update that holds it.
    pub owner: &'a LeaseOwner,
    /// How long it lives after being taken or renewed.
    pub ttl: Duration,
}

/// What [`Leases::acquire`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeasedLoad {
    /// Every lease was taken (or already held by this owner); one record per
    /// key, in the order of the keys, read after the lease was taken.
    Acquired(Vec<Option<Record>>),
    /// The key at `index` is leased by another owner. No lease of the batch
    /// is held by this owner after this answer (any taken were given back).
    Busy {
        /// Which key of the batch is taken.
        index: usize,
        /// How long that lease still lives at most (its remaining time to live).
        retry_in: Duration,
    },
}

/// Cross-process leases on session keys, offered by a storage that several
/// processes share (see [`Storage::leases`](crate::storage::Storage::leases)).
///
/// Inside one process, the updates of one key wait for each other on an
/// in-process lock; processes cannot see that lock, so a shared storage keeps
/// a lease per key: who holds it and until when. An update takes the leases
/// of its keys with the load and gives them back with the commit. A lease
/// ends by itself after its time to live (a dead process blocks its keys at
/// most that long), and running handlers renew theirs. Writes are fenced by
/// the lease, and the version check refuses a late write anyway.
///
/// The runtime calls [`acquire`](Leases::acquire) instead of
/// [`Storage::load`](crate::storage::Storage::load) and
/// [`write_and_release`](Leases::write_and_release) instead of
/// [`Storage::write`](crate::storage::Storage::write); each should cost what the call
/// it replaces costs (one round trip).
#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes the leases of all `keys` for `lease.owner` (a lease the owner
    /// already holds is renewed) and reads their records; or takes none and
    /// answers [`LeasedLoad::Busy`] when another owner holds one of them.
    ///
    /// The records must be read after the leases were taken (in the same
    /// atomic step or later), so they include every write committed by the
    /// previous holder.
    async fn acquire(
        &self,
        keys: &[StorageKey],
        lease: Lease<'_>,
    ) -> Result<LeasedLoad, StorageError>;

    /// Applies `writes` as [`Storage::write`](crate::storage::Storage::write) does,
    /// each also refused with [`Conflict::LeaseLost`] while another owner
    /// holds its key's lease, then releases `owner`'s leases on every key of
    /// `release`. Leases of other owners are left alone.
    ///
    /// With no writes, this only releases.
    ///
    /// [`Conflict::LeaseLost`]: crate::storage::Conflict::LeaseLost
    async fn write_and_release(
        &self,
        writes: &[Write],
        release: &[StorageKey],
        owner: &LeaseOwner,
    ) -> Result<Vec<WriteOutcome>, StorageError>;

    /// Extends `lease.owner`'s leases on `keys` by `lease.ttl` from now.
    /// Answers `false` if any of them is no longer held by that owner.
    async fn renew(&self, keys: &[StorageKey], lease: Lease<'_>) -> Result<bool, StorageError>;

    /// Starts watching `key` for the release of its lease, so a waiter is
    /// woken at once instead of polling. Called before the next
    /// [`acquire`](Leases::acquire) attempt, so a release that happens
    /// between that attempt and the wait is not missed.
    ///
    /// The default watches nothing: the waiter polls with a backoff.
    fn watch(&self, key: &StorageKey) -> ReleaseWatch {
        let _ = key;
        ReleaseWatch::poll()
    }
}

/// Wakes a waiter when a lease it waits for may have been released.
///
/// From [`Leases::watch`]: [`ReleaseWatch::notify`] for a storage that hears
/// of releases (Redis pub/sub, PostgreSQL `LISTEN`), [`ReleaseWatch::poll`]
/// for one that does not.
pub struct ReleaseWatch {
    notified: Option<Pin<Box<OwnedNotified>>>,
}

impl ReleaseWatch {
    /// No notification: the waiter polls with a backoff.
    pub fn poll() -> Self {
        Self { notified: None }
    }

    /// Wakes on the next `notify_waiters` (or `notify_one`) of `notify`
    /// after this call.
    pub fn notify(notify: Arc<Notify>) -> Self {
        let mut notified = Box::pin(notify.notified_owned());
        notified.as_mut().enable();
        Self {
            notified: Some(notified),
        }
    }

    /// Whether a release will wake this watch (rather than only the timeout).
    pub fn is_notified(&self) -> bool {
        self.notified.is_some()
    }

    /// Waits for the release, or at most `max`.
    pub async fn wait(self, max: Duration) {
        match self.notified {
            Some(notified) => {
                let _ = tokio::time::timeout(max, notified).await;
            }
            None => tokio::time::sleep(max).await,
        }
    }
}

impl std::fmt::Debug for ReleaseWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseWatch")
            .field("notified", &self.is_notified())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_unique() {
        let (a, b) = (LeaseOwner::new(), LeaseOwner::new());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with(&format!("{}-", std::process::id())));
    }

    #[tokio::test]
    async fn a_watch_hears_a_release_after_it_started() {
        let notify = Arc::new(Notify::new());
        let watch = ReleaseWatch::notify(Arc::clone(&notify));
        notify.notify_waiters();
        let woke =
            tokio::time::timeout(Duration::from_secs(5), watch.wait(Duration::from_secs(60)));
        assert!(woke.await.is_ok());
    }
}
