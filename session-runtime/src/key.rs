//! Which ids of an update make a session's key, and how storage keys are built.

use std::fmt;

use smol_str::{SmolStr, SmolStrBuilder};

/// The ids of one update that session keys are built from.
///
/// Framework glue fills it from the update; a hand-written loop builds it with
/// the setters:
///
/// ```
/// use tg_session::UpdateIds;
/// let ids = UpdateIds::new().user(42).chat(-100123).thread(7);
/// assert_eq!(ids.user_id(), Some(42));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UpdateIds {
    bot_id: Option<u64>,
    chat_id: Option<i64>,
    user_id: Option<u64>,
    thread_id: Option<i32>,
    business_connection_id: Option<String>,
}

impl UpdateIds {
    /// No ids at all (a `global` session still works).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the bot's own user id (used in keys when the manager asks for it).
    #[must_use]
    pub fn bot(mut self, bot_id: u64) -> Self {
        self.bot_id = Some(bot_id);
        self
    }

    /// Sets the chat id.
    #[must_use]
    pub fn chat(mut self, chat_id: i64) -> Self {
        self.chat_id = Some(chat_id);
        self
    }

    /// Sets the sender's user id.
    #[must_use]
    pub fn user(mut self, user_id: u64) -> Self {
        self.user_id = Some(user_id);
        self
    }

    /// Sets the forum topic (message thread) id.
    #[must_use]
    pub fn thread(mut self, thread_id: i32) -> Self {
        self.thread_id = Some(thread_id);
        self
    }

    /// Sets the business connection id.
    #[must_use]
    pub fn business_connection(mut self, id: impl Into<String>) -> Self {
        self.business_connection_id = Some(id.into());
        self
    }

    /// The bot's own user id, if known.
    pub fn bot_id(&self) -> Option<u64> {
        self.bot_id
    }

    /// The chat the update happened in, if any.
    pub fn chat_id(&self) -> Option<i64> {
        self.chat_id
    }

    /// The sender, if any (a channel post has none).
    pub fn user_id(&self) -> Option<u64> {
        self.user_id
    }

    /// The forum topic, if the update is in one.
    pub fn thread_id(&self) -> Option<i32> {
        self.thread_id
    }

    /// The business connection the update came through, if any.
    pub fn business_connection_id(&self) -> Option<&str> {
        self.business_connection_id.as_deref()
    }
}

/// Which ids of the update a session is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// One session per sender, across chats (the default, as GramIO's `senderId`).
    User,
    /// One session per chat, shared by its members.
    Chat,
    /// One session per sender in each chat.
    UserInChat,
    /// One session per forum topic; messages outside topics share the chat's main thread.
    ChatThread,
    /// One session for the whole bot.
    Global,
}

impl Scope {
    /// Every scope, in the order of their declaration.
    pub const ALL: [Scope; 5] = [
        Scope::User,
        Scope::Chat,
        Scope::UserInChat,
        Scope::ChatThread,
        Scope::Global,
    ];

    /// The scope named `name` (as [`Scope::name`] spells it).
    pub fn from_name(name: &str) -> Option<Scope> {
        Self::ALL.into_iter().find(|scope| scope.name() == name)
    }

    /// The scope's name as written in `#[session(scope = "...")]`.
    pub fn name(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Chat => "chat",
            Scope::UserInChat => "user_in_chat",
            Scope::ChatThread => "chat_thread",
            Scope::Global => "global",
        }
    }

    /// The part of the storage key this scope takes from `ids`, or what is missing.
    pub fn scope_key(self, ids: &UpdateIds) -> Result<String, &'static str> {
        let mut out = SmolStrBuilder::new();
        self.write_scope_key(ids, &mut out)?;
        Ok(out.as_str().to_owned())
    }

    /// Appends the scope key to `out` (no allocation of its own on the hot path).
    fn write_scope_key(
        self,
        ids: &UpdateIds,
        out: &mut SmolStrBuilder,
    ) -> Result<(), &'static str> {
        if let Some(id) = self.single_id(ids) {
            let id = id?;
            if id.negative {
                out.push('-');
            }
            push_int(out, id.magnitude);
            return Ok(());
        }
        match self {
            // Keyed by one id: written above.
            Scope::User | Scope::Chat => {}
            Scope::UserInChat => {
                let chat = ids.chat_id.ok_or(CHAT)?;
                let user = ids.user_id.ok_or(SENDER)?;
                push_int(out, chat);
                out.push(':');
                push_int(out, user);
            }
            Scope::ChatThread => {
                push_int(out, ids.chat_id.ok_or(CHAT)?);
                match ids.thread_id {
                    Some(thread) => {
                        out.push(':');
                        push_int(out, thread);
                    }
                    None => out.push_str(":main"),
                }
            }
            Scope::Global => out.push_str("global"),
        }
        Ok(())
    }

    /// The one id the key of a `user` or `chat` scope is made of, or what
    /// is missing; `None` for the other scopes.
    fn single_id(self, ids: &UpdateIds) -> Option<Result<Id, &'static str>> {
        match self {
            Scope::User => Some(ids.user_id.map(Id::unsigned).ok_or(SENDER)),
            Scope::Chat => Some(ids.chat_id.map(Id::signed).ok_or(CHAT)),
            _ => None,
        }
    }
}

