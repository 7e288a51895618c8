use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Session, Serialize, Deserialize)]
#[session(key = "type")]
struct Kind {
    name: String,
}

fn main() {}
