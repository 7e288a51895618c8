//! The embedded default storage: session values in a concurrent map.

mod clock;
mod map_key;
mod typed;

use std::cell::Cell;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use smol_str::SmolStr;

use crate::key::StorageKey;
use crate::lock::{Begun, Holder, KeyClaim, KeyHome, KeyLocks, LockError, Taker};
use crate::metrics;
use crate::session::Session;
use crate::storage::StorageError;
use crate::storage::{
    Conflict, KeyPrefix, Record, Restore, RestoreOutcome, ScanCursor, ScanPage, ScannedRecord,
    Storage, Write, WriteOutcome, page_limit,
};
pub(crate) use map_key::{IdKey, head_hash};
use map_key::{KeyView, MapKey, TextKey};
pub(crate) use typed::Found;
use typed::Value;

/// Sessions in this process's memory, lost on restart.
///
/// It keeps the values an update leaves *as they are*: the next update of the
/// key works on a clone (for a `Clone` type) and its commit moves the value
/// back in, with no encoding on the way, and a `PartialEq` type is compared
/// without encoding to tell whether it changed. Bytes written through
/// [`Storage::write`] are kept as bytes, and every record reads as bytes
/// through [`Storage::load`] and [`Storage::scan`], encoded on demand.
///
/// The update's copy shares nothing with the storage: whether it changed is
/// told at its write, against the value still stored. So if something other
/// than an update (which waits for the key) replaced the record in between,
/// a copy the handler borrowed mutably is refused as a conflict even if it
/// is equal.
///
/// Since Redis or SQL keep bytes, a session type that does not survive its
/// codec's round trip would work here and fail there. Each write checks
/// that round trip in debug builds (the first write of each type in
/// release builds) and fails with [`Error::RoundTrip`](crate::Error::RoundTrip).
///
/// - [`MemoryStorage::new`]: unbounded, on [`dashmap`] (sharded locks, the
///   fastest for a bot's mix of reads and writes). Expired records are
///   invisible at once and swept from memory at most once a second, by the
///   writes that follow. Each record also keeps the lock of its key: an
///   update takes the key and copies the value in one access to the map,
///   and writes the value back and frees the key in the record it took,
///   with no second access. A key that a second update asks for moves to a
///   lock table until nobody waits.
/// - [`MemoryStorage::with_capacity`]: the same map, holding at most that
///   many records: to make room for a new one, the one unused the longest
///   goes (the CLOCK approximation of LRU: a new user's session is kept,
///   an idle regular's goes first). Records, their keys' locks and
///   expiry are as in the unbounded map; being used costs a record a flag
///   set under the lock its update takes anyway. A record whose key an
///   update holds is never evicted.
///
/// Every manager built over one memory storage (or its clones) locks its
/// keys in the same place: their updates of one key wait for each other, as
/// the updates of one manager do, instead of racing to a conflict.
///
/// Cloning is cheap and shares the records.
#[derive(Clone)]
pub struct MemoryStorage {
    records: Arc<Records>,
}

/// The records of a memory storage, bounded or not.
struct Records {
    /// Found by text, or by an update's key's parts (see [`UpdateKey`]).
    map: Map,
    created: Instant,
    /// Milliseconds after `created` when expired records may next be swept.
    next_sweep_ms: AtomicU64,
    /// Whether a record with a TTL was ever stored: until then there is
    /// nothing to sweep, and no reason to read the clock.
    expiring: AtomicBool,
    sweep_every: Duration,
    /// Where updates queue for a key another update holds: the table of
    /// the first manager built over this storage (see
    /// [`MemoryStorage::key_home`]), so that its cycles of waits are found
    /// across this storage's keys and its others.
    locks: OnceLock<Arc<KeyLocks>>,
    /// How many records [`MemoryStorage::with_capacity`] keeps, and its
    /// ring of keys for eviction; `None` for [`MemoryStorage::new`].
    bound: Option<clock::Clock>,
}

/// A record of the map, shared with the update that took its key there
/// (see [`HeldRecord`]).
///
/// A record whose key is held stays in the map: only a record whose key is
/// free is ever removed (a delete keeps a held one without its value, the
/// sweep and the bound's eviction keep it, a vacant one goes only once its
/// key is free), and a record is removed, or looked up to be taken, under
/// its shard's lock.
// One record per key, not one group per user: the records of a key's tail
// (a user's sessions) kept in one group under one lock, an update taking
// and writing them all with one lookup and one lock, cost more than the
// lookups they saved (the search in the group by the key's head, the
// group's bookkeeping): 4 sessions 472 -> 575 ns, 1 session 155 -> 197 ns
// per update (`benches/paired.rs`), 54 -> 40 atomics but 4,682 -> 5,335
// instructions (`per_update memory-4`).
type SharedRecord = Arc<Mutex<Stored>>;

/// The records by key.
type Map = DashMap<MapKey, SharedRecord, foldhash::fast::RandomState>;

/// The record an update's commit writes in, with no second access to the
/// map: the record the update took its key in (see [`SharedRecord`]).
pub(crate) struct HeldRecord(SharedRecord);

impl HeldRecord {
    /// The commit's write of the update that took its key in this record
    /// and loaded it at `expected_version` (`None`: nothing stored): stores
    /// `value` as the next version if the record is still of that version,
    /// and frees the key for `claim`, under one lock of the record and with
    /// no access to the map. `None` when the record still holds a value
    /// equal to `value` by `PartialEq` (nothing written); else the version
    /// written, or why not.
    ///
    /// Only while `claim` holds the key is the record sure to be the map's
    /// (see [`SharedRecord`]): the caller checks.
    // Always inlined into the one caller per session type, as the record's
    // small steps it takes are (`next_version`, `Stored::renew`, ...): the
    // commit of every update in memory goes through here, and as calls they
    // cost it about 40 instructions per session (callgrind, `per_update`).
    #[inline(always)]
    pub(crate) fn commit<T: Session>(
        &self,
        memory: &MemoryStorage,
        value: T,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
        claim: &mut KeyClaim,
    ) -> Option<Result<u64, Conflict>> {
        let records = &memory.records;
        if ttl.is_some() {
            records.expiring.store(true, Ordering::Relaxed);
        }
        let now = Now::lazy();
        let (written, vacant) = {
            let mut guard = self.0.lock();
            let current = &mut *guard;
            // Told before the value is borrowed below; used if it changed.
            let next = next_version(Some(current), expected_version, &now);
            // One look at the value's type (a call through its vtable) both
            // compares it and writes over it.
            let stored = current.value.typed_mut::<T>();
            let unchanged = Some(current.version) == expected_version
                && stored
                    .as_deref()
                    .and_then(|stored| value.same_value(stored))
                    == Some(true);
            let written = match unchanged {
                true => None,
                // Not `inspect`: its closure, left out of line for some
                // session types, cost them 88 instructions per write.
                false => {
                    if let Ok(version) = next {
                        match stored {
                            Some(stored) => *stored = value,
                            None => current.value = Value::Typed(Box::new(value)),
                        }
                        current.renew(version, ttl, &now);
                    }
                    Some(next)
                }
            };
            current.free_for(claim);
            (written, current.vacant().then_some(current.hash))
        };
        if let Some(hash) = vacant {
            // Deleted while held, and this write refused: nothing to keep.
            records.remove_vacant_record(&self.0, hash);
        }
        memory.sweep_if_due(&now);
        written
    }

    /// Frees the key `claim` took in this record, as the table's give-back
    /// would, with no access to the map (unless nothing is stored: the
    /// record goes).
    /// A key taken in the table (one updates queued for) is left to the
    /// claim's drop.
    pub(crate) fn free(&self, memory: &MemoryStorage, claim: &mut KeyClaim) {
        let vacant = {
            let mut current = self.0.lock();
            current.free_for(claim);
            (claim.is_released() && current.vacant()).then_some(current.hash)
        };
        if let Some(hash) = vacant {
            memory.records.remove_vacant_record(&self.0, hash);
        }
    }
}

struct Stored {
    value: Value,
    version: u64,
    /// When it expires, from the TTL it was written with.
    expires_at: Option<Instant>,
    /// Whether the record holds a value: a held key with nothing stored
    /// keeps a record that holds none, for its lock.
    present: bool,
    /// Whether the value it holds was used (taken, read or written over)
    /// since the bound's hand last passed it (see `clock`): unused, it is
    /// the next evicted. The access that makes a record does not count: of
    /// the records the hand finds unused, the one it reaches first is the
    /// one made or used the longest ago.
    used: bool,
    /// Its place in the bound's ring (see `clock`), kept whatever is
    /// written in the record; unused in an unbounded map.
    place: u32,
    /// The map's hash of its key, kept as `place` is: a vacant record
    /// leaves the map with no hashing of its key's text (see
    /// [`Records::remove_vacant_record`]).
    hash: u64,
    lock: RecordLock,
}