/// What a key names when the update lacks the sender, or the chat.
const SENDER: &str = "the sender's user id";
const CHAT: &str = "a chat id";

/// The one id a `user` or `chat` scope key is made of, as the key writes
/// it: sign and magnitude (a user id is a `u64`, a chat id an `i64`). The
/// memory storage finds such a key by its namespace and id, with no text
/// built (see `storage::memory::map_key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Id {
    negative: bool,
    magnitude: u64,
}

impl Id {
    pub(crate) fn unsigned(id: u64) -> Self {
        Self {
            negative: false,
            magnitude: id,
        }
    }

    pub(crate) fn signed(id: i64) -> Self {
        Self {
            negative: id < 0,
            magnitude: id.unsigned_abs(),
        }
    }

    /// The id `-magnitude` (`magnitude` above zero: see [`Id::parse`]).
    pub(crate) fn negative(magnitude: u64) -> Self {
        Self {
            negative: true,
            magnitude,
        }
    }

    pub(crate) fn magnitude(self) -> u64 {
        self.magnitude
    }

    pub(crate) fn is_negative(self) -> bool {
        self.negative
    }

    /// The id `text` writes, if it writes one as `itoa` does: digits with
    /// no leading zero, after a `-` for a magnitude other than zero.
    // One pass over the bytes: a text key's every lookup in memory runs
    // it (`str::parse` cost about twice as much).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (negative, digits) = match text.as_bytes() {
            [b'-', digits @ ..] => (true, digits),
            digits => (false, digits),
        };
        match digits {
            [] => return None,
            [b'0', _, ..] => return None,
            [b'0'] if negative => return None,
            _ => {}
        }
        let mut magnitude: u64 = 0;
        for &byte in digits {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            magnitude = magnitude.checked_mul(10)?.checked_add(u64::from(digit))?;
        }
        Some(Self {
            negative,
            magnitude,
        })
    }

    /// The one id of an update's key of `strategy`: its sender's or chat's
    /// id for a `user` or `chat` scope; `None` for any other key, or when
    /// the update lacks the id.
    pub(crate) fn of_key(strategy: &KeyStrategy, ids: &UpdateIds) -> Option<Self> {
        match strategy {
            KeyStrategy::Scope(scope) => scope.single_id(ids)?.ok(),
            KeyStrategy::Custom(_) => None,
        }
    }
}

fn push_int(out: &mut SmolStrBuilder, int: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(int));
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A custom key function (GramIO's `getSessionKey`): the scope part of the key
/// from the update's ids, or `None` when this update has no session of this type.
pub type KeyFn = fn(&UpdateIds) -> Option<String>;

/// How a session type's key is made.
#[derive(Clone, Copy, Debug)]
pub enum KeyStrategy {
    /// From a built-in scope.
    Scope(Scope),
    /// From a user function.
    Custom(KeyFn),
}

impl KeyStrategy {
    /// Whether this key has one record per member of a chat (`user_in_chat`),
    /// which follows a group to its supergroup on first use.
    pub(crate) fn follows_members(&self) -> bool {
        matches!(self, KeyStrategy::Scope(Scope::UserInChat))
    }

    fn write_scope_key(
        &self,
        ids: &UpdateIds,
        out: &mut SmolStrBuilder,
    ) -> Result<(), &'static str> {
        match self {
            KeyStrategy::Scope(scope) => scope.write_scope_key(ids, out),
            KeyStrategy::Custom(key_fn) => {
                out.push_str(&key_fn(ids).ok_or("a key from its `key_fn`")?);
                Ok(())
            }
        }
    }
}

