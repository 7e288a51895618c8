//! A local stand-in of the Telegram Bot API, so tg-session's examples and
//! tests run a real teloxide bot (real HTTP, real long polling) without
//! Telegram.
//!
//! - [`BotApiStub`]: the server on `127.0.0.1`; push updates, read what the
//!   bot called; or deliver updates to webhooks, round-robin, as a load
//!   balancer in front of several replicas would.
//! - [`demo`]: runs an example bot against Telegram when `BOT_TOKEN` is set,
//!   otherwise offline against the stub with a scripted conversation.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use bot_api_stub::{BotApiStub, Chat, User};
//! let stub = BotApiStub::start().await?;
//! let bot = stub.bot(); // a `teloxide::Bot` pointed at the stub
//! let alice = User::new(1, "Alice");
//! stub.send_text(&alice, &alice.private_chat(), "hi");
//! let replies = stub.replies_after(0).await; // once the bot answered
//! # drop((bot, replies)); Ok(()) }
//! ```

pub mod demo;
pub mod local_redis;
mod people;
mod server;

pub use people::{Chat, User};
pub use server::{ApiRequest, BotApiStub, Reply, TOKEN, WEBHOOK_LIMIT, Webhook};
