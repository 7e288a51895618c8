//! End-to-end tests of the teloxide layer: the real teloxide `Dispatcher`,
//! long polling over HTTP against the local Bot API stand-in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tg_session_test_kit::suite;

use bot_api_stub::demo::{BoxError, Script, run_offline};
use bot_api_stub::{BotApiStub, Chat, User};
use serde::{Deserialize, Serialize};
use suite::counting::CountingStorage;
use teloxide::dispatching::UpdateHandler;
use teloxide::prelude::*;
use tg_session::storage::Storage;
use tg_session::storage::{Record, Write, WriteOutcome};
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{
    Error, HandlerOutcome, MemoryStorage, Session, SessionManager, Sessions, StorageError,
    StorageKey, UpdateIds,
};

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter")]
struct Counter {
    #[session(default = 1)]
    apple: u32,
}

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "visits", lazy)]
struct Visits {
    count: u32,
}

async fn count_apples(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
    let answer = if msg.text() == Some("/reset") {
        ctx.counter()?.clear().await?;
        "cleared".to_owned()
    } else {
        match ctx.counter() {
            Ok(mut counter) => {
                counter.apple += 1;
                format!("apples: {}", counter.apple)
            }
            Err(error @ Error::MissingId { .. }) => format!("no session: {error}"),
            Err(error) => return Err(error.into()),
        }
    };
    bot.send_message(msg.chat.id, answer).await?;
    Ok(())
}

fn counter_bot(manager: SessionManager) -> UpdateHandler<BoxError> {
    Update::filter_message()
        .enter_sessions(manager)
        .endpoint(count_apples)
}

fn people() -> (User, User, User) {
    (
        User::new(101, "Alice"),
        User::new(102, "Bob"),
        User::new(103, "Carol"),
    )
}

#[tokio::test]
async fn three_users_each_see_their_own_count_rise() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    let (alice, bob, carol) = people();
    let (a, b, c) = (
        alice.private_chat(),
        bob.private_chat(),
        carol.private_chat(),
    );
    let group = Chat::group(-500, "Orchard");
    let mut script = Script::new();
    for round in 0..3 {
        script = script
            .say(&alice, &a, "hi")
            .say(&bob, &b, "hi")
            .say(&carol, &c, "hi");
        if round == 1 {
            // The counter is per user: their messages in a group count too.
            script = script.say(&bob, &group, "hi").say(&alice, &group, "hi");
        }
    }
    let stub = BotApiStub::start().await.unwrap();
    let transcript = run_offline(&stub, counter_bot(manager), dptree::deps![], &script, false)
        .await
        .unwrap();

    let apples = |n: &[u32]| n.iter().map(|n| format!("apples: {n}")).collect::<Vec<_>>();
    assert_eq!(transcript.answers_to(&alice, &a), apples(&[2, 3, 5]));
    assert_eq!(transcript.answers_to(&bob, &b), apples(&[2, 3, 5]));
    assert_eq!(transcript.answers_to(&carol, &c), apples(&[2, 3, 4]));
    assert_eq!(transcript.answers_to(&bob, &group), apples(&[4]));
    assert_eq!(transcript.answers_to(&alice, &group), apples(&[4]));
    // Each reply went to the chat the message came from.
    for exchange in &transcript.exchanges {
        let bot_api_stub::demo::Step::Say { chat, .. } = &exchange.step else {
            unreachable!()
        };
        assert_eq!(exchange.replies.len(), 1);
        assert_eq!(exchange.replies[0].chat_id, chat.id);
    }
}

