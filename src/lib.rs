//! Typed, persistent per-user and per-chat sessions for Telegram bots.
// The README's teloxide quick start is compiled as a doc test, so the README
// is the crate's documentation when the `teloxide` feature is on (as on docs.rs).
#![cfg_attr(feature = "teloxide", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "teloxide"),
    doc = "See the README (or the docs built with feature `teloxide`) for the guide."
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The public API, listed: what a bot uses sits at the root; what a storage
// implementer needs sits in `storage`, and codecs in `codec`.

pub use tg_session_macros::Session;

// Declaring session types (and how they change).
pub use tg_session_runtime::{
    Codec, Json, KeyFn, KeyStrategy, MigrateFrom, MigrationError, MigrationOutput, OnDecodeError,
    Scope, Session, UpdateIds,
};
// Configuring the manager.
pub use tg_session_runtime::{
    DEFAULT_LEASE_TTL, DEFAULT_LOCK_TIMEOUT, SavePolicy, SessionManager, SessionManagerBuilder,
};
// A group that becomes a supergroup.
pub use tg_session_runtime::{ChatMigration, MIGRATED_MARKER};
// One update's sessions.
pub use tg_session_runtime::{HandlerOutcome, SessionContext, SessionRef, Sessions, StorageKey};
// Errors.
pub use tg_session_runtime::{CodecError, Error, LockHolder, StorageError, StorageErrorKind};
// The storages.
pub use tg_session_runtime::MemoryStorage;
// Behind features (`msgpack`: `MessagePack`; `redis`: `RedisStorage`;
// `sqlite`: `SqliteStorage`, `SqliteStorageBuilder`, `SqliteSynchronous`;
// `postgres`: `PostgresStorage`, `PostgresStorageBuilder`; `teloxide`: the
// `teloxide` module). The runtime lists them in one module, so each is here
// exactly when the runtime was built with its feature, whichever crate of the
// build turned it on. (Empty, hence unused, without any feature.)
#[allow(unused_imports)]
pub use tg_session_runtime::feature_gated::*;

pub use tg_session_runtime::{codec, data, storage};

/// What `#[derive(Session)]` expands to refers to; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use tg_session_runtime::{
        CopyByClone, CopyUnavailable, Error, Json, KeyStrategy, MigrationError, OnDecodeError,
        SameByEq, SameUnavailable, Scope, Session, SessionContext, SessionRef, ValueProbe,
        decode_shape, step_from, step_with, unknown_version,
    };
}
