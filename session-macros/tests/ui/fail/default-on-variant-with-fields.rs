use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Session, Serialize, Deserialize)]
#[session(key = "step")]
enum Step {
    Start,
    #[session(default)]
    AskName { attempts: u8 },
}

fn main() {}
