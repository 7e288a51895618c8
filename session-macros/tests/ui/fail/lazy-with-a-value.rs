use serde::{Deserialize, Serialize};
use tg_session::Session;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "profile", lazy = true)]
struct Profile {
    name: Option<String>,
}

async fn use_it(ctx: &tg_session::Sessions) -> Result<Option<String>, tg_session::Error> {
    Ok(ctx.profile().await?.name.clone())
}

fn main() {}
