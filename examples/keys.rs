//! Custom session keys (GramIO's `getSessionKey`): a session shared by a
//! whole chat next to a session of each user in each chat.
//!
//! ```text
//! cargo run --example keys --features teloxide
//! ```
//!
//! `/topic <text>` sets the chat's topic, seen by everyone in the chat;
//! `/pref <text>` sets the sender's preference in this chat only. With
//! `BOT_TOKEN` set it runs against Telegram; without, it plays a scripted
//! chat of two groups against a local stand-in of the Bot API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bot_api_stub::demo::{self, BoxError, Script};
use bot_api_stub::{Chat, User};
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{Session, SessionManager, Sessions, UpdateIds};

/// GramIO: `getSessionKey: (ctx) => \`chat:${ctx.chatId}\``: one per chat.
#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "chat_topic", scope = "chat")]
struct ChatTopic {
    topic: String,
}

/// GramIO: `getSessionKey: (ctx) => \`${ctx.senderId}:${ctx.chatId}\``,
/// written as a key function (`scope = "user_in_chat"` builds the same key).
#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "preferences", key_fn = member_key)]
struct Preferences {
    preference: Option<String>,
}

/// The key of a user in a chat; updates without a sender or a chat have none.
fn member_key(ids: &UpdateIds) -> Option<String> {
    Some(format!("{}:{}", ids.user_id()?, ids.chat_id()?))
}

async fn on_message(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
    let text = msg.text().unwrap_or_default();
    if let Some(topic) = text.strip_prefix("/topic ") {
        ctx.chat_topic()?.topic = topic.to_owned();
    } else if let Some(preference) = text.strip_prefix("/pref ") {
        ctx.preferences()?.preference = Some(preference.to_owned());
    }
    let topic = ctx.chat_topic()?.topic.clone();
    let preference = ctx.preferences()?.preference.clone();
    let answer = format!(
        "chat topic: {}; your preference here: {}",
        if topic.is_empty() { "(none)" } else { &topic },
        preference.as_deref().unwrap_or("(none)")
    );
    bot.send_message(msg.chat.id, answer).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let manager = SessionManager::builder()
        .register::<ChatTopic>()
        .register::<Preferences>()
        .build()?;
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(on_message);

    let (alice, bob) = (User::new(101, "Alice"), User::new(102, "Bob"));
    let garden = Chat::group(-1001, "Garden club");
    let chess = Chat::group(-1002, "Chess club");
    let script = Script::new()
        .say(&alice, &garden, "/topic tomatoes")
        .say(&bob, &garden, "/pref cherry ones")
        .say(&alice, &garden, "what do we have?")
        .say(&alice, &chess, "/pref blitz")
        .say(&bob, &chess, "and here?")
        .say(&alice, &garden, "and in the garden?");
    demo::run(handler, dptree::deps![], script).await
}
