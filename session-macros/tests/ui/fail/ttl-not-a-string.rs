use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", ttl = 3600)]
struct Counter {
    apple: u32,
}

fn main() {}
