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
#[session(key = "counter", migrate(from = V1, version = 1))]
struct Counter {
    apple: u32,
}

fn main() {}
