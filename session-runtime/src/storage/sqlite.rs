//! Sessions in an SQLite file: the embedded persistent storage for a bot on
//! one machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous as SqlxSynchronous,
};
use tokio::task::JoinHandle;

use crate::error::StorageError;
use crate::key::StorageKey;
use crate::storage::sql::{
    CLEANUP_CHUNK, DEFAULT_TABLE, TableName, storage_error, ttl_millis, version_from_sql,
    version_to_sql,
};
use crate::storage::{Conflict, Record, Storage, Write, WriteOutcome, sql};

/// Keys per `SELECT … IN (…)`, well under SQLite's limit on bound parameters.
const LOAD_CHUNK: usize = 500;

/// How hard SQLite works to keep committed sessions through a crash
/// (SQLite's `PRAGMA synchronous`, in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SqliteSynchronous {
    /// No fsync at all: a process crash loses nothing, but a power loss or OS
    /// crash may lose recent sessions or corrupt the file.
    Off,
    /// fsync at checkpoints only (default): a process crash loses nothing and
    /// the file never corrupts; a power loss or OS crash may roll back the
    /// last transactions. The usual choice for sessions.
    #[default]
    Normal,
    /// fsync of the write-ahead log at every commit: a committed session also
    /// survives a power loss, at the price of one fsync per update.
    Full,
}

impl SqliteSynchronous {
    fn to_sqlx(self) -> SqlxSynchronous {
        match self {
            SqliteSynchronous::Off => SqlxSynchronous::Off,
            SqliteSynchronous::Normal => SqlxSynchronous::Normal,
            SqliteSynchronous::Full => SqlxSynchronous::Full,
        }
    }
}

/// Sessions in an SQLite database file, kept across restarts with no server
/// to run.
///
/// One table (default `tg_sessions`, created on first use) holds the key, the
/// encoded value, its version and its expiry time. An update's sessions are
/// loaded with one `SELECT` and written in one transaction; every put is
/// conditional on the version that was read, so two processes sharing the
/// file never overwrite each other silently.
///
/// # Settings, chosen for a bot
///
/// - **WAL journal**: readers never wait for the writer, and a commit appends
///   to the log instead of rewriting pages.
/// - **`synchronous = NORMAL`** by default: a committed session survives a
///   crash of the process; on power loss or an OS crash the last transactions
///   may roll back (the file stays consistent). Choose
///   [`SqliteSynchronous::Full`] to fsync every commit.
/// - **One writer connection** and a pool of readers: SQLite admits one
///   writer at a time anyway, so writes of this process queue in the pool
///   instead of failing with "database is locked"; write transactions start
///   with `BEGIN IMMEDIATE`, and a 5 s `busy_timeout` covers other processes
///   on the same file.
///
/// Cloning is cheap and shares the connections.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tg_session_runtime::StorageError> {
/// # let dir = std::env::temp_dir().join(format!("tg-session-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).map_err(tg_session_runtime::StorageError::other)?;
/// use std::time::Duration;
/// use tg_session_runtime::{SessionManager, SqliteStorage};
///
/// let storage = SqliteStorage::open(dir.join("sessions.db")).await?;
/// let _cleanup = storage.spawn_cleanup(Duration::from_secs(600));
/// let manager = SessionManager::builder().storage(storage).build();
/// # assert!(manager.is_ok());
/// # std::fs::remove_dir_all(&dir).map_err(tg_session_runtime::StorageError::other)?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    table: TableName,
    readers: SqlitePool,
    writer: SqlitePool,
    statements: Statements,
}

struct Statements {
    /// Everything of the load query before the key placeholders.
    load_head: String,
    update: String,
    insert: String,
    delete: String,
    cleanup: String,
}

impl Statements {
    fn new(table: &TableName) -> Self {
        let t = table.quoted();
        Self {
            load_head: format!(
                "SELECT key, value, version FROM {t} \
                 WHERE (expires_at IS NULL OR expires_at > ?1) AND key IN ("
            ),
            update: format!(
                "UPDATE {t} SET value = ?1, version = ?2, expires_at = ?3 \
                 WHERE key = ?4 AND version = ?5 AND (expires_at IS NULL OR expires_at > ?6)"
            ),
            insert: format!(
                "INSERT INTO {t} (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version, expires_at = excluded.expires_at \
                 WHERE {t}.expires_at IS NOT NULL AND {t}.expires_at <= ?5"
            ),
            delete: format!("DELETE FROM {t} WHERE key = ?1"),
            cleanup: format!(
                "DELETE FROM {t} WHERE key IN \
                 (SELECT key FROM {t} WHERE expires_at <= ?1 LIMIT ?2)"
            ),
        }
    }
}

