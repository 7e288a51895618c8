use serde::Deserialize;
use tg_session::Session;

#[derive(Session, Deserialize)]
#[session(key = "counter")]
struct Counter {
    apple: u32,
}

fn main() {}
