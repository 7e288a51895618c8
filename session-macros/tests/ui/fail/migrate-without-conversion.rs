use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Deserialize)]
struct CounterV1 {
    apple: u32,
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", version = 2, migrate(from = CounterV1, version = 1))]
struct Counter {
    apples: u32,
}

fn main() {}
