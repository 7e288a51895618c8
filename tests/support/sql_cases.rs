//! Checks every SQL storage must pass beyond the core behaviour suite:
//! batched loads, versions and expiry at the storage level, and no lost
//! update between two managers (two bot processes) sharing one database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tg_session::{
    Conflict, Error, HandlerOutcome, Record, Session, SessionManager, SharedStorage, StorageKey,
    UpdateIds, Write, WriteOutcome,
};

/// A per-user counter.
#[derive(Session, Serialize, Deserialize, Debug)]
#[session(key = "counter")]
pub struct Counter {
    pub hits: u32,
}

/// A per-chat counter, so an update can change two sessions (a two-write batch).
#[derive(Session, Serialize, Deserialize, Debug)]
#[session(key = "visits", scope = "chat")]
pub struct Visits {
    pub n: u32,
}

pub fn key(test: &str, name: &str) -> StorageKey {
    StorageKey::new(Some(test), None, "case", name)
}

pub fn put(
    key: &StorageKey,
    value: &'static str,
    expected: Option<u64>,
    ttl: Option<Duration>,
) -> Write {
    Write::Put {
        key: key.clone(),
        value: Bytes::from_static(value.as_bytes()),
        expected_version: expected,
        ttl,
    }
}

pub fn record(value: &'static str, version: u64) -> Option<Record> {
    Some(Record {
        value: Bytes::from_static(value.as_bytes()),
        version,
    })
}

pub fn manager(storage: &SharedStorage, prefix: &str) -> SessionManager {
    SessionManager::builder()
        .storage(storage.clone())
        .prefix(prefix)
        .register::<Counter>()
        .register::<Visits>()
        .build()
        .unwrap()
}

/// One load answers many keys in input order, repeated and missing ones included;
/// one write batch reports one outcome per write.
pub async fn batches_keep_order(storage: SharedStorage) {
    let (a, b, missing) = (
        key("order", "a"),
        key("order", "b"),
        key("order", "missing"),
    );
    let outcomes = storage
        .write(&[
            put(&a, "A", None, None),
            put(&b, "B", None, None),
            put(&a, "A2", Some(1), None),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written { version: 1 },
            WriteOutcome::Written { version: 1 },
            WriteOutcome::Written { version: 2 },
        ]
    );
    let loaded = storage
        .load(&[b.clone(), missing.clone(), a.clone(), b.clone()])
        .await
        .unwrap();
    assert_eq!(
        loaded,
        [record("B", 1), None, record("A2", 2), record("B", 1)]
    );
    assert_eq!(storage.load(&[]).await.unwrap(), []);
    let many: Vec<StorageKey> = (0..1200)
        .map(|i| key("order", &format!("many-{i}")))
        .collect();
    let loaded = storage.load(&many).await.unwrap();
    assert!(loaded.iter().all(Option::is_none));
}

/// Puts are conditional on the version; a conflicting write leaves the stored
/// record intact and does not stop the rest of the batch.
pub async fn versions_are_checked(storage: SharedStorage) {
    let (k, other) = (key("versions", "k"), key("versions", "other"));
    assert_eq!(
        storage.write(&[put(&k, "v1", None, None)]).await.unwrap(),
        [WriteOutcome::Written { version: 1 }]
    );
    let outcomes = storage
        .write(&[
            put(&k, "again", None, None),
            put(&k, "stale", Some(7), None),
            put(&other, "o", None, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Conflict(Conflict::NewerVersion),
            WriteOutcome::Conflict(Conflict::NewerVersion),
            WriteOutcome::Written { version: 1 }
        ]
    );
    assert_eq!(
        storage.load(std::slice::from_ref(&k)).await.unwrap(),
        [record("v1", 1)]
    );
    assert_eq!(
        storage
            .write(&[Write::Delete { key: k.clone() }])
            .await
            .unwrap(),
        [WriteOutcome::Deleted]
    );
    assert_eq!(
        storage.load(std::slice::from_ref(&k)).await.unwrap(),
        [None]
    );
    assert_eq!(
        storage
            .write(&[put(&k, "fresh", None, None)])
            .await
            .unwrap(),
        [WriteOutcome::Written { version: 1 }]
    );
}

/// A record written with a TTL is visible until it expires. `age` moves the
/// stored expiry of a key into the past (the way time would), `count` says
/// how many rows of the test's keys are physically stored.
pub async fn ttl_expires_and_cleanup_removes(
    storage: SharedStorage,
    age: impl AsyncFn(&str),
    count: impl AsyncFn(&str) -> i64,
    cleanup: impl AsyncFn() -> u64,
) {
    let (short, kept, forever, zero) = (
        key("ttl", "short"),
        key("ttl", "kept"),
        key("ttl", "forever"),
        key("ttl", "zero"),
    );
    let hour = Some(Duration::from_secs(3600));
    let outcomes = storage
        .write(&[
            put(&short, "s", None, hour),
            put(&kept, "k", None, hour),
            put(&forever, "f", None, None),
            put(&zero, "z", None, Some(Duration::ZERO)),
        ])
        .await
        .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| *o == WriteOutcome::Written { version: 1 })
    );
    let all = [short.clone(), kept.clone(), forever.clone(), zero.clone()];
    assert_eq!(
        storage.load(&all).await.unwrap(),
        [record("s", 1), record("k", 1), record("f", 1), None],
        "a zero TTL expires at once"
    );

    age(short.as_str()).await;
    assert_eq!(
        storage.load(&all).await.unwrap(),
        [None, record("k", 1), record("f", 1), None],
        "an expired record is invisible"
    );
    // Expired counts as absent: a write expecting the old version conflicts,
    // one expecting nothing takes its place.
    assert_eq!(
        storage
            .write(&[put(&short, "stale", Some(1), hour)])
            .await
            .unwrap(),
        [WriteOutcome::Conflict(Conflict::NewerVersion)]
    );
    assert_eq!(
        storage
            .write(&[put(&short, "new", None, hour)])
            .await
            .unwrap(),
        [WriteOutcome::Written { version: 1 }]
    );
    assert_eq!(
        storage.load(std::slice::from_ref(&short)).await.unwrap(),
        [record("new", 1)]
    );

    // Renewing a record renews its expiry; dropping the TTL keeps it forever.
    assert_eq!(
        storage
            .write(&[put(&kept, "k2", Some(1), None)])
            .await
            .unwrap(),
        [WriteOutcome::Written { version: 2 }]
    );
    age(short.as_str()).await;
    age(kept.as_str()).await;
    assert_eq!(
        storage.load(&all).await.unwrap(),
        [None, record("k2", 2), record("f", 1), None]
    );

    assert_eq!(count("ttl").await, 4, "expired rows stay until cleaned up");
    assert_eq!(cleanup().await, 2, "the aged and the zero-TTL rows go");
    assert_eq!(count("ttl").await, 2);
    assert_eq!(cleanup().await, 0);
}

