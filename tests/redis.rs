//! The Redis storage against a real `redis-server` each test starts itself:
//! the whole behaviour suite, then what only Redis has: round trips per
//! update, conflicts between processes, outages, TTL, prefixes.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;
mod support {
    pub mod redis_server;
}

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use support::redis_server::{CommandCounter, RedisCluster, RedisServer};
use tg_session::storage::{Conflict, Record, Storage, Write, WriteOutcome};
use tg_session::{
    Error, HandlerOutcome, RedisStorage, Session, SessionManager, SharedStorage, StorageError,
    StorageErrorKind, StorageKey, UpdateIds, async_trait,
};

/// A Redis storage on a server of its own, which stops when the storage is
/// dropped (so no test leaves a `redis-server` behind).
struct ServedStorage {
    storage: RedisStorage,
    _server: RedisServer,
}

#[async_trait]
impl Storage for ServedStorage {
    fn name(&self) -> &str {
        self.storage.name()
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        self.storage.load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        self.storage.write(writes).await
    }
}

async fn redis_storage() -> SharedStorage {
    let server = RedisServer::start();
    let storage = RedisStorage::connect(&server.url()).await.unwrap();
    Arc::new(ServedStorage {
        storage,
        _server: server,
    })
}

behaviour_suite!(redis_storage);

#[derive(Session, Serialize, Deserialize, Debug)]
#[session(key = "counter")]
struct Counter {
    n: u32,
}

#[derive(Session, Serialize, Deserialize, Debug, Default)]
#[session(key = "room", scope = "chat")]
struct Room {
    messages: u32,
}

#[derive(Session, Serialize, Deserialize, Debug, Default)]
#[session(key = "profile", lazy, scope = "user_in_chat", ttl = "1h")]
struct Profile {
    name: Option<String>,
}

async fn storage(server: &RedisServer) -> RedisStorage {
    RedisStorage::connect(&server.url()).await.unwrap()
}

fn manager(storage: RedisStorage) -> SessionManager {
    SessionManager::builder()
        .storage(storage)
        .register::<Counter>()
        .register::<Room>()
        .register::<Profile>()
        .build()
        .unwrap()
}

/// One update that increments the counter; `Ok(new value)`.
async fn increment(manager: &SessionManager, user: u64) -> Result<u32, Error> {
    manager
        .run(UpdateIds::new().user(user).chat(-1), |ctx| async move {
            let mut counter = ctx.counter()?;
            counter.n += 1;
            Ok::<_, Error>(counter.n)
        })
        .await
}

async fn read_counter(manager: &SessionManager, user: u64) -> u32 {
    manager
        .run(UpdateIds::new().user(user).chat(-1), |ctx| async move {
            Ok::<_, Error>(ctx.counter()?.n)
        })
        .await
        .unwrap()
}

fn key(name: &str, scope: &str) -> StorageKey {
    StorageKey::new(None, None, name, scope)
}

fn put(key: StorageKey, value: &'static [u8], expected_version: Option<u64>) -> Write {
    Write::Put {
        key,
        value: Bytes::from_static(value),
        expected_version,
        ttl: None,
    }
}

#[tokio::test]
async fn round_trips_per_update() {
    let server = RedisServer::start();
    let storage = storage(&server).await;
    let both = manager(storage.clone());
    let lazy_only = SessionManager::builder()
        .storage(storage)
        .register::<Profile>()
        .build()
        .unwrap();
    let ids = UpdateIds::new().user(7).chat(-5);
    let mut counter = CommandCounter::new(&server);

    // Eager read-modify-write of two sessions (user and chat scope): one
    // load and one write for both, on a fresh user and on a stored one.
    for _ in 0..2 {
        let ctx = both.begin(ids.clone()).await;
        ctx.counter().unwrap().n += 1;
        ctx.room().unwrap().messages += 1;
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        assert_eq!(
            counter.take(),
            ["MGET", "EVALSHA"],
            "eager read-modify-write"
        );
    }

    // Read-only: the load only.
    let ctx = both.begin(ids.clone()).await;
    assert_eq!(ctx.counter().unwrap().n, 2);
    assert_eq!(ctx.room().unwrap().messages, 2);
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(counter.take(), ["MGET"], "read-only update");

    // A lazy session that the handler never touches costs nothing.
    let ctx = lazy_only.begin(ids.clone()).await;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(
        counter.take(),
        Vec::<String>::new(),
        "untouched lazy session"
    );

    // Touched lazily: loaded on access, written after.
    let ctx = lazy_only.begin(ids.clone()).await;
    ctx.profile().await.unwrap().name = Some("Ann".into());
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(
        counter.take(),
        ["MGET", "EVALSHA"],
        "lazy read-modify-write"
    );

    // A mutable access that leaves the bytes equal writes nothing.
    let ctx = both.begin(ids).await;
    {
        let mut same = ctx.counter().unwrap();
        let _mutably_borrowed: &mut Counter = &mut same;
    }
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(counter.take(), ["MGET"], "unchanged session");
}

