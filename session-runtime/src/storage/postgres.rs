//! Sessions in PostgreSQL, beside the data many bots already keep there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Transaction;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::key::StorageKey;
use crate::storage::StorageError;
use crate::storage::sql::{
    CLEANUP_CHUNK, DEFAULT_TABLE, Dialect, Put, RowState, SqlRow, TableName, busy_answer, busy_row,
    collect_loaded, distinct_sorted, in_batch_order, leased_records, leased_row, run_to_completion,
    scan_page, spawn_restore, storage_error, ttl_millis, version_to_sql,
};
use crate::storage::{
    KeyPrefix, Lease, LeaseOwner, LeasedLoad, Leases, Record, ReleaseWatch, Restore,
    RestoreOutcome, ScanCursor, ScanPage, Storage, Write, WriteOutcome, page_limit, sql,
};

/// Sessions in a PostgreSQL table.
///
/// One table (default `tg_sessions`, created on first use; `schema.table`
/// accepted) holds the key, the encoded value (`bytea`), its version, its
/// expiry time (`timestamptz`, on the server's clock) and the key's lease.
/// An update's sessions are loaded with one statement and written in one
/// transaction (a single statement when only one session changed). Every
/// put is conditional on the version that was read, so several bot processes
/// never overwrite each other silently: the loser gets
/// [`WriteOutcome::Conflict`].
///
/// # Several processes
///
/// PostgreSQL is the storage bots share between replicas, so
/// [cross-process leases](crate::storage::Leases) are on by default
/// ([`PostgresStorageBuilder::cross_process_leases`]): the statement that
/// loads an update's sessions also leases their keys (an upsert on the
/// rows), and the commit releases them in its transaction, so the updates of
/// one key run one after the other across processes as they do inside one.
/// An update waiting for a lease is woken by `NOTIFY` at the holder's commit,
/// heard on one `LISTEN` connection per storage (besides the pool's).
///
/// Versions never repeat: a new record's version is the server's clock in
/// microseconds (above the version of any record the key had before), so a
/// write prepared before another process's `clear()` and re-create is refused.
///
/// Each connection [`connect`](PostgresStorageBuilder::connect) opens has a
/// `statement_timeout` and a `lock_timeout` (5 s by default), so a row
/// locked by a stuck client is an error, not a hang.
///
/// Cloning is cheap and shares the pool.
///
/// ```no_run
/// # async fn run() -> Result<(), tg_session::StorageError> {
/// use std::time::Duration;
/// use tg_session::{PostgresStorage, SessionManager};
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
    /// The `NOTIFY` channel of this table's releases.
    channel: String,
    /// Present when cross-process leases are on.
    watchers: Option<Arc<Watchers>>,
    /// The `LISTEN` task, stopped with the last clone of the storage.
    listener: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// A new record's version: the server's clock in microseconds.
const CLOCK_VERSION: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

/// The lease columns of a put that may release its key (`$release`), waking
/// waiters through `pg_notify` when a busy acquire flagged the row. The
/// `CASE` reads the row as the `UPDATE` found it (its latest version), so a
/// waiter flagged just before is never missed; the notification is sent at
/// commit, and not at all on rollback.
fn release_columns(release: &str, channel: &str) -> String {
    format!(
        "lease_owner = CASE WHEN {release} THEN NULL ELSE s.lease_owner END, \
         lease_until = CASE WHEN {release} THEN NULL ELSE s.lease_until END, \
         lease_waiters = CASE WHEN NOT {release} THEN s.lease_waiters \
             WHEN s.lease_waiters THEN (SELECT false FROM pg_notify({channel}, s.key)) \
             ELSE false END"
    )
}

/// A write passes while no other owner holds a live lease on its key.
fn fence(owner: &str) -> String {
    format!("(s.lease_owner IS NULL OR s.lease_owner = {owner} OR s.lease_until <= now())")
}

struct Statements {
    load: String,
    update: String,
    insert: String,
    delete_unleased: String,
    delete_leased: String,
    row_state: String,
    acquire: String,
    busy: String,
    release: String,
    renew: String,
    cleanup: String,
    /// Locks the rows of a multi-statement commit in key order first.
    lock_rows: String,
    /// Live records matching `$1` (a `LIKE` prefix) after `$2` (the
    /// cursor), at most `$3`, with values if `$4`.
    scan: String,
    /// A record as it is (`$1` key, `$2` value, `$3` version, `$4` TTL ms),
    /// unless its row holds that version or a newer one or a live lease.
    restore: String,
}

