//! Every type-level attribute form, checked at run time through the
//! generated `Session` constants.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tg_session::{Codec, KeyStrategy, OnDecodeError, Scope, Session, UpdateIds};

#[derive(Session, Serialize, Deserialize, Default)]
struct Unnamed {
    n: u32,
}

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "counter")]
struct Counter {
    n: u32,
}

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "profile", lazy)]
struct Profile {
    name: Option<String>,
}

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "by_user", scope = "user")]
struct ByUser;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "by_chat", scope = "chat")]
struct ByChat;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "by_user_in_chat", scope = "user_in_chat")]
struct ByUserInChat;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "by_thread", scope = "chat_thread", lazy)]
struct ByThread;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "everyone", scope = "global")]
struct Everyone;

mod keys {
    pub fn by_business(ids: &tg_session::UpdateIds) -> Option<String> {
        ids.business_connection_id().map(str::to_owned)
    }
}

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "business", key_fn = keys::by_business)]
struct Business;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "business_quoted", key_fn = "keys::by_business")]
struct BusinessQuoted;

fn start() -> Started {
    Started { level: 7 }
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "started", initial = start)]
struct Started {
    level: u8,
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "started_quoted", initial = "self::start_quoted")]
struct StartedQuoted {
    level: u8,
}

fn start_quoted() -> StartedQuoted {
    StartedQuoted { level: 8 }
}

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "month", ttl = "30d")]
struct Month;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "ninety", ttl = "1h30m")]
struct Ninety;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "quick", ttl = "45s")]
struct Quick;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "mixed", ttl = "1d2h3m4s")]
struct Mixed;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "strict", on_decode_error = "error")]
struct Strict;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "forgiving", on_decode_error = "reset")]
struct Forgiving;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "json", codec = tg_session::Json)]
struct WithCodec;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "json_quoted", codec = "::tg_session::Json")]
struct WithQuotedCodec;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "own_crate", crate = "::tg_session")]
struct OwnCrate;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "split", lazy)]
#[session(scope = "chat", ttl = "2h")]
struct Split;

#[derive(Session, Serialize, Deserialize, Default)]
#[session(
    key = "everything",
    lazy,
    scope = "user_in_chat",
    ttl = "7d",
    on_decode_error = "reset",
    codec = tg_session::Json,
    crate = "tg_session",
)]
struct Everything;

fn scope<T: Session>() -> Option<Scope> {
    match T::KEY {
        KeyStrategy::Scope(scope) => Some(scope),
        KeyStrategy::Custom(_) => None,
    }
}

fn main() {
    assert_eq!(Unnamed::NAME, "session");
    assert_eq!(Counter::NAME, "counter");
    assert!(!Counter::LAZY);
    assert!(Profile::LAZY);

    assert_eq!(scope::<Counter>(), Some(Scope::User));
    assert_eq!(scope::<ByUser>(), Some(Scope::User));
    assert_eq!(scope::<ByChat>(), Some(Scope::Chat));
    assert_eq!(scope::<ByUserInChat>(), Some(Scope::UserInChat));
    assert_eq!(scope::<ByThread>(), Some(Scope::ChatThread));
    assert_eq!(scope::<Everyone>(), Some(Scope::Global));
    let ids = UpdateIds::new().business_connection("b1");
    for key in [Business::KEY, BusinessQuoted::KEY] {
        match key {
            KeyStrategy::Custom(key_fn) => assert_eq!(key_fn(&ids).as_deref(), Some("b1")),
            KeyStrategy::Scope(scope) => panic!("expected key_fn, got {scope:?}"),
        }
    }

    assert_eq!(Started::initial().level, 7);
    assert_eq!(StartedQuoted::initial().level, 8);

    assert_eq!(Counter::TTL, None);
    assert_eq!(Month::TTL, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(Ninety::TTL, Some(Duration::from_secs(5_400)));
    assert_eq!(Quick::TTL, Some(Duration::from_secs(45)));
    assert_eq!(
        Mixed::TTL,
        Some(Duration::from_secs(86_400 + 2 * 3_600 + 3 * 60 + 4))
    );

    assert_eq!(Counter::ON_DECODE_ERROR, OnDecodeError::Error);
    assert_eq!(Strict::ON_DECODE_ERROR, OnDecodeError::Error);
    assert_eq!(Forgiving::ON_DECODE_ERROR, OnDecodeError::Reset);

    assert_eq!(<WithCodec as Session>::Codec::NAME, "json");
    assert_eq!(<WithQuotedCodec as Session>::Codec::NAME, "json");
    assert_eq!(OwnCrate::NAME, "own_crate");

    assert!(Split::LAZY);
    assert_eq!(scope::<Split>(), Some(Scope::Chat));
    assert_eq!(Split::TTL, Some(Duration::from_secs(7_200)));

    assert!(Everything::LAZY);
    assert_eq!(scope::<Everything>(), Some(Scope::UserInChat));
    assert_eq!(Everything::TTL, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(Everything::ON_DECODE_ERROR, OnDecodeError::Reset);
}
