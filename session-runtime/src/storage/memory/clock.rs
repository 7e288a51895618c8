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
//! through [`Clock::ring`].
//!
//! [`MemoryStorage::with_capacity`]: super::MemoryStorage::with_capacity

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::map_key::MapKey;
use super::{Map, RecordLock, SharedRecord};

/// How many records a bounded map keeps, and its ring.
pub(super) struct Clock {
    max_records: usize,
    ring: Mutex<Ring>,
}

/// The map's records in the order the hand visits them.
pub(super) struct Ring {
    /// One per record of the map; a place whose record left the map is
    /// empty until a new record takes it.
    places: Vec<Option<Place>>,
    /// The empty places, taken before the ring grows.
    empty: Vec<usize>,
    /// Where each record has its place, by the record's address (its
    /// allocation stays while the map holds it, and the map holds it as
    /// long as it has a place).
    by_record: HashMap<usize, usize, foldhash::fast::RandomState>,
    /// The next place to look at.
    hand: usize,
}

/// A record of the map, as its key finds it.
struct Place {
    key: MapKey,
    record: usize,
}

/// The address a record is known by in the ring.
fn address(record: &SharedRecord) -> usize {
    Arc::as_ptr(record) as usize
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
                by_record: HashMap::default(),
                hand: 0,
            }),
        }
    }

    /// The ring, locked: to be held while the map gains or loses records,
    /// before any of its shards is locked.
    pub(super) fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock()
    }

    pub(super) fn max_records(&self) -> usize {
        self.max_records
    }
}

impl Ring {
    /// How many records the map holds.
    pub(super) fn len(&self) -> usize {
        self.by_record.len()
    }

    /// Evicts records from `map` until it holds fewer than `max_records`:
    /// the hand clears the use flag of each record used since it last
    /// passed, and evicts the first that was not. A record whose key an
    /// update holds or waits for is never evicted (its update writes in
    /// it, and its lock lives there): if every record is held after two
    /// turns, the map is left over its bound until they are freed.
    pub(super) fn make_room(&mut self, map: &Map, max_records: usize) {
        // Two turns: the first may only clear flags.
        let mut steps = self.places.len().saturating_mul(2);
        while self.len() >= max_records && steps > 0 {
            steps -= 1;
            if self.hand >= self.places.len() {
                self.hand = 0;
            }
            let here = self.hand;
            self.hand += 1;
            let Some(place) = &self.places[here] else {
                continue;
            };
            if Self::evict(map, place) {
                self.empty_place(here);
            }
        }
    }

    /// Whether `place`'s record left the map: evicted now, or gone before
    /// (which the ring is never left to find: kept for safety).
    fn evict(map: &Map, place: &Place) -> bool {
        let unused = match map.get(&place.key) {
            Some(entry) if address(entry.value()) == place.record => {
                let mut stored = entry.value().lock();
                let free = stored.lock == RecordLock::Free;
                let used = std::mem::replace(&mut stored.used, false);
                free && !used
            }
            _ => return true,
        };
        // Looked at again under the shard's write lock: an update may have
        // taken the key since.
        unused
            && map
                .remove_if(&place.key, |_, record| {
                    address(record) == place.record && record.lock().lock == RecordLock::Free
                })
                .is_some()
    }

    /// Gives `record`, just put into the map at `key`, a place: the one an
    /// eviction just emptied (behind the hand: the last it reaches, so a
    /// new record has a whole turn to be used), or another empty one, or a
    /// new one at the end while the map grows.
    pub(super) fn admitted(&mut self, key: MapKey, record: &SharedRecord) {
        let record = address(record);
        let place = Some(Place { key, record });
        let at = match self.empty.pop() {
            Some(at) => {
                self.places[at] = place;
                at
            }
            None => {
                self.places.push(place);
                self.places.len() - 1
            }
        };
        self.by_record.insert(record, at);
    }

    /// Empties the place of `record`, just removed from the map.
    pub(super) fn removed(&mut self, record: &SharedRecord) {
        if let Some(&at) = self.by_record.get(&address(record)) {
            self.empty_place(at);
        }
    }

    fn empty_place(&mut self, at: usize) {
        if let Some(place) = self.places[at].take() {
            self.by_record.remove(&place.record);
            self.empty.push(at);
        }
    }
}

#[cfg(test)]
impl Ring {
    /// Panics unless the ring mirrors `map`: one place per record, found by
    /// its address, holding its key.
    #[allow(clippy::panic)]
    pub(super) fn assert_mirrors(&self, map: &Map) {
        assert_eq!(self.len(), map.len(), "one place per record");
        for entry in map.iter() {
            let Some(&at) = self.by_record.get(&address(entry.value())) else {
                panic!("{} has no place", entry.key().as_str());
            };
            let Some(place) = &self.places[at] else {
                panic!("{}'s place is empty", entry.key().as_str());
            };
            assert_eq!(place.key.as_str(), entry.key().as_str());
        }
        let empty = self.places.iter().filter(|place| place.is_none()).count();
        assert_eq!(empty, self.empty.len(), "every empty place is listed");
    }
}
