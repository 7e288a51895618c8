//! The Redis storage against a real `redis-server` each test starts itself:
//! the whole behaviour suite, then what only Redis has: round trips per
//! update, conflicts between processes, outages, TTL, prefixes, and the
//! cross-process leases (taken with the load, released with the commit,
//! waiters woken through pub/sub), tested through the `Leases` trait.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tg_session_test_kit::{behaviour_suite, data_suite};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tg_session::storage::{
    Conflict, KeyPrefix, Lease, LeaseOwner, LeasedLoad, Leases, Record, ReleaseWatch, Restore,
    RestoreOutcome, ScanCursor, ScanPage, Storage, Write, WriteOutcome,
};
use tg_session::storage::{SharedStorage, async_trait};
use tg_session::{
    Error, HandlerOutcome, RedisStorage, Session, SessionManager, StorageError, StorageErrorKind,
    StorageKey, UpdateIds,
};
use tg_session_test_kit::redis_server::{CommandCounter, RedisCluster, RedisServer};

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

    fn leases(&self) -> Option<&dyn Leases> {
        self.storage.leases()
    }

    async fn scan(
        &self,
        prefix: &KeyPrefix,
        cursor: Option<&ScanCursor>,
        limit: usize,
        with_values: bool,
    ) -> Result<ScanPage, StorageError> {
        self.storage.scan(prefix, cursor, limit, with_values).await
    }

    async fn restore(&self, records: &[Restore]) -> Result<Vec<RestoreOutcome>, StorageError> {
        self.storage.restore(records).await
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
data_suite!(redis_storage);

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

/// 2020-01-01 in microseconds since the Unix epoch: a new record's version
/// is the server's clock, far above this.
const CLOCK_2020: u64 = 1_577_836_800_000_000;

/// The version a write stored (panics on any other outcome).
fn version(outcome: &WriteOutcome) -> u64 {
    match outcome {
        WriteOutcome::Written { version } => *version,
        other => panic!("expected a written record, got {other:?}"),
    }
}

/// The version of a new record, checked to come from the clock.
fn new_version(outcome: &WriteOutcome) -> u64 {
    let version = version(outcome);
    assert!(version > CLOCK_2020, "new record at version {version}");
    version
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
    // With leases (the default), a load takes them and a commit gives them
    // back in the same script calls.
    let both_ways = ["EVALSHA", "EVALSHA"];

    // Eager read-modify-write of two sessions (user and chat scope): one
    // load and one write for both, on a fresh user and on a stored one.
    for _ in 0..2 {
        let ctx = both.begin(ids.clone()).await;
        ctx.counter().unwrap().n += 1;
        ctx.room().unwrap().messages += 1;
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        assert_eq!(counter.take(), both_ways, "eager read-modify-write");
    }

    // Read-only: the load and the release.
    let ctx = both.begin(ids.clone()).await;
    assert_eq!(ctx.counter().unwrap().n, 2);
    assert_eq!(ctx.room().unwrap().messages, 2);
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(counter.take(), both_ways, "read-only update");

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
    assert_eq!(counter.take(), both_ways, "lazy read-modify-write");

    // A mutable access that leaves the bytes equal writes nothing.
    let ctx = both.begin(ids.clone()).await;
    {
        let mut same = ctx.counter().unwrap();
        let _mutably_borrowed: &mut Counter = &mut same;
    }
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(counter.take(), both_ways, "unchanged session");

    // Without leases (a single-process bot): a plain load, and nothing
    // after a read-only update.
    let single = manager(
        RedisStorage::connect(&server.url())
            .await
            .unwrap()
            .cross_process_leases(false),
    );
    counter.take(); // its connection loading the scripts
    let ctx = single.begin(ids.clone()).await;
    ctx.counter().unwrap().n += 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(
        counter.take(),
        ["MGET", "EVALSHA"],
        "no leases: read-modify-write"
    );
    let ctx = single.begin(ids).await;
    assert_eq!(ctx.counter().unwrap().n, 3);
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(counter.take(), ["MGET"], "no leases: read-only update");
}

#[tokio::test]
async fn conflict_between_two_processes_keeps_the_other_writers_data() {
    // Without leases (opted out), two processes do not wait for each other:
    // the version check still refuses the stale write.
    let server = RedisServer::start();
    let first = manager(storage(&server).await.cross_process_leases(false));
    let second = manager(storage(&server).await.cross_process_leases(false));
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
    let first = new_version(&written[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while storage.load(std::slice::from_ref(&short)).await.unwrap()[0].is_some() {
        assert!(
            Instant::now() < deadline,
            "record with a 50 ms TTL still there after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Expired means absent: a new record, at a version above the old one's.
    let again = storage.write(&[put(short, b"y", None)]).await.unwrap();
    assert!(new_version(&again[0]) > first);

    // Rewriting without a TTL makes the record permanent.
    let k = key("ttl", "1");
    let mut first = put(k.clone(), b"a", None);
    if let Write::Put { ttl, .. } = &mut first {
        *ttl = Some(Duration::from_secs(60));
    }
    let written = storage.write(&[first]).await.unwrap();
    let rewritten = storage
        .write(&[put(k, b"b", Some(version(&written[0])))])
        .await
        .unwrap();
    assert_eq!(version(&rewritten[0]), version(&written[0]) + 1);
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
    let v1 = new_version(&outcomes[0]);
    assert_eq!(outcomes[1], WriteOutcome::Conflict(Conflict::NewerVersion));
    let outcomes = storage
        .write(&[
            put(one.clone(), b"11", Some(v1)),
            put(two.clone(), b"2", None),
            Write::Delete { key: gone.clone() },
        ])
        .await
        .unwrap();
    assert_eq!(version(&outcomes[0]), v1 + 1);
    let v2 = new_version(&outcomes[1]);
    assert_eq!(outcomes[2], WriteOutcome::Deleted);
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
    assert_eq!(loaded, [record(b"2", v2), None, record(b"11", v1 + 1)]);
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
    new_version(&outcomes[0]);
    assert_eq!(outcomes[1], WriteOutcome::Conflict(Conflict::NewerVersion));
    new_version(&outcomes[2]);

    // Without leases, the version check alone refuses the stale write.
    let first = manager(storage.clone().cross_process_leases(false));
    let second = manager(
        RedisStorage::cluster(cluster.urls())
            .await
            .unwrap()
            .cross_process_leases(false),
    );
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

// ---------------------------------------------------------------------------
// Leases, through the `Leases` trait as the runtime calls it.
// ---------------------------------------------------------------------------

/// Long enough that no lease of a test runs out by itself unless it means to.
const LONG: Duration = Duration::from_secs(60);

fn lease(owner: &LeaseOwner) -> Lease<'_> {
    Lease { owner, ttl: LONG }
}

/// The records of `keys`, whose leases `owner` must get.
async fn acquired(
    storage: &RedisStorage,
    keys: &[StorageKey],
    owner: &LeaseOwner,
) -> Vec<Option<Record>> {
    match storage.acquire(keys, lease(owner)).await.unwrap() {
        LeasedLoad::Acquired(records) => records,
        busy => panic!("expected the leases, got {busy:?}"),
    }
}

/// The index and wait of the busy key of `keys`, which `owner` must not get.
async fn busy(
    storage: &RedisStorage,
    keys: &[StorageKey],
    owner: &LeaseOwner,
) -> (usize, Duration) {
    match storage.acquire(keys, lease(owner)).await.unwrap() {
        LeasedLoad::Busy { index, retry_in } => (index, retry_in),
        acquired => panic!("expected a busy lease, got {acquired:?}"),
    }
}

/// Who holds the lease of `key` on `server` (`""`: nobody).
fn holder(server: &RedisServer, key: &StorageKey) -> String {
    server.command(&["GET", &format!("{}:lease", redis_key(key))])
}

fn redis_key(key: &StorageKey) -> String {
    format!("{}{{{}}}", key.namespace(), key.scope_key())
}

fn record(value: &'static [u8], version: u64) -> Option<Record> {
    Some(Record {
        value: Bytes::from_static(value),
        version,
    })
}

/// A watch woken by releases, once the storage's subscription is up (the
/// first watch starts it).
async fn notified_watch(storage: &RedisStorage, key: &StorageKey) -> ReleaseWatch {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let watch = storage.watch(key);
        if watch.is_notified() {
            return watch;
        }
        assert!(
            Instant::now() < deadline,
            "no release subscription after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn leases_are_on_unless_opted_out() {
    let server = RedisServer::start();
    assert!(storage(&server).await.leases().is_some());
    let single_process = storage(&server).await.cross_process_leases(false);
    assert!(single_process.leases().is_none());
    assert!(format!("{single_process:?}").contains("cross_process_leases: false"));
}

#[tokio::test]
async fn acquire_takes_every_lease_of_a_batch_or_none() {
    let server = RedisServer::start();
    let (a, b) = (storage(&server).await, storage(&server).await);
    let (owner_a, owner_b) = (LeaseOwner::new(), LeaseOwner::new());
    let (k1, k2, k3) = (key("c", "1"), key("c", "2"), key("c", "3"));

    assert_eq!(acquired(&a, &[], &owner_a).await, []);
    assert_eq!(
        acquired(&a, &[k1.clone(), k2.clone()], &owner_a).await,
        [None, None]
    );
    assert_eq!(holder(&server, &k1), owner_a.as_str());
    assert_eq!(holder(&server, &k2), owner_a.as_str());

    // Another owner: busy on the second key, and takes none of the batch.
    let (index, retry_in) = busy(&b, &[k3.clone(), k2.clone()], &owner_b).await;
    assert_eq!(index, 1);
    assert!(
        retry_in > LONG - Duration::from_secs(5) && retry_in <= LONG,
        "{retry_in:?}"
    );
    assert_eq!(holder(&server, &k3), "", "nothing of a busy batch is taken");
    // Its wait is flagged, so the release will be published.
    assert_eq!(server.command(&["EXISTS", "c:{2}:lease:w"]), ":1");

    // The holder takes its own lease again: renewed, not busy.
    assert_eq!(
        acquired(&a, std::slice::from_ref(&k1), &owner_a).await,
        [None]
    );

    // A busy answer gives back the leases of the batch the owner held.
    assert_eq!(
        acquired(&b, std::slice::from_ref(&k3), &owner_b).await,
        [None]
    );
    assert_eq!(busy(&b, &[k3.clone(), k1.clone()], &owner_b).await.0, 1);
    assert_eq!(holder(&server, &k3), "");

    // The holder writes and releases; the next owner reads what it wrote,
    // because records are read after the leases are taken.
    let written = a
        .write_and_release(
            &[put(k1.clone(), b"from a", None)],
            &[k1.clone(), k2.clone()],
            &owner_a,
        )
        .await
        .unwrap();
    let version = new_version(&written[0]);
    assert_eq!(holder(&server, &k1), "");
    assert_eq!(holder(&server, &k2), "");
    assert_eq!(server.command(&["EXISTS", "c:{2}:lease:w"]), ":0");
    assert_eq!(
        acquired(&b, &[k3.clone(), k2.clone(), k1.clone()], &owner_b).await,
        [None, None, record(b"from a", version)]
    );
    assert_eq!(holder(&server, &k1), owner_b.as_str());
}

#[tokio::test]
async fn writes_are_fenced_by_the_lease() {
    let server = RedisServer::start();
    let (a, b) = (storage(&server).await, storage(&server).await);
    let (owner_a, owner_b) = (LeaseOwner::new(), LeaseOwner::new());
    let k = key("fence", "1");
    let keys = std::slice::from_ref(&k);

    acquired(&a, keys, &owner_a).await;
    // `save()` mid-handler: a write that keeps the lease.
    let saved = a
        .write_and_release(&[put(k.clone(), b"a", None)], &[], &owner_a)
        .await
        .unwrap();
    let version = new_version(&saved[0]);
    assert_eq!(
        holder(&server, &k),
        owner_a.as_str(),
        "save keeps the lease"
    );

    // Another owner's writes are refused while the lease is held, and
    // change nothing.
    let refused = b
        .write_and_release(
            &[
                put(k.clone(), b"b", Some(version)),
                Write::Delete { key: k.clone() },
            ],
            keys,
            &owner_b,
        )
        .await
        .unwrap();
    assert_eq!(
        refused,
        [
            WriteOutcome::Conflict(Conflict::LeaseLost),
            WriteOutcome::Conflict(Conflict::LeaseLost)
        ]
    );
    assert_eq!(
        holder(&server, &k),
        owner_a.as_str(),
        "other owners' leases are left alone"
    );
    assert_eq!(a.load(keys).await.unwrap(), [record(b"a", version)]);

    // The holder's own write is not.
    let written = a
        .write_and_release(&[put(k.clone(), b"a2", Some(version))], keys, &owner_a)
        .await
        .unwrap();
    assert_eq!(
        written,
        [WriteOutcome::Written {
            version: version + 1
        }]
    );
    assert_eq!(holder(&server, &k), "");
}

#[tokio::test]
async fn an_expired_lease_is_taken_and_its_late_write_refused() {
    let server = RedisServer::start();
    let (a, b) = (storage(&server).await, storage(&server).await);
    let (owner_a, owner_b) = (LeaseOwner::new(), LeaseOwner::new());
    let k = key("expiry", "1");
    let keys = std::slice::from_ref(&k);
    let written = a.write(&[put(k.clone(), b"0", None)]).await.unwrap();
    let version = new_version(&written[0]);

    let short = Lease {
        owner: &owner_a,
        ttl: Duration::from_millis(100),
    };
    assert!(matches!(
        a.acquire(keys, short).await.unwrap(),
        LeasedLoad::Acquired(_)
    ));
    let (_, retry_in) = busy(&b, keys, &owner_b).await;
    assert!(retry_in <= Duration::from_millis(100), "{retry_in:?}");

    // The lease ends by itself: the holder's process may have died.
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        match b.acquire(keys, lease(&owner_b)).await.unwrap() {
            LeasedLoad::Acquired(records) => break records,
            LeasedLoad::Busy { retry_in, .. } => {
                assert!(
                    Instant::now() < deadline,
                    "a 100 ms lease still held after 10 s"
                );
                tokio::time::sleep(retry_in).await;
            }
        }
    };
    assert_eq!(records, [record(b"0", version)]);

    // The first holder wakes up late: its write is refused while the new
    // holder works, and after the new holder wrote, by the version.
    let late = [put(k.clone(), b"late", Some(version))];
    assert_eq!(
        a.write_and_release(&late, keys, &owner_a).await.unwrap(),
        [WriteOutcome::Conflict(Conflict::LeaseLost)]
    );
    assert_eq!(holder(&server, &k), owner_b.as_str());
    b.write_and_release(&[put(k.clone(), b"b", Some(version))], keys, &owner_b)
        .await
        .unwrap();
    assert_eq!(
        a.write_and_release(&late, keys, &owner_a).await.unwrap(),
        [WriteOutcome::Conflict(Conflict::NewerVersion)]
    );
    assert_eq!(a.load(keys).await.unwrap(), [record(b"b", version + 1)]);
}

#[tokio::test]
async fn a_vanished_record_is_an_expiry_when_the_write_has_a_ttl() {
    let server = RedisServer::start();
    let storage = storage(&server).await;
    let owner = LeaseOwner::new();
    let k = key("gone", "1");
    let keys = std::slice::from_ref(&k);
    let written = storage.write(&[put(k.clone(), b"x", None)]).await.unwrap();
    let version = new_version(&written[0]);
    acquired(&storage, keys, &owner).await;
    assert_eq!(server.command(&["DEL", "gone:{1}"]), ":1");
    let with_ttl = Write::Put {
        key: k.clone(),
        value: Bytes::from_static(b"y"),
        expected_version: Some(version),
        ttl: Some(Duration::from_secs(60)),
    };
    assert_eq!(
        storage
            .write_and_release(
                &[with_ttl, put(k.clone(), b"z", Some(version))],
                keys,
                &owner
            )
            .await
            .unwrap(),
        [
            WriteOutcome::Conflict(Conflict::Expired),
            WriteOutcome::Conflict(Conflict::NewerVersion)
        ]
    );
    assert_eq!(storage.load(keys).await.unwrap(), [None]);
}

#[tokio::test]
async fn release_gives_back_only_the_owners_leases() {
    let server = RedisServer::start();
    let storage = storage(&server).await;
    let (owner_a, owner_b) = (LeaseOwner::new(), LeaseOwner::new());
    let (k1, k2) = (key("rel", "1"), key("rel", "2"));
    acquired(&storage, std::slice::from_ref(&k1), &owner_a).await;
    acquired(&storage, std::slice::from_ref(&k2), &owner_b).await;

    // Only releases: no outcomes, and another owner's lease stays.
    let outcomes = storage
        .write_and_release(&[], &[k1.clone(), k2.clone()], &owner_a)
        .await
        .unwrap();
    assert_eq!(outcomes, []);
    assert_eq!(holder(&server, &k1), "");
    assert_eq!(holder(&server, &k2), owner_b.as_str());
    // Releasing what one does not hold (again) is harmless.
    storage
        .write_and_release(&[], std::slice::from_ref(&k1), &owner_a)
        .await
        .unwrap();
    assert_eq!(holder(&server, &k2), owner_b.as_str());
    // Nothing but the record is left once everything is released.
    storage
        .write_and_release(&[put(k2.clone(), b"2", None)], &[k2], &owner_b)
        .await
        .unwrap();
    assert_eq!(server.command(&["KEYS", "*"]), "rel:{2}");
}

#[tokio::test]
async fn renew_extends_only_leases_still_held() {
    let server = RedisServer::start();
    let storage = storage(&server).await;
    let (owner, other) = (LeaseOwner::new(), LeaseOwner::new());
    let (k1, k2) = (key("renew", "1"), key("renew", "2"));
    let both = [k1.clone(), k2.clone()];
    let short = |owner| Lease {
        owner,
        ttl: Duration::from_secs(2),
    };
    assert!(matches!(
        storage.acquire(&both, short(&owner)).await.unwrap(),
        LeasedLoad::Acquired(_)
    ));
    let pttl = |key: &str| -> i64 {
        server
            .command(&["PTTL", key])
            .trim_start_matches(':')
            .parse()
            .unwrap()
    };
    assert!(pttl("renew:{1}:lease") <= 2_000);

    assert!(storage.renew(&both, lease(&owner)).await.unwrap());
    assert!(pttl("renew:{1}:lease") > 50_000);
    assert!(pttl("renew:{2}:lease") > 50_000);
    assert!(storage.renew(&[], lease(&owner)).await.unwrap());

    // Not held by `other`: refused, and the holder's lease untouched.
    assert!(!storage.renew(&both, short(&other)).await.unwrap());
    assert!(pttl("renew:{1}:lease") > 50_000);

    // One of them lost: `false`, though the other is still extended.
    storage
        .write_and_release(&[], std::slice::from_ref(&k2), &owner)
        .await
        .unwrap();
    assert!(!storage.renew(&both, short(&owner)).await.unwrap());
    assert!(pttl("renew:{1}:lease") <= 2_000);
    assert_eq!(holder(&server, &k2), "");
}

#[tokio::test]
async fn a_recreated_record_never_takes_a_version_it_had() {
    // ABA: an update reads at version v; meanwhile another process deletes
    // the record and creates it again. With versions restarting at 1, the
    // stale write would find "its" version and overwrite the new record.
    let server = RedisServer::start();
    let (a, b) = (storage(&server).await, storage(&server).await);
    let k = key("aba", "1");
    let keys = std::slice::from_ref(&k);
    let written = a.write(&[put(k.clone(), b"first", None)]).await.unwrap();
    let read = a.load(keys).await.unwrap()[0].clone().unwrap();
    assert_eq!(read.version, new_version(&written[0]));

    assert_eq!(
        b.write(&[Write::Delete { key: k.clone() }]).await.unwrap(),
        [WriteOutcome::Deleted]
    );
    let recreated = b.write(&[put(k.clone(), b"second", None)]).await.unwrap();
    assert!(new_version(&recreated[0]) > read.version);

    let stale = a
        .write(&[put(k.clone(), b"stale", Some(read.version))])
        .await
        .unwrap();
    assert_eq!(stale, [WriteOutcome::Conflict(Conflict::NewerVersion)]);
    assert_eq!(
        a.load(keys).await.unwrap(),
        [record(b"second", version(&recreated[0]))]
    );

    // Records written before versions came from the clock still load and
    // update from their own version.
    let old = key("aba", "old");
    let mut bytes = 3u64.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"old");
    let mut cmd = redis::cmd("SET");
    cmd.arg("aba:{old}").arg(bytes);
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = cmd.query_async(&mut raw).await.unwrap();
    assert_eq!(
        a.load(std::slice::from_ref(&old)).await.unwrap(),
        [record(b"old", 3)]
    );
    assert_eq!(
        a.write(&[put(old, b"new", Some(3))]).await.unwrap(),
        [WriteOutcome::Written { version: 4 }]
    );
}

/// One read-modify-write of a decimal counter under `key`'s lease, waiting
/// for the lease as the runtime does: watch, one more try, then wait for the
/// release (or `retry_in`, capped).
async fn leased_increment(storage: &RedisStorage, key: &StorageKey) -> WriteOutcome {
    let owner = LeaseOwner::new();
    let keys = std::slice::from_ref(key);
    let deadline = Instant::now() + Duration::from_secs(30);
    let cap = Duration::from_millis(200);
    let record = 'load: loop {
        let LeasedLoad::Busy { index, .. } = storage.acquire(keys, lease(&owner)).await.unwrap()
        else {
            break 'load storage.acquire(keys, lease(&owner)).await.unwrap();
        };
        assert!(Instant::now() < deadline, "waited 30 s for a lease");
        let watch = storage.watch(&keys[index]);
        match storage.acquire(keys, lease(&owner)).await.unwrap() {
            LeasedLoad::Busy { retry_in, .. } => watch.wait(retry_in.min(cap)).await,
            acquired => break 'load acquired,
        }
    };
    let LeasedLoad::Acquired(mut records) = record else {
        panic!("expected the lease, got {record:?}")
    };
    let record = records.pop().unwrap();
    let n: u32 = record.as_ref().map_or(0, |r| {
        std::str::from_utf8(&r.value).unwrap().parse().unwrap()
    });
    let put = Write::Put {
        key: key.clone(),
        value: Bytes::from((n + 1).to_string()),
        expected_version: record.map(|r| r.version),
        ttl: None,
    };
    let mut outcomes = storage
        .write_and_release(&[put], keys, &owner)
        .await
        .unwrap();
    outcomes.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_leases_lose_nothing_and_never_conflict() {
    // The two-replica case of issue 8: without leases the same workload ends
    // in conflicts (see `concurrent_processes_lose_no_increment`).
    let server = RedisServer::start();
    let processes = [storage(&server).await, storage(&server).await];
    let k = key("shared", "99");
    let mut tasks = tokio::task::JoinSet::new();
    for process in &processes {
        for _ in 0..8 {
            let (process, k) = (process.clone(), k.clone());
            tasks.spawn(async move {
                for _ in 0..25 {
                    let outcome = leased_increment(&process, &k).await;
                    assert!(
                        matches!(outcome, WriteOutcome::Written { .. }),
                        "{outcome:?}"
                    );
                }
            });
        }
    }
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    let stored = processes[0].load(std::slice::from_ref(&k)).await.unwrap();
    let stored = stored[0].as_ref().unwrap();
    assert_eq!(
        &stored.value[..],
        b"400",
        "2 processes x 8 tasks x 25 increments"
    );
    assert_eq!(
        server.command(&["KEYS", "*"]),
        "shared:{99}",
        "no lease left"
    );
}

#[tokio::test]
async fn a_release_wakes_a_waiter_through_pubsub() {
    let server = RedisServer::start();
    let (a, b) = (storage(&server).await, storage(&server).await);
    let (owner_a, owner_b) = (LeaseOwner::new(), LeaseOwner::new());
    let k = key("wake", "1");
    let keys = std::slice::from_ref(&k);

    // Every message on the release channel, seen by a plain subscriber.
    let mut channel = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    std::io::Write::write_all(
        &mut channel,
        &tg_session_test_kit::redis_server::encode(&["SUBSCRIBE", "tg-session:released"]),
    )
    .unwrap();
    channel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut channel = std::io::BufReader::new(channel);
    tg_session_test_kit::redis_server::read_reply(&mut channel);
    let published = |channel: &mut std::io::BufReader<std::net::TcpStream>| {
        use std::io::BufRead as _;
        channel
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let any = channel
            .fill_buf()
            .map(|buf| !buf.is_empty())
            .unwrap_or(false);
        channel
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        any.then(|| tg_session_test_kit::redis_server::read_reply(channel))
    };

    // Nobody waits: taking and releasing publishes nothing.
    acquired(&a, keys, &owner_a).await;
    a.write_and_release(&[], keys, &owner_a).await.unwrap();
    assert_eq!(published(&mut channel), None);

    let poll_timeout = Duration::from_secs(10);
    let mut latencies = Vec::new();
    for round in 0..20 {
        acquired(&a, keys, &owner_a).await;
        busy(&b, keys, &owner_b).await;
        let watch = notified_watch(&b, &k).await;
        // The runtime's one more try after starting the watch.
        busy(&b, keys, &owner_b).await;
        let waiter = tokio::spawn(async move {
            watch.wait(poll_timeout).await;
            Instant::now()
        });
        tokio::task::yield_now().await;
        let released = Instant::now();
        a.write_and_release(&[], keys, &owner_a).await.unwrap();
        let woke = waiter.await.unwrap();
        latencies.push(woke.duration_since(released));
        assert!(
            woke.duration_since(released) < Duration::from_secs(2),
            "round {round}: woken after {:?}, not by the release",
            woke.duration_since(released)
        );
        assert_eq!(
            published(&mut channel).as_deref(),
            Some("message\ntg-session:released\nwake:{1}:lease")
        );
        acquired(&b, keys, &owner_b).await;
        b.write_and_release(&[], keys, &owner_b).await.unwrap();
    }
    latencies.sort();
    eprintln!(
        "release -> waiter woken (release call included): median {:?}, max {:?}, over {} rounds; poll timeout {poll_timeout:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len()
    );
}

#[tokio::test]
async fn waiters_poll_while_the_subscription_is_lost_and_it_comes_back() {
    let server = RedisServer::start();
    let (a, b) = (storage(&server).await, storage(&server).await);
    let (owner_a, owner_b) = (LeaseOwner::new(), LeaseOwner::new());
    let k = key("resub", "1");
    let keys = std::slice::from_ref(&k);
    acquired(&a, keys, &owner_a).await;
    busy(&b, keys, &owner_b).await;
    let watch = notified_watch(&b, &k).await;

    // The server drops the subscriber: its waiters are woken at once (a
    // release may have been missed), and the storage subscribes again.
    let started = Instant::now();
    let killed = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, ":1");
    tokio::time::timeout(Duration::from_secs(5), watch.wait(Duration::from_secs(60)))
        .await
        .expect("a lost subscription wakes its waiters");
    eprintln!("lost subscription noticed after {:?}", started.elapsed());

    let watch = notified_watch(&b, &k).await;
    busy(&b, keys, &owner_b).await;
    a.write_and_release(&[], keys, &owner_a).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.wait(Duration::from_secs(60)))
        .await
        .expect("woken by a release after subscribing again");
}

#[tokio::test]
async fn lease_calls_fail_fast_when_the_server_does() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let storage = storage(&server).await.command_timeout(timeout);
    let owner = LeaseOwner::new();
    let k = key("down", "1");
    let keys = std::slice::from_ref(&k);
    let bound = timeout * 10;

    server.pause();
    let error = tokio::time::timeout(bound, storage.acquire(keys, lease(&owner)))
        .await
        .expect("acquire hung")
        .unwrap_err();
    assert_eq!(error.kind(), StorageErrorKind::Timeout, "{error}");
    let watch = storage.watch(&k);
    tokio::time::timeout(bound, watch.wait(Duration::from_millis(50)))
        .await
        .expect("a watch hung");
    server.resume();

    server.kill();
    let started = Instant::now();
    for result in [
        storage.acquire(keys, lease(&owner)).await.map(drop),
        storage.write_and_release(&[], keys, &owner).await.map(drop),
        storage.renew(keys, lease(&owner)).await.map(drop),
    ] {
        let error = result.unwrap_err();
        assert!(
            matches!(
                error.kind(),
                StorageErrorKind::Unavailable | StorageErrorKind::Timeout
            ),
            "{error}"
        );
    }
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());

    server.restart();
    assert_eq!(acquired(&storage, keys, &owner).await, [None]);
}

