//! One update's session cost on SQLite, against teloxide's `SqliteStorage`
//! dialogues doing the same work on the same updates in the same run.
//!
//! Per update: begin → eager load → mutate → commit (ours), or
//! `Dialogue::get_or_default` + `Dialogue::update` per session type
//! (teloxide, `Json` serializer), cycling over 1,000 users, with 1 and 4
//! session types. Each storage has its own file in a temporary directory.
//!
//! Durability as measured:
//! - `tg_session/normal`: our default, WAL + `synchronous = NORMAL` (a
//!   commit survives a process crash; the last ones may roll back on power loss);
//! - `tg_session/full`: WAL + `synchronous = FULL` (fsync of the log per
//!   commit: survives power loss, like teloxide's);
//! - `teloxide`: teloxide's own settings, i.e. sqlx's defaults: rollback
//!   journal (`DELETE`) + `synchronous = FULL` (fsyncs per commit);
//! - `teloxide_wal`: the same on a file we switched to WAL first (the mode is
//!   stored in the file), still `synchronous = FULL`: what a teloxide user
//!   can get at best.
//!
//! At the storage level, one session's read-modify-write with cross-process
//! leases (`tg_session/leased`: `Leases::acquire` + `write_and_release`,
//! both through the single writer) against the same without leases
//! (`tg_session/plain`: `Storage::load` on a reader + `Storage::write`).
//!
//! `cargo bench -p tg-session-benches --bench sqlite`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use sqlx::Connection as _;
use teloxide::dispatching::dialogue::serializer::Json;
use teloxide::dispatching::dialogue::{Dialogue, SqliteStorage as TeloxideSqlite};
use teloxide::types::ChatId;
use tg_session::{SessionManager, SqliteStorage, SqliteSynchronous};

mod leased;
mod workload;
use workload::{Four, One, Three, Two, next_user, ours_four, ours_one};

type Teloxide = Arc<TeloxideSqlite<Json>>;

async fn teloxide_rmw<D>(storage: &Teloxide, user: u64, bump: impl FnOnce(&mut D))
where
    D: Clone + Default + Send + Serialize + for<'de> Deserialize<'de> + 'static,
{
    let dialogue: Dialogue<D, TeloxideSqlite<Json>> =
        Dialogue::new(Arc::clone(storage), ChatId(user as i64));
    let mut state = dialogue.get_or_default().await.unwrap();
    bump(&mut state);
    dialogue.update(state).await.unwrap();
}

async fn ours(
    dir: &Path,
    file: &str,
    synchronous: SqliteSynchronous,
    four: bool,
) -> SessionManager {
    let storage = SqliteStorage::builder(dir.join(file))
        .synchronous(synchronous)
        .open()
        .await
        .unwrap();
    workload::manager(storage, four)
}

async fn teloxide(dir: &Path, file: &str, wal: bool) -> Teloxide {
    let path = dir.join(file);
    if wal {
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite:{}?mode=rwc", path.display()))
                .await
                .unwrap();
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    TeloxideSqlite::open(path.to_str().unwrap(), Json)
        .await
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let user = AtomicU64::new(0);
    let mut group = c.benchmark_group("update_read_modify_write_sqlite");

    for (label, synchronous) in [
        ("normal", SqliteSynchronous::Normal),
        ("full", SqliteSynchronous::Full),
    ] {
        let one = runtime.block_on(ours(dir, &format!("ours-{label}-1.db"), synchronous, false));
        group.bench_function(
            BenchmarkId::new(format!("tg_session/{label}"), "1 session"),
            |b| {
                b.to_async(&runtime)
                    .iter(|| ours_one(&one, black_box(next_user(&user))))
            },
        );
        let four = runtime.block_on(ours(dir, &format!("ours-{label}-4.db"), synchronous, true));
        group.bench_function(
            BenchmarkId::new(format!("tg_session/{label}"), "4 sessions"),
            |b| {
                b.to_async(&runtime)
                    .iter(|| ours_four(&four, black_box(next_user(&user))))
            },
        );
    }

    for (label, leases) in [("leased", true), ("plain", false)] {
        let storage = runtime.block_on(async {
            SqliteStorage::builder(dir.join(format!("storage-{label}.db")))
                .cross_process_leases(leases)
                .open()
                .await
                .unwrap()
        });
        group.bench_function(
            BenchmarkId::new(format!("tg_session/{label}"), "1 session, storage level"),
            |b| {
                b.to_async(&runtime).iter(|| async {
                    let user = black_box(next_user(&user));
                    match leases {
                        true => leased::leased_rmw(&storage, user).await,
                        false => leased::plain_rmw(&storage, user).await,
                    }
                })
            },
        );
    }

    for (label, wal) in [("teloxide", false), ("teloxide_wal", true)] {
        let one = runtime.block_on(teloxide(dir, &format!("{label}-1.db"), wal));
        group.bench_function(BenchmarkId::new(label, "1 session"), |b| {
            b.to_async(&runtime)
                .iter(|| teloxide_rmw::<One>(&one, black_box(next_user(&user)), |s| s.apple += 1))
        });
        // teloxide keeps one dialogue type per storage (one table): four files.
        let four = runtime.block_on(async {
            let mut storages = Vec::new();
            for index in 0..4 {
                storages.push(teloxide(dir, &format!("{label}-4-{index}.db"), wal).await);
            }
            storages
        });
        group.bench_function(BenchmarkId::new(label, "4 sessions"), |b| {
            b.to_async(&runtime).iter(|| async {
                let user = black_box(next_user(&user));
                teloxide_rmw::<One>(&four[0], user, |s| s.apple += 1).await;
                teloxide_rmw::<Two>(&four[1], user, |s| s.apple += 1).await;
                teloxide_rmw::<Three>(&four[2], user, |s| s.apple += 1).await;
                teloxide_rmw::<Four>(&four[3], user, |s| s.apple += 1).await;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
