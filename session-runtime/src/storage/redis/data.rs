//! Scans and restores: the data operations' side of the Redis storage.
//!
//! A scan walks `SCAN … MATCH` on a single server, and on a cluster every
//! primary in turn (ordered by address); its cursor is the node's address
//! and Redis's own cursor there. Only record keys are listed (they end with
//! their hash tag's `}`); the `:lease` and `:lease:w` keys beside them are not.

use std::time::Duration;

use redis::Value;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::{Connection, KeyOf, RedisStorage, Retry, ScriptCall, decode, millis, scripts};
use crate::key::StorageKey;
use crate::storage::StorageError;
use crate::storage::{
    KeyPrefix, Record, Restore, RestoreOutcome, ScanCursor, ScanPage, ScannedRecord, page_limit,
};

/// `SCAN` calls one page may take at most.
const MAX_STEPS: usize = 16;

/// Where a scan stands: the node (`None` on a single server) and Redis's
/// cursor on it.
struct Position {
    node: usize,
    cursor: u64,
}

impl RedisStorage {
    /// [`Storage::scan`](crate::storage::Storage::scan) over Redis.
    pub(super) async fn scan_page(
        &self,
        prefix: &KeyPrefix,
        cursor: Option<&ScanCursor>,
        limit: usize,
        with_values: bool,
    ) -> Result<ScanPage, StorageError> {
        let limit = page_limit(limit);
        let nodes = self.primaries().await?;
        let mut at = match cursor {
            Some(cursor) => parse_cursor(cursor, &nodes)?,
            None => Position { node: 0, cursor: 0 },
        };
        let pattern = match_pattern(prefix);
        let mut keys = Vec::new();
        let mut steps = 0;
        let done = loop {
            let (next, found) = self
                .scan_step(nodes.get(at.node), at.cursor, &pattern, limit)
                .await?;
            keys.extend(found.iter().filter_map(|raw| record_key(raw, prefix)));
            at.cursor = next;
            if next == 0 {
                at.node += 1;
                if at.node >= nodes.len() {
                    break true;
                }
            }
            steps += 1;
            // A prefix matching few keys of a large keyspace: hand back
            // what was found (maybe nothing) rather than walk it all in one call.
            if keys.len() >= limit || steps >= MAX_STEPS {
                break false;
            }
        };
        let entries = match with_values {
            true => self.read_all(keys).await?,
            false => keys
                .into_iter()
                .map(|key| ScannedRecord {
                    key,
                    record: None,
                    ttl: None,
                })
                .collect(),
        };
        let next = match done {
            true => None,
            false => Some(ScanCursor::new(match nodes.get(at.node) {
                Some(Some(address)) => format!("{address}/{}", at.cursor),
                _ => at.cursor.to_string(),
            })),
        };
        Ok(ScanPage { entries, next })
    }

