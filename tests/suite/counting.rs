//! A storage wrapper that counts calls, to check how much I/O an update does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tg_session::storage::{Record, Storage, Write, WriteOutcome};
use tg_session::{SharedStorage, StorageError, StorageKey, async_trait};

/// Counts the batches and records that go through to the wrapped storage.
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
}
