//! One session's read-modify-write on PostgreSQL, with and without
//! cross-process leases, against plain SQL with sqlx, on one local server
//! this benchmark starts itself (the tests' `PostgresServer`), in the same
//! run. (teloxide 0.17's PostgreSQL dialogues exist only with its
//! `postgres-storage-nativetls` feature, which brings OpenSSL; the sqlx
//! floor below does what they do, one `SELECT` and one write.)
//!
//! Sequential updates cycling over 1,000 users, each:
//! - `tg_session/leased`: `Leases::acquire` (lease + load in one upsert),
//!   then `Leases::write_and_release` (the put clears the lease: one statement);
//! - `tg_session/plain`: `Storage::load` + `Storage::write` (no lease);
//! - `tg_session/manager`: a whole update through `SessionManager`
//!   (begin → mutate → commit), as the runtime runs it today;
//! - `sqlx/select+update`: the floor, `SELECT value, version` then a
//!   conditional `UPDATE` (an `INSERT` for a new user) on a `PgPool`.
//!
//! `cargo bench -p tg-session-benches --bench postgres`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use tg_session_test_kit::postgres_server;

mod leased;
mod workload;

use std::hint::black_box;
use std::sync::atomic::AtomicU64;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sqlx::PgPool;
use tg_session::{PostgresStorage, SessionManager};

use postgres_server::PostgresServer;
use workload::{One, next_user, ours_one};

async fn sqlx_rmw(pool: &PgPool, user: u64) {
    let key = leased::key(user);
    let row: Option<(Vec<u8>, i64)> =
        sqlx::query_as("SELECT value, version FROM plain_sessions WHERE key = $1")
            .bind(key.as_str())
            .fetch_optional(pool)
            .await
            .unwrap();
    let mut counter: leased::Counter = row
        .as_ref()
        .map(|(value, _)| serde_json::from_slice(value).unwrap())
        .unwrap_or_default();
    counter.apple += 1;
    let value = serde_json::to_vec(&counter).unwrap();
    let changed = match row {
        Some((_, version)) => sqlx::query(
            "UPDATE plain_sessions SET value = $2, version = version + 1 \
             WHERE key = $1 AND version = $3",
        )
        .bind(key.as_str())
        .bind(value)
        .bind(version),
        None => sqlx::query(
            "INSERT INTO plain_sessions (key, value, version) VALUES ($1, $2, 1) \
             ON CONFLICT DO NOTHING",
        )
        .bind(key.as_str())
        .bind(value),
    }
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = PostgresServer::start();
    let url = server.url();
    let user = AtomicU64::new(0);
    let mut group = c.benchmark_group("update_read_modify_write_postgres");

    let leased = runtime.block_on(async {
        PostgresStorage::builder()
            .table("leased_sessions")
            .connect(&url)
            .await
            .unwrap()
    });
    group.bench_function(BenchmarkId::new("tg_session/leased", "1 session"), |b| {
        b.to_async(&runtime)
            .iter(|| leased::leased_rmw(&leased, black_box(next_user(&user))))
    });

    let plain = runtime.block_on(async {
        PostgresStorage::builder()
            .table("unleased_sessions")
            .cross_process_leases(false)
            .connect(&url)
            .await
            .unwrap()
    });
    group.bench_function(BenchmarkId::new("tg_session/plain", "1 session"), |b| {
        b.to_async(&runtime)
            .iter(|| leased::plain_rmw(&plain, black_box(next_user(&user))))
    });

    let manager = runtime.block_on(async {
        let storage = PostgresStorage::builder()
            .table("manager_sessions")
            .connect(&url)
            .await
            .unwrap();
        SessionManager::builder()
            .storage(storage)
            .register::<One>()
            .build()
            .unwrap()
    });
    group.bench_function(BenchmarkId::new("tg_session/manager", "1 session"), |b| {
        b.to_async(&runtime)
            .iter(|| ours_one(&manager, black_box(next_user(&user))))
    });

    let pool = runtime.block_on(async {
        let pool = PgPool::connect(&url).await.unwrap();
        sqlx::query(
            "CREATE TABLE plain_sessions (key TEXT PRIMARY KEY, value BYTEA NOT NULL, \
             version BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool
    });
    group.bench_function(BenchmarkId::new("sqlx/select+update", "1 session"), |b| {
        b.to_async(&runtime)
            .iter(|| sqlx_rmw(&pool, black_box(next_user(&user))))
    });

    group.finish();
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