#[tokio::test]
async fn conflict_between_two_processes_keeps_the_other_writers_data() {
    let server = RedisServer::start();
    let first = manager(storage(&server).await);
    let second = manager(storage(&server).await);
    assert_eq!(increment(&first, 1).await.unwrap(), 1);

    let ids = UpdateIds::new().user(1).chat(-1);
    let a = first.begin(ids.clone()).await;
    let b = second.begin(ids).await;
    a.counter().unwrap().n = 10;
    b.counter().unwrap().n = 20;
    a.commit(HandlerOutcome::Succeeded).await.unwrap();
    match b.commit(HandlerOutcome::Succeeded).await {
        Err(Error::Conflict {
            session,
            key,
            storage,
            ..
        }) => {
            assert_eq!(session, "counter");
            assert_eq!(key, "counter:1");
            assert_eq!(&*storage, format!("redis://127.0.0.1:{}/0", server.port()));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(read_counter(&first, 1).await, 10);
    assert_eq!(read_counter(&second, 1).await, 10);

    // Two new records racing: the second insert conflicts too.
    let a = first.begin(UpdateIds::new().user(2).chat(-1)).await;
    let b = second.begin(UpdateIds::new().user(2).chat(-1)).await;
    a.counter().unwrap().n = 1;
    b.counter().unwrap().n = 2;
    b.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert!(matches!(
        a.commit(HandlerOutcome::Succeeded).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(read_counter(&first, 2).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_processes_lose_no_increment() {
    let server = RedisServer::start();
    let processes = [
        manager(storage(&server).await),
        manager(storage(&server).await),
    ];
    let committed = Arc::new(AtomicU32::new(0));
    let conflicts = Arc::new(AtomicU32::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for process in &processes {
        for _ in 0..8 {
            let (process, committed, conflicts) =
                (process.clone(), committed.clone(), conflicts.clone());
            tasks.spawn(async move {
                for _ in 0..25 {
                    match increment(&process, 99).await {
                        Ok(_) => committed.fetch_add(1, Ordering::Relaxed),
                        Err(Error::Conflict { .. }) => conflicts.fetch_add(1, Ordering::Relaxed),
                        Err(other) => panic!("increment failed: {other}"),
                    };
                }
            });
        }
    }
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    let (committed, conflicts) = (
        committed.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
    );
    eprintln!("{committed} increments committed, {conflicts} refused with a conflict");
    assert_eq!(committed + conflicts, 2 * 8 * 25);
    assert_eq!(
        read_counter(&processes[0], 99).await,
        committed,
        "{committed} committed, {conflicts} conflicts"
    );
}

#[tokio::test]
async fn outage_is_an_error_and_committed_data_survives_a_restart() {
    let mut server = RedisServer::start_persistent();
    let timeout = Duration::from_millis(500);
    let storage = storage(&server).await.command_timeout(timeout);
    let manager = manager(storage.clone());
    for expected in 1..=5 {
        assert_eq!(increment(&manager, 3).await.unwrap(), expected);
    }
    let in_flight = manager.begin(UpdateIds::new().user(3).chat(-1)).await;
    in_flight.counter().unwrap().n += 1;

    server.kill();
    // Far above the command timeout: only a hang would reach it.
    let bound = timeout * 10;
    let storage_error = |result: Result<(), Error>| match result {
        Err(Error::Storage { source, key, .. }) => {
            assert_eq!(key, "counter:3");
            assert!(
                matches!(
                    source.kind(),
                    StorageErrorKind::Unavailable | StorageErrorKind::Timeout
                ),
                "{source}"
            );
        }
        other => panic!("expected a storage error, got {other:?}"),
    };
    let commit = tokio::time::timeout(bound, in_flight.commit(HandlerOutcome::Succeeded));
    storage_error(commit.await.expect("commit hung"));
    for _ in 0..3 {
        let update = tokio::time::timeout(bound, increment(&manager, 3));
        storage_error(update.await.expect("update hung").map(drop));
    }
    let keys = [key("counter", "3")];
    let load = tokio::time::timeout(bound, storage.load(&keys));
    assert!(load.await.expect("load hung").is_err());

    server.restart();
    assert_eq!(
        increment(&manager, 3).await.unwrap(),
        6,
        "the first update after the restart"
    );
    assert_eq!(increment(&manager, 3).await.unwrap(), 7);
}

#[tokio::test]
async fn stalled_server_times_out_and_recovers() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let manager = manager(storage(&server).await.command_timeout(timeout));
    assert_eq!(increment(&manager, 4).await.unwrap(), 1);

    server.pause();
    let update = tokio::time::timeout(timeout * 10, increment(&manager, 4)).await;
    server.resume();
    match update.expect("update hung") {
        Err(Error::Storage { source, .. }) => assert_eq!(source.kind(), StorageErrorKind::Timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The stalled request may still be answered late; the next update works.
    assert_eq!(increment(&manager, 4).await.unwrap(), 2);
}

#[tokio::test]
async fn ttl_is_native_and_expired_records_are_gone() {
    let server = RedisServer::start();
    let storage = storage(&server).await;
    let manager = manager(storage.clone());
    let ctx = manager.begin(UpdateIds::new().user(5).chat(-2)).await;
    ctx.profile().await.unwrap().name = Some("Bo".into());
    ctx.counter().unwrap().n = 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    let pttl: i64 = server
        .command(&["PTTL", "profile:{-2:5}"])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(
        (3_500_000..=3_600_000).contains(&pttl),
        "profile PTTL {pttl}"
    );
    assert_eq!(
        server.command(&["PTTL", "counter:{5}"]),
        ":-1",
        "counter has no TTL"
    );

    // A short TTL really expires.
    let short = key("short", "1");
    let written = storage
        .write(&[Write::Put {
            key: short.clone(),
            value: Bytes::from_static(b"x"),
            expected_version: None,
            ttl: Some(Duration::from_millis(50)),
        }])
        .await
        .unwrap();
    assert_eq!(written, [WriteOutcome::Written { version: 1 }]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while storage.load(std::slice::from_ref(&short)).await.unwrap()[0].is_some() {
        assert!(
            Instant::now() < deadline,
            "record with a 50 ms TTL still there after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Expired means absent: a new record starts at version 1 again.
    let again = storage.write(&[put(short, b"y", None)]).await.unwrap();
    assert_eq!(again, [WriteOutcome::Written { version: 1 }]);

    // Rewriting without a TTL makes the record permanent.
    let k = key("ttl", "1");
    let mut first = put(k.clone(), b"a", None);
    if let Write::Put { ttl, .. } = &mut first {
        *ttl = Some(Duration::from_secs(60));
    }
    storage.write(&[first]).await.unwrap();
    storage.write(&[put(k, b"b", Some(1))]).await.unwrap();
    assert_eq!(server.command(&["PTTL", "ttl:{1}"]), ":-1");
}

#[tokio::test]
async fn prefixes_isolate_bots_sharing_a_server() {
    let server = RedisServer::start();
    let storage = storage(&server).await;
    let with_prefix = |prefix: &str| {
        SessionManager::builder()
            .storage(storage.clone())
            .prefix(prefix)
            .register::<Counter>()
            .build()
            .unwrap()
    };
    let (a, b, none) = (
        with_prefix("bot_a"),
        with_prefix("bot_b"),
        manager(storage.clone()),
    );
    for _ in 0..3 {
        increment(&a, 8).await.unwrap();
    }
    increment(&b, 8).await.unwrap();
    assert_eq!(read_counter(&a, 8).await, 3);
    assert_eq!(read_counter(&b, 8).await, 1);
    assert_eq!(read_counter(&none, 8).await, 0);
    let mut keys: Vec<String> = server
        .command(&["KEYS", "*"])
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    assert_eq!(keys, ["bot_a:counter:{8}", "bot_b:counter:{8}"]);
}

#[tokio::test]
async fn batch_semantics() {
    let server = RedisServer::start();
    let storage = storage(&server).await;
    assert_eq!(storage.load(&[]).await.unwrap(), []);
    assert_eq!(storage.write(&[]).await.unwrap(), []);

    let (one, two, gone) = (key("c", "1"), key("c", "2"), key("c", "3"));
    let outcomes = storage
        .write(&[
            put(one.clone(), b"1", None),
            put(two.clone(), b"2", Some(4)),
        ])
        .await
        .unwrap();
    // Each write stands alone: the conflict does not undo the other.
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written { version: 1 },
            WriteOutcome::Conflict(Conflict::NewerVersion)
        ]
    );
    let outcomes = storage
        .write(&[
            put(one.clone(), b"11", Some(1)),
            put(two.clone(), b"2", None),
            Write::Delete { key: gone.clone() },
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written { version: 2 },
            WriteOutcome::Written { version: 1 },
            WriteOutcome::Deleted
        ]
    );
    let loaded = storage
        .load(&[two.clone(), gone, one.clone()])
        .await
        .unwrap();
    let record = |value: &'static [u8], version| {
        Some(Record {
            value: Bytes::from_static(value),
            version,
        })
    };
    assert_eq!(loaded, [record(b"2", 1), None, record(b"11", 2)]);
    assert_eq!(
        storage
            .write(&[Write::Delete { key: one.clone() }])
            .await
            .unwrap(),
        [WriteOutcome::Deleted]
    );
    assert_eq!(storage.load(&[one]).await.unwrap(), [None]);
}

#[tokio::test]
async fn foreign_values_are_reported_and_never_overwritten() {
    let server = RedisServer::start();
    let storage = storage(&server).await;
    assert_eq!(server.command(&["SET", "c:{short}", "abc"]), "+OK");
    assert_eq!(server.command(&["HSET", "c:{hash}", "f", "v"]), ":1");

    let error = storage.load(&[key("c", "short")]).await.unwrap_err();
    assert_eq!(error.kind(), StorageErrorKind::Other);
    assert!(error.to_string().contains("c:{short}"), "{error}");
    let outcomes = storage
        .write(&[
            put(key("c", "short"), b"x", None),
            put(key("c", "hash"), b"x", None),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Conflict(Conflict::NewerVersion),
            WriteOutcome::Conflict(Conflict::NewerVersion)
        ]
    );
    assert_eq!(server.command(&["GET", "c:{short}"]), "abc");
    assert_eq!(server.command(&["HGET", "c:{hash}", "f"]), "v");
}

#[tokio::test]
async fn script_is_reloaded_after_a_flush() {
    let server = RedisServer::start();
    let manager = manager(storage(&server).await);
    assert_eq!(increment(&manager, 6).await.unwrap(), 1);
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]), "+OK");
    assert_eq!(increment(&manager, 6).await.unwrap(), 2);
}

#[tokio::test]
async fn name_hides_the_password() {
    let server = RedisServer::start_with(&["--save", "", "--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/2", server.port());
    let storage = RedisStorage::connect(&url).await.unwrap();
    assert_eq!(
        storage.name(),
        format!("redis://127.0.0.1:{}/2", server.port())
    );
    assert!(!format!("{storage:?}").contains("s3cret"));
    let manager = manager(storage);
    assert_eq!(increment(&manager, 1).await.unwrap(), 1);
    assert!(
        RedisStorage::connect(&format!("redis://:wrong@127.0.0.1:{}/0", server.port()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        RedisStorage::connect(&format!("redis://127.0.0.1:{port}/0")),
    )
    .await
    .expect("connect hung");
    assert_eq!(result.unwrap_err().kind(), StorageErrorKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_batches_per_slot_and_refuses_stale_writes() {
    let cluster = RedisCluster::start();
    let storage = RedisStorage::cluster(cluster.urls()).await.unwrap();
    assert!(
        storage.name().starts_with("redis-cluster://127.0.0.1:"),
        "{}",
        storage.name()
    );
    let first = manager(storage.clone());
    // Each update touches a user slot and a chat slot, on whichever nodes they live.
    for user in 1..=30 {
        let ctx = first
            .begin(UpdateIds::new().user(user).chat(-(user as i64)))
            .await;
        ctx.counter().unwrap().n += user as u32;
        ctx.room().unwrap().messages += 1;
        ctx.profile().await.unwrap().name = Some(format!("user {user}"));
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    }
    for user in 1..=30 {
        let ctx = first
            .begin(UpdateIds::new().user(user).chat(-(user as i64)))
            .await;
        assert_eq!(ctx.counter().unwrap().n, user as u32);
        assert_eq!(ctx.room().unwrap().messages, 1);
        assert_eq!(
            ctx.profile().await.unwrap().name,
            Some(format!("user {user}"))
        );
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    }
    for node in &cluster.nodes {
        assert_ne!(
            node.command(&["DBSIZE"]),
            ":0",
            "keys spread over every node"
        );
    }

    // One batch over three slots: outcomes in input order.
    let outcomes = storage
        .write(&[
            put(key("c", "a"), b"1", None),
            put(key("c", "b"), b"2", Some(3)),
            put(key("c", "c"), b"3", None),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written { version: 1 },
            WriteOutcome::Conflict(Conflict::NewerVersion),
            WriteOutcome::Written { version: 1 }
        ]
    );

    let second = manager(RedisStorage::cluster(cluster.urls()).await.unwrap());
    let ids = UpdateIds::new().user(1).chat(-1);
    let a = first.begin(ids.clone()).await;
    let b = second.begin(ids).await;
    a.counter().unwrap().n = 100;
    b.counter().unwrap().n = 200;
    a.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert!(matches!(
        b.commit(HandlerOutcome::Succeeded).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(read_counter(&second, 1).await, 100);
}
