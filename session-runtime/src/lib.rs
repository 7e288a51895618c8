//! The runtime of [tg-session](https://docs.rs/tg-session): storages, codecs,
//! key scopes and the per-update session context.
//!
//! Use it through the `tg-session` crate, which adds `#[derive(Session)]`
//! and lists the public API; this crate's paths are not stable.
//!
//! With the `metrics` feature it records counters and histograms through the
//! [`metrics`](https://docs.rs/metrics) facade (loads, writes, conflicts,
//! lock waits, latencies; the list is in the `tg-session` README, "Metrics").
#![cfg_attr(docsrs, feature(doc_cfg))]

mod chat_migration;
mod context;
mod error;
mod guard;
mod key;
mod key_lock;
mod lock;
mod manager;
mod metrics;
mod migrate;
mod session;
mod slot;
mod soon;
mod update_leases;

pub mod codec;
pub mod data;
pub mod storage;

pub use chat_migration::{ChatMigration, MIGRATED_MARKER};
pub use codec::Codec;
pub use codec::CodecError;
pub use codec::Json;
#[cfg(feature = "msgpack")]
pub use codec::MessagePack;
pub use context::{HandlerOutcome, SessionContext, Sessions};
pub use error::{Error, LockHolder};
pub use guard::SessionRef;
pub use key::{KeyFn, KeyStrategy, Scope, StorageKey, UpdateIds};
pub use manager::{
    DEFAULT_LEASE_TTL, DEFAULT_LOCK_TIMEOUT, SavePolicy, SessionManager, SessionManagerBuilder,
};
pub use migrate::{MigrateFrom, MigrationError, MigrationOutput};
#[doc(hidden)]
pub use migrate::{decode_shape, step_from, step_with, unknown_version};
#[doc(hidden)]
pub use session::{CopyByClone, CopyUnavailable, SameByEq, SameUnavailable, ValueProbe};
pub use session::{OnDecodeError, Session};
pub use storage::memory::MemoryStorage;
#[cfg(feature = "postgres")]
pub use storage::postgres::{PostgresStorage, PostgresStorageBuilder};
#[cfg(feature = "redis")]
pub use storage::redis::RedisStorage;
#[cfg(feature = "sqlite")]
pub use storage::sqlite::{SqliteStorage, SqliteStorageBuilder, SqliteSynchronous};
pub use storage::{StorageError, StorageErrorKind};
#[cfg(feature = "teloxide")]
pub mod teloxide;

/// The items behind a cargo feature, gathered in one place so the facade
/// re-exports each of them exactly when this crate was built with its
/// feature (whichever crate turned the feature on). Not a public API.
#[doc(hidden)]
pub mod feature_gated {
    #[cfg(feature = "msgpack")]
    pub use crate::codec::MessagePack;
    #[cfg(feature = "postgres")]
    pub use crate::storage::postgres::{PostgresStorage, PostgresStorageBuilder};
    #[cfg(feature = "redis")]
    pub use crate::storage::redis::RedisStorage;
    #[cfg(feature = "sqlite")]
    pub use crate::storage::sqlite::{SqliteStorage, SqliteStorageBuilder, SqliteSynchronous};
    #[cfg(feature = "teloxide")]
    pub use crate::teloxide;
}
