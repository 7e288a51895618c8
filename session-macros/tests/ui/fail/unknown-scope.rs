use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", scope = "group")]
struct Counter {
    apple: u32,
}

fn use_it(ctx: &tg_session::Sessions) -> Result<u32, tg_session::Error> {
    Ok(ctx.counter()?.apple)
}

fn main() {}
