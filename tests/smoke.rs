//! Smoke test of the derive and the memory storage.
use serde::{Deserialize, Serialize};
use tg_session::{HandlerOutcome, Session, SessionManager, UpdateIds};

#[derive(Session, Serialize, Deserialize, Debug)]
#[session(key = "counter")]
struct Counter {
    #[session(default = 1)]
    apple: u32,
}

#[derive(Session, Serialize, Deserialize, Default)]
#[session(key = "profile", lazy, scope = "user_in_chat", ttl = "1h")]
struct Profile {
    name: Option<String>,
}

#[tokio::test]
async fn counter_counts() {
    let manager = SessionManager::builder()
        .register::<Counter>()
        .build()
        .unwrap();
    for expected in 2..5 {
        let ctx = manager.begin(UpdateIds::new().user(1).chat(1)).await;
        let n = {
            let mut c = ctx.counter().unwrap();
            c.apple += 1;
            c.apple
        };
        let mut p = ctx.profile().await.unwrap();
        p.name = Some("x".into());
        drop(p);
        assert_eq!(n, expected);
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    }
}
