//! The Redis keys of a session record: the record itself, its lease, and
//! the flag that says someone waits for the lease. All three carry the
//! record's scope key as their hash tag, so they share a cluster slot.

use crate::key::StorageKey;

/// One of the keys of a record.
#[derive(Clone, Copy, Debug)]
pub(super) enum KeyOf {
    /// The record: `namespace{scope}`.
    Record,
    /// Its lease: the record's key, then `:lease`. A record key ends with
    /// its hash tag's `}`, so a lease key is never a record key.
    Lease,
    /// The flag that someone waits for the lease: the lease's key, then `:w`.
    Flag,
}

impl KeyOf {
    /// What follows the record's key in this key.
    fn suffix(self) -> &'static str {
        match self {
            KeyOf::Record => "",
            KeyOf::Lease => ":lease",
            KeyOf::Flag => ":lease:w",
        }
    }
}

/// Writes the Redis key of the record `key` into `out` (cleared first), with
/// room for the longest suffix: [`set_part`] then turns it into each of the
/// record's keys in turn, with no need to build it again.
pub(super) fn write_record_key(out: &mut String, key: &StorageKey) {
    let (namespace, scope) = (key.namespace(), key.scope_key());
    out.clear();
    out.reserve(namespace.len() + scope.len() + KeyOf::Flag.suffix().len() + 2);
    out.push_str(namespace);
    out.push('{');
    out.push_str(scope);
    out.push('}');
}

/// Appends `part`'s suffix to a record key written by [`write_record_key`]
/// (`record_len` long), replacing any suffix written before.
pub(super) fn set_part(out: &mut String, record_len: usize, part: KeyOf) {
    out.truncate(record_len);
    out.push_str(part.suffix());
}

/// The Redis key of a record: the scope key becomes the hash tag.
pub(super) fn redis_key(key: &StorageKey) -> String {
    let mut out = String::new();
    write_record_key(&mut out, key);
    out
}

/// The key of a record's lease, from the record's Redis key.
pub(super) fn lease_key(record: &str) -> String {
    [record, KeyOf::Lease.suffix()].concat()
}
