//! The PostgreSQL storage against a real server this test binary starts
//! (`initdb` in a temporary directory, a free loopback port) and stops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tg_session_test_kit::postgres_server;
use tg_session_test_kit::sql_cases;
use tg_session_test_kit::{behaviour_suite, data_suite};

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use postgres_server::PostgresServer;
use sql_cases::{Counter, key, put, values, written};
use tg_session::storage::{Lease, LeaseOwner, LeasedLoad, SharedStorage, Storage, WriteOutcome};
use tg_session::{HandlerOutcome, PostgresStorage, SessionManager, StorageErrorKind, UpdateIds};

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
data_suite!(shared);

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
    // Two pools stand for two bot processes, without leases (opted out):
    // the version check alone refuses the stale write. (With leases the
    // second one waits instead: the suite and tests/replicas.rs show that.)
    let without_leases = async || {
        let storage = PostgresStorage::builder()
            .cross_process_leases(false)
            .connect(&SERVER.url())
            .await
            .unwrap();
        Arc::new(storage) as SharedStorage
    };
    sql_cases::second_writer_gets_conflict(without_leases().await, without_leases().await).await;
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
    assert_eq!(values(&storage.load(&[k]).await.unwrap()), [Some("v")]);
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
    assert_eq!(counter.hits, 3);
    let version = counter.version();
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
        version
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

async fn table(name: &str) -> PostgresStorage {
    PostgresStorage::builder()
        .table(name)
        .connect(&SERVER.url())
        .await
        .unwrap()
}