impl Statements {
    fn new(table: &TableName) -> Self {
        let t = table.quoted();
        let live = "s.value IS NOT NULL AND (s.expires_at IS NULL OR s.expires_at > now())";
        // The rows of the keys `$1`, locked in key order. Every statement
        // that locks several rows takes them this way first, as a
        // multi-statement commit does (`lock_rows`): in its plan's order, one
        // could hold a row a commit waits for while it waits for one the
        // commit holds, and PostgreSQL would break the deadlock by failing one.
        let ordered = format!("SELECT key FROM {t} WHERE key = ANY($1) ORDER BY key FOR UPDATE");
        // `$n::bigint * interval`: a NULL TTL gives a NULL expiry (kept forever).
        Self {
            lock_rows: ordered.clone(),
            load: format!(
                "SELECT key, value, version FROM {t} \
                 WHERE key = ANY($1) AND value IS NOT NULL \
                 AND (expires_at IS NULL OR expires_at > now())"
            ),
            // $1 value, $2 ttl ms, $3 key, $4 expected, $5 owner, $6 release, $7 channel
            update: format!(
                "UPDATE {t} AS s SET value = $1, version = $4 + 1, \
                 expires_at = now() + $2::bigint * interval '1 millisecond', {release} \
                 WHERE s.key = $3 AND s.version = $4 AND {live} AND {fence} \
                 RETURNING s.version",
                release = release_columns("$6::boolean", "$7::text"),
                fence = fence("$5::text"),
            ),
            // $1 value, $2 ttl ms, $3 key, $4 owner, $5 release, $6 channel.
            // Over a lease-only or expired row, the new version also stays
            // above the one the row kept.
            insert: format!(
                "INSERT INTO {t} AS s (key, value, version, expires_at) \
                 VALUES ($3, $1, {CLOCK_VERSION}, now() + $2::bigint * interval '1 millisecond') \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = greatest(excluded.version, s.version + 1), \
                 expires_at = excluded.expires_at, {release} \
                 WHERE (s.value IS NULL OR s.expires_at <= now()) AND {fence} \
                 RETURNING s.version",
                release = release_columns("$5::boolean", "$6::text"),
                fence = fence("$4::text"),
            ),
            delete_unleased: format!(
                "DELETE FROM {t} WHERE key = $1 AND (lease_owner IS NULL OR lease_until <= now())"
            ),
            // A clear under the owner's lease keeps the lease (and the
            // version, so the next record starts above it).
            delete_leased: format!(
                "UPDATE {t} SET value = NULL, expires_at = NULL \
                 WHERE key = $1 AND lease_owner = $2::text"
            ),
            row_state: format!(
                "SELECT value IS NOT NULL, version, coalesce(expires_at <= now(), false), \
                 coalesce(lease_owner IS DISTINCT FROM $2::text AND lease_until > now(), false) \
                 FROM {t} WHERE key = $1"
            ),
            // $1 keys (distinct, sorted: the lock order), $2 owner, $3 ttl ms.
            // The rows returned are the keys taken, as the upsert left them:
            // the latest committed version, even one committed while this
            // statement waited for its row lock.
            acquire: format!(
                "INSERT INTO {t} AS s (key, value, version, lease_owner, lease_until) \
                 SELECT k, NULL, 0, $2, now() + $3::bigint * interval '1 millisecond' \
                 FROM unnest($1::text[]) AS k ORDER BY k \
                 ON CONFLICT (key) DO UPDATE SET lease_owner = excluded.lease_owner, \
                 lease_until = excluded.lease_until \
                 WHERE s.lease_owner IS NULL OR s.lease_owner = excluded.lease_owner \
                 OR s.lease_until <= now() \
                 RETURNING s.key, s.value, s.version, {live}"
            ),
            // $1 keys, $2 owner, $3 someone listens: flag the rows so their
            // release notifies, and say how long their leases still live.
            busy: format!(
                "WITH locked AS ({ordered}) \
                 UPDATE {t} AS s SET lease_waiters = s.lease_waiters OR $3 FROM locked \
                 WHERE s.key = locked.key AND s.lease_owner <> $2 AND s.lease_until > now() \
                 RETURNING s.key, \
                 greatest(ceil(extract(epoch from s.lease_until - now()) * 1000), 0)::bigint"
            ),
            // $1 keys, $2 owner, $3 channel: lease-only rows go, the others
            // lose their lease; flagged rows notify their waiters.
            release: format!(
                "WITH locked AS ({ordered}), \
                 gone AS (DELETE FROM {t} AS s USING locked WHERE s.key = locked.key \
                     AND s.lease_owner = $2 AND s.value IS NULL \
                     RETURNING s.key, s.lease_waiters), \
                 kept AS (UPDATE {t} AS s SET {release} FROM locked \
                     WHERE s.key = locked.key AND s.lease_owner = $2 AND s.value IS NOT NULL \
                     RETURNING 1) \
                 SELECT pg_notify($3, key) FROM gone WHERE lease_waiters",
                release = release_columns("true", "$3"),
            ),
            renew: format!(
                "WITH locked AS ({ordered}) \
                 UPDATE {t} AS s \
                 SET lease_until = now() + $3::bigint * interval '1 millisecond' FROM locked \
                 WHERE s.key = locked.key AND s.lease_owner = $2"
            ),
            // Expired records and lease-only rows, unless a live lease holds them.
            cleanup: format!(
                "DELETE FROM {t} WHERE key IN \
                 (SELECT key FROM {t} WHERE (expires_at <= now() OR value IS NULL) \
                 AND (lease_until IS NULL OR lease_until <= now()) \
                 LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 AND (lease_until IS NULL OR lease_until <= now())"
            ),
            // `LIKE` rather than a key range: under a database's collation
            // the keys of one prefix need not follow each other, while
            // `key > $2` and `ORDER BY key` always agree.
            scan: format!(
                "SELECT key, CASE WHEN $4 THEN value END, version, \
                 ceil(extract(epoch from expires_at - now()) * 1000)::bigint FROM {t} \
                 WHERE key > $2 AND key LIKE $1 ESCAPE '\\' AND value IS NOT NULL \
                 AND (expires_at IS NULL OR expires_at > now()) ORDER BY key LIMIT $3"
            ),
            restore: format!(
                "INSERT INTO {t} AS s (key, value, version, expires_at) \
                 VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond') \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version, expires_at = excluded.expires_at \
                 WHERE s.version < excluded.version \
                 AND (s.lease_owner IS NULL OR s.lease_until <= now()) \
                 RETURNING 1"
            ),
        }
    }
}

