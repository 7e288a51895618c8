//! The memory storage keeps each key's lock in its record (bounded or not),
//! shared by every manager over it: what that must keep (no lost update
//! across threads and managers, nothing left behind by an update that
//! stored nothing, cycles of waits found at once across keys locked in
//! records and keys locked in a table, as another storage's are).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tg_session::storage::{KeyPrefix, Storage};
use tg_session::{
    Error, HandlerOutcome, MemoryStorage, Session, SessionManager, SqliteStorage, UpdateIds,
};

#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "counter")]
struct Counter {
    apple: u32,
}

#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "visits", lazy)]
struct Visits {
    count: u32,
}

/// Shared by every update, in a memory store (locked in records).
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "note", lazy, scope = "global")]
struct Note {
    n: u32,
}

/// Shared by every update, in SQLite (locked in the manager's table).
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "tally", lazy, scope = "global")]
struct Tally {
    n: u32,
}

fn user(id: u64) -> UpdateIds {
    UpdateIds::new().user(id)
}

fn manager(storage: &MemoryStorage) -> SessionManager {
    SessionManager::builder()
        .storage(storage.clone())
        .register::<Counter>()
        .register::<Visits>()
        .build()
        .unwrap()
}

fn both_variants() -> [MemoryStorage; 2] {
    [MemoryStorage::new(), MemoryStorage::with_capacity(1_000)]
}

