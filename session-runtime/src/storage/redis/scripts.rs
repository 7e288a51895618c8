//! The Lua scripts behind every load with leases, every write and every
//! renewal: each call of the storage is one `EVALSHA` of one of them (one per
//! slot on a cluster), so a check and the change it guards are atomic.
//!
//! Every key a script touches is passed in `KEYS` (a record, its lease, the
//! lease's wait flag: all with the record's hash tag, so in its slot), as
//! Redis Cluster requires. The release channel comes in `ARGV[1]` so its name
//! lives in one place (the Rust constant).

use std::sync::LazyLock;

use redis::Script;

/// Gives back `owner`'s lease `lease` and wakes whoever waits for it.
///
/// A lease another owner holds is left alone (ours ran out and was taken;
/// its waiters wait for that owner). A free one may still have waiters whose
/// poll has not fired yet: they are woken too. The wait flag (set by a busy
/// `acquire`) keeps releases nobody waits for from publishing anything.
const RELEASE_FUNCTION: &str = r"
local function release(lease, flag, owner, channel)
  local holder = redis.call('GET', lease)
  if holder == owner then
    redis.call('DEL', lease)
  elseif holder then
    return
  end
  if redis.call('DEL', flag) == 1 then
    redis.call('PUBLISH', channel, lease)
  end
end
";

/// Takes the leases of a batch and reads its records, all or none.
///
/// `KEYS[3i-2..=3i]`: record, lease, wait flag of key `i`.
/// `ARGV`: channel, owner, lease TTL in milliseconds.
///
/// Returns `{1, {record or false, …}}` when every lease is now `owner`'s
/// (records read after the leases were set), or `{0, i, pttl}` when key `i`
/// (0-based) is leased by another owner for `pttl` more milliseconds: then
/// that key's wait flag is set (so its release is published) and no lease of
/// the batch is left to `owner`. A record key holding another type reads as
/// absent, as `MGET` does.
const ACQUIRE_BODY: &str = r"
local channel, owner, ttl = ARGV[1], ARGV[2], ARGV[3]
local n = #KEYS / 3
for i = 1, n do
  local lease = KEYS[3 * i - 1]
  local holder = redis.call('GET', lease)
  if holder and holder ~= owner then
    redis.call('SET', KEYS[3 * i], '1', 'PX', ttl)
    local left = redis.call('PTTL', lease)
    for j = 1, n do
      release(KEYS[3 * j - 1], KEYS[3 * j], owner, channel)
    end
    return {0, i - 1, left}
  end
end
local records = {}
for i = 1, n do
  redis.call('SET', KEYS[3 * i - 1], owner, 'PX', ttl)
  local record = redis.pcall('GET', KEYS[3 * i - 2])
  if type(record) ~= 'string' then
    record = false
  end
  records[i] = record
end
return {1, records}
";

/// The conditional batch write, fenced by leases, then the releases.
///
/// `ARGV[1..=3]`: channel, owner (`""`: no fencing, a plain
/// [`Storage::write`](crate::storage::Storage::write)), number of writes `w`.
/// Write `i` (1-based): `KEYS[2i-1]` its record, `KEYS[2i]` its lease, and
/// `ARGV[3i+1..=3i+3]`:
/// - the condition: `""` (nothing may be stored), the expected 8-byte version
///   header, or `"del"` (delete whatever is there);
/// - the record: for an update its full bytes (header included, the client
///   knows the next version), for a new record the codec's bytes only (the
///   script puts the version in front);
/// - the TTL in milliseconds, `"0"` for none.
///
/// Then `KEYS[2w+2j-1]`, `KEYS[2w+2j]`: lease and wait flag of release `j`.
///
/// Returns one item per write: the 8-byte header written, `0` deleted, `-1`
/// a newer version (or a foreign value) is stored, `-2` the record read is
/// gone and the write has a TTL (it most likely expired), `-3` another owner
/// holds the lease.
///
/// A new record's version is the server's clock in microseconds (exact in a
/// Lua double until the year 2255), one more for each further new record of
/// the batch: a key re-created after a delete never gets a version it had
/// before, unless its old record was written more than once per microsecond
/// of its life. `GETRANGE` reads only the header; on a key of another type it
/// fails, and `pcall` turns that into a conflict so a foreign value is never
/// replaced.
const WRITE_BODY: &str = r"
local channel, owner = ARGV[1], ARGV[2]
local writes = tonumber(ARGV[3])
local out = {}
local last = nil
local function new_version()
  if last then
    last = last + 1
  else
    local now = redis.call('TIME')
    last = tonumber(now[1]) * 1000000 + tonumber(now[2])
  end
  return last
