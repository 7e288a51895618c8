//! The behaviour suite: every rule of SPEC §3 that depends on the storage,
//! written once and run over every storage by [`behaviour_suite!`](crate::behaviour_suite).
//!
//! Each test builds its managers with a unique key prefix, so a factory may
//! hand out one shared server or database to all of them.

pub mod chat_migration;
pub mod counting;
pub mod data;
pub mod migrations;
pub mod types;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tg_session::storage::SharedStorage;
use tg_session::storage::{Conflict, Write, WriteOutcome};
use tg_session::{
    Error, HandlerOutcome, SavePolicy, Session, SessionManager, StorageKey, UpdateIds,
};

use self::counting::CountingStorage;
use self::types::*;

/// Generates one `#[tokio::test]` per behaviour, each running it over a
/// storage from `$factory` (an `async fn() -> SharedStorage`).
#[macro_export]
macro_rules! behaviour_suite {
    ($factory:path) => {
        $crate::behaviour_suite!(@tests $factory;
            eager_session_counts_across_updates,
            read_only_update_writes_nothing,
            untouched_initial_value_is_never_written,
            failed_handler_saves_nothing_unless_policy_says_always,
            lazy_session_loads_once_and_only_when_used,
            clear_deletes_at_once_and_a_later_change_is_saved,
            scopes_key_sessions_by_their_ids,
            key_fn_makes_the_key_or_reports_it_missing,
            missing_sender_fails_only_that_session,
            enum_state_machine_round_trips,
            ttl_expires_records,
            undecodable_bytes_are_an_error_and_stay_in_place,
            reset_policy_starts_over_from_undecodable_bytes,
            concurrent_updates_of_one_user_lose_nothing,
            another_writer_in_between_is_a_conflict,
            save_writes_now_and_commit_does_not_repeat_it,
            prefix_and_bot_id_keep_sessions_apart,
            eager_sessions_load_and_commit_in_one_batch,
            versions_never_repeat_after_a_delete,
            a_record_expired_under_an_update_is_reported_as_expired,
            cancelled_updates_leave_the_storage_working,
            a_handler_longer_than_its_lease_keeps_it,
            a_commit_gives_the_keys_back_while_its_context_lives_on,
        );
        $crate::migration_suite!($factory);
        $crate::chat_migration_suite!($factory);
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::suite::$name($factory().await).await;
            }
        )*
    };
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t{}-{}-{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A manager over `storage` with a fresh prefix and the suite's eager types.
pub fn manager(storage: SharedStorage) -> SessionManager {
    manager_with(storage, &unique_prefix(), SavePolicy::OnSuccess)
}

pub fn manager_with(storage: SharedStorage, prefix: &str, policy: SavePolicy) -> SessionManager {
    SessionManager::builder()
        .storage(storage)
        .prefix(prefix)
        .save_policy(policy)
        .register::<Counter>()
        .register::<ChatTopic>()
        .register::<Dialog>()
        .register::<Profile>()
        .build()
        .expect("the suite's session types have distinct names")
}

/// A private message of `user` (its chat id is the user id).
pub fn private(user: u64) -> UpdateIds {
    UpdateIds::new().user(user).chat(user as i64)
}

async fn ok(ctx: &tg_session::Sessions) {
    ctx.commit(HandlerOutcome::Succeeded).await.expect("commit");
}

/// Raw record of session `name` under `prefix`, straight from the storage.
async fn stored(storage: &SharedStorage, prefix: &str, name: &str, scope: &str) -> Option<Bytes> {
    let key = StorageKey::new(Some(prefix), None, name, scope);
    storage.load(&[key]).await.expect("load")[0]
        .as_ref()
        .map(|record| record.value.clone())
}

async fn counter_of(manager: &SessionManager, ids: UpdateIds) -> u32 {
    let ctx = manager.begin(ids).await;
    let apple = ctx.counter().expect("counter").apple;
    ok(&ctx).await;
    apple
}

async fn increment(manager: &SessionManager, ids: UpdateIds) -> Result<u32, Error> {
    let ctx = manager.begin(ids).await;
    let apple = {
        let mut counter = ctx.counter()?;
        counter.apple += 1;
        counter.apple
    };
    ctx.commit(HandlerOutcome::Succeeded).await?;
    Ok(apple)
}

pub async fn eager_session_counts_across_updates(storage: SharedStorage) {
    let manager = manager(storage);
    assert_eq!(
        counter_of(&manager, private(1)).await,
        1,
        "initial value from the field default"
    );
    for expected in 2..=4 {
        assert_eq!(
            increment(&manager, private(1)).await.expect("update"),
            expected
        );
    }
    assert_eq!(
        counter_of(&manager, private(2)).await,
        1,
        "another user has their own counter"
    );
    assert_eq!(counter_of(&manager, private(1)).await, 4);
}

pub async fn read_only_update_writes_nothing(storage: SharedStorage) {
    let counting = CountingStorage::new(storage);
    let manager = manager(counting.clone());
    increment(&manager, private(1)).await.expect("update");
    counting.reset();
    assert_eq!(counter_of(&manager, private(1)).await, 2);
    assert_eq!(counting.calls(), (1, 0), "one batched load, no write");
}

pub async fn untouched_initial_value_is_never_written(storage: SharedStorage) {
    let counting = CountingStorage::new(storage.clone());
    let prefix = unique_prefix();
    let manager = manager_with(counting.clone(), &prefix, SavePolicy::OnSuccess);
    let ctx = manager.begin(private(1)).await;
    {
        // A mutable borrow that leaves the value as it was.
        let mut counter = ctx.counter().expect("counter");
        counter.apple += 0;
        let mut dialog = ctx.dialog().expect("dialog");
        *dialog = Dialog::Start;
    }
    ok(&ctx).await;
    assert_eq!(counting.calls().1, 0, "nothing written");
    assert_eq!(stored(&storage, &prefix, "counter", "1").await, None);
}

pub async fn failed_handler_saves_nothing_unless_policy_says_always(storage: SharedStorage) {
    for (policy, saved) in [(SavePolicy::OnSuccess, false), (SavePolicy::Always, true)] {
        let prefix = unique_prefix();
        let manager = manager_with(storage.clone(), &prefix, policy);
        let ctx = manager.begin(private(1)).await;
        ctx.counter().expect("counter").apple = 10;
        ctx.commit(HandlerOutcome::Failed).await.expect("commit");
        let expected = if saved { 10 } else { 1 };
        assert_eq!(
            counter_of(&manager, private(1)).await,
            expected,
            "{policy:?}"
        );
    }
}

pub async fn lazy_session_loads_once_and_only_when_used(storage: SharedStorage) {
    let counting = CountingStorage::new(storage);
    let manager = SessionManager::builder()
        .storage(counting.clone())
        .prefix(unique_prefix())
        .build()
        .expect("manager");
    let ctx = manager.begin(private(1)).await;
    ok(&ctx).await;
    assert_eq!(
        counting.calls(),
        (0, 0),
        "an untouched lazy session costs nothing"
    );

    let ctx = manager.begin(private(1)).await;
    ctx.profile().await.expect("profile").name = Some("Ann".into());
    assert_eq!(
        ctx.profile().await.expect("profile again").name.as_deref(),
        Some("Ann")
    );
    ok(&ctx).await;
    assert_eq!(counting.calls(), (1, 1), "loaded once, written once");

    let ctx = manager.begin(private(1)).await;
    assert_eq!(
        ctx.profile().await.expect("profile").name.as_deref(),
        Some("Ann")
    );
    ok(&ctx).await;
}

pub async fn clear_deletes_at_once_and_a_later_change_is_saved(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager_with(storage.clone(), &prefix, SavePolicy::OnSuccess);
    increment(&manager, private(1)).await.expect("update");
    assert!(stored(&storage, &prefix, "counter", "1").await.is_some());

    let ctx = manager.begin(private(1)).await;
    let mut counter = ctx.counter().expect("counter");
    counter.clear().await.expect("clear");
    assert_eq!(
        stored(&storage, &prefix, "counter", "1").await,
        None,
        "deleted at once"
    );
    assert_eq!(counter.apple, 1, "back to the initial value");
    counter.apple = 7;
    drop(counter);
    ok(&ctx).await;
    assert_eq!(counter_of(&manager, private(1)).await, 7);

    // Cleared and left alone: the next update starts from the initial value.
    let ctx = manager.begin(private(1)).await;
    ctx.counter()
        .expect("counter")
        .clear()
        .await
        .expect("clear");
    ok(&ctx).await;
    assert_eq!(counter_of(&manager, private(1)).await, 1);
    assert_eq!(stored(&storage, &prefix, "counter", "1").await, None);
}

pub async fn scopes_key_sessions_by_their_ids(storage: SharedStorage) {
    let manager = manager(storage);
    let (ann, bob, group) = (1, 2, -100);
    let in_group = |user| UpdateIds::new().user(user).chat(group);
    let in_topic = |user, topic| in_group(user).thread(topic);

    // user: shared by the sender across chats.
    increment(&manager, in_group(ann)).await.expect("update");
    assert_eq!(counter_of(&manager, private(ann)).await, 2);

    // chat: shared by the chat's members.
    let ctx = manager.begin(in_group(ann)).await;
    ctx.chat_topic().expect("chat_topic").topic = "rust".into();
    ok(&ctx).await;
    let ctx = manager.begin(in_group(bob)).await;
    assert_eq!(ctx.chat_topic().expect("chat_topic").topic, "rust");
    assert_eq!(
        ctx.chat_topic()
            .expect("chat_topic")
            .key()
            .rsplit(':')
            .next(),
        Some("-100")
    );
    ok(&ctx).await;

    // user_in_chat: one per sender in each chat.
    let ctx = manager.begin(in_group(ann)).await;
    ctx.profile().await.expect("profile").name = Some("Ann in group".into());
    ok(&ctx).await;
    for (ids, expected) in [
        (in_group(ann), Some("Ann in group")),
        (private(ann), None),
        (in_group(bob), None),
    ] {
        let ctx = manager.begin(ids).await;
        assert_eq!(
            ctx.profile().await.expect("profile").name.as_deref(),
            expected
        );
        ok(&ctx).await;
    }

    // chat_thread: one per forum topic, plus the chat's main thread.
    let ctx = manager.begin(in_topic(ann, 7)).await;
    ctx.thread_note()
        .await
        .expect("thread_note")
        .notes
        .push("seven".into());
    ok(&ctx).await;
    for (ids, expected) in [
        (in_topic(bob, 7), 1),
        (in_topic(ann, 8), 0),
        (in_group(ann), 0),
    ] {
        let ctx = manager.begin(ids).await;
        assert_eq!(
            ctx.thread_note().await.expect("thread_note").notes.len(),
            expected
        );
        ok(&ctx).await;
    }

    // global: one for every update, even one with no ids at all.
    for ids in [private(ann), in_group(bob), UpdateIds::new()] {
        let ctx = manager.begin(ids).await;
        ctx.stats().await.expect("stats").updates += 1;
        ok(&ctx).await;
    }
    let ctx = manager.begin(UpdateIds::new()).await;
    assert_eq!(ctx.stats().await.expect("stats").updates, 3);
    ok(&ctx).await;
}

pub async fn key_fn_makes_the_key_or_reports_it_missing(storage: SharedStorage) {
    let manager = manager(storage);
    let business = || private(1).business_connection("conn-1");
    let ctx = manager.begin(business()).await;
    let mut session = ctx.business().await.expect("business");
    assert!(
        session.key().ends_with(":business:biz-conn-1"),
        "{}",
        session.key()
    );
    session.greeted = true;
    drop(session);
    ok(&ctx).await;

    let ctx = manager
        .begin(UpdateIds::new().user(2).business_connection("conn-1"))
        .await;
    assert!(
        ctx.business()
            .await
            .expect("same connection, same session")
            .greeted
    );
    ok(&ctx).await;

    let ctx = manager.begin(private(1)).await;
    match ctx.business().await {
        Err(Error::MissingId {
            session: "business",
            ..
        }) => {}
        other => panic!("expected MissingId, got {:?}", other.map(|s| s.greeted)),
    }
    ok(&ctx).await;
}

pub async fn missing_sender_fails_only_that_session(storage: SharedStorage) {
    let manager = manager(storage);
    let channel_post = UpdateIds::new().chat(-1001);
    let ctx = manager.begin(channel_post.clone()).await;
    let error = ctx
        .counter()
        .map(|c| c.apple)
        .expect_err("a channel post has no sender");
    assert!(
        matches!(
            error,
            Error::MissingId {
                session: "counter",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("sender"), "{error}");
    assert!(matches!(
        ctx.profile().await.map(|p| p.name.clone()),
        Err(Error::MissingId { .. })
    ));
    ctx.chat_topic()
        .expect("the chat session still works")
        .topic = "news".into();
    ok(&ctx).await;
    let ctx = manager.begin(channel_post).await;
    assert_eq!(ctx.chat_topic().expect("chat_topic").topic, "news");
    ok(&ctx).await;
}

pub async fn enum_state_machine_round_trips(storage: SharedStorage) {
    let manager = manager(storage);
    let steps = [Dialog::AskedName, Dialog::Named("Ann".into())];
    for step in steps.clone() {
        let ctx = manager.begin(private(1)).await;
        *ctx.dialog().expect("dialog") = step;
        ok(&ctx).await;
    }
    let ctx = manager.begin(private(1)).await;
    assert_eq!(*ctx.dialog().expect("dialog"), steps[1]);
    ok(&ctx).await;
    let ctx = manager.begin(private(2)).await;
    assert_eq!(*ctx.dialog().expect("dialog"), Dialog::Start);
    ok(&ctx).await;
}

pub async fn ttl_expires_records(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager_with(storage.clone(), &prefix, SavePolicy::OnSuccess);
    let ctx = manager.begin(private(1)).await;
    ctx.load::<ShortLived>().await.expect("short_lived").token = 42;
    ok(&ctx).await;
    let written = Instant::now();
    let ctx = manager.begin(private(1)).await;
    let token = ctx.load::<ShortLived>().await.expect("short_lived").token;
    ok(&ctx).await;
    if written.elapsed() < ShortLived::TTL.unwrap_or_default() {
        assert_eq!(token, 42, "alive before its TTL");
    }
    // Expiry is the storage's clock: poll it, within a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if stored(&storage, &prefix, "short_lived", "1")
            .await
            .is_none()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the record outlived its TTL by 9 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ctx = manager.begin(private(1)).await;
    assert_eq!(
        ctx.load::<ShortLived>().await.expect("short_lived").token,
        0,
        "expired"
    );
    ok(&ctx).await;
}

async fn put_garbage(storage: &SharedStorage, prefix: &str) -> Bytes {
    let garbage = Bytes::from_static(b"\xff not what Counter encodes to");
    let key = StorageKey::new(Some(prefix), None, "counter", "1");
    let put = Write::Put {
        key,
        value: garbage.clone(),
        expected_version: None,
        ttl: None,
    };
    let outcome = storage.write(&[put]).await.expect("write");
    assert!(
        matches!(outcome[..], [WriteOutcome::Written { .. }]),
        "{outcome:?}"
    );
    garbage
}

pub async fn undecodable_bytes_are_an_error_and_stay_in_place(storage: SharedStorage) {
    let prefix = unique_prefix();
    let garbage = put_garbage(&storage, &prefix).await;
    let manager = manager_with(storage.clone(), &prefix, SavePolicy::Always);
    let ctx = manager.begin(private(1)).await;
    let error = ctx
        .counter()
        .map(|c| c.apple)
        .expect_err("garbage does not decode");
    assert!(
        matches!(
            error,
            Error::Decode {
                session: "counter",
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("counter") && message.contains("left in place"),
        "{message}"
    );
    ok(&ctx).await;
    assert_eq!(
        stored(&storage, &prefix, "counter", "1").await,
        Some(garbage)
    );
}

pub async fn reset_policy_starts_over_from_undecodable_bytes(storage: SharedStorage) {
    let prefix = unique_prefix();
    let garbage = put_garbage(&storage, &prefix).await;
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .prefix(&prefix)
        .build()
        .expect("manager");
    let ctx = manager.begin(private(1)).await;
    assert_eq!(
        ctx.load::<types::lenient::LenientCounter>()
            .await
            .expect("reset")
            .apple,
        1
    );
    ok(&ctx).await;
    assert_eq!(
        stored(&storage, &prefix, "counter", "1").await,
        Some(garbage),
        "untouched: kept"
    );

    let ctx = manager.begin(private(1)).await;
    ctx.load::<types::lenient::LenientCounter>()
        .await
        .expect("reset")
        .apple = 5;
    ok(&ctx).await;
    let ctx = manager.begin(private(1)).await;
    assert_eq!(
        ctx.load::<types::lenient::LenientCounter>()
            .await
            .expect("decodes now")
            .apple,
        5
    );
    ok(&ctx).await;
}

pub async fn concurrent_updates_of_one_user_lose_nothing(storage: SharedStorage) {
    const UPDATES: u32 = 1_000;
    let manager = manager(storage);
    let tasks: Vec<_> = (0..UPDATES)
        .map(|i| {
            let manager = manager.clone();
            // One user writing in many chats at once: teloxide runs these concurrently.
            let ids = UpdateIds::new().user(1).chat(i64::from(i));
            tokio::spawn(async move {
                let ctx = manager.begin(ids).await;
                ctx.counter().expect("counter").apple += 1;
                // The reply's network round trip, between load and save.
                tokio::task::yield_now().await;
                ctx.commit(HandlerOutcome::Succeeded).await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("commit");
    }
    assert_eq!(counter_of(&manager, private(1)).await, 1 + UPDATES);
}

pub async fn another_writer_in_between_is_a_conflict(storage: SharedStorage) {
    if storage.leases().is_some() {
        // A storage with leases makes the other writer wait instead.
        return another_manager_waits(storage).await;
    }
    if (&*storage as &dyn std::any::Any).is::<tg_session::MemoryStorage>() {
        // Managers sharing a memory storage lock its keys in it: the other
        // manager's update waits too. A writer that is no update still
        // meets the version check.
        another_manager_waits(storage.clone()).await;
        return a_raw_write_in_between_is_a_conflict(storage).await;
    }
    // Two managers are two bot processes: they do not share in-process locks.
    let prefix = unique_prefix();
    let first = manager_with(storage.clone(), &prefix, SavePolicy::OnSuccess);
    let second = manager_with(storage.clone(), &prefix, SavePolicy::OnSuccess);
    increment(&first, private(1)).await.expect("update");

    let slow = first.begin(private(1)).await;
    slow.counter().expect("counter").apple += 10;
    assert_eq!(
        increment(&second, private(1)).await.expect("fast update"),
        3
    );
    let error = slow
        .commit(HandlerOutcome::Succeeded)
        .await
        .expect_err("stale version");
    assert_counter_conflict(&error);
    assert_eq!(
        counter_of(&first, private(1)).await,
        3,
        "the other writer's data is intact"
    );
}

/// `error` refuses the counter's write: another writer came in between.
fn assert_counter_conflict(error: &Error) {
    assert!(
        matches!(
            error,
            Error::Conflict {
                session: "counter",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("newer version"), "{error}");
}

/// A write that no update made (an operator's tool, say) between an
/// update's load and its commit: the commit is refused, the write kept.
async fn a_raw_write_in_between_is_a_conflict(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager_with(storage.clone(), &prefix, SavePolicy::OnSuccess);
    assert_eq!(increment(&manager, private(1)).await.expect("update"), 2);

    let slow = manager.begin(private(1)).await;
    slow.counter().expect("counter").apple += 10;
    let key = StorageKey::new(Some(&prefix), None, "counter", "1");
    let record = storage
        .load(std::slice::from_ref(&key))
        .await
        .expect("load")[0]
        .clone()
        .expect("the counter is stored");
    let rewrite = Write::Put {
        key,
        value: record.value,
        expected_version: Some(record.version),
        ttl: None,
    };
    assert!(matches!(
        storage.write(&[rewrite]).await.expect("write")[..],
        [WriteOutcome::Written { .. }]
    ));
    let error = slow
        .commit(HandlerOutcome::Succeeded)
        .await
        .expect_err("stale version");
    assert_counter_conflict(&error);
    assert_eq!(
        counter_of(&manager, private(1)).await,
        2,
        "the write is kept"
    );
}

/// Over a storage with leases, an update of another process (another
/// manager: no shared in-process lock) waits for the lease of the slow one
/// and then works on its committed value: nothing is refused, nothing lost.
/// Over a memory storage, another manager's update waits for the key the
/// same way.
async fn another_manager_waits(storage: SharedStorage) {
    let prefix = unique_prefix();
    let first = manager_with(storage.clone(), &prefix, SavePolicy::OnSuccess);
    let second = manager_with(storage.clone(), &prefix, SavePolicy::OnSuccess);
    increment(&first, private(1)).await.expect("update");

    let slow = first.begin(private(1)).await;
    slow.counter().expect("counter").apple += 10;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let fast = tokio::spawn(async move {
        let _ = started_tx.send(());
        increment(&second, private(1)).await
    });
    started_rx.await.expect("the other update started");
    assert!(!fast.is_finished(), "the other update waits for the lease");
    slow.commit(HandlerOutcome::Succeeded)
        .await
        .expect("the lease holder commits");
    assert_eq!(
        fast.await.expect("task").expect("the waiting update"),
        13,
        "the waiter loaded the holder's committed value"
    );
    assert_eq!(counter_of(&first, private(1)).await, 13);
}

pub async fn save_writes_now_and_commit_does_not_repeat_it(storage: SharedStorage) {
    let counting = CountingStorage::new(storage.clone());
    let prefix = unique_prefix();
    let manager = manager_with(counting.clone(), &prefix, SavePolicy::OnSuccess);
    let ctx = manager.begin(private(1)).await;
    let mut counter = ctx.counter().expect("counter");
    counter.apple = 20;
    counter.save().await.expect("save");
    let first = counter.version().expect("saved");
    let expected = serde_json::to_vec(&Counter { apple: 20 }).expect("json");
    assert_eq!(
        stored(&storage, &prefix, "counter", "1").await.as_deref(),
        Some(&expected[..])
    );
    counter.apple = 21;
    counter.save().await.expect("save again");
    assert_eq!(counter.version(), Some(first + 1));
    drop(counter);
    ok(&ctx).await;
    assert_eq!(
        counting.calls().1,
        2,
        "two saves, nothing left for the commit"
    );
    assert_eq!(counter_of(&manager, private(1)).await, 21);
}

pub async fn prefix_and_bot_id_keep_sessions_apart(storage: SharedStorage) {
    let prefix = unique_prefix();
    // Two bots sharing a storage and a prefix, told apart by the bot id in keys.
    let bots = SessionManager::builder()
        .storage(storage.clone())
        .prefix(&prefix)
        .bot_id_in_keys(true)
        .register::<Counter>()
        .build()
        .expect("manager");
    increment(&bots, private(5).bot(1)).await.expect("update");
    assert_eq!(counter_of(&bots, private(5).bot(1)).await, 2);
    assert_eq!(
        counter_of(&bots, private(5).bot(2)).await,
        1,
        "another bot id"
    );
    let other_prefix = manager(storage.clone());
    assert_eq!(
        counter_of(&other_prefix, private(5)).await,
        1,
        "another prefix"
    );

    let ctx = bots.begin(private(5)).await;
    let error = ctx
        .counter()
        .map(|c| c.apple)
        .expect_err("no bot id in the update");
    assert!(matches!(error, Error::MissingId { .. }), "{error:?}");
    ok(&ctx).await;
}

pub async fn eager_sessions_load_and_commit_in_one_batch(storage: SharedStorage) {
    let counting = CountingStorage::new(storage);
    let manager = manager(counting.clone());
    let ctx = manager.begin(UpdateIds::new().user(1).chat(-5)).await;
    ctx.counter().expect("counter").apple += 1;
    ctx.chat_topic().expect("chat_topic").topic = "batched".into();
    *ctx.dialog().expect("dialog") = Dialog::AskedName;
    ok(&ctx).await;
    assert_eq!(counting.calls(), (1, 1));
    assert_eq!(counting.loaded_keys.load(Ordering::SeqCst), 3);
    assert_eq!(counting.written_records.load(Ordering::SeqCst), 3);
}

/// A write prepared at version v, before another process deleted and
/// re-created the record, must not land on the new record (ABA).
pub async fn versions_never_repeat_after_a_delete(storage: SharedStorage) {
    let key = StorageKey::new(Some(&unique_prefix()), None, "counter", "1");
    let put = |expected_version| Write::Put {
        key: key.clone(),
        value: Bytes::from_static(b"{\"apple\":2}"),
        expected_version,
        ttl: None,
    };
    let written = |outcomes: Vec<WriteOutcome>| match outcomes[..] {
        [WriteOutcome::Written { version }] => version,
        _ => panic!("not written: {outcomes:?}"),
    };
    let read_at = written(storage.write(&[put(None)]).await.expect("create"));
    storage
        .write(&[Write::Delete { key: key.clone() }])
        .await
        .expect("delete");
    let recreated = written(storage.write(&[put(None)]).await.expect("re-create"));
    assert!(recreated > read_at, "{recreated} after {read_at}");
    assert_eq!(
        storage
            .write(&[put(Some(read_at))])
            .await
            .expect("stale write"),
        [WriteOutcome::Conflict(Conflict::NewerVersion)],
        "the write prepared before the delete is refused"
    );
    let stored = storage
        .load(std::slice::from_ref(&key))
        .await
        .expect("load");
    assert_eq!(stored[0].as_ref().map(|r| r.version), Some(recreated));
}

/// A record whose time to live ends between an update's load and its
/// commit: the write is refused, and the error says it expired (not that
/// another process wrote).
pub async fn a_record_expired_under_an_update_is_reported_as_expired(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager_with(storage.clone(), &prefix, SavePolicy::OnSuccess);
    let ctx = manager.begin(private(1)).await;
    ctx.load::<ShortLived>().await.expect("short_lived").token = 1;
    ok(&ctx).await;

    let ctx = manager.begin(private(1)).await;
    let mut short = ctx.load::<ShortLived>().await.expect("short_lived");
    assert_eq!(short.token, 1);
    // Wait (bounded) for the record's one-second TTL to run out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(&storage, &prefix, "short_lived", "1")
        .await
        .is_some()
    {
        assert!(Instant::now() < deadline, "the record never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    short.token = 2;
    drop(short);
    let error = ctx
        .commit(HandlerOutcome::Succeeded)
        .await
        .expect_err("expired under the update");
    assert!(
        matches!(
            error,
            Error::Conflict {
                cause: Conflict::Expired,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("expired"), "{error}");
}

/// Updates that change two sessions, aborted at random points (during the
/// load, the handler, the commit) a few hundred times: afterwards nothing is
/// broken, both sessions moved together (a commit is all or nothing), every
/// commit that answered `Ok` is there, and the next update works at once.
pub async fn cancelled_updates_leave_the_storage_working(storage: SharedStorage) {
    const UPDATES: u32 = 300;
    const LEASE_TTL: Duration = Duration::from_secs(2);
    let prefix = unique_prefix();
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .prefix(&prefix)
        .lease_ttl(LEASE_TTL)
        .register::<Counter>()
        .register::<ChatTopic>()
        .build()
        .expect("manager");
    // A small fixed-seed generator: the abort points differ per update but
    // the run is repeatable.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Abort points spread over one update's duration on this storage.
    let timed = Instant::now();
    for _ in 0..5 {
        increment(&manager, private(2)).await.expect("timed update");
    }
    let span = (timed.elapsed() / 5).as_micros().max(1) as u64 * 3 / 2;
    let mut acknowledged = 0;
    for _ in 0..UPDATES {
        let manager = manager.clone();
        let yields = next() % 6;
        let update = tokio::spawn(async move {
            let ctx = manager.begin(private(1)).await;
            ctx.counter()?.apple += 1;
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            ctx.chat_topic()?.topic.push('x');
            ctx.commit(HandlerOutcome::Succeeded).await
        });
        // Timers are too coarse (1 ms) for an update of a few microseconds:
        // spin this worker while the update runs on the other one.
        let delay = Duration::from_micros(next() % span);
        let spin = Instant::now();
        while spin.elapsed() < delay {
            std::hint::spin_loop();
        }
        update.abort();
        if let Ok(result) = update.await {
            result.expect("an update that ran to its end succeeds");
            acknowledged += 1;
        }
    }
    let started = Instant::now();
    let ctx = manager.begin(private(1)).await;
    let apples = ctx.counter().expect("counter after the aborts").apple - 1;
    let topic = ctx
        .chat_topic()
        .expect("topic after the aborts")
        .topic
        .len() as u32;
    ok(&ctx).await;
    // A lease left behind by an aborted update (PostgreSQL, rarely, under
    // this burst) blocks the key until it expires, never longer.
    let bound = match storage.leases() {
        Some(_) => LEASE_TTL + Duration::from_secs(2),
        None => Duration::from_secs(2),
    };
    assert!(
        started.elapsed() < bound,
        "no key left blocked: {:?}",
        started.elapsed()
    );
    println!("{UPDATES} aborted updates: {acknowledged} acknowledged, {apples} stored");
    assert_eq!(apples, topic, "both sessions of each update moved together");
    assert!(
        (acknowledged..=UPDATES).contains(&apples),
        "{acknowledged} acknowledged, {apples} stored, {UPDATES} tried"
    );
    increment(&manager, private(1))
        .await
        .expect("a later update works");
}

/// Over a storage with leases: a handler that runs several lease lifetimes
/// keeps its lease (renewed while it runs), so another process's update of
/// the key waits for its commit instead of taking the key and overwriting.
pub async fn a_handler_longer_than_its_lease_keeps_it(storage: SharedStorage) {
    if storage.leases().is_none() {
        return;
    }
    let prefix = unique_prefix();
    let with_short_leases = || {
        SessionManager::builder()
            .storage(storage.clone())
            .prefix(&prefix)
            .lease_ttl(Duration::from_millis(300))
            .register::<Counter>()
            .build()
            .expect("manager")
    };
    let (slow_process, other_process) = (with_short_leases(), with_short_leases());
    let slow = slow_process.begin(private(1)).await;
    slow.counter().expect("counter").apple += 10;
    let other = tokio::spawn(async move { increment(&other_process, private(1)).await });
    // Four lease lifetimes: without renewal the other update would take the
    // key, and this commit would be refused.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!other.is_finished(), "the other process still waits");
    slow.commit(HandlerOutcome::Succeeded)
        .await
        .expect("the renewed lease still fences nobody out");
    assert_eq!(other.await.expect("task").expect("the other update"), 12);
}

/// The commit gives an update's keys back at once, not when its context is
/// dropped: a context kept after it (a clone in a spawned task, a handler
/// that commits early) does not hold up the next update of its keys, eager
/// or lazy, whether the handler succeeded or failed.
pub async fn a_commit_gives_the_keys_back_while_its_context_lives_on(storage: SharedStorage) {
    // Far below the lock timeout: a key still held fails the test quickly.
    const NEXT_UPDATE_WITHIN: Duration = Duration::from_secs(5);
    let manager = SessionManager::builder()
        .storage(storage)
        .prefix(unique_prefix())
        .register::<Counter>()
        .register::<Profile>()
        .lock_timeout(NEXT_UPDATE_WITHIN * 2)
        .build()
        .expect("manager");
    let mut kept = Vec::new();
    for (round, outcome) in [HandlerOutcome::Succeeded, HandlerOutcome::Failed]
        .into_iter()
        .enumerate()
    {
        let ctx = manager.begin(private(1)).await;
        ctx.counter().expect("counter").apple += 1;
        ctx.profile().await.expect("profile").name = Some(format!("round {round}"));
        ctx.commit(outcome).await.expect("commit");
        kept.push(ctx);
        let next = async {
            let ctx = manager.begin(private(1)).await;
            let apple = ctx.counter().expect("counter, its key given back").apple;
            let name = ctx
                .profile()
                .await
                .expect("profile, its key given back")
                .name
                .clone();
            ok(&ctx).await;
            (apple, name)
        };
        let seen = tokio::time::timeout(NEXT_UPDATE_WITHIN, next)
            .await
            .expect("the next update of the keys did not wait for the kept context");
        // The first round saved; the failed second one did not.
        assert_eq!(seen, (2, Some("round 0".to_owned())), "{outcome:?}");
    }
    drop(kept);
}
