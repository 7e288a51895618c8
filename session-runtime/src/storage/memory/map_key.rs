//! The keys of the unbounded memory map, found by their text or by the
//! parts an update's key is made of: its namespace and one id. A lookup by
//! parts builds no text, and building the text (and hashing and comparing
//! it) was most of what a key cost on every update kept in memory.
//!
//! Both lookups agree because a key is hashed and compared by the same
//! split of its text: the head up to its last `:`, and the tail after it,
//! read as an [`Id`] when it is one written as `itoa` writes it. The text
//! an update's key is built from (a namespace ending in `:`, then the
//! id's digits) splits back into the same head and id.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::fast::FixedState;
use smol_str::SmolStr;

use crate::key::{Id, StorageKey};

/// How a head (or a tail that is not an id) is hashed: the same function
/// for every key of the process, so a key's parts hash as its text does.
const TEXT_HASH: FixedState = FixedState::with_seed(0x7467_2d73_6573_7369);

/// The hash of a key's head (its text up to and including its last `:`),
/// as a lookup by parts carries it, computed once per namespace.
pub(crate) fn head_hash(head: &str) -> u64 {
    TEXT_HASH.hash_one(head)
}

/// The last part of a key, after its last `:`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tail<'a> {
    /// An id, written as `itoa` writes it.
    Id(Id),
    /// Anything else (`main`, `global`, a key function's text, ...).
    Text(&'a str),
}

/// A key as the unbounded map hashes and compares it (see the module
/// docs): implemented by the map's own keys and by what a lookup gives.
pub(super) trait KeyView {
    /// The text up to and including the last `:` (empty without one).
    fn head(&self) -> &str;
    /// What follows the head.
    fn tail(&self) -> Tail<'_>;
    /// [`head_hash`] of [`KeyView::head`]: a lookup by parts knows it.
    fn head_hash(&self) -> u64 {
        head_hash(self.head())
    }
}

impl Hash for dyn KeyView + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        HashWord::of(self.head_hash(), self.tail()).hash(state);
    }
}

/// What the map's hasher is given for a key: one word, of its head's hash
/// and its tail. A lookup that knows its key's parts hashes this word
/// itself, with no call through `dyn KeyView` (see [`IdKey::hash_word`]).
pub(super) struct HashWord(u64);

impl HashWord {
    // Always inlined: a lookup by parts knows its tail is an id, and the
    // text arm folds away (as a call, 4% of a four-session update's time
    // piled up in it, reading the key's parts just written).
    #[inline(always)]
    fn of(head_hash: u64, tail: Tail<'_>) -> Self {
        let tail = match tail {
            // Two words into one: the map's own hasher mixes it again.
            Tail::Id(id) => id.magnitude() ^ u64::from(id.is_negative()).rotate_right(1),
            Tail::Text(text) => TEXT_HASH.hash_one(text).rotate_left(17),
        };
        Self(head_hash ^ tail)
    }
}

impl Hash for HashWord {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        // The tail first: it tells most keys of one namespace apart.
        self.tail() == other.tail() && self.head() == other.head()
    }
}

impl Eq for dyn KeyView + '_ {}

/// A key of the unbounded map: its text, kept as the update's key keeps it
/// (a short one inline), with where its head ends and its tail's id.
///
/// Forty bytes, packed by hand: with the record's pointer beside it, an
/// entry of the map takes 48 bytes, and fewer entries straddle two cache
/// lines than at 56 (`Option<Id>` and a `usize`), which cost a lookup a
/// miss more about every other update (`benches/profile/d1_misses.py`).
#[derive(Clone)]
pub(super) struct MapKey {
    text: SmolStr,
    /// The tail's id's magnitude, when [`MapKey::tail`] says it is an id.
    magnitude: u64,
    head_len: u32,
    tail: TailKind,
}

/// What a [`MapKey`]'s tail is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TailKind {
    Text,
    Positive,
    Negative,
}

impl MapKey {
    pub(super) fn new(text: SmolStr) -> Self {
        let head_len = head_len(&text);
        let id = Id::parse(&text[head_len..]);
        Self::of_parts(text, head_len, id)
    }

