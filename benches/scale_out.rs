//! Throughput of bot replicas sharing one storage, against one process doing
//! the same work, in the same run: one hot key (every update of one user),
//! and 1,000 users, on Redis and on PostgreSQL (servers this benchmark starts
//! itself on loopback).
//!
//! Each replica is a separate OS process (this binary run again as a child):
//! it connects, reports ready, waits for the go, runs its share of the
//! updates with 16 in flight (read-modify-write of one eager counter), and
//! reports its counts. The parent times from the go to the last report and
//! checks the stored total: with leases, replicas lose no update and meet
//! no `Conflict`.
//!
//! `cargo bench -p tg-session-benches --bench scale_out` (under `cargo
//! test`, a tenth of the work with the same checks).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use tg_session_test_kit::postgres_server;
use tg_session_test_kit::redis_server;

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tg_session::storage::SharedStorage;
use tg_session::{Error, PostgresStorage, RedisStorage, Session, SessionManager, UpdateIds};

use postgres_server::PostgresServer;
use redis_server::RedisServer;

/// Set in a child: `<storage kind> <url> <prefix> <users> <updates>`.
const CHILD: &str = "TG_SESSION_REPLICA_BENCH";
const IN_FLIGHT: u64 = 16;

#[derive(Session, Serialize, Deserialize, Debug)]
#[session(key = "counter")]
struct Counter {
    n: u64,
}

fn main() {
    match std::env::var(CHILD) {
        Ok(spec) => child(&spec),
        Err(_) => parent(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(kind: &str, url: &str) -> SharedStorage {
    match kind {
        "redis" => Arc::new(RedisStorage::connect(url).await.unwrap()),
        "postgres" => Arc::new(PostgresStorage::connect(url).await.unwrap()),
        other => panic!("unknown storage kind {other}"),
    }
}

fn manager(storage: SharedStorage, prefix: &str) -> SessionManager {
    SessionManager::builder()
        .storage(storage)
        .prefix(prefix)
        .register::<Counter>()
        .build()
        .unwrap()
}

/// Counts of one replica's updates.
#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    ok: u64,
    conflicts: u64,
    timeouts: u64,
    other: u64,
}

fn child(spec: &str) {
    let parts: Vec<&str> = spec.split(' ').collect();
    let [kind, url, prefix, users, updates] = parts[..] else {
        panic!("bad {CHILD}: {spec}");
    };
    let (users, updates): (u64, u64) = (users.parse().unwrap(), updates.parse().unwrap());
    runtime().block_on(async {
        let manager = manager(connect(kind, url).await, prefix);
        println!("ready");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                let (manager, next) = (manager.clone(), Arc::clone(&next));
                tokio::spawn(async move {
                    let mut counts = Counts::default();
                    loop {
                        let update = next.fetch_add(1, Ordering::Relaxed);
                        if update >= updates {
                            return counts;
                        }
                        let user = update % users + 1;
                        let ids = UpdateIds::new().user(user).chat(user as i64);
                        let result = manager
                            .run(ids, |ctx| async move {
                                ctx.counter()?.n += 1;
                                Ok::<_, Error>(())
                            })
                            .await;
                        match result {
                            Ok(()) => counts.ok += 1,
                            Err(Error::Conflict { .. }) => counts.conflicts += 1,
                            Err(Error::LockTimeout { .. }) => counts.timeouts += 1,
                            Err(error) => {
                                eprintln!("{error}");
                                counts.other += 1;
                            }
                        }
                    }
                })
            })
            .collect();
        let mut total = Counts::default();
        for task in tasks {
            let counts = task.await.unwrap();
            total.ok += counts.ok;
            total.conflicts += counts.conflicts;
            total.timeouts += counts.timeouts;
            total.other += counts.other;
        }
        println!(
            "done {} {} {} {}",
            total.ok, total.conflicts, total.timeouts, total.other
        );
    });
}

struct Replica {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `updates` updates over `users` users in `processes` replicas;
/// answers the updates per second and the summed counts.
fn run(kind: &str, url: &str, users: u64, processes: u64, updates: u64) -> (f64, Counts) {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let prefix = format!(
        "bench{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let exe = std::env::current_exe().unwrap();
    let mut replicas: Vec<Replica> = (0..processes)
        .map(|_| {
            let mut child = Command::new(&exe)
                .env(
                    CHILD,
                    format!("{kind} {url} {prefix} {users} {}", updates / processes),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let lines = BufReader::new(child.stdout.take().unwrap()).lines();
            Replica {
                child,
                stdin,
                lines,
            }
        })
        .collect();
    for replica in &mut replicas {
        let ready = replica.lines.next().unwrap().unwrap();
        assert_eq!(ready, "ready");
    }
    let started = Instant::now();
    for replica in &mut replicas {
        writeln!(replica.stdin, "go").unwrap();
    }
    let mut total = Counts::default();
    for replica in &mut replicas {
        let done = replica.lines.next().unwrap().unwrap();
        let numbers: Vec<u64> = done
            .strip_prefix("done ")
            .unwrap_or_else(|| panic!("unexpected line {done:?}"))
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        total.ok += numbers[0];
        total.conflicts += numbers[1];
        total.timeouts += numbers[2];
        total.other += numbers[3];
    }
    let elapsed = started.elapsed();
    if users == 1 {
        let stored = runtime().block_on(async {
            let manager = manager(connect(kind, url).await, &prefix);
            let ctx = manager.begin(UpdateIds::new().user(1).chat(1)).await;
            let n = ctx.counter().unwrap().n;
            ctx.commit(tg_session::HandlerOutcome::Succeeded)
                .await
                .unwrap();
            n
        });
        assert_eq!(stored, total.ok, "every acknowledged update is stored");
    }
    (total.ok as f64 / elapsed.as_secs_f64(), total)
}

fn parent() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it: a tenth of the work, the same checks.
    let scale = match std::env::args().any(|arg| arg == "--bench") {
        true => 1,
        false => 10,
    };
    let redis = RedisServer::start();
    let postgres = PostgresServer::start();
    let storages = [("redis", redis.url()), ("postgres", postgres.url())];
    println!("replicas: updates/s of 2 processes against 1, same run, {IN_FLIGHT} in flight each");
    for (kind, url) in &storages {
        // Warm the server (tables, scripts, caches) before measuring.
        run(kind, url, 1000, 1, 500 / scale);
        for (users, updates) in [(1, 2_000 / scale), (1_000, 8_000 / scale)] {
            let (one, one_counts) = run(kind, url, users, 1, updates);
            let (two, two_counts) = run(kind, url, users, 2, updates);
            println!(
                "{kind:>8}, {users:>5} user(s): 1 process {one:>8.0}/s, 2 processes {two:>8.0}/s, \
                 ratio {:.2}; 2 processes: {} ok, {} conflicts, {} lock timeouts, {} other errors \
                 (1 process: {} conflicts)",
                two / one,
                two_counts.ok,
                two_counts.conflicts,
                two_counts.timeouts,
                two_counts.other,
                one_counts.conflicts,
            );
        }
    }
}
