//! Typed schema migrations over every storage: records written by older
//! builds of a session type (each build declared here as a type of its own,
//! under the same session name) read as the current type, are written back
//! once, and stay in place whenever they cannot be moved forward.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tg_session::codec::{split_schema_version, with_schema_version};
use tg_session::storage::SharedStorage;
use tg_session::storage::{Write, WriteOutcome};
use tg_session::{Error, MigrationError, SavePolicy, Session, SessionManager};

use super::counting::CountingStorage;
use super::{ok, private, stored, unique_prefix};

/// Generates one `#[tokio::test]` per migration behaviour over `$factory`.
#[macro_export]
macro_rules! migration_suite {
    ($factory:path) => {
        $crate::migration_suite!(@tests $factory;
            records_of_older_builds_read_as_the_current_type,
            untagged_records_read_as_the_oldest_shape,
            a_migrated_record_is_written_once_then_read_without_migrating,
            save_writes_a_migrated_record_at_once,
            a_failing_migration_is_an_error_and_keeps_the_bytes,
            reset_policy_never_drops_a_record_that_fails_to_migrate,
            a_newer_version_is_an_error_and_keeps_the_bytes,
            migrations_work_with_message_pack,
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::suite::migrations::$name($factory().await).await;
            }
        )*
    };
}

/// The shapes the pantry had, as the builds that wrote them declared them.
pub mod shapes {
    use super::*;

    /// The seed's counter, as the first build wrote it: no version at all.
    pub mod unversioned {
        use super::*;

        #[derive(Session, Serialize, Deserialize, Debug, PartialEq, Clone)]
        #[session(key = "pantry", lazy)]
        pub struct Pantry {
            #[session(default = 1)]
            pub apple: u32,
        }
    }

    /// The first shape again, from a build that started tagging records.
    pub mod v1 {
        use super::*;

        #[derive(Session, Serialize, Deserialize, Debug, PartialEq, Clone)]
        #[session(key = "pantry", lazy, version = 1)]
        pub struct Pantry {
            #[session(default = 1)]
            pub apple: u32,
        }
    }

    /// The second build: apples and pears (a count that can go negative).
    pub mod v2 {
        use super::*;

        #[derive(Session, Serialize, Deserialize, Debug, PartialEq, Clone)]
        #[session(key = "pantry", lazy, version = 2, migrate(from = PantryV1, version = 1))]
        pub struct Pantry {
            #[session(default = 1)]
            pub apples: u32,
            pub pears: i64,
        }

        impl From<PantryV1> for Pantry {
            fn from(old: PantryV1) -> Self {
                Self {
                    apples: old.apple,
                    pears: 0,
                }
            }
        }
    }

    /// Version 1's shape, as later builds keep it to read old records.
    #[derive(Serialize, Deserialize, Debug)]
    pub struct PantryV1 {
        pub apple: u32,
    }

    /// Version 2's shape.
    #[derive(Serialize, Deserialize, Debug)]
    pub struct PantryV2 {
        pub apples: u32,
        pub pears: i64,
    }

    impl From<PantryV1> for PantryV2 {
        fn from(old: PantryV1) -> Self {
            Self {
                apples: old.apple,
                pears: 0,
            }
        }
    }

    /// The current build: any fruit, counted in a map.
    #[derive(Session, Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[session(
        key = "pantry",
        lazy,
        version = 3,
        migrate(from = PantryV1, version = 1),
        migrate(from = PantryV2, version = 2, with = fruit_from_v2)
    )]
    pub struct Pantry {
        pub fruit: BTreeMap<String, u32>,
    }

    /// Fails on a negative pear count rather than guessing one.
    pub fn fruit_from_v2(old: PantryV2) -> Result<Pantry, String> {
        let pears = u32::try_from(old.pears)
            .map_err(|_| format!("{} pears cannot be counted", old.pears))?;
        Ok(Pantry::of(old.apples, pears))
    }

    impl Pantry {
        pub fn of(apples: u32, pears: u32) -> Self {
            Self {
                fruit: [("apple".to_owned(), apples), ("pear".to_owned(), pears)].into(),
            }
        }
    }

    /// The current build of a bot that opted in to resetting undecodable records.
    pub mod lenient {
        use super::*;

        #[derive(Session, Serialize, Deserialize, Debug, PartialEq, Clone)]
        #[session(
            key = "pantry",
            lazy,
            on_decode_error = "reset",
            version = 3,
            migrate(from = PantryV1, version = 1),
            migrate(from = PantryV2, version = 2, with = from_v2)
        )]
        pub struct Pantry {
            pub fruit: BTreeMap<String, u32>,
        }

        pub fn from_v2(old: PantryV2) -> Result<Pantry, String> {
            super::fruit_from_v2(old).map(|current| Pantry {
                fruit: current.fruit,
            })
        }
    }
}

