//! One update's session cost on Redis, against teloxide's `RedisStorage`
//! dialogues and against two plain round trips, on one local `redis-server`
//! this benchmark starts itself, in the same run.
//!
//! - `redis_update_sequential`: one read-modify-write update at a time,
//!   cycling over 1,000 users. Ours: begin (eager load) → mutate → commit.
//!   teloxide: `Dialogue::get_or_default` + `Dialogue::update`. Floor: `GET`
//!   then `SET` of the same JSON on the same connection type we use (the
//!   redis crate's `ConnectionManager`).
//!   Storage level, one key per update, no codec or context: `load_then_write`
//!   (`Storage::load` then `Storage::write`, what an update costs without
//!   leases) against `acquire_then_write_and_release` (the same
//!   read-modify-write under a cross-process lease, `Leases::acquire` then
//!   `Leases::write_and_release`): the ratio is what leases cost.
//! - `redis_update_64_in_flight`: 1,024 such updates with 64 in flight over
//!   1,000 users; criterion reports updates per second.
//!
//! `cargo bench -p tg-session-benches --bench redis`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use tg_session_test_kit::redis_server;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt as _;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use teloxide::dispatching::dialogue::serializer::Json;
use teloxide::dispatching::dialogue::{Dialogue, RedisStorage as TeloxideRedis};
use teloxide::types::ChatId;
use tg_session::storage::{
    Lease, LeaseOwner, LeasedLoad, Leases, Record, Storage, Write, WriteOutcome,
};
use tg_session::{HandlerOutcome, RedisStorage, Session, SessionManager, StorageKey, UpdateIds};

use redis_server::RedisServer;

const USERS: u64 = 1_000;
const IN_FLIGHT: usize = 64;
const BATCH: u64 = 1_024;

#[derive(Session, Serialize, Deserialize, Clone, Default)]
#[session(key = "counter")]
struct Counter {
    apple: u32,
    name: Option<String>,
}

fn user(n: u64) -> u64 {
    n % USERS + 1
}

async fn ours(manager: &SessionManager, user: u64) {
    let ctx = manager
        .begin(UpdateIds::new().user(user).chat(user as i64))
        .await;
    ctx.counter().unwrap().apple += 1;
    ctx.commit(HandlerOutcome::Succeeded).await.unwrap();
}

async fn teloxide(storage: &Arc<TeloxideRedis<Json>>, user: u64) {
    let dialogue = Dialogue::<Counter, _>::new(Arc::clone(storage), ChatId(user as i64));
    let mut state = dialogue.get_or_default().await.unwrap();
    state.apple += 1;
    dialogue.update(state).await.unwrap();
}

async fn get_set(connection: &ConnectionManager, user: u64) {
    let mut connection = connection.clone();
    let key = format!("raw:{user}");
    let stored: Option<Vec<u8>> = connection.get(&key).await.unwrap();
    let mut state: Counter = stored
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
        .unwrap_or_default();
    state.apple += 1;
    let () = connection
        .set(&key, serde_json::to_vec(&state).unwrap())
        .await
        .unwrap();
}

/// The write that increments the counter stored in `record` under `key`.
fn incremented(key: &StorageKey, record: Option<&Record>) -> Write {
    let mut state: Counter = record
        .map(|record| serde_json::from_slice(&record.value).unwrap())
        .unwrap_or_default();
    state.apple += 1;
    Write::Put {
        key: key.clone(),
        value: serde_json::to_vec(&state).unwrap().into(),
        expected_version: record.map(|record| record.version),
        ttl: None,
    }
}

async fn load_then_write(storage: &RedisStorage, user: u64) {
    let keys = [StorageKey::new(
        Some("bench"),
        None,
        "plain",
        &user.to_string(),
    )];
    let records = storage.load(&keys).await.unwrap();
    let outcomes = storage
        .write(&[incremented(&keys[0], records[0].as_ref())])
        .await
        .unwrap();
    assert!(matches!(outcomes[..], [WriteOutcome::Written { .. }]));
}

