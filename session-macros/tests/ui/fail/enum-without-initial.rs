use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Session, Serialize, Deserialize)]
#[session(key = "step")]
enum Step {
    Start,
    AskName,
}

fn main() {}
