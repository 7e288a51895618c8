//! The data operations over every storage that has them (issue 10 item 2):
//! scans, a user's or a chat's erasure, copies. Run by [`data_suite!`](crate::data_suite) from
//! the test file of each storage.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use tg_session::data::{CopyOptions, Scanner, Subject, copy};
use tg_session::storage::SharedStorage;
use tg_session::storage::{
    KeyPrefix, Lease, LeaseOwner, LeasedLoad, Record, Storage, Write, WriteOutcome,
};
use tg_session::{MemoryStorage, SessionManager, StorageKey};

use super::types::*;
use super::unique_prefix;

/// Generates one `#[tokio::test]` per data operation, over storages from
/// `$factory` (an `async fn() -> SharedStorage`); the copy tests take two.
#[macro_export]
macro_rules! data_suite {
    ($factory:path) => {
        mod data_ops {
            use super::*;
            $crate::data_suite!(@one $factory;
                scan_pages_cover_every_key_once_and_skip_leases,
                scans_select_by_prefix_and_scope,
                erasing_a_user_removes_exactly_their_records_in_every_chat,
                erasing_a_chat_removes_its_records_and_no_other_chat,
                overwriting_a_found_record_is_conditional,
            );
            $crate::data_suite!(@two $factory;
                copies_keep_values_versions_and_ttls_and_resume,
            );
        }
    };
    (@one $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::suite::data::$name($factory().await).await;
            }
        )*
    };
    (@two $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::suite::data::$name($factory().await, $factory().await).await;
            }
        )*
    };
}

/// Stores `value` under `key` as a new record; its version.
pub async fn put(
    storage: &dyn Storage,
    key: &StorageKey,
    value: &str,
    ttl: Option<Duration>,
) -> u64 {
    let write = Write::Put {
        key: key.clone(),
        value: Bytes::from(value.to_owned()),
        expected_version: None,
        ttl,
    };
    match storage.write(&[write]).await.expect("write")[..] {
        [WriteOutcome::Written { version }] => version,
        ref other => panic!("writing {key} answered {other:?}"),
    }
}

/// Every entry of a scan, page by page, checking each page's size.
pub async fn scan_all(
    storage: &dyn Storage,
    prefix: KeyPrefix,
    page: usize,
    with_values: bool,
) -> Vec<tg_session::storage::ScannedRecord> {
    let mut scanner = Scanner::new(storage, prefix).page_size(page);
    if with_values {
        scanner = scanner.with_values();
    }
    let mut all = Vec::new();
    let mut pages = 0;
    while let Some(entries) = scanner.next_page().await.expect("scan") {
        // Redis's `COUNT` is a hint: a page may run over by the keys of its
        // last `SCAN` step, which visits both tables of a keyspace being
        // rehashed (11 keys for a page of 5 was seen). Still a page, not
        // the whole keyspace.
        assert!(
            entries.len() <= 4 * page,
            "a page of {} for {page}",
            entries.len()
        );
        all.extend(entries);
        pages += 1;
        assert!(pages < 10_000, "the scan never ends");
    }
    all
}

fn keys_of(entries: &[tg_session::storage::ScannedRecord]) -> Vec<String> {
    entries.iter().map(|entry| entry.key.to_string()).collect()
}

