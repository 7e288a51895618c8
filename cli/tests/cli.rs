//! The `tg-session` binary against a real redis-server, a real PostgreSQL
//! and a SQLite file, filled by a bot's manager the way a bot fills them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tg_session::{
    PostgresStorage, RedisStorage, Session, SessionManager, SqliteStorage, UpdateIds,
};
use tg_session_test_kit::postgres_server::PostgresServer;
use tg_session_test_kit::redis_server::RedisServer;

#[derive(Session, Serialize, Deserialize, Debug, Default, PartialEq)]
#[session(key = "counter")]
struct Counter {
    apple: u32,
}

#[derive(Session, Serialize, Deserialize, Debug, Default, PartialEq)]
#[session(key = "profile", lazy, scope = "user_in_chat")]
struct Profile {
    name: String,
}

#[derive(Session, Serialize, Deserialize, Debug, Default, PartialEq)]
#[session(key = "visit", ttl = "1h")]
struct Visit {
    count: u32,
}

/// Runs the binary; its exit status, stdout and stderr.
fn tg_session(args: &[&str]) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_tg-session"))
        .args(args)
        .output()
        .expect("run tg-session");
    (
        status.success(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// Users 42 and 7 count apples; each names themselves in chats -100 and -200.
async fn fill(manager: &SessionManager) {
    for (user, apples) in [(42u64, 3u32), (7, 5)] {
        for chat in [-100i64, -200] {
            let ids = UpdateIds::new().user(user).chat(chat);
            manager
                .run(ids, |ctx| async move {
                    ctx.counter()?.apple = apples;
                    ctx.profile().await?.name = format!("user {user}");
                    Ok::<_, tg_session::Error>(())
                })
                .await
                .unwrap();
        }
    }
}

fn manager(storage: impl tg_session::storage::Storage) -> SessionManager {
    SessionManager::builder()
        .storage(storage)
        .prefix("bot")
        .register::<Counter>()
        .register::<Profile>()
        .build()
        .unwrap()
}

async fn sqlite_file(dir: &Path) -> String {
    let path = dir.join("sessions.db");
    fill(&manager(SqliteStorage::open(&path).await.unwrap())).await;
    format!("sqlite:{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_get_stats_and_rm_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_file(dir.path()).await;

    let (ok, out, err) = tg_session(&["ls", &url, "--prefix", "bot:"]);
    assert!(ok, "{err}");
    let keys: Vec<&str> = out
        .lines()
        .map(|line| line.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "bot:counter:42",
            "bot:counter:7",
            "bot:profile:-100:42",
            "bot:profile:-100:7",
            "bot:profile:-200:42",
            "bot:profile:-200:7",
        ]
    );
    assert_eq!(err.trim(), "6 keys");

    let (ok, out, err) = tg_session(&["get", &url, "bot:counter:42"]);
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["value"], serde_json::json!({"apple": 3}));
    assert_eq!(shown["key"], "bot:counter:42");
    assert!(shown["version"].as_u64().unwrap() > 0);
    assert_eq!(shown["schema_version"], serde_json::Value::Null);

    let (ok, out, _) = tg_session(&["stats", &url]);
    assert!(ok);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[1][..2], ["counter", "2"]);
    assert_eq!(rows[2][..2], ["profile", "4"]);
    assert_eq!(rows[3][..2], ["total", "6"]);

    let (ok, out, _) = tg_session(&["rm", &url, "bot:counter:7", "--dry-run"]);
    assert!(ok);
    assert!(out.starts_with("would remove bot:counter:7"), "{out}");
    let (ok, _, _) = tg_session(&["get", &url, "bot:counter:7"]);
    assert!(ok, "a dry run deletes nothing");

    let (ok, out, err) = tg_session(&["rm", &url, "bot:counter:7"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "removed bot:counter:7");
    let (ok, _, err) = tg_session(&["get", &url, "bot:counter:7"]);
    assert!(!ok);
    assert!(err.contains("no record at key `bot:counter:7`"), "{err}");

    let (ok, _, err) = tg_session(&["rm", &url, "bot:counter:42", "bot:counter:9"]);
    assert!(!ok);
    assert!(
        err.contains("no record at bot:counter:9") && err.contains("nothing was deleted"),
        "{err}"
    );
    let (ok, _, _) = tg_session(&["get", &url, "bot:counter:42"]);
    assert!(ok, "one missing key deletes none of the others");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_user_reaches_every_chat_and_only_that_user() {
    let redis = RedisServer::start();
    let url = redis.url();
    fill(&manager(RedisStorage::connect(&url).await.unwrap())).await;
    let types = [
        "--session",
        "counter:user",
        "--session",
        "profile:user_in_chat",
    ];

    let mut dry = vec!["erase-user", &url, "42", "--prefix", "bot", "--dry-run"];
    dry.extend(types);
    let (ok, out, err) = tg_session(&dry);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(err.trim(), "3 records");

    let mut erase = vec!["erase-user", &url, "42", "--prefix", "bot"];
    erase.extend(types);
    let (ok, out, err) = tg_session(&erase);
    assert!(ok, "{err}");
    let mut removed: Vec<&str> = out
        .lines()
        .map(|line| line.split(' ').nth(1).unwrap())
        .collect();
    removed.sort_unstable();
    assert_eq!(
        removed,
        [
            "bot:counter:42",
            "bot:profile:-100:42",
            "bot:profile:-200:42"
        ]
    );
    let (_, out, _) = tg_session(&["ls", &url, "--prefix", "bot:"]);
    let mut left: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    left.sort_unstable();
    assert_eq!(
        left,
        ["bot:counter:7", "bot:profile:-100:7", "bot:profile:-200:7"]
    );

    let (ok, _, err) = tg_session(&["erase-user", &url, "42", "--session", "counter:team"]);
    assert!(!ok);
    assert!(err.contains("unknown scope `team`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_sqlite_to_redis_keeps_versions_and_runs_again_as_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_file(dir.path()).await;
    let redis = RedisServer::start();
    let to = redis.url();

    let (ok, out, err) = tg_session(&["copy", "--from", &from, "--to", &to, "--dry-run"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "would copy 6, would skip 0 (dry run: nothing written)"
    );
    let (_, out, _) = tg_session(&["ls", &to]);
    assert_eq!(out, "", "a dry run writes nothing");

    let (ok, out, err) = tg_session(&["copy", "--from", &from, "--to", &to, "--page-size", "2"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("6 copied, 0 skipped"), "{out}");
    let version = |url: &str| {
        let (ok, out, err) = tg_session(&["get", url, "bot:profile:-200:7"]);
        assert!(ok, "{err}");
        let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(shown["value"], serde_json::json!({"name": "user 7"}));
        shown["version"].as_u64().unwrap()
    };
    assert_eq!(version(&from), version(&to));

    let (ok, out, _) = tg_session(&["copy", "--from", &from, "--to", &to]);
    assert!(ok);
    assert!(out.starts_with("0 copied, 6 skipped"), "{out}");
}

/// `get` shows the remaining TTL of a record that has one, and `null` for
/// one that has none, on SQLite, Redis and PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_the_remaining_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let sqlite = SqliteStorage::open(&path).await.unwrap();
    let redis = RedisServer::start();
    let postgres = PostgresServer::start();
    let urls = [
        format!("sqlite:{}", path.display()),
        redis.url(),
        postgres.url(),
    ];
    let storages: [tg_session::storage::SharedStorage; 3] = [
        Arc::new(sqlite),
        Arc::new(RedisStorage::connect(&redis.url()).await.unwrap()),
        Arc::new(PostgresStorage::connect(&postgres.url()).await.unwrap()),
    ];
    for (url, storage) in urls.iter().zip(storages) {
        let manager = SessionManager::builder()
            .storage(storage)
            .register::<Visit>()
            .register::<Counter>()
            .build()
            .unwrap();
        manager
            .run(UpdateIds::new().user(42), |ctx| async move {
                ctx.visit()?.count = 1;
                ctx.counter()?.apple = 1;
                Ok::<_, tg_session::Error>(())
            })
            .await
            .unwrap();

        let (ok, out, err) = tg_session(&["get", url, "visit:42"]);
        assert!(ok, "{err}");
        let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ttl = shown["ttl_seconds"].as_u64();
        assert!(
            ttl.is_some_and(|ttl| (3_500..=3_600).contains(&ttl)),
            "{url}: {out}"
        );
        assert_eq!(err, "", "{url}");

        let (ok, out, err) = tg_session(&["get", url, "counter:42"]);
        assert!(ok, "{err}");
        let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            shown["ttl_seconds"],
            serde_json::Value::Null,
            "{url}: {out}"
        );
    }
}

#[test]
fn bad_urls_and_unreachable_servers_are_clear_errors() {
    let (ok, _, err) = tg_session(&["ls", "mysql://localhost/db"]);
    assert!(!ok);
    assert!(err.contains("unknown storage `mysql`"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite:{}", dir.path().join("nope.db").display());
    let (ok, _, err) = tg_session(&["ls", &missing]);
    assert!(!ok);
    assert!(err.contains("no such file"), "{err}");
    assert!(
        !dir.path().join("nope.db").exists(),
        "the tool never creates a database"
    );

    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, _, err) = tg_session(&["ls", &format!("redis://127.0.0.1:{port}/")]);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot open `redis://127.0.0.1:{port}/`")),
        "{err}"
    );
}
