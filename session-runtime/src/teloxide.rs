//! teloxide glue: a dptree handler that gives every update its [`Sessions`].
//!
//! Put [`enter_sessions`] (or the [`SessionsHandlerExt::enter_sessions`]
//! method) in the handler tree; the handlers below it take `Sessions` as a
//! dependency and call the generated accessors on it:
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use teloxide::prelude::*;
//! use tg_session::teloxide::SessionsHandlerExt;
//! use tg_session::{Session, SessionManager, Sessions};
//!
//! #[derive(Session, Serialize, Deserialize)]
//! #[session(key = "counter")]
//! struct Counter {
//!     #[session(default = 1)]
//!     apple: u32,
//! }
//!
//! type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
//!
//! async fn on_message(bot: Bot, msg: Message, ctx: Sessions) -> HandlerResult {
//!     let apples = {
//!         let mut counter = ctx.counter()?;
//!         counter.apple += 1;
//!         counter.apple
//!     };
//!     bot.send_message(msg.chat.id, format!("apples: {apples}")).await?;
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), tg_session::Error> {
//! let manager = SessionManager::builder().register::<Counter>().build()?;
//! let handler = Update::filter_message()
//!     .enter_sessions(manager)
//!     .endpoint(on_message);
//! Dispatcher::builder(Bot::from_env(), handler).build().dispatch().await;
//! # Ok(()) }
//! ```
//!
//! # What happens per update
//!
//! 1. The ids are taken from the [`Update`] (sender, chat, forum topic,
//!    business connection) and from [`Me`] (the bot's id; the dispatcher puts
//!    `Me` in the dependencies). See [`update_ids`].
//! 2. [`SessionManager::begin`] locks and loads the eager sessions (lazy ones
//!    cost nothing until a handler awaits them).
//! 3. The rest of the tree runs with `Sessions` in its dependencies.
//! 4. If the tree handled the update, the sessions are committed: after `Ok`
//!    as [`HandlerOutcome::Succeeded`], after `Err` as
//!    [`HandlerOutcome::Failed`] (nothing saved unless
//!    [`SavePolicy::Always`](crate::SavePolicy::Always)). If no handler below
//!    took the update, nothing is written and the keys are released.
//!
//! # Where commit errors go
//!
//! A failed commit (storage down, [`Error::Conflict`] with another process)
//! is always logged with `tracing` at `error` level. With [`enter_sessions`]
//! the tree's error type `E` must implement `From<tg_session::Error>` (true of
//! `Box<dyn Error + Send + Sync>` and `anyhow::Error`; add a `#[from]` variant
//! to your own enum), and the commit error becomes the tree's result when the
//! handler itself returned `Ok`, so the dispatcher's error handler sees it. When
//! the handler failed, its own error wins. For an error type that cannot hold
//! it, [`enter_sessions_log_only`] only logs.
//!
//! # Placement
//!
//! The layer is built on `DpHandlerDescription::entry()`: it adds no update
//! kind of its own, so the `allowed_updates` the dispatcher asks Telegram for
//! stay exactly those of your tree. At the root of the tree, eager sessions are
//! loaded for every update the bot receives; chained after filters (e.g. after
//! `filter_command`), only for the updates those filters let through.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::ops::ControlFlow;
use std::panic::Location;

use ::teloxide::dispatching::DpHandlerDescription;
use ::teloxide::dptree::{self, Handler, HandlerDescription, HandlerSignature, Type};
use ::teloxide::types::{Me, Message, MessageKind, Update, UpdateKind};

use crate::context::{HandlerOutcome, Sessions};
use crate::error::Error;
use crate::key::UpdateIds;
use crate::manager::SessionManager;

/// The ids of a teloxide update that session keys are built from.
///
/// - user: the sender ([`Update::from`]); none for channel posts, polls, …
/// - chat: [`Update::chat`] (for a callback query, the chat of its message);
///   for the service message that says a group became a supergroup
///   (`migrate_to_chat_id`), the supergroup's id, where its sessions now live
/// - thread: the forum topic of a message sent in one (`is_topic_message`);
///   replies outside forums are not topics and leave it empty
/// - business connection: from business messages and connection updates
/// - bot: `me.user.id`, when `Me` is given
pub fn update_ids(update: &Update, me: Option<&Me>) -> UpdateIds {
    let mut ids = UpdateIds::new();
    if let Some(me) = me {
        ids = ids.bot(me.user.id.0);
    }
    if let Some(user) = update.from() {
        ids = ids.user(user.id.0);
    }
    if let Some(chat) = update.chat() {
        ids = ids.chat(chat.id.0);
    }
    // The old group's last message: its sessions are the supergroup's now.
    if let UpdateKind::Message(message) = &update.kind
        && let Some(to) = message.migrate_to_chat_id()
    {
        ids = ids.chat(to.0);
    }
    let message = match &update.kind {
        UpdateKind::Message(m)
        | UpdateKind::EditedMessage(m)
        | UpdateKind::ChannelPost(m)
        | UpdateKind::EditedChannelPost(m)
        | UpdateKind::BusinessMessage(m)
        | UpdateKind::EditedBusinessMessage(m) => Some(m),
        UpdateKind::CallbackQuery(query) => {
            query.message.as_ref().and_then(|m| m.regular_message())
        }
        _ => None,
    };
    if let Some(thread) = message.and_then(topic_of) {
        ids = ids.thread(thread);
    }
    let business = match &update.kind {
        UpdateKind::BusinessConnection(connection) => Some(&connection.id),
        UpdateKind::DeletedBusinessMessages(deleted) => Some(&deleted.business_connection_id),
        _ => message.and_then(|m| match &m.kind {
            MessageKind::Common(common) => common.business_connection_id.as_ref(),
            _ => None,
        }),
    };
    if let Some(business) = business {
        ids = ids.business_connection(business.0.clone());
    }
    ids
}

fn topic_of(message: &Message) -> Option<i32> {
    match message.is_topic_message {
        true => message.thread_id.map(|thread| thread.0.0),
        false => None,
    }
}

/// A handler that starts the sessions of each update, runs the rest of the
/// tree with [`Sessions`] in its dependencies, and commits them after it.
///
/// A commit failure is logged and, when the handler returned `Ok`, becomes
/// the tree's `Err` through `E: From<Error>` (see the [module docs](self)).
///
/// Needs [`Update`] in the dependencies (the dispatcher provides it) and uses
/// [`Me`] when present, for the bot id.
#[must_use]
#[track_caller]
pub fn enter_sessions<T, E>(
    manager: SessionManager,
) -> Handler<'static, Result<T, E>, DpHandlerDescription>
where
    T: Send + Sync + 'static,
    E: From<Error> + Send + Sync + 'static,
{
    layer(manager, |result, error| match result {
        Ok(_) => Err(E::from(error)),
        failed => failed,
    })
}

/// Like [`enter_sessions`], for an error type that cannot hold [`Error`]: a
/// commit failure is only logged, and the handler's result is kept.
#[must_use]
#[track_caller]
pub fn enter_sessions_log_only<T, E>(
    manager: SessionManager,
) -> Handler<'static, Result<T, E>, DpHandlerDescription>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    layer(manager, |result, _| result)
}