    /// The nodes a scan walks: the primaries of a cluster by address, or
    /// the one server (`None`).
    async fn primaries(&self) -> Result<Vec<Option<String>>, StorageError> {
        if let Connection::Single(_) = self.connection {
            return Ok(vec![None]);
        }
        let slots: Value = self
            .call(Retry::Idempotent, |mut connection| async move {
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let mut primaries: Vec<Option<String>> = Vec::new();
        if let Value::Array(ranges) = slots {
            for range in ranges {
                // [start, end, [host, port, id, …], replicas…]
                let Value::Array(parts) = range else { continue };
                let Some(Value::Array(primary)) = parts.get(2) else {
                    continue;
                };
                if let (Some(host), Some(Value::Int(port))) = (primary.first(), primary.get(1)) {
                    let host = match host {
                        Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
                        Value::SimpleString(host) => host.clone(),
                        _ => continue,
                    };
                    primaries.push(Some(format!("{host}:{port}")));
                }
            }
        }
        primaries.sort();
        primaries.dedup();
        if primaries.is_empty() {
            return Err(StorageError::other(
                "CLUSTER SLOTS listed no primary: the cluster has no slots assigned",
            ));
        }
        Ok(primaries)
    }

    /// One `SCAN` on `node` (`None`/`Some(None)`: the single server).
    async fn scan_step(
        &self,
        node: Option<&Option<String>>,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), StorageError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let scan = &scan;
        let answer: Value = match node {
            Some(Some(address)) => {
                let (host, port) = split_address(address)?;
                self.call(Retry::Idempotent, |connection| {
                    let host = host.to_owned();
                    async move {
                        let Connection::Cluster(mut cluster) = connection else {
                            return Err(redis::RedisError::from((
                                redis::ErrorKind::ClientError,
                                "a node address is only given on a cluster",
                            )));
                        };
                        let routing = SingleNodeRoutingInfo::ByAddress { host, port };
                        cluster
                            .route_command(scan, RoutingInfo::SingleNode(routing))
                            .await
                    }
                })
                .await?
            }
            _ => {
                self.call(Retry::Idempotent, |mut connection| async move {
                    scan.query_async(&mut connection).await
                })
                .await?
            }
        };
        redis::from_redis_value(&answer).map_err(|error| {
            StorageError::other(format!("SCAN answered something unexpected: {error}"))
        })
    }

    /// The records and remaining TTLs of `keys`, one read script per slot,
    /// all in flight together; keys gone meanwhile are left out.
    async fn read_all(&self, keys: Vec<StorageKey>) -> Result<Vec<ScannedRecord>, StorageError> {
        let groups = self.slots(keys.iter());
        let reads = groups.iter().map(|indices| {
            let mut call = ScriptCall::new(&scripts::READ, indices.len());
            for &index in indices {
                call.keys(&keys[index], &[KeyOf::Record]);
            }
            async move {
                let call = &call;
                let answer: Vec<Value> = self
                    .call(Retry::Idempotent, |mut connection| async move {
                        call.invoke(&mut connection).await
                    })
                    .await?;
                Ok::<_, StorageError>(answer)
            }
        });
        let answers = futures_util::future::join_all(reads).await;
        let mut found: Vec<Option<ScannedRecord>> = vec![None; keys.len()];
        for (indices, answer) in groups.iter().zip(answers) {
            let answer = answer?;
            if answer.len() != 2 * indices.len() {
                return Err(StorageError::other(format!(
                    "read script answered {} values for {} keys",
                    answer.len(),
                    indices.len()
                )));
            }
            let mut values = answer.into_iter();
            for &index in indices {
                let (value, pttl) = (values.next(), values.next());
                let key = &keys[index];
                let record: Option<Record> = match value {
                    Some(value) => decode(key, value)?,
                    None => None,
                };
                let ttl = match pttl {
                    Some(Value::Int(millis)) if millis > 0 => {
                        Some(Duration::from_millis(millis.unsigned_abs()))
                    }
                    _ => None,
                };
                found[index] = record.map(|record| ScannedRecord {
                    key: key.clone(),
                    record: Some(record),
                    ttl,
                });
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// [`Storage::restore`](crate::storage::Storage::restore) over Redis: one
    /// script per slot, all in flight together.
    pub(super) async fn restore_all(
        &self,
        records: &[Restore],
    ) -> Result<Vec<RestoreOutcome>, StorageError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.slots(records.iter().map(|restore| &restore.key));
        let writes = groups.iter().map(|indices| {
            let mut call = ScriptCall::new(&scripts::RESTORE, 2 * indices.len());
            for &index in indices {
                call.keys(&records[index].key, &[KeyOf::Record, KeyOf::Lease]);
            }
            for &index in indices {
                let restore = &records[index];
                call.arg_joined(&[&restore.record.version.to_be_bytes(), &restore.record.value])
                    .arg(restore.ttl.map_or(0, millis));
            }
            async move {
                let call = &call;
                let answer: Vec<i64> = self
                    .call(Retry::Idempotent, |mut connection| async move {
                        call.invoke(&mut connection).await
                    })
                    .await?;
                Ok::<_, StorageError>(answer)
            }
        });
        let answers = futures_util::future::join_all(writes).await;
        let mut outcomes = vec![RestoreOutcome::Skipped; records.len()];
        for (indices, answer) in groups.iter().zip(answers) {
            let answer = answer?;
            if answer.len() != indices.len() {
                return Err(StorageError::other(format!(
                    "restore script answered {} outcomes for {} records",
                    answer.len(),
                    indices.len()
                )));
            }
            for (&index, written) in indices.iter().zip(answer) {
                if written == 1 {
                    outcomes[index] = RestoreOutcome::Restored;
                }
            }
        }
        Ok(outcomes)
    }
}

/// The `MATCH` pattern of `prefix`, in Redis's key layout
/// (`<namespace>{<scope key>}`), glob characters escaped.
fn match_pattern(prefix: &KeyPrefix) -> String {
    let mut pattern = escape_glob(prefix.namespace());
    if let Some(scope) = prefix.scope_prefix() {
        pattern.push('{');
        pattern.push_str(&escape_glob(scope));
    }
    pattern.push('*');
    pattern
}

fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The storage key of a Redis key `SCAN` found under `prefix`: `None` for a
/// lease, a wait flag, or a key `prefix` does not select.
fn record_key(raw: &str, prefix: &KeyPrefix) -> Option<StorageKey> {
    let inner = raw.strip_suffix('}')?;
    let from = prefix.namespace().len().min(inner.len());
    let brace = from + inner.get(from..)?.find('{')?;
    let key = StorageKey::from_parts(&inner[..brace], &inner[brace + 1..]);
    prefix.matches(&key).then_some(key)
}

fn split_address(address: &str) -> Result<(&str, u16), StorageError> {
    address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse().ok()?)))
        .ok_or_else(|| StorageError::other(format!("node address `{address}` has no port")))
}

