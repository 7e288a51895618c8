use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Session, Serialize, Deserialize)]
#[session(key = "step")]
enum Step {
    #[session(default)]
    Start,
    #[session(default)]
    AskName,
}

fn use_it(ctx: &tg_session::Sessions) -> Result<bool, tg_session::Error> {
    Ok(matches!(*ctx.step()?, Step::Start))
}

fn main() {}