/// The lock of a record's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordLock {
    Free,
    /// Held by one update, alone: nobody waits.
    Held(Holder),
    /// The storage's table governs the key: some update waits for it, or
    /// did since the table last let it go.
    Queued,
}

impl Stored {
    fn new(value: Value, version: u64, ttl: Option<Duration>, now: &Now) -> Self {
        Self {
            value,
            version,
            expires_at: expiry(ttl, now),
            present: true,
            used: false,
            place: 0,
            hash: 0,
            lock: RecordLock::Free,
        }
    }

    /// A record with no value, kept for the lock of its key.
    fn placeholder() -> Self {
        Self {
            value: Value::Encoded(bytes::Bytes::new()),
            version: 0,
            expires_at: None,
            present: false,
            used: false,
            place: 0,
            hash: 0,
            lock: RecordLock::Free,
        }
    }

    /// Drops the value, keeping the key's lock, the record's place and its
    /// key's hash.
    fn clear_value(&mut self) {
        *self = Self {
            lock: self.lock,
            place: self.place,
            hash: self.hash,
            ..Self::placeholder()
        };
    }

    /// A record without a value whose key nobody holds: nothing to keep.
    // Always inlined: see `HeldRecord::commit`.
    #[inline(always)]
    fn vacant(&self) -> bool {
        !self.present && self.lock == RecordLock::Free
    }

    /// Frees the key if `claim` holds it as the holder this record names,
    /// marking the claim given back.
    // Always inlined: see `HeldRecord::commit`.
    #[inline(always)]
    fn free_for(&mut self, claim: &mut KeyClaim) {
        if claim.is_in_record()
            && matches!(self.lock, RecordLock::Held(holder) if holder.update == claim.update())
        {
            self.lock = RecordLock::Free;
            claim.set_released();
        }
    }

    /// Whether this is the record of `version` and holds a value equal to
    /// `value` by `PartialEq`: an update's copy of it that did not change.
    fn holds<T: Session>(&self, version: Option<u64>, value: &T) -> bool {
        Some(self.version) == version && self.value.holds_same(value)
    }

    /// What a typed load finds here at `now`: a copy of the value, its
    /// bytes, or nothing if it holds none or expired.
    // Always inlined, as `hold` and `Records::record` are: they run on
    // every update, and as calls they cost it more than they save.
    #[inline(always)]
    fn found<T: Session>(&self, now: &Now) -> Result<Found<T>, StorageError> {
        if !self.live(now) {
            return Ok(Found::Nothing);
        }
        Found::of(&self.value, self.version).map_err(not_encoded)
    }

    /// Takes the key for `taker`, held in this record: the claim that
    /// gives it back.
    #[inline(always)]
    fn hold(&mut self, key: &SmolStr, taker: Taker) -> KeyClaim {
        self.lock = RecordLock::Held(taker.holder());
        self.used |= self.present;
        KeyClaim::in_record(key.clone(), taker.update)
    }

    // Always inlined: see `HeldRecord::commit`.
    #[inline(always)]
    fn live(&self, now: &Now) -> bool {
        self.present && self.expires_at.is_none_or(|at| at > now.get())
    }

    /// The record as bytes: what a storage that keeps bytes would return.
    fn record(&self) -> Result<Record, StorageError> {
        let value = self.value.encoded().map_err(not_encoded)?;
        Ok(Record {
            value,
            version: self.version,
        })
    }

    // Always inlined: see `HeldRecord::commit`.
    #[inline(always)]
    fn renew(&mut self, version: u64, ttl: Option<Duration>, now: &Now) {
        self.used |= self.present;
        self.present = true;
        self.version = version;
        self.expires_at = expiry(ttl, now);
    }
}

/// The error of a stored value that does not encode.
fn not_encoded(error: crate::codec::CodecError) -> StorageError {
    StorageError::other(format!("a stored session value does not encode: {error}"))
}

// Inlined: see `HeldRecord::commit`.
#[inline]
fn expiry(ttl: Option<Duration>, now: &Now) -> Option<Instant> {
    ttl.and_then(|ttl| now.get().checked_add(ttl))
}

/// The time of one storage call, read from the clock at most once and only
/// if a TTL makes it matter: most sessions have none, and an update's load
/// and commit are cheap enough that the clock would show.
struct Now(Cell<Option<Instant>>);

impl Now {
    fn lazy() -> Self {
        Self(Cell::new(None))
    }

    fn get(&self) -> Instant {
        match self.0.get() {
            Some(now) => now,
            None => {
                let now = Instant::now();
                self.0.set(Some(now));
                now
            }
        }
    }
}

const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The version check of a conditional put, shared by both backends: the
/// version to write, or why not.
// Always inlined: see `HeldRecord::commit`.
#[inline(always)]
fn next_version(
    current: Option<&Stored>,
    expected_version: Option<u64>,
    now: &Now,
) -> Result<u64, Conflict> {
    let stored = current.filter(|s| s.live(now)).map(|s| s.version);
    if stored != expected_version {
        // The record this update read is still there, only expired.
        let expired =
            stored.is_none() && current.is_some_and(|s| Some(s.version) == expected_version);
        return Err(match expired {
            true => Conflict::Expired,
            false => Conflict::NewerVersion,
        });
    }
    Ok(Write::next_version(expected_version))
}

/// The conditional put on a record: nothing if it already holds the value
/// (`Err`), else the version written over it, or why not.
// Always inlined: see `HeldRecord::commit`.
#[inline(always)]
fn put_into<New: NewValue>(
    current: &mut Stored,
    expected_version: Option<u64>,
    ttl: Option<Duration>,
    now: &Now,
    new: New,
) -> Result<Result<u64, Conflict>, New::Unchanged> {
    if let Some(unchanged) = new.already_in(current) {
        return Err(unchanged);
    }
    // Not `inspect`: see `HeldRecord::commit`.
    let written = next_version(Some(current), expected_version, now);
    if let Ok(version) = written {
        new.set(&mut current.value);
        current.renew(version, ttl, now);
    }
    Ok(written)
}

impl MemoryStorage {
    /// An unbounded memory storage.
    pub fn new() -> Self {
        Self::unbounded(SWEEP_EVERY)
    }

    fn unbounded(sweep_every: Duration) -> Self {
        Self::of(sweep_every, None)
    }

    fn of(sweep_every: Duration, bound: Option<clock::Clock>) -> Self {
        Self {
            records: Arc::new(Records {
                map: DashMap::default(),
                created: Instant::now(),
                next_sweep_ms: AtomicU64::new(0),
                expiring: AtomicBool::new(false),
                sweep_every,
                locks: OnceLock::new(),
                bound,
            }),
        }
    }

    /// A memory storage that keeps at most `max_records` sessions (at
    /// least one), evicting to make room for a new one the one unused the
    /// longest, by the CLOCK algorithm: a record whose value was used
    /// (taken by an update, read or written over) since the evicting hand
    /// last passed it is kept for one more turn, and of the others the hand
    /// reaches first the one made or used the longest ago. A new record is
    /// placed where the hand reaches it last: a new user's session is kept,
    /// an idle regular's goes first.
    ///
    /// A record whose key an update holds or waits for is never evicted
    /// (its update writes there): while every record is held, the store
    /// goes over its bound until updates end.
    pub fn with_capacity(max_records: u64) -> Self {
        Self::of(SWEEP_EVERY, Some(clock::Clock::new(max_records)))
    }

    /// How many live records are stored.
    pub fn len(&self) -> u64 {
        let now = Now::lazy();
        let live = self
            .records
            .map
            .iter()
            .filter(|entry| entry.lock().live(&now))
            .count();
        u64::try_from(live).unwrap_or(u64::MAX)
    }

