//! What one in-process read-modify-write of a session costs with no
//! framework around it: the floor of the memory storage's design (each
//! key's lock kept in its record), of the design it replaced (a lock table
//! beside the records), and of one record per user. Instructions are
//! counted as `per_update`'s are, so the two compare:
//!
//! ```text
//! cargo build --release -p tg-session-benches --example floors
//! valgrind --tool=callgrind target/release/examples/floors fused 20000
//! valgrind --tool=callgrind target/release/examples/floors fused 40000
//! ```
//!
//! Workloads, cycling over 1,000 users as `per_update` does:
//!
//! - `table`: what the runtime did for one session before the memory
//!   storage kept locks in records, and no more: build the key, insert it
//!   in a lock table (a mutex over a hash map), copy the stored value out of
//!   a sharded map into an allocated slot, write it back under a version
//!   check, remove the key from the table;
//! - `fused`: the key's lock kept in its record, as the memory storage does
//!   now: one map access takes the key and copies the value, one writes
//!   the value back and frees the key (the runtime also allocates the
//!   update's slot, which this floor does not);
//! - `fused-4`: four session types of one user, four fused records;
//! - `grouped-4`: the same four sessions in one record per user.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use dashmap::DashMap;
use foldhash::fast::RandomState;
use parking_lot::Mutex;
use smol_str::{SmolStr, SmolStrBuilder};

mod workload;
/// The workload's session value.
use workload::One as Value;

/// A record with its key's lock in it.
#[derive(Default)]
struct Record<V> {
    value: V,
    version: u64,
    /// The update holding the key.
    holder: Option<u64>,
}

/// A lock table entry, the size of the runtime's.
#[expect(dead_code, reason = "kept for its size: the table moves it in and out")]
struct Held {
    users: usize,
    holder: Option<(u64, &'static str, &'static str)>,
    contended: Option<Box<u64>>,
}

/// An update's copy of one session, as a slot keeps it.
struct Slot {
    key: SmolStr,
    value: Value,
    version: u64,
}

const NAMESPACES: [&str; 4] = ["one:", "two:", "three:", "four:"];

fn text(namespace: &str, user: u64) -> SmolStr {
    let mut out = SmolStrBuilder::new();
    out.push_str(namespace);
    out.push_str(itoa::Buffer::new().format(user));
    out.finish()
}

type Map<K, V> = DashMap<K, Record<V>, RandomState>;

/// Takes `key` for `update` and copies its value.
fn claim<V: Clone + Default>(map: &Map<String, V>, key: &str, update: u64) -> (V, u64) {
    let mut record = match map.get_mut(key) {
        Some(record) => record,
        None => map.entry(key.to_owned()).or_default(),
    };
    assert!(record.holder.is_none(), "the key is free");
    record.holder = Some(update);
    (record.value.clone(), record.version)
}

/// Writes `value` over the version it was copied from and frees `key`.
fn write_back<V>(map: &Map<String, V>, key: &str, value: V, version: u64) {
    let mut record = map.get_mut(key).unwrap();
    assert_eq!(record.version, version, "no other writer");
    record.value = value;
    record.version += 1;
    record.holder = None;
}

fn table(
    records: &Map<String, Value>,
    locks: &Mutex<HashMap<SmolStr, Held, RandomState>>,
    user: u64,
    update: u64,
) {
    let key = text(NAMESPACES[0], user);
    let taken = Held {
        users: 1,
        holder: Some((update, "one", "Value")),
        contended: None,
    };
    assert!(locks.lock().insert(key.clone(), taken).is_none());
    let (value, version) = match records.get(key.as_str()) {
        Some(record) => (record.value.clone(), record.version),
        None => (Value::default(), 0),
    };
    let slot = Arc::new(Mutex::new(Slot {
        key,
        value,
        version,
    }));
    slot.lock().value.apple += 1;
    let mut slot = slot.lock();
    let value = std::mem::take(&mut slot.value);
    match records.get_mut(slot.key.as_str()) {
        Some(mut record) => {
            assert_eq!(record.version, slot.version);
            record.value = value;
            record.version += 1;
        }
        None => {
            let record = Record {
                value,
                version: 1,
                holder: None,
            };
            records.insert(slot.key.to_string(), record);
        }
    }
    black_box(locks.lock().remove(&slot.key));
}

fn main() {
    let usage = "usage: floors <table|fused|fused-4|grouped-4> <updates>";
    let mut args = std::env::args().skip(1);
    let workload = args.next().expect(usage);
    let updates: u64 = args.next().and_then(|n| n.parse().ok()).expect(usage);
    let records: Map<String, Value> = DashMap::default();
    let groups: Map<String, [Value; 4]> = DashMap::default();
    let locks = Mutex::default();
    for update in 0..updates {
        let user = black_box(update % 1_000 + 1);
        match workload.as_str() {
            "table" => table(&records, &locks, user, update),
            "fused" => {
                let key = text(NAMESPACES[0], user);
                let (mut value, version) = claim(&records, &key, update);
                value.apple += 1;
                write_back(&records, &key, value, version);
            }
            "fused-4" => {
                let copies = NAMESPACES.map(|namespace| {
                    let key = text(namespace, user);
                    let (value, version) = claim(&records, &key, update);
                    (key, value, version)
                });
                for (key, mut value, version) in copies {
                    value.apple += 1;
                    write_back(&records, &key, value, version);
                }
            }
            "grouped-4" => {
                let key = text("", user);
                let (mut values, version) = claim(&groups, &key, update);
                for value in &mut values {
                    value.apple += 1;
                }
                write_back(&groups, &key, values, version);
            }
            _ => panic!("{usage}"),
        }
    }
    black_box((records.len(), groups.len()));
}