const USERS: u64 = 3;
const TASKS: u64 = 24;
const UPDATES_PER_TASK: u32 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_over_one_storage_lose_no_update_across_threads() {
    for storage in both_variants() {
        let managers = [manager(&storage), manager(&storage)];
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let manager = managers[(task % 2) as usize].clone();
                tokio::spawn(async move {
                    for _ in 0..UPDATES_PER_TASK {
                        let ctx = manager.begin(user(task % USERS + 1)).await;
                        ctx.counter().unwrap().apple += 1;
                        // The reply's round trip, between load and save.
                        tokio::task::yield_now().await;
                        ctx.visits().await.unwrap().count += 1;
                        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let per_user = (TASKS / USERS) as u32 * UPDATES_PER_TASK;
        for id in 1..=USERS {
            let ctx = managers[0].begin(user(id)).await;
            assert_eq!(ctx.counter().unwrap().apple, per_user, "{storage:?}");
            assert_eq!(ctx.visits().await.unwrap().count, per_user);
            ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        }
        assert_eq!(storage.len(), 2 * USERS, "{storage:?}");
    }
}

#[tokio::test]
async fn an_update_that_stores_nothing_leaves_nothing() {
    for storage in both_variants() {
        let manager = manager(&storage);
        let ctx = manager.begin(user(1)).await;
        assert_eq!(ctx.counter().unwrap().apple, 0);
        assert_eq!(ctx.visits().await.unwrap().count, 0);
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();

        let failed = manager.begin(user(2)).await;
        failed.counter().unwrap().apple += 1;
        failed.commit(HandlerOutcome::Failed).await.unwrap();

        let dropped = manager.begin(user(3)).await;
        dropped.counter().unwrap().apple += 1;
        drop(dropped);

        assert_eq!(storage.len(), 0, "{storage:?}");
        let page = storage
            .scan(&KeyPrefix::all(), None, 10, true)
            .await
            .unwrap();
        assert!(page.entries.is_empty(), "{page:?}");
        // And the keys are free: the next updates go through at once.
        for id in 1..=3 {
            let ctx = manager.begin(user(id)).await;
            ctx.counter().unwrap().apple += 1;
            ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        }
        assert_eq!(storage.len(), 3);
    }
}

/// In memory, an update is begun when `begin` is called (its keys taken,
/// the future ready), and committed when `commit` is called (the values
/// written and the keys given back before the future is awaited).
#[tokio::test]
async fn an_update_in_memory_is_begun_and_committed_when_called() {
    use futures_util::FutureExt as _;

    for storage in both_variants() {
        let manager = manager(&storage);
        let first = manager
            .begin(user(1))
            .now_or_never()
            .expect("ready at once: the key was free");
        first.counter().unwrap().apple += 1;
        let mut second = Box::pin(manager.begin(user(1)));
        assert!(
            second.as_mut().now_or_never().is_none(),
            "the second update waits for the key the first took when it was begun"
        );
        let committed = first.commit(HandlerOutcome::Succeeded);
        let second = second
            .now_or_never()
            .expect("ready once the first commit was called, before it is awaited");
        assert_eq!(second.counter().unwrap().apple, 1, "{storage:?}");
        committed.await.unwrap();
        second.commit(HandlerOutcome::Succeeded).await.unwrap();
    }
}

#[tokio::test]
async fn an_update_of_one_manager_waits_for_another_managers_update() {
    for storage in both_variants() {
        let [first, second] = [manager(&storage), manager(&storage)];
        let holder = first.begin(user(1)).await;
        holder.counter().unwrap().apple += 10;
        let waiter = tokio::spawn(async move {
            let ctx = second.begin(user(1)).await;
            let apple = {
                let mut counter = ctx.counter().unwrap();
                counter.apple += 1;
                counter.apple
            };
            ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
            apple
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "the other manager's update waits");
        holder.commit(HandlerOutcome::Succeeded).await.unwrap();
        assert_eq!(waiter.await.unwrap(), 11, "it read the holder's value");
    }
}

#[tokio::test]
async fn a_cycle_through_a_key_locked_in_a_record_and_one_in_a_table_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStorage::open(dir.path().join("tally.db"))
        .await
        .unwrap();
    let manager = SessionManager::builder()
        .storage(MemoryStorage::with_capacity(100))
        .register::<Note>()
        .register_in::<Tally>(Arc::new(sqlite))
        .lock_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let first = manager.begin(user(1)).await;
    let second = manager.begin(user(2)).await;
    first.load::<Note>().await.unwrap().n += 1;
    second.load::<Tally>().await.unwrap().n += 1;
    // The first update waits for the tally (held by the second) ...
    let waiter = tokio::spawn({
        let first = first.clone();
        async move { first.load::<Tally>().await.map(|tally| tally.n) }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // ... so the second asking for the note the first holds closes a cycle.
    let started = Instant::now();
    let error = second
        .load::<Note>()
        .await
        .map(|note| note.n)
        .expect_err("cycle");
    assert!(started.elapsed() < Duration::from_secs(1), "no stall");
    assert!(matches!(error, Error::LockCycle { .. }), "{error:?}");
    second.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 1, "the waiter goes on");
    first.commit(HandlerOutcome::Succeeded).await.unwrap();
}

/// A session whose stored bytes do not decode fails to load, and its key
/// goes back as the load fails: the next update of the key, begun while the
/// failed one is still open, meets the same error at once instead of
/// waiting for it. Eager and lazy, in both variants.
#[tokio::test]
async fn a_session_that_fails_to_load_gives_its_key_back_at_once() {
    for storage in both_variants() {
        for key in ["counter:1", "visits:1"] {
            let put = tg_session::storage::Write::Put {
                key: tg_session::StorageKey::parse(key),
                value: bytes::Bytes::from_static(b"\xff not a session"),
                expected_version: None,
                ttl: None,
            };
            storage.write(&[put]).await.unwrap();
        }
        let manager = SessionManager::builder()
            .storage(storage.clone())
            .register::<Counter>()
            .register::<Visits>()
            .lock_timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let first = manager.begin(user(1)).await;
        let failed = |error: Error| matches!(error, Error::Decode { .. });
        assert!(failed(first.counter().map(|c| c.apple).unwrap_err()));
        assert!(failed(first.visits().await.map(|v| v.count).unwrap_err()));
        let (counter, visits) = tokio::time::timeout(Duration::from_secs(5), async {
            let next = manager.begin(user(1)).await;
            let counter = next.counter().map(|c| c.apple).unwrap_err();
            let visits = next.visits().await.map(|v| v.count).unwrap_err();
            next.commit(HandlerOutcome::Succeeded).await.unwrap();
            (counter, visits)
        })
        .await
        .expect("the failed loads gave their keys back");
        assert!(failed(counter.clone()), "{counter:?}");
        assert!(failed(visits.clone()), "{visits:?}");
        first.commit(HandlerOutcome::Succeeded).await.unwrap();
    }
}