async fn acquire_then_write_and_release(storage: &RedisStorage, user: u64) {
    let keys = [StorageKey::new(
        Some("bench"),
        None,
        "leased",
        &user.to_string(),
    )];
    let owner = LeaseOwner::new();
    let lease = Lease {
        owner: &owner,
        ttl: Duration::from_secs(30),
    };
    let LeasedLoad::Acquired(records) = storage.acquire(&keys, lease).await.unwrap() else {
        panic!("nothing else holds a lease in this benchmark")
    };
    let outcomes = storage
        .write_and_release(&[incremented(&keys[0], records[0].as_ref())], &keys, &owner)
        .await
        .unwrap();
    assert!(matches!(outcomes[..], [WriteOutcome::Written { .. }]));
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let url = server.url();
    let (manager, storage, teloxide_storage, raw) = runtime.block_on(async {
        let storage = RedisStorage::connect(&url).await.unwrap();
        let manager = SessionManager::builder()
            .storage(storage.clone())
            .prefix("bench")
            .register::<Counter>()
            .build()
            .unwrap();
        let teloxide_storage = TeloxideRedis::open(&url, Json).await.unwrap();
        let raw = ConnectionManager::new(redis::Client::open(url.as_str()).unwrap())
            .await
            .unwrap();
        // Every user stored once, so all three measure the steady state.
        for n in 0..USERS {
            ours(&manager, user(n)).await;
            teloxide(&teloxide_storage, user(n)).await;
            get_set(&raw, user(n)).await;
            load_then_write(&storage, user(n)).await;
            acquire_then_write_and_release(&storage, user(n)).await;
        }
        (manager, storage, teloxide_storage, raw)
    });
    let next = AtomicU64::new(0);
    let next_user = || user(next.fetch_add(1, Ordering::Relaxed));

    let mut group = c.benchmark_group("redis_update_sequential");
    group.bench_function("tg_session", |b| {
        b.to_async(&runtime)
            .iter(|| ours(&manager, black_box(next_user())))
    });
    group.bench_function("teloxide_dialogue", |b| {
        b.to_async(&runtime)
            .iter(|| teloxide(&teloxide_storage, black_box(next_user())))
    });
    group.bench_function("get_then_set", |b| {
        b.to_async(&runtime)
            .iter(|| get_set(&raw, black_box(next_user())))
    });
    group.bench_function("load_then_write", |b| {
        b.to_async(&runtime)
            .iter(|| load_then_write(&storage, black_box(next_user())))
    });
    group.bench_function("acquire_then_write_and_release", |b| {
        b.to_async(&runtime)
            .iter(|| acquire_then_write_and_release(&storage, black_box(next_user())))
    });
    group.finish();

    let mut group = c.benchmark_group("redis_update_64_in_flight");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(BenchmarkId::new("tg_session", IN_FLIGHT), |b| {
        b.to_async(&runtime).iter(|| {
            futures_util::stream::iter(0..BATCH)
                .map(|_| ours(&manager, next_user()))
                .buffer_unordered(IN_FLIGHT)
                .collect::<()>()
        })
    });
    group.bench_function(BenchmarkId::new("teloxide_dialogue", IN_FLIGHT), |b| {
        b.to_async(&runtime).iter(|| {
            futures_util::stream::iter(0..BATCH)
                .map(|_| teloxide(&teloxide_storage, next_user()))
                .buffer_unordered(IN_FLIGHT)
                .collect::<()>()
        })
    });
    group.bench_function(BenchmarkId::new("get_then_set", IN_FLIGHT), |b| {
        b.to_async(&runtime).iter(|| {
            futures_util::stream::iter(0..BATCH)
                .map(|_| get_set(&raw, next_user()))
                .buffer_unordered(IN_FLIGHT)
                .collect::<()>()
        })
    });
    group.finish();
    drop(server);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
