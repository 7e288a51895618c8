//! Sessions in an SQLite file: the embedded persistent storage for a bot on
//! one machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::Transaction;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous as SqlxSynchronous,
};
use tokio::task::JoinHandle;

use crate::key::StorageKey;
use crate::storage::StorageError;
use crate::storage::sql::{
    CLEANUP_CHUNK, DEFAULT_TABLE, Dialect, Put, RowState, SqlRow, TableName, busy_answer, busy_row,
    collect_loaded, distinct_sorted, in_batch_order, leased_records, leased_row, run_to_completion,
    scan_page, spawn_restore, storage_error, ttl_millis, version_to_sql,
};
use crate::storage::{
    KeyPrefix, Lease, LeaseOwner, LeasedLoad, Leases, Record, Restore, RestoreOutcome, ScanCursor,
    ScanPage, Storage, Write, WriteOutcome, page_limit, sql,
};

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
/// encoded value, its version, its expiry time and the key's lease. An
/// update's sessions are loaded with one `SELECT` and written in one
/// transaction; every put is conditional on the version that was read, so
/// two processes sharing the file never overwrite each other silently, and a
/// record's version never repeats (a new record starts at the clock in
/// microseconds), so a write prepared before a `clear()` and re-create is
/// refused too.
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
///   on the same file. Every write runs to its end in a task of its own,
///   even when the update that started it is cancelled, so the writer is
///   never left inside a transaction.
/// - **No cross-process leases** by default
///   ([`SqliteStorageBuilder::cross_process_leases`]): an SQLite file is
///   usually used by one process, which serializes its updates itself, and a
///   lease would turn every load into a write queued on the single writer.
///   Several processes on one file should turn them on.
///
/// Cloning is cheap and shares the connections.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tg_session::StorageError> {
/// # let dir = std::env::temp_dir().join(format!("tg-session-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).map_err(tg_session::StorageError::other)?;
/// use std::time::Duration;
/// use tg_session::{SessionManager, SqliteStorage};
///
/// let storage = SqliteStorage::open(dir.join("sessions.db")).await?;
/// let _cleanup = storage.spawn_cleanup(Duration::from_secs(600));
/// let manager = SessionManager::builder().storage(storage).build();
/// # assert!(manager.is_ok());
/// # std::fs::remove_dir_all(&dir).map_err(tg_session::StorageError::other)?;
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
    leases: bool,
    /// The database file as opened, to notice it deleted or replaced.
    file: OpenedFile,
}

/// Which file the storage opened: SQLite keeps writing to an open file
/// descriptor after the file was deleted or replaced on disk, so writes
/// would be acknowledged into a file nobody can open again.
struct OpenedFile {
    path: PathBuf,
    /// Device and inode at open; `None` where the file has none to compare
    /// (an in-memory database, a platform without inodes).
    identity: Option<(u64, u64)>,
}

impl OpenedFile {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            identity: file_identity(path).ok(),
        }
    }

    /// Fails when the file at the path is gone or is another file: one
    /// `stat` per write, far below the cost of the write itself.
    fn check(&self) -> Result<(), StorageError> {
        let Some(opened) = self.identity else {
            return Ok(());
        };
        match file_identity(&self.path) {
            Ok(now) if now == opened => Ok(()),
            Ok(_) => Err(StorageError::unavailable(format!(
                "the database file `{}` was replaced by another file while the storage had it \
                 open; writes would go to the old one: open the storage again",
                self.path.display()
            ))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::unavailable(format!(
                    "the database file `{}` was deleted while the storage had it open; writes \
                     would be lost with it: put the file back or open the storage again",
                    self.path.display()
                )))
            }
            Err(error) => Err(StorageError::unavailable(error)),
        }
    }
}

#[cfg(unix)]
fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

#[cfg(not(unix))]
fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::metadata(path).map(|_| (0, 0))
}

