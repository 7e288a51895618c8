//! What the SQL storages share: the checked table name, version and TTL
//! conversions, the mapping of `sqlx` errors to [`StorageError`], the
//! dialect-free half of leases (telling why a write was refused, running a
//! commit to completion), and in [`dialect`] the whole commit written once
//! over a [`Dialect`] with the decoding of the rows both dialects return.
//! `sqlite.rs` and `postgres.rs` keep their SQL text and what only they do.
//!
//! # The lease schema, for both dialects
//!
//! A lease lives in its record's own row (`lease_owner`, `lease_until`), so
//! taking it and reading the record is one upsert whose `RETURNING` gives the
//! row as the lease was taken on it, and a commit that writes a session
//! clears its lease in the same `UPDATE`. A key leased by an update that has
//! nothing stored yet gets a row with `value IS NULL`: a lease without a
//! record, invisible to loads, deleted by the release (or by the cleanup once
//! its lease expired). Such a row keeps the version of the record it replaced
//! (after a `clear()`), so a new record starts above it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use crate::key::StorageKey;
use crate::storage::{Conflict, Record, Write};
use crate::storage::{StorageError, StorageErrorKind};

mod dialect;

pub(crate) use dialect::{
    Dialect, Put, SqlRow, busy_answer, busy_row, cleanup_in_chunks, collect_loaded, in_batch_order,
    index_statements, leased_row, scan_page, spawn_commit, spawn_restore,
};

/// The table sessions go in unless told otherwise.
pub(crate) const DEFAULT_TABLE: &str = "tg_sessions";

/// Longest accepted part of a table name: PostgreSQL truncates identifiers at
/// 63 bytes, and the expiry index is named `<table>_expires_at`.
const MAX_IDENT_LEN: usize = 48;

/// Expired rows removed per statement by a cleanup, so that a large cleanup
/// never holds SQLite's single write lock (or many PostgreSQL row locks) for
/// long while updates wait.
pub(crate) const CLEANUP_CHUNK: i64 = 1000;

/// A table name checked to be a plain identifier (optionally `schema.table`
/// where schemas exist), kept with its quoted SQL form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableName {
    /// The name as given, for messages.
    plain: String,
    /// `"table"` or `"schema"."table"`, safe to splice into SQL.
    quoted: String,
    /// `"table_expires_at"`: the expiry index, created in the table's schema.
    index: String,
    /// `"table_lease_only"`: the index of lease-only rows, for the cleanup.
    lease_index: String,
    /// `"table_migrating"`: where SQLite rebuilds an old table.
    rebuild: String,
}

impl TableName {
    /// Checks `name`: one identifier, or two joined by a dot when
    /// `allow_schema`; each of ASCII letters, digits and underscores, not
    /// starting with a digit, at most 48 bytes.
    pub(crate) fn parse(name: &str, allow_schema: bool) -> Result<Self, StorageError> {
        let parts: Vec<&str> = name.split('.').collect();
        let shape_ok = match parts.len() {
            1 => true,
            2 => allow_schema,
            _ => false,
        };
        if !shape_ok || !parts.iter().all(|part| is_identifier(part)) {
            let expected = if allow_schema {
                "`table` or `schema.table`"
            } else {
                "`table`"
            };
            return Err(StorageError::other(format!(
                "invalid session table name `{}`: expected {expected}, each part made of ASCII \
                 letters, digits and `_`, not starting with a digit, at most {MAX_IDENT_LEN} bytes",
                name.escape_debug()
            )));
        }
        let quoted = parts
            .iter()
            .map(|part| format!("\"{part}\""))
            .collect::<Vec<_>>()
            .join(".");
        let table = parts.last().copied().unwrap_or(name);
        Ok(Self {
            plain: name.to_owned(),
            quoted,
            index: format!("\"{table}_expires_at\""),
            lease_index: format!("\"{table}_lease_only\""),
            rebuild: format!("\"{table}_migrating\""),
        })
    }

    /// The name as configured.
    pub(crate) fn as_str(&self) -> &str {
        &self.plain
    }

    /// The quoted name to splice into SQL.
    pub(crate) fn quoted(&self) -> &str {
        &self.quoted
    }

    /// The quoted name of the expiry index.
    pub(crate) fn index(&self) -> &str {
        &self.index
    }

    /// The quoted name of the index of lease-only rows.
    pub(crate) fn lease_index(&self) -> &str {
        &self.lease_index
    }

