//! The full dispatch path (`handler.dispatch(deps)`, no HTTP) with the
//! tg-session layer against teloxide's `enter_dialogue` + `InMemStorage`, on
//! the same updates, doing the same work: one read-modify-write of a counter
//! per update.
//!
//! ```text
//! cargo bench --bench dispatch --features teloxide
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use teloxide::dispatching::UpdateHandler;
use teloxide::dispatching::dialogue::{Dialogue, InMemStorage};
use teloxide::dptree::di::DependencyMap;
use teloxide::prelude::*;
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{Session, SessionManager, Sessions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Updates per measured iteration: 100 users, one message each, in a
/// private chat (teloxide's dialogues are per chat, ours per user: the same
/// number of distinct keys).
const USERS: u64 = 100;

#[derive(Session, Serialize, Deserialize, Clone, Default)]
#[session(key = "counter")]
struct Counter {
    apple: u32,
}

fn update(user: u64) -> Update {
    serde_json::from_str(&format!(
        r#"{{"update_id": {user}, "message": {{"message_id": 1, "date": 1700000000,
            "chat": {{"id": {user}, "type": "private", "first_name": "U"}},
            "from": {{"id": {user}, "is_bot": false, "first_name": "U"}}, "text": "hi"}}}}"#
    ))
    .unwrap()
}

fn me() -> teloxide::types::Me {
    serde_json::from_str(
        r#"{"id": 1000000, "is_bot": true, "first_name": "Bot", "username": "bot",
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "can_connect_to_business": false,
            "has_main_web_app": false}"#,
    )
    .unwrap()
}

fn tg_session_tree() -> UpdateHandler<BoxError> {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    Update::filter_message()
        .enter_sessions(manager)
        .endpoint(|ctx: Sessions| async move {
            ctx.counter()?.apple += 1;
            Ok(())
        })
}

type CounterDialogue = Dialogue<Counter, InMemStorage<Counter>>;

fn teloxide_tree() -> UpdateHandler<BoxError> {
    Update::filter_message()
        .enter_dialogue::<Message, InMemStorage<Counter>, Counter>()
        .endpoint(|dialogue: CounterDialogue, counter: Counter| async move {
            dialogue
                .update(Counter {
                    apple: counter.apple + 1,
                })
                .await?;
            Ok(())
        })
}

fn deps(extra: &DependencyMap) -> Vec<DependencyMap> {
    (1..=USERS)
        .map(|user| {
            let mut deps = dptree::deps![update(user), me()];
            deps.insert_container(extra.clone());
            deps
        })
        .collect()
}

async fn run_all(tree: &UpdateHandler<BoxError>, updates: &[DependencyMap]) {
    for deps in updates {
        match tree.dispatch(deps.clone()).await {
            ControlFlow::Break(Ok(())) => {}
            other => panic!("update not handled: {other:?}"),
        }
    }
}

fn dispatch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(USERS));

    let ours = tg_session_tree();
    let ours_updates = deps(&dptree::deps![]);
    group.bench_function("tg-session enter_sessions + MemoryStorage", |b| {
        b.to_async(&runtime)
            .iter(|| run_all(black_box(&ours), &ours_updates));
    });

    let theirs = teloxide_tree();
    let theirs_updates = deps(&dptree::deps![InMemStorage::<Counter>::new()]);
    group.bench_function("teloxide enter_dialogue + InMemStorage", |b| {
        b.to_async(&runtime)
            .iter(|| run_all(black_box(&theirs), &theirs_updates));
    });
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
