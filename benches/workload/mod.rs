//! The update every storage benchmark measures: one user's read-modify-write
//! of 1 or 4 eager session types, cycling over 1,000 users.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use teloxide::dispatching::dialogue::{Dialogue, InMemStorage};
use teloxide::types::ChatId;
use tg_session::{HandlerOutcome, Session, SessionManager, UpdateIds};

/// Users the updates cycle over.
pub const USERS: u64 = 1_000;

macro_rules! session_types {
    ($($ty:ident $key:literal),*) => {$(
        /// A small session, as a counter bot keeps.
        #[derive(Session, Serialize, Deserialize, Clone, Default)]
        #[session(key = $key)]
        pub struct $ty {
            pub apple: u32,
            pub name: Option<String>,
        }
    )*};
}

session_types!(One "one", Two "two", Three "three", Four "four");

macro_rules! comparable_types {
    ($($ty:ident $key:literal),*) => {$(
        /// The workload's session, deriving `PartialEq`: ours tell a change
        /// by comparing values rather than encoding them.
        #[derive(Session, Serialize, Deserialize, Clone, Default, PartialEq)]
        #[session(key = $key)]
        pub struct $ty {
            pub apple: u32,
            pub name: Option<String>,
        }
    )*};
}

comparable_types!(EqOne "eq_one", EqTwo "eq_two", EqThree "eq_three", EqFour "eq_four");

/// A manager over `storage` with [`One`] registered, and with [`Two`],
/// [`Three`] and [`Four`] too when `four`.
pub fn manager(storage: impl tg_session::storage::Storage, four: bool) -> SessionManager {
    let builder = SessionManager::builder().storage(storage).register::<One>();
    match four {
        true => builder
            .register::<Two>()
            .register::<Three>()
            .register::<Four>(),
        false => builder,
    }
    .build()
    .unwrap()
}

/// The next user id, 1 to [`USERS`].
pub fn next_user(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) % USERS + 1
}

/// One update changing [`One`].
pub async fn ours_one(manager: &SessionManager, user: u64) {
    let ctx = manager
        .begin(UpdateIds::new().user(user).chat(user as i64))
        .await;
    ctx.one().unwrap().apple += 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
}

/// One update changing all four types.
pub async fn ours_four(manager: &SessionManager, user: u64) {
    let ctx = manager
        .begin(UpdateIds::new().user(user).chat(user as i64))
        .await;
    ctx.one().unwrap().apple += 1;
    ctx.two().unwrap().apple += 1;
    ctx.three().unwrap().apple += 1;
    ctx.four().unwrap().apple += 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
}

/// One update changing [`EqOne`].
pub async fn ours_one_eq(manager: &SessionManager, user: u64) {
    let ctx = manager
        .begin(UpdateIds::new().user(user).chat(user as i64))
        .await;
    ctx.eq_one().unwrap().apple += 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
}

/// One update changing all four `PartialEq` types.
pub async fn ours_four_eq(manager: &SessionManager, user: u64) {
    let ctx = manager
        .begin(UpdateIds::new().user(user).chat(user as i64))
        .await;
    ctx.eq_one().unwrap().apple += 1;
    ctx.eq_two().unwrap().apple += 1;
    ctx.eq_three().unwrap().apple += 1;
    ctx.eq_four().unwrap().apple += 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
}

/// The same update through a teloxide dialogue: `get_or_default`, `bump`,
/// `update`, two round trips to its `InMemStorage`.
pub async fn teloxide_rmw<D: Clone + Default + Send + 'static>(
    storage: &Arc<InMemStorage<D>>,
    user: u64,
    bump: impl FnOnce(&mut D),
) {
    let dialogue = Dialogue::new(Arc::clone(storage), ChatId(user as i64));
    let mut state = dialogue.get_or_default().await.unwrap();
    bump(&mut state);
    dialogue.update(state).await.unwrap();
}