pub async fn scan_pages_cover_every_key_once_and_skip_leases(storage: SharedStorage) {
    let prefix = unique_prefix();
    let mut expected = BTreeMap::new();
    for user in 0..37u64 {
        let key = StorageKey::new(Some(&prefix), None, "counter", &user.to_string());
        let version = put(&*storage, &key, &format!("{{\"apple\":{user}}}"), None).await;
        expected.insert(key.to_string(), version);
    }
    // A lease on a key with no record (a lease-only row in SQL, a `:lease`
    // key in Redis), and one on a record: neither adds a key to the scan.
    let owner = LeaseOwner::new();
    let leased = [
        StorageKey::new(Some(&prefix), None, "counter", "9999"),
        StorageKey::new(Some(&prefix), None, "counter", "3"),
    ];
    if let Some(leases) = storage.leases() {
        let lease = Lease {
            owner: &owner,
            ttl: Duration::from_secs(30),
        };
        let taken = leases.acquire(&leased, lease).await.expect("acquire");
        assert!(matches!(taken, LeasedLoad::Acquired(_)), "{taken:?}");
    }

    let entries = scan_all(&*storage, KeyPrefix::text(format!("{prefix}:")), 5, false).await;
    let keys = keys_of(&entries);
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "a key listed twice: {keys:?}");
    assert_eq!(
        distinct,
        expected.keys().collect::<BTreeSet<_>>(),
        "the scan listed other keys than the stored records"
    );
    assert!(entries.iter().all(|entry| entry.record.is_none()));

    let with_values = scan_all(&*storage, KeyPrefix::text(format!("{prefix}:")), 4, true).await;
    assert_eq!(with_values.len(), expected.len());
    for entry in &with_values {
        let record = entry.record.as_ref().expect("values asked for");
        assert_eq!(Some(&record.version), expected.get(entry.key.as_str()));
        let user = entry.key.scope_key();
        assert_eq!(record.value, Bytes::from(format!("{{\"apple\":{user}}}")));
        assert_eq!(entry.ttl, None, "stored without TTL");
    }
    if let Some(leases) = storage.leases() {
        leases
            .write_and_release(&[], &leased, &owner)
            .await
            .expect("release");
    }
}

pub async fn scans_select_by_prefix_and_scope(storage: SharedStorage) {
    let prefix = unique_prefix();
    let key = |name: &str, scope: &str| StorageKey::new(Some(&prefix), None, name, scope);
    let profiles = ["-100:1", "-100:2", "-1000:1", "-200:1"];
    for scope in profiles {
        put(&*storage, &key("profile", scope), "{}", None).await;
    }
    put(&*storage, &key("counter", "1"), "{}", None).await;
    // Wildcards of LIKE and of Redis patterns in a prefix are plain text.
    let odd = format!("{prefix}_%*");
    put(
        &*storage,
        &StorageKey::new(Some(&odd), None, "counter", "1"),
        "{}",
        None,
    )
    .await;

    let namespace = key("profile", "").namespace().to_owned();
    let all_profiles = scan_all(&*storage, KeyPrefix::scope(&namespace, ""), 2, false).await;
    let mut scopes: Vec<&str> = all_profiles.iter().map(|e| e.key.scope_key()).collect();
    scopes.sort_unstable();
    let mut want = profiles.to_vec();
    want.sort_unstable();
    assert_eq!(scopes, want);
    assert!(all_profiles.iter().all(|e| e.key.namespace() == namespace));

    let chat = scan_all(&*storage, KeyPrefix::scope(&namespace, "-100:"), 1, false).await;
    let mut keys = keys_of(&chat);
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            key("profile", "-100:1").to_string(),
            key("profile", "-100:2").to_string()
        ]
    );

    let everything = scan_all(&*storage, KeyPrefix::text(format!("{prefix}:")), 3, false).await;
    assert_eq!(
        everything.len(),
        profiles.len() + 1,
        "{:?}",
        keys_of(&everything)
    );
    let odd_only = scan_all(&*storage, KeyPrefix::text(format!("{odd}:")), 3, false).await;
    assert_eq!(keys_of(&odd_only), [format!("{odd}:counter:1")]);
}

/// A manager knowing the suite's types of every scope, under `prefix`: a
/// lazy one first, which `find` still lists first.
fn data_manager(storage: &SharedStorage, prefix: &str) -> SessionManager {
    SessionManager::builder()
        .storage(storage.clone())
        .prefix(prefix)
        .register::<Profile>()
        .register::<Counter>()
        .register::<ChatTopic>()
        .register::<ThreadNote>()
        .register::<Business>()
        .build()
        .expect("distinct names")
}

/// Records of users 42, 7 and 142 in chats -100, -1000 and -200, of every scope.
async fn populate(storage: &SharedStorage, prefix: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let scopes: [(&str, &[&str]); 4] = [
        ("counter", &["42", "7", "142"]),
        ("chat_topic", &["-100", "-1000", "42"]),
        (
            "profile",
            &[
                "-100:42", "-1000:42", "42:42", "-100:7", "-100:142", "-200:7",
            ],
        ),
        ("thread_note", &["-100:main", "-100:5", "-1000:main"]),
    ];
    for (name, scopes) in scopes {
        for scope in scopes {
            let key = StorageKey::new(Some(prefix), None, name, scope);
            put(&**storage, &key, "{}", None).await;
            all.insert(key.to_string());
        }
    }
    all
}