/// Configures a [`SqliteStorage`]; start with [`SqliteStorage::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct SqliteStorageBuilder {
    path: PathBuf,
    table: String,
    synchronous: SqliteSynchronous,
    readers: u32,
    busy_timeout: Duration,
}

impl SqliteStorageBuilder {
    /// The table sessions go in (default `tg_sessions`): ASCII letters,
    /// digits and `_`, not starting with a digit. Anything else is refused
    /// by [`open`](Self::open).
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Durability of commits (default [`SqliteSynchronous::Normal`]).
    pub fn synchronous(mut self, synchronous: SqliteSynchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// How many connections read concurrently (default: the number of CPUs,
    /// between 2 and 8). Writes always go through one connection.
    pub fn readers(mut self, readers: u32) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// How long a statement waits for another *process* holding the file's
    /// write lock before failing (default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Opens (or creates) the file, switches it to WAL and creates the table
    /// if it is missing.
    pub async fn open(self) -> Result<SqliteStorage, StorageError> {
        let table = TableName::parse(&self.table, false)?;
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(self.synchronous.to_sqlx())
            .busy_timeout(self.busy_timeout)
            .foreign_keys(false);
        // Connections live as long as the storage so their prepared
        // statements stay cached.
        // A file has no link to go stale: pinging it on every acquire would
        // only add a round trip to sqlx's connection thread.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(storage_error)?;
        create_table(&writer, &table).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(self.readers)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(storage_error)?;
        Ok(SqliteStorage {
            inner: Arc::new(Inner {
                name: format!("sqlite:{}", self.path.display()),
                statements: Statements::new(&table),
                table,
                readers,
                writer,
            }),
        })
    }
}

async fn create_table(writer: &SqlitePool, table: &TableName) -> Result<(), StorageError> {
    let t = table.quoted();
    let index = table.index();
    sqlx::raw_sql(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (\
             key TEXT PRIMARY KEY NOT NULL, \
             value BLOB NOT NULL, \
             version INTEGER NOT NULL, \
             expires_at INTEGER\
         ); \
         CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at) WHERE expires_at IS NOT NULL;"
    ))
    .execute(writer)
    .await
    .map_err(storage_error)?;
    Ok(())
}

impl SqliteStorage {
    /// Opens (or creates) the database at `path` with the default settings.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::builder(path).open().await
    }

    /// Configures a storage over the database at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStorageBuilder {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        SqliteStorageBuilder {
            path: path.as_ref().to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            synchronous: SqliteSynchronous::default(),
            readers: u32::try_from(cpus.clamp(2, 8)).unwrap_or(2),
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// The table sessions are kept in.
    pub fn table(&self) -> &str {
        self.inner.table.as_str()
    }

    /// Deletes the expired rows now and says how many went.
    ///
    /// Expired sessions are already invisible; this reclaims their space.
    /// Rows go a thousand per statement so updates never wait long behind it.
    pub async fn cleanup_expired(&self) -> Result<u64, StorageError> {
        let now = now_millis();
        let mut removed = 0;
        loop {
            let done = sqlx::query(&self.inner.statements.cleanup)
                .bind(now)
                .bind(CLEANUP_CHUNK)
                .execute(&self.inner.writer)
                .await
                .map_err(storage_error)?
                .rows_affected();
            removed += done;
            if done < CLEANUP_CHUNK.unsigned_abs() {
                return Ok(removed);
            }
        }
    }

    /// Runs [`cleanup_expired`](Self::cleanup_expired) every `period` (at
    /// least a second) in a Tokio task, logging failures, until the task is
    /// aborted or the runtime shuts down.
    ///
    /// Must be called inside a Tokio runtime. Dropping the handle leaves the
    /// task running; [`JoinHandle::abort`] stops it.
    pub fn spawn_cleanup(&self, period: Duration) -> JoinHandle<()> {
        let storage = self.clone();
        sql::spawn_cleanup(self.inner.name.clone(), period, move || {
            let storage = storage.clone();
            async move { storage.cleanup_expired().await }
        })
    }

    /// Closes the connections, waiting for queries in flight. Every clone is
    /// closed; later calls fail with [`StorageErrorKind::Unavailable`](crate::StorageErrorKind).
    pub async fn close(&self) {
        self.inner.readers.close().await;
        self.inner.writer.close().await;
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

fn expires_at(now: i64, ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| now.saturating_add(ttl_millis(ttl)))
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("name", &self.inner.name)
            .field("table", &self.inner.table.as_str())
            .finish_non_exhaustive()
    }
}

