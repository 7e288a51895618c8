//! The bounded store of [`MemoryStorage::with_capacity`]: at most so many
//! records, on [`moka`], the least recently used evicted beyond that.
//!
//! The cache holds each record as a shared cell, so that a write of a
//! record without a TTL is made in the record, under its lock, with no new
//! cache entry: a cache write allocates its entry and its bookkeeping, and
//! leaves garbage for the cache to collect and rehash (about 6 of the 12
//! allocations and 10,000 of the 12,500 instructions of an update, when
//! every write went through the cache). A record with a TTL is replaced on
//! write, as the cache's expiry of it has to move.
//!
//! [`MemoryStorage::with_capacity`]: super::MemoryStorage::with_capacity

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use parking_lot::Mutex;

use super::{NewValue, Now, Stored, Value, next_version, put_into};
use crate::lock::KeyLocks;
use crate::storage::{Conflict, Record, Restore, RestoreOutcome, StorageError};

/// How long the bounded store keeps a record past its expiry (invisible),
/// so that a write prepared before the expiry is refused as
/// [`Conflict::Expired`] rather than blamed on another writer.
const EXPIRED_KEPT: Duration = Duration::from_secs(60);

/// A record of the cache, shared with whoever reads or writes it.
struct CachedRecord {
    /// The record's TTL, fixed for its life (the cache's expiry of it is
    /// set when it is put): a write with a TTL puts a new record.
    ttl: Option<Duration>,
    stored: Mutex<Stored>,
}

impl CachedRecord {
    fn new(stored: Stored) -> Arc<Self> {
        Arc::new(Self {
            ttl: stored.ttl,
            stored: Mutex::new(stored),
        })
    }
}

type Records = Cache<String, Arc<CachedRecord>, foldhash::fast::RandomState>;

struct PerRecordTtl;

impl moka::Expiry<String, Arc<CachedRecord>> for PerRecordTtl {
    fn expire_after_create(
        &self,
        _: &String,
        record: &Arc<CachedRecord>,
        _: Instant,
    ) -> Option<Duration> {
        record.ttl.map(|ttl| ttl.saturating_add(EXPIRED_KEPT))
    }

    fn expire_after_update(
        &self,
        _: &String,
        record: &Arc<CachedRecord>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        record.ttl.map(|ttl| ttl.saturating_add(EXPIRED_KEPT))
    }
}

/// The bounded store. Its keys are locked in a table beside the records
/// (see `MemoryStorage::key_home`): eviction may drop a record, so a key's
/// lock cannot live in it.
///
/// A record's lock is never held across a call into the cache: the cache
/// may lock it (in a `compute`), never the other way round.
pub(super) struct Bounded {
    records: Records,
    /// The table its keys are locked in: the first manager's.
    pub(super) locks: OnceLock<Arc<KeyLocks>>,
}

impl Bounded {
    pub(super) fn new(max_records: u64) -> Self {
        Self {
            records: Cache::builder()
                .max_capacity(max_records)
                // moka's default (TinyLFU) refuses a newcomer used less
                // often than the regulars: a new user's first session
                // would be dropped at once. Plain LRU keeps recent users.
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(PerRecordTtl)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            locks: OnceLock::new(),
        }
    }

    /// How many records are live at `now`.
    pub(super) fn live(&self, now: &Now) -> usize {
        self.records
            .iter()
            .filter(|(_, record)| record.stored.lock().live(now))
            .count()
    }

    /// Calls `visit` with every record, locked.
    pub(super) fn for_each(&self, mut visit: impl FnMut(&str, &Stored)) {
        for (key, record) in self.records.iter() {
            visit(&key, &record.stored.lock());
        }
    }

    /// What `read` makes of the record at `key`, if there is one.
    pub(super) fn read<R>(&self, key: &str, read: impl FnOnce(&Stored) -> R) -> Option<R> {
        self.records
            .get(key)
            .map(|record| read(&record.stored.lock()))
    }

    /// The record at `key` as bytes, if live at `now`.
    pub(super) fn get(&self, key: &str, now: &Now) -> Result<Option<Record>, StorageError> {
        self.read(key, |stored| stored.live(now).then(|| stored.record()))
            .flatten()
            .transpose()
    }

    /// The conditional put of `MemoryStorage::put`: in the record when it
    /// is there and neither it nor the write has a TTL, else through the
    /// cache, putting a new record.
    pub(super) fn put<New: NewValue>(
        &self,
        key: &str,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
        now: &Now,
        new: New,
    ) -> Result<Result<u64, Conflict>, New::Unchanged> {
        if ttl.is_none()
            && let Some(record) = self.records.get(key)
            && record.ttl.is_none()
        {
            let written = put_into(&mut record.stored.lock(), expected_version, ttl, now, new)?;
            return Ok(
                written.and_then(|version| self.keep_written(key, &record).map(|()| version))
            );
        }
        let mut written = Ok(Err(Conflict::NewerVersion));
        self.records.entry_by_ref(key).and_compute_with(|entry| {
            let record = entry.map(|entry| entry.into_value());
            let current = record.as_ref().map(|record| record.stored.lock());
            if let Some(unchanged) = current.as_deref().and_then(|c| new.already_in(c)) {
                written = Err(unchanged);
                return Op::Nop;
            }
            match next_version(current.as_deref(), expected_version, now) {
                Ok(version) => {
                    written = Ok(Ok(version));
                    let mut value = Value::Encoded(bytes::Bytes::new());
                    new.set(&mut value);
                    Op::Put(CachedRecord::new(Stored::new(value, version, ttl, now)))
                }
                Err(cause) => {
                    written = Ok(Err(cause));
                    Op::Nop
                }
            }
        });
        written
    }