/// The waiters for lease releases, by storage key, fed by the `LISTEN` task.
///
/// An entry is a weak reference: the watch that waits holds the `Notify`,
/// so an entry nobody waits on any more is dead and is dropped the next
/// time its key is notified, or when the map has doubled since the last
/// sweep; the map never grows with every key ever watched.
#[derive(Default)]
struct Watchers {
    map: Mutex<WatchMap>,
    /// The `LISTEN` connection is up: a release will be heard.
    listening: AtomicBool,
}

#[derive(Default)]
struct WatchMap {
    by_key: HashMap<String, Weak<Notify>>,
    sweep_at: usize,
}

/// The size below which the map is never swept.
const MIN_SWEEP: usize = 64;

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchMap> {
        // The map holds no invariant a panic could break halfway.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `Notify` of `key`, if a release would be heard.
    fn watch(&self, key: &str) -> Option<Arc<Notify>> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        let mut map = self.lock();
        if let Some(notify) = map.by_key.get(key).and_then(Weak::upgrade) {
            return Some(notify);
        }
        let notify = Arc::new(Notify::new());
        map.by_key.insert(key.to_owned(), Arc::downgrade(&notify));
        if map.by_key.len() >= map.sweep_at {
            map.by_key.retain(|_, notify| notify.strong_count() > 0);
            map.sweep_at = (map.by_key.len() * 2).max(MIN_SWEEP);
        }
        Some(notify)
    }

    /// A release of `key` was heard.
    fn wake(&self, key: &str) {
        let mut map = self.lock();
        match map.by_key.get(key).map(Weak::upgrade) {
            Some(Some(notify)) => notify.notify_waiters(),
            Some(None) => {
                map.by_key.remove(key);
            }
            None => {}
        }
    }

    /// Releases may have gone unheard (the connection dropped): wake
    /// everyone to try again.
    fn wake_all(&self) {
        let mut map = self.lock();
        map.by_key.retain(|_, notify| match notify.upgrade() {
            Some(notify) => {
                notify.notify_waiters();
                true
            }
            None => false,
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_key.len()
    }
}

/// Listens for `channel` on a connection of its own (a one-connection pool
/// beside the storage's, so it never takes a working connection) and wakes
/// the waiters of each released key; reconnects with a backoff when the
/// connection is lost, waking everyone since releases may have been missed.
async fn listen(pool: PgPool, channel: String, watchers: Arc<Watchers>) {
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = Duration::from_millis(50);
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listener.await {
            Ok(mut listener) => {
                watchers.listening.store(true, Ordering::Release);
                watchers.wake_all();
                backoff = Duration::from_millis(50);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => watchers.wake(notification.payload()),
                        // Lost and reconnected (sqlx reconnects eagerly).
                        Ok(None) => watchers.wake_all(),
                        Err(error) => {
                            tracing::warn!(%error, channel, "lease release listener lost");
                            break;
                        }
                    }
                }
                watchers.listening.store(false, Ordering::Release);
                watchers.wake_all();
            }
            Err(error) => {
                tracing::warn!(%error, channel, "lease release listener cannot connect");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Configures a [`PostgresStorage`]; start with [`PostgresStorage::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct PostgresStorageBuilder {
    table: String,
    max_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Duration,
    lock_timeout: Duration,
    cross_process_leases: bool,
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
    /// write fails with [`StorageErrorKind::Timeout`](crate::storage::StorageErrorKind)
    /// (default 5 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The `statement_timeout` of the connections [`connect`](Self::connect)
    /// opens (default 5 s; zero: none): a statement running longer fails
    /// with [`StorageErrorKind::Timeout`](crate::storage::StorageErrorKind) instead of
    /// holding an update. With [`pool`](Self::pool), the pool's own settings apply.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The `lock_timeout` of the connections [`connect`](Self::connect)
    /// opens (default 5 s; zero: none): a session row locked by another
    /// client (a stuck transaction, a manual `SELECT … FOR UPDATE`) fails the
    /// load or write with [`StorageErrorKind::Timeout`](crate::storage::StorageErrorKind)
    /// after this long, instead of hanging. With [`pool`](Self::pool), the
    /// pool's own settings apply.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Whether updates lease their keys so that the updates of one key are
    /// serialized across every process sharing the table (default `true`).
    ///
    /// On by default because a PostgreSQL storage is usually shared (bot
    /// replicas, workers), and without leases a concurrent update of another
    /// process ends in a `Conflict` error. The lease costs nothing extra per
    /// update (taken by the load's statement, released by the commit's) and
    /// one more connection per storage, for `LISTEN`. Turn it off only if
    /// one process uses the table.
    pub fn cross_process_leases(mut self, enabled: bool) -> Self {
        self.cross_process_leases = enabled;
        self
    }

    /// Connects a pool to `url` (`postgres://user:password@host:port/database`)
    /// and creates the table if it is missing (or brings an older one up to date).
    pub async fn connect(self, url: &str) -> Result<PostgresStorage, StorageError> {
        let table = TableName::parse(&self.table, true)?;
        let mut settings = Vec::new();
        for (name, timeout) in [
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
        ] {
            settings.push((name, format!("{}ms", ttl_millis(timeout))));
        }
        let options = url
            .parse::<PgConnectOptions>()
            .map_err(storage_error)?
            .options(settings);
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(storage_error)?;
        PostgresStorage::create(pool, table, self.cross_process_leases).await
    }

    /// Uses an existing pool (the bot's own, with its own settings) and
    /// creates the table if it is missing (or brings an older one up to date).
    pub async fn pool(self, pool: PgPool) -> Result<PostgresStorage, StorageError> {
        let table = TableName::parse(&self.table, true)?;
        PostgresStorage::create(pool, table, self.cross_process_leases).await
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
            statement_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(5),
            cross_process_leases: true,
        }
    }

    async fn create(pool: PgPool, table: TableName, leases: bool) -> Result<Self, StorageError> {
        create_table(&pool, &table).await?;
        let options = pool.connect_options();
        let name = format!(
            "postgres://{}:{}/{} ({})",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username()),
            table.as_str(),
        );
        let channel = table.channel();
        let (watchers, listener) = if leases {
            let watchers = Arc::new(Watchers::default());
            // A pool of one for the listener, so it never holds one of the
            // working connections.
            let own = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with((*options).clone());
            let task = tokio::spawn(listen(own, channel.clone(), Arc::clone(&watchers)));
            (Some(watchers), Some(task))
        } else {
            (None, None)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                statements: Statements::new(&table),
                table,
                pool,
                channel,
                watchers,
                listener,
            }),
        })
    }

    /// The table sessions are kept in.
    pub fn table(&self) -> &str {
        self.inner.table.as_str()
    }

    fn dialect(&self) -> Postgres {
        Postgres {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The pool the storage uses.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Whether the storage hears lease releases now (its `LISTEN`
    /// connection is up); waiters poll while it is not.
    pub fn is_listening(&self) -> bool {
        self.inner
            .watchers
            .as_ref()
            .is_some_and(|watchers| watchers.listening.load(Ordering::Acquire))
    }

    /// Deletes the expired rows now and says how many went.
    ///
    /// Expired sessions are already invisible; this reclaims their space.
    /// Lease-only rows (an update leased a key that stores nothing) go too
    /// once their lease expired (their process died before releasing it).
    /// Rows go a thousand per statement, skipping rows an update holds, so
    /// it never makes updates wait. Several processes may run it at once.
    pub async fn cleanup_expired(&self) -> Result<u64, StorageError> {
        sql::cleanup_in_chunks(|| async {
            let query = sqlx::query(&self.inner.statements.cleanup).bind(CLEANUP_CHUNK);
            let done = query.execute(&self.inner.pool).await;
            Ok(done.map_err(storage_error)?.rows_affected())
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
}

/// Creates the table and its indexes, or brings a table of an older version
/// up to date (lease columns, `value` nullable), under an advisory lock so
/// that processes starting together do not race on the catalog.
async fn create_table(pool: &PgPool, table: &TableName) -> Result<(), StorageError> {
    let mut tx = pool.begin().await.map_err(storage_error)?;
    create_in(&mut tx, table).await?;
    tx.commit().await.map_err(storage_error)
}

async fn create_in(conn: &mut PgConnection, table: &TableName) -> Result<(), StorageError> {
    let t = table.quoted();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("tg_session:{}", table.as_str()))
        .execute(&mut *conn)
        .await
        .map_err(storage_error)?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (\
             key TEXT PRIMARY KEY, \
             value BYTEA, \
             version BIGINT NOT NULL, \
             expires_at TIMESTAMPTZ, \
             lease_owner TEXT, \
             lease_until TIMESTAMPTZ, \
             lease_waiters BOOLEAN NOT NULL DEFAULT false\
         )"
    ))
    .execute(&mut *conn)
    .await
    .map_err(storage_error)?;
    // Asked first, because `ALTER TABLE` locks the table even when it
    // changes nothing, and every process runs this at start.
    let outdated: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass \
             AND attname = 'lease_waiters' AND NOT attisdropped) \
         OR EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass \
             AND attname = 'value' AND attnotnull)",
    )
    .bind(t)
    .fetch_one(&mut *conn)
    .await
    .map_err(storage_error)?;
    if outdated {
        sqlx::query(&format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS lease_owner TEXT, \
             ADD COLUMN IF NOT EXISTS lease_until TIMESTAMPTZ, \
             ADD COLUMN IF NOT EXISTS lease_waiters BOOLEAN NOT NULL DEFAULT false, \
             ALTER COLUMN value DROP NOT NULL"
        ))
        .execute(&mut *conn)
        .await
        .map_err(storage_error)?;
    }
    for statement in sql::index_statements(table) {
        sqlx::query(&statement)
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

/// PostgreSQL's side of the shared commit ([`sql::spawn_commit`]): its statements
/// on the pool, with the channel that wakes lease waiters.
struct Postgres {
    inner: Arc<Inner>,
}

impl Dialect for Postgres {
    type Db = sqlx::Postgres;

    fn for_batch(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, sqlx::Postgres>, StorageError> {
        self.inner.pool.begin().await.map_err(storage_error)
    }

    async fn connection(&self) -> Result<PoolConnection<sqlx::Postgres>, StorageError> {
        self.inner.pool.acquire().await.map_err(storage_error)
    }

    /// Takes every row lock up front in key order, the order an acquire
    /// takes them in: a commit and an acquire over overlapping keys then
    /// never lock in opposite orders (a deadlock PostgreSQL would break by
    /// failing one of them).
    async fn lock_rows(&self, conn: &mut PgConnection, keys: &[&str]) -> Result<(), StorageError> {
        let query = sqlx::query(&self.inner.statements.lock_rows).bind(keys);
        query.execute(conn).await.map_err(storage_error)?;
        Ok(())
    }

    async fn put(
        &self,
        conn: &mut PgConnection,
        put: Put<'_>,
    ) -> Result<Option<i64>, StorageError> {
        let statements = &self.inner.statements;
        let ttl = put.ttl.map(ttl_millis);
        let query = match put.expected {
            Some(expected) => sqlx::query(&statements.update)
                .bind(put.value)
                .bind(ttl)
                .bind(put.key)
                .bind(version_to_sql(expected)?),
            None => sqlx::query(&statements.insert)
                .bind(put.value)
                .bind(ttl)
                .bind(put.key),
        };
        let query = query
            .bind(put.owner)
            .bind(put.release)
            .bind(&self.inner.channel);
        let written = query.fetch_optional(conn).await.map_err(storage_error)?;
        written.map(|row| row.int(0)).transpose()
    }

    async fn delete_unleased(
        &self,
        conn: &mut PgConnection,
        key: &str,
    ) -> Result<bool, StorageError> {
        let query = sqlx::query(&self.inner.statements.delete_unleased).bind(key);
        Ok(query
            .execute(conn)
            .await
            .map_err(storage_error)?
            .rows_affected()
            > 0)
    }

    async fn delete_leased(
        &self,
        conn: &mut PgConnection,
        key: &str,
        owner: &str,
    ) -> Result<bool, StorageError> {
        let query = sqlx::query(&self.inner.statements.delete_leased)
            .bind(key)
            .bind(owner);
        Ok(query
            .execute(conn)
            .await
            .map_err(storage_error)?
            .rows_affected()
            > 0)
    }

    async fn row_state(
        &self,
        conn: &mut PgConnection,
        key: &str,
        owner: Option<&str>,
    ) -> Result<Option<RowState>, StorageError> {
        let query = sqlx::query(&self.inner.statements.row_state)
            .bind(key)
            .bind(owner);
        let row = query.fetch_optional(conn).await.map_err(storage_error)?;
        row.map(|row| RowState::from_row(&row)).transpose()
    }

    async fn release(
        &self,
        conn: &mut PgConnection,
        keys: &[&str],
        owner: &str,
    ) -> Result<(), StorageError> {
        release(conn, &self.inner, keys, owner).await
    }

    async fn restore(
        &self,
        conn: &mut PgConnection,
        restore: &Restore,
    ) -> Result<bool, StorageError> {
        let stored = sqlx::query(&self.inner.statements.restore)
            .bind(restore.key.as_str())
            .bind(restore.record.value.as_ref())
            .bind(version_to_sql(restore.record.version)?)
            .bind(restore.ttl.map(ttl_millis))
            .fetch_optional(conn)
            .await;
        Ok(stored.map_err(storage_error)?.is_some())
    }
}

/// `text` as a `LIKE` pattern matching every string that starts with it
/// (with `\` as the escape character).
fn like_prefix(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Gives back `owner`'s leases on `keys` (sorted), waking their waiters.
async fn release(
    conn: &mut PgConnection,
    inner: &Inner,
    keys: &[&str],
    owner: &str,
) -> Result<(), StorageError> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(&inner.statements.release)
        .bind(keys)
        .bind(owner)
        .bind(&inner.channel)
        .execute(&mut *conn)
        .await
        .map_err(storage_error)?;
    Ok(())
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
        collect_loaded(&mut found, rows)?;
        Ok(in_batch_order(keys, &found))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, writes = writes.len()))]
    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        sql::spawn_commit(self.dialect(), writes, &[], None).await
    }

    fn leases(&self) -> Option<&dyn Leases> {
        self.inner.watchers.as_ref().map(|_| self as &dyn Leases)
    }

    /// Keyset pagination in key order: the cursor is the last key of the
    /// page before, so a page starts from the primary key's index however
    /// far the scan has gone.
    async fn scan(
        &self,
        prefix: &KeyPrefix,
        cursor: Option<&ScanCursor>,
        limit: usize,
        with_values: bool,
    ) -> Result<ScanPage, StorageError> {
        let limit = page_limit(limit);
        let rows = sqlx::query(&self.inner.statements.scan)
            .bind(like_prefix(&prefix.full_text()))
            .bind(cursor.map_or("", ScanCursor::as_str))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(with_values)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(storage_error)?;
        scan_page(rows, prefix, limit)
    }

    async fn restore(&self, records: &[Restore]) -> Result<Vec<RestoreOutcome>, StorageError> {
        spawn_restore(self.dialect(), records).await
    }
}