#[tokio::test]
async fn leases_cost_no_extra_round_trip() {
    let server = RedisServer::start();
    let storage = storage(&server).await;
    let owner = LeaseOwner::new();
    // An update's user and chat sessions: the eager batch.
    let keys = [key("counter", "7"), key("room", "-5")];
    let mut counter = CommandCounter::new(&server);

    // Eager read-modify-write: exactly two round trips, on a fresh user and
    // on a stored one.
    for _ in 0..2 {
        let records = acquired(&storage, &keys, &owner).await;
        let writes: Vec<Write> = keys
            .iter()
            .zip(records)
            .map(|(key, record)| Write::Put {
                key: key.clone(),
                value: Bytes::from_static(b"1"),
                expected_version: record.map(|r| r.version),
                ttl: None,
            })
            .collect();
        let outcomes = storage
            .write_and_release(&writes, &keys, &owner)
            .await
            .unwrap();
        assert!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, WriteOutcome::Written { .. }))
        );
        assert_eq!(
            counter.take(),
            ["EVALSHA", "EVALSHA"],
            "eager read-modify-write"
        );
    }

    // Read-only: take, then release.
    acquired(&storage, &keys, &owner).await;
    storage.write_and_release(&[], &keys, &owner).await.unwrap();
    assert_eq!(counter.take(), ["EVALSHA", "EVALSHA"], "read-only update");

    // Busy, renew, a save mid-handler: one each.
    let other = LeaseOwner::new();
    acquired(&storage, &keys[..1], &other).await;
    counter.take();
    busy(&storage, &keys, &owner).await;
    assert_eq!(counter.take(), ["EVALSHA"], "busy");
    assert!(storage.renew(&keys[..1], lease(&other)).await.unwrap());
    assert_eq!(counter.take(), ["EVALSHA"], "renew");
    storage
        .write_and_release(&[put(keys[1].clone(), b"2", None)], &[], &other)
        .await
        .unwrap();
    assert_eq!(counter.take(), ["EVALSHA"], "save");
}