async fn remaining(storage: &SharedStorage, prefix: &str) -> BTreeSet<String> {
    let entries = scan_all(&**storage, KeyPrefix::text(format!("{prefix}:")), 7, false).await;
    keys_of(&entries).into_iter().collect()
}

pub async fn erasing_a_user_removes_exactly_their_records_in_every_chat(storage: SharedStorage) {
    let prefix = unique_prefix();
    let all = populate(&storage, &prefix).await;
    let data = data_manager(&storage, &prefix).data().page_size(2);
    let k = |name: &str, scope: &str| StorageKey::new(Some(&prefix), None, name, scope).to_string();
    let theirs: BTreeSet<String> = [
        k("counter", "42"),
        k("profile", "-100:42"),
        k("profile", "-1000:42"),
        k("profile", "42:42"),
    ]
    .into();

    let found = data.find(Subject::User(42)).await.expect("find");
    let found_keys: BTreeSet<String> = found.records.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(found_keys, theirs);
    let sessions: Vec<&str> = found.records.iter().map(|r| r.session.as_str()).collect();
    assert_eq!(
        sessions,
        ["profile", "profile", "profile", "counter"],
        "by session type in registration order"
    );
    assert_eq!(found.unsearchable, ["business"]);

    let erasure = data.erase(Subject::User(42)).await.expect("erase");
    let removed: BTreeSet<String> = erasure.removed.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(removed, theirs, "what was removed");
    assert!(erasure.busy.is_empty());
    let left = remaining(&storage, &prefix).await;
    assert_eq!(
        left,
        all.difference(&theirs).cloned().collect(),
        "what is left"
    );
    assert!(
        data.find(Subject::User(42))
            .await
            .expect("find")
            .records
            .is_empty()
    );
}

pub async fn erasing_a_chat_removes_its_records_and_no_other_chat(storage: SharedStorage) {
    let prefix = unique_prefix();
    let all = populate(&storage, &prefix).await;
    let data = data_manager(&storage, &prefix).data();
    let k = |name: &str, scope: &str| StorageKey::new(Some(&prefix), None, name, scope).to_string();
    let its: BTreeSet<String> = [
        k("chat_topic", "-100"),
        k("profile", "-100:42"),
        k("profile", "-100:7"),
        k("profile", "-100:142"),
        k("thread_note", "-100:main"),
        k("thread_note", "-100:5"),
    ]
    .into();
    let erasure = data.erase(Subject::Chat(-100)).await.expect("erase");
    let removed: BTreeSet<String> = erasure.removed.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(removed, its);
    assert_eq!(
        remaining(&storage, &prefix).await,
        all.difference(&its).cloned().collect()
    );
}

