//! Lazy sessions (GramIO's `lazy: true`): the session is read from storage
//! only when a handler awaits it, so updates that never look at it cost no
//! storage round trip.
//!
//! ```text
//! cargo run --example lazy --features teloxide
//! ```
//!
//! The storage is wrapped to count its loads, and every reply shows the
//! count: `/help` answers without touching the session, and the count stays
//! put. With `BOT_TOKEN` set it runs against Telegram; without, it plays a
//! scripted chat against a local stand-in of the Bot API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bot_api_stub::User;
use bot_api_stub::demo::{self, BoxError, Script};
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use tg_session::storage::Storage;
use tg_session::storage::{Record, Write, WriteOutcome};
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{MemoryStorage, Session, SessionManager, Sessions, StorageError, StorageKey};

/// GramIO: `session({ key: "sessionKey", lazy: true, initial: () => ({ count: 0 }) })`.
#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "visits", lazy)]
struct Visits {
    count: u32,
}

/// The memory storage, counting how many times it was asked to load.
#[derive(Clone, Default)]
struct CountingStorage {
    inner: MemoryStorage,
    loads: Arc<AtomicUsize>,
}

#[tg_session::storage::async_trait]
impl Storage for CountingStorage {
    fn name(&self) -> &str {
        "counting memory"
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.inner.load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        self.inner.write(writes).await
    }
}

async fn on_message(
    bot: Bot,
    msg: Message,
    ctx: Sessions,
    storage: CountingStorage,
) -> Result<(), BoxError> {
    let answer = match msg.text() {
        Some("/help") => "send anything and I count it".to_owned(),
        _ => {
            // The storage is read here, on first access, and not before.
            let mut visits = ctx.visits().await?;
            visits.count += 1;
            format!("count: {}", visits.count)
        }
    };
    let loads = storage.loads.load(Ordering::Relaxed);
    bot.send_message(
        msg.chat.id,
        format!("{answer} (storage loads so far: {loads})"),
    )
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let storage = CountingStorage::default();
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .register::<Visits>()
        .build()?;
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(on_message);

    let (alice, bob) = (User::new(101, "Alice"), User::new(102, "Bob"));
    let (a, b) = (alice.private_chat(), bob.private_chat());
    let script = Script::new()
        .say(&alice, &a, "/help")
        .say(&alice, &a, "hello")
        .say(&bob, &b, "/help")
        .say(&alice, &a, "/help")
        .say(&bob, &b, "hey")
        .say(&alice, &a, "again");
    demo::run(handler, dptree::deps![storage], script).await
}
