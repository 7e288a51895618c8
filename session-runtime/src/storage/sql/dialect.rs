//! The commit of the SQL storages, written once over a [`Dialect`]: how a
//! put, a delete and a lease release are told apart, what a refused write is
//! asked, which statements need a transaction; and the decoding of the rows
//! both dialects return.
//!
//! A dialect supplies its statements (each runs one statement of its own
//! SQL text and parameters) and how it opens a transaction; everything in
//! between is here.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use sqlx::pool::PoolConnection;
use sqlx::{ColumnIndex, Database, Decode, Row, Transaction, Type};

use super::{
    CLEANUP_CHUNK, RowState, TableName, conflict_cause, needs_transaction, run_to_completion,
    still_to_release, storage_error, version_from_sql,
};
use crate::key::StorageKey;
use crate::storage::StorageError;
use crate::storage::{
    Conflict, KeyPrefix, LeaseOwner, LeasedLoad, Record, Restore, RestoreOutcome, ScanCursor,
    ScanPage, ScannedRecord, Write, WriteOutcome,
};

/// The connection type of a dialect's database.
pub(crate) type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

/// One conditional put, as a dialect's put statement binds it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Put<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: &'a [u8],
    /// The version the update read; `None`: only if nothing is stored.
    pub(crate) expected: Option<u64>,
    pub(crate) ttl: Option<Duration>,
    /// The lease that fences the write; `None`: any live lease refuses it.
    pub(crate) owner: Option<&'a str>,
    /// Also clear `owner`'s lease on the key in the same statement.
    pub(crate) release: bool,
}

/// What differs between SQLite and PostgreSQL under the shared commit:
/// the statements themselves and how a transaction starts.
///
/// A dialect value serves one batch ([`Dialect::for_batch`]): SQLite
/// compares expiries and leases against one reading of its clock per batch,
/// PostgreSQL against the server's `now()`.
pub(crate) trait Dialect: Sync + Sized {
    /// The sqlx database.
    type Db: Database;

    /// This dialect for a new batch of statements.
    fn for_batch(&self) -> Self;