    /// Whether no live record is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &str, now: &Now) -> Result<Option<Record>, StorageError> {
        self.records
            .get(key)
            .and_then(|record| {
                let mut stored = record.lock();
                stored.used |= stored.present;
                stored.live(now).then(|| stored.record())
            })
            .transpose()
    }

    /// What is stored at `key`, as a value of `T` where the storage holds
    /// one it can copy, else as bytes.
    pub(crate) fn load_typed<T: Session>(&self, key: &str) -> Result<Found<T>, StorageError> {
        let now = Now::lazy();
        self.records.get(key).map_or(Ok(Found::Nothing), |record| {
            let mut stored = record.lock();
            stored.used |= stored.present;
            stored.found(&now)
        })
    }

    /// Stores `value` as the next version of `key` if `expected_version` is
    /// the stored one, as a [`Write::Put`] does, but keeping the value itself.
    ///
    /// Writes nothing, and answers `None`, when the record of that version
    /// still holds a value equal to `value` by `PartialEq`: the update's
    /// copy did not change.
    ///
    /// Frees the key in the same access if `claim` holds it in its record
    /// and nobody waits for it (marking the claim given back); the update
    /// is done with the key. (An update that took the key in its record
    /// writes there: [`HeldRecord::commit`].)
    pub(crate) fn put_typed<T: Session>(
        &self,
        key: &StorageKey,
        value: T,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
        claim: &mut KeyClaim,
    ) -> Option<WriteOutcome> {
        let now = Now::lazy();
        let outcome = self.put(
            key.as_str(),
            expected_version,
            ttl,
            &now,
            TypedPut {
                value,
                expected_version,
            },
            Some(claim),
        );
        self.sweep_if_due(&now);
        outcome.ok()
    }

    /// Whether the record of `version` at `key` holds a value equal to
    /// `value` by `PartialEq` (see [`MemoryStorage::put_typed`]).
    pub(crate) fn holds_same<T: Session>(&self, key: &str, version: u64, value: &T) -> bool {
        self.records
            .get(key)
            .is_some_and(|record| record.lock().holds(Some(version), value))
    }

    /// The conditional put: checks the version, then writes `new` over the
    /// stored value in place, or into a new record. Writes nothing if the
    /// current record already holds it (see [`NewValue::already_in`]).
    /// Frees the key for `claim`, if given, as [`MemoryStorage::put_typed`]
    /// says.
    fn put<New: NewValue>(
        &self,
        key: &str,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
        now: &Now,
        new: New,
        claim: Option<&mut KeyClaim>,
    ) -> Result<WriteOutcome, New::Unchanged> {
        let records = &self.records;
        if ttl.is_some() {
            records.expiring.store(true, Ordering::Relaxed);
        }
        let (written, vacant) = {
            // The map's shard stays locked with the record until the end of
            // this block: the removal below takes it again.
            let found = records.record(key);
            let mut current = found.lock();
            let written = put_into(&mut current, expected_version, ttl, now, new);
            if let Some(claim) = claim {
                current.free_for(claim);
            }
            let vacant = current.vacant().then_some(current.hash);
            (
                written,
                vacant.map(|hash| (Arc::clone(found.value()), hash)),
            )
        };
        if let Some((record, hash)) = vacant {
            // Made for a write that was refused, or left by a key freed
            // with nothing stored.
            records.remove_vacant_record(&record, hash);
        }
        Ok(match written? {
            Ok(version) => WriteOutcome::Written { version },
            Err(cause) => WriteOutcome::Conflict(cause),
        })
    }

    fn apply(&self, write: &Write, now: &Now) -> WriteOutcome {
        match write {
            Write::Put {
                key,
                value,
                expected_version,
                ttl,
            } => {
                let Ok(outcome) = self.put(
                    key.as_str(),
                    *expected_version,
                    *ttl,
                    now,
                    EncodedPut(value),
                    None,
                );
                outcome
            }
            Write::Delete { key } => {
                self.records.delete(key.as_str());
                WriteOutcome::Deleted
            }
        }
    }

    /// Drops expired records from the map, at most once per
    /// [`SWEEP_EVERY`], so records nobody reads again do not pile up.
    // Inlined: most stores never hold a TTL, and the call cost more than
    // the check.
    #[inline(always)]
    fn sweep_if_due(&self, now: &Now) {
        if self.records.expiring.load(Ordering::Relaxed) {
            self.records.sweep_if_due(now);
        }
    }
}

impl Records {
    /// The sweep of [`MemoryStorage::sweep_if_due`], once a TTL was seen.
    fn sweep_if_due(&self, now: &Now) {
        let elapsed = u64::try_from(
            now.get()
                .saturating_duration_since(self.created)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let due = self.next_sweep_ms.load(Ordering::Relaxed);
        if elapsed < due {
            return;
        }
        let every = u64::try_from(self.sweep_every.as_millis()).unwrap_or(u64::MAX);
        let next = elapsed.saturating_add(every);
        // One writer sweeps; the others carry on.
        if self
            .next_sweep_ms
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let mut ring = self.bound.as_ref().map(clock::Clock::ring);
            // A held key keeps its record (invisible once expired) for its lock.
            self.map.retain(|_, record| {
                let stored = record.lock();
                let kept = stored.live(now) || stored.lock != RecordLock::Free;
                if let (false, Some(ring)) = (kept, &mut ring) {
                    ring.empty_place(stored.place);
                }
                kept
            });
        }
    }
}

impl MemoryStorage {
    /// Where this storage's keys are locked, for a manager whose key locks
    /// are `locks`: in their records, with a table for the updates that
    /// queue. The table is the first such manager's, for every manager over
    /// the storage: their updates wait for each other on a key as the
    /// updates of one manager do.
    pub(crate) fn key_home(&self, locks: &Arc<KeyLocks>) -> Arc<dyn KeyHome> {
        self.records.locks.get_or_init(|| Arc::clone(locks));
        Arc::clone(&self.records) as Arc<dyn KeyHome>
    }

    /// Takes `key` for `taker` in its record, if no update holds or waits
    /// for the key, and hands `open` what it took (see [`Taken`]), in one
    /// access to the map. `None` if another update holds or waits for the
    /// key (nothing taken).
    ///
    /// `open` runs with the record locked: what it makes must outlive it.
    /// The claim in particular gives the key back in the record when it is
    /// dropped, and dropped in `open` it would wait for that lock forever.
    // Always inlined into its one caller per session type: left to the
    // inliner, it was inlined for some types and not others (about 20
    // instructions per session where it was not).
    #[inline(always)]
    pub(crate) fn claim_typed<'a, R>(
        &self,
        key: UpdateKey<'a>,
        taker: Taker,
        open: impl FnOnce(Taken<'_>) -> R,
    ) -> Option<R> {
        let records = &*self.records;
        // One lookup, its answer used where it is: moved out of a `match`
        // on the key, it was read back while its stores were in flight.
        let mut shard = None;
        // The map's hash of an id key: a new record's, if none is found.
        let mut id_hash = None;
        let by_text;
        let found = match &key {
            // Found as `DashMap::get` finds a key (its shard from the hash
            // as a `usize`, its bucket from the whole `u64`: `hash_usize`
            // would cut it short on a 32-bit target), but hashed and
            // compared with the key's parts in hand, with no call through
            // `dyn KeyView` (see `IdKey::is`). The shard's read guard is
            // kept in `shard` while the record is used.
            UpdateKey::Id(key) => {
                let hash = records.map.hasher().hash_one(key.hash_word());
                id_hash = Some(hash);
                let shards = records.map.shards();
                shard
                    .insert(shards[records.map.determine_shard(hash as usize)].read())
                    .get(hash, |(found, _)| key.is(found))
                    .map(|(found, record)| (found, record.get()))
            }
            UpdateKey::Built(key) => {
                by_text = records.get(key.as_str());
                by_text.as_ref().map(|found| (found.key(), found.value()))
            }
        };
        let inserted;
        let (map_key, shared) = match found {
            Some(found) => found,
            None => {
                // Its shard is written next: no read guard may be left.
                drop(shard.take());
                let map_key = match &key {
                    UpdateKey::Id(key) => key.map_key(),
                    UpdateKey::Built(key) => MapKey::new(key.shared().clone()),
                };
                inserted = records.insert_placeholder(map_key, id_hash);
                (inserted.key(), inserted.value())
            }
        };
        let mut record = shared.lock();
        if record.lock != RecordLock::Free {
            return None;
        }
        record.lock = RecordLock::Held(taker.holder());
        record.used |= record.present;
        Some(open(Taken {
            key,
            map_key,
            shared,
            stored: &mut record,
            update: taker.update,
            now: Now::lazy(),
            claimed: false,
        }))
    }
}

/// What [`MemoryStorage::claim_typed`] took: the key of a record, held for
/// an update. Each part is made by the method that reads it, where the
/// caller puts it (the slot it builds): made first and handed over in one
/// value, the parts were moved and read back while their stores were still
/// in flight (`perf annotate` on `per_update memory`: six such loads took
/// half the time of the function that opens the slot; made here, a
/// one-session update takes 4% less time).
///
/// The key is free again when this is dropped unless [`Taken::claim`] made
/// the claim that holds it.
pub(crate) struct Taken<'a> {
    key: UpdateKey<'a>,
    /// The map's key: its (settled) text is the one shared.
    map_key: &'a MapKey,
    shared: &'a SharedRecord,
    /// The record, locked.
    stored: &'a mut Stored,
    update: u64,
    now: Now,
    claimed: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.claimed {
            self.stored.lock = RecordLock::Free;
        }
    }
}

