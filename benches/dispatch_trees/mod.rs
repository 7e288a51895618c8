//! The handler trees the dispatch benchmark times and `per_update`
//! counts: tg-session's layer and teloxide's dialogues doing one
//! read-modify-write of a counter per update, and the floor they share.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Mutex;

use bot_api_stub::BotApiStub;
use serde::{Deserialize, Serialize};
use teloxide::dispatching::UpdateHandler;
use teloxide::dispatching::dialogue::{Dialogue, InMemStorage};
use teloxide::dptree::di::DependencyMap;
use teloxide::prelude::*;
use tg_session::storage::Storage;
use tg_session::storage::{Conflict, Record, Write, WriteOutcome};
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{Session, SessionManager, Sessions, StorageError, StorageKey};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Updates per measured iteration: 100 users, one message each, in a
/// private chat (teloxide's dialogues are per chat, ours per user: the same
/// number of distinct keys).
pub const USERS: u64 = 100;

/// The counter every tree bumps once per update.
#[derive(Session, Serialize, Deserialize, Clone, Default)]
#[session(key = "counter")]
pub struct Counter {
    pub apple: u32,
}

fn update(user: u64) -> Update {
    serde_json::from_str(&format!(
        r#"{{"update_id": {user}, "message": {{"message_id": 1, "date": 1700000000,
            "chat": {{"id": {user}, "type": "private", "first_name": "U"}},
            "from": {{"id": {user}, "is_bot": false, "first_name": "U"}}, "text": "hi"}}}}"#
    ))
    .unwrap()
}

/// A plain `Mutex<HashMap>` storage (what teloxide's `InMemStorage` is), to
/// separate the layer's cost from the memory storage's.
#[derive(Default)]
pub struct HashMapStorage {
    records: Mutex<HashMap<String, Record>>,
}

#[tg_session::storage::async_trait]
impl Storage for HashMapStorage {
    fn name(&self) -> &str {
        "hashmap"
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        let records = self.records.lock().unwrap();
        Ok(keys
            .iter()
            .map(|key| records.get(key.as_str()).cloned())
            .collect())
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        let mut records = self.records.lock().unwrap();
        let outcomes = writes.iter().map(|write| match write {
            Write::Put {
                key,
                value,
                expected_version,
                ..
            } => {
                let stored = records.get(key.as_str()).map(|record| record.version);
                if stored != *expected_version {
                    return WriteOutcome::Conflict(Conflict::NewerVersion);
                }
                let version = Write::next_version(*expected_version);
                records.insert(
                    key.as_str().to_owned(),
                    Record {
                        value: value.clone(),
                        version,
                    },
                );
                WriteOutcome::Written { version }
            }
            Write::Delete { key } => {
                records.remove(key.as_str());
                WriteOutcome::Deleted
            }
        });
        Ok(outcomes.collect())
    }
}

pub fn tg_session_tree(storage: impl Storage) -> UpdateHandler<BoxError> {
    let manager = SessionManager::builder()
        .storage(storage)
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

pub fn teloxide_tree() -> UpdateHandler<BoxError> {
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

pub fn deps(extra: &DependencyMap) -> Vec<DependencyMap> {
    (1..=USERS)
        .map(|user| {
            let mut deps = dptree::deps![update(user), BotApiStub::me()];
            deps.insert_container(extra.clone());
            deps
        })
        .collect()
}

pub async fn run_all(tree: &UpdateHandler<BoxError>, updates: &[DependencyMap]) {
    for deps in updates {
        match tree.dispatch(deps.clone()).await {
            ControlFlow::Break(Ok(())) => {}
            other => panic!("update not handled: {other:?}"),
        }
    }
}

/// The same tree with no session at all: the floor both share.
pub fn floor_tree() -> UpdateHandler<BoxError> {
    Update::filter_message().endpoint(|| async { Ok::<(), BoxError>(()) })
}