use shapes::Pantry;

fn manager(storage: SharedStorage, prefix: &str) -> SessionManager {
    SessionManager::builder()
        .storage(storage)
        .prefix(prefix)
        .save_policy(SavePolicy::OnSuccess)
        .build()
        .expect("manager")
}

/// One update of user `user` that sets their pantry of type `T` to `value`.
async fn write_as<T: Session>(manager: &SessionManager, user: u64, value: T) {
    let ctx = manager.begin(private(user)).await;
    *ctx.load::<T>().await.expect("load") = value;
    ok(&ctx).await;
}

/// One read-only update of user `user`'s pantry as `T`.
async fn read_as<T: Session + Clone>(manager: &SessionManager, user: u64) -> Result<T, Error> {
    let ctx = manager.begin(private(user)).await;
    let value = ctx.load::<T>().await.map(|session| (*session).clone());
    ok(&ctx).await;
    value
}

async fn put_raw(storage: &SharedStorage, prefix: &str, user: u64, value: Vec<u8>) -> Bytes {
    let value = Bytes::from(value);
    let put = Write::Put {
        key: tg_session::StorageKey::new(Some(prefix), None, "pantry", &user.to_string()),
        value: value.clone(),
        expected_version: None,
        ttl: None,
    };
    let outcome = storage.write(&[put]).await.expect("write");
    assert!(
        matches!(outcome[..], [WriteOutcome::Written { .. }]),
        "{outcome:?}"
    );
    value
}

async fn raw(storage: &SharedStorage, prefix: &str, user: u64) -> Option<Bytes> {
    stored(storage, prefix, "pantry", &user.to_string()).await
}

/// The current build's record of `value`: the envelope with version 3 and
/// the JSON payload.
fn current_record(value: &Pantry) -> Vec<u8> {
    with_schema_version(3, &serde_json::to_vec(value).expect("json"))
}