    /// Opens the write transaction of a multi-statement commit.
    fn begin(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, StorageError>> + Send;

    /// A connection for a commit of one statement.
    fn connection(
        &self,
    ) -> impl Future<Output = Result<PoolConnection<Self::Db>, StorageError>> + Send;

    /// Runs first in a commit's transaction, with every key it touches
    /// (sorted): PostgreSQL locks their rows in key order there; SQLite's
    /// `BEGIN IMMEDIATE` already holds the whole file.
    fn lock_rows(
        &self,
        _conn: &mut Conn<Self>,
        _keys: &[&str],
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        async { Ok(()) }
    }

    /// Runs `put`: the version stored, or `None` when it was refused.
    fn put(
        &self,
        conn: &mut Conn<Self>,
        put: Put<'_>,
    ) -> impl Future<Output = Result<Option<i64>, StorageError>> + Send;

    /// Deletes `key` unless another lease holds it; whether a row went.
    fn delete_unleased(
        &self,
        conn: &mut Conn<Self>,
        key: &str,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Clears the record of `key` under `owner`'s lease, keeping the lease
    /// (and the version, so the next record starts above it); whether it
    /// held one.
    fn delete_leased(
        &self,
        conn: &mut Conn<Self>,
        key: &str,
        owner: &str,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// The row of `key` as seen by `owner`, read to tell why a write was refused.
    fn row_state(
        &self,
        conn: &mut Conn<Self>,
        key: &str,
        owner: Option<&str>,
    ) -> impl Future<Output = Result<Option<RowState>, StorageError>> + Send;

    /// Gives back `owner`'s leases on `keys` (sorted): lease-only rows go,
    /// the others only lose their lease.
    fn release(
        &self,
        conn: &mut Conn<Self>,
        keys: &[&str],
        owner: &str,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Stores `restore` as it is, unless its row holds the same or a newer
    /// version or a live lease; whether it was stored.
    fn restore(
        &self,
        conn: &mut Conn<Self>,
        restore: &Restore,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;
}

/// Restores `records` in one transaction, run to completion in a task of
/// its own (see [`run_to_completion`]).
pub(crate) async fn spawn_restore<D>(
    dialect: D,
    records: &[Restore],
) -> Result<Vec<RestoreOutcome>, StorageError>
where
    D: Dialect + Send + 'static,
{
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let records = records.to_vec();
    run_to_completion(async move {
        let mut tx = dialect.begin().await?;
        let dialect = dialect.for_batch();
        let mut outcomes = Vec::with_capacity(records.len());
        for restore in &records {
            outcomes.push(match dialect.restore(&mut tx, restore).await? {
                true => RestoreOutcome::Restored,
                false => RestoreOutcome::Skipped,
            });
        }
        tx.commit().await.map_err(storage_error)?;
        Ok(outcomes)
    })
    .await
}

/// A page of a scan from the rows of a keyset query (`key, value` or NULL,
/// `version, ms left` or NULL), in key order after the cursor, asked for
/// `limit` rows: the rows past the prefix end the scan, a full page says
/// the scan goes on after its last key.
pub(crate) fn scan_page<R: SqlRow>(
    rows: Vec<R>,
    prefix: &KeyPrefix,
    limit: usize,
) -> Result<ScanPage, StorageError> {
    let text = prefix.full_text();
    let full = rows.len() >= limit;
    let mut entries = Vec::with_capacity(rows.len());
    let mut past_prefix = false;
    for row in rows {
        let key = row.text(0)?;
        if !key.starts_with(&text) {
            past_prefix = true;
            break;
        }
        let record = match row.bytes(1)? {
            Some(value) => record_from_row(Some(value), row.int(2)?, true)?,
            None => None,
        };
        let ttl = row
            .opt_int(3)?
            .map(|millis| Duration::from_millis(millis.max(0).unsigned_abs()));
        entries.push(ScannedRecord {
            key: prefix.key_of(&key),
            ttl: ttl.filter(|_| record.is_some()),
            record,
        });
    }
    let next = match full && !past_prefix {
        true => entries
            .last()
            .map(|entry| ScanCursor::new(entry.key.as_str())),
        false => None,
    };
    Ok(ScanPage { entries, next })
}

/// [`commit`] run to completion in a task of its own (see
/// [`run_to_completion`]), on copies of the batch.
pub(crate) async fn spawn_commit<D>(
    dialect: D,
    writes: &[Write],
    release: &[StorageKey],
    owner: Option<&LeaseOwner>,
) -> Result<Vec<WriteOutcome>, StorageError>
where
    D: Dialect + Send + 'static,
{
    if writes.is_empty() && release.is_empty() {
        return Ok(Vec::new());
    }
    let (writes, release, owner) = (writes.to_vec(), release.to_vec(), owner.cloned());
    run_to_completion(async move {
        let owner = owner.as_ref().map(LeaseOwner::as_str);
        commit(&dialect, &writes, &release, owner).await
    })
    .await
}

/// Applies `writes` and releases `owner`'s leases on `release`, in one
/// transaction when it takes more than one statement.
pub(crate) async fn commit<D: Dialect>(
    dialect: &D,
    writes: &[Write],
    release: &[StorageKey],
    owner: Option<&str>,
) -> Result<Vec<WriteOutcome>, StorageError> {
    if needs_transaction(writes, release) {
        let mut tx = dialect.begin().await?;
        let mut keys: Vec<&str> = writes
            .iter()
            .map(|write| write.key().as_str())
            .chain(release.iter().map(StorageKey::as_str))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        dialect.lock_rows(&mut tx, &keys).await?;
        let outcomes = apply_all(&dialect.for_batch(), &mut tx, writes, release, owner).await?;
        tx.commit().await.map_err(storage_error)?;
        Ok(outcomes)
    } else {
        let mut conn = dialect.connection().await?;
        apply_all(&dialect.for_batch(), &mut conn, writes, release, owner).await
    }
}

async fn apply_all<D: Dialect>(
    dialect: &D,
    conn: &mut Conn<D>,
    writes: &[Write],
    release: &[StorageKey],
    owner: Option<&str>,
) -> Result<Vec<WriteOutcome>, StorageError> {
    let releasing: HashSet<&str> = match owner {
        Some(_) => release.iter().map(StorageKey::as_str).collect(),
        None => HashSet::new(),
    };
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut released = HashSet::new();
    for write in writes {
        let key = write.key().as_str();
        let release_this = matches!(write, Write::Put { .. }) && releasing.contains(key);
        let outcome = apply(dialect, conn, write, owner, release_this).await?;
        if release_this && matches!(outcome, WriteOutcome::Written { .. }) {
            released.insert(key);
        }
        outcomes.push(outcome);
    }
    if let Some(owner) = owner {
        let rest = still_to_release(release, &released);
        if !rest.is_empty() {
            dialect.release(conn, &rest, owner).await?;
        }
    }
    Ok(outcomes)
}

/// Applies one write, fenced by `owner`'s lease (`None`: any live lease
/// refuses it); a put with `release` also clears the owner's lease.
async fn apply<D: Dialect>(
    dialect: &D,
    conn: &mut Conn<D>,
    write: &Write,
    owner: Option<&str>,
    release: bool,
) -> Result<WriteOutcome, StorageError> {
    match write {
        Write::Put {
            key,
            value,
            expected_version,
            ttl,
        } => {
            let put = Put {
                key: key.as_str(),
                value,
                expected: *expected_version,
                ttl: *ttl,
                owner,
                release,
            };
            match dialect.put(conn, put).await? {
                Some(version) => Ok(WriteOutcome::Written {
                    version: version_from_sql(version)?,
                }),
                None => {
                    let row = dialect.row_state(conn, key.as_str(), owner).await?;
                    Ok(WriteOutcome::Conflict(conflict_cause(
                        row,
                        *expected_version,
                    )))
                }
            }
        }
        Write::Delete { key } => {
            let key = key.as_str();
            if dialect.delete_unleased(conn, key).await? {
                return Ok(WriteOutcome::Deleted);
            }
            if let Some(owner) = owner
                && dialect.delete_leased(conn, key, owner).await?
            {
                return Ok(WriteOutcome::Deleted);
            }
            Ok(match dialect.row_state(conn, key, owner).await? {
                Some(row) if row.leased_by_other => WriteOutcome::Conflict(Conflict::LeaseLost),
                _ => WriteOutcome::Deleted,
            })
        }
    }
}

/// A row of either dialect, read by column index into the column types the
/// session table uses.
pub(crate) trait SqlRow {
    /// A `TEXT` column (a key).
    fn text(&self, index: usize) -> Result<String, StorageError>;
    /// A nullable `BLOB`/`BYTEA` column (a value).
    fn bytes(&self, index: usize) -> Result<Option<Vec<u8>>, StorageError>;
    /// A 64-bit integer column (a version, milliseconds).
    fn int(&self, index: usize) -> Result<i64, StorageError>;
    /// A nullable 64-bit integer column.
    fn opt_int(&self, index: usize) -> Result<Option<i64>, StorageError>;
    /// A boolean expression.
    fn flag(&self, index: usize) -> Result<bool, StorageError>;
}

impl<R: Row> SqlRow for R
where
    usize: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, index: usize) -> Result<String, StorageError> {
        self.try_get(index).map_err(storage_error)
    }

    fn bytes(&self, index: usize) -> Result<Option<Vec<u8>>, StorageError> {
        self.try_get(index).map_err(storage_error)
    }

    fn int(&self, index: usize) -> Result<i64, StorageError> {
        self.try_get(index).map_err(storage_error)
    }

    fn opt_int(&self, index: usize) -> Result<Option<i64>, StorageError> {
        self.try_get(index).map_err(storage_error)
    }

    fn flag(&self, index: usize) -> Result<bool, StorageError> {
        self.try_get(index).map_err(storage_error)
    }
}

impl RowState {
    /// Decodes `SELECT value IS NOT NULL, version, expired, leased_by_other`.
    pub(crate) fn from_row(row: &impl SqlRow) -> Result<Self, StorageError> {
        Ok(Self {
            has_value: row.flag(0)?,
            version: row.int(1)?,
            expired: row.flag(2)?,
            leased_by_other: row.flag(3)?,
        })
    }
}

/// Adds the records of a load's rows (`key, value, version`, live records
/// only) to `found`.
pub(crate) fn collect_loaded<R: SqlRow>(
    found: &mut HashMap<String, Record>,
    rows: Vec<R>,
) -> Result<(), StorageError> {
    for row in rows {
        if let Some(record) = record_from_row(row.bytes(1)?, row.int(2)?, true)? {
            found.insert(row.text(0)?, record);
        }
    }
    Ok(())
}

/// Decodes `key, value, version, live` of a lease acquire: the record, or
/// `None` for a lease-only row or an expired record.
pub(crate) fn leased_row(row: &impl SqlRow) -> Result<(String, Option<Record>), StorageError> {
    let record = record_from_row(row.bytes(1)?, row.int(2)?, row.flag(3)?)?;
    Ok((row.text(0)?, record))
}

/// Decodes `key, milliseconds` of a busy lease.
pub(crate) fn busy_row(row: &impl SqlRow) -> Result<(String, Duration), StorageError> {
    Ok((
        row.text(0)?,
        Duration::from_millis(row.int(1)?.unsigned_abs()),
    ))
}

/// A record as a statement returned it: `None` for a lease-only row
/// (`value` NULL) or an expired record (`live` false).
pub(crate) fn record_from_row(
    value: Option<Vec<u8>>,
    version: i64,
    live: bool,
) -> Result<Option<Record>, StorageError> {
    match value {
        Some(value) if live => Ok(Some(Record {
            value: Bytes::from(value),
            version: version_from_sql(version)?,
        })),
        _ => Ok(None),
    }
}

/// The records found for `keys`, in the batch's order.
pub(crate) fn in_batch_order(
    keys: &[StorageKey],
    found: &HashMap<String, Record>,
) -> Vec<Option<Record>> {
    keys.iter()
        .map(|key| found.get(key.as_str()).cloned())
        .collect()
}

/// The answer of an acquire that found a key busy: the first key still
/// leased by another owner with the time its lease has left; if its holder
/// released meanwhile, the key first found busy (`busy_at`), to retry at once.
pub(crate) fn busy_answer(
    keys: &[StorageKey],
    remaining: &HashMap<String, Duration>,
    busy_at: usize,
) -> LeasedLoad {
    keys.iter()
        .enumerate()
        .find_map(|(index, key)| {
            remaining
                .get(key.as_str())
                .map(|&retry_in| LeasedLoad::Busy { index, retry_in })
        })
        .unwrap_or(LeasedLoad::Busy {
            index: busy_at,
            retry_in: Duration::ZERO,
        })
}

/// Runs a cleanup statement removing at most [`CLEANUP_CHUNK`] rows until
/// one removes fewer, and says how many went in all.
pub(crate) async fn cleanup_in_chunks<F, Fut>(mut chunk: F) -> Result<u64, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, StorageError>>,
{
    let mut removed = 0;
    loop {
        let done = chunk().await?;
        removed += done;
        if done < CLEANUP_CHUNK.unsigned_abs() {
            return Ok(removed);
        }
    }
}

/// The indexes both dialects keep: expiry times for the cleanup, and
/// lease-only rows.
pub(crate) fn index_statements(table: &TableName) -> [String; 2] {
    let t = table.quoted();
    [
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} (expires_at) WHERE expires_at IS NOT NULL",
            table.index()
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} (lease_until) WHERE value IS NULL",
            table.lease_index()
        ),
    ]
}
