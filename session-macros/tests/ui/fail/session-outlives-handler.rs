//! A session borrowed in a handler cannot outlive it: the commit after the
//! handler would find it still borrowed, and could not save it.
use serde::{Deserialize, Serialize};
use tg_session::{Error, Session, SessionManager, UpdateIds};

#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter")]
struct Counter {
    #[session(default = 1)]
    apple: u32,
}

#[tokio::main]
async fn main() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    let _escaped = manager
        .run(UpdateIds::new().user(1), |ctx| async move {
            Ok::<_, Error>(ctx.counter()?)
        })
        .await;
}
