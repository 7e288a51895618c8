//! GramIO's apple counter (the example its session plugin documents) as a
//! teloxide bot: one eager session per user, in memory. Every message adds
//! an apple and the bot answers with the count.
//!
//! ```text
//! cargo run --example counter --features teloxide
//! ```
//!
//! With `BOT_TOKEN` set it runs against Telegram (or the Bot API server in
//! `TELOXIDE_API_URL`). Without, it plays a scripted chat of three users
//! against a local stand-in of the Bot API and prints the exchange: each user
//! has their own count, also when they write in a group.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bot_api_stub::demo::{self, BoxError, Script};
use bot_api_stub::{Chat, User};
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{Session, SessionManager, Sessions};

/// GramIO: `session({ key: "sessionKey", initial: () => ({ apple: 1 }) })`.
#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter")]
struct Counter {
    #[session(default = 1)]
    apple: u32,
}

async fn on_message(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
    let apples = {
        let mut counter = ctx.counter()?;
        counter.apple += 1;
        counter.apple
    };
    bot.send_message(msg.chat.id, format!("apples: {apples}"))
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let manager = SessionManager::builder().register::<Counter>().build()?;
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(on_message);

    let (alice, bob, carol) = (
        User::new(101, "Alice"),
        User::new(102, "Bob"),
        User::new(103, "Carol"),
    );
    let garden = Chat::group(-1001, "Garden club");
    let script = Script::new()
        .say(&alice, &alice.private_chat(), "hi")
        .say(&bob, &bob.private_chat(), "hello")
        .say(&alice, &alice.private_chat(), "one more")
        .say(&carol, &garden, "hi all")
        .say(&alice, &garden, "me too")
        .say(&bob, &garden, "and me")
        .say(&carol, &carol.private_chat(), "again");
    demo::run(handler, dptree::deps![], script).await
}
