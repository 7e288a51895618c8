//! One in-process read-modify-write of a session with no framework
//! around it, in each design an in-process engine could have: what the
//! `floors` example counts with callgrind and the paired bench times
//! against teloxide. The designs are listed in `floors.rs`.
//!
//! (`dead_code` is allowed as in `workload/`: each bench target uses a part.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    dead_code
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use parking_lot::Mutex;
use smallvec::SmallVec;
use smol_str::SmolStr;

/// The workload's session value.
use crate::workload::One as Value;

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
        finish(&self.finished);
    }
}

/// Marks an update finished, as a commit does first.
fn finish(finished: &AtomicBool) {
    assert!(!finished.swap(true, Ordering::AcqRel), "committed once");
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
            let slot = take_held(records, &text(namespace, user), state.id);
            slots.push(Arc::new(Mutex::new(slot)));
        }
    }
    handle(&state, namespaces.len());
    let mut slots = state.slots.lock();
    for slot in slots.iter() {
        write_held(&mut slot.try_lock().unwrap());
    }
    slots.clear();
}

/// Takes `key` for `update` in its record, shared with the map, and copies
/// its value into a slot that holds the record.
fn take_held(records: &HeldRecords, key: &str, update: u64) -> HeldSlot {
    let record = shared(records, key);
    let (value, version) = {
        let mut stored = record.lock();
        assert!(stored.holder.is_none(), "the key is free");
        stored.holder = Some(update);
        (stored.value.clone(), stored.version)
    };
    HeldSlot {
        record,
        value,
        version,
        touched: false,
    }
}

/// Writes a slot's value into the record it holds, if it changed, and
/// frees the key.
fn write_held(slot: &mut HeldSlot) {
    let value = std::mem::take(&mut slot.value);
    let mut stored = slot.record.lock();
    if slot.touched {
        assert_eq!(stored.version, slot.version, "no other writer");
        stored.value = value;
        stored.version += 1;
    }
    stored.holder = None;
}

/// An update's state whose slots are fixed once its eager sessions are
/// taken (see [`borrowed`]): read with no lock of the list.
struct FixedUpdate {
    _manager: Arc<()>,
    id: u64,
    slots: SmallVec<[Box<Mutex<HeldSlot>>; 4]>,
    finished: AtomicBool,
}

/// [`held`] with the update's slots fixed before the handler runs and each
/// slot boxed rather than shared: an accessor finds its slot with no lock
/// of the list and borrows it through a guard tied to the update (no
/// reference counted), and the commit frees each key as it writes it.
fn borrowed(records: &HeldRecords, manager: &Arc<()>, namespaces: &[&str], user: u64, update: u64) {
    let mut slots = SmallVec::new();
    for namespace in namespaces {
        let slot = take_held(records, &text(namespace, user), update);
        slots.push(Box::new(Mutex::new(slot)));
    }
    let state = Arc::new(FixedUpdate {
        _manager: Arc::clone(manager),
        id: update,
        slots,
        finished: AtomicBool::new(false),
    });
    for index in 0..namespaces.len() {
        black_box(&state).slots[index].try_lock().unwrap().change();
    }
    finish(&state.finished);
    for slot in state.slots.iter() {
        write_held(&mut slot.try_lock().unwrap());
    }
    black_box(state.id);
}

impl Change for Working {
    fn change(&mut self) {
        self.touched = true;
        self.value.apple += 1;
    }
}

/// A user's four sessions in one record, with the key's lock in it.
#[derive(Default)]
struct Group {
    values: [Value; 4],
    versions: [u64; 4],
    /// The update holding the user's sessions.
    holder: Option<u64>,
}

type Groups = DashMap<String, Arc<Mutex<Group>>, RandomState>;

/// [`held`] over records that each keep all of a user's sessions: one
/// access to the map and one lock of the record take the update's
/// sessions, one more lock writes them back; a slot is still allocated per
/// session and borrowed through an owned guard.
fn grouped_held(groups: &Groups, manager: &Arc<()>, sessions: usize, user: u64, update: u64) {
    let state = Update::<Arc<Mutex<Working>>>::new(manager, update);
    let group = shared(groups, &text("", user));
    {
        let mut stored = group.lock();
        assert!(stored.holder.is_none(), "the key is free");
        stored.holder = Some(state.id);
        let mut slots = state.slots.lock();
        for index in 0..sessions {
            slots.push(Arc::new(Mutex::new(Working {
                value: stored.values[index].clone(),
                version: stored.versions[index],
                touched: false,
            })));
        }
    }
    handle(&state, sessions);
    let mut slots = state.slots.lock();
    {
        let mut stored = group.lock();
        for (index, slot) in slots.iter().enumerate() {
            let mut slot = slot.try_lock().unwrap();
            if slot.touched {
                assert_eq!(stored.versions[index], slot.version, "no other writer");
                stored.values[index] = std::mem::take(&mut slot.value);
                stored.versions[index] += 1;
            }
        }
        stored.holder = None;
    }
    slots.clear();
}

