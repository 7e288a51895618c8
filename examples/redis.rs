//! The apple counter on Redis (GramIO: `storage: redisStorage()`):
//! the same bot as the `counter` example, with sessions that survive a
//! restart and are shared by every process of the bot.
//!
//! ```text
//! cargo run --example redis --features teloxide,redis
//! ```
//!
//! Uses the Redis server in `REDIS_URL`; without it, starts a private
//! `redis-server` on a free loopback port in a temporary directory (and stops
//! it at exit). With `BOT_TOKEN` set it runs against Telegram; without, it
//! plays a scripted chat against a local stand-in of the Bot API, and the
//! counts are read back from Redis at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bot_api_stub::demo::{self, BoxError, Script};
use bot_api_stub::local_redis::LocalRedis;
use bot_api_stub::{Chat, User};
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{RedisStorage, Session, SessionManager, Sessions};

/// GramIO: `session({ key: "sessionKey", initial: () => ({ apple: 1 }), storage: redisStorage() })`.
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
    let (_local, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let redis = LocalRedis::start()?;
            let url = redis.url().to_owned();
            (Some(redis), url)
        }
    };
    let storage = RedisStorage::connect(url.as_str()).await?;
    let manager = SessionManager::builder()
        .storage(storage)
        .prefix("tg_session_example")
        .register::<Counter>()
        .build()?;
    let handler = Update::filter_message()
        .enter_sessions(manager.clone())
        .endpoint(on_message);

    let (alice, bob) = (User::new(101, "Alice"), User::new(102, "Bob"));
    let garden = Chat::group(-1001, "Garden club");
    let script = Script::new()
        .say(&alice, &alice.private_chat(), "hi")
        .say(&bob, &bob.private_chat(), "hello")
        .say(&alice, &garden, "me too")
        .say(&bob, &garden, "and me");
    demo::run(handler, dptree::deps![], script).await?;

    for user in [&alice, &bob] {
        let ctx = manager
            .begin(tg_session::UpdateIds::new().user(user.id))
            .await;
        let counter = ctx.counter()?;
        println!(
            "in Redis: {} (key `{}`) has {} apples",
            user.name,
            counter.key(),
            counter.apple
        );
    }
    Ok(())
}
