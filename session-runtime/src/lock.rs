//! Per-key locks that serialize the updates of one session key in this process.
//!
//! A session is loaded before the handler and saved after it, with a network
//! round trip (the reply) in between; two updates of one key interleaving
//! there lose one write. The table holds an entry only while some update holds
//! or waits for that key, so it does not grow with every key ever seen.
//!
//! The table also knows who holds each key and what each waiting update waits
//! for, so an update never waits on itself (it fails at once, naming both
//! session types) and never closes a cycle of waits (it fails at once, naming
//! both keys), where a plain mutex would stall both until the timeout.
//!
//! And it remembers, while updates queue on a key, that the holder's storage
//! call failed (down, timed out): the waiters then fail at once with that
//! error instead of each waiting a full storage timeout in turn.
//!
//! A key has a [`KeyHome`]: where it is taken and given back. For most keys
//! that is the table itself. A memory storage keeps each key's lock in the
//! key's record instead (one map access takes the key and copies the value),
//! and brings a key into its table only once a second update asks for it:
//! the table then governs the key until nobody holds or waits for it.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use smol_str::SmolStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::OwnedMutexGuard;

use crate::metrics::{Lock, LockWait};
use crate::storage::StorageError;

/// How long after a holder's storage failure the updates queued on its key
/// fail at once instead of trying the storage again.
pub(crate) const FAIL_FAST_FOR: Duration = Duration::from_secs(1);

/// Who takes a key: the update (unique per process) and the session (its
/// name and type) it takes the key for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Taker {
    pub(crate) update: u64,
    pub(crate) session: &'static str,
    pub(crate) type_name: &'static str,
}

/// The update holding a key, as the table (or a record) keeps it: what
/// tells its own keys and cycles apart, and names the type that took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) update: u64,
    pub(crate) type_name: &'static str,
}

impl Taker {
    /// What a table or a record keeps of the taker once it holds the key.
    pub(crate) fn holder(self) -> Holder {
        Holder {
            update: self.update,
            type_name: self.type_name,
        }
    }
}

/// Why a key was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LockError {
    /// Another update held it for the whole timeout.
    Timeout,
    /// This update already holds the key, for the session type `first`.
    HeldByThisUpdate { first: &'static str },
    /// The holder waits, directly or through others, for `held`, a key this
    /// update holds: waiting would never end.
    Cycle { held: SmolStr },
    /// The update that held the key before met this storage failure
    /// `ago`; the storage is not tried again so soon.
    PreviousFailed {
        error: StorageError,
        storage: Arc<str>,
        ago: Duration,
    },
}

/// Where a key is taken and given back: a [`KeyLocks`] table, or a storage
/// that keeps each key's lock in its record and queues updates in a table.
pub(crate) trait KeyHome: Send + Sync {
    /// The table where updates queue for a key of this home.
    fn table(&self) -> &KeyLocks;
    /// Takes `key` for `taker` now, or queues `taker` for it (see [`Begun`]).
    fn begin(&self, key: &SmolStr, taker: Taker) -> Result<Begun, LockError>;
    /// Gives `claim`'s key back (or takes a waiting update off it); a claim
    /// given back once is left alone after.
    fn give_back(&self, claim: &mut KeyClaim);
}

/// What taking a key started.
pub(crate) enum Begun {
    /// The key was free: taken.
    Taken(KeyClaim),
    /// Another update holds it: this one queued, counted as a user of the
    /// key's entry and recorded as waiting for it, and now waits for `mutex`.
    Queued { waiting: KeyClaim, mutex: KeyMutex },
}

/// Takes `key` (kept at `home`) for `taker`, waiting at most `timeout` for
/// another update that holds it.
pub(crate) async fn lock(
    home: &Arc<dyn KeyHome>,
    key: &SmolStr,
    taker: Taker,
    timeout: Duration,
) -> Result<KeyLockGuard, LockError> {
    match home.begin(key, taker)? {
        Begun::Taken(claim) => Ok(KeyLockGuard::new(Arc::clone(home), claim)),
        Begun::Queued { waiting, mutex } => {
            // Made before the wait: dropped on a timeout or a cancellation,
            // it takes this update off the key.
            let guard = KeyLockGuard::new(Arc::clone(home), waiting);
            KeyLocks::wait(guard, mutex, taker, timeout).await
        }
    }
}

