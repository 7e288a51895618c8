//! What one in-process read-modify-write of a session costs with no
//! framework around it: the floor of the memory storage's design (each
//! key's lock kept in its record), of the design it replaced (a lock table
//! beside the records), of one record per user, of the whole update as
//! the runtime is built, and of a record that is its updates' slot. Instructions are
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
//! - `fused`: the key's lock kept in its record, as the memory storage did
//!   before its records were shared cells: one map access takes the key
//!   and copies the value, one writes the value back and frees the key (the
//!   runtime also allocates the update's slot, which this floor does not);
//! - `fused-4`: four session types of one user, four fused records;
//! - `grouped-4`: the same four sessions in one record per user;
//! - `runtime`, `runtime-4`: the design before `held` with the runtime's
//!   own parts and none of its glue: the update's state (an `Arc` with a locked slot
//!   list), a slot allocated per session, one borrow per session through an
//!   owned guard, the commit writing back through the map;
//! - `cell`, `cell-4`: the record is its updates' slot: the working copy is
//!   allocated once per record and used by every update of the key, and
//!   the commit writes into the record it holds, with no second map access;
//! - `held`, `held-4`: half of `cell`: the update holds its records (shared
//!   cells of the map) from claim to commit, so the commit writes into the
//!   record it holds with no second map access, but its working copy is
//!   allocated per session and update as in `runtime` (no copy kept beside
//!   each stored value). This is the memory storage's design now: the
//!   distance to `per_update memory` is the runtime's glue (type erasure,
//!   dynamic calls, error and metrics plumbing, values moved between
//!   layers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use parking_lot::Mutex;
use smallvec::SmallVec;
use smol_str::SmolStr;

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
    touched: bool,
}

const NAMESPACES: [&str; 4] = ["one:", "two:", "three:", "four:"];

