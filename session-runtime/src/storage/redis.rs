//! Sessions in Redis or Redis Cluster, shared by every process of a bot.
//!
//! # Records
//!
//! A record is one Redis string under `<namespace>{<scope key>}` (for
//! example `my_bot:counter:{42}`): an 8-byte big-endian version followed by
//! the codec's bytes. The braces are a Redis Cluster hash tag, so every
//! session type of one user or chat lives in one slot and is loaded and
//! written together; they are used on a single server too, so moving to a
//! cluster keeps every key.
//!
//! A record's lease lives beside it under `<record key>:lease` (its holder's
//! [`LeaseOwner`] text, with the lease's time to live), and while an update
//! waits for that lease, a flag under `<record key>:lease:w`. Same hash tag,
//! same slot: one script checks and changes all three.
//!
//! # Round trips
//!
//! Without leases, a load is one `MGET` of all keys of the batch. With them
//! ([`Leases::acquire`]), it is one `EVALSHA` that takes every lease of the
//! batch and reads the records. A write, and a write with the release of the
//! update's leases ([`Leases::write_and_release`]), is one `EVALSHA` of a Lua
//! script over all writes of the batch: each put is applied only if the
//! stored version is still the one that was read (and, with leases, only if
//! no other update holds the key's lease), so a writer in another process is
//! never silently overwritten. On a cluster each of these is one script per
//! slot, all in flight together. The scripts are loaded when the storage
//! connects and called by their hash; a server that lost them (restart,
//! `SCRIPT FLUSH`) is sent them again once.
//!
//! # Versions
//!
//! An update stores the version it read plus one. A new record (a first
//! write, or one after a delete or expiry) takes the server's clock in
//! microseconds, read inside the write script: a key never gets a version it
//! had before, so a write prepared before another process deleted and
//! re-created the record is refused instead of overwriting it (ABA), and
//! processes with skewed clocks still agree.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, IntoConnectionInfo, RedisError, RedisFuture, Value};
use tracing::Instrument as _;

use crate::key::StorageKey;
use crate::storage::{
    Conflict, KeyPrefix, Lease, LeaseOwner, LeasedLoad, Leases, Record, ReleaseWatch, Restore,
    RestoreOutcome, ScanCursor, ScanPage, Storage, Write, WriteOutcome,
};
use crate::storage::{StorageError, StorageErrorKind};

mod data;
mod keys;
mod release;
mod script_call;
mod scripts;

use keys::{KeyOf, lease_key, redis_key};
use release::{CHANNEL, ReleaseListener};
use script_call::ScriptCall;

/// How long a command may take, connection included, unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Bytes of the version header in front of every record.
const HEADER: usize = 8;

/// Sessions in Redis: one auto-reconnecting multiplexed connection (or a
/// Redis Cluster connection), one round trip per load and per commit,
/// conditional writes, native TTL, and leases that serialize the updates of
/// one key across every process sharing the server.
///
/// Every call is bounded by the [command timeout](RedisStorage::command_timeout):
/// an unreachable or stalled server is a [`StorageError`] of kind
/// `Unavailable` or `Timeout`, never a hang. After an outage the connection is
/// re-established by the next call. Cloning is cheap and shares the connection.
///
/// # Guarantees across processes
///
/// With [leases](Leases) (the default; see
/// [`cross_process_leases`](RedisStorage::cross_process_leases)):
///
/// - An update takes the lease of each key it loads in the round trip that
///   loads it, all of a batch or none, and reads the records after taking
///   them, so it sees every write of the previous holder. It gives them back
///   in the round trip that writes its changes. An update of another process
///   that wants a taken key waits for its release, woken through Redis
///   pub/sub as soon as it happens (polling while the subscription is down),
///   instead of failing with a conflict: N processes behave like one.
/// - A lease lives its time to live unless renewed or released: a process
///   that dies holding one blocks that key for at most that long.
/// - Every write is fenced: while another update holds the key's lease, it
///   is refused with [`Conflict::LeaseLost`]; and every write is conditional
///   on the version its update read, which never repeats over a key's
///   lifetime (delete and re-create included). A late write can never
///   overwrite anything.
/// - On a cluster, a batch over several slots is one script per slot, all in
///   flight together; a slot that fails fails its own writes only
///   ([`WriteOutcome::Failed`]), the others are applied and reported. As
///   with any timeout, a slot that timed out (rather than refused the
///   connection) may still apply its writes if its node answers late; the
///   version check keeps that from overwriting anything newer.
/// - A plain [`Storage::write`] (tools, copies between storages) is
///   conditional on versions but not fenced by leases.
///
/// Without leases, writes are still conditional on versions: when another
/// process changed a session in between, that write is refused, the other
/// process's data stays, and the accessor's commit reports
/// [`Error::Conflict`](crate::Error::Conflict) naming the session and key.
///
/// ```no_run
/// use std::time::Duration;
/// # use serde::{Deserialize, Serialize};
/// use tg_session::RedisStorage;
/// use tg_session::{HandlerOutcome, SessionManager, UpdateIds};
/// use tg_session::Session;
///
/// #[derive(Session, Serialize, Deserialize)]
/// #[session(key = "counter")]
/// struct Counter {
///     #[session(default = 1)]
///     apple: u32,
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let storage = RedisStorage::connect("redis://127.0.0.1:6379/0")
///     .await?
///     .command_timeout(Duration::from_millis(500));
/// let manager = SessionManager::builder()
///     .storage(storage)
///     .prefix("my_bot")
///     .register::<Counter>()
///     .build()?;
///
/// // Per update (framework glue does this for you): one round trip before
/// // the handler, one after it.
/// let sessions = manager.begin(UpdateIds::new().user(42)).await;
/// sessions.get::<Counter>()?.apple += 1;
/// sessions.commit(HandlerOutcome::Succeeded).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStorage {
    connection: Connection,
    name: Arc<str>,
    command_timeout: Duration,
    leases: bool,
    releases: Arc<ReleaseListener>,
}

