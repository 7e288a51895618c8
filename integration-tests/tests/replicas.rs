//! Several bot processes sharing one storage (issue 8): real OS processes,
//! not two managers in one process, since only separate processes show what
//! the in-process key lock cannot cover.
//!
//! The test binary re-runs itself as a child (`replica_child`, which does
//! nothing unless [`STORAGE_VAR`] is set): each child connects to the shared
//! storage, says `REPLICA ready`, waits for `go` on its stdin so that both
//! children start together, plays its share of updates of one hot user and
//! prints one `REPLICA tally …` line. The parent asserts on those lines and on
//! the value left in the storage.
//!
//! Each scenario runs over one Redis, one Redis Cluster of three nodes, one
//! PostgreSQL and one SQLite file (with cross-process leases on).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tg_session::storage::SharedStorage;
use tg_session::{
    Error, HandlerOutcome, PostgresStorage, RedisStorage, Session, SessionManager, SqliteStorage,
    UpdateIds,
};
use tg_session_test_kit::postgres_server::PostgresServer;
use tg_session_test_kit::redis_server::{RedisCluster, RedisServer};

/// Set in a child: which storage to share (see [`Shared::encode`]).
const STORAGE_VAR: &str = "TG_SESSION_REPLICA_STORAGE";
/// Set in a child: `count` or `hold` (see [`replica_child`]).
const ROLE_VAR: &str = "TG_SESSION_REPLICA_ROLE";
/// Set in a child: how many updates it plays.
const UPDATES_VAR: &str = "TG_SESSION_REPLICA_UPDATES";
/// Set in a child: the hot user's id.
const USER_VAR: &str = "TG_SESSION_REPLICA_USER";

/// Updates each of the two processes plays in the hot-user scenario.
const UPDATES: u32 = 200;
/// Updates a child runs at once, like a dispatcher running one user's
/// updates from several chats concurrently.
const IN_FLIGHT: u32 = 4;
/// What a handler awaits between reading the session and its commit: the
/// reply it sends. This is the window in which another process can write.
const REPLY: Duration = Duration::from_millis(1);
/// The lease time to live of the managers of these tests: short, so the
/// kill -9 scenario waits for a dead process's lease for at most this long.
const LEASE_TTL: Duration = Duration::from_secs(2);
/// Longer than [`LEASE_TTL`], so a key blocked by a dead process's lease is
/// waited for rather than given up (`Error::LockTimeout`).
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child may take to start, and then to play its share, before
/// the test fails instead of hanging.
const CHILD_LIMIT: Duration = Duration::from_secs(120);

#[derive(Session, Serialize, Deserialize, Debug)]
#[session(key = "counter")]
struct Counter {
    n: u32,
}

/// The storage the processes share, as the parent passes it to a child.
#[derive(Clone, Debug)]
enum Shared {
    Redis(String),
    Cluster(Vec<String>),
    Postgres(String),
    Sqlite(PathBuf),
}

impl Shared {
    fn encode(&self) -> String {
        match self {
            Shared::Redis(url) => format!("redis {url}"),
            Shared::Cluster(urls) => format!("cluster {}", urls.join(",")),
            Shared::Postgres(url) => format!("postgres {url}"),
            Shared::Sqlite(path) => format!("sqlite {}", path.display()),
        }
    }

    fn decode(text: &str) -> Self {
        let (kind, target) = text.split_once(' ').expect("`<kind> <target>`");
        match kind {
            "redis" => Shared::Redis(target.to_owned()),
            "cluster" => Shared::Cluster(target.split(',').map(str::to_owned).collect()),
            "postgres" => Shared::Postgres(target.to_owned()),
            "sqlite" => Shared::Sqlite(PathBuf::from(target)),
            other => panic!("unknown storage kind `{other}`"),
        }
    }