/// Runs one update that adds one to the user's counter and, if `visit`, to
/// the chat's visits.
async fn increment(
    manager: &SessionManager,
    user: u64,
    chat: i64,
    visit: bool,
) -> Result<(), Error> {
    let ctx = manager.begin(UpdateIds::new().user(user).chat(chat)).await;
    ctx.get::<Counter>()?.hits += 1;
    if visit {
        ctx.get::<Visits>()?.n += 1;
    }
    // The reply a real handler sends between load and save, giving the other
    // manager a chance to interleave.
    tokio::task::yield_now().await;
    ctx.commit(HandlerOutcome::Succeeded).await
}

async fn hits(manager: &SessionManager, user: u64) -> u32 {
    let ctx = manager.begin(UpdateIds::new().user(user).chat(1)).await;
    let hits = ctx.get::<Counter>().unwrap().hits;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    hits
}

/// Two managers (two processes: separate lock tables) that both read version
/// 1: the first commit wins, the second is refused with `Conflict` and the
/// first one's data survives.
pub async fn second_writer_gets_conflict(first: SharedStorage, second: SharedStorage) {
    let (one, two) = (manager(&first, "conflict"), manager(&second, "conflict"));
    increment(&one, 1, 1, true).await.unwrap();

    let a = one.begin(UpdateIds::new().user(1).chat(1)).await;
    let b = two.begin(UpdateIds::new().user(1).chat(2)).await;
    a.get::<Counter>().unwrap().hits = 10;
    b.get::<Counter>().unwrap().hits = 20;
    b.get::<Visits>().unwrap().n = 5;
    a.commit(HandlerOutcome::Succeeded).await.unwrap();
    let error = b.commit(HandlerOutcome::Succeeded).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Conflict {
                session: "counter",
                ..
            }
        ),
        "expected a conflict on the counter, got {error}"
    );
    assert_eq!(hits(&one, 1).await, 10, "the first writer's data survives");
    // The other write of the refused batch (a different key) still applied.
    let ctx = one.begin(UpdateIds::new().user(9).chat(2)).await;
    assert_eq!(ctx.get::<Visits>().unwrap().n, 5);
}

/// Two managers hammering the same user's counter concurrently, each retrying
/// an update refused with `Conflict` (as a bot would): every increment lands.
pub async fn concurrent_managers_lose_nothing(first: SharedStorage, second: SharedStorage) {
    const PER_MANAGER: u32 = 60;
    let managers = [manager(&first, "race"), manager(&second, "race")];
    let mut tasks = Vec::new();
    for manager in managers.clone() {
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..PER_MANAGER {
                loop {
                    match increment(&manager, 7, 7, false).await {
                        Ok(()) => break,
                        Err(Error::Conflict { .. }) => conflicts += 1,
                        Err(other) => panic!("update failed: {other}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    assert_eq!(
        hits(&managers[1], 7).await,
        2 * PER_MANAGER,
        "({conflicts} conflicts retried)"
    );
}

/// Many updates of different users at once, each writing two sessions (a
/// two-write transaction), through one manager and its storage: none fails
/// ("database is locked" or otherwise) and every count is exact.
pub async fn many_concurrent_updates(storage: SharedStorage) {
    const USERS: u64 = 50;
    const ROUNDS: u32 = 4;
    let manager = manager(&storage, "many");
    let mut tasks = Vec::new();
    for user in 0..USERS {
        for _ in 0..ROUNDS {
            let manager = manager.clone();
            tasks.push(tokio::spawn(async move {
                increment(&manager, user, i64::try_from(user).unwrap(), true).await
            }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for user in 0..USERS {
        assert_eq!(hits(&manager, user).await, ROUNDS);
        let ctx = manager
            .begin(UpdateIds::new().chat(i64::try_from(user).unwrap()))
            .await;
        assert_eq!(ctx.get::<Visits>().unwrap().n, ROUNDS);
    }
}
