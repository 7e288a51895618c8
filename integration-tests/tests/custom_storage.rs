//! The behaviour suite over the hand-written storage of `examples/custom_storage.rs`:
//! a user's own storage gets the same guarantees as the built-in ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tg_session_test_kit::behaviour_suite;

#[allow(dead_code)]
#[path = "../../examples/custom_storage.rs"]
mod custom_storage;

use tg_session::storage::SharedStorage;

async fn map() -> SharedStorage {
    std::sync::Arc::new(custom_storage::MapStorage::default())
}

behaviour_suite!(map);