/// A cursor this storage made: `<cursor>` on a single server,
/// `<host:port>/<cursor>` on a cluster.
fn parse_cursor(cursor: &ScanCursor, nodes: &[Option<String>]) -> Result<Position, StorageError> {
    let invalid = || {
        StorageError::other(format!(
            "scan cursor `{cursor}` was not made by this Redis storage: pass the `next` of \
             the page before, or start the scan again without a cursor"
        ))
    };
    let (node, position) = match cursor.as_str().rsplit_once('/') {
        Some((address, position)) => {
            let node = nodes
                .iter()
                .position(|node| node.as_deref() == Some(address))
                .ok_or_else(|| {
                    StorageError::other(format!(
                        "the scan was on node `{address}`, which is no longer a primary of the \
                         cluster: start the scan again (its keys are listed again, a copy skips \
                         what it already copied)"
                    ))
                })?;
            (node, position)
        }
        None if nodes == [None] => (0, cursor.as_str()),
        None => return Err(invalid()),
    };
    Ok(Position {
        node,
        cursor: position.parse().map_err(|_| invalid())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_the_key_layout() {
        assert_eq!(match_pattern(&KeyPrefix::text("a*b:")), "a\\*b:*");
        assert_eq!(
            match_pattern(&KeyPrefix::scope("app:c:", "-1:")),
            "app:c:{-1:*"
        );
        assert_eq!(match_pattern(&KeyPrefix::all()), "*");
    }

    #[test]
    fn only_record_keys_are_listed() {
        let all = KeyPrefix::all();
        let key = record_key("app:c:{-1:42}", &all).map(|key| key.to_string());
        assert_eq!(key.as_deref(), Some("app:c:-1:42"));
        assert!(record_key("app:c:{-1:42}:lease", &all).is_none());
        assert!(record_key("app:c:{-1:42}:lease:w", &all).is_none());
        let chat = KeyPrefix::scope("app:c:", "-1:");
        assert!(record_key("app:c:{-1:42}", &chat).is_some());
        assert!(record_key("app:c:{-10:42}", &chat).is_none());
    }

    #[test]
    fn cursors_name_their_node() {
        let nodes = [
            Some("127.0.0.1:7000".to_owned()),
            Some("127.0.0.1:7001".to_owned()),
        ];
        let at = parse_cursor(&ScanCursor::new("127.0.0.1:7001/12"), &nodes);
        assert!(at.is_ok_and(|at| at.node == 1 && at.cursor == 12));
        assert!(parse_cursor(&ScanCursor::new("127.0.0.1:7002/12"), &nodes).is_err());
        assert!(parse_cursor(&ScanCursor::new("12"), &nodes).is_err());
        assert!(parse_cursor(&ScanCursor::new("12"), &[None]).is_ok());
    }
}
