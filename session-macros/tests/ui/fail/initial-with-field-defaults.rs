use serde::{Deserialize, Serialize};
use tg_session::Session;

fn start() -> Counter {
    Counter { apple: 1, pear: 2 }
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", initial = start)]
struct Counter {
    #[session(default = 1)]
    apple: u32,
    pear: u32,
}

fn use_it(ctx: &tg_session::Sessions) -> Result<u32, tg_session::Error> {
    Ok(ctx.counter()?.apple)
}

fn main() {}
