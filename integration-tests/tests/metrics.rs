//! The `metrics` feature: what real updates record, read back from a
//! Prometheus recorder.
//!
//! Each test installs its own recorder for its thread only
//! (`metrics::with_local_recorder`) and runs on a current-thread runtime, so
//! the tasks the runtime spawns (the commit's write-back, lease calls)
//! record into it too, and tests running in parallel do not see each
//! other's numbers: every value is asserted exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tg_session::storage::{SharedStorage, Write};
use tg_session::{
    Error, HandlerOutcome, MemoryStorage, RedisStorage, SessionManager, StorageKey, UpdateIds,
};
use tg_session_test_kit::redis_server::RedisServer;
use tg_session_test_kit::suite::migrations::shapes;
use tg_session_test_kit::suite::types::*;

/// Histogram buckets, as README's snippet sets them.
const BUCKETS: [f64; 6] = [0.0005, 0.001, 0.005, 0.025, 0.1, 1.0];

/// The text a Prometheus scrape of the test's recorder returns.
struct Scrape(String);

impl Scrape {
    /// The value of the series `series` (name and labels as rendered), if
    /// recorded.
    fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.parse().expect("a number"))
        })
    }

    fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no series `{series}` in\n{}", self.0))
    }

    /// Every series of `name` (counter or histogram `_count`), to check none
    /// other than the asserted ones was recorded.
    fn series_of(&self, name: &str) -> Vec<&str> {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
            })
            .collect()
    }
}

/// Runs `test` with a recorder of its own and returns what it recorded.
fn recorded<F, Fut>(test: F) -> Scrape
where
    F: FnOnce(PrometheusHandle) -> Fut,
    Fut: Future<Output = ()>,
{
    let recorder = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let future = test(handle.clone());
    metrics::with_local_recorder(&recorder, || runtime.block_on(future));
    Scrape(handle.render())
}

fn user(id: u64) -> UpdateIds {
    UpdateIds::new().user(id).chat(id as i64)
}

fn manager(storage: SharedStorage, prefix: &str) -> SessionManager {
    SessionManager::builder()
        .storage(storage)
        .prefix(prefix)
        .register::<Counter>()
        .build()
        .unwrap()
}

async fn increment(manager: &SessionManager, ids: UpdateIds) -> Result<u32, Error> {
    let ctx = manager.begin(ids).await;
    let apple = {
        let mut counter = ctx.counter()?;
        counter.apple += 1;
        counter.apple
    };
    ctx.commit(HandlerOutcome::Succeeded).await?;
    Ok(apple)
}

/// Yields to the runtime's other tasks until `series` is recorded: the
/// point where another task has started to wait.
async fn until_recorded(handle: &PrometheusHandle, series: &str) {
    while Scrape(handle.render()).get(series).is_none() {
        tokio::task::yield_now().await;
    }
}

const COUNTER_IN_MEMORY: &str = r#"{session="counter",storage="memory"}"#;