    async fn open(&self) -> SharedStorage {
        match self {
            Shared::Redis(url) => Arc::new(RedisStorage::connect(url).await.unwrap()),
            Shared::Cluster(urls) => Arc::new(RedisStorage::cluster(urls.clone()).await.unwrap()),
            Shared::Postgres(url) => Arc::new(PostgresStorage::connect(url).await.unwrap()),
            // SQLite shares leases across processes only when asked.
            Shared::Sqlite(path) => Arc::new(
                SqliteStorage::builder(path)
                    .cross_process_leases(true)
                    .open()
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// The manager every process of a scenario runs.
fn manager(storage: SharedStorage) -> SessionManager {
    SessionManager::builder()
        .storage(storage)
        .lock_timeout(LOCK_TIMEOUT)
        .lease_ttl(LEASE_TTL)
        .register::<Counter>()
        .build()
        .unwrap()
}

fn ids(user: u64) -> UpdateIds {
    UpdateIds::new().user(user).chat(user as i64)
}

/// One update of the hot user: read, modify, reply, commit.
async fn increment(manager: &SessionManager, user: u64) -> Result<u32, Error> {
    manager
        .run(ids(user), |ctx| async move {
            let n = {
                let mut counter = ctx.counter()?;
                counter.n += 1;
                counter.n
            };
            tokio::time::sleep(REPLY).await;
            Ok::<_, Error>(n)
        })
        .await
}

async fn read_counter(shared: &Shared, user: u64) -> u32 {
    let manager = manager(shared.open().await);
    manager
        .run(
            ids(user),
            |ctx| async move { Ok::<_, Error>(ctx.counter()?.n) },
        )
        .await
        .unwrap()
}

/// What one child saw, as it prints it on one line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    ok: u32,
    conflict: u32,
    timeout: u32,
    other: u32,
    /// The longest time one update took, start to commit.
    max_wait: Duration,
}

impl Tally {
    fn add(&mut self, result: &Result<u32, Error>, took: Duration) {
        match result {
            Ok(_) => self.ok += 1,
            Err(Error::Conflict { .. }) => self.conflict += 1,
            Err(Error::LockTimeout { .. }) => self.timeout += 1,
            Err(error) => {
                eprintln!("replica {}: {error}", std::process::id());
                self.other += 1;
            }
        }
        self.max_wait = self.max_wait.max(took);
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.conflict += other.conflict;
        self.timeout += other.timeout;
        self.other += other.other;
        self.max_wait = self.max_wait.max(other.max_wait);
    }

    fn line(&self) -> String {
        format!(
            "REPLICA tally ok={} conflict={} timeout={} other={} max_wait_ms={}",
            self.ok,
            self.conflict,
            self.timeout,
            self.other,
            self.max_wait.as_millis()
        )
    }

    fn parse(line: &str) -> Self {
        let mut tally = Tally::default();
        for field in line.trim_start_matches("REPLICA tally").split_whitespace() {
            let (name, value) = field.split_once('=').expect("`name=value`");
            let value: u32 = value.parse().expect("a number");
            match name {
                "ok" => tally.ok = value,
                "conflict" => tally.conflict = value,
                "timeout" => tally.timeout = value,
                "other" => tally.other = value,
                "max_wait_ms" => tally.max_wait = Duration::from_millis(value.into()),
                other => panic!("unknown tally field `{other}`"),
            }
        }
        tally
    }
}

/// Plays `updates` updates of `user`, [`IN_FLIGHT`] at a time.
async fn play(manager: &SessionManager, user: u64, updates: u32) -> Tally {
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|task| {
            let manager = manager.clone();
            let share = updates / IN_FLIGHT + u32::from(task < updates % IN_FLIGHT);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                for _ in 0..share {
                    let start = Instant::now();
                    let result = increment(&manager, user).await;
                    tally.add(&result, start.elapsed());
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.unwrap());
    }
    total
}

/// The child's side; does nothing in a normal test run.
///
/// Role `count`: plays its updates and prints its tally. Role `hold`: plays
/// its updates, prints its tally, then takes the hot key in one more update,
/// prints `REPLICA holding` from inside the handler and sleeps there until
/// the parent kills it.
#[test]
fn replica_child() {
    let Ok(storage) = std::env::var(STORAGE_VAR) else {
        return;
    };
    let shared = Shared::decode(&storage);
    let role = std::env::var(ROLE_VAR).unwrap();
    let updates: u32 = std::env::var(UPDATES_VAR).unwrap().parse().unwrap();
    let user: u64 = std::env::var(USER_VAR).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let manager = manager(shared.open().await);
        say("REPLICA ready");
        wait_for_go().await;
        let tally = play(&manager, user, updates).await;
        say(&tally.line());
        if role == "hold" {
            let ctx = manager.begin(ids(user)).await;
            ctx.counter().unwrap().n += 1;
            say("REPLICA holding");
            // The parent kills this process (SIGKILL) as soon as it reads
            // the line above; the commit below is never reached.
            tokio::time::sleep(CHILD_LIMIT).await;
            ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        }
    });
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").unwrap();
    stdout.flush().unwrap();
}

/// Waits for the parent's `go` (or for its end: a closed stdin fails the child).
async fn wait_for_go() {
    let read = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(CHILD_LIMIT, read)
        .await
        .expect("no `go` from the parent")
        .unwrap();
    assert_eq!(line.trim(), "go", "the parent went away");
}

/// A child process of the parent test, killed and reaped when dropped (also
/// when the test panics), so no replica outlives its test.
struct Replica {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The child's stdout, line by line, from a reader thread; disconnected
    /// once the child closed its stdout (it exited).
    lines: mpsc::Receiver<String>,
}

impl Replica {
    fn spawn(name: &'static str, role: &str, shared: &Shared, user: u64, updates: u32) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "replica_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STORAGE_VAR, shared.encode())
            .env(ROLE_VAR, role)
            .env(UPDATES_VAR, updates.to_string())
            .env(USER_VAR, user.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            name,
            child,
            stdin,
            lines,
        }
    }

