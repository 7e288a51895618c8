//! The bound of [`MemoryStorage::with_capacity`]: at most so many records in
//! the map, the one unused the longest evicted to make room for a new one,
//! by the CLOCK algorithm (a second chance for each record used since the
//! hand last passed it: see `Stored::used`).
//!
//! The map's records stay where they are: the bounded store is the
//! unbounded one with a ring of its keys beside it, so that an update takes
//! its key and copies its value in one access to the map and writes it
//! back in the record it took, as in the unbounded store. Being used costs
//! a record one flag set under the lock its update takes anyway
//! (`Stored::used`): no shared list to reorder on every read, which is what
//! an exact LRU would need, and what made the cache this replaced (moka)
//! cost 2.5 times teloxide's update.
//!
//! The ring changes only when the map gains or loses a record, under its
//! lock, which is taken before any of the map's shards (and a shard's
//! before a record's): every insertion and removal of a bounded map goes
//! through [`Clock::ring`]. So a place's key finds the place's record: a
//! key's record leaves the map, and its place, before a new one comes.
//!
//! [`MemoryStorage::with_capacity`]: super::MemoryStorage::with_capacity

#[cfg(test)]
use std::hash::BuildHasher;

use parking_lot::{Mutex, MutexGuard};

use super::map_key::MapKey;
use super::{Map, RecordLock, SharedRecord};

/// What the hand did at a place.
enum Visit {
    /// The record stays: used since the hand last passed (its flag now
    /// cleared), or its key is held.
    Kept,
    /// Evicted: the record, out of the map.
    Evicted(SharedRecord),
    /// The record had left the map already (which the ring is never left
    /// to find: kept for safety).
    Gone,
}

/// What [`Ring::make_room`] evicted.
pub(super) struct Evicted {
    pub(super) count: u64,
    /// The last record evicted: unless an update still has it (one that
    /// freed its key and has not dropped its slot yet), the new record is
    /// made in its allocation rather than a new one.
    pub(super) last: Option<SharedRecord>,
}

/// How many records a bounded map keeps, and its ring.
pub(super) struct Clock {
    max_records: usize,
    ring: Mutex<Ring>,
}

/// The keys of the map's records, in the order the hand visits them. Each
/// record knows its place (`Stored::place`), for its removal to empty it.
pub(super) struct Ring {
    /// One per record of the map; a place whose record left the map is
    /// empty until a new record takes it.
    places: Vec<Option<Placed>>,
    /// The empty places, taken before the ring grows.
    empty: Vec<u32>,
    /// How many places are taken: how many records the map holds.
    taken: usize,
    /// The next place to look at.
    hand: usize,
}

/// The key of a record in its place, with the map's hash of it: the hand
/// finds and evicts the record with no hashing of its key's text (two
/// hashes of it were a tenth of an update that evicts, `per_update
/// bounded-full`).
struct Placed {
    key: MapKey,
    hash: u64,
}

impl Clock {
    /// A bound of `max_records` (at least one: a map that kept none could
    /// not hold an update's key).
    pub(super) fn new(max_records: u64) -> Self {
        Self {
            max_records: usize::try_from(max_records).unwrap_or(usize::MAX).max(1),
            ring: Mutex::new(Ring {
                places: Vec::new(),
                empty: Vec::new(),
                taken: 0,
                hand: 0,
            }),
        }
    }

    /// The ring, locked: to be held while the map gains or loses records,
    /// before any of its shards is locked.
    pub(super) fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock()
    }

    /// How many records the map keeps, but for held ones.
    pub(super) fn max_records(&self) -> usize {
        self.max_records
    }
}

