use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Deserialize)]
struct CounterV1 {
    apple: u32,
}

fn from_v1(old: CounterV1) -> Option<Counter> {
    Some(Counter { apples: old.apple })
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", version = 2, migrate(from = CounterV1, version = 1, with = from_v1))]
struct Counter {
    apples: u32,
}

fn main() {}