/// The mutex of one key, made only once a second update asks for it: an
/// update alone on its key (the usual case) holds it by being its entry's
/// `holder`, which costs one insert and one remove in the table.
pub(crate) type KeyMutex = Arc<tokio::sync::Mutex<()>>;

struct Entry {
    /// Updates holding or waiting for the key; the entry goes at zero.
    users: usize,
    /// The update holding the key, once it has recorded itself.
    holder: Option<Holder>,
    /// The key's queue and its last failure, once some update needs them
    /// (boxed: an update alone on its key, the usual case, moves a small
    /// entry in and out of the table and has nothing to drop).
    contended: Option<Box<Contended>>,
}

/// What an entry holds only once a second update asks for its key, or its
/// holder's storage fails.
#[derive(Default)]
struct Contended {
    /// The key's queue, once an update waits for it.
    mutex: Option<KeyMutex>,
    /// The mutex's guard, taken on behalf of a holder that took the key
    /// before the mutex existed; that holder's release drops it.
    holder_guard: Option<OwnedMutexGuard<()>>,
    /// The last storage failure of a holder, while updates queue on the key.
    failure: Option<Failure>,
}

impl Entry {
    fn new() -> Self {
        Self {
            users: 0,
            holder: None,
            contended: None,
        }
    }

    fn contended(&mut self) -> &mut Contended {
        self.contended.get_or_insert_default()
    }

    fn mutex(&self) -> Option<&KeyMutex> {
        self.contended.as_ref()?.mutex.as_ref()
    }

    /// The key's mutex, made now if the key had none: held on behalf of the
    /// holder, if there is one.
    fn queue(&mut self) -> KeyMutex {
        let held = self.holder.is_some();
        let contended = self.contended();
        if let Some(mutex) = &contended.mutex {
            return Arc::clone(mutex);
        }
        let mutex = KeyMutex::default();
        if held {
            contended.holder_guard = Arc::clone(&mutex).try_lock_owned().ok();
        }
        contended.mutex = Some(Arc::clone(&mutex));
        mutex
    }
}

struct Failure {
    at: Instant,
    error: StorageError,
    storage: Arc<str>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<SmolStr, Entry, RandomState>,
    /// What each waiting update waits for (an update waits for one key at a time).
    waiting: HashMap<u64, SmolStr, RandomState>,
}

impl Table {
    /// Follows holder → awaited key → holder from `key`; the key `update`
    /// holds at the end of the chain, if the chain comes back to it.
    fn cycle_through(&self, key: &SmolStr, update: u64) -> Option<SmolStr> {
        let mut current = (key, self.entries.get(key)?);
        // Each step visits another waiting update; a longer chain is a cycle
        // that does not pass through `update` and is not ours to report.
        for _ in 0..=self.waiting.len() {
            let holder = current.1.holder?;
            if holder.update == update {
                return Some(current.0.clone());
            }
            let awaited = self.waiting.get(&holder.update)?;
            current = (awaited, self.entries.get(awaited)?);
        }
        None
    }
}

#[derive(Default)]
pub(crate) struct KeyLocks {
    table: Mutex<Table>,
}

/// A claim on a key: holds it once `held` says so. It does not know its
/// table: whoever keeps one gives it back with [`KeyLocks::release`], as a
/// [`KeyLockGuard`] does when dropped, and a session slot through its
/// storage entry (no reference to count per session).
#[must_use = "a claim dropped without `KeyLocks::release` keeps its key locked"]
pub(crate) struct KeyClaim {
    key: SmolStr,
    /// The update taking the key (see [`Taker::update`]).
    update: u64,
    held: Held,
}

/// A claim on a key with its table: leaves the table clean when dropped,
/// whether it got the lock, timed out or was cancelled.
pub(crate) struct KeyLockGuard {
    home: Arc<dyn KeyHome>,
    claim: KeyClaim,
}

/// How a [`KeyClaim`] holds its key.
enum Held {
    /// Not yet: waiting (or it timed out, or was cancelled).
    Waiting,
    /// As its entry's holder, with no update queued when it took the key
    /// (a later one made the entry's mutex and holds its guard for us).
    Alone,
    /// Through the key's mutex, after waiting for it.
    Queued(OwnedMutexGuard<()>),
    /// As the holder its memory record names (see [`KeyHome`]); if updates
    /// queued since, the table's entry names it as its holder too, and it
    /// gives the key back there as [`Held::Alone`] does.
    InRecord,
    /// Given back, or handed over by a guard (see
    /// [`KeyLockGuard::into_claim`]): nothing left to release.
    Released,
}