#[track_caller]
fn layer<T, E>(
    manager: SessionManager,
    on_commit_error: fn(Result<T, E>, Error) -> Result<T, E>,
) -> Handler<'static, Result<T, E>, DpHandlerDescription>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    let signature = HandlerSignature::Other {
        obligations: BTreeMap::from([(Type::of::<Update>(), Location::caller())]),
        guaranteed_outcomes: BTreeSet::from([Type::of::<Sessions>()]),
        conditional_outcomes: BTreeSet::new(),
        continues: true,
    };
    dptree::from_fn_with_description(
        DpHandlerDescription::entry(),
        move |deps: dptree::di::DependencyMap, cont| {
            let manager = manager.clone();
            async move {
                let Some(update) = deps.try_get::<Update>() else {
                    tracing::error!(
                        "tg-session: no `Update` in the dependencies; sessions skipped"
                    );
                    return ControlFlow::Continue(deps);
                };
                let ids = update_ids(&update, deps.try_get::<Me>().as_deref());
                if let Some((from, to)) = chat_migration_of(&update) {
                    // Boxed: rare, and its future would make every
                    // update's larger (it is allocated per update).
                    match Box::pin(manager.migrate_chat(ids.bot_id(), from, to)).await {
                        Ok(report) => tracing::debug!(?report, "group became a supergroup"),
                        // The other service message tries again.
                        Err(error) => tracing::error!(
                            from, to, %error,
                            "the group's sessions did not move to its supergroup"
                        ),
                    }
                }
                let sessions = manager.begin(ids).await;
                // The map is moved down, not cloned: handlers that pass an
                // update on return the map they were given.
                let mut below = deps;
                below.insert(sessions.clone());
                let result = match cont(below).await {
                    ControlFlow::Break(result) => result,
                    // No handler took the update: nothing to save; dropping
                    // the context releases its keys.
                    ControlFlow::Continue(mut deps) => {
                        deps.remove::<Sessions>();
                        return ControlFlow::Continue(deps);
                    }
                };
                let outcome = match result {
                    Ok(_) => HandlerOutcome::Succeeded,
                    Err(_) => HandlerOutcome::Failed,
                };
                match sessions.commit(outcome).await {
                    Ok(()) => ControlFlow::Break(result),
                    Err(error) => {
                        log_commit_error(update.id.0, &error);
                        ControlFlow::Break(on_commit_error(result, error))
                    }
                }
            }
        },
        signature,
    )
}