/// A full storage key: `[prefix:][bot_id:]<session name>:<scope key>`.
///
/// The scope part is kept apart so a storage can group keys of one user or
/// chat (a Redis Cluster hash tag, for instance).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StorageKey {
    /// Inline up to 23 bytes (most keys), else shared: a clone never copies
    /// the text to the heap.
    full: SmolStr,
    scope_start: usize,
}

impl StorageKey {
    /// Builds the key of session `name` under an optional prefix and bot id.
    pub fn new(prefix: Option<&str>, bot_id: Option<u64>, name: &str, scope_key: &str) -> Self {
        Self::build(|out| {
            let scope_start = write_namespace(out, prefix, bot_id, name);
            out.push_str(scope_key);
            Ok::<_, std::convert::Infallible>(scope_start)
        })
        .unwrap_or_else(|never| match never {})
    }

    /// A key from its namespace (`[prefix:][bot_id:]name:`, as
    /// [`StorageKey::namespace`] gives it) and its scope key.
    pub fn from_parts(namespace: &str, scope_key: &str) -> Self {
        Self::build(|out| {
            out.push_str(namespace);
            out.push_str(scope_key);
            Ok::<_, std::convert::Infallible>(namespace.len())
        })
        .unwrap_or_else(|never| match never {})
    }

    /// A key written by `write` (which answers where the scope key starts)
    /// in place: inline when it fits (most keys), with no copy.
    fn build<E>(write: impl FnOnce(&mut SmolStrBuilder) -> Result<usize, E>) -> Result<Self, E> {
        let mut out = SmolStrBuilder::new();
        let scope_start = write(&mut out)?;
        Ok(Self {
            full: out.finish(),
            scope_start,
        })
    }

    /// A key from its whole text, as a storage that keeps keys as text
    /// (SQL, memory) gives it back, telling the namespace from the scope
    /// key by the shape of the built-in scopes: the scope key is the last
    /// part and the parts before it that are numbers, `main` or `global`
    /// (`counter:-100:42` is `counter:` and `-100:42`).
    ///
    /// A [`KeyFn`] key with `:` and other text in it cannot be told apart
    /// this way (`counter:a:b` reads as `counter:a:` and `b`); it matters
    /// only to Redis, which keeps the scope key apart: select such keys by
    /// their whole namespace ([`KeyPrefix::scope`](crate::storage::KeyPrefix::scope)).
    pub fn parse(full: &str) -> Self {
        let scope_like = |part: &str| {
            matches!(part, "main" | "global")
                || (!part.is_empty()
                    && part
                        .trim_start_matches('-')
                        .bytes()
                        .all(|b| b.is_ascii_digit()))
        };
        let Some(mut start) = full.rfind(':').map(|colon| colon + 1) else {
            return Self::from_parts("", full);
        };
        // The first part always stays in the namespace (it is the name at least).
        while let Some(colon) = full[..start - 1].rfind(':') {
            if !scope_like(&full[colon + 1..start - 1]) {
                break;
            }
            start = colon + 1;
        }
        Self::from_parts(&full[..start], &full[start..])
    }

    /// Builds the key of session `name` for the update `ids`, or says which id is missing.
    pub(crate) fn for_update(
        prefix: Option<&str>,
        bot_id: Option<u64>,
        name: &str,
        strategy: &KeyStrategy,
        ids: &UpdateIds,
    ) -> Result<Self, &'static str> {
        Self::build(|out| {
            let scope_start = write_namespace(out, prefix, bot_id, name);
            strategy.write_scope_key(ids, out)?;
            Ok(scope_start)
        })
    }

    /// The namespace of session `name`'s keys (`[prefix:]name:`) when no
    /// bot id goes in them: the same for every update, so it is built once.
    pub(crate) fn namespace_of(prefix: Option<&str>, name: &str) -> SmolStr {
        let mut out = SmolStrBuilder::new();
        write_namespace(&mut out, prefix, None, name);
        out.finish()
    }

    /// Builds the key in `namespace` (from [`StorageKey::namespace_of`]) for
    /// the update `ids`, or says which id is missing: as
    /// [`StorageKey::for_update`] does, with the namespace already written.
    #[inline]
    pub(crate) fn in_namespace(
        namespace: &str,
        strategy: &KeyStrategy,
        ids: &UpdateIds,
    ) -> Result<Self, &'static str> {
        // The usual keys, one id after the namespace: joined in one step,
        // with no builder to grow (about a quarter of the key's cost).
        if let Some(id) = Id::of_key(strategy, ids) {
            return Ok(Self::of_id(namespace, id));
        }
        Self::build(|out| {
            out.push_str(namespace);
            strategy.write_scope_key(ids, out)?;
            Ok(namespace.len())
        })
    }

    /// The key in `namespace` (from [`StorageKey::namespace_of`]) whose
    /// scope key is `id`.
    pub(crate) fn of_id(namespace: &str, id: Id) -> Self {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(id.magnitude);
        Self {
            full: match id.negative {
                true => SmolStr::from_iter([namespace, "-", digits]),
                false => SmolStr::from_iter([namespace, digits]),
            },
            scope_start: namespace.len(),
        }
    }

    /// The key whose whole text is `full`, its scope key starting at
    /// `scope_start`: a key kept already, shared.
    pub(crate) fn from_shared(full: SmolStr, scope_start: usize) -> Self {
        Self { full, scope_start }
    }

    /// The whole key, shared: what the in-process lock table keeps.
    pub(crate) fn shared(&self) -> &SmolStr {
        &self.full
    }

    /// The whole key.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The part of the key before the scope key (`prefix:bot:name:`).
    pub fn namespace(&self) -> &str {
        &self.full[..self.scope_start]
    }

    /// The scope key alone (`42`, `-100:42`, …).
    pub fn scope_key(&self) -> &str {
        &self.full[self.scope_start..]
    }
}

