use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Deserialize)]
struct V1 {
    apple: u32,
}

#[derive(Deserialize)]
struct V2 {
    apple: u32,
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", version = 3, migrate(from = V1, version = 1), migrate(from = V1, version = 2))]
struct Counter {
    apple: u32,
}

fn main() {}
