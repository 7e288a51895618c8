//! The leases one update holds in storages shared across processes: taking
//! them (waiting for other processes' updates), renewing them while a long
//! handler runs, and giving them back if the update is dropped uncommitted.
//!
//! The storage side of the contract is [`Leases`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use tokio::task::JoinHandle;

use crate::key::StorageKey;
use crate::metrics::{self, Lock, LockWait, Operation, SessionNames};
use crate::storage::SharedStorage;
use crate::storage::StorageError;
use crate::storage::{Lease, LeaseOwner, LeasedLoad, Leases, Record, ReleaseWatch};

/// The longest a waiter sleeps between two attempts when the storage wakes
/// it on release: only a lost notification waits this long.
const NOTIFIED_POLL: Duration = Duration::from_millis(250);
/// The backoff of a waiter on a storage that cannot wake it.
const POLL_FIRST: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(100);

/// Why leases were not taken.
#[derive(Debug)]
pub(crate) enum AcquireError {
    /// The storage failed.
    Storage(StorageError),
    /// The key at this index of the batch stayed leased until the deadline.
    Busy { index: usize },
}

/// The leases of one update, in every storage that has them.
pub(crate) struct UpdateLeases {
    inner: Arc<Inner>,
}

struct Inner {
    owner: LeaseOwner,
    ttl: Duration,
    held: Mutex<Vec<Held>>,
    renewer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Clone)]
struct Held {
    storage_index: usize,
    storage: SharedStorage,
    key: StorageKey,
}

impl Inner {
    fn held(&self) -> MutexGuard<'_, Vec<Held>> {
        // Entries are pushed and drained whole: a poisoned list is consistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop_renewing(&self) {
        let renewer = self
            .renewer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(renewer) = renewer {
            renewer.abort();
        }
    }
}

impl UpdateLeases {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                owner: LeaseOwner::new(),
                ttl,
                held: Mutex::new(Vec::new()),
                renewer: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn owner(&self) -> &LeaseOwner {
        &self.inner.owner
    }

    /// Takes the leases of `keys` (of the sessions named in `sessions`) in
    /// `leases` (the storage at `storage_index`) and loads their records,
    /// waiting for other processes' updates until `deadline`.
    pub(crate) async fn acquire(
        &self,
        storage_index: usize,
        storage: &SharedStorage,
        leases: &dyn Leases,
        keys: &[StorageKey],
        sessions: &SessionNames,
        deadline: Instant,
    ) -> Result<Vec<Option<Record>>, AcquireError> {
        let lease = Lease {
            owner: &self.inner.owner,
            ttl: self.inner.ttl,
        };
        let mut watch: Option<ReleaseWatch> = None;
        // Set at the first busy answer; ends with this call.
        let mut wait: Option<LockWait> = None;
        let mut poll = POLL_FIRST;
        loop {
            let acquired = acquire_to_completion(storage, leases, keys, lease).await;
            let (index, retry_in) = match acquired {
                Ok(LeasedLoad::Acquired(records)) if records.len() == keys.len() => {
                    self.hold(storage_index, storage, keys);
                    return Ok(records);
                }
                Ok(LeasedLoad::Acquired(records)) => {
                    // Whatever was taken is given back by the caller's
                    // release of these keys; none are recorded, so release now.
                    let _ = leases.write_and_release(&[], keys, lease.owner).await;
                    return Err(AcquireError::Storage(StorageError::other(format!(
                        "asked for {} keys, got {} records",
                        keys.len(),
                        records.len()
                    ))));
                }
                Ok(LeasedLoad::Busy { index, retry_in }) => (index, retry_in),
                Err(error) => {
                    // A call that timed out may still run on the server
                    // later and take the leases: give them back after it.
                    release_later(storage, keys, lease.owner);
                    return Err(AcquireError::Storage(error));
                }
            };
            let session = sessions.get(index);
            let wait = wait.get_or_insert_with(|| LockWait::start(session, Lock::Lease));
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(key) = keys.get(index).filter(|_| !left.is_zero()) else {
                wait.timed_out();
                return Err(AcquireError::Busy { index });
            };
            tracing::debug!(key = %key, ?retry_in, "session key leased by another process; waiting");
            if let Some(watch) = watch.take() {
                let cap = match watch.is_notified() {
                    true => NOTIFIED_POLL,
                    false => {
                        let cap = poll;
                        poll = (poll * 2).min(POLL_MAX);
                        cap
                    }
                };
                // A lease that ended without a release (its process died)
                // is free once its time to live is over.
                let wait = cap.min(left).min(retry_in.max(Duration::from_millis(1)));
                watch.wait(wait).await;
            }
            // Watch before the next attempt, so a release right after it
            // still wakes this waiter.
            watch = Some(leases.watch(key));
        }
    }

    fn hold(&self, storage_index: usize, storage: &SharedStorage, keys: &[StorageKey]) {
        let first = {
            let mut held = self.inner.held();
            let first = held.is_empty();
            held.extend(keys.iter().map(|key| Held {
                storage_index,
                storage: Arc::clone(storage),
                key: key.clone(),
            }));
            first
        };
        if first {
            self.start_renewing();
        }
    }

