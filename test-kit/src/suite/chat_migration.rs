//! A group that becomes a supergroup (a new chat id) keeps its sessions,
//! over every storage: chat-scoped records move at once, members' records on
//! first use, once, never over a record the supergroup has, and never losing
//! an update of the group that runs during the move.

use std::future::Future;
use std::task::Poll;

use serde::{Deserialize, Serialize};
use tg_session::storage::SharedStorage;
use tg_session::{Error, HandlerOutcome, Session, SessionManager, StorageKey, UpdateIds};

use super::types::*;
use super::{ok, stored, unique_prefix};

/// Generates one `#[tokio::test]` per chat-migration behaviour over `$factory`.
#[macro_export]
macro_rules! chat_migration_suite {
    ($factory:path) => {
        $crate::chat_migration_suite!(@tests $factory;
            a_groups_sessions_move_to_its_supergroup_once,
            the_second_service_message_moves_nothing,
            a_record_the_supergroup_has_is_never_overwritten,
            an_update_of_the_group_during_the_move_loses_nothing,
            a_followed_type_must_be_registered,
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::suite::chat_migration::$name($factory().await).await;
            }
        )*
    };
}

/// The group's id, and the supergroup's it becomes.
pub const GROUP: i64 = -42;
pub const SUPERGROUP: i64 = -1_000_000_000_042;

/// A `key_fn` of the chat alone.
pub fn by_chat(ids: &UpdateIds) -> Option<String> {
    ids.chat_id().map(|chat| format!("rules-{chat}"))
}

/// Keyed by [`by_chat`], and named to follow its chat.
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "chat_rules", lazy, key_fn = by_chat)]
pub struct ChatRules {
    pub text: String,
}

/// Keyed by [`by_chat`] too, but not named: it stays behind.
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "chat_cache", lazy, key_fn = by_chat)]
pub struct ChatCache {
    pub text: String,
}

/// Eager, per member: moved on first use like the lazy [`Profile`].
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "seat", scope = "user_in_chat")]
pub struct Seat {
    pub row: u32,
}

fn manager(storage: SharedStorage, prefix: &str) -> SessionManager {
    SessionManager::builder()
        .storage(storage)
        .prefix(prefix)
        .register::<ChatTopic>()
        .register::<ThreadNote>()
        .register::<Profile>()
        .register::<Seat>()
        .register::<ChatRules>()
        .register::<ChatCache>()
        .follow_chat_migration::<ChatRules>()
        .build()
        .expect("distinct names, followed types registered")
}

fn in_chat(chat: i64, user: u64) -> UpdateIds {
    UpdateIds::new().chat(chat).user(user)
}

/// What a member of the group writes: the chat's topic, its main thread's
/// note, the rules, the cache, and their own profile and seat.
async fn fill_group(manager: &SessionManager, user: u64, topic: &str) {
    let ctx = manager.begin(in_chat(GROUP, user)).await;
    ctx.chat_topic().expect("topic").topic = topic.to_owned();
    ctx.thread_note().await.expect("note").notes = vec![topic.to_owned()];
    ctx.chat_rules().await.expect("rules").text = format!("rules {topic}");
    ctx.chat_cache().await.expect("cache").text = format!("cache {topic}");
    ctx.profile().await.expect("profile").name = Some(format!("member {user}"));
    ctx.seat().expect("seat").row = user as u32;
    ok(&ctx).await;
}

fn old_and_new(prefix: &str, name: &str, old: &str, new: &str) -> [StorageKey; 2] {
    [
        StorageKey::new(Some(prefix), None, name, old),
        StorageKey::new(Some(prefix), None, name, new),
    ]
}

