//! Checks every SQL storage must pass beyond the core behaviour suite:
//! batched loads, versions and expiry at the storage level, and no lost
//! update between two managers (two bot processes) sharing one database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tg_session::storage::{
    Conflict, Lease, LeaseOwner, LeasedLoad, Leases, Record, SharedStorage, Write, WriteOutcome,
};
use tg_session::{Error, HandlerOutcome, Session, SessionManager, StorageKey, UpdateIds};

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

/// The version a write stored; panics on any other outcome.
pub fn written(outcome: &WriteOutcome) -> u64 {
    match outcome {
        WriteOutcome::Written { version } => *version,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// The values of loaded records, versions left out.
pub fn values(loaded: &[Option<Record>]) -> Vec<Option<&str>> {
    loaded
        .iter()
        .map(|record| {
            record
                .as_ref()
                .map(|r| std::str::from_utf8(&r.value).unwrap())
        })
        .collect()
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
    let first = storage
        .write(&[put(&a, "A", None, None), put(&b, "B", None, None)])
        .await
        .unwrap();
    let (va, vb) = (written(&first[0]), written(&first[1]));
    // A new record's version is the clock (µs), never 1 again after a delete.
    assert!(va > 1_577_836_800_000_000 && vb > 1_577_836_800_000_000);
    let outcomes = storage
        .write(&[
            put(&a, "A2", Some(va), None),
            put(&b, "B?", Some(vb + 5), None),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written { version: va + 1 },
            WriteOutcome::Conflict(Conflict::NewerVersion),
        ]
    );
    let loaded = storage
        .load(&[b.clone(), missing.clone(), a.clone(), b.clone()])
        .await
        .unwrap();
    assert_eq!(
        loaded,
        [
            Some(Record {
                value: Bytes::from_static(b"B"),
                version: vb
            }),
            None,
            Some(Record {
                value: Bytes::from_static(b"A2"),
                version: va + 1
            }),
            Some(Record {
                value: Bytes::from_static(b"B"),
                version: vb
            }),
        ]
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
    let v1 = written(&storage.write(&[put(&k, "v1", None, None)]).await.unwrap()[0]);
    let outcomes = storage
        .write(&[
            put(&k, "again", None, None),
            put(&k, "stale", Some(v1 + 7), None),
            put(&other, "o", None, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes[..2],
        [
            WriteOutcome::Conflict(Conflict::NewerVersion),
            WriteOutcome::Conflict(Conflict::NewerVersion),
        ]
    );
    written(&outcomes[2]);
    assert_eq!(
        storage.load(std::slice::from_ref(&k)).await.unwrap(),
        [Some(Record {
            value: Bytes::from_static(b"v1"),
            version: v1
        })]
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
    let fresh = written(
        &storage
            .write(&[put(&k, "fresh", None, None)])
            .await
            .unwrap()[0],
    );
    assert!(
        fresh > v1,
        "a re-created record starts above the deleted one"
    );
}

/// ABA: an update reads version v, another client deletes the record and
/// creates it again; the first update's write must not find "its" version.
pub async fn a_recreated_record_refuses_a_stale_write(storage: SharedStorage) {
    let k = key("aba", "k");
    let v = written(
        &storage
            .write(&[put(&k, "first", None, None)])
            .await
            .unwrap()[0],
    );
    storage
        .write(&[Write::Delete { key: k.clone() }])
        .await
        .unwrap();
    let again = written(
        &storage
            .write(&[put(&k, "second", None, None)])
            .await
            .unwrap()[0],
    );
    assert_ne!(again, v);
    assert_eq!(
        storage
            .write(&[put(&k, "stale", Some(v), None)])
            .await
            .unwrap(),
        [WriteOutcome::Conflict(Conflict::NewerVersion)]
    );
    assert_eq!(
        values(&storage.load(std::slice::from_ref(&k)).await.unwrap()),
        [Some("second")]
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
    let versions: Vec<u64> = outcomes.iter().map(written).collect();
    let all = [short.clone(), kept.clone(), forever.clone(), zero.clone()];
    assert_eq!(
        values(&storage.load(&all).await.unwrap()),
        [Some("s"), Some("k"), Some("f"), None],
        "a zero TTL expires at once"
    );

    age(short.as_str()).await;
    assert_eq!(
        values(&storage.load(&all).await.unwrap()),
        [None, Some("k"), Some("f"), None],
        "an expired record is invisible"
    );
    // Expired counts as absent: a write expecting the old version is told
    // it expired, one expecting nothing takes its place (above its version).
    assert_eq!(
        storage
            .write(&[put(&short, "stale", Some(versions[0]), hour)])
            .await
            .unwrap(),
        [WriteOutcome::Conflict(Conflict::Expired)]
    );
    let new = written(
        &storage
            .write(&[put(&short, "new", None, hour)])
            .await
            .unwrap()[0],
    );
    assert!(new > versions[0]);
    assert_eq!(
        values(&storage.load(std::slice::from_ref(&short)).await.unwrap()),
        [Some("new")]
    );

    // Renewing a record renews its expiry; dropping the TTL keeps it forever.
    assert_eq!(
        storage
            .write(&[put(&kept, "k2", Some(versions[1]), None)])
            .await
            .unwrap(),
        [WriteOutcome::Written {
            version: versions[1] + 1
        }]
    );
    age(short.as_str()).await;
    age(kept.as_str()).await;
    assert_eq!(
        values(&storage.load(&all).await.unwrap()),
        [None, Some("k2"), Some("f"), None]
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

fn lease(owner: &LeaseOwner, ttl: Duration) -> Lease<'_> {
    Lease { owner, ttl }
}

fn acquired(load: LeasedLoad) -> Vec<Option<Record>> {
    match load {
        LeasedLoad::Acquired(records) => records,
        busy => panic!("expected the leases, got {busy:?}"),
    }
}

/// Leases at the storage level: taken with the load (all or none, the
/// records read after taking), fencing other owners' writes, released by
/// the commit (lease-only rows gone), renewed, and kept by a clear.
/// `rows` counts the rows physically stored under a test's keys.
pub async fn leases_serialize_and_fence(storage: SharedStorage, rows: impl AsyncFn(&str) -> i64) {
    let leases: &dyn Leases = storage.leases().expect("leases enabled");
    let (a, b) = (LeaseOwner::new(), LeaseOwner::new());
    let minute = Duration::from_secs(60);
    let (stored, empty, third) = (
        key("lease", "stored"),
        key("lease", "empty"),
        key("lease", "third"),
    );
    let v = written(
        &storage
            .write(&[put(&stored, "s", None, None)])
            .await
            .unwrap()[0],
    );

    let records = acquired(
        leases
            .acquire(&[stored.clone(), empty.clone()], lease(&a, minute))
            .await
            .unwrap(),
    );
    assert_eq!(values(&records), [Some("s"), None]);
    assert_eq!(records[0].as_ref().map(|r| r.version), Some(v));
    // Taking it again as the same owner renews it.
    acquired(
        leases
            .acquire(std::slice::from_ref(&empty), lease(&a, minute))
            .await
            .unwrap(),
    );
    assert_eq!(rows("lease").await, 2, "a lease-only row for the empty key");

    // Busy, and all or none: `third` was not kept by b.
    match leases
        .acquire(&[third.clone(), empty.clone()], lease(&b, minute))
        .await
        .unwrap()
    {
        LeasedLoad::Busy { index, retry_in } => {
            assert_eq!(index, 1);
            assert!(
                retry_in > Duration::from_secs(50) && retry_in <= minute,
                "{retry_in:?}"
            );
        }
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(
        rows("lease").await,
        2,
        "b's lease on `third` was given back"
    );
    assert!(
        !leases
            .renew(std::slice::from_ref(&third), lease(&b, minute))
            .await
            .unwrap()
    );

    // Fenced: neither b nor a write without lease may touch a's keys.
    assert_eq!(
        leases
            .write_and_release(&[put(&stored, "b", Some(v), None)], &[], &b)
            .await
            .unwrap(),
        [WriteOutcome::Conflict(Conflict::LeaseLost)]
    );
    assert_eq!(
        storage
            .write(&[
                put(&empty, "x", None, None),
                Write::Delete {
                    key: stored.clone()
                }
            ])
            .await
            .unwrap(),
        [
            WriteOutcome::Conflict(Conflict::LeaseLost),
            WriteOutcome::Conflict(Conflict::LeaseLost)
        ]
    );
    assert!(
        leases
            .renew(&[stored.clone(), empty.clone()], lease(&a, minute))
            .await
            .unwrap()
    );
    assert!(
        !leases
            .renew(std::slice::from_ref(&stored), lease(&b, minute))
            .await
            .unwrap()
    );

    // a commits: one write, both leases released, the lease-only row gone.
    assert_eq!(
        leases
            .write_and_release(
                &[put(&stored, "a", Some(v), None)],
                &[stored.clone(), empty.clone()],
                &a
            )
            .await
            .unwrap(),
        [WriteOutcome::Written { version: v + 1 }]
    );
    assert_eq!(
        rows("lease").await,
        1,
        "the lease-only row went with its lease"
    );
    assert!(
        !leases
            .renew(std::slice::from_ref(&stored), lease(&a, minute))
            .await
            .unwrap()
    );

    // b now gets both, with a's write.
    let records = acquired(
        leases
            .acquire(&[empty.clone(), stored.clone()], lease(&b, minute))
            .await
            .unwrap(),
    );
    assert_eq!(values(&records), [None, Some("a")]);

    // A clear under the lease keeps the lease; the next record starts above.
    assert_eq!(
        leases
            .write_and_release(
                &[Write::Delete {
                    key: stored.clone()
                }],
                &[],
                &b
            )
            .await
            .unwrap(),
        [WriteOutcome::Deleted]
    );
    assert_eq!(
        storage.load(std::slice::from_ref(&stored)).await.unwrap(),
        [None]
    );
    assert!(matches!(
        leases
            .acquire(std::slice::from_ref(&stored), lease(&a, minute))
            .await
            .unwrap(),
        LeasedLoad::Busy { index: 0, .. }
    ));
    let outcomes = leases
        .write_and_release(
            &[put(&stored, "b", None, None), put(&empty, "e", None, None)],
            &[stored.clone(), empty.clone(), third.clone()],
            &b,
        )
        .await
        .unwrap();
    assert!(written(&outcomes[0]) > v + 1);
    written(&outcomes[1]);
    // Only releasing, twice: the second finds nothing to do.
    assert_eq!(
        leases
            .write_and_release(&[], std::slice::from_ref(&stored), &b)
            .await
            .unwrap(),
        []
    );
    let records = acquired(
        leases
            .acquire(&[stored.clone(), empty.clone()], lease(&a, minute))
            .await
            .unwrap(),
    );
    assert_eq!(values(&records), [Some("b"), Some("e")]);
    // A released clear leaves nothing behind.
    leases
        .write_and_release(
            &[
                Write::Delete {
                    key: stored.clone(),
                },
                Write::Delete { key: empty.clone() },
            ],
            &[stored.clone(), empty.clone()],
            &a,
        )
        .await
        .unwrap();
    assert_eq!(rows("lease").await, 0);
}

/// A lease ends by itself after its TTL: another owner takes it, and the
/// first owner's late write is refused. A lease-only row whose lease
/// expired is removed by the cleanup.
pub async fn leases_expire(
    storage: SharedStorage,
    rows: impl AsyncFn(&str) -> i64,
    cleanup: impl AsyncFn() -> u64,
) {
    let leases: &dyn Leases = storage.leases().expect("leases enabled");
    let (a, b) = (LeaseOwner::new(), LeaseOwner::new());
    let short = Duration::from_millis(300);
    let (k, orphan) = (key("expiry", "k"), key("expiry", "orphan"));
    let v = written(&storage.write(&[put(&k, "v", None, None)]).await.unwrap()[0]);
    acquired(
        leases
            .acquire(std::slice::from_ref(&k), lease(&a, short))
            .await
            .unwrap(),
    );
    let retry_in = match leases
        .acquire(std::slice::from_ref(&k), lease(&b, short))
        .await
        .unwrap()
    {
        LeasedLoad::Busy { retry_in, .. } => retry_in,
        other => panic!("expected busy, got {other:?}"),
    };
    assert!(retry_in <= short, "{retry_in:?}");
    tokio::time::sleep(retry_in + Duration::from_millis(100)).await;
    acquired(
        leases
            .acquire(std::slice::from_ref(&k), lease(&b, Duration::from_secs(60)))
            .await
            .unwrap(),
    );
    assert_eq!(
        leases
            .write_and_release(&[put(&k, "a", Some(v), None)], std::slice::from_ref(&k), &a)
            .await
            .unwrap(),
        [WriteOutcome::Conflict(Conflict::LeaseLost)]
    );
    assert!(
        !leases
            .renew(std::slice::from_ref(&k), lease(&a, short))
            .await
            .unwrap()
    );
    leases
        .write_and_release(&[put(&k, "b", Some(v), None)], std::slice::from_ref(&k), &b)
        .await
        .unwrap();
    assert_eq!(
        leases
            .write_and_release(&[put(&k, "a", Some(v), None)], &[], &a)
            .await
            .unwrap(),
        [WriteOutcome::Conflict(Conflict::NewerVersion)]
    );

    // A process that died holding a lease on a key with no record.
    acquired(
        leases
            .acquire(
                std::slice::from_ref(&orphan),
                lease(&a, Duration::from_millis(50)),
            )
            .await
            .unwrap(),
    );
    assert_eq!(rows("expiry").await, 2);
    assert_eq!(
        storage.load(std::slice::from_ref(&orphan)).await.unwrap(),
        [None]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(cleanup().await >= 1);
    assert_eq!(
        rows("expiry").await,
        1,
        "the expired lease-only row is gone"
    );
}

/// Updates changing two sessions, aborted at random points (the caller's
/// future dropped mid-load or mid-commit), hundreds of times: nothing is
/// left half-done on the connection (no error afterwards, no false
/// conflicts), and no acknowledged write is lost. A commit cancelled after
/// it started may still land (it runs to completion), so each value lies
/// between the commits that returned `Ok` and those plus the cancelled ones.
pub async fn cancelled_updates_lose_nothing(storage: SharedStorage) {
    const USERS: u64 = 4;
    const ROUNDS: u64 = 400;
    let manager = manager(&storage, "cancel");
    let mut ok = [0u32; USERS as usize];
    let mut maybe = [0u32; USERS as usize];
    // Aborts land anywhere in an update: before, during and after its load
    // and commit, spread over twice the time an update takes here.
    let started = std::time::Instant::now();
    for _ in 0..10 {
        increment(&manager, 99, 99, true).await.unwrap();
    }
    let span = u64::try_from((started.elapsed() / 5).as_micros())
        .unwrap()
        .max(1);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..ROUNDS {
        let user = round % USERS;
        let chat = i64::try_from(user).unwrap();
        let task = {
            let manager = manager.clone();
            tokio::spawn(async move { increment(&manager, user, chat, true).await })
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let abort_at = std::time::Instant::now() + Duration::from_micros(seed % span);
        while std::time::Instant::now() < abort_at && !task.is_finished() {
            tokio::task::yield_now().await;
        }
        task.abort();
        let slot = usize::try_from(user).unwrap();
        match task.await {
            Ok(Ok(())) => ok[slot] += 1,
            // A cancelled commit that landed makes the next update conflict.
            Ok(Err(Error::Conflict { .. })) | Err(_) => maybe[slot] += 1,
            Ok(Err(other)) => panic!("round {round}: update failed: {other}"),
        }
    }
    // Let commits that outlived their update finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for user in 0..USERS {
        let slot = usize::try_from(user).unwrap();
        let chat = i64::try_from(user).unwrap();
        let ctx = manager.begin(UpdateIds::new().user(user).chat(chat)).await;
        let (hits, visits) = (
            ctx.get::<Counter>().unwrap().hits,
            ctx.get::<Visits>().unwrap().n,
        );
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        for value in [hits, visits] {
            assert!(
                (ok[slot]..=ok[slot] + maybe[slot]).contains(&value),
                "user {user}: {value} outside {}..={}",
                ok[slot],
                ok[slot] + maybe[slot]
            );
        }
        // And the storage works normally afterwards.
        for _ in 0..3 {
            increment(&manager, user, chat, true).await.unwrap();
        }
        assert_eq!(hits_of(&manager, user, chat).await, hits + 3);
    }
    println!("cancelled updates: ok {ok:?}, cancelled or conflicting {maybe:?}");
}

async fn hits_of(manager: &SessionManager, user: u64, chat: i64) -> u32 {
    let ctx = manager.begin(UpdateIds::new().user(user).chat(chat)).await;
    let hits = ctx.get::<Counter>().unwrap().hits;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    hits
}
