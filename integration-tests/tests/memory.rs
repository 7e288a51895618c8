//! The behaviour suite over the embedded memory storage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tg_session_test_kit::{behaviour_suite, data_suite};

use tg_session::MemoryStorage;
use tg_session::storage::SharedStorage;

async fn memory() -> SharedStorage {
    std::sync::Arc::new(MemoryStorage::new())
}

behaviour_suite!(memory);
data_suite!(memory);

/// The same suite over the bounded store (`with_capacity`).
mod bounded {
    use super::{behaviour_suite, data_suite};
    use tg_session::MemoryStorage;
    use tg_session::storage::SharedStorage;

    async fn bounded_memory() -> SharedStorage {
        std::sync::Arc::new(MemoryStorage::with_capacity(1_000_000))
    }

    behaviour_suite!(bounded_memory);
    data_suite!(bounded_memory);
}