impl KeyLocks {
    fn lock_table(&self) -> MutexGuard<'_, Table> {
        self.table.lock()
    }

    /// [`KeyLocks::try_claim`] with its table, as the tests take keys.
    #[cfg(test)]
    pub(crate) fn try_lock(self: &Arc<Self>, key: &SmolStr, taker: Taker) -> Option<KeyLockGuard> {
        self.try_claim(key, taker)
            .map(|claim| KeyLockGuard::new(Arc::clone(self) as Arc<dyn KeyHome>, claim))
    }

    /// [`lock`] with this table as the key's home, as the tests take keys.
    #[cfg(test)]
    pub(crate) async fn lock(
        self: &Arc<Self>,
        key: &SmolStr,
        taker: Taker,
        timeout: Duration,
    ) -> Result<KeyLockGuard, LockError> {
        let home: Arc<dyn KeyHome> = Arc::clone(self) as Arc<dyn KeyHome>;
        lock(&home, key, taker, timeout).await
    }

    /// Takes `key` for `taker` if no update holds or waits for it, without
    /// waiting; `None` otherwise (take it with [`lock`] then, which waits,
    /// and tells this update's own keys and cycles apart). The claim goes
    /// back with [`KeyLocks::release`]. (Updates take their keys through
    /// their storage's home: the tests take keys in a table alone.)
    #[cfg(test)]
    pub(crate) fn try_claim(&self, key: &SmolStr, taker: Taker) -> Option<KeyClaim> {
        let mut table = self.lock_table();
        match table.entries.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(vacant) => {
                let mut entry = Entry::new();
                entry.users = 1;
                entry.holder = Some(taker.holder());
                vacant.insert(entry);
                Some(KeyClaim {
                    key: key.clone(),
                    update: taker.update,
                    held: Held::Alone,
                })
            }
        }
    }

    /// Brings `key`, held in its record by `holder`, into the table (as
    /// its entry's holder, which gives it back with [`KeyLocks::release`]
    /// as one alone on its key does), then begins taking it for `taker`.
    /// Called by the record's keeper, under the record's lock: the table has
    /// no entry for the key yet.
    pub(crate) fn begin_behind(
        &self,
        key: &SmolStr,
        holder: Holder,
        taker: Taker,
    ) -> Result<Begun, LockError> {
        let mut table = self.lock_table();
        let entry = table.entries.entry(key.clone()).or_insert_with(Entry::new);
        entry.users += 1;
        entry.holder = Some(holder);
        Self::begin_in(&mut table, key, taker)
    }

    /// Takes `key` for `taker` if it is free, else queues `taker` for it,
    /// unless this update holds it already or waiting would close a cycle.
    fn begin_in(table: &mut Table, key: &SmolStr, taker: Taker) -> Result<Begun, LockError> {
        let entry = table.entries.entry(key.clone()).or_insert_with(Entry::new);
        if let Some(holder) = entry.holder.filter(|h| h.update == taker.update) {
            return Err(LockError::HeldByThisUpdate {
                first: holder.type_name,
            });
        }
        if entry.holder.is_none() {
            let free = match entry.mutex() {
                None => Some(Held::Alone),
                // Taken if no queued update was handed it yet.
                Some(mutex) => Arc::clone(mutex).try_lock_owned().ok().map(Held::Queued),
            };
            if let Some(held) = free {
                entry.users += 1;
                entry.holder = Some(taker.holder());
                return Ok(Begun::Taken(KeyClaim {
                    key: key.clone(),
                    update: taker.update,
                    held,
                }));
            }
        }
        // A key nobody holds or waits for was taken above: the entry has
        // users, and stays for them.
        if let Some(held) = table.cycle_through(key, taker.update) {
            return Err(LockError::Cycle { held });
        }
        let entry = table.entries.entry(key.clone()).or_insert_with(Entry::new);
        entry.users += 1;
        let mutex = entry.queue();
        table.waiting.insert(taker.update, key.clone());
        Ok(Begun::Queued {
            waiting: KeyClaim {
                key: key.clone(),
                update: taker.update,
                held: Held::Waiting,
            },
            mutex,
        })
    }

    /// Waits for `mutex`, the queue of `guard`'s key, which this update
    /// already counts itself a user of and is recorded as waiting for.
    async fn wait(
        mut guard: KeyLockGuard,
        mutex: KeyMutex,
        taker: Taker,
        timeout: Duration,
    ) -> Result<KeyLockGuard, LockError> {
        let held = {
            let wait = LockWait::start(taker.session, Lock::InProcess);
            tokio::time::timeout(timeout, mutex.lock_owned())
                .await
                .map_err(|_| {
                    wait.timed_out();
                    LockError::Timeout
                })?
        };
        let home = Arc::clone(&guard.home);
        let mut table = home.table().lock_table();
        table.waiting.remove(&taker.update);
        let failed = match table.entries.get_mut(&guard.claim.key) {
            Some(entry) => {
                entry.holder = Some(taker.holder());
                entry
                    .contended
                    .as_ref()
                    .and_then(|contended| contended.failure.as_ref())
                    .filter(|failure| failure.at.elapsed() < FAIL_FAST_FOR)
                    .map(|failure| LockError::PreviousFailed {
                        error: failure.error.clone(),
                        storage: Arc::clone(&failure.storage),
                        ago: failure.at.elapsed(),
                    })
            }
            None => None,
        };
        guard.claim.held = Held::Queued(held);
        drop(table);
        match failed {
            // Dropping the guard hands the key to the next waiter, which
            // fails as fast.
            Some(error) => Err(error),
            None => Ok(guard),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock_table().entries.len()
    }
}

