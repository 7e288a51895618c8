//! Changing a session type without losing anyone's data: typed migrations.
//!
//! ```text
//! cargo run --example migrate --features teloxide
//! ```
//!
//! Yesterday's build counted apples (`{ apple }`) and had a signup dialogue
//! whose states were `Idle`, `AskName` and `Done { name }`. Today's build
//! turns the counter into a profile (apples and an age), renames `AskName`
//! to `AskedName` and adds a step that asks for the age. Both builds share one storage: the
//! first part of the script runs yesterday's build (Alice stops in the middle
//! of her signup), the second runs today's, which reads the old records,
//! migrates them, and writes them back in the new shape.
//!
//! With `BOT_TOKEN` set, yesterday's part still plays offline and today's
//! build then runs against Telegram.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bot_api_stub::demo::{self, BoxError, Script};
use bot_api_stub::{BotApiStub, User};
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use tg_session::codec::split_schema_version;
use tg_session::storage::SharedStorage;
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{MemoryStorage, Session, SessionManager, Sessions, StorageKey};

/// Yesterday's build, as it was deployed: no versions anywhere.
mod yesterday {
    use bot_api_stub::demo::BoxError;
    use serde::{Deserialize, Serialize};
    use teloxide::prelude::*;
    use tg_session::{Session, Sessions};

    #[derive(Session, Serialize, Deserialize)]
    #[session(key = "counter")]
    pub struct Counter {
        #[session(default = 1)]
        pub apple: u32,
    }

    #[derive(Session, Serialize, Deserialize)]
    #[session(key = "signup")]
    pub enum Signup {
        #[session(default)]
        Idle,
        AskName,
        Done {
            name: String,
        },
    }

    pub async fn on_message(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
        let text = msg.text().unwrap_or_default().to_owned();
        let mut signup = ctx.signup()?;
        let answer = match (&*signup, text.as_str()) {
            (_, "/signup") => {
                *signup = Signup::AskName;
                "what is your name?".to_owned()
            }
            (Signup::AskName, name) => {
                *signup = Signup::Done { name: name.into() };
                format!("welcome, {name}")
            }
            _ => {
                let mut counter = ctx.counter()?;
                counter.apple += 1;
                format!("apples: {}", counter.apple)
            }
        };
        drop(signup);
        bot.send_message(msg.chat.id, answer).await?;
        Ok(())
    }
}

/// The counter's first shape, kept to read the records yesterday's build
/// wrote (they carry no version, so they are read as the oldest shape).
#[derive(Deserialize)]
struct CounterV1 {
    apple: u32,
}

/// Today: the counter grew into a profile. It keeps the key `counter`,
/// which names its stored records.
#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter", version = 2, migrate(from = CounterV1, version = 1))]
struct Profile {
    #[session(default = 1)]
    apples: u32,
    age: Option<u8>,
}

impl From<CounterV1> for Profile {
    fn from(old: CounterV1) -> Self {
        Profile {
            apples: old.apple,
            age: None,
        }
    }
}

/// The signup states yesterday's build stored.
#[derive(Deserialize)]
enum SignupV1 {
    Idle,
    AskName,
    Done { name: String },
}

/// Today's signup: `AskName` is now `AskedName`, and a step asks the age.
#[derive(Session, Serialize, Deserialize, Debug)]
#[session(key = "signup", version = 2, migrate(from = SignupV1, version = 1, with = signup_v1))]
enum Signup {
    #[session(default)]
    Idle,
    AskedName,
    AskedAge {
        name: String,
    },
    Done {
        name: String,
    },
}

fn signup_v1(old: SignupV1) -> Signup {
    match old {
        SignupV1::Idle => Signup::Idle,
        SignupV1::AskName => Signup::AskedName,
        SignupV1::Done { name } => Signup::Done { name },
    }
}

async fn on_message(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
    let text = msg.text().unwrap_or_default().to_owned();
    let mut signup = ctx.signup()?;
    let mut profile = ctx.counter()?;
    let answer = match (&*signup, text.as_str()) {
        (_, "/signup") => {
            *signup = Signup::AskedName;
            "what is your name?".to_owned()
        }
        (Signup::AskedName, name) => {
            *signup = Signup::AskedAge { name: name.into() };
            format!("nice to meet you, {name}; how old are you?")
        }
        (Signup::AskedAge { name }, age) => match age.parse() {
            Ok(age) => {
                profile.age = Some(age);
                let answer = format!("signed up: {name}, {age}");
                *signup = Signup::Done { name: name.clone() };
                answer
            }
            Err(_) => "a number, please".to_owned(),
        },
        (signup, _) => {
            profile.apples += 1;
            let name = match signup {
                Signup::Done { name } => name.as_str(),
                _ => "stranger",
            };
            format!("apples: {} ({name})", profile.apples)
        }
    };
    drop((signup, profile));
    bot.send_message(msg.chat.id, answer).await?;
    Ok(())
}

/// Prints the stored records of `user`: their schema version and payload.
async fn show(storage: &SharedStorage, user: &User) -> Result<(), BoxError> {
    for name in ["counter", "signup"] {
        let key = StorageKey::new(None, None, name, &user.id.to_string());
        if let Some(record) = storage.load(std::slice::from_ref(&key)).await?.remove(0) {
            let (version, payload) = split_schema_version(&record.value);
            let version = version.map_or("none".to_owned(), |v| v.to_string());
            let payload = String::from_utf8_lossy(payload);
            println!("    stored {key}: schema version {version}, {payload}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let storage: SharedStorage = Arc::new(MemoryStorage::new());
    let (alice, bob) = (User::new(101, "Alice"), User::new(102, "Bob"));

    println!("yesterday's build:\n");
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .register::<yesterday::Counter>()
        .register::<yesterday::Signup>()
        .build()?;
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(yesterday::on_message);
    let script = Script::new()
        .say(&alice, &alice.private_chat(), "hi")
        .say(&bob, &bob.private_chat(), "hello")
        .say(&alice, &alice.private_chat(), "/signup");
    demo::run_offline(
        &BotApiStub::start().await?,
        handler,
        dptree::deps![],
        &script,
        true,
    )
    .await?;
    show(&storage, &alice).await?;

    println!("\ntoday's build, on the same storage:\n");
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .register::<Profile>()
        .register::<Signup>()
        .build()?;
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(on_message);
    let script = Script::new()
        .say(&alice, &alice.private_chat(), "Alice")
        .say(&alice, &alice.private_chat(), "30")
        .say(&alice, &alice.private_chat(), "hi")
        .say(&bob, &bob.private_chat(), "hello again");
    demo::run(handler, dptree::deps![], script).await?;
    show(&storage, &alice).await
}