/// The key, joined as the runtime joins a `user` key.
fn text(namespace: &str, user: u64) -> SmolStr {
    SmolStr::from_iter([namespace, itoa::Buffer::new().format(user)])
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
        touched: false,
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

/// An update's state, as the runtime keeps it and no more: the manager it
/// came from, its id, the list of its slots, whether it finished.
struct Update<S> {
    _manager: Arc<()>,
    id: u64,
    slots: Mutex<SmallVec<[S; 4]>>,
    finished: AtomicBool,
}

impl<S> Update<S> {
    fn new(manager: &Arc<()>, id: u64) -> Arc<Self> {
        Arc::new(Self {
            _manager: Arc::clone(manager),
            id,
            slots: Mutex::new(SmallVec::new()),
            finished: AtomicBool::new(false),
        })
    }

    /// Marks the update finished, as a commit does first.
    fn finish(&self) {
        assert!(
            !self.finished.swap(true, Ordering::AcqRel),
            "committed once"
        );
    }
}

/// A session the workload's handler changes: a read-modify-write.
trait Change {
    fn change(&mut self);
}

impl Change for Slot {
    fn change(&mut self) {
        self.touched = true;
        self.value.apple += 1;
    }
}

/// The handler's part of an update: each of its `sessions` borrowed
/// through an owned guard (a `SessionRef`) and changed; then the update is
/// finished, as its commit starts.
fn handle<S: Change>(state: &Update<Arc<Mutex<S>>>, sessions: usize) {
    for index in 0..sessions {
        state.slots.lock()[index].try_lock_arc().unwrap().change();
    }
    state.finish();
}

/// The design before [`held`] with none of the runtime's glue: the
/// update's state and each slot allocated, the keys taken and the values
/// copied in one access to their records, one borrow per session through
/// an owned guard (a `SessionRef`), and the commit writing each value back
/// and freeing its key in one more access.
fn runtime(
    records: &Map<String, Value>,
    manager: &Arc<()>,
    namespaces: &[&str],
    user: u64,
    update: u64,
) {
    let state = Update::<Arc<Mutex<Slot>>>::new(manager, update);
    {
        let mut slots = state.slots.lock();
        for namespace in namespaces {
            let key = text(namespace, user);
            let (value, version) = claim(records, &key, state.id);
            let slot = Slot {
                key,
                value,
                version,
                touched: false,
            };
            slots.push(Arc::new(Mutex::new(slot)));
        }
    }
    handle(&state, namespaces.len());
    let mut slots = state.slots.lock();
    for slot in slots.iter() {
        let mut slot = slot.try_lock().unwrap();
        if slot.touched {
            let value = std::mem::take(&mut slot.value);
            write_back(records, &slot.key, value, slot.version);
        }
    }
    slots.clear();
}

/// A record that is its updates' slot as well: the stored value with its
/// key's lock, and the working copy an update borrows, allocated once per
/// record and used again by every update of the key.
#[derive(Default)]
struct Cell {
    stored: Mutex<Record<Value>>,
    working: Arc<Mutex<Working>>,
}

/// An update's copy of a cell's value.
#[derive(Default)]
struct Working {
    value: Value,
    version: u64,
    touched: bool,
}

type Cells = DashMap<String, Arc<Cell>, RandomState>;

/// The record at `key`, shared with the map; a new one if there was none.
fn shared<V: Default>(map: &DashMap<String, Arc<V>, RandomState>, key: &str) -> Arc<V> {
    match map.get(key) {
        Some(record) => Arc::clone(&record),
        None => Arc::clone(&map.entry(key.to_owned()).or_default()),
    }
}

/// The design where the record is the slot: one access to the map per key
/// (to find the cell; the commit goes to the cell itself), no allocation but
/// the update's state; otherwise as [`runtime`].
fn cell(cells: &Cells, manager: &Arc<()>, namespaces: &[&str], user: u64, update: u64) {
    let state = Update::<Arc<Cell>>::new(manager, update);
    {
        let mut slots = state.slots.lock();
        for namespace in namespaces {
            let key = text(namespace, user);
            let cell = shared(cells, &key);
            {
                let mut stored = cell.stored.lock();
                assert!(stored.holder.is_none(), "the key is free");
                stored.holder = Some(state.id);
                let mut working = cell.working.try_lock().unwrap();
                working.value = stored.value.clone();
                working.version = stored.version;
                working.touched = false;
            }
            slots.push(cell);
        }
    }
    for index in 0..namespaces.len() {
        let mut session = state.slots.lock()[index].working.try_lock_arc().unwrap();
        session.touched = true;
        session.value.apple += 1;
    }
    state.finish();
    let mut slots = state.slots.lock();
    for cell in slots.iter() {
        let mut working = cell.working.try_lock().unwrap();
        let mut stored = cell.stored.lock();
        if working.touched {
            assert_eq!(stored.version, working.version, "no other writer");
            stored.value = std::mem::take(&mut working.value);
            stored.version += 1;
        }
        stored.holder = None;
    }
    slots.clear();
}

/// A record the map shares with the updates holding it (see [`held`]).
type HeldRecords = DashMap<String, Arc<Mutex<Record<Value>>>, RandomState>;

/// An update's slot in [`held`]: its copy, and the record it came from.
struct HeldSlot {
    record: Arc<Mutex<Record<Value>>>,
    value: Value,
    version: u64,
    touched: bool,
}

impl Change for HeldSlot {
    fn change(&mut self) {
        self.touched = true;
        self.value.apple += 1;
    }
}

/// The memory storage's design now: [`runtime`]'s, where the update holds
/// the records it took, so its commit writes into each with no second map
/// access.
fn held(records: &HeldRecords, manager: &Arc<()>, namespaces: &[&str], user: u64, update: u64) {
    let state = Update::<Arc<Mutex<HeldSlot>>>::new(manager, update);
    {
        let mut slots = state.slots.lock();
        for namespace in namespaces {
            let key = text(namespace, user);
            let record = shared(records, &key);
            let (value, version) = {
                let mut stored = record.lock();
                assert!(stored.holder.is_none(), "the key is free");
                stored.holder = Some(state.id);
                (stored.value.clone(), stored.version)
            };
            slots.push(Arc::new(Mutex::new(HeldSlot {
                record,
                value,
                version,
                touched: false,
            })));
        }
    }
    handle(&state, namespaces.len());
    let mut slots = state.slots.lock();
    for slot in slots.iter() {
        let mut slot = slot.try_lock().unwrap();
        let value = std::mem::take(&mut slot.value);
        let mut stored = slot.record.lock();
        if slot.touched {
            assert_eq!(stored.version, slot.version, "no other writer");
            stored.value = value;
            stored.version += 1;
        }
        stored.holder = None;
    }
    slots.clear();
}

fn main() {
    let usage = "usage: floors <table|fused|fused-4|grouped-4|runtime|runtime-4|cell|cell-4\
                 |held|held-4> <updates>";
    let mut args = std::env::args().skip(1);
    let workload = args.next().expect(usage);
    let updates: u64 = args.next().and_then(|n| n.parse().ok()).expect(usage);
    let records: Map<String, Value> = DashMap::default();
    let groups: Map<String, [Value; 4]> = DashMap::default();
    let locks = Mutex::default();
    let cells = Cells::default();
    let held_records = HeldRecords::default();
    let manager = Arc::new(());
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
            "runtime" => runtime(&records, &manager, &NAMESPACES[..1], user, update),
            "runtime-4" => runtime(&records, &manager, &NAMESPACES, user, update),
            "cell" => cell(&cells, &manager, &NAMESPACES[..1], user, update),
            "cell-4" => cell(&cells, &manager, &NAMESPACES, user, update),
            "held" => held(&held_records, &manager, &NAMESPACES[..1], user, update),
            "held-4" => held(&held_records, &manager, &NAMESPACES, user, update),
            _ => panic!("{usage}"),
        }
    }
    black_box((records.len(), groups.len(), cells.len(), held_records.len()));
}
