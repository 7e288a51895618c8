use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Session, Serialize, Deserialize)]
#[session(key = "list")]
struct List<T> {
    items: Vec<T>,
}

fn main() {}