/// `(group, supergroup)` when the update is one of the two service messages
/// of a group becoming a supergroup.
fn chat_migration_of(update: &Update) -> Option<(i64, i64)> {
    let UpdateKind::Message(message) = &update.kind else {
        return None;
    };
    match (message.migrate_to_chat_id(), message.migrate_from_chat_id()) {
        (Some(to), _) => Some((message.chat.id.0, to.0)),
        (_, Some(from)) => Some((from.0, message.chat.id.0)),
        (None, None) => None,
    }
}

fn log_commit_error(update_id: u32, error: &impl Display) {
    tracing::error!(update_id, %error, "sessions of the update were not committed");
}

/// [`enter_sessions`] as a method of teloxide handlers, like teloxide's own
/// `HandlerExt::enter_dialogue`.
pub trait SessionsHandlerExt {
    /// The error type of the handler tree.
    type Error;

    /// Chains [`enter_sessions`]: the handlers after it get [`Sessions`].
    #[must_use]
    fn enter_sessions(self, manager: SessionManager) -> Self
    where
        Self::Error: From<Error>;

    /// Chains [`enter_sessions_log_only`].
    #[must_use]
    fn enter_sessions_log_only(self, manager: SessionManager) -> Self;
}

impl<T, E> SessionsHandlerExt for Handler<'static, Result<T, E>, DpHandlerDescription>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    type Error = E;

    #[track_caller]
    fn enter_sessions(self, manager: SessionManager) -> Self
    where
        E: From<Error>,
    {
        self.chain(enter_sessions(manager))
    }

    #[track_caller]
    fn enter_sessions_log_only(self, manager: SessionManager) -> Self {
        self.chain(enter_sessions_log_only(manager))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn update(json: &str) -> Update {
        // `from_str`, not `from_value`: the latter yields `UpdateKind::Error`.
        serde_json::from_str(json).unwrap()
    }

    const ALICE: &str = r#"{"id": 42, "is_bot": false, "first_name": "Alice"}"#;

    #[test]
    fn a_topic_message_carries_user_chat_and_thread() {
        let upd = update(&format!(
            r#"{{"update_id": 1, "message": {{"message_id": 5, "date": 1, "from": {ALICE},
                "chat": {{"id": -100, "type": "supergroup", "title": "F", "is_forum": true}},
                "message_thread_id": 4, "is_topic_message": true, "text": "x"}}}}"#
        ));
        let ids = update_ids(&upd, None);
        assert_eq!(
            (ids.user_id(), ids.chat_id(), ids.thread_id()),
            (Some(42), Some(-100), Some(4))
        );
        assert_eq!(ids.bot_id(), None);
    }

    #[test]
    fn a_reply_thread_outside_a_forum_is_not_a_topic() {
        let upd = update(&format!(
            r#"{{"update_id": 1, "message": {{"message_id": 5, "date": 1, "from": {ALICE},
                "chat": {{"id": -100, "type": "supergroup", "title": "G"}},
                "message_thread_id": 3, "text": "x"}}}}"#
        ));
        assert_eq!(update_ids(&upd, None).thread_id(), None);
    }

    #[test]
    fn a_channel_post_has_a_chat_and_no_sender() {
        let upd = update(
            r#"{"update_id": 1, "channel_post": {"message_id": 5, "date": 1,
                "chat": {"id": -1009, "type": "channel", "title": "News"}, "text": "x"}}"#,
        );
        let ids = update_ids(&upd, None);
        assert_eq!((ids.user_id(), ids.chat_id()), (None, Some(-1009)));
    }

    #[test]
    fn a_business_message_carries_its_connection_and_me_the_bot_id() {
        let upd = update(&format!(
            r#"{{"update_id": 1, "business_message": {{"message_id": 5, "date": 1, "from": {ALICE},
                "chat": {{"id": 42, "type": "private", "first_name": "Alice"}},
                "business_connection_id": "conn-1", "text": "x"}}}}"#
        ));
        let me: Me = serde_json::from_str(
            r#"{"id": 7, "is_bot": true, "first_name": "B", "username": "b", "can_join_groups": true,
                "can_read_all_group_messages": false, "supports_inline_queries": false,
                "can_connect_to_business": true, "has_main_web_app": false}"#,
        )
        .unwrap();
        let ids = update_ids(&upd, Some(&me));
        assert_eq!(ids.business_connection_id(), Some("conn-1"));
        assert_eq!(
            (ids.bot_id(), ids.user_id(), ids.chat_id()),
            (Some(7), Some(42), Some(42))
        );
    }

    #[test]
    fn both_migration_messages_name_the_chats_and_key_by_the_supergroup() {
        let to = update(&format!(
            r#"{{"update_id": 1, "message": {{"message_id": 5, "date": 1, "from": {ALICE},
                "chat": {{"id": -599, "type": "group", "title": "G"}},
                "migrate_to_chat_id": -1001555296434}}}}"#
        ));
        assert_eq!(chat_migration_of(&to), Some((-599, -1001555296434)));
        assert_eq!(update_ids(&to, None).chat_id(), Some(-1001555296434));
        let from = update(&format!(
            r#"{{"update_id": 2, "message": {{"message_id": 1, "date": 1, "from": {ALICE},
                "chat": {{"id": -1001555296434, "type": "supergroup", "title": "G"}},
                "migrate_from_chat_id": -599}}}}"#
        ));
        assert_eq!(chat_migration_of(&from), Some((-599, -1001555296434)));
        assert_eq!(update_ids(&from, None).chat_id(), Some(-1001555296434));
        let text = update(&format!(
            r#"{{"update_id": 3, "message": {{"message_id": 2, "date": 1, "from": {ALICE},
                "chat": {{"id": -599, "type": "group", "title": "G"}}, "text": "x"}}}}"#
        ));
        assert_eq!(chat_migration_of(&text), None);
    }

    #[test]
    fn a_callback_query_takes_the_chat_and_topic_of_its_message() {
        let upd = update(&format!(
            r#"{{"update_id": 1, "callback_query": {{"id": "q", "from": {ALICE}, "chat_instance": "c",
                "data": "d", "message": {{"message_id": 5, "date": 1,
                "chat": {{"id": -100, "type": "supergroup", "title": "F", "is_forum": true}},
                "message_thread_id": 9, "is_topic_message": true, "text": "x"}}}}}}"#
        ));
        let ids = update_ids(&upd, None);
        assert_eq!(
            (ids.user_id(), ids.chat_id(), ids.thread_id()),
            (Some(42), Some(-100), Some(9))
        );
    }
}
