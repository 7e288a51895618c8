//! The memory storage keeps session values as they are, not their bytes:
//! what that must not change (bytes through the `Storage` trait, decode
//! errors, versions, conflicts, "unchanged is not written" where telling
//! costs no encoding) and what it must still catch (a type that would not
//! survive Redis or SQL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tg_session::storage::{KeyPrefix, Storage, Write, WriteOutcome};
use tg_session::{
    Error, HandlerOutcome, MemoryStorage, Session, SessionManager, StorageKey, UpdateIds,
};

#[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[session(key = "counter")]
struct Counter {
    apple: u32,
    name: String,
}

/// `Clone` but not `PartialEq`: kept as a value, put back when touched.
#[derive(Session, Serialize, Deserialize, Debug, Default, Clone)]
#[session(key = "plain")]
struct Plain {
    apple: u32,
}

/// Neither `Clone` nor `PartialEq`: copied through its codec.
#[derive(Session, Serialize, Deserialize, Debug, Default)]
#[session(key = "opaque")]
struct Opaque {
    apple: u32,
}

fn user(id: u64) -> UpdateIds {
    UpdateIds::new().user(id)
}

fn key(name: &str, user: u64) -> StorageKey {
    StorageKey::new(None, None, name, &user.to_string())
}

fn manager(storage: &MemoryStorage) -> SessionManager {
    SessionManager::builder()
        .storage(storage.clone())
        .register::<Counter>()
        .register::<Plain>()
        .register::<Opaque>()
        .build()
        .unwrap()
}

async fn stored(storage: &MemoryStorage, name: &str, user: u64) -> Option<(Bytes, u64)> {
    let records = storage.load(&[key(name, user)]).await.unwrap();
    records[0]
        .clone()
        .map(|record| (record.value, record.version))
}

async fn bump(manager: &SessionManager, user: u64) {
    let ctx = manager.begin(self::user(user)).await;
    ctx.counter().unwrap().apple += 1;
    ctx.plain().unwrap().apple += 1;
    ctx.opaque().unwrap().apple += 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
}