pub async fn records_of_older_builds_read_as_the_current_type(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager(storage.clone(), &prefix);
    write_as(&manager, 1, shapes::v1::Pantry { apple: 5 }).await;
    write_as(
        &manager,
        2,
        shapes::v2::Pantry {
            apples: 6,
            pears: 2,
        },
    )
    .await;
    let (tag, payload) = raw(&storage, &prefix, 1)
        .await
        .map(|bytes| {
            let (tag, payload) = split_schema_version(&bytes);
            (tag, payload.to_vec())
        })
        .expect("v1 stored");
    assert_eq!(
        (tag, &payload[..]),
        (Some(1), &br#"{"apple":5}"#[..]),
        "a versioned build tags its records"
    );

    assert_eq!(
        read_as::<Pantry>(&manager, 1).await.ok(),
        Some(Pantry::of(5, 0))
    );
    assert_eq!(
        read_as::<Pantry>(&manager, 2).await.ok(),
        Some(Pantry::of(6, 2))
    );
    for (user, value) in [(1, Pantry::of(5, 0)), (2, Pantry::of(6, 2))] {
        assert_eq!(
            raw(&storage, &prefix, user).await.as_deref(),
            Some(&current_record(&value)[..]),
            "user {user}: written back in the current shape"
        );
    }
}

pub async fn untagged_records_read_as_the_oldest_shape(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager(storage.clone(), &prefix);
    write_as(&manager, 1, shapes::unversioned::Pantry { apple: 7 }).await;
    assert_eq!(
        raw(&storage, &prefix, 1).await.as_deref(),
        Some(&br#"{"apple":7}"#[..]),
        "a type without a version writes the codec's bytes alone, as before versions existed"
    );
    assert_eq!(
        read_as::<Pantry>(&manager, 1).await.ok(),
        Some(Pantry::of(7, 0))
    );
    assert_eq!(
        read_as::<shapes::v2::Pantry>(&manager, 3).await.ok(),
        Some(shapes::v2::Pantry {
            apples: 1,
            pears: 0
        }),
        "nothing stored: the initial value, not a migration"
    );
}

pub async fn a_migrated_record_is_written_once_then_read_without_migrating(storage: SharedStorage) {
    let counting = CountingStorage::new(storage.clone());
    let prefix = unique_prefix();
    let manager = manager(counting.clone(), &prefix);
    write_as(&manager, 1, shapes::v1::Pantry { apple: 3 }).await;
    let old = raw(&storage, &prefix, 1).await.expect("stored");

    counting.reset();
    assert_eq!(
        read_as::<Pantry>(&manager, 1).await.ok(),
        Some(Pantry::of(3, 0))
    );
    assert_eq!(
        counting
            .written_records
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a read-only handler still writes the migrated record back"
    );
    let migrated = raw(&storage, &prefix, 1).await.expect("stored");
    assert_ne!(migrated, old);
    assert_eq!(split_schema_version(&migrated).0, Some(3));

    counting.reset();
    for _ in 0..3 {
        assert_eq!(
            read_as::<Pantry>(&manager, 1).await.ok(),
            Some(Pantry::of(3, 0))
        );
    }
    assert_eq!(
        counting
            .written_records
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a current record is not migrated again"
    );
    assert_eq!(raw(&storage, &prefix, 1).await, Some(migrated));
}

pub async fn save_writes_a_migrated_record_at_once(storage: SharedStorage) {
    let counting = CountingStorage::new(storage.clone());
    let prefix = unique_prefix();
    let manager = manager(counting.clone(), &prefix);
    write_as(&manager, 1, shapes::v1::Pantry { apple: 4 }).await;
    counting.reset();

    let ctx = manager.begin(private(1)).await;
    let mut pantry = ctx.load::<Pantry>().await.expect("migrates");
    let before = pantry.version();
    pantry.save().await.expect("save");
    assert_ne!(pantry.version(), before, "saved under a new version");
    assert_eq!(
        raw(&storage, &prefix, 1).await.as_deref(),
        Some(&current_record(&Pantry::of(4, 0))[..]),
        "written by `save`, before the handler returns"
    );
    drop(pantry);
    ok(&ctx).await;
    assert_eq!(
        counting
            .written_records
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the commit does not write it again"
    );
}

pub async fn a_failing_migration_is_an_error_and_keeps_the_bytes(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = SessionManager::builder()
        .storage(storage.clone())
        .prefix(&prefix)
        .save_policy(SavePolicy::Always)
        .build()
        .expect("manager");
    // The conversion refuses: version 2 with a negative pear count.
    write_as(
        &manager,
        1,
        shapes::v2::Pantry {
            apples: 1,
            pears: -3,
        },
    )
    .await;
    let refused = raw(&storage, &prefix, 1).await.expect("stored");
    // The old shape does not decode: version 1's payload is not a V1 pantry.
    let garbled = put_raw(
        &storage,
        &prefix,
        2,
        with_schema_version(1, br#"{"pear":1}"#),
    )
    .await;

    let error = read_as::<Pantry>(&manager, 1).await.expect_err("refused");
    assert!(
        matches!(
            &error,
            Error::Migration {
                session: "pantry",
                stored_version: Some(2),
                target_version: 3,
                source,
                ..
            } if matches!(**source, MigrationError::Convert { version: 2, .. })
        ),
        "{error:?}"
    );
    let message = error.to_string();
    for part in [
        "schema version 2",
        "version 3",
        "-3 pears cannot be counted",
        "Pantry",
        "left in place",
    ] {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }

    let error = read_as::<Pantry>(&manager, 2).await.expect_err("no V1");
    assert!(
        matches!(
            &error,
            Error::Migration {
                stored_version: Some(1),
                source,
                ..
            } if matches!(**source, MigrationError::Decode { version: 1, .. })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("PantryV1"), "{error}");

    assert_eq!(raw(&storage, &prefix, 1).await, Some(refused));
    assert_eq!(raw(&storage, &prefix, 2).await, Some(garbled));
}

pub async fn reset_policy_never_drops_a_record_that_fails_to_migrate(storage: SharedStorage) {
    use shapes::lenient::Pantry as Lenient;

    let prefix = unique_prefix();
    let manager = manager(storage.clone(), &prefix);
    let old = put_raw(&storage, &prefix, 1, with_schema_version(1, b"not json")).await;
    let error = read_as::<Lenient>(&manager, 1).await.expect_err("kept");
    assert!(matches!(error, Error::Migration { .. }), "{error:?}");
    assert_eq!(raw(&storage, &prefix, 1).await, Some(old));

    // Bytes of the current version that do not decode are what the policy
    // is about: they reset, and the handler's change replaces them.
    put_raw(&storage, &prefix, 2, with_schema_version(3, b"not json")).await;
    let ctx = manager.begin(private(2)).await;
    let mut pantry = ctx.load::<Lenient>().await.expect("reset");
    assert!(pantry.fruit.is_empty(), "{pantry:?}");
    pantry.fruit.insert("fig".into(), 1);
    drop(pantry);
    ok(&ctx).await;
    assert_eq!(
        read_as::<Lenient>(&manager, 2).await.ok().map(|p| p.fruit),
        Some([("fig".to_owned(), 1)].into())
    );
}

pub async fn a_newer_version_is_an_error_and_keeps_the_bytes(storage: SharedStorage) {
    let prefix = unique_prefix();
    let manager = manager(storage.clone(), &prefix);
    let newer = put_raw(&storage, &prefix, 1, with_schema_version(4, b"{}")).await;

    let error = read_as::<Pantry>(&manager, 1).await.expect_err("newer");
    assert!(
        matches!(
            error,
            Error::NewerSchema {
                stored_version: 4,
                known_version: Some(3),
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("version 4") && message.contains("up to version 3"),
        "{message}"
    );

    // A build from before versions existed (a deeper rollback) refuses too.
    write_as(&manager, 2, Pantry::of(1, 1)).await;
    let current = raw(&storage, &prefix, 2).await.expect("stored");
    let error = read_as::<shapes::unversioned::Pantry>(&manager, 2)
        .await
        .map(|p| p.apple)
        .expect_err("tagged");
    assert!(
        matches!(
            error,
            Error::NewerSchema {
                stored_version: 3,
                known_version: None,
                ..
            }
        ),
        "{error:?}"
    );

    assert_eq!(raw(&storage, &prefix, 1).await, Some(newer));
    assert_eq!(raw(&storage, &prefix, 2).await, Some(current));
}

mod msgpack {
    use super::*;

    /// The first build, in MessagePack.
    pub mod v1 {
        use super::*;

        #[derive(Session, Serialize, Deserialize, Debug, PartialEq, Clone)]
        #[session(key = "pantry", lazy, codec = tg_session::MessagePack)]
        pub struct Pantry {
            #[session(default = 1)]
            pub apple: u32,
        }
    }

    #[derive(Session, Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[session(
        key = "pantry",
        lazy,
        codec = tg_session::MessagePack,
        version = 3,
        migrate(from = shapes::PantryV1, version = 1),
        migrate(from = shapes::PantryV2, version = 2, with = from_v2)
    )]
    pub struct Pantry {
        pub fruit: BTreeMap<String, u32>,
    }

    fn from_v2(old: shapes::PantryV2) -> Result<Pantry, String> {
        shapes::fruit_from_v2(old).map(|current| Pantry {
            fruit: current.fruit,
        })
    }
}

pub async fn migrations_work_with_message_pack(storage: SharedStorage) {
    {
        let prefix = unique_prefix();
        let manager = manager(storage.clone(), &prefix);
        write_as(&manager, 1, msgpack::v1::Pantry { apple: 8 }).await;
        let untagged = raw(&storage, &prefix, 1).await.expect("stored");
        assert_eq!(split_schema_version(&untagged).0, None);
        let v2 = rmp_serde::to_vec_named(&shapes::PantryV2 {
            apples: 2,
            pears: 5,
        })
        .expect("msgpack");
        put_raw(&storage, &prefix, 2, with_schema_version(2, &v2)).await;
        let newer = put_raw(&storage, &prefix, 3, with_schema_version(9, &v2)).await;

        let read = read_as::<msgpack::Pantry>(&manager, 1).await.expect("v1");
        assert_eq!(read.fruit, Pantry::of(8, 0).fruit);
        let read = read_as::<msgpack::Pantry>(&manager, 2).await.expect("v2");
        assert_eq!(read.fruit, Pantry::of(2, 5).fruit);

        let written = raw(&storage, &prefix, 2).await.expect("written back");
        let (tag, payload) = split_schema_version(&written);
        assert_eq!(tag, Some(3));
        let decoded: msgpack::Pantry = rmp_serde::from_slice(payload).expect("msgpack payload");
        assert_eq!(decoded.fruit, Pantry::of(2, 5).fruit);

        let error = read_as::<msgpack::Pantry>(&manager, 3)
            .await
            .expect_err("newer");
        assert!(
            matches!(
                error,
                Error::NewerSchema {
                    stored_version: 9,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(raw(&storage, &prefix, 3).await, Some(newer));
    }
}