/// Statements with a fixed shape; those taking a list of keys are built per
/// call from a head and [`key_list`].
struct Statements {
    /// Everything of the load query before the key placeholders (`?2`…).
    load_head: String,
    update: String,
    insert: String,
    delete_unleased: String,
    delete_leased: String,
    row_state: String,
    /// The acquire upsert before its `VALUES` rows.
    acquire_head: String,
    /// The acquire upsert after its `VALUES` rows.
    acquire_tail: String,
    /// Busy leases among keys `?3`…: owner `?1`, now `?2`.
    busy_head: String,
    /// Lease-only rows of owner `?1` among keys `?2`…
    release_gone_head: String,
    /// Leases of owner `?1` among keys `?2`…
    release_kept_head: String,
    /// Leases of owner `?1` among keys `?3`…, until `?2`.
    renew_head: String,
    cleanup: String,
    /// Live records from `?1` (the prefix) after `?2` (the cursor), at
    /// most `?4`, with values if `?5`; `?3` now.
    scan: String,
    /// A record as it is (`?1` key, `?2` value, `?3` version, `?4` expiry),
    /// unless its row holds that version or a newer one or a lease live at `?5`.
    restore: String,
}

impl Statements {
    fn new(table: &TableName) -> Self {
        let t = table.quoted();
        // Params of both puts: ?1 value, ?2 expires_at, ?3 key, ?4 expected
        // (update) or the new version (insert), ?5 owner, ?6 release, ?7 now.
        let release = "lease_owner = CASE WHEN ?6 THEN NULL ELSE lease_owner END, \
                       lease_until = CASE WHEN ?6 THEN NULL ELSE lease_until END";
        let fence = "(lease_owner IS NULL OR lease_owner = ?5 OR lease_until <= ?7)";
        Self {
            load_head: format!(
                "SELECT key, value, version FROM {t} WHERE value IS NOT NULL \
                 AND (expires_at IS NULL OR expires_at > ?1) AND key IN ("
            ),
            update: format!(
                "UPDATE {t} SET value = ?1, version = ?4 + 1, expires_at = ?2, {release} \
                 WHERE key = ?3 AND version = ?4 AND value IS NOT NULL \
                 AND (expires_at IS NULL OR expires_at > ?7) AND {fence} \
                 RETURNING version"
            ),
            // Over a lease-only or expired row, the new version also stays
            // above the one the row kept.
            insert: format!(
                "INSERT INTO {t} (key, value, version, expires_at) VALUES (?3, ?1, ?4, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = max(excluded.version, {t}.version + 1), \
                 expires_at = excluded.expires_at, {release} \
                 WHERE ({t}.value IS NULL OR {t}.expires_at <= ?7) AND {fence} \
                 RETURNING version"
            ),
            delete_unleased: format!(
                "DELETE FROM {t} WHERE key = ?1 AND (lease_owner IS NULL OR lease_until <= ?2)"
            ),
            // A clear under the owner's lease keeps the lease (and the
            // version, so the next record starts above it).
            delete_leased: format!(
                "UPDATE {t} SET value = NULL, expires_at = NULL WHERE key = ?1 AND lease_owner = ?2"
            ),
            row_state: format!(
                "SELECT value IS NOT NULL, version, coalesce(expires_at <= ?3, 0), \
                 coalesce(lease_owner IS NOT ?2 AND lease_until > ?3, 0) FROM {t} WHERE key = ?1"
            ),
            // ?1 owner, ?2 lease_until, ?3 now, keys from ?4.
            acquire_head: format!(
                "INSERT INTO {t} (key, value, version, lease_owner, lease_until) VALUES "
            ),
            acquire_tail: format!(
                " ON CONFLICT (key) DO UPDATE SET lease_owner = excluded.lease_owner, \
                 lease_until = excluded.lease_until \
                 WHERE {t}.lease_owner IS NULL OR {t}.lease_owner = excluded.lease_owner \
                 OR {t}.lease_until <= ?3 \
                 RETURNING key, value, version, \
                 value IS NOT NULL AND (expires_at IS NULL OR expires_at > ?3)"
            ),
            busy_head: format!(
                "SELECT key, lease_until - ?2 FROM {t} \
                 WHERE lease_owner IS NOT ?1 AND lease_until > ?2 AND key IN ("
            ),
            release_gone_head: format!(
                "DELETE FROM {t} WHERE lease_owner = ?1 AND value IS NULL AND key IN ("
            ),
            release_kept_head: format!(
                "UPDATE {t} SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = ?1 AND key IN ("
            ),
            renew_head: format!(
                "UPDATE {t} SET lease_until = ?2 WHERE lease_owner = ?1 AND key IN ("
            ),
            // Expired records and lease-only rows, unless a live lease holds them.
            cleanup: format!(
                "DELETE FROM {t} WHERE key IN (SELECT key FROM {t} \
                 WHERE (expires_at <= ?1 OR value IS NULL) \
                 AND (lease_until IS NULL OR lease_until <= ?1) LIMIT ?2)"
            ),
            // Keys compare as bytes: the prefix's keys follow each other
            // from the prefix on, and the first one past them ends the scan.
            scan: format!(
                "SELECT key, CASE WHEN ?5 THEN value END, version, expires_at - ?3 FROM {t} \
                 WHERE key >= ?1 AND key > ?2 AND value IS NOT NULL \
                 AND (expires_at IS NULL OR expires_at > ?3) ORDER BY key LIMIT ?4"
            ),
            restore: format!(
                "INSERT INTO {t} (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version, expires_at = excluded.expires_at \
                 WHERE {t}.version < excluded.version \
                 AND ({t}.lease_owner IS NULL OR {t}.lease_until <= ?5) \
                 RETURNING 1"
            ),
        }
    }
}