    /// The key of `text`, whose head ends at `head_len` and whose tail is
    /// `id`, if it is one.
    fn of_parts(text: SmolStr, head_len: usize, id: Option<Id>) -> Self {
        let (magnitude, tail) = match id {
            Some(id) if id.is_negative() => (id.magnitude(), TailKind::Negative),
            Some(id) => (id.magnitude(), TailKind::Positive),
            None => (0, TailKind::Text),
        };
        Self {
            text,
            magnitude,
            // A key's text is far shorter than 4 GiB.
            head_len: u32::try_from(head_len).unwrap_or(u32::MAX),
            tail,
        }
    }

    fn head_len(&self) -> usize {
        self.head_len as usize
    }

    pub(super) fn as_str(&self) -> &str {
        &self.text
    }

    pub(super) fn text(&self) -> &SmolStr {
        &self.text
    }

    /// The key as a storage key, sharing its text.
    pub(super) fn storage_key(&self) -> StorageKey {
        StorageKey::from_shared(self.text.clone(), self.head_len())
    }
}

impl KeyView for MapKey {
    // Always inlined: `IdKey::is` reads it for every key it probes.
    #[inline(always)]
    fn head(&self) -> &str {
        &self.text[..self.head_len()]
    }

    fn tail(&self) -> Tail<'_> {
        match self.tail {
            TailKind::Positive => Tail::Id(Id::unsigned(self.magnitude)),
            TailKind::Negative => Tail::Id(Id::negative(self.magnitude)),
            TailKind::Text => Tail::Text(&self.text[self.head_len()..]),
        }
    }
}

impl<'a> Borrow<dyn KeyView + 'a> for MapKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl Hash for MapKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn KeyView).hash(state);
    }
}

impl PartialEq for MapKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn KeyView) == (other as &dyn KeyView)
    }
}

impl Eq for MapKey {}

/// A lookup by a key's whole text, as the [`Storage`] methods give it.
///
/// [`Storage`]: crate::storage::Storage
pub(super) struct TextKey<'a> {
    head: &'a str,
    tail: Tail<'a>,
}

impl<'a> TextKey<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let (head, tail) = text.split_at(head_len(text));
        Self {
            head,
            tail: Id::parse(tail).map_or(Tail::Text(tail), Tail::Id),
        }
    }
}

impl KeyView for TextKey<'_> {
    fn head(&self) -> &str {
        self.head
    }

    fn tail(&self) -> Tail<'_> {
        self.tail
    }
}

/// A lookup by the parts of an update's key: a namespace (ending in `:`)
/// and one id, with the namespace's [`head_hash`].
#[derive(Clone, Copy)]
pub(crate) struct IdKey<'a> {
    pub(crate) namespace: &'a SmolStr,
    pub(crate) namespace_hash: u64,
    pub(crate) id: Id,
}

impl IdKey<'_> {
    /// The key's text, built.
    pub(crate) fn storage_key(&self) -> StorageKey {
        StorageKey::of_id(self.namespace, self.id)
    }

    /// The map's key for it, its text built (and not read back).
    pub(super) fn map_key(&self) -> MapKey {
        let text = self.storage_key().shared().clone();
        MapKey::of_parts(text, self.namespace.len(), Some(self.id))
    }

    /// What the map hashes for this key: the word its text hashes as.
    #[inline(always)]
    pub(super) fn hash_word(&self) -> HashWord {
        HashWord::of(self.namespace_hash, Tail::Id(self.id))
    }

    /// Whether `key` is this key: what the map's `dyn KeyView` comparison
    /// answers, with no call through it. Through it, each side read its
    /// head and tail in calls of their own, and the comparison cost a
    /// session kept in memory about 110 instructions (callgrind,
    /// `per_update memory-4`).
    #[inline(always)]
    pub(super) fn is(&self, key: &MapKey) -> bool {
        let id = match key.tail {
            TailKind::Positive => Id::unsigned(key.magnitude),
            TailKind::Negative => Id::negative(key.magnitude),
            TailKind::Text => return false,
        };
        id == self.id && key.head_len() == self.namespace.len() && key.head() == self.namespace
    }
}

