//! Taking one key's in-process lock for an update: the manager's lock
//! timeout, and the lock table's answers as the errors a user sees. The
//! context takes its sessions' keys this way, and so does a chat migration.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, LockHolder};
use crate::key::StorageKey;
use crate::lock::{self, KeyHome, KeyLockGuard, LockError, Taker};
use crate::manager::ManagerInner;
use crate::storage::StorageError;

/// The first id of the next block of update ids a thread takes.
static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);

/// How many update ids a thread takes at once: numbering an update then
/// costs a thread-local increment, and the atomic operation the threads
/// share (a cache line they would pass around) happens once per block.
const ID_BLOCK: u64 = 1024;

/// A number no other update of this process has (also for work that takes
/// keys as an update does, a chat migration).
pub(crate) fn next_update_id() -> u64 {
    thread_local! {
        /// The next id this thread hands out, and the end of its block.
        static IDS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    IDS.with(|ids| {
        let (mut next, mut end) = ids.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = next + ID_BLOCK;
        }
        ids.set((next + 1, end));
        next
    })
}

/// Takes the in-process lock of `key`, kept at `home` (its storage's, see
/// `StorageEntry::home`), for `taker`, within the manager's lock timeout.
pub(crate) async fn lock_key(
    manager: &ManagerInner,
    home: &Arc<dyn KeyHome>,
    session: &'static str,
    key: &StorageKey,
    taker: Taker,
) -> Result<KeyLockGuard, Error> {
    lock::lock(home, key.shared(), taker, manager.lock_timeout)
        .await
        .map_err(|error| lock_error(manager, session, key, taker, error))
}

fn lock_error(
    manager: &ManagerInner,
    session: &'static str,
    key: &StorageKey,
    taker: Taker,
    error: LockError,
) -> Error {
    match error {
        LockError::Timeout => Error::LockTimeout {
            session,
            key: key.to_string(),
            waited: manager.lock_timeout,
            holder: LockHolder::ThisProcess,
        },
        LockError::HeldByThisUpdate { first } => Error::SameKeyTwice {
            key: key.to_string(),
            first,
            second: taker.type_name,
        },
        LockError::Cycle { held } => Error::LockCycle {
            session,
            key: key.to_string(),
            held: held.to_string(),
        },
        LockError::PreviousFailed {
            error,
            storage,
            ago,
        } => Error::Storage {
            session,
            key: key.to_string(),
            storage,
            source: StorageError::new(
                error.kind(),
                format!(
                    "not tried: the update before this one on this key met this failure \
                     {}ms ago: {error}",
                    ago.as_millis()
                ),
            ),
        },
    }
}