/// `head` followed by `count` placeholders numbered from `first`, and `)`.
fn key_list(head: &str, first: usize, count: usize) -> String {
    let mut sql = String::with_capacity(head.len() + count * 6);
    sql.push_str(head);
    for index in 0..count {
        if index > 0 {
            sql.push_str(", ");
        }
        sql.push('?');
        // No `String` per number: this runs for every key of every load.
        sql.push_str(itoa::Buffer::new().format(first + index));
    }
    sql.push(')');
    sql
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
    cross_process_leases: bool,
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

    /// Whether updates lease their keys so that the updates of one key are
    /// serialized across the processes opening this file (default `false`).
    ///
    /// Off by default: an SQLite file usually serves one process, whose own
    /// per-key locks already serialize its updates, and a lease turns every
    /// load into a write through the file's single writer (queued behind
    /// every commit). Turn it on when several processes open the same file;
    /// without it, their concurrent updates of one key end in a `Conflict`.
    /// Waiters poll for a released lease (SQLite has no notifications).
    pub fn cross_process_leases(mut self, enabled: bool) -> Self {
        self.cross_process_leases = enabled;
        self
    }

    /// Opens (or creates) the file, switches it to WAL and creates the table
    /// if it is missing (or brings an older one up to date).
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
                leases: self.cross_process_leases,
                file: OpenedFile::new(&self.path),
            }),
        })
    }
}

/// The table as this version keeps it.
fn table_definition(name: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (\
             key TEXT PRIMARY KEY NOT NULL, \
             value BLOB, \
             version INTEGER NOT NULL, \
             expires_at INTEGER, \
             lease_owner TEXT, \
             lease_until INTEGER\
         )"
    )
}

/// Creates the table and its indexes, or brings a table of an older version
/// up to date. SQLite cannot drop `NOT NULL` from `value` in place, so an
/// old table is rebuilt (copied into the new shape, then renamed) in one
/// `BEGIN IMMEDIATE` transaction: another process opening the file at the
/// same time waits, then finds it done.
///
/// Boxed as a `Send` future: written as a plain `async fn`, rustc cannot
/// prove the transaction's borrows `Send` for every lifetime, and
/// [`SqliteStorageBuilder::open`] would no longer be `Send`.
fn create_table<'a>(
    writer: &'a SqlitePool,
    table: &'a TableName,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + 'a>> {
    Box::pin(async move {
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(storage_error)?;
        create_in(&mut tx, table).await?;
        tx.commit().await.map_err(storage_error)
    })
}

async fn create_in(tx: &mut SqliteConnection, table: &TableName) -> Result<(), StorageError> {
    let t = table.quoted();
    execute(tx, &table_definition(t)).await?;
    let outdated: bool = sqlx::query(
        "SELECT NOT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = 'lease_until') \
         OR EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = 'value' AND \"notnull\")",
    )
    .bind(table.as_str().to_owned())
    .fetch_one(&mut *tx)
    .await
    .map_err(storage_error)?
    .flag(0)?;
    if outdated {
        let rebuild = table.rebuild();
        for statement in [
            format!("DROP TABLE IF EXISTS {rebuild}"),
            table_definition(rebuild),
            format!(
                "INSERT INTO {rebuild} (key, value, version, expires_at) \
                 SELECT key, value, version, expires_at FROM {t}"
            ),
            format!("DROP TABLE {t}"),
            format!("ALTER TABLE {rebuild} RENAME TO {t}"),
        ] {
            execute(tx, &statement).await?;
        }
    }
    for statement in sql::index_statements(table) {
        execute(tx, &statement).await?;
    }
    Ok(())
}

