//! The bounded store of [`MemoryStorage::with_capacity`]: at most so many
//! records, on [`moka`], the least recently used evicted beyond that.
//!
//! The cache holds each record as a shared cell, so that a write of a
//! record without a TTL is made in the record, under its lock, with no new
//! cache entry: a cache write allocates its entry and its bookkeeping, and
//! leaves garbage for the cache to collect and rehash. When every write
//! went through the cache, an update of one session took 11.7 allocations
//! and 12,500 instructions (`per_update bounded`); in place, 2 and 4,200,
//! the record the update loaded written with no second look-up. A record
//! with a TTL is replaced on write, as the cache's expiry of it has to
//! move.
//!
//! [`MemoryStorage::with_capacity`]: super::MemoryStorage::with_capacity

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use parking_lot::Mutex;

use super::{NewValue, Now, SharedRecord, Stored, TypedPut, Value, next_version, put_into};
use crate::lock::KeyLocks;
use crate::session::Session;
use crate::storage::{Conflict, Record, Restore, RestoreOutcome, StorageError};

/// How long the bounded store keeps a record past its expiry (invisible),
/// so that a write prepared before the expiry is refused as
/// [`Conflict::Expired`] rather than blamed on another writer.
const EXPIRED_KEPT: Duration = Duration::from_secs(60);

type Records = Cache<String, SharedRecord, foldhash::fast::RandomState>;

/// A new record of the cache, holding `stored`.
fn new_record(stored: Stored) -> SharedRecord {
    Arc::new(Mutex::new(stored))
}

/// The cache's expiry of a record: its TTL when it was put, plus
/// [`EXPIRED_KEPT`]. A record's TTL changes only with a new record (a write
/// with a TTL puts one), so the cache's expiry of it never goes stale.
struct PerRecordTtl;

impl PerRecordTtl {
    // The record is never locked by whoever calls into the cache (see
    // `Bounded`): this waits for no call into the cache.
    fn expiry(record: &SharedRecord) -> Option<Duration> {
        record
            .lock()
            .ttl
            .map(|ttl| ttl.saturating_add(EXPIRED_KEPT))
    }
}

impl moka::Expiry<String, SharedRecord> for PerRecordTtl {
    fn expire_after_create(
        &self,
        _: &String,
        record: &SharedRecord,
        _: Instant,
    ) -> Option<Duration> {
        Self::expiry(record)
    }

    fn expire_after_update(
        &self,
        _: &String,
        record: &SharedRecord,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::expiry(record)
    }
}

