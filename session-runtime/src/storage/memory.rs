//! The embedded default storage: encoded bytes in a concurrent cache.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::ops::compute::Op;
use moka::sync::Cache;

use crate::error::StorageError;
use crate::key::StorageKey;
use crate::storage::{Record, Storage, Write, WriteOutcome};

/// Sessions in this process's memory, lost on restart.
///
/// It keeps the *encoded* bytes, exactly as Redis or SQL would, so a session
/// type that does not survive its codec fails in tests rather than first in
/// production. Built on [`moka`]: lock-free reads, per-record TTL, and an
/// optional bound on the number of records (least recently used go first).
///
/// Cloning is cheap and shares the records.
#[derive(Clone)]
pub struct MemoryStorage {
    records: Cache<String, Stored>,
}

#[derive(Clone)]
struct Stored {
    record: Record,
    ttl: Option<Duration>,
}

struct PerRecordTtl;

impl moka::Expiry<String, Stored> for PerRecordTtl {
    fn expire_after_create(&self, _: &String, value: &Stored, _: Instant) -> Option<Duration> {
        value.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        value.ttl
    }
}

impl MemoryStorage {
    /// An unbounded memory storage.
    pub fn new() -> Self {
        Self {
            records: Cache::builder().expire_after(PerRecordTtl).build(),
        }
    }

    /// A memory storage that keeps at most `max_records` sessions, evicting
    /// the least recently used beyond that.
    pub fn with_capacity(max_records: u64) -> Self {
        Self {
            records: Cache::builder()
                .max_capacity(max_records)
                .expire_after(PerRecordTtl)
                .build(),
        }
    }

    /// How many records are stored (approximate while writes are in flight).
    pub fn len(&self) -> u64 {
        self.records.run_pending_tasks();
        self.records.entry_count()
    }

    /// Whether no record is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(&self, write: &Write) -> WriteOutcome {
        match write {
            Write::Put {
                key,
                value,
                expected_version,
                ttl,
            } => {
                let mut outcome = WriteOutcome::Conflict;
                self.records
                    .entry_by_ref(key.as_str())
                    .and_compute_with(|current| {
                        let stored = current.map(|entry| entry.value().record.version);
                        if stored != *expected_version {
                            return Op::Nop;
                        }
                        let version = Write::next_version(*expected_version);
                        outcome = WriteOutcome::Written { version };
                        Op::Put(Stored {
                            record: Record {
                                value: value.clone(),
                                version,
                            },
                            ttl: *ttl,
                        })
                    });
                outcome
            }
            Write::Delete { key } => {
                self.records.invalidate(key.as_str());
                WriteOutcome::Deleted
            }
        }
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("records", &self.records.entry_count())
            .finish()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        "memory"
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        Ok(keys
            .iter()
            .map(|key| self.records.get(key.as_str()).map(|stored| stored.record))
            .collect())
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        Ok(writes.iter().map(|write| self.apply(write)).collect())
    }
}