impl KeyHome for KeyLocks {
    fn table(&self) -> &KeyLocks {
        self
    }

    fn begin(&self, key: &SmolStr, taker: Taker) -> Result<Begun, LockError> {
        Self::begin_in(&mut self.lock_table(), key, taker)
    }

    fn give_back(&self, claim: &mut KeyClaim) {
        self.release(claim);
    }
}

impl KeyLocks {
    /// Records that the storage failed for the holder of `claim`'s key, so
    /// the updates queued behind it fail at once rather than each waiting
    /// for the storage's timeout. Only failures that say the storage is
    /// down or stalled count.
    pub(crate) fn storage_failed(
        &self,
        claim: &KeyClaim,
        error: &StorageError,
        storage: &Arc<str>,
    ) {
        use crate::storage::StorageErrorKind;
        if !matches!(
            error.kind(),
            StorageErrorKind::Unavailable | StorageErrorKind::Timeout
        ) {
            return;
        }
        if let Some(entry) = self.lock_table().entries.get_mut(&*claim.key) {
            entry.contended().failure = Some(Failure {
                at: Instant::now(),
                error: error.clone(),
                storage: Arc::clone(storage),
            });
        }
    }

    /// Gives `claim`'s key back (or takes a waiting update off it); a claim
    /// given back once is left alone after.
    pub(crate) fn release(&self, claim: &mut KeyClaim) {
        self.release_in_table(claim);
    }

    /// [`KeyLocks::release`], answering whether the table still has an entry
    /// for the key (other updates wait for it, or hold it): a record that
    /// keeps its key's lock frees the key only once it has none. A claim
    /// given back before answers `false` without looking.
    pub(crate) fn release_in_table(&self, claim: &mut KeyClaim) -> bool {
        let held = std::mem::replace(&mut claim.held, Held::Released);
        if let Held::Released = held {
            return false;
        }
        let mut table = self.lock_table();
        let table = &mut *table;
        // The usual case, an update alone on its key from start to end: one
        // remove, and the key is free.
        let Some(mut entry) = table.entries.remove(&*claim.key) else {
            return false;
        };
        entry.users -= 1;
        match held {
            Held::Alone | Held::InRecord => {
                entry.holder = None;
                // Hands the key to the first update queued since, if any.
                if let Some(contended) = &mut entry.contended {
                    drop(contended.holder_guard.take());
                }
            }
            Held::Queued(guard) => {
                entry.holder = None;
                // Unlocked inside the table's lock, so a new entry for this
                // key can never coexist with a guard of the old one.
                drop(guard);
            }
            Held::Waiting => {
                // Timed out or cancelled while waiting.
                if table
                    .waiting
                    .get(&claim.update)
                    .is_some_and(|key| **key == *claim.key)
                {
                    table.waiting.remove(&claim.update);
                }
            }
            Held::Released => {}
        }
        if entry.users == 0 {
            return false;
        }
        table.entries.insert(claim.key.clone(), entry);
        true
    }
}

