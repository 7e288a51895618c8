//! The full dispatch path (`handler.dispatch(deps)`, no HTTP) with the
//! tg-session layer against teloxide's `enter_dialogue` + `InMemStorage`, on
//! the same updates, doing the same work: one read-modify-write of a counter
//! per update.
//!
//! ```text
//! cargo bench -p tg-session-benches --bench dispatch
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use teloxide::dispatching::UpdateHandler;
use teloxide::dispatching::dialogue::InMemStorage;
use teloxide::prelude::*;
use tg_session::MemoryStorage;

mod dispatch_trees;
use dispatch_trees::{
    BoxError, Counter, HashMapStorage, USERS, deps, floor_tree, run_all, teloxide_tree,
    tg_session_tree,
};

fn dispatch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(USERS));

    let ours_updates = deps(&dptree::deps![]);
    let ours = tg_session_tree(MemoryStorage::new());
    group.bench_function("tg-session enter_sessions + MemoryStorage", |b| {
        b.to_async(&runtime)
            .iter(|| run_all(black_box(&ours), &ours_updates));
    });
    let ours = tg_session_tree(HashMapStorage::default());
    group.bench_function("tg-session enter_sessions + HashMap storage", |b| {
        b.to_async(&runtime)
            .iter(|| run_all(black_box(&ours), &ours_updates));
    });

    let theirs = teloxide_tree();
    let theirs_updates = deps(&dptree::deps![InMemStorage::<Counter>::new()]);
    group.bench_function("teloxide enter_dialogue + InMemStorage", |b| {
        b.to_async(&runtime)
            .iter(|| run_all(black_box(&theirs), &theirs_updates));
    });

    let floor: UpdateHandler<BoxError> = floor_tree();
    let floor_updates = deps(&dptree::deps![]);
    group.bench_function("floor: filter_message + endpoint, no session", |b| {
        b.to_async(&runtime)
            .iter(|| run_all(black_box(&floor), &floor_updates));
    });
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
