//! The accessors inside async handlers: the futures stay `Send`, so they can
//! be spawned on a multi-threaded runtime.
use std::future::Future;

use serde::{Deserialize, Serialize};
use tg_session::{Error, HandlerOutcome, Session, SessionManager, Sessions, UpdateIds};

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter")]
struct Counter {
    #[session(default = 1)]
    apple: u32,
}

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "profile", lazy)]
pub struct Profile {
    name: Option<String>,
}

async fn handler(ctx: &Sessions) -> Result<u32, Error> {
    let apple = {
        let mut counter = ctx.counter()?;
        counter.apple += 1;
        counter.apple
    };
    let mut profile = ctx.profile().await?;
    profile.name = Some(format!("apple {apple}"));
    Ok(apple)
}

/// Generic over any context type, as a framework adapter would be.
async fn generic_handler<C: tg_session::SessionContext + Sync>(
    ctx: &C,
) -> Result<Option<String>, Error> {
    Ok(ctx.profile().await?.name.clone())
}

fn require_send<F: Future + Send>(future: F) -> F {
    future
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .register::<Profile>()
        .build()
        .unwrap();
    let ids = UpdateIds::new().user(1).chat(1);
    let ctx = manager.begin(ids.clone()).await;
    assert_eq!(require_send(handler(&ctx)).await.unwrap(), 2);
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();

    let task = tokio::spawn(async move {
        let ctx = manager.begin(ids).await;
        let apple = require_send(handler(&ctx)).await.unwrap();
        let name = require_send(generic_handler(&ctx)).await.unwrap();
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        (apple, name)
    });
    assert_eq!(task.await.unwrap(), (3, Some("apple 3".to_owned())));
}
