//! The SQLite storage on real database files in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tg_session_test_kit::sql_cases;
use tg_session_test_kit::{behaviour_suite, data_suite};

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use sql_cases::{Counter, key, put, values, written};
use sqlx::Connection as _;
use sqlx::sqlite::SqliteConnection;
use tg_session::storage::{
    Lease, LeaseOwner, LeasedLoad, SharedStorage, Storage, Write, WriteOutcome,
};
use tg_session::{
    HandlerOutcome, SessionManager, SqliteStorage, SqliteSynchronous, StorageErrorKind, StorageKey,
    UpdateIds,
};

/// The behaviour suite's storages: a new file each, in a directory emptied
/// once per run (a `static` is never dropped, so it cannot clean up after).
async fn suite_storage() -> SharedStorage {
    static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sqlite-suite");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let file = DIR.join(format!("{}.db", NEXT.fetch_add(1, Ordering::Relaxed)));
    Arc::new(SqliteStorage::open(file).await.unwrap())
}

behaviour_suite!(suite_storage);
data_suite!(suite_storage);

/// A directory of database files, removed when the test ends.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap())
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.path().join(file)
    }

    async fn open(&self, file: &str) -> SqliteStorage {
        SqliteStorage::open(self.path(file)).await.unwrap()
    }

    async fn shared(&self, file: &str) -> SharedStorage {
        Arc::new(self.open(file).await)
    }

    /// A direct connection to the file, to look at and age rows as time would.
    async fn raw(&self, file: &str) -> SqliteConnection {
        SqliteConnection::connect(&format!("sqlite:{}", self.path(file).display()))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn batches_keep_order() {
    let dir = Dir::new();
    sql_cases::batches_keep_order(dir.shared("order.db").await).await;
}

#[tokio::test]
async fn versions_are_checked() {
    let dir = Dir::new();
    sql_cases::versions_are_checked(dir.shared("versions.db").await).await;
}

#[tokio::test]
async fn ttl_expires_and_cleanup_removes() {
    let dir = Dir::new();
    let storage = dir.open("ttl.db").await;
    let age = async |key: &str| {
        let mut conn = dir.raw("ttl.db").await;
        sqlx::query("UPDATE tg_sessions SET expires_at = expires_at - 3600001 WHERE key = ?1")
            .bind(key)
            .execute(&mut conn)
            .await
            .unwrap();
    };
    let count = async |prefix: &str| {
        let mut conn = dir.raw("ttl.db").await;
        sqlx::query_scalar("SELECT count(*) FROM tg_sessions WHERE key LIKE ?1")
            .bind(format!("{prefix}:%"))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    let cleanup = async || storage.cleanup_expired().await.unwrap();
    sql_cases::ttl_expires_and_cleanup_removes(Arc::new(storage.clone()), age, count, cleanup)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_writer_gets_conflict() {
    let dir = Dir::new();
    // Two storages on one file stand for two bot processes.
    sql_cases::second_writer_gets_conflict(
        dir.shared("conflict.db").await,
        dir.shared("conflict.db").await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_managers_lose_nothing() {
    let dir = Dir::new();
    sql_cases::concurrent_managers_lose_nothing(
        dir.shared("race.db").await,
        dir.shared("race.db").await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_updates_never_hit_a_locked_database() {
    let dir = Dir::new();
    sql_cases::many_concurrent_updates(dir.shared("many.db").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_storages_on_one_file_write_concurrently() {
    let dir = Dir::new();
    let (first, second) = (dir.shared("two.db").await, dir.shared("two.db").await);
    let mut tasks = Vec::new();
    for (index, storage) in [first, second].into_iter().cycle().take(64).enumerate() {
        tasks.push(tokio::spawn(async move {
            let (a, b) = (
                key("two", &format!("{index}-a")),
                key("two", &format!("{index}-b")),
            );
            storage
                .write(&[put(&a, "a", None, None), put(&b, "b", None, None)])
                .await
        }));
    }
    for task in tasks {
        for outcome in task.await.unwrap().unwrap() {
            written(&outcome);
        }
    }
}

#[tokio::test]
async fn sessions_survive_closing_and_reopening() {
    let dir = Dir::new();
    let storage = dir.open("reopen.db").await;
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
    storage.close().await;
    let error = storage.load(&[key("reopen", "x")]).await.unwrap_err();
    assert_eq!(error.kind(), StorageErrorKind::Unavailable, "{error}");
    drop((manager, storage));

    let reopened = dir.open("reopen.db").await;
    let manager = SessionManager::builder()
        .storage(reopened.clone())
        .register::<Counter>()
        .build()
        .unwrap();
    let ctx = manager.begin(UpdateIds::new().user(5)).await;
    let counter = ctx.get::<Counter>().unwrap();
    assert_eq!(counter.hits, 3);
    assert!(counter.version().is_some());
}

#[tokio::test]
async fn settings_are_applied() {
    let dir = Dir::new();
    // Spawned: opening is `Send`, like every storage future.
    let open = SqliteStorage::builder(dir.path("settings.db"))
        .synchronous(SqliteSynchronous::Full)
        .readers(1)
        .open();
    let storage = tokio::spawn(open).await.unwrap().unwrap();
    storage
        .write(&[put(&key("settings", "k"), "v", None, None)])
        .await
        .unwrap();
    let mut conn = dir.raw("settings.db").await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(storage.name().starts_with("sqlite:") && storage.name().ends_with("settings.db"));
}

#[tokio::test]
async fn table_name_is_configurable_and_checked() {
    let dir = Dir::new();
    let custom = SqliteStorage::builder(dir.path("tables.db"))
        .table("bot_two")
        .open()
        .await
        .unwrap();
    let default = dir.open("tables.db").await;
    assert_eq!(
        (custom.table(), default.table()),
        ("bot_two", "tg_sessions")
    );
    let k = key("tables", "k");
    custom
        .write(&[put(&k, "custom", None, None)])
        .await
        .unwrap();
    assert_eq!(
        default.load(std::slice::from_ref(&k)).await.unwrap(),
        [None]
    );
    assert_eq!(values(&custom.load(&[k]).await.unwrap()), [Some("custom")]);

    for bad in [
        "x; DROP TABLE tg_sessions; --",
        "main.sessions",
        "\"quoted\"",
        "1st",
        "",
    ] {
        let error = SqliteStorage::builder(dir.path("tables.db"))
            .table(bad)
            .open()
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("invalid session table name"),
            "{bad:?}: {error}"
        );
    }
    let mut conn = dir.raw("tables.db").await;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, ["bot_two", "tg_sessions"]);
}

#[tokio::test]
async fn an_unopenable_file_is_a_storage_error() {
    let dir = Dir::new();
    let error = SqliteStorage::open(dir.path("no-such-dir/sessions.db"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("unable to open"), "{error}");
}

#[tokio::test]
async fn spawned_cleanup_removes_expired_rows() {
    let dir = Dir::new();
    let storage = dir.open("spawned.db").await;
    let gone = sql_cases::key("spawned", "gone");
    let kept = sql_cases::key("spawned", "kept");
    let writes = [
        sql_cases::put(&gone, "g", None, Some(std::time::Duration::ZERO)),
        sql_cases::put(&kept, "k", None, None),
    ];
    storage.write(&writes).await.unwrap();
    let count = async || -> i64 {
        let mut conn = dir.raw("spawned.db").await;
        sqlx::query_scalar("SELECT count(*) FROM tg_sessions WHERE key LIKE 'spawned:%'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 2, "an expired row stays until cleaned up");
    // The task's first run is immediate; wait for it, within a deadline.
    let task = storage.spawn_cleanup(std::time::Duration::from_secs(3600));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count().await != 1 {
        assert!(std::time::Instant::now() < deadline, "cleanup never ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    task.abort();
    let remaining = storage.load(&[gone, kept]).await.unwrap();
    assert!(remaining[0].is_none() && remaining[1].is_some());
}

impl Dir {
    /// A storage with cross-process leases, as several processes on one
    /// file would open it.
    async fn leased(&self, file: &str) -> SqliteStorage {
        SqliteStorage::builder(self.path(file))
            .cross_process_leases(true)
            .open()
            .await
            .unwrap()
    }

    /// Rows physically stored under a test's keys.
    async fn rows(&self, file: &str, prefix: &str) -> i64 {
        let mut conn = self.raw(file).await;
        sqlx::query_scalar("SELECT count(*) FROM tg_sessions WHERE key LIKE ?1")
            .bind(format!("{prefix}:%"))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_recreated_record_refuses_a_stale_write() {
    let dir = Dir::new();
    sql_cases::a_recreated_record_refuses_a_stale_write(dir.shared("aba.db").await).await;
}

#[tokio::test]
async fn leases_are_off_unless_asked_for() {
    let dir = Dir::new();
    assert!(dir.open("off.db").await.leases().is_none());
    assert!(dir.leased("off.db").await.leases().is_some());
}

#[tokio::test]
async fn leases_serialize_and_fence() {
    let dir = Dir::new();
    let storage = dir.leased("lease.db").await;
    sql_cases::leases_serialize_and_fence(Arc::new(storage), async |prefix: &str| {
        dir.rows("lease.db", prefix).await
    })
    .await;
}

#[tokio::test]
async fn leases_expire() {
    let dir = Dir::new();
    let storage = dir.leased("expiry.db").await;
    let cleanup = async || storage.cleanup_expired().await.unwrap();
    sql_cases::leases_expire(
        Arc::new(storage.clone()),
        async |prefix: &str| dir.rows("expiry.db", prefix).await,
        cleanup,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_updates_lose_nothing() {
    let dir = Dir::new();
    sql_cases::cancelled_updates_lose_nothing(dir.shared("cancel.db").await).await;
}

/// Leases between two storages on one file (two processes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_storages_on_one_file_share_leases() {
    let dir = Dir::new();
    let (first, second) = (dir.leased("shared.db").await, dir.leased("shared.db").await);
    let k = key("shared", "k");
    let (a, b) = (LeaseOwner::new(), LeaseOwner::new());
    let ttl = std::time::Duration::from_secs(30);
    let first_leases = first.leases().unwrap();
    let second_leases = second.leases().unwrap();
    assert!(matches!(
        first_leases
            .acquire(std::slice::from_ref(&k), Lease { owner: &a, ttl })
            .await
            .unwrap(),
        LeasedLoad::Acquired(_)
    ));
    assert!(matches!(
        second_leases
            .acquire(std::slice::from_ref(&k), Lease { owner: &b, ttl })
            .await
            .unwrap(),
        LeasedLoad::Busy { index: 0, .. }
    ));
    assert!(!second_leases.watch(&k).is_notified(), "SQLite polls");
    let v = written(
        &first_leases
            .write_and_release(&[put(&k, "a", None, None)], std::slice::from_ref(&k), &a)
            .await
            .unwrap()[0],
    );
    match second_leases
        .acquire(std::slice::from_ref(&k), Lease { owner: &b, ttl })
        .await
        .unwrap()
    {
        LeasedLoad::Acquired(records) => {
            assert_eq!(records[0].as_ref().map(|r| r.version), Some(v));
        }
        busy => panic!("{busy:?}"),
    }
}

/// A file written by the version before leases (`value NOT NULL`, no lease
/// columns) is rebuilt at open, keeping its rows; opening again changes nothing.
#[tokio::test]
async fn an_old_table_is_migrated() {
    let dir = Dir::new();
    let mut conn =
        SqliteConnection::connect(&format!("sqlite:{}?mode=rwc", dir.path("old.db").display()))
            .await
            .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE tg_sessions (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, \
             version INTEGER NOT NULL, expires_at INTEGER); \
         CREATE INDEX tg_sessions_expires_at ON tg_sessions (expires_at) \
             WHERE expires_at IS NOT NULL; \
         INSERT INTO tg_sessions VALUES ('old:case:k', X'6B657074', 3, NULL);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    for _ in 0..2 {
        let storage = dir.leased("old.db").await;
        let loaded = storage.load(&[key("old", "k")]).await.unwrap();
        assert_eq!(values(&loaded), [Some("kept")]);
        assert_eq!(loaded[0].as_ref().map(|r| r.version), Some(3));
        storage.close().await;
    }
    let storage = dir.leased("old.db").await;
    let leases = storage.leases().unwrap();
    let owner = LeaseOwner::new();
    let (k, new) = (key("old", "k"), key("old", "new"));
    let lease = Lease {
        owner: &owner,
        ttl: std::time::Duration::from_secs(10),
    };
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
    let mut conn = dir.raw("old.db").await;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, ["tg_sessions"]);
}

#[tokio::test]
async fn a_deleted_or_replaced_file_fails_writes_instead_of_losing_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let key = StorageKey::new(None, None, "counter", "1");
    let put = |expected_version| Write::Put {
        key: key.clone(),
        value: bytes::Bytes::from_static(b"{}"),
        expected_version,
        ttl: None,
    };

    let storage = SqliteStorage::open(&path).await.unwrap();
    assert!(matches!(
        storage.write(&[put(None)]).await.unwrap()[..],
        [WriteOutcome::Written { .. }]
    ));
    std::fs::remove_file(&path).unwrap();
    let error = storage.write(&[put(None)]).await.unwrap_err();
    assert_eq!(error.kind(), StorageErrorKind::Unavailable);
    assert!(error.to_string().contains("was deleted"), "{error}");

    // Another file put in its place (a restore from backup) is not the one
    // the storage has open.
    let storage = SqliteStorage::open(&path).await.unwrap();
    let other = dir.path().join("restored.db");
    std::fs::copy(&path, &other).unwrap();
    std::fs::rename(&other, &path).unwrap();
    let error = storage.write(&[put(None)]).await.unwrap_err();
    assert!(error.to_string().contains("was replaced"), "{error}");
}
