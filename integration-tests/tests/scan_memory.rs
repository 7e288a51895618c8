//! Scans stream with bounded memory (issue 10 item 2): 100,000 records in
//! Redis and in SQLite, scanned with their values page by page, while Linux
//! records the process's peak resident size (`VmHWM`, reset through
//! `/proc/self/clear_refs` before each scan). The peak above the resident
//! size at the start must stay far below what holding every record would
//! take. (A counting allocator would be exacter, but needs `unsafe`, which
//! the workspace forbids.)
//!
//! One test runs both storages one after the other, so no other test of
//! this binary allocates during a measurement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use tg_session::data::Scanner;
use tg_session::storage::{KeyPrefix, Record, Restore, Storage};
use tg_session::{RedisStorage, SqliteStorage, StorageKey};
use tg_session_test_kit::redis_server::RedisServer;

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Sets the peak resident size (`VmHWM`) back to the current one (Linux 4.0+).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

const RECORDS: usize = 100_000;
const PAGE: usize = 500;

/// Fills `storage` with [`RECORDS`] records of about 80 bytes under `prefix`.
async fn fill(storage: &dyn Storage, prefix: &str) {
    let value = Bytes::from(format!("{{\"name\":\"{}\"}}", "x".repeat(60)));
    for batch in 0..RECORDS / 1000 {
        let records: Vec<Restore> = (0..1000)
            .map(|i| Restore {
                key: StorageKey::new(
                    Some(prefix),
                    None,
                    "profile",
                    &format!("-100:{}", batch * 1000 + i),
                ),
                record: Record {
                    value: value.clone(),
                    version: 1 + (batch * 1000 + i) as u64,
                },
                ttl: None,
            })
            .collect();
        storage.restore(&records).await.unwrap();
    }
}

/// What one scan with values took: records seen, their key and value
/// bytes, and the peak resident size above where it started.
struct Measured {
    records: usize,
    payload: usize,
    peak_growth: usize,
}

async fn scan(storage: &dyn Storage, prefix: &str) -> Measured {
    let mut scanner = Scanner::new(storage, KeyPrefix::text(format!("{prefix}:")))
        .page_size(PAGE)
        .with_values();
    let start = status_kib("VmRSS");
    reset_peak();
    let (mut records, mut payload) = (0, 0);
    while let Some(page) = scanner.next_page().await.unwrap() {
        for entry in page {
            records += 1;
            payload += entry.key.as_str().len() + entry.record.map_or(0, |r| r.value.len());
        }
    }
    Measured {
        records,
        payload,
        peak_growth: status_kib("VmHWM").saturating_sub(start) * 1024,
    }
}

/// Scans `storage` twice and checks both peaks: the first, cold scan may
/// also fill caches of a fixed size (SQLite's page cache: 2 MiB per reader
/// connection); the second, warm one shows what streaming itself holds.
async fn assert_bounded(storage: &dyn Storage, prefix: &str) {
    let cold = scan(storage, prefix).await;
    let warm = scan(storage, prefix).await;
    // Holding every entry would take at least its key and value bytes plus
    // the entry itself.
    let all = warm.payload + RECORDS * std::mem::size_of::<tg_session::storage::ScannedRecord>();
    println!(
        "{}: {} records scanned, resident peak +{} KiB cold, +{} KiB warm; \
         holding them all would take ≥ {} KiB",
        storage.name(),
        warm.records,
        cold.peak_growth / 1024,
        warm.peak_growth / 1024,
        all / 1024
    );
    for measured in [&cold, &warm] {
        assert_eq!(measured.records, RECORDS, "{}", storage.name());
    }
    assert!(
        cold.peak_growth < all / 2,
        "{}: the resident size grew by {} bytes during the first scan, {}% of the {all} \
         bytes of all records",
        storage.name(),
        cold.peak_growth,
        cold.peak_growth * 100 / all
    );
    assert!(
        warm.peak_growth < all / 10,
        "{}: the resident size grew by {} bytes during the second scan, {}% of the {all} \
         bytes of all records",
        storage.name(),
        warm.peak_growth,
        warm.peak_growth * 100 / all
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanning_100_000_records_keeps_memory_bounded() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sqlite = SqliteStorage::open(dir.path().join("scan.db"))
        .await
        .unwrap();
    fill(&sqlite, "big").await;
    assert_bounded(&sqlite, "big").await;

    let server = RedisServer::start();
    let redis = RedisStorage::connect(&server.url()).await.unwrap();
    fill(&redis, "big").await;
    assert_bounded(&redis, "big").await;
}
