//! Explicit session types (GramIO's "TypeScript" section): a struct whose
//! initial value comes from a function, and an enum state machine, both
//! checked by the compiler where GramIO trusts an interface.
//!
//! ```text
//! cargo run --example typed --features teloxide
//! ```
//!
//! `/signup` starts a two-question dialogue (name, then age) kept in an enum
//! session; any other message counts apples as in the `counter` example.
//! With `BOT_TOKEN` set it runs against Telegram; without, it plays a
//! scripted chat against a local stand-in of the Bot API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bot_api_stub::User;
use bot_api_stub::demo::{self, BoxError, Script};
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{Session, SessionManager, Sessions};

/// GramIO: `interface MySessionData { apple: number; some?: "maybe-empty" }`
/// with `initial: (): MySessionData => ({ apple: 1 })`.
#[derive(Session, Serialize, Deserialize)]
#[session(key = "data", initial = my_session_data)]
struct MySessionData {
    apple: u32,
    some: Option<MaybeEmpty>,
}

/// The one value GramIO's `some?: "maybe-empty"` allows.
#[derive(Serialize, Deserialize, Clone, Copy)]
enum MaybeEmpty {
    #[serde(rename = "maybe-empty")]
    MaybeEmpty,
}

fn my_session_data() -> MySessionData {
    MySessionData {
        apple: 1,
        some: None,
    }
}

/// A dialogue as a state machine: each state holds what it has collected.
#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "signup")]
enum Signup {
    #[default]
    Idle,
    AskedName,
    AskedAge {
        name: String,
    },
    Done {
        name: String,
        age: u8,
    },
}

async fn on_message(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
    let text = msg.text().unwrap_or_default().trim().to_owned();
    let answer = {
        let mut signup = ctx.signup()?;
        match (&*signup, text.as_str()) {
            (_, "/signup") => {
                *signup = Signup::AskedName;
                "what is your name?".to_owned()
            }
            (Signup::AskedName, name) => {
                *signup = Signup::AskedAge {
                    name: name.to_owned(),
                };
                format!("nice to meet you, {name}; how old are you?")
            }
            (Signup::AskedAge { name }, age) => match age.parse::<u8>() {
                Ok(age) => {
                    let name = name.clone();
                    *signup = Signup::Done {
                        name: name.clone(),
                        age,
                    };
                    format!("signed up: {name}, {age}")
                }
                Err(_) => "a number, please".to_owned(),
            },
            (Signup::Idle | Signup::Done { .. }, _) => {
                let mut data = ctx.data()?;
                data.apple += 1;
                if data.apple >= 3 {
                    data.some = Some(MaybeEmpty::MaybeEmpty);
                }
                let who = match &*signup {
                    Signup::Done { name, age } => format!("{name} ({age})"),
                    _ => "stranger (try /signup)".to_owned(),
                };
                let some = if data.some.is_some() {
                    ", some: maybe-empty"
                } else {
                    ""
                };
                format!("{who}: apples: {}{some}", data.apple)
            }
        }
    };
    bot.send_message(msg.chat.id, answer).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let manager = SessionManager::builder()
        .register::<MySessionData>()
        .register::<Signup>()
        .build()?;
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(on_message);

    let alice = User::new(101, "Alice");
    let a = alice.private_chat();
    let script = Script::new()
        .say(&alice, &a, "hello")
        .say(&alice, &a, "/signup")
        .say(&alice, &a, "Alice")
        .say(&alice, &a, "many")
        .say(&alice, &a, "30")
        .say(&alice, &a, "hello again");
    demo::run(handler, dptree::deps![], script).await
}