/// What a write in place did.
enum InPlace<New> {
    Done(Result<u64, Conflict>),
    /// The record has a TTL: the write is for a new record.
    Refused(New),
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
            .filter(|(_, record)| record.lock().live(now))
            .count()
    }

    /// Calls `visit` with every record, locked.
    pub(super) fn for_each(&self, mut visit: impl FnMut(&str, &Stored)) {
        for (key, record) in self.records.iter() {
            visit(&key, &record.lock());
        }
    }

    /// The record at `key`, if there is one.
    pub(super) fn record(&self, key: &str) -> Option<SharedRecord> {
        self.records.get(key)
    }

    /// What `read` makes of the record at `key`, if there is one.
    pub(super) fn read<R>(&self, key: &str, read: impl FnOnce(&Stored) -> R) -> Option<R> {
        self.records.get(key).map(|record| read(&record.lock()))
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
        let new = match self.records.get(key).filter(|_| ttl.is_none()) {
            Some(record) => match self.put_in(key, &record, expected_version, now, new)? {
                InPlace::Done(written) => return Ok(written),
                InPlace::Refused(new) => new,
            },
            None => new,
        };
        let mut written = Ok(Err(Conflict::NewerVersion));
        self.records.entry_by_ref(key).and_compute_with(|entry| {
            let record = entry.map(|entry| entry.into_value());
            let current = record.as_ref().map(|record| record.lock());
            if let Some(unchanged) = current.as_deref().and_then(|c| new.already_in(c)) {
                written = Err(unchanged);
                return Op::Nop;
            }
            match next_version(current.as_deref(), expected_version, now) {
                Ok(version) => {
                    written = Ok(Ok(version));
                    let mut value = Value::Encoded(bytes::Bytes::new());
                    new.set(&mut value);
                    Op::Put(new_record(Stored::new(value, version, ttl, now)))
                }
                Err(cause) => {
                    written = Ok(Err(cause));
                    Op::Nop
                }
            }
        });
        written
    }

    /// The commit's write of an update that loaded `record` from `key` at
    /// `expected_version` (see `HeldRecord`): made in it as
    /// [`Bounded::put`] would write in the record it finds at `key`, with no
    /// look-up (a write that replaced or dropped `record` since is told at
    /// the end: see [`Bounded::keep_written`]). `None` when the record still
    /// holds a value equal to `value` by `PartialEq`.
    // Cold and never inlined: `HeldRecord::commit` is inlined into the
    // unbounded store's commit of every session type, and this branch of
    // it should cost that path as little as it can (it still costs about
    // 16 instructions per session: callgrind, `per_update memory-4`).
    #[cold]
    #[inline(never)]
    pub(super) fn commit_held<T: Session>(
        &self,
        key: &str,
        record: &SharedRecord,
        value: T,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Option<Result<u64, Conflict>> {
        let now = Now::lazy();
        let new = TypedPut {
            value,
            expected_version,
        };
        let new = match ttl {
            None => match self.put_in(key, record, expected_version, &now, new) {
                Ok(InPlace::Done(written)) => return Some(written),
                Ok(InPlace::Refused(new)) => new,
                Err(()) => return None,
            },
            Some(_) => new,
        };
        self.put(key, expected_version, ttl, &now, new).ok()
    }

    /// Writes `new`, which has no TTL, in `record`, the cache's at `key`
    /// when it was looked up, under its version check, and makes sure the
    /// record is still there; or gives `new` back if the record has a TTL
    /// (it is replaced: see [`PerRecordTtl`]).
    fn put_in<New: NewValue>(
        &self,
        key: &str,
        record: &SharedRecord,
        expected_version: Option<u64>,
        now: &Now,
        new: New,
    ) -> Result<InPlace<New>, New::Unchanged> {
        let written = {
            let mut current = record.lock();
            if current.ttl.is_some() {
                return Ok(InPlace::Refused(new));
            }
            put_into(&mut current, expected_version, None, now, new)?
        };
        Ok(InPlace::Done(written.and_then(|version| {
            self.keep_written(key, record).map(|()| version)
        })))
    }

    /// Makes sure `record`, just written in place, is still the cache's at
    /// `key`: eviction (or a delete) may have taken it out while it was
    /// written, and a write to a record nobody can read again would be
    /// lost. Put back if it was taken out, unless a delete emptied it
    /// (see [`Bounded::delete`]: the write came first, then the delete);
    /// refused if another record was put there since, holding a later
    /// write.
    fn keep_written(&self, key: &str, record: &SharedRecord) -> Result<(), Conflict> {
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
                    let present = record.lock().present;
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
            record.lock().clear_value();
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
                let current = record.as_ref().map(|record| record.lock());
                match newer(current.as_deref(), restore) {
                    true => {
                        outcome = RestoreOutcome::Restored;
                        Op::Put(new_record(stored))
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

    fn put(bounded: &Bounded, key: &str, version: u64) -> SharedRecord {
        let record = new_record(stored(version));
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
        assert_eq!(record.lock().version, 2);
    }

    #[test]
    fn a_write_with_a_ttl_puts_a_new_record() {
        let bounded = Bounded::new(10);
        let record = put(&bounded, "k", 1);
        let bytes = bytes::Bytes::from_static(b"next");
        let ttl = Some(Duration::from_secs(60));
        let written = bounded.put("k", Some(1), ttl, &Now::lazy(), EncodedPut(&bytes));
        assert_replaced(&bounded, &record, written, ttl);
    }

    /// `written` put a new record at `k` with `ttl`, in place of `record`,
    /// which stays as it was.
    fn assert_replaced<E: std::fmt::Debug + PartialEq>(
        bounded: &Bounded,
        record: &SharedRecord,
        written: Result<Result<u64, Conflict>, E>,
        ttl: Option<Duration>,
    ) {
        assert_eq!(written, Ok(Ok(2)));
        let now = bounded.records.get("k").unwrap();
        assert!(!Arc::ptr_eq(&now, record), "a new record");
        assert_eq!(now.lock().ttl, ttl);
        assert_eq!(record.lock().version, 1, "the old one untouched");
    }

    #[test]
    fn a_write_without_ttl_over_a_record_with_one_puts_a_new_record() {
        let bounded = Bounded::new(10);
        let ttl = Some(Duration::from_secs(60));
        let record = new_record(Stored::new(
            Value::Encoded(bytes::Bytes::from_static(b"value")),
            1,
            ttl,
            &Now::lazy(),
        ));
        bounded.records.insert("k".to_owned(), Arc::clone(&record));
        let bytes = bytes::Bytes::from_static(b"next");
        let written = bounded.put("k", Some(1), None, &Now::lazy(), EncodedPut(&bytes));
        assert_replaced(&bounded, &record, written, None);
    }

    #[test]
    fn a_write_in_a_record_the_cache_evicted_meanwhile_is_kept() {
        let bounded = Bounded::new(4);
        let record = put(&bounded, "k", 1);
        for other in 0..20 {
            put(&bounded, &format!("other{other}"), 1);
            bounded.records.get(&format!("other{other}"));
        }
        bounded.run_pending_tasks();
        assert!(
            bounded.records.get("k").is_none(),
            "evicted, as the least recently used"
        );
        let bytes = bytes::Bytes::from_static(b"next");
        let written = bounded.put_in("k", &record, Some(1), &Now::lazy(), EncodedPut(&bytes));
        assert!(matches!(written, Ok(InPlace::Done(Ok(2)))));
        let back = bounded.records.get("k").expect("put back");
        assert!(Arc::ptr_eq(&back, &record));
        assert_eq!(back.lock().version, 2);
    }
}
