//! Sessions round-trip through each codec, stored as that codec's bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde::{Deserialize, Serialize};
use tg_session::{HandlerOutcome, MemoryStorage, Session, SessionManager, StorageKey, UpdateIds};

#[derive(Session, Serialize, Deserialize, Debug, Default, PartialEq)]
#[session(key = "profile")]
struct JsonProfile {
    name: String,
    tags: Vec<String>,
}

async fn stored_bytes(storage: &MemoryStorage, name: &str) -> Vec<u8> {
    let key = StorageKey::new(None, None, name, "1");
    let records = tg_session::storage::Storage::load(storage, &[key])
        .await
        .unwrap();
    records[0].as_ref().expect("stored").value.to_vec()
}

#[tokio::test]
async fn json_is_the_default_codec() {
    let storage = MemoryStorage::new();
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .register::<JsonProfile>()
        .build()
        .unwrap();
    let ctx = manager.begin(UpdateIds::new().user(1)).await;
    ctx.profile().unwrap().name = "Ann".into();
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    assert_eq!(
        stored_bytes(&storage, "profile").await,
        br#"{"name":"Ann","tags":[]}"#
    );
}

mod msgpack {
    use super::*;

    #[derive(Session, Serialize, Deserialize, Debug, Default, PartialEq)]
    #[session(key = "packed", codec = tg_session::MessagePack)]
    struct PackedProfile {
        name: String,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[tokio::test]
    async fn message_pack_round_trips_and_is_smaller() {
        let storage = MemoryStorage::new();
        let manager = SessionManager::builder()
            .storage(storage.clone())
            .register::<PackedProfile>()
            .register::<JsonProfile>()
            .build()
            .unwrap();
        for _ in 0..2 {
            let ctx = manager.begin(UpdateIds::new().user(1)).await;
            let mut packed = ctx.packed().unwrap();
            packed.name = "Ann".into();
            packed.tags.push("rust".into());
            drop(packed);
            let mut json = ctx.profile().unwrap();
            json.name = "Ann".into();
            json.tags.push("rust".into());
            drop(json);
            ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        }
        let ctx = manager.begin(UpdateIds::new().user(1)).await;
        assert_eq!(ctx.packed().unwrap().tags, ["rust", "rust"]);
        drop(ctx);
        let packed = stored_bytes(&storage, "packed").await;
        let json = stored_bytes(&storage, "profile").await;
        assert!(
            packed.len() < json.len(),
            "{} >= {}",
            packed.len(),
            json.len()
        );
        let decoded: PackedProfile = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(decoded.name, "Ann");
    }
}