impl KeyView for IdKey<'_> {
    fn head(&self) -> &str {
        self.namespace
    }

    fn tail(&self) -> Tail<'_> {
        Tail::Id(self.id)
    }

    fn head_hash(&self) -> u64 {
        self.namespace_hash
    }
}

/// Where the head of `text` ends: after its last `:`.
// A loop over the bytes: `str::rfind` with a `char` took a generic
// searcher and `memrchr`, over twice the cost for a key's few bytes.
fn head_len(text: &str) -> usize {
    text.bytes()
        .rposition(|byte| byte == b':')
        .map_or(0, |colon| colon + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the map hashes a key, with one seed for the whole test.
    fn hash(view: &dyn KeyView) -> u64 {
        FixedState::with_seed(1).hash_one(view)
    }

    fn id_key(namespace: &SmolStr, id: Id) -> IdKey<'_> {
        IdKey {
            namespace,
            namespace_hash: head_hash(namespace),
            id,
        }
    }

    #[test]
    fn a_key_found_by_its_parts_is_the_key_of_its_text() {
        for (namespace, id) in [
            ("counter:", Id::unsigned(42)),
            ("counter:", Id::unsigned(0)),
            ("counter:", Id::unsigned(u64::MAX)),
            ("p:123:counter:", Id::signed(-1_001_234_567_890)),
            ("counter:", Id::signed(i64::MIN)),
            (":", Id::signed(7)),
        ] {
            let namespace = SmolStr::new(namespace);
            let by_parts = id_key(&namespace, id);
            let text = by_parts.storage_key();
            let stored = MapKey::new(text.shared().clone());
            let by_text = TextKey::new(text.as_str());
            assert_eq!(stored.storage_key(), text);
            for view in [&by_parts as &dyn KeyView, &by_text] {
                assert!(view == &stored as &dyn KeyView, "{text:?}");
                assert_eq!(hash(view), hash(&stored), "{text:?}");
            }
            // The lookup that hashes and compares the parts itself agrees.
            assert!(by_parts.is(&stored), "{text:?}");
            let hash_word = FixedState::with_seed(1).hash_one(by_parts.hash_word());
            assert_eq!(hash_word, hash(&stored), "{text:?}");
        }
    }

    #[test]
    fn tails_that_are_not_ids_as_itoa_writes_them_stay_text() {
        for text in [
            "counter:007",
            "counter:-0",
            "counter:+5",
            "counter:18446744073709551616",
            "counter:-",
            "counter:4a",
            "counter:main",
            "counter:",
            "global",
            "",
        ] {
            let stored = MapKey::new(SmolStr::new(text));
            assert!(stored.tail == TailKind::Text, "{text}");
            let by_text = TextKey::new(text);
            assert!(&by_text as &dyn KeyView == &stored as &dyn KeyView);
            assert_eq!(hash(&by_text), hash(&stored));
        }
    }

    #[test]
    fn a_map_key_takes_forty_bytes() {
        assert_eq!(size_of::<MapKey>(), 40);
    }

    #[test]
    fn keys_that_differ_are_told_apart() {
        let namespace = SmolStr::new("counter:");
        let other = SmolStr::new("profile:");
        let key = |text: &str| MapKey::new(SmolStr::new(text));
        let user = id_key(&namespace, Id::unsigned(42));
        for text in [
            "counter:43",
            "counter:-42",
            "profile:42",
            "counter:042",
            "x:counter:42",
            "counte:42",
        ] {
            assert!(
                &user as &dyn KeyView != &key(text) as &dyn KeyView,
                "{text}"
            );
            assert!(!user.is(&key(text)), "{text}");
        }
        assert!(user.is(&key("counter:42")));
        assert!(!id_key(&namespace, Id::signed(-42)).is(&key("counter:42")));
        assert!(
            &id_key(&other, Id::unsigned(42)) as &dyn KeyView != &key("counter:42") as &dyn KeyView
        );
    }
}
