//! A fixed number of updates of one workload, then exit: the work to count
//! instructions with callgrind, where the criterion benches time it (on a
//! shared machine, instruction counts are steady where times are not).
//!
//! ```text
//! cargo build --release -p tg-session-benches --example per_update
//! valgrind --tool=callgrind target/release/examples/per_update memory-eq 20000
//! valgrind --tool=callgrind target/release/examples/per_update memory-eq 40000
//! ```
//!
//! The cost of one update is the difference of the two totals divided by
//! the difference of the counts: the process's start and the first
//! updates' records cancel out. Workloads (the memory benchmark's update,
//! cycling over 1,000 users):
//!
//! - `memory`, `memory-eq` (the type derives `PartialEq`), `memory-4`,
//!   `memory-lazy` (the session loaded on first use, `#[session(lazy)]`),
//!   `memory-read` (the session read, not changed; every user's stored first),
//!   `memory-read-new` (the same with nothing stored);
//! - `bounded`, `bounded-4`: the same on `MemoryStorage::with_capacity`
//!   (room for every user's records); `bounded-full`, one session with
//!   room for half the users (every update evicts a record and makes one);
//! - `teloxide`: `Dialogue::get_or_default` + `Dialogue::update` on
//!   `InMemStorage`;
//! - `redis`, `redis-4` (a `redis-server` this process starts; the client's
//!   instructions only, the server runs outside callgrind);
//! - `sqlite`, `sqlite-4` (a file in a temporary directory);
//! - `dispatch`, `dispatch-teloxide`, `dispatch-floor`: the dispatch
//!   benchmark's trees (`handler.dispatch(deps)` over 100 users, rounded up
//!   to whole rounds): tg-session's layer on the memory storage, teloxide's
//!   `enter_dialogue`, and the same tree with no session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use teloxide::dispatching::dialogue::InMemStorage;
use tg_session::storage::SharedStorage;
use tg_session::{MemoryStorage, RedisStorage, SessionManager, SqliteStorage};
use tg_session_test_kit::redis_server::RedisServer;

mod dispatch_trees;
mod workload;
use teloxide::prelude::dptree;
use workload::{
    EqOne, LazyOne, One, manager, next_user, ours_four, ours_lazy, ours_one, ours_one_eq,
    ours_read, teloxide_rmw,
};

fn main() {
    let usage = "usage: per_update <memory|memory-eq|memory-4|memory-lazy|memory-read|memory-read-new|bounded|bounded-4|bounded-full|teloxide|redis|redis-4|sqlite|sqlite-4\
                 |dispatch|dispatch-teloxide|dispatch-floor> <updates>";
    let mut args = std::env::args().skip(1);
    let workload = args.next().expect(usage);
    let updates: u64 = args.next().and_then(|n| n.parse().ok()).expect(usage);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let user = AtomicU64::new(0);
    let dir = tempfile::tempdir().unwrap();
    let mut server = None;
    runtime.block_on(async {
        let storage: SharedStorage = match workload.as_str() {
            "redis" | "redis-4" => {
                let url = server.insert(RedisServer::start()).url();
                Arc::new(RedisStorage::connect(&url).await.unwrap())
            }
            "sqlite" | "sqlite-4" => Arc::new(
                SqliteStorage::open(dir.path().join("sessions.db"))
                    .await
                    .unwrap(),
            ),
            "bounded" | "bounded-4" => Arc::new(MemoryStorage::with_capacity(100_000)),
            "bounded-full" => Arc::new(MemoryStorage::with_capacity(workload::USERS / 2)),
            _ => Arc::new(MemoryStorage::new()),
        };
        match workload.as_str() {
            "memory" | "bounded" | "bounded-full" | "redis" | "sqlite" => {
                let manager = manager(storage, false);
                for _ in 0..updates {
                    ours_one(&manager, next_user(&user)).await;
                }
            }
            "memory-4" | "bounded-4" | "redis-4" | "sqlite-4" => {
                let manager = manager(storage, true);
                for _ in 0..updates {
                    ours_four(&manager, next_user(&user)).await;
                }
            }
            "memory-read" | "memory-read-new" => {
                let manager = manager(storage, false);
                if workload == "memory-read" {
                    for _ in 0..workload::USERS {
                        ours_one(&manager, next_user(&user)).await;
                    }
                }
                for _ in 0..updates {
                    std::hint::black_box(ours_read(&manager, next_user(&user)).await);
                }
            }
            "memory-lazy" => {
                let manager = SessionManager::builder()
                    .storage(storage)
                    .register::<LazyOne>()
                    .build()
                    .unwrap();
                for _ in 0..updates {
                    ours_lazy(&manager, next_user(&user)).await;
                }
            }
            "memory-eq" => {
                let manager = SessionManager::builder()
                    .storage(storage)
                    .register::<EqOne>()
                    .build()
                    .unwrap();
                for _ in 0..updates {
                    ours_one_eq(&manager, next_user(&user)).await;
                }
            }
            "teloxide" => {
                let storage = InMemStorage::<One>::new();
                for _ in 0..updates {
                    teloxide_rmw(&storage, next_user(&user), |s| s.apple += 1).await;
                }
            }
            "dispatch" | "dispatch-teloxide" | "dispatch-floor" => {
                // A round is one update of each of the trees' users.
                let (tree, round) = match workload.as_str() {
                    "dispatch" => (
                        dispatch_trees::tg_session_tree(storage),
                        dispatch_trees::deps(&dptree::deps![]),
                    ),
                    "dispatch-teloxide" => (
                        dispatch_trees::teloxide_tree(),
                        dispatch_trees::deps(&dptree::deps![
                            InMemStorage::<dispatch_trees::Counter>::new()
                        ]),
                    ),
                    _ => (
                        dispatch_trees::floor_tree(),
                        dispatch_trees::deps(&dptree::deps![]),
                    ),
                };
                for _ in 0..updates.div_ceil(dispatch_trees::USERS) {
                    dispatch_trees::run_all(&tree, &round).await;
                }
            }
            other => panic!("unknown workload `{other}`; {usage}"),
        }
    });
}