#[tokio::test]
async fn reset_clears_the_session_in_storage() {
    let storage = MemoryStorage::new();
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .register::<Counter>()
        .build()
        .unwrap();
    let (alice, bob, _) = people();
    let (a, b) = (alice.private_chat(), bob.private_chat());
    let script = Script::new()
        .say(&alice, &a, "one")
        .say(&alice, &a, "two")
        .say(&bob, &b, "one")
        .say(&alice, &a, "/reset");
    let stub = BotApiStub::start().await.unwrap();
    let transcript = run_offline(
        &stub,
        counter_bot(manager.clone()),
        dptree::deps![],
        &script,
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        transcript.answers_to(&alice, &a),
        ["apples: 2", "apples: 3", "cleared"]
    );

    // After the run: Alice's record is gone, Bob's is intact.
    let keys = [
        StorageKey::new(None, None, "counter", "101"),
        StorageKey::new(None, None, "counter", "102"),
    ];
    let records = storage.load(&keys).await.unwrap();
    assert!(records[0].is_none(), "alice's session was not deleted");
    let bob_record = records[1].as_ref().expect("bob's session is stored");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bob_record.value).unwrap()["apple"],
        2
    );

    // And the next message starts again from the initial value.
    let script = Script::new().say(&alice, &a, "after");
    let stub = BotApiStub::start().await.unwrap();
    let transcript = run_offline(&stub, counter_bot(manager), dptree::deps![], &script, false)
        .await
        .unwrap();
    assert_eq!(transcript.answers_to(&alice, &a), ["apples: 2"]);
}

async fn visit(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
    let answer = match msg.text() {
        Some("/help") => "help".to_owned(),
        _ => {
            let mut visits = ctx.visits().await?;
            visits.count += 1;
            format!("visits: {}", visits.count)
        }
    };
    bot.send_message(msg.chat.id, answer).await?;
    Ok(())
}

#[tokio::test]
async fn lazy_sessions_cost_nothing_when_untouched() {
    let storage = CountingStorage::new(Arc::new(MemoryStorage::new()));
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .register::<Visits>()
        .build()
        .unwrap();
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(visit);
    let (alice, bob, _) = people();
    let (a, b) = (alice.private_chat(), bob.private_chat());
    let help_only = Script::new()
        .say(&alice, &a, "/help")
        .say(&bob, &b, "/help")
        .say(&alice, &a, "/help");
    let stub = BotApiStub::start().await.unwrap();
    let transcript = run_offline(&stub, handler.clone(), dptree::deps![], &help_only, false)
        .await
        .unwrap();
    assert_eq!(transcript.answers_to(&alice, &a), ["help", "help"]);
    assert_eq!(
        storage.loads.load(Ordering::SeqCst),
        0,
        "an untouched lazy session was loaded"
    );
    assert_eq!(
        storage.writes.load(Ordering::SeqCst),
        0,
        "an untouched lazy session was written"
    );

    let mixed = Script::new()
        .say(&alice, &a, "hi")
        .say(&alice, &a, "/help")
        .say(&bob, &b, "hi")
        .say(&alice, &a, "hi");
    let stub = BotApiStub::start().await.unwrap();
    let transcript = run_offline(&stub, handler, dptree::deps![], &mixed, false)
        .await
        .unwrap();
    assert_eq!(
        transcript.answers_to(&alice, &a),
        ["visits: 1", "help", "visits: 2"]
    );
    assert_eq!(
        storage.loads.load(Ordering::SeqCst),
        3,
        "one load per update that awaited the session"
    );
    assert_eq!(
        storage.writes.load(Ordering::SeqCst),
        3,
        "one write per update that changed it"
    );
}

#[tokio::test]
async fn a_channel_post_is_handled_and_the_user_session_reports_the_missing_sender() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    let handler = dptree::entry()
        .enter_sessions(manager)
        .branch(Update::filter_message().endpoint(count_apples))
        .branch(Update::filter_channel_post().endpoint(count_apples));
    let news = Chat::channel(-1009, "News");
    let (alice, _, _) = people();
    let a = alice.private_chat();
    let script = Script::new()
        .post(&news, "breaking")
        .say(&alice, &a, "hi")
        .post(&news, "again");
    let stub = BotApiStub::start().await.unwrap();
    let transcript = run_offline(&stub, handler, dptree::deps![], &script, false)
        .await
        .unwrap();
    let expected = Error::MissingId {
        session: "counter",
        needs: "the sender's user id",
    };
    for post in [&transcript.exchanges[0], &transcript.exchanges[2]] {
        assert_eq!(post.replies.len(), 1);
        assert_eq!(post.replies[0].chat_id, news.id);
        assert_eq!(post.replies[0].text, format!("no session: {expected}"));
    }
    // Other updates are not affected.
    assert_eq!(transcript.answers_to(&alice, &a), ["apples: 2"]);
}