    /// The quoted name of the table an SQLite migration rebuilds into.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn rebuild(&self) -> &str {
        &self.rebuild
    }

    /// The `NOTIFY` channel of this table's lease releases: a fixed-length
    /// hash of the name, since a channel is an identifier of at most 63
    /// bytes and `schema.table` may be longer.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn channel(&self) -> String {
        // FNV-1a: stable across processes and builds, unlike `DefaultHasher`.
        let hash = self
            .plain
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        format!("tg_session_release_{hash:016x}")
    }
}

fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && part.len() <= MAX_IDENT_LEN && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A version as stored in a signed 64-bit column.
pub(crate) fn version_to_sql(version: u64) -> Result<i64, StorageError> {
    i64::try_from(version).map_err(|_| {
        StorageError::other(format!("session version {version} exceeds the SQL column"))
    })
}

/// A version read back from a signed 64-bit column.
pub(crate) fn version_from_sql(version: i64) -> Result<u64, StorageError> {
    u64::try_from(version).map_err(|_| {
        StorageError::other(format!(
            "the session table holds a negative version ({version})"
        ))
    })
}

/// A TTL in whole milliseconds (at least 1 for a non-zero TTL, saturating).
pub(crate) fn ttl_millis(ttl: Duration) -> i64 {
    let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    if millis == 0 && !ttl.is_zero() {
        1
    } else {
        millis
    }
}

/// Sorts a `sqlx` failure into the storage error kinds.
pub(crate) fn storage_error(error: sqlx::Error) -> StorageError {
    let kind = match &error {
        sqlx::Error::PoolTimedOut => StorageErrorKind::Timeout,
        // PostgreSQL's `lock_timeout` (55P03) and `statement_timeout` (57014).
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("55P03" | "57014")) => {
            StorageErrorKind::Timeout
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StorageErrorKind::Unavailable,
        _ => StorageErrorKind::Other,
    };
    StorageError::new(kind, error)
}

/// The distinct keys of a batch, sorted: the order every statement takes
/// row locks in, so two updates leasing overlapping keys cannot deadlock
/// (and an upsert never meets one key twice).
pub(crate) fn distinct_sorted(keys: &[StorageKey]) -> Vec<&str> {
    let mut distinct: Vec<&str> = keys.iter().map(StorageKey::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    distinct
}

/// The answer of an acquire statement, per key of the batch: the records of
/// the keys it returned (taken), or the index of the first key it did not
/// return (leased by another owner).
pub(crate) fn leased_records(
    keys: &[StorageKey],
    taken: &HashMap<String, Option<Record>>,
) -> Result<Vec<Option<Record>>, usize> {
    keys.iter()
        .enumerate()
        .map(|(index, key)| taken.get(key.as_str()).cloned().ok_or(index))
        .collect()
}

/// What a refused write found in its key's row (read on the conflict path
/// only, to say why).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowState {
    /// The row holds a record (not only a lease).
    pub(crate) has_value: bool,
    /// The row's version.
    pub(crate) version: i64,
    /// The record's `expires_at` has passed.
    pub(crate) expired: bool,
    /// Another owner (or, for a write without owner, anyone) holds a live lease.
    pub(crate) leased_by_other: bool,
}

/// Why a put expecting `expected` was refused, given its key's row.
pub(crate) fn conflict_cause(row: Option<RowState>, expected: Option<u64>) -> Conflict {
    match row {
        Some(row) if row.leased_by_other => Conflict::LeaseLost,
        Some(row)
            if row.has_value
                && row.expired
                && expected.is_some_and(|v| i64::try_from(v) == Ok(row.version)) =>
        {
            Conflict::Expired
        }
        _ => Conflict::NewerVersion,
    }
}

/// The keys of `release` that the puts of a batch did not release
/// themselves (a put whose key is released clears its lease in the same
/// statement; a refused put or a delete leaves it to the release statement).
pub(crate) fn still_to_release<'a>(
    release: &'a [StorageKey],
    released_by_puts: &HashSet<&str>,
) -> Vec<&'a str> {
    let mut rest: Vec<&str> = release
        .iter()
        .map(StorageKey::as_str)
        .filter(|key| !released_by_puts.contains(key))
        .collect();
    rest.sort_unstable();
    rest.dedup();
    rest
}

/// Whether a commit of `writes` releasing `release` needs a transaction:
/// more than one statement, unless it is one put that releases only its
/// own key (the common commit of one changed session), or no write at all
/// (the release statements are each safe alone).
pub(crate) fn needs_transaction(writes: &[Write], release: &[StorageKey]) -> bool {
    match writes {
        [] => false,
        [write] => release.iter().any(|key| key != write.key()),
        _ => true,
    }
}