#[async_trait]
impl Leases for PostgresStorage {
    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, keys = keys.len()))]
    async fn acquire(
        &self,
        keys: &[StorageKey],
        lease: Lease<'_>,
    ) -> Result<LeasedLoad, StorageError> {
        if keys.is_empty() {
            return Ok(LeasedLoad::Acquired(Vec::new()));
        }
        let inner = Arc::clone(&self.inner);
        let keys = keys.to_vec();
        let owner = lease.owner.clone();
        let ttl = ttl_millis(lease.ttl);
        run_to_completion(async move {
            let distinct = distinct_sorted(&keys);
            let mut conn = inner.pool.acquire().await.map_err(storage_error)?;
            let rows = sqlx::query(&inner.statements.acquire)
                .bind(&distinct)
                .bind(owner.as_str())
                .bind(ttl)
                .fetch_all(&mut *conn)
                .await
                .map_err(storage_error)?;
            let mut taken = HashMap::with_capacity(rows.len());
            for row in rows {
                let (key, record) = leased_row(&row)?;
                taken.insert(key, record);
            }
            let busy_at = match leased_records(&keys, &taken) {
                Ok(records) => return Ok(LeasedLoad::Acquired(records)),
                Err(index) => index,
            };
            // Contention only: give back what this statement took, then
            // flag the busy rows so their release wakes us.
            release(&mut conn, &inner, &distinct, owner.as_str()).await?;
            let listening = inner
                .watchers
                .as_ref()
                .is_some_and(|watchers| watchers.listening.load(Ordering::Acquire));
            let rows = sqlx::query(&inner.statements.busy)
                .bind(&distinct)
                .bind(owner.as_str())
                .bind(listening)
                .fetch_all(&mut *conn)
                .await
                .map_err(storage_error)?;
            let mut remaining = HashMap::with_capacity(rows.len());
            for row in rows {
                let (key, retry_in) = busy_row(&row)?;
                remaining.insert(key, retry_in);
            }
            Ok(busy_answer(&keys, &remaining, busy_at))
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(storage = %self.inner.name, writes = writes.len(), release = release.len()))]
    async fn write_and_release(
        &self,
        writes: &[Write],
        release: &[StorageKey],
        owner: &LeaseOwner,
    ) -> Result<Vec<WriteOutcome>, StorageError> {
        sql::spawn_commit(self.dialect(), writes, release, Some(owner)).await
    }

    async fn renew(&self, keys: &[StorageKey], lease: Lease<'_>) -> Result<bool, StorageError> {
        let distinct = distinct_sorted(keys);
        if distinct.is_empty() {
            return Ok(true);
        }
        let renewed = sqlx::query(&self.inner.statements.renew)
            .bind(&distinct)
            .bind(lease.owner.as_str())
            .bind(ttl_millis(lease.ttl))
            .execute(&self.inner.pool)
            .await
            .map_err(storage_error)?
            .rows_affected();
        Ok(usize::try_from(renewed).is_ok_and(|renewed| renewed == distinct.len()))
    }

    fn watch(&self, key: &StorageKey) -> ReleaseWatch {
        match self
            .inner
            .watchers
            .as_ref()
            .and_then(|w| w.watch(key.as_str()))
        {
            Some(notify) => ReleaseWatch::notify(notify),
            None => ReleaseWatch::poll(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_prefix("a_b%c\\d:"), "a\\_b\\%c\\\\d:%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn the_watch_map_forgets_keys_nobody_waits_on() {
        let watchers = Watchers::default();
        assert!(
            watchers.watch("k").is_none(),
            "no watch while not listening"
        );
        watchers.listening.store(true, Ordering::Release);
        let held = watchers.watch("held");
        for i in 0..10_000 {
            drop(watchers.watch(&format!("key-{i}")));
        }
        assert!(
            watchers.len() <= 2 * MIN_SWEEP,
            "{} entries",
            watchers.len()
        );
        let again = watchers.watch("held");
        assert!(matches!((&held, &again), (Some(a), Some(b)) if Arc::ptr_eq(a, b)));
        drop((held, again));
        watchers.wake("held");
        watchers.wake_all();
        assert_eq!(watchers.len(), 0);
    }
}