#[tokio::test]
async fn the_allowed_updates_hint_lists_only_what_the_tree_handles() {
    let stub = BotApiStub::start().await.unwrap();
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    let (alice, _, _) = people();
    let script = Script::new().say(&alice, &alice.private_chat(), "hi");
    run_offline(
        &stub,
        counter_bot(manager.clone()),
        dptree::deps![],
        &script,
        false,
    )
    .await
    .unwrap();
    let first_poll = stub.first_call("getUpdates").await;
    assert_eq!(
        first_poll["allowed_updates"],
        serde_json::json!(["message"])
    );

    // The layer at the root, above two branches: still only their kinds.
    let stub = BotApiStub::start().await.unwrap();
    let handler = dptree::entry()
        .enter_sessions(manager)
        .branch(Update::filter_message().endpoint(count_apples))
        .branch(Update::filter_channel_post().endpoint(count_apples));
    run_offline(&stub, handler, dptree::deps![], &script, false)
        .await
        .unwrap();
    let first_poll = stub.first_call("getUpdates").await;
    let mut kinds: Vec<String> =
        serde_json::from_value(first_poll["allowed_updates"].clone()).unwrap();
    kinds.sort();
    assert_eq!(kinds, ["channel_post", "message"]);
}

/// A storage that loads nothing and refuses every write.
struct RefusingStorage;

#[tg_session::storage::async_trait]
impl Storage for RefusingStorage {
    fn name(&self) -> &str {
        "refusing"
    }

    async fn load(&self, keys: &[StorageKey]) -> Result<Vec<Option<Record>>, StorageError> {
        Ok(vec![None; keys.len()])
    }

    async fn write(&self, _: &[Write]) -> Result<Vec<WriteOutcome>, StorageError> {
        Err(StorageError::unavailable("the disk is on fire"))
    }
}

fn message_update(text: &str) -> Update {
    serde_json::from_str(&format!(
        r#"{{"update_id": 7, "message": {{"message_id": 1, "date": 1700000000,
            "chat": {{"id": 101, "type": "private", "first_name": "Alice"}},
            "from": {{"id": 101, "is_bot": false, "first_name": "Alice"}}, "text": "{text}"}}}}"#
    ))
    .unwrap()
}

async fn increment(ctx: Sessions) -> Result<(), BoxError> {
    ctx.counter()?.apple += 1;
    Ok(())
}

#[tokio::test]
async fn a_failed_commit_becomes_the_trees_error() {
    let manager = SessionManager::builder()
        .storage(RefusingStorage)
        .register::<Counter>()
        .build()
        .unwrap();
    let handler: UpdateHandler<BoxError> = Update::filter_message()
        .enter_sessions(manager.clone())
        .endpoint(increment);
    let result = handler
        .dispatch(dptree::deps![message_update("hi"), BotApiStub::me()])
        .await;
    let std::ops::ControlFlow::Break(Err(error)) = result else {
        panic!("expected an error, got {result:?}")
    };
    let error = error.downcast::<Error>().expect("a tg_session::Error");
    assert!(
        matches!(
            *error,
            Error::Storage {
                session: "counter",
                ..
            }
        ),
        "{error}"
    );

    // With the log-only variant the handler's `Ok` stands.
    let handler: UpdateHandler<String> = Update::filter_message()
        .enter_sessions_log_only(manager)
        .endpoint(|ctx: Sessions| async move {
            ctx.counter().map_err(|e| e.to_string())?.apple += 1;
            Ok(())
        });
    let result = handler
        .dispatch(dptree::deps![message_update("hi"), BotApiStub::me()])
        .await;
    assert!(
        matches!(result, std::ops::ControlFlow::Break(Ok(()))),
        "{result:?}"
    );
}