/// What one script call takes, inline for an update's few sessions.
type Batch<T> = smallvec::SmallVec<[T; 4]>;

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Whether a failed command may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: again after any connection failure.
    Idempotent,
    /// Writes: again only if the command surely never reached the server (a
    /// retried write that did apply would report a conflict with itself).
    IfNotSent,
}

impl RedisStorage {
    /// Connects to the Redis server at `url` (`redis://[:password@]host:port[/db]`,
    /// `rediss://…` needs the `redis` crate's TLS features).
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        let client = Client::open(url).map_err(classify)?;
        Self::from_client(client).await
    }

    /// Connects through an existing [`redis::Client`]. Waiters for a lease
    /// hear of its release through a second connection of this client,
    /// opened the first time an update waits.
    pub async fn from_client(client: Client) -> Result<Self, StorageError> {
        let info = client.get_connection_info();
        // Host, port and database only: the URL's credentials stay out of
        // error messages and traces.
        let name = format!("redis://{}/{}", info.addr, info.redis.db);
        let releases = ReleaseListener::new(vec![client.clone()]);
        // Reconnection is driven by calls, each bounded by the command
        // timeout, instead of a background backoff that could outlast it.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(DEFAULT_COMMAND_TIMEOUT);
        let manager = bounded(DEFAULT_COMMAND_TIMEOUT, async {
            ConnectionManager::new_with_config(client, config)
                .await
                .map_err(classify)
        })
        .await?;
        Self::ready(Connection::Single(manager), name, releases).await
    }

    /// Connects to a Redis Cluster through any of its `nodes`
    /// (`redis://host:port` each). Waiters for a lease hear of its release
    /// through a pub/sub connection to the first of `nodes` that answers (a
    /// release is published to every node of the cluster).
    pub async fn cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, StorageError> {
        let nodes = nodes
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?;
        let addresses: Vec<String> = nodes.iter().map(|node| node.addr.to_string()).collect();
        let name = format!("redis-cluster://{}", addresses.join(","));
        let sources = nodes
            .iter()
            .map(|node| Client::open(node.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?;
        let client = ClusterClient::builder(nodes)
            .connection_timeout(DEFAULT_COMMAND_TIMEOUT)
            .build()
            .map_err(classify)?;
        Self::cluster_client(client, name, ReleaseListener::new(sources)).await
    }

    /// Connects through an existing [`ClusterClient`].
    ///
    /// A `ClusterClient` does not tell its nodes, so waiters for a lease poll
    /// for its release instead of being woken; use
    /// [`cluster`](RedisStorage::cluster) to have them woken.
    pub async fn from_cluster_client(client: ClusterClient) -> Result<Self, StorageError> {
        Self::cluster_client(
            client,
            "redis-cluster".to_owned(),
            ReleaseListener::new(Vec::new()),
        )
        .await
    }

    async fn cluster_client(
        client: ClusterClient,
        name: String,
        releases: ReleaseListener,
    ) -> Result<Self, StorageError> {
        let connection = bounded(DEFAULT_COMMAND_TIMEOUT, async {
            client.get_async_connection().await.map_err(classify)
        })
        .await?;
        Self::ready(Connection::Cluster(connection), name, releases).await
    }

    /// Loads the scripts so every load with leases, commit and renewal is a
    /// single `EVALSHA`.
    async fn ready(
        connection: Connection,
        name: String,
        releases: ReleaseListener,
    ) -> Result<Self, StorageError> {
        let storage = Self {
            connection,
            name: Arc::from(name),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            leases: true,
            releases: Arc::new(releases),
        };
        for script in scripts::all() {
            storage
                .call(Retry::Idempotent, |mut connection| async move {
                    script.prepare_invoke().load_async(&mut connection).await
                })
                .await?;
        }
        Ok(storage)
    }

    /// Bounds every call, reconnection included (default 3 s).
    /// A call that takes longer fails with a `Timeout` [`StorageError`].
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Whether updates take leases on their keys so the updates of one key
    /// are serialized across processes (default `true`; see the
    /// [guarantees](RedisStorage#guarantees-across-processes)).
    ///
    /// Opt out only for a single-process deployment: there the in-process
    /// key lock already serializes updates, and `false` saves the lease
    /// bookkeeping in Redis. With several processes and `false`, concurrent
    /// updates of one key end in [`Conflict`]s instead of waiting.
    #[must_use]
    pub fn cross_process_leases(mut self, enabled: bool) -> Self {
        self.leases = enabled;
        self
    }

    /// Runs `command`, once more if the connection failed in a way `retry`
    /// allows, all within the command timeout.
    async fn call<T, F, Fut>(&self, retry: Retry, command: F) -> Result<T, StorageError>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        bounded(self.command_timeout, async {
            match command(self.connection.clone()).await {
                Ok(value) => Ok(value),
                Err(error) if retries(retry, &error) => {
                    // The failure made the connection manager start a new
                    // connection; this attempt waits for it.
                    tracing::debug!(storage = %self.name, %error, "redis connection lost; retrying once");
                    command(self.connection.clone()).await.map_err(classify)
                }
                Err(error) => Err(classify(error)),
            }
        })
        .await
    }

    /// Whether this is one server (not a cluster): a script may touch any
    /// of its keys.
    fn single_server(&self) -> bool {
        matches!(self.connection, Connection::Single(_))
    }

    /// The indices of `keys` grouped by the slot they hash to, in order of
    /// first appearance: one group on a single server, where a script may
    /// touch any key; one per slot on a cluster, where it may not.
    fn slots<'a>(&self, keys: impl Iterator<Item = &'a StorageKey>) -> Vec<Vec<usize>> {
        match self.connection {
            Connection::Single(_) => vec![(0..keys.count()).collect()],
            Connection::Cluster(_) => {
                let mut slots: Vec<(u16, Vec<usize>)> = Vec::new();
                for (index, key) in keys.enumerate() {
                    let slot = redis::cluster_routing::get_slot(redis_key(key).as_bytes());
                    match slots.iter_mut().find(|(s, _)| *s == slot) {
                        Some((_, indices)) => indices.push(index),
                        None => slots.push((slot, vec![index])),
                    }
                }
                slots.into_iter().map(|(_, indices)| indices).collect()
            }
        }
    }

    /// One acquire script over keys of one slot; `Busy`'s index is into `keys`.
    async fn acquire_batch(
        &self,
        keys: &[&StorageKey],
        lease: Lease<'_>,
    ) -> Result<LeasedLoad, StorageError> {
        let mut call = ScriptCall::new(&scripts::ACQUIRE, 3 * keys.len());
        for key in keys {
            call.keys(key, &[KeyOf::Record, KeyOf::Lease, KeyOf::Flag]);
        }
        call.arg(CHANNEL)
            .arg(lease.owner.as_str())
            .arg(millis(lease.ttl));
        let call = &call;
        // Taking a lease one already holds only renews it, and the busy
        // path's flag is idempotent too: safe to send again.
        let mut answer: Value = self
            .call(Retry::Idempotent, |mut connection| async move {
                call.invoke(&mut connection).await
            })
            .await?;
        let unexpected = |answer: &Value| {
            StorageError::other(format!(
                "lease script answered {answer:?} for {} keys",
                keys.len()
            ))
        };
        // The records are taken out of the answer, not copied.
        if let Value::Array(items) = &mut answer
            && let [Value::Int(1), Value::Array(records)] = &mut items[..]
            && records.len() == keys.len()
        {
            return keys
                .iter()
                .zip(std::mem::take(records))
                .map(|(key, record)| decode(key, record))
                .collect::<Result<_, _>>()
                .map(LeasedLoad::Acquired);
        }
        let Value::Array(items) = &answer else {
            return Err(unexpected(&answer));
        };
        match &items[..] {
            [Value::Int(0), Value::Int(index), Value::Int(left)] => {
                let index = usize::try_from(*index)
                    .ok()
                    .filter(|index| *index < keys.len())
                    .ok_or_else(|| unexpected(&answer))?;
                // A lease without a time to live (set by hand) gets the one
                // this update asked for as its wait bound.
                let retry_in = u64::try_from(*left)
                    .ok()
                    .filter(|left| *left > 0)
                    .map_or(lease.ttl, Duration::from_millis);
                Ok(LeasedLoad::Busy { index, retry_in })
            }
            _ => Err(unexpected(&answer)),
        }
    }

    /// One write script over writes and releases of one slot. `owner` is
    /// `None` for a plain [`Storage::write`]: no fencing, no release.
    async fn write_batch(
        &self,
        writes: &[&Write],
        release: &[&StorageKey],
        owner: Option<&LeaseOwner>,
    ) -> Result<Vec<WriteOutcome>, StorageError> {
        let mut call = ScriptCall::new(&scripts::WRITE, 2 * (writes.len() + release.len()));
        for write in writes {
            call.keys(write.key(), &[KeyOf::Record, KeyOf::Lease]);
        }
        for key in release {
            call.keys(key, &[KeyOf::Lease, KeyOf::Flag]);
        }
        call.arg(CHANNEL)
            .arg(owner.map_or("", LeaseOwner::as_str))
            .arg(writes.len());
        for write in writes {
            match write {
                Write::Put {
                    value,
                    expected_version,
                    ttl,
                    ..
                } => {
                    match expected_version {
                        Some(expected) => {
                            let next = expected.saturating_add(1).to_be_bytes();
                            call.arg(&expected.to_be_bytes()[..])
                                .arg_joined(&[&next, value]);
                        }
                        // The script puts the server's clock in front.
                        None => {
                            call.arg("").arg(&value[..]);
                        }
                    }
                    call.arg(ttl.map_or(0, millis));
                }
                Write::Delete { .. } => {
                    call.arg("del").arg("").arg(0);
                }
            }
        }
        let call = &call;
        // Releases alone may be sent again (releasing twice is releasing);
        // a write only if it surely never reached the server (a retried
        // write that did apply would report a conflict with itself).
        let retry = if writes.is_empty() {
            Retry::Idempotent
        } else {
            Retry::IfNotSent
        };
        let answers: Vec<Value> = self
            .call(retry, |mut connection| async move {
                call.invoke(&mut connection).await
            })
            .await?;
        if answers.len() != writes.len() {
            return Err(StorageError::other(format!(
                "write script answered {} outcomes for {} writes",
                answers.len(),
                writes.len()
            )));
        }
        writes
            .iter()
            .zip(answers)
            .map(|(write, answer)| write_outcome(write, answer))
            .collect()
    }

    /// Writes and releases over any number of slots: one script per slot,
    /// all in flight together. A slot that fails fails its own writes only;
    /// `Err` when every slot failed.
    async fn write_and_release_all(
        &self,
        writes: &[Write],
        release: &[StorageKey],
        owner: Option<&LeaseOwner>,
    ) -> Result<Vec<WriteOutcome>, StorageError> {
        if writes.is_empty() && release.is_empty() {
            return Ok(Vec::new());
        }
        // One script on one server, as `acquire` sends.
        if self.single_server() {
            let writes: Batch<&Write> = writes.iter().collect();
            let release: Batch<&StorageKey> = release.iter().collect();
            return self.write_batch(&writes, &release, owner).await;
        }
        let keys = writes.iter().map(Write::key).chain(release);
        let groups = self.slots(keys);
        let batches: Vec<(Vec<&Write>, Vec<&StorageKey>)> = groups
            .iter()
            .map(|indices| {
                let (w, r): (Vec<usize>, Vec<usize>) =
                    indices.iter().partition(|&&index| index < writes.len());
                (
                    w.into_iter().map(|index| &writes[index]).collect(),
                    r.into_iter()
                        .map(|index| &release[index - writes.len()])
                        .collect(),
                )
            })
            .collect();
        let results = futures_util::future::join_all(
            batches
                .iter()
                .map(|(writes, release)| self.write_batch(writes, release, owner)),
        )
        .await;
        if results.len() == 1 {
            return results.into_iter().next().unwrap_or_else(|| Ok(Vec::new()));
        }
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; writes.len()];
        let mut first_error = None;
        let mut failed = 0;
        for (indices, result) in groups.iter().zip(results) {
            let written = indices.iter().filter(|&&index| index < writes.len());
            match result {
                Ok(applied) => {
                    for (&index, outcome) in written.zip(applied) {
                        outcomes[index] = Some(outcome);
                    }
                }
                Err(error) => {
                    failed += 1;
                    tracing::warn!(storage = %self.name, %error, "a cluster slot failed its part of a write");
                    for &index in written {
                        outcomes[index] = Some(WriteOutcome::Failed(error.clone()));
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error
            && failed == groups.len()
        {
            return Err(error);
        }
        outcomes
            .into_iter()
            .zip(writes)
            .map(|(outcome, write)| {
                outcome.ok_or_else(|| {
                    StorageError::other(format!(
                        "no outcome for the write of key `{}`",
                        redis_key(write.key())
                    ))
                })
            })
            .collect()
    }
}

impl std::fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStorage")
            .field("name", &self.name)
            .field("command_timeout", &self.command_timeout)
            .field("cross_process_leases", &self.leases)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Storage for RedisStorage {
    fn name(&self) -> &str {
        &self.name
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let span = tracing::debug_span!("redis.load", storage = %self.name, keys = keys.len());
        async {
            let mut mget = redis::cmd("MGET");
            for key in keys {
                mget.arg(redis_key(key));
            }
            let mget = &mget;
            let values: Vec<Value> = self
                .call(Retry::Idempotent, |mut connection| async move {
                    mget.query_async(&mut connection).await
                })
                .await?;
            if values.len() != keys.len() {
                return Err(StorageError::other(format!(
                    "MGET answered {} values for {} keys",
                    values.len(),
                    keys.len()
                )));
            }
            keys.iter()
                .zip(values)
                .map(|(key, value)| decode(key, value))
                .collect()
        }
        .instrument(span)
        .await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        let span = tracing::debug_span!("redis.write", storage = %self.name, writes = writes.len());
        self.write_and_release_all(writes, &[], None)
            .instrument(span)
            .await
    }

    fn leases(&self) -> Option<&dyn Leases> {
        self.leases.then_some(self as &dyn Leases)
    }

    /// `SCAN … MATCH` on the server, or on every primary of a cluster in
    /// turn. A page may run a little over `limit` (`SCAN`'s `COUNT` is a
    /// hint), and a key may be listed twice if Redis resizes its table
    /// during the scan (Redis's own guarantee); a copy skips it the second time.
    async fn scan(
        &self,
        prefix: &KeyPrefix,
        cursor: Option<&ScanCursor>,
        limit: usize,
        with_values: bool,
    ) -> Result<ScanPage, StorageError> {
        let span = tracing::debug_span!("redis.scan", storage = %self.name, limit);
        self.scan_page(prefix, cursor, limit, with_values)
            .instrument(span)
            .await
    }

    async fn restore(&self, records: &[Restore]) -> Result<Vec<RestoreOutcome>, StorageError> {
        let span =
            tracing::debug_span!("redis.restore", storage = %self.name, records = records.len());
        self.restore_all(records).instrument(span).await
    }
}

#[async_trait]
impl Leases for RedisStorage {
    async fn acquire(
        &self,
        keys: &[StorageKey],
        lease: Lease<'_>,
    ) -> Result<LeasedLoad, StorageError> {
        if keys.is_empty() {
            return Ok(LeasedLoad::Acquired(Vec::new()));
        }
        let span = tracing::debug_span!("redis.acquire", storage = %self.name, keys = keys.len(), owner = %lease.owner);
        async {
            // On one server every key goes in one script, in order: no
            // groups to make, split and merge, which allocated on every
            // update.
            if self.single_server() {
                let batch: Batch<&StorageKey> = keys.iter().collect();
                return self.acquire_batch(&batch, lease).await;
            }
            let groups = self.slots(keys.iter());
            let batches: Vec<Vec<&StorageKey>> = groups
                .iter()
                .map(|indices| indices.iter().map(|&index| &keys[index]).collect())
                .collect();
            let results = futures_util::future::join_all(
                batches.iter().map(|batch| self.acquire_batch(batch, lease)),
            )
            .await;
            let mut records: Vec<Option<Record>> = vec![None; keys.len()];
            let mut busy: Option<(usize, Duration)> = None;
            let mut first_error = None;
            let mut taken: Vec<&[&StorageKey]> = Vec::new();
            let mut failed: Vec<&[&StorageKey]> = Vec::new();
            for ((indices, batch), result) in groups.iter().zip(&batches).zip(results) {
                match result {
                    Ok(LeasedLoad::Acquired(loaded)) => {
                        for (&index, record) in indices.iter().zip(loaded) {
                            records[index] = record;
                        }
                        taken.push(batch);
                    }
                    Ok(LeasedLoad::Busy { index, retry_in }) => {
                        let index = indices.get(index).copied().unwrap_or(index);
                        if busy.is_none_or(|(first, _)| index < first) {
                            busy = Some((index, retry_in));
                        }
                    }
                    Err(error) => {
                        first_error.get_or_insert(error);
                        failed.push(batch);
                    }
                }
            }
            if busy.is_none() && first_error.is_none() {
                return Ok(LeasedLoad::Acquired(records));
            }
            // All or none: the slots that took their leases give them back
            // (on a cluster only, and only on this contention path). So do
            // the slots that failed, in case they timed out after taking
            // theirs: their node may well answer this time.
            if !taken.is_empty() {
                taken.extend(failed);
            }
            let taken: Vec<StorageKey> = taken.concat().into_iter().cloned().collect();
            if !taken.is_empty()
                && let Err(error) = self
                    .write_and_release_all(&[], &taken, Some(lease.owner))
                    .await
            {
                tracing::warn!(storage = %self.name, %error, "could not give back the leases of a batch that was not all taken; they expire by themselves");
            }
            match (first_error, busy) {
                (Some(error), _) => Err(error),
                (None, Some((index, retry_in))) => Ok(LeasedLoad::Busy { index, retry_in }),
                (None, None) => Ok(LeasedLoad::Acquired(records)),
            }
        }
        .instrument(span)
        .await
    }

    async fn write_and_release(
        &self,
        writes: &[Write],
        release: &[StorageKey],
        owner: &LeaseOwner,
    ) -> Result<Vec<WriteOutcome>, StorageError> {
        let span = tracing::debug_span!(
            "redis.write_and_release",
            storage = %self.name,
            writes = writes.len(),
            release = release.len(),
            %owner
        );
        self.write_and_release_all(writes, release, Some(owner))
            .instrument(span)
            .await
    }

    async fn renew(&self, keys: &[StorageKey], lease: Lease<'_>) -> Result<bool, StorageError> {
        if keys.is_empty() {
            return Ok(true);
        }
        let span = tracing::debug_span!("redis.renew", storage = %self.name, keys = keys.len(), owner = %lease.owner);
        async {
            let groups = self.slots(keys.iter());
            let calls: Vec<_> = groups
                .iter()
                .map(|indices| {
                    let mut call = ScriptCall::new(&scripts::RENEW, indices.len());
                    for &index in indices {
                        call.keys(&keys[index], &[KeyOf::Lease]);
                    }
                    call.arg(lease.owner.as_str()).arg(millis(lease.ttl));
                    call
                })
                .collect();
            let results = futures_util::future::join_all(calls.iter().map(|call| {
                // Extending a lease one holds is idempotent.
                self.call(Retry::Idempotent, move |mut connection| async move {
                    call.invoke::<bool>(&mut connection).await
                })
            }))
            .await;
            let mut held = true;
            for result in results {
                held &= result?;
            }
            Ok(held)
        }
        .instrument(span)
        .await
    }

    fn watch(&self, key: &StorageKey) -> ReleaseWatch {
        self.releases
            .watch(&lease_key(&redis_key(key)), self.command_timeout)
    }
}

/// What the write script's answer for `write` means.
fn write_outcome(write: &Write, answer: Value) -> Result<WriteOutcome, StorageError> {
    match (write, answer) {
        (Write::Put { .. }, Value::BulkString(header)) if header.len() == HEADER => {
            let mut version = [0; HEADER];
            version.copy_from_slice(&header);
            Ok(WriteOutcome::Written {
                version: u64::from_be_bytes(version),
            })
        }
        (Write::Delete { .. }, Value::Int(scripts::code::DELETED)) => Ok(WriteOutcome::Deleted),
        (_, Value::Int(scripts::code::NEWER_VERSION)) => {
            Ok(WriteOutcome::Conflict(Conflict::NewerVersion))
        }
        (_, Value::Int(scripts::code::EXPIRED)) => Ok(WriteOutcome::Conflict(Conflict::Expired)),
        (_, Value::Int(scripts::code::LEASE_LOST)) => {
            Ok(WriteOutcome::Conflict(Conflict::LeaseLost))
        }
        (write, answer) => Err(StorageError::other(format!(
            "write script answered {answer:?} for key `{}`",
            redis_key(write.key())
        ))),
    }
}

/// A duration in whole milliseconds for `PX`/`PEXPIRE`: at least 1 (0 is
/// refused there, and means "no TTL" to the write script), at most about
/// 140,000 years (Redis refuses an expiry time past `i64` milliseconds).
fn millis(duration: Duration) -> u64 {
    const MAX: u64 = 1 << 52;
    u64::try_from(duration.as_millis()).map_or(MAX, |ms| ms.clamp(1, MAX))
}

fn decode(key: &StorageKey, value: Value) -> Result<Option<Record>, StorageError> {
    let bytes = match value {
        Value::Nil => return Ok(None),
        Value::BulkString(bytes) => bytes,
        other => {
            return Err(StorageError::other(format!(
                "key `{}` answered {other:?}, not a session record",
                redis_key(key)
            )));
        }
    };
    let Some(header) = bytes
        .get(..HEADER)
        .and_then(|h| <[u8; HEADER]>::try_from(h).ok())
    else {
        return Err(StorageError::other(format!(
            "key `{}` holds {} bytes, too short for a session record (8-byte version, then data): \
             something other than tg-session wrote it",
            redis_key(key),
            bytes.len()
        )));
    };
    Ok(Some(Record {
        version: u64::from_be_bytes(header),
        value: Bytes::from(bytes).slice(HEADER..),
    }))
}

fn retries(retry: Retry, error: &RedisError) -> bool {
    match retry {
        Retry::Idempotent => {
            error.is_connection_refusal() || error.is_connection_dropped() || error.is_io_error()
        }
        Retry::IfNotSent => error.is_connection_refusal(),
    }
}

fn classify(error: RedisError) -> StorageError {
    let kind = if error.is_timeout() {
        StorageErrorKind::Timeout
    } else if error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_io_error()
        || error.kind() == redis::ErrorKind::ClusterDown
        || error.kind() == redis::ErrorKind::MasterDown
    {
        StorageErrorKind::Unavailable
    } else {
        StorageErrorKind::Other
    };
    StorageError::new(kind, error)
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(StorageError::timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_key_is_the_hash_tag() {
        let key = StorageKey::new(Some("app"), Some(7), "counter", "-1:42");
        assert_eq!(redis_key(&key), "app:7:counter:{-1:42}");
        let profile = StorageKey::new(Some("app"), Some(7), "profile", "-1:42");
        assert_eq!(
            redis::cluster_routing::get_slot(redis_key(&key).as_bytes()),
            redis::cluster_routing::get_slot(redis_key(&profile).as_bytes())
        );
    }

    #[test]
    fn records_carry_their_version() {
        let key = StorageKey::new(None, None, "c", "1");
        let mut stored = 7u64.to_be_bytes().to_vec();
        stored.extend_from_slice(b"{}");
        let record = decode(&key, Value::BulkString(stored)).ok().flatten();
        assert_eq!(
            record,
            Some(Record {
                value: Bytes::from_static(b"{}"),
                version: 7
            })
        );
        assert!(decode(&key, Value::Nil).is_ok_and(|r| r.is_none()));
        assert!(decode(&key, Value::BulkString(b"short".to_vec())).is_err());
    }
}
