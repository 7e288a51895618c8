//! The behaviour suite over the embedded memory storage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;

use tg_session::{MemoryStorage, SharedStorage};

async fn memory() -> SharedStorage {
    std::sync::Arc::new(MemoryStorage::new())
}

behaviour_suite!(memory);