/// Which node of `cluster` holds the slot of `key`.
fn node_of(cluster: &RedisCluster, key: &StorageKey) -> usize {
    let redis_key = redis_key(key);
    cluster
        .nodes
        .iter()
        .position(|node| !node.command(&["GET", &redis_key]).starts_with("-MOVED"))
        .unwrap()
}

/// One key per node of `cluster`, in node order.
fn one_key_per_node(cluster: &RedisCluster, name: &str) -> Vec<StorageKey> {
    let mut keys: Vec<Option<StorageKey>> = vec![None; cluster.nodes.len()];
    for n in 0.. {
        let k = key(name, &n.to_string());
        let node = node_of(cluster, &k);
        keys[node].get_or_insert(k);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    keys.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_leases_are_all_or_none_and_a_failed_node_fails_its_writes_only() {
    let mut cluster = RedisCluster::start();
    let timeout = Duration::from_millis(500);
    let a = RedisStorage::cluster(cluster.urls())
        .await
        .unwrap()
        .command_timeout(timeout);
    let b = RedisStorage::cluster(cluster.urls())
        .await
        .unwrap()
        .command_timeout(timeout);
    let (owner_a, owner_b) = (LeaseOwner::new(), LeaseOwner::new());
    let keys = one_key_per_node(&cluster, "lease");

    // Three slots on three nodes, taken together.
    assert_eq!(acquired(&a, &keys, &owner_a).await, [None, None, None]);
    assert!((0..3).all(|node| lease_on(&cluster, &keys, node) == owner_a.as_str()));
    a.write_and_release(&[], &keys, &owner_a).await.unwrap();
    assert!((0..3).all(|node| lease_on(&cluster, &keys, node).is_empty()));

    // Busy on the last node: the leases taken on the others are given back.
    acquired(&a, &keys[2..], &owner_a).await;
    assert_eq!(busy(&b, &keys, &owner_b).await.0, 2);
    assert!(lease_on(&cluster, &keys, 0).is_empty() && lease_on(&cluster, &keys, 1).is_empty());
    assert_eq!(lease_on(&cluster, &keys, 2), owner_a.as_str());

    // A release on any node wakes a waiter subscribed to the first one
    // (classic PUBLISH reaches every node of a cluster).
    let watch = notified_watch(&b, &keys[2]).await;
    busy(&b, &keys, &owner_b).await;
    let released = Instant::now();
    a.write_and_release(&[], &keys[2..], &owner_a)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.wait(Duration::from_secs(60)))
        .await
        .expect("woken by a release on another node");
    eprintln!(
        "cluster: release -> waiter woken in {:?}",
        released.elapsed()
    );
    assert_eq!(acquired(&b, &keys, &owner_b).await, [None, None, None]);
    assert!(storage_renews(&b, &keys, &owner_b).await);

    // A node that is down fails the writes of its slots only; the writes of
    // the other slots are applied (and their leases released) and reported.
    let writes: Vec<Write> = keys.iter().map(|k| put(k.clone(), b"v", None)).collect();
    cluster.nodes[1].kill();
    let started = Instant::now();
    let outcomes = b.write_and_release(&writes, &keys, &owner_b).await.unwrap();
    assert!(started.elapsed() < timeout * 4, "{:?}", started.elapsed());
    assert!(
        matches!(outcomes[0], WriteOutcome::Written { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], WriteOutcome::Failed(error)
            if matches!(error.kind(), StorageErrorKind::Unavailable | StorageErrorKind::Timeout)),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], WriteOutcome::Written { .. }),
        "{outcomes:?}"
    );
    eprintln!("cluster write with one node down: {outcomes:?}");
    for node in [0, 2] {
        let loaded = b.load(&keys[node..=node]).await.unwrap();
        assert_eq!(loaded[0].as_ref().map(|r| &r.value[..]), Some(&b"v"[..]));
        assert!(lease_on(&cluster, &keys, node).is_empty());
    }
    // When every slot of the batch failed, the batch fails.
    let error = b
        .write_and_release(&writes[1..2], &[], &owner_b)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.kind(),
            StorageErrorKind::Unavailable | StorageErrorKind::Timeout
        ),
        "{error}"
    );

    // A lease batch with a slot on the dead node fails, and keeps none of
    // the leases the live nodes gave.
    let owner_c = LeaseOwner::new();
    let error = a.acquire(&keys, lease(&owner_c)).await.unwrap_err();
    assert!(
        matches!(
            error.kind(),
            StorageErrorKind::Unavailable | StorageErrorKind::Timeout
        ),
        "{error}"
    );
    for node in [0, 2] {
        assert!(lease_on(&cluster, &keys, node).is_empty());
    }
}

/// Who holds the lease of the key of node `node` of `cluster` (from
/// [`one_key_per_node`]), `""` for nobody.
fn lease_on(cluster: &RedisCluster, keys: &[StorageKey], node: usize) -> String {
    holder(&cluster.nodes[node], &keys[node])
}

async fn storage_renews(storage: &RedisStorage, keys: &[StorageKey], owner: &LeaseOwner) -> bool {
    storage.renew(keys, lease(owner)).await.unwrap()
}
