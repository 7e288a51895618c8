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

/// A small session, as a counter bot keeps, with the attributes given (docs,
/// derives) added.
macro_rules! session_type {
    ($(#[$attribute:meta])* $ty:ident $key:literal) => {
        $(#[$attribute])*
        #[derive(Session, Serialize, Deserialize, Clone, Default)]
        #[session(key = $key)]
        pub struct $ty {
            pub apple: u32,
            pub name: Option<String>,
        }
    };
}

session_type!(/** The workload's first session. */ One "one");
session_type!(/** The workload's second session. */ Two "two");
session_type!(/** The workload's third session. */ Three "three");
session_type!(/** The workload's fourth session. */ Four "four");

// The same, deriving `PartialEq`: ours tell a change by comparing values
// rather than encoding them.
session_type!(#[derive(PartialEq)] /** [`One`], comparable. */ EqOne "eq_one");
session_type!(#[derive(PartialEq)] /** [`Two`], comparable. */ EqTwo "eq_two");
session_type!(#[derive(PartialEq)] /** [`Three`], comparable. */ EqThree "eq_three");
session_type!(#[derive(PartialEq)] /** [`Four`], comparable. */ EqFour "eq_four");

/// [`One`], loaded only when asked for (`#[session(lazy)]`).
#[derive(Session, Serialize, Deserialize, Clone, Default)]
#[session(key = "lazy_one", lazy)]
pub struct LazyOne {
    pub apple: u32,
    pub name: Option<String>,
}

/// An update changing the lazy session, loaded by `ctx.lazy_one().await`.
pub async fn ours_lazy(manager: &SessionManager, user: u64) {
    let ctx = manager.begin(ids(user)).await;
    ctx.lazy_one().await.unwrap().apple += 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
}

/// An update reading the session `ctx.one()` gives, changing nothing.
pub async fn ours_read(manager: &SessionManager, user: u64) -> u32 {
    let ctx = manager.begin(ids(user)).await;
    let apple = ctx.one().unwrap().apple;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    apple
}

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

/// An update changing one session type, and one changing four, through the
/// accessors named. Each is one `async fn` (no helper future awaited in
/// it): the workload's own frames stay out of the count.
macro_rules! updates {
    ($one:ident, $four:ident: $first:ident $second:ident $third:ident $fourth:ident) => {
        #[doc = concat!("One update changing the session `ctx.", stringify!($first), "()` gives.")]
        pub async fn $one(manager: &SessionManager, user: u64) {
            let ctx = manager.begin(ids(user)).await;
            ctx.$first().unwrap().apple += 1;
            ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        }

        #[doc = concat!("One update changing the four sessions from `ctx.", stringify!($first), "()` on.")]
        pub async fn $four(manager: &SessionManager, user: u64) {
            let ctx = manager.begin(ids(user)).await;
            ctx.$first().unwrap().apple += 1;
            ctx.$second().unwrap().apple += 1;
            ctx.$third().unwrap().apple += 1;
            ctx.$fourth().unwrap().apple += 1;
            ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        }
    };
}

/// The ids of `user`'s update, in their private chat.
fn ids(user: u64) -> UpdateIds {
    UpdateIds::new().user(user).chat(user as i64)
}

updates!(ours_one, ours_four: one two three four);
updates!(ours_one_eq, ours_four_eq: eq_one eq_two eq_three eq_four);

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

/// teloxide's storages for the four session types of [`ours_four`], one
/// `InMemStorage` each, as a teloxide bot with four dialogues has.
pub struct TeloxideFour {
    one: Arc<InMemStorage<One>>,
    two: Arc<InMemStorage<Two>>,
    three: Arc<InMemStorage<Three>>,
    four: Arc<InMemStorage<Four>>,
}

impl TeloxideFour {
    pub fn new() -> Self {
        Self {
            one: InMemStorage::new(),
            two: InMemStorage::new(),
            three: InMemStorage::new(),
            four: InMemStorage::new(),
        }
    }

    /// [`ours_four`]'s update through teloxide dialogues, over the first
    /// `sessions` types (1 or 4): a [`teloxide_rmw`] each.
    pub async fn update(&self, user: u64, sessions: usize) {
        teloxide_rmw(&self.one, user, |s| s.apple += 1).await;
        if sessions == 4 {
            teloxide_rmw(&self.two, user, |s| s.apple += 1).await;
            teloxide_rmw(&self.three, user, |s| s.apple += 1).await;
            teloxide_rmw(&self.four, user, |s| s.apple += 1).await;
        }
    }
}
