//! The PostgreSQL storage against a real server this test binary starts
//! (`initdb` in a temporary directory, a free loopback port) and stops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/postgres_server.rs"]
mod postgres_server;
#[path = "support/sql_cases.rs"]
mod sql_cases;
mod suite;

use std::sync::{Arc, LazyLock};

use postgres_server::PostgresServer;
use sql_cases::{Counter, key, put, record};
use tg_session::{
    HandlerOutcome, PostgresStorage, SessionManager, SharedStorage, Storage, StorageErrorKind,
    UpdateIds,
};

/// One server for the tests that do not restart it; each test uses its own
/// keys. Stopped when the test binary exits (see `PostgresServer`).
static SERVER: LazyLock<PostgresServer> = LazyLock::new(PostgresServer::start);

async fn connect() -> PostgresStorage {
    PostgresStorage::connect(&SERVER.url()).await.unwrap()
}

async fn shared() -> SharedStorage {
    Arc::new(connect().await)
}

behaviour_suite!(shared);

#[tokio::test]
async fn batches_keep_order() {
    sql_cases::batches_keep_order(shared().await).await;
}

#[tokio::test]
async fn versions_are_checked() {
    sql_cases::versions_are_checked(shared().await).await;
}

#[tokio::test]
async fn ttl_expires_and_cleanup_removes() {
    let storage = PostgresStorage::builder()
        .table("ttl_sessions")
        .connect(&SERVER.url())
        .await
        .unwrap();
    let pool = storage.pool().clone();
    let age = async |key: &str| {
        sqlx::query(
            "UPDATE ttl_sessions SET expires_at = expires_at - interval '1 hour 1 second' \
             WHERE key = $1",
        )
        .bind(key)
        .execute(&pool)
        .await
        .unwrap();
    };
    let count = async |prefix: &str| {
        sqlx::query_scalar("SELECT count(*) FROM ttl_sessions WHERE key LIKE $1")
            .bind(format!("{prefix}:%"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let cleanup = async || storage.cleanup_expired().await.unwrap();
    sql_cases::ttl_expires_and_cleanup_removes(Arc::new(storage.clone()), age, count, cleanup)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_writer_gets_conflict() {
    // Two pools stand for two bot processes.
    sql_cases::second_writer_gets_conflict(shared().await, shared().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_managers_lose_nothing() {
    sql_cases::concurrent_managers_lose_nothing(shared().await, shared().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_updates() {
    sql_cases::many_concurrent_updates(shared().await).await;
}

#[tokio::test]
async fn schema_qualified_table_and_checked_names() {
    let pool = sqlx::PgPool::connect(&SERVER.url()).await.unwrap();
    sqlx::query("CREATE SCHEMA IF NOT EXISTS bot")
        .execute(&pool)
        .await
        .unwrap();
    let storage = PostgresStorage::builder()
        .table("bot.sessions")
        .pool(pool.clone())
        .await
        .unwrap();
    assert_eq!(storage.table(), "bot.sessions");
    assert!(
        storage.name().starts_with("postgres://127.0.0.1:"),
        "{}",
        storage.name()
    );
    let k = key("schema", "k");
    storage.write(&[put(&k, "v", None, None)]).await.unwrap();
    assert_eq!(storage.load(&[k]).await.unwrap(), [record("v", 1)]);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM bot.sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);

    for bad in [
        "x; DROP TABLE tg_sessions; --",
        "a.b.c",
        "bot.\"x\"",
        "1st",
        "",
    ] {
        let error = PostgresStorage::builder()
            .table(bad)
            .pool(pool.clone())
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("invalid session table name"),
            "{bad:?}: {error}"
        );
    }
}

#[tokio::test]
async fn storages_starting_together_create_the_table_once() {
    let url = SERVER.url();
    let starts = (0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            PostgresStorage::builder()
                .table("created_together")
                .connect(&url)
                .await
        })
    });
    for start in starts.collect::<Vec<_>>() {
        start.await.unwrap().unwrap();
    }
}

/// A server of its own, restarted in the middle.
#[tokio::test]
async fn sessions_survive_a_server_restart() {
    let mut server = PostgresServer::start();
    let storage = PostgresStorage::connect(&server.url()).await.unwrap();
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .register::<Counter>()
        .build()
        .unwrap();
    for _ in 0..3 {
        let ctx = manager.begin(UpdateIds::new().user(5)).await;
        ctx.get::<Counter>().unwrap().hits += 1;
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    }
    server.restart();

    // The same storage reconnects (its pool checks connections before use)…
    let ctx = manager.begin(UpdateIds::new().user(5)).await;
    let counter = ctx.get::<Counter>().unwrap();
    assert_eq!((counter.hits, counter.version()), (3, Some(3)));
    drop(counter);
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    // …and a fresh one, as after a bot restart, finds the same data.
    let reconnected = PostgresStorage::connect(&server.url()).await.unwrap();
    assert_eq!(
        reconnected
            .load(&[tg_session::StorageKey::new(None, None, "counter", "5")])
            .await
            .unwrap()[0]
            .as_ref()
            .map(|record| record.version),
        Some(3)
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = PostgresStorage::builder()
        .acquire_timeout(std::time::Duration::from_millis(300))
        .connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StorageErrorKind::Timeout, "{error}");
}
