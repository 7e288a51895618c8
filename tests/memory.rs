//! The behaviour suite over the embedded memory storage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;

use tg_session::{MemoryStorage, SharedStorage};

async fn memory() -> SharedStorage {
    std::sync::Arc::new(MemoryStorage::new())
}

behaviour_suite!(memory);
data_suite!(memory);

/// The same suite over the bounded (moka) backend.
mod bounded {
    use super::suite;
    use tg_session::{MemoryStorage, SharedStorage};

    async fn bounded_memory() -> SharedStorage {
        std::sync::Arc::new(MemoryStorage::with_capacity(1_000_000))
    }

    crate::behaviour_suite!(bounded_memory);
    crate::data_suite!(bounded_memory);
}