pub async fn a_groups_sessions_move_to_its_supergroup_once(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager(storage.clone(), &prefix);
    fill_group(&manager, 1, "apples").await;
    fill_group(&manager, 2, "pears").await;
    let topic_bytes = stored(&storage, &prefix, "chat_topic", "-42").await;
    assert!(topic_bytes.is_some());

    let report = manager
        .migrate_chat(None, GROUP, SUPERGROUP)
        .await
        .expect("migrate");
    let mut moved: Vec<&str> = report.moved.iter().map(StorageKey::as_str).collect();
    moved.sort_unstable();
    let expected = [
        format!("{prefix}:chat_rules:rules-{SUPERGROUP}"),
        format!("{prefix}:chat_topic:{SUPERGROUP}"),
        format!("{prefix}:thread_note:{SUPERGROUP}:main"),
    ];
    assert_eq!(moved, expected, "chat, chat_thread and the named key_fn");
    assert!(report.kept.is_empty() && report.recorded);
    assert_eq!(
        stored(&storage, &prefix, "chat_topic", &SUPERGROUP.to_string()).await,
        topic_bytes,
        "the bytes moved unchanged"
    );
    for (name, scope) in [
        ("chat_topic", "-42"),
        ("thread_note", "-42:main"),
        ("chat_rules", "rules--42"),
    ] {
        assert_eq!(
            stored(&storage, &prefix, name, scope).await,
            None,
            "{name} left behind"
        );
    }

    // The supergroup carries on; members' sessions follow on first use.
    for (user, row) in [(1, 1), (2, 2)] {
        let ctx = manager.begin(in_chat(SUPERGROUP, user)).await;
        assert_eq!(ctx.chat_topic().expect("topic").topic, "pears");
        assert_eq!(ctx.thread_note().await.expect("note").notes, ["pears"]);
        assert_eq!(ctx.chat_rules().await.expect("rules").text, "rules pears");
        assert_eq!(
            ctx.chat_cache().await.expect("cache").text,
            "",
            "not named: stays behind"
        );
        assert_eq!(
            ctx.profile().await.expect("profile").name.as_deref(),
            Some(format!("member {user}").as_str())
        );
        assert_eq!(ctx.seat().expect("seat").row, row, "eager member session");
        ok(&ctx).await;
        let [old, new] = old_and_new(
            &prefix,
            "profile",
            &format!("-42:{user}"),
            &format!("{SUPERGROUP}:{user}"),
        );
        let records = storage.load(&[old, new]).await.expect("load");
        assert!(
            records[0].is_none() && records[1].is_some(),
            "moved once: {records:?}"
        );
    }
    // A member's session moves once: a later update reads it in place.
    let ctx = manager.begin(in_chat(SUPERGROUP, 1)).await;
    ctx.profile().await.expect("profile").name = Some("renamed".to_owned());
    ok(&ctx).await;
    let ctx = manager.begin(in_chat(SUPERGROUP, 1)).await;
    assert_eq!(
        ctx.profile().await.expect("profile").name.as_deref(),
        Some("renamed")
    );
    ok(&ctx).await;
    // A member who never wrote in the group starts fresh.
    let ctx = manager.begin(in_chat(SUPERGROUP, 3)).await;
    assert_eq!(ctx.profile().await.expect("profile").name, None);
    ok(&ctx).await;

    // The key_fn type left behind is still under the group's id.
    assert!(
        stored(&storage, &prefix, "chat_cache", "rules--42")
            .await
            .is_some()
    );
}