impl KeyClaim {
    /// A claim on `key` held by `update` as the holder its record names.
    pub(crate) fn in_record(key: SmolStr, update: u64) -> Self {
        Self {
            key,
            update,
            held: Held::InRecord,
        }
    }

    /// The key claimed.
    pub(crate) fn key(&self) -> &SmolStr {
        &self.key
    }

    /// The update holding (or waiting for) the key.
    pub(crate) fn update(&self) -> u64 {
        self.update
    }

    /// Whether the key is held as the holder its record names.
    pub(crate) fn is_in_record(&self) -> bool {
        matches!(self.held, Held::InRecord)
    }

    /// Whether the claim was given back (nothing left to release).
    pub(crate) fn is_released(&self) -> bool {
        matches!(self.held, Held::Released)
    }

    /// Marks the claim given back, by the record keeper that freed its key
    /// in the same access as it wrote the key's value.
    // Inlined: where the caller knows the claim was held in a record, its
    // drop of the old state goes away with the call.
    #[inline]
    pub(crate) fn set_released(&mut self) {
        self.held = Held::Released;
    }
}

impl KeyLockGuard {
    fn new(home: Arc<dyn KeyHome>, claim: KeyClaim) -> Self {
        Self { home, claim }
    }

    /// See [`KeyLocks::storage_failed`].
    pub(crate) fn storage_failed(&self, error: &StorageError, storage: &Arc<str>) {
        self.home
            .table()
            .storage_failed(&self.claim, error, storage);
    }

    /// The bare claim, for a keeper that gives it back itself (see
    /// [`KeyClaim`]).
    pub(crate) fn into_claim(mut self) -> KeyClaim {
        let released = KeyClaim {
            key: SmolStr::default(),
            update: self.claim.update,
            held: Held::Released,
        };
        std::mem::replace(&mut self.claim, released)
    }
}

impl Drop for KeyLockGuard {
    fn drop(&mut self) {
        self.home.give_back(&mut self.claim);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn update(update: u64) -> Taker {
        Taker {
            update,
            session: "t",
            type_name: "T",
        }
    }

    #[tokio::test]
    async fn table_forgets_released_and_timed_out_keys() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock(&SmolStr::new_static("a"), update(1), WAIT).await;
        assert!(first.is_ok());
        let second = locks
            .lock(
                &SmolStr::new_static("a"),
                update(2),
                Duration::from_millis(10),
            )
            .await;
        assert_eq!(second.err(), Some(LockError::Timeout));
        assert_eq!(locks.len(), 1);
        drop(first);
        assert_eq!(locks.len(), 0);
        assert!(locks.lock_table().waiting.is_empty());
    }

