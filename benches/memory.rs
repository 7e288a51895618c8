//! One update's session cost on the memory storage, against teloxide's
//! `InMemStorage` dialogues doing the same work in the same run.
//!
//! Per update: begin → eager load → mutate → commit (ours), or
//! `Dialogue::get_or_default` + `Dialogue::update` per session type
//! (teloxide), cycling over 1,000 users, with 1 and 4 session types.
//! The workload's types are `Clone` but not `PartialEq`, so ours tell a
//! change by encoding; the `PartialEq` rows measure the same sessions
//! deriving it, as the README advises.
//!
//! `cargo bench -p tg-session-benches --bench memory`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::AtomicU64;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use teloxide::dispatching::dialogue::InMemStorage;
use tg_session::SessionManager;

mod workload;
use workload::{
    EqFour, EqOne, EqThree, EqTwo, Four, One, TeloxideFour, Three, Two, next_user, ours_four,
    ours_four_eq, ours_one, ours_one_eq, teloxide_rmw,
};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("update_read_modify_write_memory");
    let user = AtomicU64::new(0);

    let one = SessionManager::builder().register::<One>().build().unwrap();
    group.bench_function(BenchmarkId::new("tg_session", "1 session"), |b| {
        b.to_async(&runtime)
            .iter(|| ours_one(&one, black_box(next_user(&user))))
    });
    let one_eq = SessionManager::builder()
        .register::<EqOne>()
        .build()
        .unwrap();
    group.bench_function(
        BenchmarkId::new("tg_session", "1 session (PartialEq)"),
        |b| {
            b.to_async(&runtime)
                .iter(|| ours_one_eq(&one_eq, black_box(next_user(&user))))
        },
    );
    let storage = InMemStorage::<One>::new();
    group.bench_function(BenchmarkId::new("teloxide_dialogue", "1 session"), |b| {
        b.to_async(&runtime)
            .iter(|| teloxide_rmw(&storage, black_box(next_user(&user)), |s| s.apple += 1))
    });

    let four = SessionManager::builder()
        .register::<One>()
        .register::<Two>()
        .register::<Three>()
        .register::<Four>()
        .build()
        .unwrap();
    group.bench_function(BenchmarkId::new("tg_session", "4 sessions"), |b| {
        b.to_async(&runtime)
            .iter(|| ours_four(&four, black_box(next_user(&user))))
    });
    let four_eq = SessionManager::builder()
        .register::<EqOne>()
        .register::<EqTwo>()
        .register::<EqThree>()
        .register::<EqFour>()
        .build()
        .unwrap();
    group.bench_function(
        BenchmarkId::new("tg_session", "4 sessions (PartialEq)"),
        |b| {
            b.to_async(&runtime)
                .iter(|| ours_four_eq(&four_eq, black_box(next_user(&user))))
        },
    );
    let storages = TeloxideFour::new();
    group.bench_function(BenchmarkId::new("teloxide_dialogue", "4 sessions"), |b| {
        b.to_async(&runtime)
            .iter(|| storages.update(black_box(next_user(&user)), 4))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