pub async fn the_second_service_message_moves_nothing(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager(storage.clone(), &prefix);
    fill_group(&manager, 1, "apples").await;
    fill_group(&manager, 2, "apples").await;
    let first = manager
        .migrate_chat(None, GROUP, SUPERGROUP)
        .await
        .expect("first");
    assert_eq!(first.moved.len(), 3);
    // The supergroup moves on before the second message arrives.
    let ctx = manager.begin(in_chat(SUPERGROUP, 1)).await;
    ctx.chat_topic().expect("topic").topic = "plums".to_owned();
    ok(&ctx).await;

    let second = manager
        .migrate_chat(None, GROUP, SUPERGROUP)
        .await
        .expect("second");
    assert!(
        second.moved.is_empty() && second.kept.is_empty() && !second.recorded,
        "{second:?}"
    );
    let ctx = manager.begin(in_chat(SUPERGROUP, 1)).await;
    assert_eq!(ctx.chat_topic().expect("topic").topic, "plums");
    assert_eq!(
        ctx.profile().await.expect("profile").name.as_deref(),
        Some("member 1"),
        "members still follow after the second message"
    );
    ok(&ctx).await;

    // Another process (a fresh manager, nothing cached) finds the move in
    // the storage: member 2's session follows there.
    let other = self::manager(storage.clone(), &prefix);
    let ctx = other.begin(in_chat(SUPERGROUP, 2)).await;
    assert_eq!(ctx.chat_topic().expect("topic").topic, "plums");
    assert_eq!(
        ctx.profile().await.expect("profile").name.as_deref(),
        Some("member 2")
    );
    ok(&ctx).await;
    assert_eq!(stored(&storage, &prefix, "profile", "-42:2").await, None);
}

pub async fn a_record_the_supergroup_has_is_never_overwritten(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager(storage.clone(), &prefix);
    fill_group(&manager, 1, "old").await;
    // Updates of the supergroup came first (another process had not moved
    // anything yet).
    let ctx = manager.begin(in_chat(SUPERGROUP, 1)).await;
    ctx.chat_topic().expect("topic").topic = "new".to_owned();
    ok(&ctx).await;
    let old_topic = stored(&storage, &prefix, "chat_topic", "-42").await;

    let report = manager
        .migrate_chat(None, GROUP, SUPERGROUP)
        .await
        .expect("migrate");
    let kept: Vec<&str> = report.kept.iter().map(StorageKey::as_str).collect();
    assert_eq!(kept, [format!("{prefix}:chat_topic:-42")]);
    assert_eq!(report.moved.len(), 2, "the others moved: {report:?}");
    assert_eq!(
        stored(&storage, &prefix, "chat_topic", "-42").await,
        old_topic,
        "kept in place"
    );
    let ctx = manager.begin(in_chat(SUPERGROUP, 1)).await;
    assert_eq!(ctx.chat_topic().expect("topic").topic, "new");
    ok(&ctx).await;
    // Asked again, the same record is still kept, still not overwritten.
    let again = manager
        .migrate_chat(None, GROUP, SUPERGROUP)
        .await
        .expect("again");
    assert_eq!(again.kept, report.kept);
}

pub async fn an_update_of_the_group_during_the_move_loses_nothing(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager(storage.clone(), &prefix);
    fill_group(&manager, 1, "one").await;
    // An update of the group holds its keys, mid-handler.
    let running = manager.begin(in_chat(GROUP, 2)).await;
    running.chat_topic().expect("topic").topic = "two".to_owned();

    let mut migration = std::pin::pin!(manager.migrate_chat(None, GROUP, SUPERGROUP));
    let first_poll = std::future::poll_fn(|cx| Poll::Ready(migration.as_mut().poll(cx))).await;
    assert!(
        first_poll.is_pending(),
        "the move waits for the running update"
    );
    running
        .commit(HandlerOutcome::Succeeded)
        .await
        .expect("the group's update commits");
    let report = migration.await.expect("migrate");
    assert!(report.kept.is_empty());

    let ctx = manager.begin(in_chat(SUPERGROUP, 2)).await;
    assert_eq!(
        ctx.chat_topic().expect("topic").topic,
        "two",
        "the update's write moved"
    );
    ok(&ctx).await;
    assert_eq!(stored(&storage, &prefix, "chat_topic", "-42").await, None);
}

/// `follow_chat_migration` names a type the manager must know.
pub async fn a_followed_type_must_be_registered(storage: SharedStorage) {
    let error = SessionManager::builder()
        .storage(storage)
        .follow_chat_migration::<ChatRules>()
        .build()
        .expect_err("not registered");
    assert!(
        matches!(
            error,
            Error::NotRegistered {
                session: "chat_rules",
                ..
            }
        ),
        "{error}"
    );
}
