//! Clearing a session (GramIO's `$clear()`): `/reset` deletes the counter
//! from storage at once, and the next message starts again from the initial
//! value.
//!
//! ```text
//! cargo run --example clear --features teloxide
//! ```
//!
//! With `BOT_TOKEN` set it runs against Telegram; without, it plays a
//! scripted chat against a local stand-in of the Bot API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bot_api_stub::User;
use bot_api_stub::demo::{self, BoxError, Script};
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{Session, SessionManager, Sessions};

/// An eager counter, as in the `counter` example.
#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter")]
struct Counter {
    #[session(default = 1)]
    apple: u32,
}

/// The same counter, lazy: it is cleared after resolving it (GramIO: `await
/// context.sessionKey` first, then `$clear()`).
#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "pears", lazy)]
struct Pears {
    pear: u32,
}

async fn on_message(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
    let answer = if msg.text() == Some("/reset") {
        ctx.counter()?.clear().await?;
        ctx.pears().await?.clear().await?;
        "both sessions cleared".to_owned()
    } else {
        let apples = {
            let mut counter = ctx.counter()?;
            counter.apple += 1;
            counter.apple
        };
        let mut pears = ctx.pears().await?;
        pears.pear += 1;
        format!("apples: {apples}, pears: {}", pears.pear)
    };
    bot.send_message(msg.chat.id, answer).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .register::<Pears>()
        .build()?;
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(on_message);

    let (alice, bob) = (User::new(101, "Alice"), User::new(102, "Bob"));
    let (a, b) = (alice.private_chat(), bob.private_chat());
    let script = Script::new()
        .say(&alice, &a, "one")
        .say(&alice, &a, "two")
        .say(&bob, &b, "one")
        .say(&alice, &a, "/reset")
        .say(&alice, &a, "after reset")
        .say(&bob, &b, "two");
    demo::run(handler, dptree::deps![], script).await
}
