//! Sessions in PostgreSQL, beside the data many bots already keep there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use tokio::task::JoinHandle;

use crate::error::StorageError;
use crate::key::StorageKey;
use crate::storage::sql::{
    CLEANUP_CHUNK, DEFAULT_TABLE, TableName, storage_error, ttl_millis, version_from_sql,
    version_to_sql,
};
use crate::storage::{Conflict, Record, Storage, Write, WriteOutcome, sql};

/// Sessions in a PostgreSQL table.
///
/// One table (default `tg_sessions`, created on first use; `schema.table`
/// accepted) holds the key, the encoded value (`bytea`), its version and its
/// expiry time (`timestamptz`, on the server's clock). An update's sessions
/// are loaded with one `SELECT … WHERE key = ANY($1)` and written in one
/// transaction (a single statement when only one session changed). Every
/// put is conditional on the version that was read, so several bot processes
/// never overwrite each other silently: the loser gets
/// [`WriteOutcome::Conflict`].
///
/// Cloning is cheap and shares the pool.
///
/// ```no_run
/// # async fn run() -> Result<(), tg_session_runtime::StorageError> {
/// use std::time::Duration;
/// use tg_session_runtime::{PostgresStorage, SessionManager};
///
/// let storage = PostgresStorage::connect("postgres://bot@localhost/bot").await?;
/// let _cleanup = storage.spawn_cleanup(Duration::from_secs(600));
/// let manager = SessionManager::builder().storage(storage).build();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    table: TableName,
    pool: PgPool,
    statements: Statements,
}

struct Statements {
    load: String,
    update: String,
    insert: String,
    delete: String,
    cleanup: String,
}

impl Statements {
    fn new(table: &TableName) -> Self {
        let t = table.quoted();
        // `$n::bigint * interval`: a NULL TTL gives a NULL expiry (kept forever).
        Self {
            load: format!(
                "SELECT key, value, version FROM {t} \
                 WHERE key = ANY($1) AND (expires_at IS NULL OR expires_at > now())"
            ),
            update: format!(
                "UPDATE {t} SET value = $1, version = $2, \
                 expires_at = now() + $3::bigint * interval '1 millisecond' \
                 WHERE key = $4 AND version = $5 AND (expires_at IS NULL OR expires_at > now())"
            ),
            insert: format!(
                "INSERT INTO {t} AS stored (key, value, version, expires_at) \
                 VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond') \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version, expires_at = excluded.expires_at \
                 WHERE stored.expires_at IS NOT NULL AND stored.expires_at <= now()"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1"),
            cleanup: format!(
                "DELETE FROM {t} WHERE expires_at <= now() AND key IN \
                 (SELECT key FROM {t} WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)"
            ),
        }
    }
}

/// Configures a [`PostgresStorage`]; start with [`PostgresStorage::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct PostgresStorageBuilder {
    table: String,
    max_connections: u32,
    acquire_timeout: Duration,
}

impl PostgresStorageBuilder {
    /// The table sessions go in (default `tg_sessions`): `table` or
    /// `schema.table`, each part ASCII letters, digits and `_`, not starting
    /// with a digit. Anything else is refused when the storage is built.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Most connections [`connect`](Self::connect) opens (default 10).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long [`connect`](Self::connect)'s pool waits for a connection
    /// (the server unreachable, or every connection busy) before a load or
    /// write fails with [`StorageErrorKind::Timeout`](crate::StorageErrorKind)
    /// (default 5 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Connects a pool to `url` (`postgres://user:password@host:port/database`)
    /// and creates the table if it is missing.
    pub async fn connect(self, url: &str) -> Result<PostgresStorage, StorageError> {
        let table = TableName::parse(&self.table, true)?;
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect(url)
            .await
            .map_err(storage_error)?;
        PostgresStorage::create(pool, table).await
    }

    /// Uses an existing pool (the bot's own, with its own settings) and
    /// creates the table if it is missing.
    pub async fn pool(self, pool: PgPool) -> Result<PostgresStorage, StorageError> {
        let table = TableName::parse(&self.table, true)?;
        PostgresStorage::create(pool, table).await
    }
}