/// Copies `storage` → memory, in slices that resume, then memory → `other`
/// (`storage` emptied first), and checks every record arrives with its
/// value, its version and its remaining TTL.
pub async fn copies_keep_values_versions_and_ttls_and_resume(
    storage: SharedStorage,
    other: SharedStorage,
) {
    let prefix = unique_prefix();
    let selected = KeyPrefix::text(format!("{prefix}:"));
    let mut expected: BTreeMap<String, (Record, Option<Duration>)> = BTreeMap::new();
    for i in 0..23u32 {
        let key = StorageKey::new(Some(&prefix), None, "profile", &format!("-100:{i}"));
        let ttl = i
            .is_multiple_of(2)
            .then(|| Duration::from_secs(3600 + u64::from(i)));
        let value = format!("{{\"name\":\"user {i}\"}}");
        let version = put(&*storage, &key, &value, ttl).await;
        let record = Record {
            value: Bytes::from(value),
            version,
        };
        expected.insert(key.to_string(), (record, ttl));
    }

    let memory = MemoryStorage::new();
    let options = |resume_from| CopyOptions {
        prefix: selected.clone(),
        page_size: 4,
        resume_from,
        max_pages: Some(2),
    };
    // Two pages, then resume from the cursor until done.
    let first = copy(&*storage, &memory, options(None)).await.expect("copy");
    assert!(
        first.resume_from.is_some(),
        "23 records in pages of 4 take more than 2 pages"
    );
    assert!(first.copied > 0 && first.copied <= 16, "{first:?}");
    let mut copied = first.copied;
    let mut cursor = first.resume_from;
    while let Some(at) = cursor {
        let next = copy(&*storage, &memory, options(Some(at)))
            .await
            .expect("copy");
        assert_eq!(next.failed, 0);
        copied += next.copied;
        cursor = next.resume_from;
    }
    assert_eq!(copied, expected.len() as u64, "every record copied once");
    let again = copy(
        &*storage,
        &memory,
        CopyOptions {
            max_pages: None,
            ..options(None)
        },
    )
    .await
    .expect("copy again");
    assert_eq!(
        (again.copied, again.skipped),
        (0, expected.len() as u64),
        "{again:?}"
    );

    // The factory may hand out the same database twice: empty the source
    // first, so the second copy has everything to write either way.
    let deletes: Vec<Write> = expected
        .keys()
        .map(|key| Write::Delete {
            key: StorageKey::parse(key),
        })
        .collect();
    let deleted = storage.write(&deletes).await.expect("delete the originals");
    assert!(
        deleted
            .iter()
            .all(|outcome| *outcome == WriteOutcome::Deleted),
        "{deleted:?}"
    );
    assert!(
        scan_all(&*storage, selected.clone(), 10, false)
            .await
            .is_empty()
    );

    let to_other = copy(
        &memory,
        &*other,
        CopyOptions {
            max_pages: None,
            ..options(None)
        },
    )
    .await
    .expect("copy to the other storage");
    assert_eq!(to_other.copied, expected.len() as u64, "{to_other:?}");

    for target in [&memory as &dyn Storage, &*other] {
        let entries = scan_all(target, selected.clone(), 10, true).await;
        assert_eq!(entries.len(), expected.len(), "in {}", target.name());
        for entry in entries {
            let (record, ttl) = &expected[entry.key.as_str()];
            assert_eq!(
                entry.record.as_ref(),
                Some(record),
                "{} in {}",
                entry.key,
                target.name()
            );
            match (ttl, entry.ttl) {
                (None, None) => {}
                (Some(ttl), Some(left)) => assert!(
                    left <= *ttl && *ttl - left < Duration::from_secs(30),
                    "{} has {left:?} left of {ttl:?} in {}",
                    entry.key,
                    target.name()
                ),
                (ttl, left) => panic!("{}: TTL {ttl:?} arrived as {left:?}", entry.key),
            }
        }
        // The copies are ordinary records: a later update writes on from them.
        let key = StorageKey::new(Some(&prefix), None, "profile", "-100:1");
        let (record, _) = &expected[key.as_str()];
        let loaded = target.load(std::slice::from_ref(&key)).await.expect("load");
        assert_eq!(loaded[0].as_ref(), Some(record));
    }
}

pub async fn overwriting_a_found_record_is_conditional(storage: SharedStorage) {
    let prefix = unique_prefix();
    populate(&storage, &prefix).await;
    let data = data_manager(&storage, &prefix).data();
    let found = data.find(Subject::User(7)).await.expect("find");
    let counter = found
        .records
        .iter()
        .find(|record| record.session == "counter")
        .expect("user 7 has a counter");
    let value = Bytes::from_static(b"{\"apple\":99}");
    let outcome = data
        .overwrite(
            "counter",
            &counter.key,
            value.clone(),
            Some(counter.record.version),
            None,
        )
        .await
        .expect("overwrite");
    let WriteOutcome::Written { version } = outcome else {
        panic!("overwrite at the version read answered {outcome:?}");
    };
    assert!(version > counter.record.version);
    let stale = data
        .overwrite(
            "counter",
            &counter.key,
            value.clone(),
            Some(counter.record.version),
            None,
        )
        .await
        .expect("overwrite");
    assert!(matches!(stale, WriteOutcome::Conflict(_)), "{stale:?}");
    let manager = data_manager(&storage, &prefix);
    let ctx = manager.begin(super::private(7)).await;
    assert_eq!(
        ctx.counter().expect("counter").apple,
        99,
        "the runtime reads the overwrite"
    );
    let unknown = data
        .overwrite("nope", &counter.key, value, None, None)
        .await;
    let error = unknown.expect_err("no such session type").to_string();
    assert!(
        error.contains("no session type `nope`") && error.contains("counter"),
        "{error}"
    );
}