/// Runs `work` in a task of its own and waits for it, so that dropping the
/// caller's future (an update cancelled mid-commit) never stops a
/// transaction halfway: sqlx 0.8 leaves a connection inside a transaction
/// when `begin` or `commit` is dropped, and an acknowledged write could be
/// lost or a later one refused.
pub(crate) async fn run_to_completion<T, F>(work: F) -> Result<T, StorageError>
where
    F: Future<Output = Result<T, StorageError>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(work)
        .await
        .map_err(|error| StorageError::other(format!("a session storage task failed: {error}")))?
}

/// Runs `cleanup` of `storage` every `period` (at least a second) in a
/// Tokio task, logging what it removed or why it failed, until the task is
/// aborted.
pub(crate) fn spawn_cleanup<S, F, Fut>(
    storage: S,
    name: String,
    period: Duration,
    cleanup: F,
) -> tokio::task::JoinHandle<()>
where
    S: Clone + Send + 'static,
    F: Fn(S) -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64, StorageError>> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period.max(Duration::from_secs(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match cleanup(storage.clone()).await {
                Ok(removed) => {
                    tracing::debug!(storage = %name, removed, "expired sessions removed");
                }
                Err(error) => {
                    tracing::warn!(storage = %name, %error, "session cleanup failed");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers() {
        let plain = TableName::parse("tg_sessions", false).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(plain.quoted(), "\"tg_sessions\"");
        assert_eq!(plain.index(), "\"tg_sessions_expires_at\"");
        let schema =
            TableName::parse("bot.Sessions2", true).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(schema.quoted(), "\"bot\".\"Sessions2\"");
        assert_eq!(schema.index(), "\"Sessions2_expires_at\"");
        assert!(TableName::parse("_x", false).is_ok());
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "a b",
            "x\"; DROP TABLE y; --",
            "1abc",
            "a.b.c",
            ".a",
            "a.",
            "sessions-2",
            "séance",
            &"a".repeat(49),
        ] {
            assert!(TableName::parse(bad, true).is_err(), "{bad:?} accepted");
        }
        let error = TableName::parse("bot.sessions", false)
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("invalid session table name `bot.sessions`")),
            "{error:?}"
        );
    }

    #[test]
    fn refused_writes_say_why() {
        let row = |has_value, version, expired, leased_by_other| {
            Some(RowState {
                has_value,
                version,
                expired,
                leased_by_other,
            })
        };
        assert_eq!(conflict_cause(None, Some(3)), Conflict::NewerVersion);
        assert_eq!(
            conflict_cause(row(true, 3, false, true), Some(3)),
            Conflict::LeaseLost
        );
        assert_eq!(
            conflict_cause(row(true, 3, true, false), Some(3)),
            Conflict::Expired
        );
        assert_eq!(
            conflict_cause(row(true, 4, true, false), Some(3)),
            Conflict::NewerVersion
        );
        assert_eq!(
            conflict_cause(row(false, 3, false, false), Some(3)),
            Conflict::NewerVersion
        );
    }

    #[test]
    fn a_busy_key_is_found_in_batch_order() {
        let keys: Vec<StorageKey> = ["a", "b", "c"]
            .iter()
            .map(|k| StorageKey::new(None, None, "t", k))
            .collect();
        let mut taken = HashMap::new();
        taken.insert(keys[0].as_str().to_owned(), None);
        taken.insert(keys[2].as_str().to_owned(), None);
        assert_eq!(leased_records(&keys, &taken), Err(1));
        taken.insert(keys[1].as_str().to_owned(), None);
        assert_eq!(leased_records(&keys, &taken), Ok(vec![None, None, None]));
        assert_eq!(
            distinct_sorted(&[keys[2].clone(), keys[0].clone(), keys[2].clone()]),
            [keys[0].as_str(), keys[2].as_str()]
        );
    }

    #[test]
    fn channels_are_short_identifiers() {
        let long = TableName::parse(&format!("{0}.{0}", "s".repeat(48)), true)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(long.channel().len() < 63);
        let other = TableName::parse("sessions", true).unwrap_or_else(|e| unreachable!("{e}"));
        assert_ne!(long.channel(), other.channel());
    }

    #[test]
    fn conversions_refuse_what_does_not_fit() {
        assert!(version_to_sql(u64::MAX).is_err());
        assert!(version_from_sql(-1).is_err());
        assert_eq!(ttl_millis(Duration::from_micros(10)), 1);
        assert_eq!(ttl_millis(Duration::ZERO), 0);
        assert_eq!(ttl_millis(Duration::MAX), i64::MAX);
    }
}