end
for i = 1, writes do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local cond, record, ttl = ARGV[3 * i + 1], ARGV[3 * i + 2], ARGV[3 * i + 3]
  local holder = false
  if owner ~= '' then
    holder = redis.call('GET', lease)
  end
  if holder and holder ~= owner then
    out[i] = -3
  elseif cond == 'del' then
    redis.call('DEL', key)
    out[i] = 0
  else
    local exists = redis.call('EXISTS', key) == 1
    local fits
    if cond == '' then
      fits = not exists
    elseif not exists then
      fits = false
    else
      fits = redis.pcall('GETRANGE', key, 0, 7) == cond
    end
    if fits then
      if cond == '' then
        record = struct.pack('>I8', new_version()) .. record
      end
      if ttl == '0' then
        redis.call('SET', key, record)
      else
        redis.call('SET', key, record, 'PX', ttl)
      end
      out[i] = string.sub(record, 1, 8)
    elseif cond ~= '' and not exists and ttl ~= '0' then
      out[i] = -2
    else
      out[i] = -1
    end
  end
end
for j = 1, (#KEYS - 2 * writes) / 2 do
  release(KEYS[2 * writes + 2 * j - 1], KEYS[2 * writes + 2 * j], owner, channel)
end
return out
";

/// Renews leases: `KEYS` are leases, `ARGV`: owner, TTL in milliseconds.
/// Returns 1 if every lease was still `owner`'s (and now lives `ttl` more),
/// 0 if one was not (it is left alone).
const RENEW_BODY: &str = r"
local held = 1
for _, lease in ipairs(KEYS) do
  if redis.call('GET', lease) == ARGV[1] then
    redis.call('PEXPIRE', lease, ARGV[2])
  else
    held = 0
  end
end
return held
";

/// [`ACQUIRE_BODY`] with the release function it calls.
pub(super) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{RELEASE_FUNCTION}{ACQUIRE_BODY}")));

/// [`WRITE_BODY`] with the release function it calls.
pub(super) static WRITE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{RELEASE_FUNCTION}{WRITE_BODY}")));

/// [`RENEW_BODY`].
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_BODY));

/// Reads records for a scan: for each of `KEYS`, its value (`false` when
/// gone, or when it is not a string) and its `PTTL`.
const READ_BODY: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('GET', key)
  if type(value) ~= 'string' then
    value = false
  end
  out[2 * i - 1] = value
  out[2 * i] = redis.call('PTTL', key)
end
return out
";

/// Writes records with their own version and TTL. `KEYS[2i-1]`, `KEYS[2i]`:
/// record `i` and its lease; `ARGV[2i-1]`, `ARGV[2i]`: its stored bytes
/// (8-byte version first) and TTL in milliseconds (`0`: none). A record is
/// written unless its key holds the same or a newer version, a value that
/// is not a session record, or a lease. Returns 1 (written) or 0 per record.
///
/// Versions are compared byte by byte: big-endian, so that is their order,
/// and exact where a Lua number would not be.
const RESTORE_BODY: &str = r"
local function older(stored, new)
  for i = 1, 8 do
    local a, b = string.byte(stored, i), string.byte(new, i)
    if a ~= b then
      return a < b
    end
  end
  return false
end
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local record, ttl = ARGV[2 * i - 1], ARGV[2 * i]
  local stored = redis.pcall('GETRANGE', key, 0, 7)
  local free = redis.call('EXISTS', lease) == 0
  if type(stored) ~= 'string' then
    free = false
  elseif string.len(stored) > 0 and (string.len(stored) < 8 or not older(stored, record)) then
    free = false
  end
  if free then
    if ttl == '0' then
      redis.call('SET', key, record)
    else
      redis.call('SET', key, record, 'PX', ttl)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
";

/// [`READ_BODY`].
pub(super) static READ: LazyLock<Script> = LazyLock::new(|| Script::new(READ_BODY));

/// [`RESTORE_BODY`].
pub(super) static RESTORE: LazyLock<Script> = LazyLock::new(|| Script::new(RESTORE_BODY));

/// Every script, for loading them all when the storage connects.
pub(super) fn all() -> [&'static Script; 5] {
    [&ACQUIRE, &WRITE, &RENEW, &READ, &RESTORE]
}

/// What the write script answers for one write.
pub(super) mod code {
    /// The delete was applied.
    pub(in super::super) const DELETED: i64 = 0;
    /// A newer version (or a foreign value) is stored.
    pub(in super::super) const NEWER_VERSION: i64 = -1;
    /// The record read is gone and the put has a TTL.
    pub(in super::super) const EXPIRED: i64 = -2;
    /// Another owner holds the lease.
    pub(in super::super) const LEASE_LOST: i64 = -3;
}
