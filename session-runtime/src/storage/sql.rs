//! What the SQL storages share: the checked table name, version and TTL
//! conversions, and the mapping of `sqlx` errors to [`StorageError`].

use std::time::Duration;

use crate::error::{StorageError, StorageErrorKind};

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
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StorageErrorKind::Unavailable,
        _ => StorageErrorKind::Other,
    };
    StorageError::new(kind, error)
}

/// Runs `cleanup` every `period` (at least a second) in a Tokio task,
/// logging what it removed or why it failed, until the task is aborted.
pub(crate) fn spawn_cleanup<F, Fut>(
    storage: String,
    period: Duration,
    cleanup: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, StorageError>> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period.max(Duration::from_secs(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match cleanup().await {
                Ok(removed) => {
                    tracing::debug!(storage = %storage, removed, "expired sessions removed");
                }
                Err(error) => {
                    tracing::warn!(storage = %storage, %error, "session cleanup failed");
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
    fn conversions_refuse_what_does_not_fit() {
        assert!(version_to_sql(u64::MAX).is_err());
        assert!(version_from_sql(-1).is_err());
        assert_eq!(ttl_millis(Duration::from_micros(10)), 1);
        assert_eq!(ttl_millis(Duration::ZERO), 0);
        assert_eq!(ttl_millis(Duration::MAX), i64::MAX);
    }
}