/// Rows physically stored in `table` under a test's keys.
async fn rows(pool: &sqlx::PgPool, table: &str, prefix: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE key LIKE $1"))
        .bind(format!("{prefix}:%"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_recreated_record_refuses_a_stale_write() {
    sql_cases::a_recreated_record_refuses_a_stale_write(shared().await).await;
}

#[tokio::test]
async fn leases_serialize_and_fence() {
    let storage = table("lease_sessions").await;
    let pool = storage.pool().clone();
    sql_cases::leases_serialize_and_fence(Arc::new(storage), async |prefix: &str| {
        rows(&pool, "lease_sessions", prefix).await
    })
    .await;
}

#[tokio::test]
async fn leases_expire() {
    let storage = table("expiry_sessions").await;
    let pool = storage.pool().clone();
    let cleanup = async || storage.cleanup_expired().await.unwrap();
    sql_cases::leases_expire(
        Arc::new(storage.clone()),
        async |prefix: &str| rows(&pool, "expiry_sessions", prefix).await,
        cleanup,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_updates_lose_nothing() {
    sql_cases::cancelled_updates_lose_nothing(shared().await).await;
}

#[tokio::test]
async fn leases_can_be_turned_off() {
    let storage = PostgresStorage::builder()
        .cross_process_leases(false)
        .connect(&SERVER.url())
        .await
        .unwrap();
    assert!(storage.leases().is_none());
    assert!(connect().await.leases().is_some(), "on by default");
}

/// A table of the schema before leases (`value NOT NULL`, no lease
/// columns) is brought up to date at open, keeping its rows.
#[tokio::test]
async fn an_old_table_is_migrated() {
    let pool = sqlx::PgPool::connect(&SERVER.url()).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE old_sessions (key TEXT PRIMARY KEY, value BYTEA NOT NULL, \
             version BIGINT NOT NULL, expires_at TIMESTAMPTZ); \
         CREATE INDEX old_sessions_expires_at ON old_sessions (expires_at) \
             WHERE expires_at IS NOT NULL; \
         INSERT INTO old_sessions VALUES ('old:case:k', 'kept', 3, NULL);",
    )
    .execute(&pool)
    .await
    .unwrap();
    for _ in 0..2 {
        // Twice: the second open finds nothing to change.
        let storage = PostgresStorage::builder()
            .table("old_sessions")
            .pool(pool.clone())
            .await
            .unwrap();
        let k = key("old", "k");
        let loaded = storage.load(std::slice::from_ref(&k)).await.unwrap();
        assert_eq!(values(&loaded), [Some("kept")]);
        assert_eq!(loaded[0].as_ref().map(|r| r.version), Some(3));
    }
    let storage = PostgresStorage::builder()
        .table("old_sessions")
        .pool(pool.clone())
        .await
        .unwrap();
    let leases = storage.leases().unwrap();
    let owner = LeaseOwner::new();
    let lease = Lease {
        owner: &owner,
        ttl: Duration::from_secs(10),
    };
    let (k, new) = (key("old", "k"), key("old", "new"));
    assert!(matches!(
        leases.acquire(&[k.clone(), new.clone()], lease).await.unwrap(),
        LeasedLoad::Acquired(records) if values(&records) == [Some("kept"), None]
    ));
    let outcomes = leases
        .write_and_release(
            &[put(&k, "k4", Some(3), None), put(&new, "n", None, None)],
            &[k, new],
            &owner,
        )
        .await
        .unwrap();
    assert_eq!(outcomes[0], WriteOutcome::Written { version: 4 });
    written(&outcomes[1]);
}

/// An update waiting for a lease is woken by the holder's commit through
/// `NOTIFY`, long before its poll would have retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_the_waiter_through_notify() {
    let (holder, waiter) = (
        table("notify_sessions").await,
        table("notify_sessions").await,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waiter.is_listening() {
        assert!(Instant::now() < deadline, "the listener never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored = key("notify", "k");
    let (a, b) = (LeaseOwner::new(), LeaseOwner::new());
    let minute = Duration::from_secs(60);
    let mut latencies = Vec::new();
    // Round 0: the holder's put releases (one statement); rounds 1-2: a
    // release of a stored record's lease; rounds 3-4: a lease-only row deleted.
    for round in 0..5 {
        let k = match round {
            0..3 => stored.clone(),
            _ => key("notify", &format!("empty-{round}")),
        };
        let held = holder
            .leases()
            .unwrap()
            .acquire(
                std::slice::from_ref(&k),
                Lease {
                    owner: &a,
                    ttl: minute,
                },
            )
            .await
            .unwrap();
        assert!(matches!(held, LeasedLoad::Acquired(_)));
        let watch = waiter.leases().unwrap().watch(&k);
        assert!(watch.is_notified());
        let busy = waiter
            .leases()
            .unwrap()
            .acquire(
                std::slice::from_ref(&k),
                Lease {
                    owner: &b,
                    ttl: minute,
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(busy, LeasedLoad::Busy { index: 0, .. }),
            "{busy:?}"
        );
        let release = {
            let holder = holder.clone();
            let (k, a) = (k.clone(), a.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let writes = [put(&k, "v", None, None)];
                let writes = if round == 0 { &writes[..] } else { &[] };
                let calling = Instant::now();
                holder
                    .leases()
                    .unwrap()
                    .write_and_release(writes, &[k], &a)
                    .await
                    .unwrap();
                (calling, Instant::now())
            })
        };
        let started = Instant::now();
        watch.wait(Duration::from_secs(10)).await;
        let woke = Instant::now();
        let (calling, released) = release.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken by the timeout, not NOTIFY"
        );
        latencies.push((
            woke.saturating_duration_since(calling),
            woke.saturating_duration_since(released),
        ));
        assert!(matches!(
            waiter
                .leases()
                .unwrap()
                .acquire(
                    std::slice::from_ref(&k),
                    Lease {
                        owner: &b,
                        ttl: minute
                    }
                )
                .await
                .unwrap(),
            LeasedLoad::Acquired(_)
        ));
        waiter
            .leases()
            .unwrap()
            .write_and_release(&[], std::slice::from_ref(&k), &b)
            .await
            .unwrap();
    }
    println!("NOTIFY wake latency (from the release call, from its return): {latencies:?}");
}

/// A row locked by another client is a timeout error after about the
/// configured `lock_timeout`, not a hang.
#[tokio::test]
async fn a_locked_row_is_a_timeout() {
    let storage = PostgresStorage::builder()
        .table("locked_sessions")
        .lock_timeout(Duration::from_millis(500))
        .statement_timeout(Duration::from_secs(3))
        .connect(&SERVER.url())
        .await
        .unwrap();
    let k = key("locked", "k");
    let v = written(&storage.write(&[put(&k, "v", None, None)]).await.unwrap()[0]);
    let pool = sqlx::PgPool::connect(&SERVER.url()).await.unwrap();
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM locked_sessions WHERE key = $1 FOR UPDATE")
        .bind(k.as_str())
        .execute(&mut *other)
        .await
        .unwrap();
    let owner = LeaseOwner::new();
    let mut took = Vec::new();
    let started = Instant::now();
    let error = storage
        .write(&[put(&k, "w", Some(v), None)])
        .await
        .unwrap_err();
    took.push(started.elapsed());
    assert_eq!(error.kind(), StorageErrorKind::Timeout, "{error}");
    let started = Instant::now();
    let error = storage
        .leases()
        .unwrap()
        .acquire(
            std::slice::from_ref(&k),
            Lease {
                owner: &owner,
                ttl: Duration::from_secs(10),
            },
        )
        .await
        .unwrap_err();
    took.push(started.elapsed());
    assert_eq!(error.kind(), StorageErrorKind::Timeout, "{error}");
    for took in &took {
        assert!(
            *took >= Duration::from_millis(450) && *took < Duration::from_secs(2),
            "{took:?}"
        );
    }
    println!(
        "lock_timeout 500 ms: write failed after {:?}, acquire after {:?}",
        took[0], took[1]
    );
    other.rollback().await.unwrap();
    assert_eq!(
        storage.write(&[put(&k, "w", Some(v), None)]).await.unwrap(),
        [WriteOutcome::Written { version: v + 1 }]
    );
}

/// The `LISTEN` connection killed by the server (an administrator, a
/// failover): the storage listens again and a release still wakes the waiter.
/// A server of its own, so no other test's listener is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects() {
    let server = PostgresServer::start();
    let storage = PostgresStorage::connect(&server.url()).await.unwrap();
    let listening = async || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !storage.is_listening() {
            assert!(Instant::now() < deadline, "the listener never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    listening().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'",
    )
    .fetch_all(storage.pool())
    .await
    .unwrap();
    assert_eq!(killed, [true]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    listening().await;

    let leases = storage.leases().unwrap();
    let k = key("reconnect", "k");
    let (a, b) = (LeaseOwner::new(), LeaseOwner::new());
    let ttl = Duration::from_secs(60);
    let held = leases
        .acquire(std::slice::from_ref(&k), Lease { owner: &a, ttl })
        .await
        .unwrap();
    assert!(matches!(held, LeasedLoad::Acquired(_)));
    let watch = leases.watch(&k);
    assert!(watch.is_notified());
    let busy = leases
        .acquire(std::slice::from_ref(&k), Lease { owner: &b, ttl })
        .await
        .unwrap();
    assert!(matches!(busy, LeasedLoad::Busy { .. }), "{busy:?}");
    let release = {
        let (storage, k, a) = (storage.clone(), k.clone(), a.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let leases = storage.leases().unwrap();
            leases.write_and_release(&[], &[k], &a).await.unwrap();
        })
    };
    let started = Instant::now();
    watch.wait(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the timeout, not NOTIFY"
    );
    release.await.unwrap();
}