impl Ring {
    /// Evicts records from `map` until it holds fewer than `max_records`:
    /// the hand clears the use flag of each record used since it last
    /// passed, and evicts the first that was not. A record whose key an
    /// update holds or waits for is never evicted (its update writes in
    /// it, and its lock lives there): if every record is held after two
    /// turns, the map is left over its bound until they are freed.
    /// Answers how many records it evicted, and the last of them, for the
    /// new record to take its allocation over.
    pub(super) fn make_room(&mut self, map: &Map, max_records: usize) -> Evicted {
        let mut evicted = Evicted {
            count: 0,
            last: None,
        };
        // Two turns: the first may only clear flags.
        let mut steps = self.places.len().saturating_mul(2);
        while self.taken >= max_records && steps > 0 {
            steps -= 1;
            if self.hand >= self.places.len() {
                self.hand = 0;
            }
            let here = self.hand;
            self.hand += 1;
            let Some(placed) = &self.places[here] else {
                continue;
            };
            match Self::visit(map, placed) {
                Visit::Kept => {}
                Visit::Evicted(record) => {
                    evicted.count += 1;
                    evicted.last = Some(record);
                    self.empty(here);
                }
                Visit::Gone => self.empty(here),
            }
        }
        evicted
    }

    /// What the hand does with the record `placed`: clears its use flag,
    /// or evicts it. Found in its shard by the hash its place keeps, as
    /// `DashMap::get` and `DashMap::remove_if` would find it by hashing it.
    fn visit(map: &Map, placed: &Placed) -> Visit {
        let Placed { key, hash } = placed;
        let shard = &map.shards()[map.determine_shard(*hash as usize)];
        let unused = match shard.read().get(*hash, |(found, _)| found == key) {
            Some((_, record)) => {
                let mut stored = record.get().lock();
                let free = stored.lock == RecordLock::Free;
                let used = std::mem::replace(&mut stored.used, false);
                free && !used
            }
            None => return Visit::Gone,
        };
        if !unused {
            return Visit::Kept;
        }
        // Looked at again under the shard's write lock: an update may have
        // taken the key since. The record is let go once the lock is.
        let evicted = shard.write().remove_entry(*hash, |(found, record)| {
            found == key && record.get().lock().lock == RecordLock::Free
        });
        match evicted {
            Some((_, record)) => Visit::Evicted(record.into_inner()),
            None => Visit::Kept,
        }
    }

    /// A place for a record about to be put into the map at `key`: the
    /// one an eviction just emptied (behind the hand: the last it reaches,
    /// so a new record has a whole turn to be used), or another empty one,
    /// or a new one at the end while the map grows. The record keeps it.
    pub(super) fn take_place(&mut self, key: MapKey, hash: u64) -> u32 {
        self.taken += 1;
        let placed = Some(Placed { key, hash });
        match self.empty.pop() {
            Some(at) => {
                self.places[at as usize] = placed;
                at
            }
            None => {
                self.places.push(placed);
                // A map holds far fewer than 4 billion records.
                u32::try_from(self.places.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    /// Empties the place `at` of a record just removed from the map.
    pub(super) fn empty_place(&mut self, at: u32) {
        self.empty(at as usize);
    }

    fn empty(&mut self, at: usize) {
        if let Some(place) = self.places.get_mut(at)
            && place.take().is_some()
        {
            self.taken -= 1;
            // At most as many empty places as places: well within `u32`.
            self.empty.push(u32::try_from(at).unwrap_or(u32::MAX));
        }
    }
}

#[cfg(test)]
impl Ring {
    /// Panics unless the ring mirrors `map`: one place per record, the
    /// record's own, holding its key.
    #[allow(clippy::panic)]
    pub(super) fn assert_mirrors(&self, map: &Map) {
        assert_eq!(self.taken, map.len(), "one place per record");
        for entry in map.iter() {
            let at = entry.value().lock().place as usize;
            let Some(Some(placed)) = self.places.get(at) else {
                panic!("{}'s place is empty", entry.key().as_str());
            };
            assert_eq!(placed.key.as_str(), entry.key().as_str());
            assert_eq!(placed.hash, map.hasher().hash_one(entry.key()));
        }
        let empty = self.places.iter().filter(|place| place.is_none()).count();
        assert_eq!(empty, self.empty.len(), "every empty place is listed");
    }
}
