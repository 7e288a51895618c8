use serde::{Deserialize, Serialize};
use tg_session::{Session, UpdateIds};

fn by_business(ids: &UpdateIds) -> Option<String> {
    ids.business_connection_id().map(str::to_owned)
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", scope = "chat", key_fn = by_business)]
struct Counter {
    apple: u32,
}

fn use_it(ctx: &tg_session::Sessions) -> Result<u32, tg_session::Error> {
    Ok(ctx.counter()?.apple)
}

fn main() {}
