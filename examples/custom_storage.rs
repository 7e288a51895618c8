//! Your own storage: sessions in a plain `HashMap` behind a mutex.
//!
//! GramIO's session plugin works "with any storage". Here is the
//! whole contract in one file: batched load, batched conditional writes with
//! versions, deletes, TTL. The test suite runs every behaviour test over this
//! storage too (`integration-tests/tests/custom_storage.rs`).
//!
//! Run it: `cargo run --example custom_storage`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tg_session::storage::async_trait;
use tg_session::storage::{Conflict, Record, Storage, Write, WriteOutcome};
use tg_session::{Session, SessionManager, StorageError, StorageKey, UpdateIds};

/// Each record with the instant it expires, if it has a TTL.
type Records = HashMap<String, (Record, Option<Instant>)>;

/// Sessions in a map; each record remembers when it expires.
#[derive(Default)]
pub struct MapStorage {
    records: Mutex<Records>,
}

impl MapStorage {
    fn records(&self) -> Result<std::sync::MutexGuard<'_, Records>, StorageError> {
        self.records
            .lock()
            .map_err(|_| StorageError::other("a thread panicked while holding the map"))
    }
}

/// The version stored under `key`, treating an expired record as absent.
fn live_version(
    records: &HashMap<String, (Record, Option<Instant>)>,
    key: &str,
    now: Instant,
) -> Option<u64> {
    records
        .get(key)
        .filter(|(_, expires)| expires.is_none_or(|at| at > now))
        .map(|(record, _)| record.version)
}

#[async_trait]
impl Storage for MapStorage {
    fn name(&self) -> &str {
        "map"
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        let records = self.records()?;
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|key| {
                live_version(&records, key.as_str(), now)?;
                records.get(key.as_str()).map(|(record, _)| record.clone())
            })
            .collect())
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        let mut records = self.records()?;
        let now = Instant::now();
        Ok(writes
            .iter()
            .map(|write| match write {
                Write::Put {
                    key,
                    value,
                    expected_version,
                    ttl,
                } => {
                    if live_version(&records, key.as_str(), now) != *expected_version {
                        // Say why: the record this update read only expired,
                        // or another writer changed it.
                        let stale = records.get(key.as_str()).map(|(r, _)| r.version);
                        return WriteOutcome::Conflict(match stale == *expected_version {
                            true => Conflict::Expired,
                            false => Conflict::NewerVersion,
                        });
                    }
                    let version = Write::next_version(*expected_version);
                    let record = Record {
                        value: value.clone(),
                        version,
                    };
                    let expires = ttl.map(|ttl| now + ttl);
                    records.insert(key.to_string(), (record, expires));
                    WriteOutcome::Written { version }
                }
                Write::Delete { key } => {
                    records.remove(key.as_str());
                    WriteOutcome::Deleted
                }
            })
            .collect())
    }
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", ttl = "30d")]
struct Counter {
    #[session(default = 1)]
    apple: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tg_session::Error> {
    let manager = SessionManager::builder()
        .storage(MapStorage::default())
        .register::<Counter>()
        .build()?;
    for _ in 0..3 {
        let apples = manager
            .run(UpdateIds::new().user(42), |ctx| async move {
                let mut counter = ctx.counter()?;
                counter.apple += 1;
                Ok::<_, tg_session::Error>(counter.apple)
            })
            .await?;
        println!("user 42 has {apples} apples");
    }
    Ok(())
}