    /// Renews every held lease a third of the way through its time to live,
    /// for handlers that run longer than the lease lives.
    fn start_renewing(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let every = self.inner.ttl / 3;
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        let task = runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = inner.upgrade() else { return };
                renew(&inner).await;
            }
        });
        let previous = self
            .inner
            .renewer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(task);
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    /// Stops renewing and lists the held keys of each storage, for the
    /// commit to release them with its writes. They stay recorded until
    /// [`released`](Self::released), so a commit dropped half-way still
    /// gives back the rest when the update is dropped.
    pub(crate) fn for_release(&self) -> SmallVec<[(usize, LeasedKeys); 2]> {
        self.inner.stop_renewing();
        let groups = group_by_storage(self.inner.held().iter());
        groups
            .into_iter()
            .map(|(index, _, keys)| (index, keys))
            .collect()
    }

    /// Forgets the leases of the storage at `storage_index`: the commit's
    /// call released them (or failed, and they expire by themselves).
    pub(crate) fn released(&self, storage_index: usize) {
        self.inner
            .held()
            .retain(|held| held.storage_index != storage_index);
    }
}

async fn renew(inner: &Inner) {
    let groups = group_by_storage(inner.held().iter());
    let lease = Lease {
        owner: &inner.owner,
        ttl: inner.ttl,
    };
    for (_, storage, keys) in groups {
        let Some(leases) = storage.leases() else {
            continue;
        };
        match leases.renew(&keys, lease).await {
            Ok(true) => tracing::debug!(
                storage = storage.name(),
                keys = keys.len(),
                "leases renewed"
            ),
            Ok(false) => tracing::warn!(
                storage = storage.name(),
                "a session lease of a running handler was lost; its changes will be refused"
            ),
            Err(error) => {
                metrics::storage_failed(&Arc::from(storage.name()), Operation::Renew, &error);
                tracing::warn!(storage = storage.name(), %error, "session leases not renewed")
            }
        }
    }
}

/// The keys an update holds leases on in one storage, inline for its few
/// sessions.
pub(crate) type LeasedKeys = SmallVec<[StorageKey; 4]>;

/// The leases of an update, per storage, by storage index: inline for
/// the one or two storages an update leases in.
type ByStorage = SmallVec<[(usize, SharedStorage, LeasedKeys); 2]>;

/// The keys of `held`, per storage in the order of their indices, each
/// storage's keys in the order they were taken: copied out of the list
/// with nothing allocated for the few an update holds.
fn group_by_storage<'a>(held: impl IntoIterator<Item = &'a Held>) -> ByStorage {
    let mut groups = ByStorage::new();
    for held in held {
        let place = groups.partition_point(|(index, ..)| *index < held.storage_index);
        match groups.get_mut(place) {
            Some((index, _, keys)) if *index == held.storage_index => keys.push(held.key.clone()),
            _ => groups.insert(
                place,
                (
                    held.storage_index,
                    Arc::clone(&held.storage),
                    LeasedKeys::from_iter([held.key.clone()]),
                ),
            ),
        }
    }
    groups
}

/// Runs one `acquire` call in a task of its own, so that an update dropped
/// while the call is in flight (a cancelled handler, a timeout around it)
/// does not leave the leases it took behind: the task gives them back when
/// nobody is left to take its answer. Releasing from the dropped future
/// instead could reach the storage before the acquire does.
async fn acquire_to_completion(
    storage: &SharedStorage,
    leases: &dyn Leases,
    keys: &[StorageKey],
    lease: Lease<'_>,
) -> Result<LeasedLoad, StorageError> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return leases.acquire(keys, lease).await;
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    let (storage, keys, owner, ttl) = (
        Arc::clone(storage),
        keys.to_vec(),
        lease.owner.clone(),
        lease.ttl,
    );
    runtime.spawn(async move {
        let Some(leases) = storage.leases() else {
            return;
        };
        let result = leases.acquire(&keys, Lease { owner: &owner, ttl }).await;
        // Unread (the update was dropped before or after the send), the
        // answer gives the leases back as it goes.
        let _ = answer.send(Answer {
            result: Some(result),
            storage,
            keys,
            owner,
        });
    });
    match answered.await {
        Ok(mut answer) => answer
            .result
            .take()
            .unwrap_or_else(|| Err(StorageError::other("the lease answer was already taken"))),
        Err(_) => Err(StorageError::other(
            "the task taking the leases ended without an answer (its runtime is shutting down)",
        )),
    }
}

/// What the task of [`acquire_to_completion`] answers; dropped unread, it
/// releases the leases the call may have taken.
struct Answer {
    result: Option<Result<LeasedLoad, StorageError>>,
    storage: SharedStorage,
    keys: Vec<StorageKey>,
    owner: LeaseOwner,
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(Ok(LeasedLoad::Acquired(_)) | Err(_)) = self.result {
            release_later(&self.storage, &self.keys, &self.owner);
        }
    }
}

/// Releases `owner`'s leases on `keys` in a task of its own, best effort (a
/// lease that stays behind expires by itself).
fn release_later(storage: &SharedStorage, keys: &[StorageKey], owner: &LeaseOwner) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (storage, keys, owner) = (Arc::clone(storage), keys.to_vec(), owner.clone());
    runtime.spawn(async move {
        if let Some(leases) = storage.leases()
            && let Err(error) = leases.write_and_release(&[], &keys, &owner).await
        {
            tracing::debug!(storage = storage.name(), %error, "session leases not released; they expire by themselves");
        }
    });
}

impl Drop for Inner {
    /// An update dropped without a commit (a panic, a cancelled handler)
    /// gives its leases back at once rather than blocking other processes
    /// until the leases expire.
    fn drop(&mut self) {
        self.stop_renewing();
        let held = std::mem::take(&mut *self.held());
        if held.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let owner = self.owner.clone();
        runtime.spawn(async move {
            for (_, storage, keys) in group_by_storage(&held) {
                if let Some(leases) = storage.leases()
                    && let Err(error) = leases.write_and_release(&[], &keys, &owner).await
                {
                    tracing::warn!(storage = storage.name(), %error, "session leases not released; they expire by themselves");
                }
            }
        });
    }
}
