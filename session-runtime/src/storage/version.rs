//! Versions that never repeat over a key's lifetime.
//!
//! A write is conditional on the version its update read. If versions
//! restarted at 1 after a delete, a write prepared before another process's
//! `clear()` and re-create would find "its" version again and overwrite the
//! new record (ABA). So a new record starts at the clock, in microseconds
//! since the Unix epoch: above every version a deleted record reached, unless
//! it was written more than once per microsecond over its whole life.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The last version handed out in this process, so two new records created
/// within one microsecond (or across a clock step back) still differ.
static LAST: AtomicU64 = AtomicU64::new(0);

/// The version of a new record written by this process: the clock in
/// microseconds since the Unix epoch, and always above the last one it gave.
///
/// Storages with a clock of their own (a server's) may use it instead, so
/// processes with skewed clocks still agree.
pub fn version_for_new_record() -> u64 {
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        });
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(clock.max(last.saturating_add(1)))
        })
        .unwrap_or_else(|last| last);
    clock.max(previous.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_versions_grow_and_follow_the_clock() {
        let first = version_for_new_record();
        let second = version_for_new_record();
        assert!(second > first);
        // 2020-01-01 in microseconds: the clock, not a counter from 1.
        assert!(first > 1_577_836_800_000_000);
    }
}