impl PostgresStorage {
    /// Connects to `url` with the default table and a pool of up to 10
    /// connections waiting at most 5 s for one.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        Self::builder().connect(url).await
    }

    /// Uses an existing pool with the default table.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StorageError> {
        Self::builder().pool(pool).await
    }

    /// Configures the table before connecting.
    pub fn builder() -> PostgresStorageBuilder {
        PostgresStorageBuilder {
            table: DEFAULT_TABLE.to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }

    async fn create(pool: PgPool, table: TableName) -> Result<Self, StorageError> {
        create_table(&pool, &table).await?;
        let options = pool.connect_options();
        let name = format!(
            "postgres://{}:{}/{} ({})",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username()),
            table.as_str(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                statements: Statements::new(&table),
                table,
                pool,
            }),
        })
    }

    /// The table sessions are kept in.
    pub fn table(&self) -> &str {
        self.inner.table.as_str()
    }

    /// The pool the storage uses.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Deletes the expired rows now and says how many went.
    ///
    /// Expired sessions are already invisible; this reclaims their space.
    /// Rows go a thousand per statement, skipping rows an update holds, so
    /// it never makes updates wait. Several processes may run it at once.
    pub async fn cleanup_expired(&self) -> Result<u64, StorageError> {
        let mut removed = 0;
        loop {
            let done = sqlx::query(&self.inner.statements.cleanup)
                .bind(CLEANUP_CHUNK)
                .execute(&self.inner.pool)
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
}

/// Creates the table and its expiry index, under an advisory lock so that
/// processes starting together do not race on the catalog.
async fn create_table(pool: &PgPool, table: &TableName) -> Result<(), StorageError> {
    let mut tx = pool.begin().await.map_err(storage_error)?;
    create_in(&mut tx, table).await?;
    tx.commit().await.map_err(storage_error)
}

async fn create_in(conn: &mut PgConnection, table: &TableName) -> Result<(), StorageError> {
    let t = table.quoted();
    let index = table.index();
    let statements = [
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
                 key TEXT PRIMARY KEY, \
                 value BYTEA NOT NULL, \
                 version BIGINT NOT NULL, \
                 expires_at TIMESTAMPTZ\
             )"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at) WHERE expires_at IS NOT NULL"
        ),
    ];
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("tg_session:{}", table.as_str()))
        .execute(&mut *conn)
        .await
        .map_err(storage_error)?;
    for statement in &statements {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .map_err(storage_error)?;
    }
    Ok(())
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

async fn apply(
    conn: &mut PgConnection,
    statements: &Statements,
    write: &Write,
) -> Result<WriteOutcome, StorageError> {
    match write {
        Write::Put {
            key,
            value,
            expected_version,
            ttl,
        } => {
            let version = Write::next_version(*expected_version);
            let ttl = ttl.map(ttl_millis);
            let query = match expected_version {
                Some(expected) => sqlx::query(&statements.update)
                    .bind(value.as_ref())
                    .bind(version_to_sql(version)?)
                    .bind(ttl)
                    .bind(key.as_str())
                    .bind(version_to_sql(*expected)?),
                None => sqlx::query(&statements.insert)
                    .bind(key.as_str())
                    .bind(value.as_ref())
                    .bind(version_to_sql(version)?)
                    .bind(ttl),
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
impl Storage for PostgresStorage {
    fn name(&self) -> &str {
        &self.inner.name
    }

    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, keys = keys.len()))]
    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<&str> = keys.iter().map(StorageKey::as_str).collect();
        let rows = sqlx::query(&self.inner.statements.load)
            .bind(&wanted)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(storage_error)?;
        let mut found: HashMap<String, Record> = HashMap::with_capacity(rows.len());
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
        Ok(keys
            .iter()
            .map(|key| found.get(key.as_str()).cloned())
            .collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, writes = writes.len()))]
    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        let statements = &self.inner.statements;
        match writes {
            [] => Ok(Vec::new()),
            // One statement is atomic by itself: one round trip.
            [write] => {
                let mut conn = self.inner.pool.acquire().await.map_err(storage_error)?;
                Ok(vec![apply(&mut conn, statements, write).await?])
            }
            _ => {
                let mut tx = self.inner.pool.begin().await.map_err(storage_error)?;
                let mut outcomes = Vec::with_capacity(writes.len());
                for write in writes {
                    outcomes.push(apply(&mut tx, statements, write).await?);
                }
                tx.commit().await.map_err(storage_error)?;
                Ok(outcomes)
            }
        }
    }
}
