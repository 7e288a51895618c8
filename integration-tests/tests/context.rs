//! Rules of the per-update context that do not depend on the storage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tg_session_test_kit::suite;

use std::time::Duration;

use suite::types::*;
use tg_session::{Error, HandlerOutcome, SessionManager, UpdateIds};

fn user(id: u64) -> UpdateIds {
    UpdateIds::new().user(id).chat(id as i64)
}

#[test]
fn two_types_with_one_key_name_are_refused_at_build() {
    let error = SessionManager::builder()
        .register::<Counter>()
        .register::<lenient::LenientCounter>()
        .build()
        .expect_err("both are named `counter`");
    assert!(matches!(
        error,
        Error::DuplicateSession {
            session: "counter",
            ..
        }
    ));
    let message = error.to_string();
    assert!(
        message.contains("Counter") && message.contains("LenientCounter"),
        "{message}"
    );
}

#[tokio::test]
async fn an_eager_type_must_be_registered() {
    let manager = SessionManager::builder().build().unwrap();
    let ctx = manager.begin(user(1)).await;
    let error = ctx.counter().map(|c| c.apple).expect_err("not registered");
    assert!(matches!(
        error,
        Error::NotRegistered {
            session: "counter",
            ..
        }
    ));
    assert!(error.to_string().contains(".register::<"), "{error}");
    // `load` still works for it: it is loaded on demand.
    assert_eq!(ctx.load::<Counter>().await.unwrap().apple, 1);
}

#[tokio::test]
async fn one_session_cannot_be_borrowed_twice() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    let ctx = manager.begin(user(1)).await;
    let first = ctx.counter().unwrap();
    let error = ctx.counter().map(|c| c.apple).expect_err("still borrowed");
    assert!(
        matches!(
            error,
            Error::AlreadyBorrowed {
                session: "counter",
                ..
            }
        ),
        "{error:?}"
    );
    drop(first);
    ctx.counter().unwrap().apple += 1;
}

#[tokio::test]
async fn a_guard_alive_at_commit_is_reported_not_waited_for() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    let ctx = manager.begin(user(1)).await;
    let mut leaked = ctx.counter().unwrap();
    leaked.apple = 9;
    let error = ctx
        .commit(HandlerOutcome::Succeeded)
        .await
        .expect_err("guard alive");
    assert!(matches!(error, Error::AlreadyBorrowed { .. }), "{error:?}");
}

#[tokio::test]
async fn a_committed_context_refuses_access() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    let ctx = manager.begin(user(1)).await;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert!(matches!(
        ctx.counter().map(|c| c.apple),
        Err(Error::Finished { .. })
    ));
    assert!(matches!(
        ctx.profile().await.map(|p| p.name.clone()),
        Err(Error::Finished { .. })
    ));
    ctx.commit(HandlerOutcome::Succeeded)
        .await
        .expect("a second commit does nothing");
}

#[tokio::test]
async fn a_held_key_times_out_a_lazy_waiter_but_not_other_keys() {
    let manager = SessionManager::builder()
        .lock_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let holder = manager.begin(user(1)).await;
    let _held = holder.profile().await.unwrap();

    let waiter = manager.begin(user(1)).await;
    let error = waiter
        .profile()
        .await
        .map(|p| p.name.clone())
        .expect_err("key held");
    assert!(
        matches!(
            error,
            Error::LockTimeout {
                session: "profile",
                ..
            }
        ),
        "{error:?}"
    );

    let other = manager.begin(user(2)).await;
    other.profile().await.expect("another key never waits").name = Some("Bob".into());
    other.commit(HandlerOutcome::Succeeded).await.unwrap();
}

#[tokio::test]
async fn run_commits_after_the_handler_and_passes_its_error() {
    #[derive(Debug)]
    enum AppError {
        Session(Error),
        Refused,
    }
    impl From<Error> for AppError {
        fn from(error: Error) -> Self {
            AppError::Session(error)
        }
    }
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    let apples = manager
        .run(user(1), |ctx| async move {
            let mut counter = ctx.counter()?;
            counter.apple += 1;
            Ok::<_, AppError>(counter.apple)
        })
        .await
        .unwrap();
    assert_eq!(apples, 2);
    let failed = manager
        .run(user(1), |ctx| async move {
            ctx.counter()?.apple += 100;
            Err::<(), _>(AppError::Refused)
        })
        .await;
    assert!(matches!(failed, Err(AppError::Refused)));
    let after = manager
        .run(user(1), |ctx| async move {
            Ok::<_, AppError>(ctx.counter()?.apple)
        })
        .await
        .unwrap();
    assert_eq!(after, 2, "the failed update saved nothing");
    // A session's error comes out as the handler's error type.
    let unregistered = manager
        .run(user(1), |ctx| async move {
            Ok::<_, AppError>(ctx.get::<Profile>()?.name.clone())
        })
        .await;
    assert!(
        matches!(
            unregistered,
            Err(AppError::Session(Error::NotRegistered { .. }))
        ),
        "{unregistered:?}"
    );
    // A handler cannot return a session it borrowed: a compile error
    // (`session-macros/tests/ui/fail/session-outlives-handler.rs`).
}

#[tokio::test]
async fn a_session_borrowed_at_the_commit_is_not_saved_and_its_key_goes_back_with_the_context() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    // A clone of the context outlives the commit, and a session borrowed
    // from it is still held there.
    let ctx = manager.begin(user(1)).await;
    let kept = ctx.clone();
    let mut counter = kept.counter().unwrap();
    counter.apple += 10;
    let committed = ctx.commit(HandlerOutcome::Succeeded).await;
    assert!(
        matches!(committed, Err(Error::AlreadyBorrowed { .. })),
        "{committed:?}"
    );
    drop(counter);
    drop((ctx, kept));
    // Its key went back with the context: the next update takes it at once.
    let next = manager.begin(user(1)).await;
    assert_eq!(
        next.counter().unwrap().apple,
        1,
        "the change still borrowed at the commit was not saved"
    );
    next.commit(HandlerOutcome::Succeeded).await.unwrap();
}

