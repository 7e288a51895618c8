//! The one error type users see, and the errors storages and codecs report.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::CodecError;
use crate::storage::StorageError;

/// Everything that can go wrong with a session.
///
/// Each message names the session (its `key` name) and says how to fix what
/// can be fixed; errors from a storage call also name the storage key and the
/// storage.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The update lacks an id the session's scope needs (a channel post has no
    /// sender, an inline query has no chat). Only this session's accessor fails.
    #[error(
        "session `{session}` needs {needs} to build its key, but this update has none; \
         choose a scope this kind of update has (e.g. `scope = \"chat\"`) or a `key_fn` \
         that returns `None` for it"
    )]
    MissingId {
        /// The session's key name.
        session: &'static str,
        /// What was missing, e.g. "the sender's user id".
        needs: &'static str,
    },

    /// An eager session type was used without being registered on the manager,
    /// so it could not be loaded before the handler.
    #[error(
        "session `{session}` ({type_name}) is eager but was not registered: call \
         `.register::<{type_name}>()` on the `SessionManager` builder, or mark it \
         `#[session(lazy)]`"
    )]
    NotRegistered {
        /// The session's key name.
        session: &'static str,
        /// The Rust type of the session.
        type_name: &'static str,
    },

    /// Two session types use the same `key` name: their data would overwrite each other.
    #[error(
        "session types `{first}` and `{second}` both use the key `{session}`: give one of \
         them another `#[session(key = \"...\")]`"
    )]
    DuplicateSession {
        /// The shared key name.
        session: &'static str,
        /// The first type registered with it.
        first: &'static str,
        /// The type that collided.
        second: &'static str,
    },

    /// The session is already borrowed in this update: a `SessionRef` to it is
    /// still alive.
    #[error(
        "session `{session}` (key `{key}`) is already in use in this update: drop the \
         first `SessionRef` before taking another, and before the handler returns"
    )]
    AlreadyBorrowed {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
    },

    /// Another update kept the key locked for longer than the manager's lock timeout.
    #[error(
        "session `{session}` (key `{key}`): {holder} held this key for more than \
         {waited:?}; raise `SessionManagerBuilder::lock_timeout` if handlers are this slow"
    )]
    LockTimeout {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// How long this update waited.
        waited: Duration,
        /// Who held it: another update of this process, or a lease in a storage.
        holder: LockHolder,
    },

    /// The storage failed (unreachable, timed out, refused the command).
    #[error("session `{session}` (key `{key}`): storage `{storage}` failed: {source}")]
    Storage {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The storage's name, from [`Storage::name`](crate::storage::Storage::name).
        storage: Arc<str>,
        /// What the storage reported.
        #[source]
        source: StorageError,
    },

    /// The stored bytes do not decode as the session type (its shape changed).
    /// The stored data is left untouched.
    #[error(
        "session `{session}` (key `{key}`): the bytes stored in `{storage}` do not decode \
         as `{type_name}` with the {codec} codec: {source}; the stored data was left in \
         place: migrate or delete it, or opt in to `#[session(on_decode_error = \"reset\")]`"
    )]
    Decode {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The storage's name.
        storage: Arc<str>,
        /// The Rust type of the session.
        type_name: &'static str,
        /// The codec's name.
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// A record of an older schema version (or one written before the type
    /// had a version) did not migrate to the current type: the old shape does
    /// not decode, or a conversion failed. The stored data is left untouched,
    /// whatever the type's `on_decode_error` says.
    #[error(
        "session `{session}` (key `{key}`): the record stored in `{storage}` {} did not \
         migrate to `{type_name}` version {target_version}: {source}; the stored data was \
         left in place: fix the migration (the `migrate(...)` shapes and conversions of \
         `{type_name}`) or delete the record",
        stored_as(*stored_version)
    )]
    Migration {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The storage's name.
        storage: Arc<str>,
        /// The Rust type of the session.
        type_name: &'static str,
        /// The version the record carries; `None` if it has no version tag.
        stored_version: Option<u32>,
        /// The type's current version.
        target_version: u32,
        /// Which step failed and why (boxed: it is rare, and the error
        /// type stays small).
        #[source]
        source: Box<crate::migrate::MigrationError>,
    },

    /// The record was written with a schema version newer than this type
    /// knows (a rolled-back build reading what a newer build wrote). The
    /// stored data is left untouched.
    #[error(
        "session `{session}` (key `{key}`): the record stored in `{storage}` has schema \
         version {stored_version}, newer than `{type_name}` here knows ({}); it was left in \
         place: run the build that wrote it, or declare version {stored_version} in this one",
        known_as(*known_version)
    )]
    NewerSchema {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The storage's name.
        storage: Arc<str>,
        /// The Rust type of the session.
        type_name: &'static str,
        /// The version the record carries.
        stored_version: u32,
        /// The type's current version; `None` if it declares none.
        known_version: Option<u32>,
    },

    /// The session value could not be encoded (e.g. a map with non-string keys in JSON).
    #[error(
        "session `{session}` (key `{key}`): the value does not encode with the {codec} codec: {source}"
    )]
    Encode {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The codec's name.
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// The value does not come back from its codec as it went in, so a
    /// storage that keeps bytes (Redis, SQL) would lose it or fail to load
    /// it. The [`MemoryStorage`](crate::MemoryStorage) keeps values as they
    /// are, so it checks this instead: on every write in debug builds, on
    /// the first write of each type otherwise. Nothing was written.
    #[error(
        "session `{session}` (key `{key}`): a value of `{type_name}` does not survive the {codec} \
         codec's round trip, so Redis or SQL could not keep it: {source}; fix its serde \
         attributes (a field skipped when encoding but not given a default, a map with \
         non-string keys in JSON, ...)"
    )]
    RoundTrip {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The session's Rust type.
        type_name: &'static str,
        /// The codec's name.
        codec: &'static str,
        /// What went wrong: the codec's error, or the difference.
        #[source]
        source: CodecError,
    },

    /// The write was refused and nothing was written; `cause` says why.
    /// The data that stands in the storage is intact.
    #[error(
        "session `{session}` (key `{key}`): storage `{storage}` refused this update's change: {}",
        conflict_cause(*cause)
    )]
    Conflict {
        /// The session's key name.
        session: &'static str,
        /// The storage key.
        key: String,
        /// The storage's name.
        storage: Arc<str>,
        /// Why the write was refused.
        cause: crate::storage::Conflict,
    },

    /// One update needs one storage key for two session types (two types
    /// with the same `key` name, one of them not registered). Their records
    /// would overwrite each other, and the update would wait on itself.
    #[error(
        "session types `{first}` and `{second}` both use the storage key `{key}` in this \
         update: give one of them another `#[session(key = \"...\")]` (and register both, \
         so the manager refuses such a pair at build time)"
    )]
    SameKeyTwice {
        /// The storage key both need.
        key: String,
        /// The type that took the key first.
        first: &'static str,
        /// The type that asked for it again.
        second: &'static str,
    },

    /// Waiting for the key would close a cycle: the update holding it waits
    /// (directly or through others) for a key this update holds, so neither
    /// could ever go on. This update's session fails at once instead.
    #[error(
        "session `{session}` (key `{key}`): the update holding this key waits for `{held}`, \
         which this update holds: waiting would stall both; load lazy sessions in the same \
         order in every handler, or make them eager"
    )]
    LockCycle {
        /// The session's key name.
        session: &'static str,
        /// The key this update asked for.
        key: String,
        /// The key this update holds that the other one waits for.
        held: String,
    },

    /// The update's sessions were already committed; the context can no longer be used.
    #[error(
        "session `{session}`: this update's sessions were already committed; take sessions \
         only inside the handler"
    )]
    Finished {
        /// The session's key name.
        session: &'static str,
    },
}

