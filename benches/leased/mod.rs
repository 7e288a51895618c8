//! The storage-level read-modify-write the SQL benchmarks measure with and
//! without leases: one user's counter, cycling over the users.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tg_session::StorageKey;
use tg_session::storage::{Lease, LeaseOwner, LeasedLoad, Record, Storage, Write, WriteOutcome};

/// The stored value, shaped like the workload's sessions.
#[derive(Serialize, Deserialize, Default)]
pub struct Counter {
    pub apple: u32,
    pub name: Option<String>,
}

pub fn key(user: u64) -> StorageKey {
    StorageKey::new(None, None, "counter", &user.to_string())
}

/// The put that adds one to what `record` holds.
pub fn bump(key: &StorageKey, record: Option<&Record>) -> Write {
    let mut counter: Counter = record
        .map(|record| serde_json::from_slice(&record.value).unwrap())
        .unwrap_or_default();
    counter.apple += 1;
    Write::Put {
        key: key.clone(),
        value: Bytes::from(serde_json::to_vec(&counter).unwrap()),
        expected_version: record.map(|record| record.version),
        ttl: None,
    }
}

/// `acquire` (lease + load in one statement), then `write_and_release`
/// (the write and the release in one statement): what an update of one
/// session costs with cross-process leases.
pub async fn leased_rmw(storage: &dyn Storage, user: u64) {
    let leases = storage.leases().expect("leases on");
    let key = key(user);
    let owner = LeaseOwner::new();
    let lease = Lease {
        owner: &owner,
        ttl: Duration::from_secs(30),
    };
    let records = match leases
        .acquire(std::slice::from_ref(&key), lease)
        .await
        .unwrap()
    {
        LeasedLoad::Acquired(records) => records,
        busy => panic!("nobody else holds it: {busy:?}"),
    };
    let write = bump(&key, records[0].as_ref());
    let outcomes = leases
        .write_and_release(&[write], std::slice::from_ref(&key), &owner)
        .await
        .unwrap();
    assert!(matches!(outcomes[0], WriteOutcome::Written { .. }));
}

/// `load` then `write`: the same update without leases.
pub async fn plain_rmw(storage: &dyn Storage, user: u64) {
    let key = key(user);
    let records = storage.load(std::slice::from_ref(&key)).await.unwrap();
    let outcomes = storage
        .write(&[bump(&key, records[0].as_ref())])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], WriteOutcome::Written { .. }));
}