    /// Makes sure `record`, just written in place, is still the cache's at
    /// `key`: eviction (or a delete) may have taken it out while it was
    /// written, and a write to a record nobody can read again would be
    /// lost. Put back if it was taken out, unless a delete emptied it
    /// (see [`Bounded::delete`]: the write came first, then the delete);
    /// refused if another record was put there since, holding a later
    /// write.
    fn keep_written(&self, key: &str, record: &Arc<CachedRecord>) -> Result<(), Conflict> {
        if self
            .records
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(&current, record))
        {
            return Ok(());
        }
        let mut kept = Err(Conflict::NewerVersion);
        self.records.entry_by_ref(key).and_compute_with(|entry| {
            match entry.map(|entry| entry.into_value()) {
                Some(current) if Arc::ptr_eq(&current, record) => {
                    kept = Ok(());
                    Op::Nop
                }
                Some(_) => Op::Nop,
                None => {
                    kept = Ok(());
                    let present = record.stored.lock().present;
                    match present {
                        true => Op::Put(Arc::clone(record)),
                        false => Op::Nop,
                    }
                }
            }
        });
        kept
    }

    /// Removes the record at `key`, emptied first: a write made in it
    /// meanwhile is refused, or put back as a later one (see
    /// [`Bounded::keep_written`]).
    pub(super) fn delete(&self, key: &str) {
        if let Some(record) = self.records.get(key) {
            record.stored.lock().clear_value();
        }
        self.records.invalidate(key);
    }

    /// Puts `stored`, restored from `restore`, if `newer` than the record
    /// there.
    pub(super) fn restore(
        &self,
        restore: &Restore,
        stored: Stored,
        newer: impl FnOnce(Option<&Stored>, &Restore) -> bool,
    ) -> RestoreOutcome {
        let mut outcome = RestoreOutcome::Skipped;
        self.records
            .entry_by_ref(restore.key.as_str())
            .and_compute_with(|entry| {
                let record = entry.map(|entry| entry.into_value());
                let current = record.as_ref().map(|record| record.stored.lock());
                match newer(current.as_deref(), restore) {
                    true => {
                        outcome = RestoreOutcome::Restored;
                        Op::Put(CachedRecord::new(stored))
                    }
                    false => Op::Nop,
                }
            });
        outcome
    }

    /// Runs the cache's pending evictions now (they run on its reads and
    /// writes).
    #[cfg(test)]
    pub(super) fn run_pending_tasks(&self) {
        self.records.run_pending_tasks();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::storage::memory::EncodedPut;

    fn stored(version: u64) -> Stored {
        Stored::new(
            Value::Encoded(bytes::Bytes::from_static(b"value")),
            version,
            None,
            &Now::lazy(),
        )
    }

    fn put(bounded: &Bounded, key: &str, version: u64) -> Arc<CachedRecord> {
        let record = CachedRecord::new(stored(version));
        bounded.records.insert(key.to_owned(), Arc::clone(&record));
        record
    }

    #[test]
    fn a_record_written_after_its_eviction_is_put_back() {
        let bounded = Bounded::new(10);
        let record = put(&bounded, "k", 1);
        bounded.records.invalidate("k");
        assert_eq!(bounded.keep_written("k", &record), Ok(()));
        let back = bounded.records.get("k").expect("put back");
        assert!(Arc::ptr_eq(&back, &record));
    }

    #[test]
    fn a_record_emptied_by_a_delete_is_not_put_back() {
        let bounded = Bounded::new(10);
        let record = put(&bounded, "k", 1);
        bounded.delete("k");
        assert_eq!(bounded.keep_written("k", &record), Ok(()));
        assert!(bounded.records.get("k").is_none());
    }

    #[test]
    fn a_write_to_a_replaced_record_is_refused() {
        let bounded = Bounded::new(10);
        let record = put(&bounded, "k", 1);
        put(&bounded, "k", 2);
        assert_eq!(
            bounded.keep_written("k", &record),
            Err(Conflict::NewerVersion)
        );
        assert_eq!(bounded.read("k", |stored| stored.version), Some(2));
    }

    #[test]
    fn a_write_without_ttl_is_made_in_the_record() {
        let bounded = Bounded::new(10);
        let record = put(&bounded, "k", 1);
        let bytes = bytes::Bytes::from_static(b"next");
        let written = bounded.put("k", Some(1), None, &Now::lazy(), EncodedPut(&bytes));
        assert_eq!(written, Ok(Ok(2)));
        let now = bounded.records.get("k").unwrap();
        assert!(Arc::ptr_eq(&now, &record), "the same record");
        assert_eq!(record.stored.lock().version, 2);
    }

    #[test]
    fn a_write_with_a_ttl_puts_a_new_record() {
        let bounded = Bounded::new(10);
        let record = put(&bounded, "k", 1);
        let bytes = bytes::Bytes::from_static(b"next");
        let ttl = Some(Duration::from_secs(60));
        let written = bounded.put("k", Some(1), ttl, &Now::lazy(), EncodedPut(&bytes));
        assert_eq!(written, Ok(Ok(2)));
        let now = bounded.records.get("k").unwrap();
        assert!(!Arc::ptr_eq(&now, &record), "a new record");
        assert_eq!(now.ttl, ttl);
        assert_eq!(record.stored.lock().version, 1, "the old one untouched");
    }
}
