//! Taking one key's in-process lock for an update: the manager's lock
//! timeout, and the lock table's answers as the errors a user sees. The
//! context takes its sessions' keys this way, and so does a chat migration.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, LockHolder};
use crate::key::StorageKey;
use crate::lock::{KeyLockGuard, LockError, Taker};
use crate::manager::ManagerInner;
use crate::storage::StorageError;

/// Numbers the updates of this process for their key locks.
static NEXT_UPDATE: AtomicU64 = AtomicU64::new(1);

/// A number no update of this process has, for work that takes keys as an
/// update does (a chat migration).
pub(crate) fn next_update_id() -> u64 {
    NEXT_UPDATE.fetch_add(1, Ordering::Relaxed)
}

/// Takes the in-process lock of `key` for `taker`, within the manager's lock
/// timeout.
pub(crate) async fn lock_key(
    manager: &ManagerInner,
    session: &'static str,
    key: &StorageKey,
    taker: Taker,
) -> Result<KeyLockGuard, Error> {
    manager
        .locks
        .lock(key.shared(), taker, manager.lock_timeout)
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