impl Taken<'_> {
    /// The key, its text shared with the map's.
    // Always inlined, as every method here: see the type.
    #[inline(always)]
    pub(crate) fn key(&self) -> StorageKey {
        match &self.key {
            // A built key keeps where its scope key starts (a key
            // function's or a member's key may hold a `:` in it).
            UpdateKey::Built(key) => key.clone(),
            UpdateKey::Id(_) => self.map_key.storage_key(),
        }
    }

    /// The claim that holds the key, and gives it back when dropped.
    #[inline(always)]
    pub(crate) fn claim(&mut self) -> KeyClaim {
        self.claimed = true;
        KeyClaim::in_record(self.map_key.text().clone(), self.update)
    }

    /// A copy of what is stored (or the error making it met).
    #[inline(always)]
    pub(crate) fn found<T: Session>(&self) -> Result<Found<T>, StorageError> {
        self.stored.found(&self.now)
    }

    /// The record, for the commit to write in.
    #[inline(always)]
    pub(crate) fn record(&self) -> HeldRecord {
        HeldRecord(Arc::clone(self.shared))
    }
}

/// The key of an update's session, as a memory storage finds it.
pub(crate) enum UpdateKey<'a> {
    /// Its text, built.
    Built(StorageKey),
    /// Its namespace and id, found with no text built (see `map_key`).
    Id(IdKey<'a>),
}

/// A record of the map, with its shard's lock.
type MapRef<'a> = dashmap::mapref::one::Ref<'a, MapKey, SharedRecord>;

impl Records {
    fn locks(&self) -> &KeyLocks {
        self.locks.get_or_init(Arc::default)
    }

    /// The record at `key`, with its shard's lock (while the record is
    /// locked under it, nothing removes the record: see [`SharedRecord`]);
    /// a new one without a value if there was none (a held key keeps it for
    /// its lock; a write fills it). Most calls find a record: in place,
    /// sparing the key's copy. Whoever holds it must not reach into the
    /// map, nor into a bounded map's ring (taken before shards).
    // Always inlined: as a call, it cost the usual path about 50
    // instructions per session (callgrind, `per_update memory`).
    #[inline(always)]
    fn record(&self, key: &str) -> MapRef<'_> {
        match self.get(key) {
            Some(record) => record,
            None => self.insert_placeholder(MapKey::new(SmolStr::new(key)), None),
        }
    }

    /// The record at `key`, if there is one.
    fn get(&self, key: &str) -> Option<MapRef<'_>> {
        self.map.get(&TextKey::new(key) as &dyn KeyView)
    }

    /// The record at `key`, a new one without a value unless one was made
    /// since it was looked for. In a bounded map, room is made for it
    /// first (see `clock`). `hash` is the map's hash of `key`, if the
    /// caller has it (the bound's ring keeps it).
    // Never inlined: only a key's first update comes here.
    #[inline(never)]
    fn insert_placeholder(&self, key: MapKey, hash: Option<u64>) -> MapRef<'_> {
        let new = |stored| Arc::new(Mutex::new(stored));
        let hash = hash.unwrap_or_else(|| self.map.hasher().hash_one(&key));
        let Some(bound) = &self.bound else {
            return self
                .map
                .entry(key)
                .or_insert_with(|| {
                    new(Stored {
                        hash,
                        ..Stored::placeholder()
                    })
                })
                .downgrade();
        };
        let mut ring = bound.ring();
        // The ring's lock orders every insertion and removal: if the key is
        // not there now, nobody puts it there before this does (looked for
        // with the hash in hand; found, it is looked up again for its guard).
        let shard = &self.map.shards()[self.map.determine_shard(hash as usize)];
        // Its guard let go here, before the shard is locked again.
        let there = shard.read().get(hash, |(found, _)| *found == key).is_some();
        if there && let Some(found) = self.map.get(&key) {
            return found;
        }
        // Made before the key's shard is locked: eviction locks shards.
        let evicted = ring.make_room(&self.map, bound.max_records());
        let place = ring.take_place(key.clone(), hash);
        let stored = Stored {
            place,
            hash,
            ..Stored::placeholder()
        };
        // In the allocation of the record just evicted, if nothing else
        // has it: the evicted value goes as it is written over.
        let record = match evicted.last {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                Some(reused) => {
                    *reused.get_mut() = stored;
                    spare
                }
                None => new(stored),
            },
            None => new(stored),
        };
        let inserted = self.map.entry(key).insert(record).downgrade();
        // Recorded once the ring is let go: a recorder may take locks of
        // its own.
        drop(ring);
        metrics::evicted(evicted.count);
        inserted
    }

    /// Removes the record at `key` if `removable` says so of it, as checked
    /// under its shard's lock; and its place in a bounded map's ring.
    fn remove_if(&self, key: &str, removable: impl FnOnce(&Stored) -> bool) -> bool {
        let mut ring = self.bound.as_ref().map(clock::Clock::ring);
        let mut place = 0;
        let removed = self
            .map
            .remove_if(&TextKey::new(key) as &dyn KeyView, |_, record| {
                let stored = record.lock();
                place = stored.place;
                removable(&stored)
            })
            .is_some();
        if let (true, Some(ring)) = (removed, &mut ring) {
            ring.empty_place(place);
        }
        removed
    }

    /// Removes `record`, whose key the map hashes as `hash`, if it is still
    /// in the map and vacant (see [`Stored::vacant`]), as checked again
    /// under its shard's lock: found by the hash it keeps and its address,
    /// with no parsing and hashing of its key's text (a tenth of an update
    /// that reads a session nobody stored, `per_update memory-read-new`).
    fn remove_vacant_record(&self, record: &SharedRecord, hash: u64) {
        let mut ring = self.bound.as_ref().map(clock::Clock::ring);
        let shard = &self.map.shards()[self.map.determine_shard(hash as usize)];
        let mut place = None;
        // Dropped once the shard is let go.
        let removed = shard.write().remove_entry(hash, |(_, found)| {
            let found = found.get();
            Arc::ptr_eq(found, record) && {
                let stored = found.lock();
                place = Some(stored.place);
                stored.vacant()
            }
        });
        if let (Some(_), Some(ring), Some(place)) = (removed, &mut ring, place) {
            ring.empty_place(place);
        }
    }

    /// Removes the record at `key`, or only its value while an update holds
    /// the key (the lock stays with the record).
    fn delete(&self, key: &str) {
        loop {
            if self.remove_if(key, |stored| stored.lock == RecordLock::Free) {
                return;
            }
            let Some(record) = self.get(key) else {
                return;
            };
            let mut held = record.lock();
            if held.lock != RecordLock::Free {
                held.clear_value();
                return;
            }
            // Freed in between: removed on the next turn.
        }
    }
}

/// The keys of a memory store are locked in their records. The lock
/// order is record, then table, never the other way: the table never
/// reaches into the records.
impl KeyHome for Records {
    fn table(&self) -> &KeyLocks {
        self.locks()
    }

    fn begin(&self, key: &SmolStr, taker: Taker) -> Result<Begun, LockError> {
        let shared = self.record(key.as_str());
        let mut record = shared.lock();
        match record.lock {
            RecordLock::Free => Ok(Begun::Taken(record.hold(key, taker))),
            RecordLock::Held(holder) if holder.update == taker.update => {
                Err(LockError::HeldByThisUpdate {
                    first: holder.type_name,
                })
            }
            RecordLock::Held(holder) => {
                record.lock = RecordLock::Queued;
                self.locks().begin_behind(key, holder, taker)
            }
            RecordLock::Queued => KeyHome::begin(self.locks(), key, taker),
        }
    }

    fn give_back(&self, claim: &mut KeyClaim) {
        if claim.is_released() {
            return;
        }
        let Some(shared) = self.get(claim.key().as_str()) else {
            // A held key keeps its record: only a claim of the table's own
            // gets here.
            self.locks().release(claim);
            return;
        };
        let mut record = shared.lock();
        match record.lock {
            RecordLock::Queued => {
                if !self.locks().release_in_table(claim) {
                    record.lock = RecordLock::Free;
                }
            }
            RecordLock::Held(_) => {
                record.free_for(claim);
                if !claim.is_released() {
                    self.locks().release(claim);
                }
            }
            RecordLock::Free => self.locks().release(claim),
        }
        let vacant = record.vacant().then_some(record.hash);
        drop(record);
        // The shard's guard let go: the removal locks the shard again.
        let removable = vacant.map(|hash| (Arc::clone(shared.value()), hash));
        drop(shared);
        if let Some((record, hash)) = removable {
            self.remove_vacant_record(&record, hash);
        }
    }
}

