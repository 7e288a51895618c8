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
//! # Round trips
//!
//! A load is one `MGET` of all keys of the batch. A write is one `EVALSHA`
//! of a Lua script over all writes of the batch: each put is applied only if
//! the stored version is still the one that was read, so a writer in another
//! process is never silently overwritten. The script is loaded when the
//! storage connects and called by its hash; a server that lost it (restart,
//! `SCRIPT FLUSH`) is sent it again once.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, IntoConnectionInfo, RedisError, RedisFuture, Script, Value};
use tracing::Instrument as _;

use crate::error::{StorageError, StorageErrorKind};
use crate::key::StorageKey;
use crate::storage::{Conflict, Record, Storage, Write, WriteOutcome};

/// How long a command may take, connection included, unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Bytes of the version header in front of every record.
const HEADER: usize = 8;

/// The conditional batch write. Per write `i` (1-based), `KEYS[i]` is the
/// record and `ARGV[3i-2..=3i]` are:
/// - the condition: `""` (nothing may be stored), the expected 8-byte version
///   header, or `"del"` (delete whatever is there);
/// - the new record (header and bytes);
/// - the TTL in milliseconds, `"0"` for none.
///
/// Returns one integer per write: 1 written, 0 conflict, 2 deleted.
/// `GETRANGE` reads only the header; on a key of another type it fails, and
/// `pcall` turns that into a conflict so a foreign value is never replaced.
const WRITE_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local cond = ARGV[3 * i - 2]
  if cond == 'del' then
    redis.call('DEL', key)
    out[i] = 2
  else
    local stored = redis.pcall('GETRANGE', key, 0, 7)
    if type(stored) == 'string' and stored == cond then
      local ttl = ARGV[3 * i]
      if ttl == '0' then
        redis.call('SET', key, ARGV[3 * i - 1])
      else
        redis.call('SET', key, ARGV[3 * i - 1], 'PX', ttl)
      end
      out[i] = 1
    else
      out[i] = 0
    end
  end
end
return out
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE_SCRIPT));