async fn execute(conn: &mut SqliteConnection, statement: &str) -> Result<(), StorageError> {
    sqlx::query(statement)
        .execute(&mut *conn)
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
            cross_process_leases: false,
        }
    }

    /// The table sessions are kept in.
    pub fn table(&self) -> &str {
        self.inner.table.as_str()
    }

    /// Deletes the expired rows now and says how many went.
    ///
    /// Expired sessions are already invisible; this reclaims their space.
    /// Lease-only rows (an update leased a key that stores nothing) go too
    /// once their lease expired (their process died before releasing it).
    /// Rows go a thousand per statement so updates never wait long behind it.
    pub async fn cleanup_expired(&self) -> Result<u64, StorageError> {
        let inner = Arc::clone(&self.inner);
        run_to_completion(async move {
            let now = now_millis();
            sql::cleanup_in_chunks(|| async {
                let done = sqlx::query(&inner.statements.cleanup)
                    .bind(now)
                    .bind(CLEANUP_CHUNK)
                    .execute(&inner.writer)
                    .await;
                Ok(done.map_err(storage_error)?.rows_affected())
            })
            .await
        })
        .await
    }

    /// Runs [`cleanup_expired`](Self::cleanup_expired) every `period` (at
    /// least a second) in a Tokio task, logging failures, until the task is
    /// aborted or the runtime shuts down.
    ///
    /// Must be called inside a Tokio runtime. Dropping the handle leaves the
    /// task running; [`JoinHandle::abort`] stops it.
    pub fn spawn_cleanup(&self, period: Duration) -> JoinHandle<()> {
        let name = self.inner.name.clone();
        sql::spawn_cleanup(self.clone(), name, period, |storage: Self| async move {
            storage.cleanup_expired().await
        })
    }

    /// Closes the connections, waiting for queries in flight. Every clone is
    /// closed; later calls fail with [`StorageErrorKind::Unavailable`](crate::storage::StorageErrorKind).
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

/// SQLite's side of the shared commit ([`sql::spawn_commit`]): its statements on
/// the single writer, compared against one reading of the clock per batch.
struct Sqlite {
    inner: Arc<Inner>,
    now: i64,
}

impl Sqlite {
    fn new(inner: &Arc<Inner>) -> Self {
        Self {
            inner: Arc::clone(inner),
            now: now_millis(),
        }
    }

    fn statements(&self) -> &Statements {
        &self.inner.statements
    }
}

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;

    fn for_batch(&self) -> Self {
        Self::new(&self.inner)
    }

    async fn begin(&self) -> Result<Transaction<'static, sqlx::Sqlite>, StorageError> {
        self.inner
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(storage_error)
    }

    async fn connection(&self) -> Result<PoolConnection<sqlx::Sqlite>, StorageError> {
        self.inner.writer.acquire().await.map_err(storage_error)
    }

    async fn put(
        &self,
        conn: &mut SqliteConnection,
        put: Put<'_>,
    ) -> Result<Option<i64>, StorageError> {
        let statements = self.statements();
        let (sql, version) = match put.expected {
            Some(expected) => (&statements.update, expected),
            None => (&statements.insert, Write::next_version(None)),
        };
        let written = sqlx::query(sql)
            .bind(put.value)
            .bind(expires_at(self.now, put.ttl))
            .bind(put.key)
            .bind(version_to_sql(version)?)
            .bind(put.owner)
            .bind(put.release)
            .bind(self.now)
            .fetch_optional(conn)
            .await
            .map_err(storage_error)?;
        written.map(|row| row.int(0)).transpose()
    }

    async fn delete_unleased(
        &self,
        conn: &mut SqliteConnection,
        key: &str,
    ) -> Result<bool, StorageError> {
        let query = sqlx::query(&self.statements().delete_unleased);
        let done = query.bind(key).bind(self.now).execute(conn).await;
        Ok(done.map_err(storage_error)?.rows_affected() > 0)
    }

    async fn delete_leased(
        &self,
        conn: &mut SqliteConnection,
        key: &str,
        owner: &str,
    ) -> Result<bool, StorageError> {
        let query = sqlx::query(&self.statements().delete_leased);
        let done = query.bind(key).bind(owner).execute(conn).await;
        Ok(done.map_err(storage_error)?.rows_affected() > 0)
    }

    async fn row_state(
        &self,
        conn: &mut SqliteConnection,
        key: &str,
        owner: Option<&str>,
    ) -> Result<Option<RowState>, StorageError> {
        let query = sqlx::query(&self.statements().row_state).bind(key);
        let row = query.bind(owner).bind(self.now).fetch_optional(conn).await;
        row.map_err(storage_error)?
            .map(|row| RowState::from_row(&row))
            .transpose()
    }

    async fn release(
        &self,
        conn: &mut SqliteConnection,
        keys: &[&str],
        owner: &str,
    ) -> Result<(), StorageError> {
        release(conn, self.statements(), keys, owner).await
    }

    async fn restore(
        &self,
        conn: &mut SqliteConnection,
        restore: &Restore,
    ) -> Result<bool, StorageError> {
        let stored = sqlx::query(&self.statements().restore)
            .bind(restore.key.as_str())
            .bind(restore.record.value.as_ref())
            .bind(version_to_sql(restore.record.version)?)
            .bind(expires_at(self.now, restore.ttl))
            .bind(self.now)
            .fetch_optional(conn)
            .await;
        Ok(stored.map_err(storage_error)?.is_some())
    }
}