#[tokio::test]
async fn lazy_sessions_loaded_in_one_update_are_each_kept_and_saved() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    let ids = || user(7).thread(3);
    let ctx = manager.begin(ids()).await;
    // Three lazy types (none registered: a lazy one need not be), two asked
    // for twice: the second call finds the first one's session.
    ctx.load::<Profile>().await.unwrap().name = Some("Ann".into());
    ctx.load::<ThreadNote>()
        .await
        .unwrap()
        .notes
        .push("pears".into());
    ctx.load::<Stats>().await.unwrap().updates += 1;
    assert_eq!(
        ctx.load::<Profile>().await.unwrap().name.as_deref(),
        Some("Ann")
    );
    assert_eq!(ctx.load::<Stats>().await.unwrap().updates, 1);
    {
        let _held = ctx.load::<ThreadNote>().await.unwrap();
        assert!(
            matches!(
                ctx.load::<ThreadNote>().await,
                Err(Error::AlreadyBorrowed { .. })
            ),
            "one borrow at a time"
        );
    }
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    let next = manager.begin(ids()).await;
    assert_eq!(
        next.load::<Profile>().await.unwrap().name.as_deref(),
        Some("Ann")
    );
    assert_eq!(next.load::<ThreadNote>().await.unwrap().notes, ["pears"]);
    assert_eq!(next.load::<Stats>().await.unwrap().updates, 1);
    next.commit(HandlerOutcome::Succeeded).await.unwrap();
}

#[tokio::test]
async fn lazy_accessor_future_is_send() {
    fn assert_send<T: Send>(value: T) -> T {
        value
    }
    let manager = SessionManager::builder().build().unwrap();
    let ctx = manager.begin(user(1)).await;
    let profile = assert_send(ctx.profile()).await.unwrap();
    assert_eq!(profile.name, None);
}

#[tokio::test]
async fn one_key_for_two_types_fails_at_once_naming_both() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .lock_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let ctx = manager.begin(user(1)).await;
    let started = std::time::Instant::now();
    let error = ctx
        .load::<lenient::LenientCounter>()
        .await
        .map(|c| c.apple)
        .expect_err("`counter:1` is taken by `Counter` in this update");
    assert!(started.elapsed() < Duration::from_secs(1), "no self-wait");
    assert!(matches!(error, Error::SameKeyTwice { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("suite::types::Counter") && message.contains("LenientCounter"),
        "{message}"
    );
    // The eager session is untouched by the refused one.
    assert_eq!(ctx.counter().unwrap().apple, 1);
}

#[tokio::test]
async fn lazy_loads_in_opposite_orders_fail_at_once_instead_of_stalling() {
    let manager = SessionManager::builder()
        .lock_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let in_group = |user: u64| UpdateIds::new().user(user).chat(-10);
    let first = manager.begin(in_group(1)).await;
    let second = manager.begin(in_group(2)).await;
    first
        .load::<ThreadNote>()
        .await
        .unwrap()
        .notes
        .push("a".into());
    second.load::<Stats>().await.unwrap().updates += 1;

    // The first update waits for `stats` (held by the second) ...
    let waiter = tokio::spawn({
        let first = first.clone();
        async move { first.load::<Stats>().await.map(|stats| stats.updates) }
    });
    tokio::task::yield_now().await;
    // ... so the second asking for the note the first holds would close a cycle.
    let started = std::time::Instant::now();
    let error = second
        .load::<ThreadNote>()
        .await
        .map(|note| note.notes.len())
        .expect_err("cycle");
    assert!(started.elapsed() < Duration::from_secs(1), "no stall");
    assert!(matches!(error, Error::LockCycle { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("thread_note:-10:main") && message.contains("stats:global"),
        "{message}"
    );
    // The second update ends; the first goes on with its committed value.
    second.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 1);
    first.commit(HandlerOutcome::Succeeded).await.unwrap();
}

/// An update keeps its eager sessions in the order of their registrations,
/// lazy types left out: each accessor gets its own, whether the sessions
/// were taken at once or after waiting for a key (which takes them in the
/// order of their keys, `chat_topic:` before `counter:`).
#[tokio::test]
async fn each_eager_session_is_its_own_whatever_the_order_of_registration_and_keys() {
    let manager = SessionManager::builder()
        .register::<Profile>()
        .register::<Counter>()
        .register::<ChatTopic>()
        .build()
        .unwrap();
    let first = manager.begin(user(1)).await;
    first.counter().unwrap().apple += 1;
    first.chat_topic().unwrap().topic.push_str("apples");
    first.profile().await.unwrap().name = Some("Ann".into());

    // The next update of the user waits for the first's keys.
    let next = tokio::spawn({
        let manager = manager.clone();
        async move {
            let ctx = manager.begin(user(1)).await;
            let seen = (
                ctx.counter().unwrap().apple,
                ctx.chat_topic().unwrap().topic.clone(),
                ctx.profile().await.unwrap().name.clone(),
            );
            ctx.counter().unwrap().apple += 1;
            ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
            seen
        }
    });
    tokio::task::yield_now().await;
    first.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(
        next.await.unwrap(),
        (2, "apples".to_owned(), Some("Ann".to_owned()))
    );

    // Taken at once: no other update holds the keys.
    let ctx = manager.begin(user(1)).await;
    assert_eq!(ctx.counter().unwrap().apple, 3);
    assert_eq!(ctx.chat_topic().unwrap().topic, "apples");
}