async fn apply(
    conn: &mut SqliteConnection,
    statements: &Statements,
    write: &Write,
    now: i64,
) -> Result<WriteOutcome, StorageError> {
    match write {
        Write::Put {
            key,
            value,
            expected_version,
            ttl,
        } => {
            let version = Write::next_version(*expected_version);
            let query = match expected_version {
                Some(expected) => sqlx::query(&statements.update)
                    .bind(value.as_ref())
                    .bind(version_to_sql(version)?)
                    .bind(expires_at(now, *ttl))
                    .bind(key.as_str())
                    .bind(version_to_sql(*expected)?)
                    .bind(now),
                None => sqlx::query(&statements.insert)
                    .bind(key.as_str())
                    .bind(value.as_ref())
                    .bind(version_to_sql(version)?)
                    .bind(expires_at(now, *ttl))
                    .bind(now),
            };
            let changed = query.execute(&mut *conn).await.map_err(storage_error)?;
            Ok(match changed.rows_affected() {
                0 => WriteOutcome::Conflict(Conflict::NewerVersion),
                _ => WriteOutcome::Written { version },
            })
        }
        Write::Delete { key } => {
            sqlx::query(&statements.delete)
                .bind(key.as_str())
                .execute(&mut *conn)
                .await
                .map_err(storage_error)?;
            Ok(WriteOutcome::Deleted)
        }
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    fn name(&self) -> &str {
        &self.inner.name
    }

    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, keys = keys.len()))]
    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        let now = now_millis();
        let mut found: HashMap<String, Record> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(LOAD_CHUNK) {
            let mut sql =
                String::with_capacity(self.inner.statements.load_head.len() + chunk.len() * 6);
            sql.push_str(&self.inner.statements.load_head);
            for index in 0..chunk.len() {
                if index > 0 {
                    sql.push_str(", ");
                }
                sql.push('?');
                sql.push_str(&(index + 2).to_string());
            }
            sql.push(')');
            let mut query = sqlx::query(&sql).bind(now);
            for key in chunk {
                query = query.bind(key.as_str());
            }
            let rows = query
                .fetch_all(&self.inner.readers)
                .await
                .map_err(storage_error)?;
            for row in rows {
                let key: String = row.try_get(0).map_err(storage_error)?;
                let value: Vec<u8> = row.try_get(1).map_err(storage_error)?;
                let version = version_from_sql(row.try_get(2).map_err(storage_error)?)?;
                found.insert(
                    key,
                    Record {
                        value: Bytes::from(value),
                        version,
                    },
                );
            }
        }
        Ok(keys
            .iter()
            .map(|key| found.get(key.as_str()).cloned())
            .collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, writes = writes.len()))]
    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        let now = now_millis();
        let statements = &self.inner.statements;
        match writes {
            [] => Ok(Vec::new()),
            // One statement commits by itself: no transaction to open.
            [write] => {
                let mut conn = self.inner.writer.acquire().await.map_err(storage_error)?;
                Ok(vec![apply(&mut conn, statements, write, now).await?])
            }
            _ => {
                let mut tx = self
                    .inner
                    .writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(storage_error)?;
                let mut outcomes = Vec::with_capacity(writes.len());
                for write in writes {
                    outcomes.push(apply(&mut tx, statements, write, now).await?);
                }
                tx.commit().await.map_err(storage_error)?;
                Ok(outcomes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_saturates() {
        assert_eq!(
            expires_at(i64::MAX - 1, Some(Duration::from_secs(1))),
            Some(i64::MAX)
        );
        assert_eq!(expires_at(10, None), None);
        assert_eq!(expires_at(10, Some(Duration::from_millis(5))), Some(15));
    }

    #[test]
    fn statements_use_the_quoted_table() {
        let table = TableName::parse("bot_sessions", false).unwrap_or_else(|e| unreachable!("{e}"));
        let statements = Statements::new(&table);
        assert!(statements.update.starts_with("UPDATE \"bot_sessions\" SET"));
    }
}