#[tokio::test]
async fn nothing_is_written_when_the_tree_does_not_handle_the_update_or_fails() {
    let storage = CountingStorage::new(Arc::new(MemoryStorage::new()));
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .register::<Counter>()
        .build()
        .unwrap();
    // The layer at the root, then a filter that lets no text but "go" through.
    let handler: UpdateHandler<BoxError> = dptree::entry()
        .enter_sessions(manager.clone())
        .chain(Update::filter_message())
        .branch(
            dptree::filter(|msg: Message| msg.text() == Some("go"))
                .map(|ctx: Sessions| ctx.counter().map(|mut c| c.apple += 1).is_ok())
                .endpoint(|changed: bool| async move {
                    match changed {
                        true => Err::<(), BoxError>(
                            "the handler failed after changing the session".into(),
                        ),
                        false => Ok(()),
                    }
                }),
        );
    let result = handler
        .dispatch(dptree::deps![message_update("stop"), BotApiStub::me()])
        .await;
    assert!(matches!(result, std::ops::ControlFlow::Continue(_)));
    let result = handler
        .dispatch(dptree::deps![message_update("go"), BotApiStub::me()])
        .await;
    assert!(matches!(result, std::ops::ControlFlow::Break(Err(_))));
    assert_eq!(storage.writes.load(Ordering::SeqCst), 0);

    // The key was released both times: the next update of the user gets it at once.
    let ctx = manager.begin(UpdateIds::new().user(101)).await;
    assert_eq!(ctx.counter().unwrap().apple, 1);
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
}

/// One per chat: how many messages the group sent.
#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "group_tally", scope = "chat")]
struct GroupTally {
    count: u32,
}

/// One per member of each chat, loaded when used.
#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "member_tally", lazy, scope = "user_in_chat")]
struct MemberTally {
    count: u32,
}

async fn tally(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
    let migrated = msg.migrate_to_chat_id().is_some() || msg.migrate_from_chat_id().is_some();
    let answer = match migrated {
        // Both service messages already see the supergroup's sessions.
        true => format!("moved: {}", ctx.group_tally()?.count),
        false => {
            let group = {
                let mut tally = ctx.group_tally()?;
                tally.count += 1;
                tally.count
            };
            let mut mine = ctx.member_tally().await?;
            mine.count += 1;
            let name = msg
                .from
                .as_ref()
                .map_or("?", |user| user.first_name.as_str());
            format!("group {group}, {name} {}", mine.count)
        }
    };
    bot.send_message(msg.chat.id, answer).await?;
    Ok(())
}

#[tokio::test]
async fn a_group_that_becomes_a_supergroup_keeps_its_sessions() {
    let storage = MemoryStorage::new();
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .register::<GroupTally>()
        .register::<MemberTally>()
        .build()
        .unwrap();
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(tally);
    let (alice, bob, carol) = people();
    let group = Chat::group(-500, "Orchard");
    let supergroup = Chat::supergroup(-1_000_000_000_500, "Orchard");
    let script = Script::new()
        .say(&alice, &group, "one")
        .say(&alice, &group, "two")
        .say(&bob, &group, "three")
        .say(&alice, &group, "four")
        .group_migrates(&alice, &group, &supergroup)
        .say(&alice, &supergroup, "five")
        .say(&bob, &supergroup, "six")
        .say(&carol, &supergroup, "seven");
    let stub = BotApiStub::start().await.unwrap();
    let transcript = run_offline(&stub, handler, dptree::deps![], &script, false)
        .await
        .unwrap();

    let said = |exchange: &bot_api_stub::demo::Exchange| {
        exchange
            .replies
            .iter()
            .map(|r| r.text.clone())
            .collect::<Vec<_>>()
    };
    let all: Vec<Vec<String>> = transcript.exchanges.iter().map(said).collect();
    assert_eq!(
        all,
        [
            ["group 1, Alice 1"],
            ["group 2, Alice 2"],
            ["group 3, Bob 1"],
            ["group 4, Alice 3"],
            // The old group's message moved them; the supergroup's finds
            // them in place, moved once.
            ["moved: 4"],
            ["moved: 4"],
            ["group 5, Alice 4"],
            ["group 6, Bob 2"],
            ["group 7, Carol 1"],
        ]
    );
    // Nothing is left under the group's id.
    let old = [
        StorageKey::new(None, None, "group_tally", "-500"),
        StorageKey::new(None, None, "member_tally", "-500:101"),
        StorageKey::new(None, None, "member_tally", "-500:102"),
    ];
    assert_eq!(storage.load(&old).await.unwrap(), [None, None, None]);
}