#[tokio::test]
async fn values_read_as_their_codec_bytes_through_the_storage_trait() {
    let storage = MemoryStorage::new();
    let manager = manager(&storage);
    bump(&manager, 1).await;
    bump(&manager, 1).await;
    let (bytes, version) = stored(&storage, "counter", 1).await.unwrap();
    assert_eq!(&bytes[..], br#"{"apple":2,"name":""}"#);
    let (plain, _) = stored(&storage, "plain", 1).await.unwrap();
    assert_eq!(&plain[..], br#"{"apple":2}"#);
    let (opaque, _) = stored(&storage, "opaque", 1).await.unwrap();
    assert_eq!(&opaque[..], br#"{"apple":2}"#);

    let page = storage
        .scan(&KeyPrefix::text("counter:"), None, 10, true)
        .await
        .unwrap();
    let [entry] = &page.entries[..] else {
        panic!("{page:?}")
    };
    let record = entry.record.as_ref().unwrap();
    assert_eq!((&record.value, record.version), (&bytes, version));
}

#[tokio::test]
async fn bytes_written_through_the_trait_are_decoded_and_bad_bytes_kept() {
    let storage = MemoryStorage::new();
    let manager = manager(&storage);
    let put = |value: &'static [u8]| Write::Put {
        key: key("counter", 1),
        value: Bytes::from_static(value),
        expected_version: None,
        ttl: None,
    };
    storage
        .write(&[put(br#"{"apple":41,"name":"Ann"}"#)])
        .await
        .unwrap();
    let ctx = manager.begin(user(1)).await;
    {
        let mut counter = ctx.counter().unwrap();
        assert_eq!((counter.apple, counter.name.as_str()), (41, "Ann"));
        counter.apple += 1;
    }
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    let (bytes, _) = stored(&storage, "counter", 1).await.unwrap();
    assert_eq!(&bytes[..], br#"{"apple":42,"name":"Ann"}"#);

    storage
        .write(&[Write::Delete {
            key: key("counter", 1),
        }])
        .await
        .unwrap();
    storage.write(&[put(b"not json")]).await.unwrap();
    let ctx = manager.begin(user(1)).await;
    assert!(
        matches!(ctx.counter(), Err(Error::Decode { .. })),
        "{:?}",
        ctx.counter().err()
    );
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    let (bytes, _) = stored(&storage, "counter", 1).await.unwrap();
    assert_eq!(&bytes[..], b"not json");
}

#[tokio::test]
async fn every_type_keeps_its_changes_and_versions_grow() {
    let storage = MemoryStorage::new();
    let manager = manager(&storage);
    let mut versions = Vec::new();
    for round in 1..=3 {
        bump(&manager, 7).await;
        let ctx = manager.begin(user(7)).await;
        assert_eq!(ctx.counter().unwrap().apple, round);
        assert_eq!(ctx.plain().unwrap().apple, round);
        assert_eq!(ctx.opaque().unwrap().apple, round);
        versions.push(ctx.counter().unwrap().version().unwrap());
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    }
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "{versions:?}"
    );
}

#[tokio::test]
async fn a_value_borrowed_mutably_but_unchanged_is_not_written_when_that_is_cheap_to_tell() {
    let storage = MemoryStorage::new();
    let manager = manager(&storage);
    // Never stored, touched, still the initial value: no record at all;
    // for the second user too, whose values are compared with the initial
    // value's bytes the first one encoded.
    for id in [3, 4] {
        let ctx = manager.begin(user(id)).await;
        ctx.counter().unwrap().apple += 0;
        ctx.plain().unwrap().apple += 0;
        ctx.opaque().unwrap().apple += 0;
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        for name in ["counter", "plain", "opaque"] {
            assert_eq!(stored(&storage, name, id).await, None, "{name} of {id}");
        }
    }

    bump(&manager, 3).await;
    let before: Vec<_> = futures_util::future::join_all(
        ["counter", "plain", "opaque"].map(|name| stored(&storage, name, 3)),
    )
    .await;
    let ctx = manager.begin(user(3)).await;
    ctx.counter().unwrap().name = String::new();
    ctx.plain().unwrap().apple *= 1;
    ctx.opaque().unwrap().apple *= 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    let after: Vec<_> = futures_util::future::join_all(
        ["counter", "plain", "opaque"].map(|name| stored(&storage, name, 3)),
    )
    .await;
    // `PartialEq` says so; bytes (opaque) were encoded anyway to copy it.
    assert_eq!(before[0], after[0], "counter: same bytes and version");
    assert_eq!(before[2], after[2], "opaque: same bytes and version");
    // Clone-only: put back as it is rather than encoded twice to compare.
    let (Some((bytes_before, version_before)), Some((bytes_after, version_after))) =
        (&before[1], &after[1])
    else {
        panic!("plain is stored: {before:?} {after:?}");
    };
    assert_eq!(bytes_before, bytes_after, "plain: same bytes");
    assert!(
        version_after > version_before,
        "plain: put back, next version"
    );
}

#[tokio::test]
async fn a_write_from_elsewhere_in_between_is_a_conflict() {
    let storage = MemoryStorage::new();
    let manager = manager(&storage);
    bump(&manager, 5).await;
    let ctx = manager.begin(user(5)).await;
    ctx.counter().unwrap().apple = 100;
    let (_, version) = stored(&storage, "counter", 5).await.unwrap();
    let outcomes = storage
        .write(&[Write::Put {
            key: key("counter", 5),
            value: Bytes::from_static(br#"{"apple":7,"name":"other"}"#),
            expected_version: Some(version),
            ttl: None,
        }])
        .await
        .unwrap();
    assert!(matches!(outcomes[..], [WriteOutcome::Written { .. }]));
    let committed = ctx.commit(HandlerOutcome::Succeeded).await;
    assert!(
        matches!(committed, Err(Error::Conflict { .. })),
        "{committed:?}"
    );
    let (bytes, _) = stored(&storage, "counter", 5).await.unwrap();
    assert_eq!(&bytes[..], br#"{"apple":7,"name":"other"}"#);
}

mod round_trip {
    use super::*;

    /// Encodes, but its bytes do not decode: Redis could never load it.
    #[derive(Session, Serialize, Deserialize, Debug, Default, Clone)]
    #[session(key = "broken")]
    struct Broken {
        apple: u32,
        #[serde(skip_serializing)]
        #[allow(dead_code)]
        secret: u32,
    }

    /// Decodes to another value: a field the codec skips.
    #[derive(Session, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
    #[session(key = "lossy")]
    struct Lossy {
        apple: u32,
        #[serde(skip)]
        cache: Vec<u32>,
    }

    #[tokio::test]
    async fn a_type_that_redis_could_not_keep_is_refused_at_commit() {
        let storage = MemoryStorage::new();
        let manager = SessionManager::builder()
            .storage(storage.clone())
            .register::<Broken>()
            .register::<Lossy>()
            .build()
            .unwrap();
        let ctx = manager.begin(user(1)).await;
        ctx.broken().unwrap().apple = 1;
        let committed = ctx.commit(HandlerOutcome::Succeeded).await;
        let Err(Error::RoundTrip {
            session,
            type_name,
            codec,
            ..
        }) = &committed
        else {
            panic!("{committed:?}");
        };
        assert_eq!((*session, *codec), ("broken", "json"));
        assert!(type_name.ends_with("Broken"), "{type_name}");
        let message = committed.unwrap_err().to_string();
        assert!(message.contains("do not decode"), "{message}");
        assert_eq!(stored(&storage, "broken", 1).await, None);

        let ctx = manager.begin(user(1)).await;
        ctx.lossy().unwrap().cache.push(1);
        let committed = ctx.commit(HandlerOutcome::Succeeded).await;
        let message = committed.unwrap_err().to_string();
        assert!(message.contains("different value"), "{message}");
        assert_eq!(stored(&storage, "lossy", 1).await, None);

        // What survives the round trip is written.
        let ctx = manager.begin(user(1)).await;
        ctx.lossy().unwrap().apple = 2;
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        let (bytes, _) = stored(&storage, "lossy", 1).await.unwrap();
        assert_eq!(&bytes[..], br#"{"apple":2}"#);
    }
}