/// Gives back `owner`'s leases on `keys`: lease-only rows go, the others
/// only lose their lease.
async fn release(
    conn: &mut SqliteConnection,
    statements: &Statements,
    keys: &[&str],
    owner: &str,
) -> Result<(), StorageError> {
    for chunk in keys.chunks(LOAD_CHUNK) {
        for head in [&statements.release_gone_head, &statements.release_kept_head] {
            let sql = key_list(head, 2, chunk.len());
            let mut query = sqlx::query(&sql).bind(owner);
            for key in chunk {
                query = query.bind(*key);
            }
            query.execute(&mut *conn).await.map_err(storage_error)?;
        }
    }
    Ok(())
}

/// Takes the leases of `distinct` keys (sorted) and reads what they hold;
/// the keys missing from the answer are leased by another owner.
async fn take_leases(
    conn: &mut SqliteConnection,
    statements: &Statements,
    distinct: &[&str],
    owner: &str,
    until: i64,
    now: i64,
) -> Result<HashMap<String, Option<Record>>, StorageError> {
    let mut taken = HashMap::with_capacity(distinct.len());
    for chunk in distinct.chunks(LOAD_CHUNK) {
        let mut sql = statements.acquire_head.clone();
        for index in 0..chunk.len() {
            if index > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(?{}, NULL, 0, ?1, ?2)", index + 4));
        }
        sql.push_str(&statements.acquire_tail);
        let mut query = sqlx::query(&sql).bind(owner).bind(until).bind(now);
        for key in chunk {
            query = query.bind(*key);
        }
        for row in query.fetch_all(&mut *conn).await.map_err(storage_error)? {
            let (key, record) = leased_row(&row)?;
            taken.insert(key, record);
        }
    }
    Ok(taken)
}

