//! The session types the behaviour suite works with, declared as a user would.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tg_session::{Json, Session, UpdateIds};

/// The seed's counter: eager, per sender, starts at one apple.
#[derive(Session, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[session(key = "counter")]
pub struct Counter {
    #[session(default = 1)]
    pub apple: u32,
}

/// Lazy, per sender in each chat.
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "profile", lazy, scope = "user_in_chat")]
pub struct Profile {
    pub name: Option<String>,
}

/// Eager, one per chat.
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "chat_topic", scope = "chat")]
pub struct ChatTopic {
    pub topic: String,
}

/// Lazy, one per forum topic.
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "thread_note", lazy, scope = "chat_thread")]
pub struct ThreadNote {
    pub notes: Vec<String>,
}

/// Lazy, one for the whole bot.
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "stats", lazy, scope = "global")]
pub struct Stats {
    pub updates: u64,
}

/// Keyed by business connection, as a `key_fn` would do for business bots.
pub fn by_business_connection(ids: &UpdateIds) -> Option<String> {
    ids.business_connection_id().map(|id| format!("biz-{id}"))
}

/// Lazy, keyed by [`by_business_connection`].
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "business", lazy, key_fn = by_business_connection)]
pub struct Business {
    pub greeted: bool,
}

/// An enum state machine, eager, whose initial state is a default variant.
#[derive(Session, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[session(key = "dialog")]
pub enum Dialog {
    #[session(default)]
    Start,
    AskedName,
    Named(String),
}

/// Kept apart so its accessor, also named `counter`, does not clash with [`Counter`]'s.
pub mod lenient {
    use super::*;

    /// Under `counter`'s key name but decoded leniently: bytes that do not decode reset it.
    #[derive(Session, Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[session(key = "counter", lazy, on_decode_error = "reset")]
    pub struct LenientCounter {
        #[session(default = 1)]
        pub apple: u32,
    }
}

/// Lazy and lives one second after its last write (written by hand: the
/// derive's `ttl` takes whole seconds too, this shows the trait is enough).
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
pub struct ShortLived {
    pub token: u32,
}

impl Session for ShortLived {
    const NAME: &'static str = "short_lived";
    const LAZY: bool = true;
    const TTL: Option<Duration> = Some(Duration::from_secs(1));
    type Codec = Json;

    fn initial() -> Self {
        Self::default()
    }
}
