//! A storage wrapper that counts calls, to check how much I/O an update does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tg_session::storage::{
    Lease, LeaseOwner, LeasedLoad, Leases, Record, Storage, Write, WriteOutcome,
};
use tg_session::storage::{SharedStorage, async_trait};
use tg_session::{StorageError, StorageKey};

/// Counts the batches and records that go through to the wrapped storage,
/// and forwards its leases (a lease taken with a load counts as a load, a
/// release with writes as a write, a release alone as neither).
pub struct CountingStorage {
    inner: SharedStorage,
    /// `load` calls.
    pub loads: AtomicUsize,
    /// Keys asked for in all `load` calls.
    pub loaded_keys: AtomicUsize,
    /// `write` calls.
    pub writes: AtomicUsize,
    /// Puts and deletes in all `write` calls.
    pub written_records: AtomicUsize,
    /// Releases of leases that carried no write.
    pub releases: AtomicUsize,
}

impl CountingStorage {
    /// Wraps `inner`.
    pub fn new(inner: SharedStorage) -> Arc<Self> {
        Arc::new(Self {
            inner,
            loads: AtomicUsize::new(0),
            loaded_keys: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            written_records: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
        })
    }

    /// (load calls, write calls) so far.
    pub fn calls(&self) -> (usize, usize) {
        (
            self.loads.load(Ordering::SeqCst),
            self.writes.load(Ordering::SeqCst),
        )
    }

    /// Forgets the counts so far.
    pub fn reset(&self) {
        for counter in [
            &self.loads,
            &self.loaded_keys,
            &self.writes,
            &self.written_records,
            &self.releases,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Storage for CountingStorage {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.loaded_keys.fetch_add(keys.len(), Ordering::SeqCst);
        self.inner.load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.written_records
            .fetch_add(writes.len(), Ordering::SeqCst);
        self.inner.write(writes).await
    }

    fn leases(&self) -> Option<&dyn Leases> {
        self.inner.leases().map(|_| self as &dyn Leases)
    }
}

impl CountingStorage {
    fn inner_leases(&self) -> Result<&dyn Leases, StorageError> {
        self.inner
            .leases()
            .ok_or_else(|| StorageError::other("the wrapped storage has no leases"))
    }
}

#[async_trait]
impl Leases for CountingStorage {
    async fn acquire(
        &self,
        keys: &[StorageKey],
        lease: Lease<'_>,
    ) -> Result<LeasedLoad, StorageError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.loaded_keys.fetch_add(keys.len(), Ordering::SeqCst);
        self.inner_leases()?.acquire(keys, lease).await
    }

    async fn write_and_release(
        &self,
        writes: &[Write],
        release: &[StorageKey],
        owner: &LeaseOwner,
    ) -> Result<Vec<WriteOutcome>, StorageError> {
        match writes.is_empty() {
            true => self.releases.fetch_add(1, Ordering::SeqCst),
            false => self.writes.fetch_add(1, Ordering::SeqCst),
        };
        self.written_records
            .fetch_add(writes.len(), Ordering::SeqCst);
        self.inner_leases()?
            .write_and_release(writes, release, owner)
            .await
    }

    async fn renew(&self, keys: &[StorageKey], lease: Lease<'_>) -> Result<bool, StorageError> {
        self.inner_leases()?.renew(keys, lease).await
    }

    fn watch(&self, key: &StorageKey) -> tg_session::storage::ReleaseWatch {
        match self.inner.leases() {
            Some(leases) => leases.watch(key),
            None => tg_session::storage::ReleaseWatch::poll(),
        }
    }
}