/// A design's read-modify-write, of one session or of four of one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    Table,
    Fused,
    Fused4,
    Grouped4,
    Runtime,
    Runtime4,
    Cell,
    Cell4,
    Held,
    Held4,
    GroupedHeld,
    GroupedHeld4,
    Borrowed,
    Borrowed4,
}

impl FromStr for Design {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Ok(match name {
            "table" => Design::Table,
            "fused" => Design::Fused,
            "fused-4" => Design::Fused4,
            "grouped-4" => Design::Grouped4,
            "runtime" => Design::Runtime,
            "runtime-4" => Design::Runtime4,
            "cell" => Design::Cell,
            "cell-4" => Design::Cell4,
            "held" => Design::Held,
            "held-4" => Design::Held4,
            "grouped-held" => Design::GroupedHeld,
            "grouped-held-4" => Design::GroupedHeld4,
            "borrowed" => Design::Borrowed,
            "borrowed-4" => Design::Borrowed4,
            other => return Err(format!("unknown design `{other}`; {}", Design::NAMES)),
        })
    }
}

impl Design {
    /// Every design's name, as [`Design::from_str`] reads it.
    pub const NAMES: &str = "table|fused|fused-4|grouped-4|runtime|runtime-4|cell|cell-4\
                             |held|held-4|grouped-held|grouped-held-4|borrowed|borrowed-4";
}

/// The records of every design, empty at first.
#[derive(Default)]
pub struct Floors {
    records: Map<String, Value>,
    groups: Map<String, [Value; 4]>,
    locks: Mutex<HashMap<SmolStr, Held, RandomState>>,
    cells: Cells,
    held_records: HeldRecords,
    held_groups: Groups,
    manager: Arc<()>,
}

impl Floors {
    /// One update of `user` in `design`.
    pub fn run(&self, design: Design, user: u64, update: u64) {
        let (records, manager) = (&self.records, &self.manager);
        match design {
            Design::Table => table(records, &self.locks, user, update),
            Design::Fused => {
                let key = text(NAMESPACES[0], user);
                let (mut value, version) = claim(records, &key, update);
                value.apple += 1;
                write_back(records, &key, value, version);
            }
            Design::Fused4 => {
                let copies = NAMESPACES.map(|namespace| {
                    let key = text(namespace, user);
                    let (value, version) = claim(records, &key, update);
                    (key, value, version)
                });
                for (key, mut value, version) in copies {
                    value.apple += 1;
                    write_back(records, &key, value, version);
                }
            }
            Design::Grouped4 => {
                let key = text("", user);
                let (mut values, version) = claim(&self.groups, &key, update);
                for value in &mut values {
                    value.apple += 1;
                }
                write_back(&self.groups, &key, values, version);
            }
            Design::Runtime => runtime(records, manager, &NAMESPACES[..1], user, update),
            Design::Runtime4 => runtime(records, manager, &NAMESPACES, user, update),
            Design::Cell => cell(&self.cells, manager, &NAMESPACES[..1], user, update),
            Design::Cell4 => cell(&self.cells, manager, &NAMESPACES, user, update),
            Design::Held => held(&self.held_records, manager, &NAMESPACES[..1], user, update),
            Design::Held4 => held(&self.held_records, manager, &NAMESPACES, user, update),
            Design::GroupedHeld => grouped_held(&self.held_groups, manager, 1, user, update),
            Design::GroupedHeld4 => grouped_held(&self.held_groups, manager, 4, user, update),
            Design::Borrowed => {
                borrowed(&self.held_records, manager, &NAMESPACES[..1], user, update)
            }
            Design::Borrowed4 => borrowed(&self.held_records, manager, &NAMESPACES, user, update),
        }
    }

    /// How many records each map holds (for `black_box`, so no design's
    /// work is optimized away).
    pub fn sizes(&self) -> [usize; 5] {
        [
            self.records.len(),
            self.groups.len(),
            self.cells.len(),
            self.held_records.len(),
            self.held_groups.len(),
        ]
    }
}