    /// The next line of the child's stdout that starts with `REPLICA
    /// <what>`, waiting at most [`CHILD_LIMIT`].
    fn expect(&mut self, what: &str) -> String {
        let prefix = format!("REPLICA {what}");
        let deadline = Instant::now() + CHILD_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                // libtest's `test replica_child ... ` has no newline: the
                // first line of the child's own comes after it.
                Ok(line) => {
                    if let Some(start) = line.find(&prefix) {
                        return line[start..].to_owned();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: no `{prefix}` within {CHILD_LIMIT:?}", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: exited ({:?}) before `{prefix}`",
                    self.name,
                    self.child.wait()
                ),
            }
        }
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }

    /// Kills the child at once (SIGKILL) and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (at most [`CHILD_LIMIT`]) for the child to exit, and checks it
    /// succeeded.
    fn finish(mut self) {
        let deadline = Instant::now() + CHILD_LIMIT;
        // The reader thread disconnects when the child's stdout closes.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: did not exit within {CHILD_LIMIT:?}", self.name)
                }
            }
        }
        self.stdin = None;
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}: {status}", self.name);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A started server (kept alive for the test) and how children reach it.
struct Fixture {
    shared: Shared,
    _server: Box<dyn std::any::Any>,
}

fn redis() -> Fixture {
    let server = RedisServer::start();
    Fixture {
        shared: Shared::Redis(server.url()),
        _server: Box::new(server),
    }
}

fn cluster() -> Fixture {
    let cluster = RedisCluster::start();
    Fixture {
        shared: Shared::Cluster(cluster.urls()),
        _server: Box::new(cluster),
    }
}

/// One server for the whole binary (stopped when it exits, see
/// `PostgresServer`); each scenario uses users of its own.
static POSTGRES: LazyLock<PostgresServer> = LazyLock::new(PostgresServer::start);

fn postgres() -> Fixture {
    Fixture {
        shared: Shared::Postgres(POSTGRES.url()),
        _server: Box::new(()),
    }
}

fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        shared: Shared::Sqlite(dir.path().join("sessions.db")),
        _server: Box::new(dir),
    }
}

/// Reads the hot user's counter from the parent. The first read also
/// creates what the storage creates on first use (the SQL table), so the
/// children do not race to create it.
fn counter_in_storage(shared: &Shared, user: u64) -> u32 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(read_counter(shared, user))
}