    #[tokio::test]
    async fn cancelled_waiter_leaves_no_entry() {
        let locks = Arc::new(KeyLocks::default());
        let held = locks.lock(&SmolStr::new_static("a"), update(1), WAIT).await;
        let waiter = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move {
                locks
                    .lock(&SmolStr::new_static("a"), update(2), WAIT)
                    .await
                    .is_ok()
            }
        });
        tokio::task::yield_now().await;
        waiter.abort();
        assert!(waiter.await.is_err());
        drop(held);
        assert_eq!(locks.len(), 0);
        assert!(locks.lock_table().waiting.is_empty());
    }

    #[tokio::test]
    async fn a_key_released_with_updates_queued_goes_to_them_in_order() {
        let locks = Arc::new(KeyLocks::default());
        // Taken alone: no queue yet, until the first waiter makes one.
        let holder = locks.try_lock(&SmolStr::new_static("a"), update(1));
        assert!(holder.is_some());
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = |id| {
            let (locks, order) = (Arc::clone(&locks), Arc::clone(&order));
            tokio::spawn(async move {
                let held = locks
                    .lock(&SmolStr::new_static("a"), update(id), WAIT)
                    .await;
                order.lock().push(id);
                drop(held);
            })
        };
        let second = waiter(2);
        while !locks.lock_table().waiting.contains_key(&2) {
            tokio::task::yield_now().await;
        }
        let third = waiter(3);
        while !locks.lock_table().waiting.contains_key(&3) {
            tokio::task::yield_now().await;
        }
        drop(holder);
        // Handed to update 2, which has not run yet: a newcomer queues.
        assert!(
            locks
                .try_lock(&SmolStr::new_static("a"), update(4))
                .is_none()
        );
        let fourth = locks.lock(&SmolStr::new_static("a"), update(4), WAIT).await;
        assert!(fourth.is_ok());
        order.lock().push(4);
        drop(fourth);
        second.await.unwrap();
        third.await.unwrap();
        assert_eq!(*order.lock(), vec![2, 3, 4]);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn an_update_never_waits_on_itself() {
        let locks = Arc::new(KeyLocks::default());
        let taker = Taker {
            update: 1,
            session: "counter",
            type_name: "Counter",
        };
        let _held = locks
            .lock(&SmolStr::new_static("a"), taker, WAIT)
            .await
            .unwrap();
        let again = locks.lock(&SmolStr::new_static("a"), update(1), WAIT).await;
        assert_eq!(
            again.err(),
            Some(LockError::HeldByThisUpdate { first: "Counter" })
        );
        assert_eq!(locks.len(), 1);
    }

    #[tokio::test]
    async fn a_cycle_of_waits_fails_at_once_and_names_the_held_key() {
        let locks = Arc::new(KeyLocks::default());
        let a = locks
            .lock(&SmolStr::new_static("a"), update(1), WAIT)
            .await
            .unwrap();
        let b = locks
            .lock(&SmolStr::new_static("b"), update(2), WAIT)
            .await
            .unwrap();
        // Update 1 waits for b (held by 2) ...
        let first = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move {
                locks
                    .lock(&SmolStr::new_static("b"), update(1), WAIT)
                    .await
                    .map(drop)
            }
        });
        while !locks.lock_table().waiting.contains_key(&1) {
            tokio::task::yield_now().await;
        }
        // ... so update 2 waiting for a (held by 1) would close the cycle.
        let started = std::time::Instant::now();
        let second = locks.lock(&SmolStr::new_static("a"), update(2), WAIT).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            second.err(),
            Some(LockError::Cycle {
                held: SmolStr::new_static("b")
            })
        );
        // Update 2 gives up b: update 1 goes on.
        drop(b);
        assert!(first.await.unwrap().is_ok());
        drop(a);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn waiting_behind_a_holder_that_waits_elsewhere_is_no_cycle() {
        let locks = Arc::new(KeyLocks::default());
        let c = locks
            .lock(&SmolStr::new_static("c"), update(3), WAIT)
            .await
            .unwrap();
        let a = locks
            .lock(&SmolStr::new_static("a"), update(1), WAIT)
            .await
            .unwrap();
        let first = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move {
                locks
                    .lock(&SmolStr::new_static("c"), update(1), WAIT)
                    .await
                    .map(drop)
            }
        });
        while !locks.lock_table().waiting.contains_key(&1) {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move {
                locks
                    .lock(&SmolStr::new_static("a"), update(2), WAIT)
                    .await
                    .map(drop)
            }
        });
        tokio::task::yield_now().await;
        drop(c);
        assert!(first.await.unwrap().is_ok());
        drop(a);
        assert!(second.await.unwrap().is_ok());
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn waiters_behind_a_storage_failure_fail_at_once() {
        let locks = Arc::new(KeyLocks::default());
        let holder = locks
            .lock(&SmolStr::new_static("a"), update(1), WAIT)
            .await
            .unwrap();
        let waiters: Vec<_> = (2..6)
            .map(|id| {
                let locks = Arc::clone(&locks);
                tokio::spawn(async move {
                    locks
                        .lock(&SmolStr::new_static("a"), update(id), WAIT)
                        .await
                        .map(drop)
                })
            })
            .collect();
        tokio::task::yield_now().await;
        let down = StorageError::timeout(Duration::from_secs(3));
        holder.storage_failed(&down, &Arc::from("redis"));
        drop(holder);
        for waiter in waiters {
            match waiter.await.unwrap() {
                Err(LockError::PreviousFailed { error, storage, .. }) => {
                    assert_eq!((error, &*storage), (down.clone(), "redis"));
                }
                other => panic!("{other:?}"),
            }
        }
        // Once nobody queues, the failure is forgotten with the entry.
        assert_eq!(locks.len(), 0);
        assert!(
            locks
                .lock(&SmolStr::new_static("a"), update(9), WAIT)
                .await
                .is_ok()
        );
    }
}
