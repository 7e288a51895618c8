use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Session, Serialize, Deserialize)]
#[session(key = counter)]
struct Counter {
    apple: u32,
}

fn main() {}
