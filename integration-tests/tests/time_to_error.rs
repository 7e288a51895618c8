//! Time to error behind a stalled storage: updates queued on one key each
//! fail within about the storage's timeout, not one timeout after another.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tg_session::{Error, RedisStorage, Session, SessionManager, UpdateIds};
use tg_session_test_kit::redis_server::RedisServer;

#[derive(Session, Serialize, Deserialize, Debug)]
#[session(key = "counter")]
struct Counter {
    n: u32,
}

const QUEUED: usize = 12;

/// Starts `QUEUED` updates of one key at once; answers how long each took to
/// fail, sorted, after checking that each failed with a storage error.
async fn time_to_error(manager: &SessionManager) -> Vec<Duration> {
    let started = Instant::now();
    let updates: Vec<_> = (0..QUEUED)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move {
                let result = increment(manager).await;
                (result, started.elapsed())
            })
        })
        .collect();
    let mut times = Vec::new();
    for update in updates {
        let (result, took) = update.await.unwrap();
        let error = result.expect_err("the storage is stalled");
        assert!(matches!(error, Error::Storage { .. }), "{error:?}");
        times.push(took);
    }
    times.sort();
    times
}

/// Every update failed within 1.5 times the storage's timeout.
fn assert_bounded(times: &[Duration], timeout: Duration, what: &str) {
    println!("time to error, {QUEUED} updates queued on one key, {what} {timeout:?}: {times:?}");
    let bound = timeout.mul_f32(1.5);
    assert!(
        times.iter().all(|took| *took <= bound),
        "every update fails within 1.5 x the timeout ({bound:?}): {times:?}"
    );
}

async fn increment(manager: SessionManager) -> Result<(), Error> {
    manager
        .run(UpdateIds::new().user(7).chat(7), |ctx| async move {
            ctx.counter()?.n += 1;
            Ok::<_, Error>(())
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_queued_on_a_stalled_redis_each_fail_within_the_timeout() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(800);
    let storage = RedisStorage::connect(&server.url())
        .await
        .unwrap()
        .command_timeout(timeout);
    let manager = SessionManager::builder()
        .storage(storage)
        .lease_ttl(Duration::from_secs(2))
        .register::<Counter>()
        .build()
        .unwrap();
    increment(manager.clone()).await.expect("redis up");

    server.pause();
    let times = time_to_error(&manager).await;
    server.resume();
    assert_bounded(&times, timeout, "Redis stopped (SIGSTOP), command timeout");

    // Back up: the next update of that key works (after the fail-fast window).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    increment(manager.clone()).await.expect("redis is back");
}

mod postgres {
    //! The same over PostgreSQL, where another client holds the row lock.

    use super::*;
    use tg_session::PostgresStorage;
    use tg_session_test_kit::postgres_server::PostgresServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn updates_queued_behind_a_row_lock_each_fail_within_the_lock_timeout() {
        let server = PostgresServer::start();
        let timeout = Duration::from_millis(800);
        let storage = PostgresStorage::builder()
            .lock_timeout(timeout)
            .statement_timeout(Duration::from_secs(5))
            .connect(&server.url())
            .await
            .unwrap();
        let other_client = storage.pool().clone();
        let manager = SessionManager::builder()
            .storage(storage)
            .lease_ttl(Duration::from_secs(2))
            .register::<Counter>()
            .build()
            .unwrap();
        increment(manager.clone()).await.expect("postgres up");

        // Another client (a migration, an operator's psql) locks the row.
        let mut holder = other_client.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM tg_sessions WHERE key = 'counter:7' FOR UPDATE")
            .execute(&mut *holder)
            .await
            .unwrap();
        let times = time_to_error(&manager).await;
        holder.rollback().await.unwrap();
        assert_bounded(&times, timeout, "a PostgreSQL row lock, lock_timeout");
    }
}