/// Two processes × [`UPDATES`] updates of one user, started together:
/// every update is applied once, none fails.
fn hot_user(fixture: Fixture, user: u64) {
    let shared = &fixture.shared;
    assert_eq!(counter_in_storage(shared, user), 0);
    let mut first = Replica::spawn("first", "count", shared, user, UPDATES);
    let mut second = Replica::spawn("second", "count", shared, user, UPDATES);
    first.expect("ready");
    second.expect("ready");
    first.go();
    second.go();
    let tallies = [
        Tally::parse(&first.expect("tally")),
        Tally::parse(&second.expect("tally")),
    ];
    first.finish();
    second.finish();
    let stored = counter_in_storage(shared, user);
    let ok: u32 = tallies.iter().map(|tally| tally.ok).sum();
    let report = format!("{shared:?}: stored {stored}, tallies {tallies:?}");
    assert_eq!(stored, ok, "a committed update was lost; {report}");
    for tally in tallies {
        assert_eq!(
            (tally.conflict, tally.timeout, tally.other),
            (0, 0, 0),
            "an update failed; {report}"
        );
    }
    assert_eq!(stored, 2 * UPDATES, "{report}");
}

/// A process killed (SIGKILL) while it holds the hot key blocks it for at
/// most the lease's time to live; the other process then plays all its
/// updates, and nothing committed is lost.
fn kill_nine(fixture: Fixture, user: u64) {
    const BEFORE: u32 = 20;
    let shared = &fixture.shared;
    assert_eq!(counter_in_storage(shared, user), 0);
    let mut doomed = Replica::spawn("doomed", "hold", shared, user, BEFORE);
    let mut survivor = Replica::spawn("survivor", "count", shared, user, UPDATES);
    doomed.expect("ready");
    survivor.expect("ready");
    doomed.go();
    let doomed_tally = Tally::parse(&doomed.expect("tally"));
    doomed.expect("holding");
    doomed.kill();
    survivor.go();
    let tally = Tally::parse(&survivor.expect("tally"));
    survivor.finish();
    let stored = counter_in_storage(shared, user);
    let report =
        format!("{shared:?}: stored {stored}, killed {doomed_tally:?}, survivor {tally:?}");
    assert_eq!(doomed_tally.ok, BEFORE, "{report}");
    assert_eq!(
        (tally.ok, tally.conflict, tally.timeout, tally.other),
        (UPDATES, 0, 0, 0),
        "{report}"
    );
    assert_eq!(
        stored,
        BEFORE + UPDATES,
        "a committed update was lost; {report}"
    );
    // Waiting out the dead lease takes up to its time to live (plus the
    // retry's backoff and a loaded machine's scheduling)...
    assert!(
        tally.max_wait <= LEASE_TTL + Duration::from_millis(1500),
        "the dead process blocked the key longer than its lease; {report}"
    );
    // ...and at least a good part of it: the killed process did hold a
    // lease, taken with its load (the kill came a few milliseconds after).
    assert!(
        tally.max_wait >= LEASE_TTL / 4,
        "no update waited for the killed process's lease; {report}"
    );
}

#[test]
fn redis_two_processes_one_hot_user() {
    hot_user(redis(), 1);
}

#[test]
fn redis_cluster_two_processes_one_hot_user() {
    hot_user(cluster(), 1);
}

#[test]
fn postgres_two_processes_one_hot_user() {
    hot_user(postgres(), 1);
}

#[test]
fn sqlite_two_processes_one_hot_user() {
    hot_user(sqlite(), 1);
}

#[test]
fn redis_kill_nine_blocks_a_key_at_most_the_lease_ttl() {
    kill_nine(redis(), 2);
}

#[test]
fn redis_cluster_kill_nine_blocks_a_key_at_most_the_lease_ttl() {
    kill_nine(cluster(), 2);
}

#[test]
fn postgres_kill_nine_blocks_a_key_at_most_the_lease_ttl() {
    kill_nine(postgres(), 2);
}

#[test]
fn sqlite_kill_nine_blocks_a_key_at_most_the_lease_ttl() {
    kill_nine(sqlite(), 2);
}