async fn acquire(
    inner: Arc<Inner>,
    keys: Vec<StorageKey>,
    owner: LeaseOwner,
    ttl: Duration,
) -> Result<LeasedLoad, StorageError> {
    let statements = &inner.statements;
    let distinct = distinct_sorted(&keys);
    let now = now_millis();
    let until = now.saturating_add(ttl_millis(ttl));
    let taken = if distinct.len() > LOAD_CHUNK {
        let dialect = Sqlite::new(&inner);
        let mut tx = dialect.begin().await?;
        let taken = take_leases(&mut tx, statements, &distinct, owner.as_str(), until, now).await?;
        tx.commit().await.map_err(storage_error)?;
        taken
    } else {
        let mut conn = inner.writer.acquire().await.map_err(storage_error)?;
        take_leases(&mut conn, statements, &distinct, owner.as_str(), until, now).await?
    };
    let busy_at = match leased_records(&keys, &taken) {
        Ok(records) => return Ok(LeasedLoad::Acquired(records)),
        Err(index) => index,
    };
    // Contention only: give back what was taken, and say how long the
    // other owners' leases still live.
    let mut conn = inner.writer.acquire().await.map_err(storage_error)?;
    release(&mut conn, statements, &distinct, owner.as_str()).await?;
    let mut remaining = HashMap::new();
    for chunk in distinct.chunks(LOAD_CHUNK) {
        let sql = key_list(&statements.busy_head, 3, chunk.len());
        let mut query = sqlx::query(&sql).bind(owner.as_str()).bind(now);
        for key in chunk {
            query = query.bind(*key);
        }
        for row in query.fetch_all(&mut *conn).await.map_err(storage_error)? {
            let (key, retry_in) = busy_row(&row)?;
            remaining.insert(key, retry_in);
        }
    }
    Ok(busy_answer(&keys, &remaining, busy_at))
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
            let sql = key_list(&self.inner.statements.load_head, 2, chunk.len());
            let mut query = sqlx::query(&sql).bind(now);
            for key in chunk {
                query = query.bind(key.as_str());
            }
            let rows = query
                .fetch_all(&self.inner.readers)
                .await
                .map_err(storage_error)?;
            collect_loaded(&mut found, rows)?;
        }
        Ok(in_batch_order(keys, &found))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, writes = writes.len()))]
    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        if !writes.is_empty() {
            self.inner.file.check()?;
        }
        sql::spawn_commit(Sqlite::new(&self.inner), writes, &[], None).await
    }

    fn leases(&self) -> Option<&dyn Leases> {
        self.inner.leases.then_some(self as &dyn Leases)
    }

    /// Keyset pagination in key order: the cursor is the last key of the
    /// page before, so a page costs an index range read however far the
    /// scan has gone.
    async fn scan(
        &self,
        prefix: &KeyPrefix,
        cursor: Option<&ScanCursor>,
        limit: usize,
        with_values: bool,
    ) -> Result<ScanPage, StorageError> {
        let limit = page_limit(limit);
        let rows = sqlx::query(&self.inner.statements.scan)
            .bind(prefix.full_text())
            .bind(cursor.map_or("", ScanCursor::as_str))
            .bind(now_millis())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(with_values)
            .fetch_all(&self.inner.readers)
            .await
            .map_err(storage_error)?;
        scan_page(rows, prefix, limit)
    }

    async fn restore(&self, records: &[Restore]) -> Result<Vec<RestoreOutcome>, StorageError> {
        if !records.is_empty() {
            self.inner.file.check()?;
        }
        spawn_restore(Sqlite::new(&self.inner), records).await
    }
}

/// Available whether or not [`cross_process_leases`](SqliteStorageBuilder::cross_process_leases)
/// is on; the runtime uses it only when [`Storage::leases`] offers it.
#[async_trait]
impl Leases for SqliteStorage {
    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, keys = keys.len()))]
    async fn acquire(
        &self,
        keys: &[StorageKey],
        lease: Lease<'_>,
    ) -> Result<LeasedLoad, StorageError> {
        if keys.is_empty() {
            return Ok(LeasedLoad::Acquired(Vec::new()));
        }
        self.inner.file.check()?;
        let inner = Arc::clone(&self.inner);
        run_to_completion(acquire(
            inner,
            keys.to_vec(),
            lease.owner.clone(),
            lease.ttl,
        ))
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, writes = writes.len(), release = release.len()))]
    async fn write_and_release(
        &self,
        writes: &[Write],
        release: &[StorageKey],
        owner: &LeaseOwner,
    ) -> Result<Vec<WriteOutcome>, StorageError> {
        if !writes.is_empty() {
            self.inner.file.check()?;
        }
        sql::spawn_commit(Sqlite::new(&self.inner), writes, release, Some(owner)).await
    }

    async fn renew(&self, keys: &[StorageKey], lease: Lease<'_>) -> Result<bool, StorageError> {
        if keys.is_empty() {
            return Ok(true);
        }
        let inner = Arc::clone(&self.inner);
        let keys = keys.to_vec();
        let owner = lease.owner.clone();
        let until = now_millis().saturating_add(ttl_millis(lease.ttl));
        run_to_completion(async move {
            let distinct = distinct_sorted(&keys);
            let mut renewed = 0;
            let mut conn = inner.writer.acquire().await.map_err(storage_error)?;
            for chunk in distinct.chunks(LOAD_CHUNK) {
                let sql = key_list(&inner.statements.renew_head, 3, chunk.len());
                let mut query = sqlx::query(&sql).bind(owner.as_str()).bind(until);
                for key in chunk {
                    query = query.bind(*key);
                }
                renewed += query
                    .execute(&mut *conn)
                    .await
                    .map_err(storage_error)?
                    .rows_affected();
            }
            Ok(usize::try_from(renewed).is_ok_and(|renewed| renewed == distinct.len()))
        })
        .await
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
        assert_eq!(key_list("IN (", 3, 2), "IN (?3, ?4)");
    }
}