/// Sessions in Redis: one auto-reconnecting multiplexed connection (or a
/// Redis Cluster connection), one round trip per load and per commit,
/// conditional writes, native TTL.
///
/// Every call is bounded by the [command timeout](RedisStorage::command_timeout):
/// an unreachable or stalled server is a [`StorageError`] of kind
/// `Unavailable` or `Timeout`, never a hang. After an outage the connection is
/// re-established by the next call. Cloning is cheap and shares the connection.
///
/// Writes are conditional on the version each update read: when another
/// process changed a session in between, that write is refused, the other
/// process's data stays, and the accessor's commit reports
/// [`Error::Conflict`](crate::Error::Conflict) naming the session and key.
///
/// ```no_run
/// use std::time::Duration;
/// # use serde::{Deserialize, Serialize};
/// use tg_session_runtime::storage::redis::RedisStorage;
/// use tg_session_runtime::{HandlerOutcome, SessionManager, UpdateIds};
/// # use tg_session_runtime::{Json, Session};
/// # #[derive(Serialize, Deserialize)] struct Counter { apple: u32 }
/// # impl Session for Counter { const NAME: &'static str = "counter"; type Codec = Json;
/// #     fn initial() -> Self { Counter { apple: 1 } } }
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
/// // Per update (framework glue does this for you): one MGET before the
/// // handler, one EVALSHA after it if something changed.
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
}

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

    /// Connects through an existing [`redis::Client`].
    pub async fn from_client(client: Client) -> Result<Self, StorageError> {
        let info = client.get_connection_info();
        // Host, port and database only: the URL's credentials stay out of
        // error messages and traces.
        let name = format!("redis://{}/{}", info.addr, info.redis.db);
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
        Self::ready(Connection::Single(manager), name).await
    }

    /// Connects to a Redis Cluster through any of its `nodes`
    /// (`redis://host:port` each).
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
        let client = ClusterClient::builder(nodes)
            .connection_timeout(DEFAULT_COMMAND_TIMEOUT)
            .build()
            .map_err(classify)?;
        Self::cluster_client(client, name).await
    }

    /// Connects through an existing [`ClusterClient`].
    pub async fn from_cluster_client(client: ClusterClient) -> Result<Self, StorageError> {
        Self::cluster_client(client, "redis-cluster".to_owned()).await
    }

    async fn cluster_client(client: ClusterClient, name: String) -> Result<Self, StorageError> {
        let connection = bounded(DEFAULT_COMMAND_TIMEOUT, async {
            client.get_async_connection().await.map_err(classify)
        })
        .await?;
        Self::ready(Connection::Cluster(connection), name).await
    }

    /// Loads the write script so every commit is a single `EVALSHA`.
    async fn ready(connection: Connection, name: String) -> Result<Self, StorageError> {
        let storage = Self {
            connection,
            name: Arc::from(name),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        };
        storage
            .call(Retry::Idempotent, |mut connection| async move {
                SCRIPT.prepare_invoke().load_async(&mut connection).await
            })
            .await?;
        Ok(storage)
    }

    /// Bounds every load and write, reconnection included (default 3 s).
    /// A call that takes longer fails with a `Timeout` [`StorageError`].
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
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

    async fn write_batch(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        let mut invocation = SCRIPT.prepare_invoke();
        for write in writes {
            invocation.key(redis_key(write.key()));
            match write {
                Write::Put {
                    value,
                    expected_version,
                    ttl,
                    ..
                } => {
                    let version = Write::next_version(*expected_version);
                    let condition: &[u8] = match expected_version {
                        Some(expected) => &expected.to_be_bytes(),
                        None => b"",
                    };
                    let mut record = Vec::with_capacity(HEADER + value.len());
                    record.extend_from_slice(&version.to_be_bytes());
                    record.extend_from_slice(value);
                    // PX needs at least 1 ms; 0 means "no TTL" to the script.
                    let ttl_ms = ttl.map_or(0, |ttl| ttl.as_millis().clamp(1, u64::MAX.into()));
                    invocation
                        .arg(condition)
                        .arg(record)
                        .arg(ttl_ms.to_string());
                }
                Write::Delete { .. } => {
                    invocation.arg("del").arg("").arg("0");
                }
            }
        }
        let invocation = &invocation;
        let codes: Vec<i64> = self
            .call(Retry::IfNotSent, |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        if codes.len() != writes.len() {
            return Err(StorageError::other(format!(
                "write script answered {} outcomes for {} writes",
                codes.len(),
                writes.len()
            )));
        }
        writes
            .iter()
            .zip(codes)
            .map(|(write, code)| match (write, code) {
                (
                    Write::Put {
                        expected_version, ..
                    },
                    1,
                ) => Ok(WriteOutcome::Written {
                    version: Write::next_version(*expected_version),
                }),
                (Write::Put { .. }, 0) => Ok(WriteOutcome::Conflict(Conflict::NewerVersion)),
                (Write::Delete { .. }, 2) => Ok(WriteOutcome::Deleted),
                (write, code) => Err(StorageError::other(format!(
                    "write script answered {code} for key `{}`",
                    write.key()
                ))),
            })
            .collect()
    }
}

impl std::fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStorage")
            .field("name", &self.name)
            .field("command_timeout", &self.command_timeout)
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
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let span = tracing::debug_span!("redis.write", storage = %self.name, writes = writes.len());
        async {
            match &self.connection {
                Connection::Single(_) => self.write_batch(writes).await,
                Connection::Cluster(_) => {
                    // A script may only touch keys of one slot: one script per
                    // slot, all in flight together. Hash tags keep the
                    // sessions of one user or chat in one slot.
                    let mut slots: Vec<(u16, Vec<usize>)> = Vec::new();
                    for (index, write) in writes.iter().enumerate() {
                        let slot =
                            redis::cluster_routing::get_slot(redis_key(write.key()).as_bytes());
                        match slots.iter_mut().find(|(s, _)| *s == slot) {
                            Some((_, indices)) => indices.push(index),
                            None => slots.push((slot, vec![index])),
                        }
                    }
                    let batches: Vec<Vec<Write>> = slots
                        .iter()
                        .map(|(_, indices)| indices.iter().map(|&i| writes[i].clone()).collect())
                        .collect();
                    let results = futures_util::future::join_all(
                        batches.iter().map(|batch| self.write_batch(batch)),
                    )
                    .await;
                    let mut outcomes =
                        vec![WriteOutcome::Conflict(Conflict::NewerVersion); writes.len()];
                    for ((_, indices), result) in slots.iter().zip(results) {
                        for (&index, outcome) in indices.iter().zip(result?) {
                            outcomes[index] = outcome;
                        }
                    }
                    Ok(outcomes)
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The Redis key of a record: the scope key becomes the hash tag.
fn redis_key(key: &StorageKey) -> String {
    let (namespace, scope) = (key.namespace(), key.scope_key());
    let mut redis_key = String::with_capacity(namespace.len() + scope.len() + 2);
    redis_key.push_str(namespace);
    redis_key.push('{');
    redis_key.push_str(scope);
    redis_key.push('}');
    redis_key
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
