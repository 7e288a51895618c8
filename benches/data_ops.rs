//! Throughput of the data operations (issue 10 item 2), in records per
//! second per storage: a whole scan with values of 10,000 records in pages
//! of 500 (`scan/<storage>`), and a copy of them into a fresh memory storage
//! (`copy/<storage> → memory`: the scan plus the writes). Memory, SQLite
//! (a file in a temporary directory), Redis and PostgreSQL (servers this
//! bench starts on loopback).
//!
//! `cargo bench -p tg-session-benches --bench data_ops`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use tg_session_test_kit::postgres_server;
use tg_session_test_kit::redis_server;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use postgres_server::PostgresServer;
use redis_server::RedisServer;
use tg_session::data::{CopyOptions, Scanner, copy};
use tg_session::storage::{KeyPrefix, Record, Restore, Storage};
use tg_session::{MemoryStorage, PostgresStorage, RedisStorage, SqliteStorage, StorageKey};

const RECORDS: u64 = 10_000;
const PAGE: usize = 500;
const PREFIX: &str = "bench";

async fn fill(storage: &dyn Storage) {
    let value = Bytes::from_static(b"{\"name\":\"a user of the bench\",\"apple\":12}");
    for batch in 0..RECORDS / 1000 {
        let records: Vec<Restore> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                Restore {
                    key: StorageKey::new(Some(PREFIX), None, "profile", &format!("-100:{n}")),
                    record: Record {
                        value: value.clone(),
                        version: n + 1,
                    },
                    ttl: None,
                }
            })
            .collect();
        storage.restore(&records).await.unwrap();
    }
}

async fn scan_all(storage: &dyn Storage) -> u64 {
    let prefix = KeyPrefix::text(format!("{PREFIX}:"));
    let mut scanner = Scanner::new(storage, prefix).page_size(PAGE).with_values();
    let mut seen = 0;
    while let Some(page) = scanner.next_page().await.unwrap() {
        seen += page.len() as u64;
    }
    assert_eq!(seen, RECORDS);
    seen
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let redis_server = RedisServer::start();
    let postgres_server = PostgresServer::start();
    let storages: Vec<(&str, Box<dyn Storage>)> = runtime.block_on(async {
        let storages: Vec<(&str, Box<dyn Storage>)> = vec![
            ("memory", Box::new(MemoryStorage::new())),
            (
                "sqlite",
                Box::new(
                    SqliteStorage::open(dir.path().join("data.db"))
                        .await
                        .unwrap(),
                ),
            ),
            (
                "redis",
                Box::new(RedisStorage::connect(&redis_server.url()).await.unwrap()),
            ),
            (
                "postgres",
                Box::new(
                    PostgresStorage::connect(&postgres_server.url())
                        .await
                        .unwrap(),
                ),
            ),
        ];
        for (_, storage) in &storages {
            fill(&**storage).await;
        }
        storages
    });

    let mut group = c.benchmark_group("data_ops");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(10);
    for (name, storage) in &storages {
        group.bench_function(BenchmarkId::new("scan", name), |b| {
            b.to_async(&runtime)
                .iter(|| scan_all(black_box(&**storage)));
        });
        group.bench_function(
            BenchmarkId::new("copy", format!("{name} → memory")),
            |b| {
                b.to_async(&runtime).iter(|| async {
                    let to = MemoryStorage::new();
                    let options = CopyOptions {
                        page_size: PAGE,
                        ..CopyOptions::default()
                    };
                    let report = copy(&**storage, &to, options).await.unwrap();
                    assert_eq!(report.copied, RECORDS);
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
