//! Copies between storages of different kinds (issue 10 item 2), on real
//! servers this binary starts: SQLite → PostgreSQL → Redis Cluster → Redis →
//! memory → SQLite, every hop keeping each record's value, version and
//! remaining TTL, and keys that the runtime finds again in their new home
//! (Redis keeps the scope key apart, as a hash tag, while SQL keeps whole
//! text). Also: a storage without scans says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../../examples/custom_storage.rs"]
mod custom_storage;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tg_session::data::{CopyOptions, Scanner, copy};
use tg_session::storage::{KeyPrefix, Record, Restore, RestoreOutcome, Storage};
use tg_session::{
    MemoryStorage, PostgresStorage, RedisStorage, SqliteStorage, StorageErrorKind, StorageKey,
};
use tg_session_test_kit::postgres_server::PostgresServer;
use tg_session_test_kit::redis_server::{RedisCluster, RedisServer};

/// What was stored: the record and the TTL it was given.
type Expected = HashMap<StorageKey, (Record, Option<Duration>)>;

/// 240 records of every built-in scope under `prefix`, a third with a TTL.
fn records(prefix: &str) -> Vec<Restore> {
    let scopes = |i: u64| {
        [
            ("counter", i.to_string()),
            ("profile", format!("-100{}:{i}", i % 3)),
            ("chat_topic", format!("-{i}")),
            (
                "thread_note",
                format!(
                    "-100:{}",
                    if i.is_multiple_of(2) {
                        "main".to_owned()
                    } else {
                        i.to_string()
                    }
                ),
            ),
        ]
    };
    (0..60u64)
        .flat_map(|i| {
            scopes(i).into_iter().map(move |(name, scope)| {
                let ttl = i.is_multiple_of(3).then(|| Duration::from_secs(7200 + i));
                Restore {
                    key: StorageKey::new(Some(prefix), None, name, &scope),
                    record: Record {
                        value: Bytes::from(format!("{{\"{name}\":\"{scope}\"}}")),
                        // Versions as the storages make them: a clock in
                        // microseconds, different for every record.
                        version: 1_760_000_000_000_000 + i * 10 + u64::from(name.len() as u8),
                    },
                    ttl,
                }
            })
        })
        .collect()
}

/// Checks that `storage` holds exactly `expected` under `prefix`, scanned
/// with values, and that each record loads again by the key the runtime
/// builds.
async fn check(storage: &dyn Storage, prefix: &str, expected: &Expected) {
    let mut scanner = Scanner::new(storage, KeyPrefix::text(format!("{prefix}:")))
        .page_size(17)
        .with_values();
    let mut seen = 0;
    while let Some(page) = scanner.next_page().await.unwrap() {
        for entry in page {
            seen += 1;
            let (record, ttl) = expected.get(&entry.key).unwrap_or_else(|| {
                panic!("{} holds an unexpected key {}", storage.name(), entry.key)
            });
            assert_eq!(
                entry.record.as_ref(),
                Some(record),
                "{} in {}",
                entry.key,
                storage.name()
            );
            match (ttl, entry.ttl) {
                (None, None) => {}
                (Some(ttl), Some(left)) => assert!(
                    left <= *ttl && *ttl - left < Duration::from_secs(60),
                    "{}: {left:?} left of {ttl:?} in {}",
                    entry.key,
                    storage.name()
                ),
                (ttl, left) => panic!(
                    "{}: TTL {ttl:?} arrived as {left:?} in {}",
                    entry.key,
                    storage.name()
                ),
            }
        }
    }
    assert_eq!(seen, expected.len(), "records in {}", storage.name());
    let keys: Vec<StorageKey> = expected.keys().cloned().collect();
    let loaded = storage.load(&keys).await.unwrap();
    for (key, record) in keys.iter().zip(loaded) {
        assert_eq!(
            record.as_ref(),
            Some(&expected[key].0),
            "load of {key} in {}",
            storage.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_between_every_kind_keep_values_versions_and_ttls() {
    let prefix = format!("copy{}", std::process::id());
    let records = records(&prefix);
    let expected: Expected = records
        .iter()
        .map(|restore| (restore.key.clone(), (restore.record.clone(), restore.ttl)))
        .collect();

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let first = SqliteStorage::open(dir.path().join("first.db"))
        .await
        .unwrap();
    let outcomes = first.restore(&records).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|outcome| *outcome == RestoreOutcome::Restored)
    );
    check(&first, &prefix, &expected).await;

    let postgres_server = PostgresServer::start();
    let postgres = PostgresStorage::connect(&postgres_server.url())
        .await
        .unwrap();
    let cluster_nodes = RedisCluster::start();
    let cluster = RedisStorage::cluster(cluster_nodes.urls()).await.unwrap();
    let redis_server = RedisServer::start();
    let redis = RedisStorage::connect(&redis_server.url()).await.unwrap();
    let memory = MemoryStorage::new();
    let last = SqliteStorage::open(dir.path().join("last.db"))
        .await
        .unwrap();

    let chain: [&dyn Storage; 6] = [&first, &postgres, &cluster, &redis, &memory, &last];
    for hop in chain.windows(2) {
        let (from, to) = (hop[0], hop[1]);
        let options = CopyOptions {
            page_size: 50,
            ..CopyOptions::default()
        };
        let report = copy(from, to, options).await.unwrap();
        assert_eq!(
            (report.copied, report.skipped, report.failed),
            (expected.len() as u64, 0, 0),
            "{} → {}",
            from.name(),
            to.name()
        );
        assert!(report.resume_from.is_none());
        check(to, &prefix, &expected).await;
    }

    // The keys spread over the cluster's three primaries: the scan above
    // found them all, so it walked every node. A copy run again finds
    // every record already there.
    let again = copy(&postgres, &cluster, CopyOptions::default())
        .await
        .unwrap();
    assert_eq!((again.copied, again.skipped), (0, expected.len() as u64));
}

#[tokio::test]
async fn a_storage_without_scans_says_so() {
    let storage = custom_storage::MapStorage::default();
    let mut scanner = Scanner::new(&storage, KeyPrefix::all());
    let error = scanner.next_page().await.expect_err("no scan in a map");
    assert_eq!(error.kind(), StorageErrorKind::Unsupported);
    assert!(
        error.to_string().contains("does not support scan"),
        "{error}"
    );
    let nothing = copy(&MemoryStorage::new(), &storage, CopyOptions::default())
        .await
        .map(|report| report.copied);
    assert!(matches!(nothing, Ok(0)), "nothing to copy needs no restore");
    let memory = MemoryStorage::new();
    let key = StorageKey::new(None, None, "counter", "1");
    let record = Record {
        value: Bytes::from_static(b"{}"),
        version: 5,
    };
    memory
        .restore(&[Restore {
            key,
            record,
            ttl: None,
        }])
        .await
        .unwrap();
    let failed = copy(&memory, &storage, CopyOptions::default())
        .await
        .expect_err("no restore");
    assert_eq!(failed.error.kind(), StorageErrorKind::Unsupported);
    assert_eq!(failed.report.failed, 1);
    assert_eq!(
        failed.report.resume_from, None,
        "the failed page was the first"
    );
}