/// A value a conditional put writes over a stored one.
trait NewValue {
    /// What a put answers when the record already holds the value.
    type Unchanged;

    /// `Some` if `current` already holds this value: nothing to write.
    fn already_in(&self, current: &Stored) -> Option<Self::Unchanged>;

    /// Writes the value over `stored`.
    fn set(self, stored: &mut Value);
}

/// An update's copy of a session, kept as a value: not written if the
/// record it was loaded from still holds an equal one.
struct TypedPut<T> {
    value: T,
    expected_version: Option<u64>,
}

impl<T: Session> NewValue for TypedPut<T> {
    type Unchanged = ();

    fn already_in(&self, current: &Stored) -> Option<()> {
        current
            .holds(self.expected_version, &self.value)
            .then_some(())
    }

    #[inline]
    fn set(self, stored: &mut Value) {
        stored.set_typed(self.value);
    }
}

/// Bytes from [`Storage::write`]: always written, as any storage does.
struct EncodedPut<'a>(&'a bytes::Bytes);

impl NewValue for EncodedPut<'_> {
    type Unchanged = std::convert::Infallible;

    fn already_in(&self, _: &Stored) -> Option<Self::Unchanged> {
        None
    }

    fn set(self, stored: &mut Value) {
        *stored = Value::Encoded(self.0.clone());
    }
}

/// The first `limit` keys after the cursor, in key order, gathered in one
/// pass over the map: memory for `limit` entries, whatever the map holds.
struct PageCollector<'a> {
    prefix: &'a str,
    after: Option<&'a str>,
    limit: usize,
    now: Now,
    /// A max-heap: the largest key kept is dropped first.
    kept: BinaryHeap<ByKey>,
    /// More keys than `limit` were found.
    more: bool,
    /// Whether the page returns the records' values.
    with_values: bool,
}

struct ByKey(String, Kept);

/// What a page keeps of a record: a copy of its value (if the page returns
/// values), its version, and when it expires.
struct Kept {
    value: Option<Result<Value, crate::codec::CodecError>>,
    version: u64,
    expires_at: Option<Instant>,
}

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for ByKey {}

impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl PageCollector<'_> {
    fn offer(&mut self, key: &str, stored: &Stored) {
        if !key.starts_with(self.prefix)
            || self.after.is_some_and(|after| key <= after)
            || !stored.live(&self.now)
        {
            return;
        }
        if self.kept.len() == self.limit {
            match self.kept.peek() {
                Some(largest) if largest.0.as_str() > key => {
                    self.kept.pop();
                }
                _ => {
                    self.more = true;
                    return;
                }
            }
            self.more = true;
        }
        let kept = Kept {
            // A copy, not its bytes: encoded only if it stays on the page.
            value: self.with_values.then(|| stored.value.copy()),
            version: stored.version,
            expires_at: stored.expires_at,
        };
        self.kept.push(ByKey(key.to_owned(), kept));
    }

    fn page(self, prefix: &KeyPrefix) -> Result<ScanPage, StorageError> {
        let now = self.now.get();
        let entries: Vec<ScannedRecord> = self
            .kept
            .into_sorted_vec()
            .into_iter()
            .map(|ByKey(key, kept)| {
                let record = kept
                    .value
                    .map(|value| {
                        value.and_then(|value| value.encoded()).map(|value| Record {
                            value,
                            version: kept.version,
                        })
                    })
                    .transpose()
                    .map_err(not_encoded)?;
                Ok(ScannedRecord {
                    key: prefix.key_of(&key),
                    ttl: kept
                        .expires_at
                        .filter(|_| record.is_some())
                        .map(|at| at.saturating_duration_since(now)),
                    record,
                })
            })
            .collect::<Result<_, StorageError>>()?;
        let next = match self.more {
            true => entries
                .last()
                .map(|entry| ScanCursor::new(entry.key.as_str())),
            false => None,
        };
        Ok(ScanPage { entries, next })
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
            .field(
                "max_records",
                &self.records.bound.as_ref().map(clock::Clock::max_records),
            )
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        "memory"
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        let now = Now::lazy();
        keys.iter()
            .map(|key| self.get(key.as_str(), &now))
            .collect()
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        let now = Now::lazy();
        let outcomes = writes.iter().map(|write| self.apply(write, &now)).collect();
        self.sweep_if_due(&now);
        Ok(outcomes)
    }

    /// One pass over the map per page, keeping the `limit` first keys after
    /// the cursor (the cursor is the last key of the page before).
    async fn scan(
        &self,
        prefix: &KeyPrefix,
        cursor: Option<&ScanCursor>,
        limit: usize,
        with_values: bool,
    ) -> Result<ScanPage, StorageError> {
        let text = prefix.full_text();
        let mut collector = PageCollector {
            prefix: &text,
            after: cursor.map(ScanCursor::as_str),
            limit: page_limit(limit),
            now: Now::lazy(),
            kept: BinaryHeap::new(),
            more: false,
            with_values,
        };
        for entry in self.records.map.iter() {
            collector.offer(entry.key().as_str(), &entry.value().lock());
        }
        collector.page(prefix)
    }

    async fn restore(&self, records: &[Restore]) -> Result<Vec<RestoreOutcome>, StorageError> {
        let now = Now::lazy();
        let outcomes = records
            .iter()
            .map(|restore| {
                let stored = Stored::new(
                    Value::Encoded(restore.record.value.clone()),
                    restore.record.version,
                    restore.ttl,
                    &now,
                );
                if restore.ttl.is_some() {
                    self.records.expiring.store(true, Ordering::Relaxed);
                }
                // A record made here holds no value: it is always restored
                // (never left vacant).
                let found = self.records.record(restore.key.as_str());
                let mut current = found.lock();
                match !current.present || current.version < restore.record.version {
                    true => {
                        // The key's lock, the record's place and its key's
                        // hash stay.
                        let (lock, place, hash) = (current.lock, current.place, current.hash);
                        *current = Stored {
                            lock,
                            place,
                            hash,
                            ..stored
                        };
                        RestoreOutcome::Restored
                    }
                    false => RestoreOutcome::Skipped,
                }
            })
            .collect();
        self.sweep_if_due(&now);
        Ok(outcomes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::key::Id;

    fn key(scope: &str) -> StorageKey {
        StorageKey::new(None, None, "test", scope)
    }

    fn put(scope: &str, expected_version: Option<u64>, ttl: Option<Duration>) -> Write {
        Write::Put {
            key: key(scope),
            value: bytes::Bytes::from_static(b"{}"),
            expected_version,
            ttl,
        }
    }

    #[tokio::test]
    async fn both_backends_version_and_expire_records() {
        for storage in [MemoryStorage::new(), MemoryStorage::with_capacity(100)] {
            let written = storage.write(&[put("a", None, None)]).await.unwrap();
            let [WriteOutcome::Written { version: first }] = written[..] else {
                panic!("{written:?}");
            };
            let stale = storage.write(&[put("a", None, None)]).await.unwrap();
            let newer = WriteOutcome::Conflict(Conflict::NewerVersion);
            assert_eq!(stale, [newer], "{storage:?}");
            let next = storage.write(&[put("a", Some(first), None)]).await.unwrap();
            assert_eq!(next, [WriteOutcome::Written { version: first + 1 }]);

            let ttl = Some(Duration::from_millis(1));
            storage.write(&[put("b", None, ttl)]).await.unwrap();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(
                storage.load(&[key("b")]).await.unwrap(),
                [None],
                "{storage:?}"
            );
            let again = storage.write(&[put("b", None, None)]).await.unwrap();
            assert!(
                matches!(again[..], [WriteOutcome::Written { version }] if version > first),
                "expired counts as absent, and versions never repeat: {again:?}"
            );
            assert_eq!(storage.len(), 2);
        }
    }

    #[tokio::test]
    async fn sweep_drops_expired_records_nobody_reads() {
        let storage = MemoryStorage::unbounded(Duration::ZERO);
        storage
            .write(&[put("gone", None, Some(Duration::from_millis(1)))])
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        storage.write(&[put("kept", None, None)]).await.unwrap();
        assert!(storage.records.get("test:gone").is_none());
        assert!(storage.records.get("test:kept").is_some());
    }

    #[tokio::test]
    async fn a_full_bounded_store_keeps_the_most_recent_writers() {
        let storage = MemoryStorage::with_capacity(100);
        // Regulars, read often: a frequency-based policy would favour them.
        for user in 0..100 {
            storage
                .write(&[put(&format!("regular{user}"), None, None)])
                .await
                .unwrap();
        }
        for _ in 0..5 {
            for user in 0..100 {
                storage
                    .load(&[key(&format!("regular{user}"))])
                    .await
                    .unwrap();
            }
        }
        for user in 0..20 {
            storage
                .write(&[put(&format!("newcomer{user}"), None, None)])
                .await
                .unwrap();
        }
        for user in 0..20 {
            let found = storage
                .load(&[key(&format!("newcomer{user}"))])
                .await
                .unwrap();
            assert!(found[0].is_some(), "newcomer {user} lost its session");
        }
        assert!(storage.len() <= 100, "{} records", storage.len());
    }

    /// Whether a record is stored at `scope`, without using it.
    fn stored(storage: &MemoryStorage, scope: &str) -> bool {
        storage
            .records
            .get(key(scope).as_str())
            .is_some_and(|record| record.lock().present)
    }

    fn assert_ring_mirrors_map(storage: &MemoryStorage) {
        let bound = storage.records.bound.as_ref().expect("bounded");
        bound.ring().assert_mirrors(&storage.records.map);
    }

    /// Once `tasks` end, `storage` holds at most `max_records` (none is
    /// held any more) and its ring mirrors its map.
    async fn assert_bound_kept_after(
        storage: &MemoryStorage,
        max_records: usize,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) {
        for task in tasks {
            task.await.unwrap();
        }
        let records = storage.records.map.len();
        assert!(records <= max_records, "{records} records");
        assert_ring_mirrors_map(storage);
    }

    #[tokio::test]
    async fn a_bounded_store_evicts_the_record_unused_the_longest() {
        let storage = MemoryStorage::with_capacity(3);
        for scope in ["a", "b", "c"] {
            storage.write(&[put(scope, None, None)]).await.unwrap();
        }
        storage.load(&[key("a")]).await.unwrap();
        storage.write(&[put("d", None, None)]).await.unwrap();
        assert!(!stored(&storage, "b"), "b: made first of the unused");
        assert!(stored(&storage, "a") && stored(&storage, "c") && stored(&storage, "d"));
        storage.write(&[put("e", None, None)]).await.unwrap();
        assert!(!stored(&storage, "c"), "c: made before d and e, never used");
        storage.write(&[put("f", None, None)]).await.unwrap();
        assert!(
            !stored(&storage, "a"),
            "a: last used before d, e and f were made"
        );
        for scope in ["d", "e", "f"] {
            assert!(stored(&storage, scope), "{scope}");
        }
        assert_eq!(storage.len(), 3);
        assert_ring_mirrors_map(&storage);
    }

    #[tokio::test]
    async fn a_bounded_store_counts_an_update_as_a_use_and_keeps_its_newcomer() {
        let storage = MemoryStorage::with_capacity(2);
        let home = storage.key_home(&Arc::default());
        for (scope, update) in [("1", 1), ("2", 2), ("1", 3), ("3", 4)] {
            let taken = take(&home, scope, update).await;
            let version = storage.load(&[key(scope)]).await.unwrap()[0]
                .as_ref()
                .map(|record| record.version);
            storage.write(&[put(scope, version, None)]).await.unwrap();
            drop(taken);
        }
        assert!(!stored(&storage, "2"), "user 2 was idle the longest");
        assert!(stored(&storage, "1") && stored(&storage, "3"));
        assert_ring_mirrors_map(&storage);
    }

    #[tokio::test]
    async fn a_held_record_is_never_evicted() {
        let storage = MemoryStorage::with_capacity(1);
        let home = storage.key_home(&Arc::default());
        storage.write(&[put("held", None, None)]).await.unwrap();
        let held = take(&home, "held", 1).await;
        for scope in ["b", "c"] {
            storage.write(&[put(scope, None, None)]).await.unwrap();
        }
        assert!(stored(&storage, "held"), "its update writes there");
        assert!(!stored(&storage, "b") && stored(&storage, "c"));
        assert_eq!(storage.len(), 2, "over the bound while the key is held");
        drop(held);
        storage.write(&[put("d", None, None)]).await.unwrap();
        assert!(!stored(&storage, "held") && stored(&storage, "d"));
        assert_eq!(storage.len(), 1);
        assert_ring_mirrors_map(&storage);
    }

    #[tokio::test]
    async fn records_deleted_or_swept_give_their_place_back() {
        let storage = MemoryStorage::of(Duration::ZERO, Some(clock::Clock::new(2)));
        storage.write(&[put("deleted", None, None)]).await.unwrap();
        storage
            .write(&[Write::Delete {
                key: key("deleted"),
            }])
            .await
            .unwrap();
        storage
            .write(&[put("expired", None, Some(Duration::from_millis(1)))])
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        for scope in ["b", "c"] {
            storage.write(&[put(scope, None, None)]).await.unwrap();
        }
        assert!(
            stored(&storage, "b") && stored(&storage, "c"),
            "no room lost"
        );
        assert_eq!(storage.records.map.len(), 2);
        assert_ring_mirrors_map(&storage);
    }

    /// Updates of many users over few places, from two threads and with
    /// reads, writes and deletes through the trait in between: the store
    /// stays within its bound once they end, and its ring mirrors its map.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bounded_store_under_load_keeps_its_bound_and_its_ring() {
        let storage = MemoryStorage::with_capacity(8);
        let home = storage.key_home(&Arc::default());
        let tasks: Vec<_> = (0..4u64)
            .map(|task| {
                let (storage, home) = (storage.clone(), Arc::clone(&home));
                tokio::spawn(async move {
                    for round in 0..200u64 {
                        let scope = ((task * 7 + round * 3) % 20).to_string();
                        let update = task * 1_000 + round + 1;
                        let taken =
                            crate::lock::lock(&home, key(&scope).shared(), taker(update), WAIT)
                                .await
                                .unwrap();
                        let version = storage.load(&[key(&scope)]).await.unwrap()[0]
                            .as_ref()
                            .map(|record| record.version);
                        let write = match round % 5 {
                            4 => Write::Delete { key: key(&scope) },
                            _ => put(&scope, version, None),
                        };
                        storage.write(&[write]).await.unwrap();
                        drop(taken);
                    }
                })
            })
            .collect();
        assert_bound_kept_after(&storage, 8, tasks).await;
    }

    /// A counter of visits, copied (not decoded) by each update.
    #[derive(serde::Serialize, serde::Deserialize, Clone, Default)]
    struct Visits {
        n: u32,
    }

    impl Session for Visits {
        const NAME: &'static str = "visits";
        type Codec = crate::codec::Json;
        fn initial() -> Self {
            Visits::default()
        }
        fn copy_value(&self) -> Option<Self> {
            Some(self.clone())
        }
    }

    /// A manager over `storage` with [`Visits`] registered.
    fn visits_manager(storage: &MemoryStorage) -> crate::SessionManager {
        crate::SessionManager::builder()
            .storage(storage.clone())
            .register::<Visits>()
            .build()
            .unwrap()
    }

    /// Updates through a manager (keys taken in their records, records
    /// made and evicted by the claims themselves), from two threads, each
    /// update holding its key across a yield: no two updates of one user
    /// ever hold its key at once (which a held record evicted, and made
    /// anew for the next update, would allow), every commit succeeds, and
    /// the store keeps its bound and its ring.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn updates_of_many_users_through_few_places_keep_the_bound_and_the_ring() {
        let storage = MemoryStorage::with_capacity(8);
        let manager = visits_manager(&storage);
        let holding: Arc<[AtomicBool; 31]> = Arc::default();
        let tasks: Vec<_> = (0..4u64)
            .map(|task| {
                let (manager, holding) = (manager.clone(), Arc::clone(&holding));
                tokio::spawn(async move {
                    for round in 0..300u64 {
                        let user = (task * 7 + round * 3) % 30 + 1;
                        let ctx = manager.begin(crate::UpdateIds::new().user(user)).await;
                        ctx.get::<Visits>().unwrap().n += 1;
                        let held = &holding[user as usize];
                        assert!(!held.swap(true, Ordering::SeqCst), "user {user} twice");
                        tokio::task::yield_now().await;
                        held.store(false, Ordering::SeqCst);
                        ctx.commit(crate::HandlerOutcome::Succeeded).await.unwrap();
                    }
                })
            })
            .collect();
        assert_bound_kept_after(&storage, 8, tasks).await;
    }

    const WAIT: Duration = Duration::from_secs(5);

    /// A session type for the claims below.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Plain {}

    impl Session for Plain {
        const NAME: &'static str = "test";
        type Codec = crate::codec::Json;
        fn initial() -> Self {
            Plain {}
        }
    }

    fn taker(update: u64) -> Taker {
        Taker {
            update,
            session: "test",
            type_name: "Test",
        }
    }

    /// Updates that read a session nobody stored leave no record behind:
    /// the record each took its key in goes when its commit frees the key,
    /// found by the hash the record keeps, for keys found by their id and
    /// keys built as text (the bot's id in them), in either map.
    #[tokio::test]
    async fn reads_of_sessions_nobody_stored_leave_no_record() {
        for storage in [MemoryStorage::new(), MemoryStorage::with_capacity(4)] {
            for bot_id_in_keys in [false, true] {
                let manager = crate::SessionManager::builder()
                    .storage(storage.clone())
                    .bot_id_in_keys(bot_id_in_keys)
                    .register::<Visits>()
                    .build()
                    .unwrap();
                for user in 1..=6 {
                    let ids = crate::UpdateIds::new().bot(42).user(user);
                    let ctx = manager.begin(ids).await;
                    assert_eq!(ctx.get::<Visits>().unwrap().n, 0);
                    ctx.commit(crate::HandlerOutcome::Succeeded).await.unwrap();
                }
                assert!(storage.records.map.is_empty(), "{storage:?}");
                if storage.records.bound.is_some() {
                    assert_ring_mirrors_map(&storage);
                }
            }
        }
    }

    /// A record restored over one an update then holds keeps its key's
    /// hash: deleted while held and left unchanged, it goes with the key.
    #[tokio::test]
    async fn a_restored_record_deleted_while_held_goes_with_its_key() {
        for storage in [MemoryStorage::new(), MemoryStorage::with_capacity(4)] {
            let manager = visits_manager(&storage);
            let key = StorageKey::new(None, None, Visits::NAME, "5");
            let restore = |version| crate::storage::Restore {
                key: key.clone(),
                record: Record {
                    value: bytes::Bytes::from_static(br#"{"n":3}"#),
                    version,
                },
                ttl: None,
            };
            storage.restore(&[restore(1)]).await.unwrap();
            // Over the record now in the map: its stored part replaced.
            storage.restore(&[restore(2)]).await.unwrap();
            let ctx = manager.begin(crate::UpdateIds::new().user(5)).await;
            assert_eq!(ctx.get::<Visits>().unwrap().n, 3);
            storage
                .write(&[Write::Delete { key: key.clone() }])
                .await
                .unwrap();
            ctx.commit(crate::HandlerOutcome::Succeeded).await.unwrap();
            assert!(storage.records.map.is_empty(), "{storage:?}");
        }
    }

    /// A new record made by evicting another is made in the evicted one's
    /// allocation when nothing else holds it, and starts as a new record:
    /// nothing of the evicted user's session shows in the newcomer's.
    #[tokio::test]
    async fn a_record_made_by_an_eviction_takes_the_evicted_ones_place_clean() {
        let storage = MemoryStorage::with_capacity(1);
        let manager = visits_manager(&storage);
        let visit = |user: u64| {
            let manager = manager.clone();
            async move {
                let ctx = manager.begin(crate::UpdateIds::new().user(user)).await;
                let seen = ctx.get::<Visits>().unwrap().n;
                ctx.get::<Visits>().unwrap().n += 1;
                ctx.commit(crate::HandlerOutcome::Succeeded).await.unwrap();
                seen
            }
        };
        let address = |user: u64| {
            let record = storage.records.get(&format!("visits:{user}")).unwrap();
            Arc::as_ptr(record.value())
        };
        for _ in 0..3 {
            visit(1).await;
        }
        let first = address(1);
        assert_eq!(visit(2).await, 0, "the newcomer starts anew");
        assert_eq!(address(2), first, "in the evicted record's allocation");
        assert!(storage.records.get("visits:1").is_none(), "evicted");
        assert_eq!(visit(2).await, 1);
        assert_eq!(visit(1).await, 0, "the evicted user starts anew too");
        assert_ring_mirrors_map(&storage);
    }

    /// What [`MemoryStorage::claim_typed`] took, as a value to look at.
    enum Claimed<T> {
        Taken(
            StorageKey,
            KeyClaim,
            Result<Found<T>, StorageError>,
            HeldRecord,
        ),
        Busy,
    }

    /// Takes `key` for `taker` in its record, as an update's slot does,
    /// keeping each part the slot would.
    fn claim_in_record<'a, T: Session>(
        storage: &MemoryStorage,
        key: UpdateKey<'a>,
        taker: Taker,
    ) -> Claimed<T> {
        storage
            .claim_typed(key, taker, |mut taken| {
                Claimed::Taken(taken.key(), taken.claim(), taken.found(), taken.record())
            })
            .unwrap_or(Claimed::Busy)
    }

    /// An store store, where updates lock keys in their records, and
    /// that home.
    fn records() -> (MemoryStorage, Arc<Records>, Arc<dyn KeyHome>) {
        let storage = MemoryStorage::new();
        let home = storage.key_home(&Arc::default());
        let records = Arc::clone(&storage.records);
        (storage, records, home)
    }

    fn lock_of(store: &Records, scope: &str) -> Option<RecordLock> {
        store
            .get(key(scope).as_str())
            .map(|record| record.lock().lock)
    }

    /// Update `update` takes the key of `scope`, which must be free.
    async fn take(home: &Arc<dyn KeyHome>, scope: &str, update: u64) -> crate::lock::KeyLockGuard {
        crate::lock::lock(home, key(scope).shared(), taker(update), WAIT)
            .await
            .unwrap()
    }

    /// Update `update` asking for the key of `scope`, held by another: it
    /// queues (the record says so), and its task ends once it gets the key.
    async fn queue_behind(
        home: &Arc<dyn KeyHome>,
        store: &Records,
        scope: &'static str,
        update: u64,
    ) -> tokio::task::JoinHandle<Result<(), LockError>> {
        let waiter = tokio::spawn({
            let home = Arc::clone(home);
            async move {
                crate::lock::lock(&home, key(scope).shared(), taker(update), WAIT)
                    .await
                    .map(drop)
            }
        });
        while lock_of(store, scope) != Some(RecordLock::Queued) {
            tokio::task::yield_now().await;
        }
        waiter
    }

    #[tokio::test]
    async fn a_held_key_with_nothing_stored_is_invisible_and_goes_with_its_lock() {
        let (storage, store, home) = records();
        let held = take(&home, "new", 1).await;
        assert_eq!(
            lock_of(&store, "new"),
            Some(RecordLock::Held(taker(1).holder()))
        );
        assert_eq!(storage.load(&[key("new")]).await.unwrap(), [None]);
        assert_eq!(storage.len(), 0);
        let page = storage
            .scan(&KeyPrefix::all(), None, 10, true)
            .await
            .unwrap();
        assert!(page.entries.is_empty(), "{page:?}");
        drop(held);
        assert!(store.map.is_empty(), "the placeholder goes with the lock");
    }

    #[tokio::test]
    async fn an_update_finds_by_its_key_s_parts_the_record_written_by_text() {
        let (storage, store, _home) = records();
        storage.write(&[put("-42", None, None)]).await.unwrap();
        let namespace = SmolStr::new("test:");
        let by_id = |id| {
            UpdateKey::Id(IdKey {
                namespace: &namespace,
                namespace_hash: head_hash(&namespace),
                id,
            })
        };
        let (claim, found) =
            match claim_in_record::<Plain>(&storage, by_id(Id::signed(-42)), taker(1)) {
                Claimed::Taken(key, claim, found, _) => {
                    assert_eq!(key, self::key("-42"));
                    assert_eq!(key.scope_key(), "-42");
                    (claim, found)
                }
                _ => panic!("a free key is taken"),
            };
        assert!(matches!(found, Ok(Found::Record(_))), "the written record");
        assert!(matches!(
            claim_in_record::<Plain>(&storage, UpdateKey::Built(key("-42")), taker(2)),
            Claimed::Busy
        ));
        drop(claim);
        // A key with nothing stored is made once, found by text after.
        let Claimed::Taken(key, ..) =
            claim_in_record::<Plain>(&storage, by_id(Id::unsigned(7)), taker(3))
        else {
            panic!("a new key is taken");
        };
        assert_eq!(key.as_str(), "test:7");
        assert!(store.get("test:7").is_some());
    }

    #[test]
    fn a_key_taken_but_never_claimed_is_free_again() {
        let (storage, store, _home) = records();
        let key = || UpdateKey::Built(key("a"));
        assert!(matches!(
            storage.claim_typed(key(), taker(1), |_| ()),
            Some(())
        ));
        assert_eq!(lock_of(&store, "a"), Some(RecordLock::Free));
        assert!(matches!(
            claim_in_record::<Plain>(&storage, key(), taker(2)),
            Claimed::Taken(..)
        ));
    }

    #[test]
    fn a_built_key_taken_keeps_where_its_scope_key_starts() {
        let (storage, _store, _home) = records();
        let built = key("-100:42");
        let Claimed::Taken(taken, ..) =
            claim_in_record::<Plain>(&storage, UpdateKey::Built(built.clone()), taker(1))
        else {
            panic!("a free key is taken");
        };
        assert_eq!(taken.scope_key(), "-100:42");
        assert_eq!(taken, built);
    }

    #[tokio::test]
    async fn a_second_update_queues_in_the_table_and_the_key_comes_back_free() {
        let (storage, store, home) = records();
        storage.write(&[put("a", None, None)]).await.unwrap();
        let first = match claim_in_record::<Plain>(&storage, UpdateKey::Built(key("a")), taker(1)) {
            Claimed::Taken(_, claim, found, _) => {
                assert!(found.is_ok());
                claim
            }
            _ => panic!("a free key is taken"),
        };
        assert!(matches!(
            claim_in_record::<Plain>(&storage, UpdateKey::Built(key("a")), taker(2)),
            Claimed::Busy
        ));
        let second = queue_behind(&home, &store, "a", 2).await;
        // The same update asking again fails at once, queued or not.
        let again = crate::lock::lock(&home, key("a").shared(), taker(1), WAIT).await;
        assert!(matches!(again, Err(LockError::HeldByThisUpdate { .. })));
        let mut first = first;
        home.give_back(&mut first);
        assert!(second.await.unwrap().is_ok());
        assert_eq!(lock_of(&store, "a"), Some(RecordLock::Free));
        assert_eq!(store.locks().len(), 0, "the table let the key go");
    }

    /// The record an update took its key in stays the map's while the key
    /// is held (a delete empties it in place), so the commit that writes
    /// through it writes the map's record; the key is free afterwards.
    #[tokio::test]
    async fn a_commit_writes_through_the_record_its_update_took() {
        let (storage, store, _home) = records();
        storage.write(&[put("a", None, None)]).await.unwrap();
        let (mut claim, held) =
            match claim_in_record::<Plain>(&storage, UpdateKey::Built(key("a")), taker(1)) {
                Claimed::Taken(_, claim, _, held) => (claim, held),
                _ => panic!("a free key is taken"),
            };
        storage
            .write(&[Write::Delete { key: key("a") }])
            .await
            .unwrap();
        let in_map = |held: &HeldRecord| {
            store
                .get(key("a").as_str())
                .is_some_and(|record| Arc::ptr_eq(&record, &held.0))
        };
        assert!(in_map(&held), "a delete keeps a held record in place");
        let outcome = held.commit(&storage, Plain {}, None, None, &mut claim);
        let Some(Ok(version)) = outcome else {
            panic!("written after the delete, as a new record: {outcome:?}");
        };
        assert!(claim.is_released(), "the write freed the key");
        assert!(in_map(&held));
        assert_eq!(lock_of(&store, "a"), Some(RecordLock::Free));
        let loaded = storage.load(&[key("a")]).await.unwrap();
        assert_eq!(
            loaded[0].as_ref().map(|record| record.version),
            Some(version)
        );
    }

    #[tokio::test]
    async fn a_scan_returns_values_kept_as_they_are_as_their_bytes() {
        /// A session type that can be copied, unlike [`Plain`].
        #[derive(Clone, serde::Serialize, serde::Deserialize)]
        struct Copied {
            apples: u32,
        }

        impl Session for Copied {
            const NAME: &'static str = "copied";
            type Codec = crate::codec::Json;
            fn initial() -> Self {
                Copied { apples: 0 }
            }
            fn copy_value(&self) -> Option<Self> {
                Some(self.clone())
            }
        }

        fn commit<T: Session>(storage: &MemoryStorage, scope: &str, value: T) -> u64 {
            let taken = claim_in_record::<T>(storage, UpdateKey::Built(key(scope)), taker(1));
            let Claimed::Taken(_, mut claim, _, held) = taken else {
                panic!("a free key is taken");
            };
            match held.commit(storage, value, None, None, &mut claim) {
                Some(Ok(version)) => version,
                outcome => panic!("written: {outcome:?}"),
            }
        }

        let (storage, ..) = records();
        let copied = commit(&storage, "copied", Copied { apples: 3 });
        let plain = commit(&storage, "plain", Plain {});
        let page = storage
            .scan(&KeyPrefix::all(), None, 10, true)
            .await
            .unwrap();
        let records: Vec<_> = page
            .entries
            .iter()
            .map(|entry| (entry.key.as_str(), entry.record.clone()))
            .collect();
        let record = |value: &[u8], version| Record {
            value: bytes::Bytes::copy_from_slice(value),
            version,
        };
        assert_eq!(
            records,
            [
                ("test:copied", Some(record(br#"{"apples":3}"#, copied))),
                ("test:plain", Some(record(b"{}", plain))),
            ]
        );
        let keys_only = storage
            .scan(&KeyPrefix::all(), None, 10, false)
            .await
            .unwrap();
        assert!(keys_only.entries.iter().all(|entry| entry.record.is_none()));
        assert_eq!(keys_only.entries.len(), 2);
    }

    #[tokio::test]
    async fn a_commit_through_its_record_writes_the_next_version_or_is_refused_cleanly() {
        let (storage, store, _home) = records();
        let first = storage.write(&[put("a", None, None)]).await.unwrap();
        let [WriteOutcome::Written { version }] = first[..] else {
            panic!("written: {first:?}");
        };
        let take = |update| match claim_in_record::<Plain>(
            &storage,
            UpdateKey::Built(key("a")),
            taker(update),
        ) {
            Claimed::Taken(_, claim, _, held) => (claim, held),
            _ => panic!("a free key is taken"),
        };
        let (mut claim, held) = take(1);
        let written = held.commit(&storage, Plain {}, Some(version), None, &mut claim);
        let next = Write::next_version(Some(version));
        assert_eq!(written, Some(Ok(next)), "the version after the one loaded");
        assert!(claim.is_released(), "the write freed the key");
        assert_eq!(lock_of(&store, "a"), Some(RecordLock::Free));
        let (mut claim, held) = take(2);
        storage
            .write(&[Write::Delete { key: key("a") }])
            .await
            .unwrap();
        let refused = held.commit(&storage, Plain {}, Some(next), None, &mut claim);
        assert_eq!(
            refused,
            Some(Err(Conflict::NewerVersion)),
            "deleted meanwhile"
        );
        assert!(claim.is_released(), "a refused write frees the key too");
        assert!(
            store.map.is_empty(),
            "the emptied record went with the key's lock"
        );
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_neither_record_nor_table_entry() {
        let (_storage, store, home) = records();
        let held = take(&home, "new", 1).await;
        let waiter = queue_behind(&home, &store, "new", 2).await;
        waiter.abort();
        assert!(waiter.await.is_err(), "cancelled");
        assert_eq!(lock_of(&store, "new"), Some(RecordLock::Queued));
        drop(held);
        assert!(store.map.is_empty(), "the key's record went with its lock");
        assert_eq!(store.locks().len(), 0);
    }

    #[tokio::test]
    async fn deleting_a_held_record_keeps_its_lock() {
        let (storage, store, home) = records();
        storage.write(&[put("a", None, None)]).await.unwrap();
        let held = take(&home, "a", 1).await;
        storage
            .write(&[Write::Delete { key: key("a") }])
            .await
            .unwrap();
        assert_eq!(storage.load(&[key("a")]).await.unwrap(), [None]);
        assert!(matches!(
            claim_in_record::<Plain>(&storage, UpdateKey::Built(key("a")), taker(2)),
            Claimed::Busy
        ));
        drop(held);
        assert!(store.map.is_empty());
    }

    #[tokio::test]
    async fn the_sweep_keeps_a_held_record_that_expired() {
        let storage = MemoryStorage::unbounded(Duration::ZERO);
        let home = storage.key_home(&Arc::default());
        let store = &storage.records;
        storage
            .write(&[put("a", None, Some(Duration::from_millis(1)))])
            .await
            .unwrap();
        let held = take(&home, "a", 1).await;
        std::thread::sleep(Duration::from_millis(5));
        storage.write(&[put("other", None, None)]).await.unwrap();
        assert_eq!(
            lock_of(store, "a"),
            Some(RecordLock::Held(taker(1).holder()))
        );
        drop(held);
        storage.write(&[put("other2", None, None)]).await.unwrap();
        assert!(store.get("test:a").is_none(), "swept once free");
    }
}
