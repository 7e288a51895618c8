//! What this process has looked up about migrated chats, so an update in a
//! supergroup that never was a group pays one lookup a minute, not one each.

use std::time::Duration;

/// How long a looked-up marker (or its absence) is trusted before it is read
/// again: how late a process notices a migration another process made.
const LOOKUP_TTL: Duration = Duration::from_secs(60);

/// Which supergroups came from which group, as far as this process has
/// looked: `(storage index, supergroup id)` → the group's id, or `None`.
pub(crate) struct ChatLookups {
    pub(super) cache: moka::sync::Cache<(usize, i64), Option<i64>>,
}

impl Default for ChatLookups {
    fn default() -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(LOOKUP_TTL)
                .build(),
        }
    }
}

impl ChatLookups {
    /// Forgets what was looked up about supergroup `to` in every storage.
    pub(super) fn forget(&self, storages: usize, to: i64) {
        for storage_index in 0..storages {
            self.cache.invalidate(&(storage_index, to));
        }
    }
}