#[test]
fn read_modify_write_counts_loads_writes_and_deletes() {
    let scrape = recorded(|_| async {
        let manager = manager(Arc::new(MemoryStorage::new()), "rmw");
        assert_eq!(increment(&manager, user(1)).await.unwrap(), 2);
        assert_eq!(increment(&manager, user(1)).await.unwrap(), 3);
        // Read-only: a load and no write.
        let ctx = manager.begin(user(1)).await;
        assert_eq!(ctx.counter().unwrap().apple, 3);
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        // `clear` deletes now.
        let ctx = manager.begin(user(1)).await;
        ctx.counter().unwrap().clear().await.unwrap();
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
    });
    assert_eq!(
        scrape.value(&format!("tg_session_loads_total{COUNTER_IN_MEMORY}")),
        4.0
    );
    assert_eq!(
        scrape.value(&format!("tg_session_writes_total{COUNTER_IN_MEMORY}")),
        2.0
    );
    assert_eq!(
        scrape.value(&format!("tg_session_deletes_total{COUNTER_IN_MEMORY}")),
        1.0
    );
    // One batched load per update; a commit only where there was a write.
    assert_eq!(
        scrape.value(r#"tg_session_load_duration_seconds_count{storage="memory"}"#),
        4.0
    );
    assert_eq!(
        scrape.value(r#"tg_session_commit_duration_seconds_count{storage="memory"}"#),
        2.0
    );
    assert!(
        scrape
            .0
            .contains("# HELP tg_session_loads_total Sessions read from their storage")
    );
    for quiet in [
        "tg_session_conflicts_total",
        "tg_session_lock_waits_total",
        "tg_session_lock_timeouts_total",
        "tg_session_decode_errors_total",
        "tg_session_storage_errors_total",
        "tg_session_evictions_total",
    ] {
        assert_eq!(scrape.series_of(quiet), Vec::<&str>::new(), "{quiet}");
    }
}

#[test]
fn a_bounded_memory_store_counts_the_records_it_evicts() {
    let scrape = recorded(|_| async {
        let manager = manager(Arc::new(MemoryStorage::with_capacity(2)), "bounded");
        for id in [1, 2, 1, 3, 4] {
            increment(&manager, user(id)).await.unwrap();
        }
        // Users 1 and 2 fill it; user 3 evicts user 2 (idle since its
        // first update, where user 1 came back), user 4 evicts user 1;
        // user 3 is kept, and user 2, back, evicts user 4 and starts over.
        assert_eq!(increment(&manager, user(3)).await.unwrap(), 3);
        assert_eq!(increment(&manager, user(2)).await.unwrap(), 2);
    });
    assert_eq!(
        scrape.series_of("tg_session_evictions_total"),
        [r#"tg_session_evictions_total{storage="memory"} 3"#]
    );
    assert!(
        scrape
            .0
            .contains("# HELP tg_session_evictions_total Records a bounded memory store evicted")
    );
}

#[test]
fn another_writer_in_between_counts_a_conflict_by_cause() {
    let scrape = recorded(|_| async {
        // A writer that is no update (an operator's tool): it does not wait
        // for the key, and the memory storage has no leases.
        let storage: SharedStorage = Arc::new(MemoryStorage::new());
        let first = manager(storage.clone(), "conflict");
        increment(&first, user(1)).await.unwrap();
        let slow = first.begin(user(1)).await;
        slow.counter().unwrap().apple += 10;
        let key = StorageKey::new(Some("conflict"), None, "counter", "1");
        let record = storage.load(std::slice::from_ref(&key)).await.unwrap()[0]
            .clone()
            .unwrap();
        let rewrite = Write::Put {
            key,
            value: record.value,
            expected_version: Some(record.version),
            ttl: None,
        };
        storage.write(&[rewrite]).await.unwrap();
        let error = slow.commit(HandlerOutcome::Succeeded).await.unwrap_err();
        assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
    });
    assert_eq!(
        scrape.series_of("tg_session_conflicts_total"),
        [
            r#"tg_session_conflicts_total{session="counter",storage="memory",cause="newer_version"} 1"#
        ]
    );
    assert_eq!(
        scrape.value(&format!("tg_session_writes_total{COUNTER_IN_MEMORY}")),
        1.0,
        "the first update's write; the raw one is no session's"
    );
}

#[test]
fn two_concurrent_updates_of_one_user_count_a_lock_wait() {
    let scrape = recorded(|handle| async move {
        let manager = manager(Arc::new(MemoryStorage::new()), "wait");
        let first = manager.begin(user(1)).await;
        first.counter().unwrap().apple += 1;
        let second = tokio::spawn({
            let manager = manager.clone();
            async move { increment(&manager, user(1)).await }
        });
        until_recorded(
            &handle,
            r#"tg_session_lock_waits_total{session="counter",lock="in_process"}"#,
        )
        .await;
        first.commit(HandlerOutcome::Succeeded).await.unwrap();
        assert_eq!(second.await.unwrap().unwrap(), 3, "no lost update");
    });
    assert_eq!(
        scrape.series_of("tg_session_lock_waits_total"),
        [r#"tg_session_lock_waits_total{session="counter",lock="in_process"} 1"#]
    );
    assert_eq!(
        scrape.value(
            r#"tg_session_lock_wait_duration_seconds_count{session="counter",lock="in_process"}"#
        ),
        1.0
    );
    assert_eq!(
        scrape.series_of("tg_session_lock_timeouts_total"),
        Vec::<&str>::new()
    );
}

#[test]
fn a_key_held_past_the_lock_timeout_counts_a_timeout() {
    let timeout = Duration::from_millis(50);
    let scrape = recorded(|_| async move {
        let manager = SessionManager::builder()
            .register::<Counter>()
            .lock_timeout(timeout)
            .build()
            .unwrap();
        let holder = manager.begin(user(1)).await;
        let waiter = manager.begin(user(1)).await;
        let error = waiter.counter().map(|c| c.apple).unwrap_err();
        assert!(matches!(error, Error::LockTimeout { .. }), "{error:?}");
        drop(holder);
    });
    let labels = r#"{session="counter",lock="in_process"}"#;
    assert_eq!(
        scrape.value(&format!("tg_session_lock_waits_total{labels}")),
        1.0
    );
    assert_eq!(
        scrape.value(&format!("tg_session_lock_timeouts_total{labels}")),
        1.0
    );
    assert_eq!(
        scrape.value(&format!(
            "tg_session_lock_wait_duration_seconds_count{labels}"
        )),
        1.0
    );
    let waited = scrape.value(&format!(
        "tg_session_lock_wait_duration_seconds_sum{labels}"
    ));
    assert!(waited >= timeout.as_secs_f64(), "{waited}");
    // The waiter never loaded: only the holder did.
    assert_eq!(
        scrape.value(&format!("tg_session_loads_total{COUNTER_IN_MEMORY}")),
        1.0
    );
}

#[test]
fn undecodable_and_unmigratable_records_count_by_error() {
    let scrape = recorded(|_| async {
        let storage: SharedStorage = Arc::new(MemoryStorage::new());
        let key = StorageKey::new(Some("decode"), None, "counter", "1");
        let garbage = Write::Put {
            key,
            value: Bytes::from_static(b"\xff not what Counter encodes to"),
            expected_version: None,
            ttl: None,
        };
        storage.write(&[garbage]).await.unwrap();
        let strict = manager(storage.clone(), "decode");
        let ctx = strict.begin(user(1)).await;
        let error = ctx.counter().map(|c| c.apple).unwrap_err();
        assert!(matches!(error, Error::Decode { .. }), "{error:?}");
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();

        let lenient = SessionManager::builder()
            .storage(storage.clone())
            .prefix("decode")
            .build()
            .unwrap();
        let ctx = lenient.begin(user(1)).await;
        let reset = ctx.load::<lenient::LenientCounter>().await.unwrap().apple;
        assert_eq!(reset, 1, "reset to the initial value");
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();

        // A version-1 pantry migrates to version 2; a version-2 one with
        // negative pears does not migrate to version 3, and version 1 does
        // not read version 2.
        let pantries = SessionManager::builder()
            .storage(storage)
            .prefix("pantry")
            .build()
            .unwrap();
        let ctx = pantries.begin(user(1)).await;
        ctx.load::<shapes::v1::Pantry>().await.unwrap().apple = 5;
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        let ctx = pantries.begin(user(1)).await;
        ctx.load::<shapes::v2::Pantry>().await.unwrap().pears = -1;
        ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
        let ctx = pantries.begin(user(1)).await;
        let error = ctx.load::<shapes::Pantry>().await.map(drop).unwrap_err();
        assert!(matches!(error, Error::Migration { .. }), "{error:?}");
        let ctx = pantries.begin(user(1)).await;
        let error = ctx
            .load::<shapes::v1::Pantry>()
            .await
            .map(drop)
            .unwrap_err();
        assert!(matches!(error, Error::NewerSchema { .. }), "{error:?}");
    });
    let mut errors = scrape.series_of("tg_session_decode_errors_total");
    errors.sort_unstable();
    assert_eq!(
        errors,
        [
            r#"tg_session_decode_errors_total{session="counter",storage="memory",error="decode"} 1"#,
            r#"tg_session_decode_errors_total{session="counter",storage="memory",error="reset"} 1"#,
            r#"tg_session_decode_errors_total{session="pantry",storage="memory",error="migration"} 1"#,
            r#"tg_session_decode_errors_total{session="pantry",storage="memory",error="newer_schema"} 1"#,
        ]
    );
    assert_eq!(
        scrape.series_of("tg_session_migrations_total"),
        [r#"tg_session_migrations_total{session="pantry",storage="memory"} 1"#]
    );
    // Undecodable records were loaded all the same, and left in place.
    assert_eq!(
        scrape.value(&format!("tg_session_loads_total{COUNTER_IN_MEMORY}")),
        2.0
    );
    assert_eq!(
        scrape.series_of("tg_session_writes_total"),
        [r#"tg_session_writes_total{session="pantry",storage="memory"} 2"#]
    );
}

#[test]
fn another_process_holding_a_redis_lease_counts_a_lease_wait_and_a_timeout() {
    let mut server = RedisServer::start();
    let url = server.url();
    let mut storage_name = String::new();
    let scrape = recorded(|handle| {
        let storage_name = &mut storage_name;
        async move {
            let storage: SharedStorage = Arc::new(RedisStorage::connect(&url).await.unwrap());
            *storage_name = storage.name().to_owned();
            // Two managers over one Redis are two processes.
            let first = manager(storage.clone(), "lease");
            let second = manager(storage.clone(), "lease");
            let holder = first.begin(user(1)).await;
            holder.counter().unwrap().apple += 1;
            let waiter = tokio::spawn(async move { increment(&second, user(1)).await });
            until_recorded(
                &handle,
                r#"tg_session_lock_waits_total{session="counter",lock="lease"}"#,
            )
            .await;
            holder.commit(HandlerOutcome::Succeeded).await.unwrap();
            assert_eq!(waiter.await.unwrap().unwrap(), 3, "no lost update");

            let impatient = SessionManager::builder()
                .storage(storage.clone())
                .prefix("lease")
                .register::<Counter>()
                .lock_timeout(Duration::from_millis(50))
                .build()
                .unwrap();
            let holder = first.begin(user(1)).await;
            let error = impatient
                .begin(user(1))
                .await
                .counter()
                .map(drop)
                .unwrap_err();
            assert!(matches!(error, Error::LockTimeout { .. }), "{error:?}");
            drop(holder);
        }
    });
    server.kill();
    let counter = format!(r#"{{session="counter",storage="{storage_name}"}}"#);
    let lease = r#"{session="counter",lock="lease"}"#;
    assert_eq!(
        scrape.value(&format!("tg_session_lock_waits_total{lease}")),
        2.0
    );
    assert_eq!(
        scrape.value(&format!("tg_session_lock_timeouts_total{lease}")),
        1.0
    );
    assert_eq!(
        scrape.value(&format!(
            "tg_session_lock_wait_duration_seconds_count{lease}"
        )),
        2.0
    );
    // holder, waiter, holder again; the impatient update loaded nothing.
    assert_eq!(
        scrape.value(&format!("tg_session_loads_total{counter}")),
        3.0
    );
    assert_eq!(
        scrape.value(&format!("tg_session_writes_total{counter}")),
        2.0
    );
    assert_eq!(
        scrape.series_of("tg_session_conflicts_total"),
        Vec::<&str>::new()
    );
}

/// The label `tg_session_storage_errors_total` gives a kind of failure.
fn kind_label(error: &Error) -> &'static str {
    use tg_session::storage::StorageErrorKind;
    let Error::Storage { source, .. } = error else {
        panic!("not a storage failure: {error:?}");
    };
    match source.kind() {
        StorageErrorKind::Unavailable => "unavailable",
        StorageErrorKind::Timeout => "timeout",
        StorageErrorKind::Unsupported => "unsupported",
        _ => "other",
    }
}

#[test]
fn a_storage_gone_down_counts_its_failures_by_operation_and_kind() {
    let mut server = RedisServer::start();
    let url = server.url();
    let mut failures = Vec::new();
    let mut storage_name = String::new();
    let scrape = recorded(|_| {
        let (server, failures, storage_name) = (&mut server, &mut failures, &mut storage_name);
        async move {
            let storage: SharedStorage = Arc::new(RedisStorage::connect(&url).await.unwrap());
            *storage_name = storage.name().to_owned();
            let manager = manager(storage, "down");
            // Loaded while the server was up, written after it went away.
            let ctx = manager.begin(user(1)).await;
            ctx.counter().unwrap().apple += 1;
            server.kill();
            let error = ctx.commit(HandlerOutcome::Succeeded).await.unwrap_err();
            failures.push(("commit", kind_label(&error)));
            // The next update cannot load.
            let ctx = manager.begin(user(1)).await;
            let error = ctx.counter().map(drop).unwrap_err();
            failures.push(("load", kind_label(&error)));
            ctx.commit(HandlerOutcome::Succeeded).await.ok();
        }
    });
    let mut expected: Vec<String> = failures
        .iter()
        .map(|(operation, kind)| {
            format!(
                r#"tg_session_storage_errors_total{{storage="{storage_name}",operation="{operation}",kind="{kind}"}} 1"#
            )
        })
        .collect();
    expected.sort_unstable();
    let mut recorded = scrape.series_of("tg_session_storage_errors_total");
    recorded.sort_unstable();
    assert_eq!(recorded, expected);
    // Nothing was written: the one load that worked is all there is.
    assert_eq!(
        scrape.value(&format!(
            r#"tg_session_loads_total{{session="counter",storage="{storage_name}"}}"#
        )),
        1.0
    );
}

/// The handles a manager keeps for the global recorder count there, update
/// after update; under a thread's local recorder the same manager records
/// into that one instead, and the global one sees none of it.
#[test]
fn the_global_recorder_and_a_local_one_each_get_their_own_counts() {
    let global = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .unwrap()
        .build_recorder();
    let global_handle = global.handle();
    metrics::set_global_recorder(global).expect("the only global recorder of this binary");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let manager = manager(Arc::new(MemoryStorage::new()), "global");
    // The counter starts at 1.
    for expected in 2..=4 {
        assert_eq!(
            runtime.block_on(increment(&manager, user(1))).unwrap(),
            expected
        );
    }
    let local = recorded(|_| async {
        assert_eq!(increment(&manager, user(1)).await.unwrap(), 5);
        assert_eq!(increment(&manager, user(1)).await.unwrap(), 6);
    });
    assert_eq!(runtime.block_on(increment(&manager, user(1))).unwrap(), 7);

    let global = Scrape(global_handle.render());
    for (scrape, updates) in [(&global, 4.0), (&local, 2.0)] {
        assert_eq!(
            scrape.value(&format!("tg_session_loads_total{COUNTER_IN_MEMORY}")),
            updates
        );
        assert_eq!(
            scrape.value(&format!("tg_session_writes_total{COUNTER_IN_MEMORY}")),
            updates
        );
        assert_eq!(
            scrape.value(r#"tg_session_load_duration_seconds_count{storage="memory"}"#),
            updates
        );
        assert_eq!(
            scrape.value(r#"tg_session_commit_duration_seconds_count{storage="memory"}"#),
            updates
        );
    }
}