/// Who held a key an update waited for in vain ([`Error::LockTimeout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockHolder {
    /// Another update of this process.
    ThisProcess,
    /// An update of another process, through its lease in this storage.
    Lease {
        /// The storage's name.
        storage: Arc<str>,
    },
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockHolder::ThisProcess => f.write_str("another update of this process"),
            LockHolder::Lease { storage } => write!(
                f,
                "an update of another process (its lease in `{storage}`; a process that died \
                 holding it blocks the key until the lease expires)"
            ),
        }
    }
}

fn stored_as(version: Option<u32>) -> String {
    match version {
        Some(version) => format!("with schema version {version}"),
        None => "with no version tag (read as the oldest declared shape)".to_owned(),
    }
}

fn known_as(version: Option<u32>) -> String {
    match version {
        Some(version) => format!("up to version {version}"),
        None => "no versions: it declares no `#[session(version = N)]`".to_owned(),
    }
}

fn conflict_cause(cause: crate::storage::Conflict) -> &'static str {
    use crate::storage::Conflict;
    match cause {
        Conflict::NewerVersion => {
            "another writer stored a newer version since this update loaded it (a process \
             that does not share this storage's leases, or one configured without them); \
             handle the update again to apply it on top"
        }
        Conflict::Expired => {
            "the record expired (its `ttl` ran out) between this update's load and its write; \
             handle the update again to start from the initial value"
        }
        Conflict::LeaseLost => {
            "this update's lease on the key ran out and another update took it (the handler \
             ran longer than the lease lived, or its renewal failed); raise the lease TTL if \
             handlers are this slow"
        }
    }
}