/// Writes `[prefix:][bot_id:]name:` and answers its length.
fn write_namespace(
    out: &mut SmolStrBuilder,
    prefix: Option<&str>,
    bot_id: Option<u64>,
    name: &str,
) -> usize {
    if let Some(prefix) = prefix {
        out.push_str(prefix);
        out.push(':');
    }
    if let Some(bot_id) = bot_id {
        push_int(out, bot_id);
        out.push(':');
    }
    out.push_str(name);
    out.push(':');
    out.len()
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl AsRef<str> for StorageKey {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_keeps_scope_apart() {
        let key = StorageKey::new(Some("app"), Some(7), "counter", "-1:42");
        assert_eq!(key.as_str(), "app:7:counter:-1:42");
        assert_eq!(key.namespace(), "app:7:counter:");
        assert_eq!(key.scope_key(), "-1:42");
        assert_eq!(StorageKey::new(None, None, "c", "1").as_str(), "c:1");
    }

    #[test]
    fn whole_keys_split_by_the_scope_shapes() {
        for (full, namespace) in [
            ("counter:42", "counter:"),
            ("app:7:counter:-100:42", "app:7:counter:"),
            ("topic:-100:main", "topic:"),
            ("stats:global", "stats:"),
            ("custom:abc", "custom:"),
            ("1:2", "1:"),
            ("bare", ""),
        ] {
            let key = StorageKey::parse(full);
            assert_eq!((key.as_str(), key.namespace()), (full, namespace));
        }
        let built = StorageKey::new(Some("p"), Some(9), "c", "-1:2");
        assert_eq!(StorageKey::parse(built.as_str()), built);
    }

    #[test]
    fn keys_from_a_namespace_match_keys_built_whole() {
        let ids = UpdateIds::new()
            .user(u64::MAX)
            .chat(-1_001_234_567_890)
            .thread(7);
        for prefix in [None, Some("a_prefix_long_enough_to_leave_inline_keys")] {
            for scope in Scope::ALL {
                let strategy = KeyStrategy::Scope(scope);
                let namespace = StorageKey::namespace_of(prefix, "counter");
                let whole = StorageKey::for_update(prefix, None, "counter", &strategy, &ids);
                let joined = StorageKey::in_namespace(&namespace, &strategy, &ids);
                assert_eq!(joined, whole, "{scope} under {prefix:?}");
            }
        }
        let no_sender = UpdateIds::new().chat(5);
        let namespace = StorageKey::namespace_of(None, "counter");
        let user = KeyStrategy::Scope(Scope::User);
        assert_eq!(
            StorageKey::in_namespace(&namespace, &user, &no_sender),
            Err("the sender's user id")
        );
    }

    #[test]
    fn scopes_name_what_is_missing() {
        let channel_post = UpdateIds::new().chat(-100);
        assert_eq!(
            Scope::User.scope_key(&channel_post),
            Err("the sender's user id")
        );
        assert_eq!(
            Scope::ChatThread.scope_key(&channel_post).as_deref(),
            Ok("-100:main")
        );
        assert_eq!(
            Scope::Global.scope_key(&UpdateIds::new()).as_deref(),
            Ok("global")
        );
    }
}
