//! Per-key locks that serialize the updates of one session key in this process.
//!
//! A session is loaded before the handler and saved after it, with a network
//! round trip (the reply) in between; two updates of one key interleaving
//! there lose one write. The table holds an entry only while some update holds
//! or waits for that key, so it does not grow with every key ever seen.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

struct Entry {
    /// The table's own key, shared with the guards so they need no copy.
    key: Arc<str>,
    mutex: Arc<tokio::sync::Mutex<()>>,
    /// Updates holding or waiting for the key; the entry goes at zero.
    users: usize,
}

#[derive(Default)]
pub(crate) struct KeyLocks {
    table: Mutex<HashMap<Arc<str>, Entry, RandomState>>,
}

/// A claim on a key: holds it once `held` is set, and leaves the table clean
/// when dropped, whether it got the lock, timed out or was cancelled.
pub(crate) struct KeyLockGuard {
    locks: Arc<KeyLocks>,
    key: Arc<str>,
    held: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    fn table(&self) -> MutexGuard<'_, HashMap<Arc<str>, Entry, RandomState>> {
        // Every statement leaves the table consistent, so a poisoned lock has
        // nothing to repair.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits at most `timeout` for `key`; `None` when it stayed taken.
    pub(crate) async fn lock(
        self: &Arc<Self>,
        key: &str,
        timeout: Duration,
    ) -> Option<KeyLockGuard> {
        let (key, mutex) = {
            let mut table = self.table();
            match table.get_mut(key) {
                Some(entry) => {
                    entry.users += 1;
                    (Arc::clone(&entry.key), Arc::clone(&entry.mutex))
                }
                None => {
                    let key: Arc<str> = Arc::from(key);
                    let mutex = Arc::default();
                    let entry = Entry {
                        key: Arc::clone(&key),
                        mutex: Arc::clone(&mutex),
                        users: 1,
                    };
                    table.insert(Arc::clone(&key), entry);
                    (key, mutex)
                }
            }
        };
        let mut claim = KeyLockGuard {
            locks: Arc::clone(self),
            key,
            held: None,
        };
        let held = match Arc::clone(&mutex).try_lock_owned() {
            Ok(held) => held,
            Err(_) => tokio::time::timeout(timeout, mutex.lock_owned())
                .await
                .ok()?,
        };
        claim.held = Some(held);
        Some(claim)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table().len()
    }
}

impl Drop for KeyLockGuard {
    fn drop(&mut self) {
        // Unlock before giving up the claim, so a new entry for this key can
        // never coexist with a guard of the old one.
        drop(self.held.take());
        let mut table = self.locks.table();
        if let Some(entry) = table.get_mut(&*self.key) {
            entry.users -= 1;
            if entry.users == 0 {
                table.remove(&*self.key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn table_forgets_released_and_timed_out_keys() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("a", WAIT).await;
        assert!(first.is_some());
        assert!(locks.lock("a", Duration::from_millis(10)).await.is_none());
        assert_eq!(locks.len(), 1);
        drop(first);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiter_leaves_no_entry() {
        let locks = Arc::new(KeyLocks::default());
        let held = locks.lock("a", WAIT).await;
        let waiter = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move { locks.lock("a", WAIT).await.is_some() }
        });
        tokio::task::yield_now().await;
        waiter.abort();
        assert!(waiter.await.is_err());
        drop(held);
        assert_eq!(locks.len(), 0);
    }
}
