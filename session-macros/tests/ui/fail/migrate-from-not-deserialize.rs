use serde::{Deserialize, Serialize};
use tg_session::Session;

struct CounterV1 {
    apple: u32,
}

impl From<CounterV1> for Counter {
    fn from(old: CounterV1) -> Self {
        Self { apples: old.apple }
    }
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", version = 2, migrate(from = CounterV1, version = 1))]
struct Counter {
    apples: u32,
}

fn main() {}
