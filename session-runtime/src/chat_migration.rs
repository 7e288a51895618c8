//! A group that becomes a supergroup gets a new chat id: its chat-scoped
//! sessions follow it there.
//!
//! Telegram announces the change with two service messages, one in the old
//! group (`migrate_to_chat_id`) and one in the new supergroup
//! (`migrate_from_chat_id`). Either one starts [`SessionManager::migrate_chat`];
//! the first moves, the second finds nothing left to move.
//!
//! # What moves, and when
//!
//! - **At once**, in one load and at most two writes per storage: every
//!   registered type of scope `chat`, `chat_thread` (a basic group has no
//!   forum topics, so its only thread key is `main`) and every `key_fn` type
//!   named with [`SessionManagerBuilder::follow_chat_migration`](crate::SessionManagerBuilder::follow_chat_migration).
//! - **On first use** in the supergroup: `user_in_chat` sessions. There is
//!   one per member and no storage can list them cheaply, so the move writes
//!   a marker, `[prefix:][bot_id:]tg_session_chat_migrated:<new chat id>`
//!   holding the old chat id, in every storage of the manager. When a
//!   `user_in_chat` session of a supergroup has no record, the marker is
//!   looked up (once per chat and minute, cached in memory with a bound)
//!   and, if the chat migrated, the member's record is moved from the old
//!   chat's key under both keys' locks and leases. Updates outside migrated
//!   supergroups pay nothing when their record exists, and one cached lookup
//!   per chat otherwise.
//!
//! # Guarantees
//!
//! - Both keys of every move are taken like an update takes them (the
//!   in-process lock, and the lease where the storage has leases), so an
//!   update of the old group still running finishes first and its write is
//!   moved with the rest.
//! - A record already at the new key is never overwritten: the old one is
//!   left where it is and reported in [`ChatMigration::kept`] (and logged).
//! - The moved record keeps its bytes; it gets a new version (as any new
//!   record) and its type's `ttl` counted from the move (records do not
//!   carry their remaining time to live).
//! - The new key is written first (only if empty), the old key deleted
//!   after: a crash between the two leaves a copy at each key, and the next
//!   call (the second service message) sees the identical copy and deletes
//!   the old one.

pub(crate) mod lookups;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::Error;
use crate::key::{KeyStrategy, Scope, StorageKey, UpdateIds};
use crate::key_lock::{lock_key, next_update_id};
use crate::lock::{KeyHome, KeyLockGuard, Taker};
use crate::manager::{ManagerInner, SessionManager, StorageEntry};
use crate::metrics::SessionNames;
use crate::storage::{Record, StorageError, Write, WriteOutcome};
use crate::update_leases::{AcquireError, UpdateLeases};

/// The session name of the marker a move leaves behind: reserved.
pub const MIGRATED_MARKER: &str = "tg_session_chat_migrated";

/// How the type name of a migration appears in lock errors.
const TAKER: &str = "(a group's move to its supergroup)";

/// Chat ids of supergroups (and channels) are `-100` followed by the id
/// proper; basic groups are small negative numbers.
const SUPERGROUP_IDS_BELOW: i64 = -1_000_000_000_000;

/// What [`SessionManager::migrate_chat`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChatMigration {
    /// The group's chat id.
    pub from: i64,
    /// The supergroup's chat id.
    pub to: i64,
    /// The keys records were moved to (the old keys are deleted).
    pub moved: Vec<StorageKey>,
    /// Old keys whose record stayed in place because the new key already
    /// had a record of its own (never overwritten).
    pub kept: Vec<StorageKey>,
    /// Whether this call recorded the migration for the `user_in_chat`
    /// sessions that move on first use (`false`: an earlier call did).
    pub recorded: bool,
}

/// One key to move from the old chat to the new one.
struct Move {
    session: &'static str,
    storage_index: usize,
    from: StorageKey,
    to: StorageKey,
    ttl: Option<Duration>,
}

impl SessionManager {
    /// Moves the chat-scoped sessions of group `from` to supergroup `to`.
    ///
    /// - Registered types of scope `chat` and `chat_thread` (a group's one
    ///   thread key, `main`), and `key_fn` types named with
    ///   [`follow_chat_migration`](crate::SessionManagerBuilder::follow_chat_migration),
    ///   move now: per storage one load and two writes, under the keys'
    ///   locks and leases, so an update of the group still running finishes
    ///   first and its write moves too.
    /// - `user_in_chat` sessions move on first use in the supergroup: this
    ///   writes a marker under the reserved session name
    ///   [`MIGRATED_MARKER`] (scope key: the new chat id; value: the old one)
    ///   in every storage, and a member's session with no record in the
    ///   supergroup takes the group's record then, once.
    /// - A record already at the new key is never overwritten: the old one
    ///   stays and is listed in [`ChatMigration::kept`]. A moved record
    ///   keeps its bytes, gets a new version and its type's `ttl` from now.
    ///
    /// `bot_id` is needed when keys include the bot's id. Calling it again
    /// for the same chats moves nothing and reports nothing: the teloxide
    /// layer calls it for both service messages.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use tg_session_runtime::{HandlerOutcome, Json, KeyStrategy, Scope, Session, SessionManager, UpdateIds};
    /// # #[derive(Serialize, Deserialize)] struct Votes { yes: u32 }
    /// # impl Session for Votes { const NAME: &'static str = "votes"; type Codec = Json;
    /// #     const KEY: KeyStrategy = KeyStrategy::Scope(Scope::Chat);
    /// #     fn initial() -> Self { Votes { yes: 0 } } }
    /// # tokio_test_block_on(async {
    /// let manager = SessionManager::builder().register::<Votes>().build()?;
    /// let group = manager.begin(UpdateIds::new().chat(-42)).await;
    /// group.get::<Votes>()?.yes = 3;
    /// group.commit(HandlerOutcome::Succeeded).await?;
    ///
    /// let report = manager.migrate_chat(None, -42, -1_000_000_000_042).await?;
    /// assert_eq!(report.moved.len(), 1);
    /// let supergroup = manager.begin(UpdateIds::new().chat(-1_000_000_000_042)).await;
    /// assert_eq!(supergroup.get::<Votes>()?.yes, 3);
    /// # Ok::<(), tg_session_runtime::Error>(()) })?;
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f) }
    /// # Ok::<(), tg_session_runtime::Error>(())
    /// ```
    pub async fn migrate_chat(
        &self,
        bot_id: Option<u64>,
        from: i64,
        to: i64,
    ) -> Result<ChatMigration, Error> {
        migrate(&self.inner, bot_id, from, to).await
    }
}

async fn migrate(
    manager: &ManagerInner,
    bot_id: Option<u64>,
    from: i64,
    to: i64,
) -> Result<ChatMigration, Error> {
    let mut report = ChatMigration {
        from,
        to,
        ..ChatMigration::default()
    };
    if from == to {
        return Ok(report);
    }
    let ids_of = |chat| {
        let ids = UpdateIds::new().chat(chat);
        match bot_id {
            Some(bot) => ids.bot(bot),
            None => ids,
        }
    };
    let (old_ids, new_ids) = (ids_of(from), ids_of(to));
    let mut moves = Vec::new();
    for registration in manager.registrations.iter().filter(|r| r.follows_chat) {
        let old = manager.storage_key(registration.name, &registration.key, &old_ids);
        let new = manager.storage_key(registration.name, &registration.key, &new_ids);
        match (old, new) {
            (Ok(old), Ok(new)) if old != new => moves.push(Move {
                session: registration.name,
                storage_index: registration.storage_index,
                from: old,
                to: new,
                ttl: registration.ttl,
            }),
            // A `key_fn` that gives no key, or the same, for a chat alone
            // has nothing of this chat to move.
            (Ok(_) | Err(Error::MissingId { .. }), _) => {}
            (Err(error), _) => return Err(error),
        }
    }
    let markers: Vec<StorageKey> = (0..manager.storages.len())
        .map(|_| marker_key(manager, bot_id, to))
        .collect::<Result<_, _>>()?;

    // Every key, old and new, locked in one order as `load_eager` does, so
    // this never waits in a cycle with an update. Markers are per storage
    // but one key: locked once.
    let taker = Taker {
        update: next_update_id(),
        session: MIGRATED_MARKER,
        type_name: TAKER,
    };
    // A session's keys are locked where its storage locks them; the
    // markers, which no update takes, in the manager's table.
    let mut to_lock: Vec<(&'static str, &StorageKey, &Arc<dyn KeyHome>)> = moves
        .iter()
        .flat_map(|m| {
            let home = &manager.storages[m.storage_index].home;
            [(m.session, &m.from, home), (m.session, &m.to, home)]
        })
        .chain(
            markers
                .first()
                .map(|marker| (MIGRATED_MARKER, marker, &manager.locks)),
        )
        .collect();
    to_lock.sort_unstable_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
    to_lock.dedup_by(|a, b| a.1 == b.1);
    let mut locks: Vec<KeyLockGuard> = Vec::with_capacity(to_lock.len());
    for (session, key, home) in to_lock {
        locks.push(lock_key(manager, home, session, key, taker).await?);
    }

    let deadline = Instant::now() + manager.lock_timeout;
    let leases = UpdateLeases::new(manager.lease_ttl);
    for (storage_index, marker) in markers.into_iter().enumerate() {
        let here: Vec<&Move> = moves
            .iter()
            .filter(|m| m.storage_index == storage_index)
            .collect();
        let storage = &manager.storages[storage_index];
        let mut keys: Vec<StorageKey> = here
            .iter()
            .flat_map(|m| [m.from.clone(), m.to.clone()])
            .collect();
        keys.push(marker.clone());
        let records = load(manager, storage_index, &leases, &keys, deadline).await?;
        let (pairs, marker_record) = records.split_at(here.len() * 2);

        let mut puts = Vec::new();
        let mut put_moves = Vec::new();
        let mut deletes = Vec::new();
        for (m, pair) in here.iter().zip(pairs.chunks_exact(2)) {
            match (&pair[0], &pair[1]) {
                (None, _) => {}
                (Some(old), None) => {
                    puts.push(Write::Put {
                        key: m.to.clone(),
                        value: old.value.clone(),
                        expected_version: None,
                        ttl: m.ttl,
                    });
                    put_moves.push(*m);
                }
                // A copy an interrupted move wrote: finish that move.
                (Some(old), Some(new)) if old.value == new.value => {
                    deletes.push(Write::Delete {
                        key: m.from.clone(),
                    });
                    report.moved.push(m.to.clone());
                }
                (Some(_), Some(_)) => {
                    tracing::warn!(
                        session = m.session, from = %m.from, to = %m.to,
                        "the supergroup already has this session: the group's record is kept at its old key"
                    );
                    report.kept.push(m.from.clone());
                }
            }
        }
        let record_marker = matches!(marker_record, [None]);
        if record_marker {
            puts.push(Write::Put {
                key: marker.clone(),
                value: Bytes::from(from.to_string()),
                expected_version: None,
                ttl: None,
            });
        }
        let outcomes = match puts.is_empty() {
            true => Vec::new(),
            false => checked(
                storage,
                &puts,
                write(storage, Some(&leases), &puts, &[]).await,
            )?,
        };
        for (index, outcome) in outcomes.into_iter().enumerate() {
            let (session, key) = match put_moves.get(index) {
                Some(m) => (m.session, &m.to),
                None => (MIGRATED_MARKER, &marker),
            };
            match outcome {
                WriteOutcome::Written { .. } | WriteOutcome::Deleted => {
                    match put_moves.get(index) {
                        Some(m) => {
                            deletes.push(Write::Delete {
                                key: m.from.clone(),
                            });
                            report.moved.push(m.to.clone());
                        }
                        None => report.recorded = true,
                    }
                }
                WriteOutcome::Conflict(cause) => {
                    return Err(Error::Conflict {
                        session,
                        key: key.to_string(),
                        storage: Arc::clone(&storage.name),
                        cause,
                    });
                }
                WriteOutcome::Failed(source) => {
                    return Err(storage.failed(session, key, source));
                }
            }
        }
        let outcomes = write(storage, Some(&leases), &deletes, &keys).await;
        leases.released(storage_index);
        for (delete, outcome) in deletes.iter().zip(checked(storage, &deletes, outcomes)?) {
            if let WriteOutcome::Failed(source) = outcome {
                // The new key has its copy: the next call deletes the old one.
                return Err(storage.failed("(moved)", delete.key(), source));
            }
        }
    }
    manager.chat_lookups.forget(manager.storages.len(), to);
    drop(locks);
    tracing::info!(
        from,
        to,
        moved = report.moved.len(),
        kept = report.kept.len(),
        "chat sessions moved to the supergroup"
    );
    Ok(report)
}

/// The marker's key for supergroup `to`.
fn marker_key(manager: &ManagerInner, bot_id: Option<u64>, to: i64) -> Result<StorageKey, Error> {
    let mut ids = UpdateIds::new().chat(to);
    if let Some(bot) = bot_id {
        ids = ids.bot(bot);
    }
    manager.storage_key(MIGRATED_MARKER, &KeyStrategy::Scope(Scope::Chat), &ids)
}

/// Loads `keys` from one storage, taking their leases where it has them.
async fn load(
    manager: &ManagerInner,
    storage_index: usize,
    leases: &UpdateLeases,
    keys: &[StorageKey],
    deadline: Instant,
) -> Result<Vec<Option<Record>>, Error> {
    let storage = &manager.storages[storage_index];
    let records = match storage.storage.leases() {
        Some(shared) => leases
            .acquire(
                storage_index,
                &storage.storage,
                shared,
                keys,
                // The move's keys span several session types; its metrics
                // are labelled as the move.
                &SessionNames::collect(std::iter::repeat_n(MIGRATED_MARKER, keys.len())),
                deadline,
            )
            .await
            .map_err(|error| match error {
                AcquireError::Storage(source) => storage.failed(MIGRATED_MARKER, &keys[0], source),
                AcquireError::Busy { index } => Error::LockTimeout {
                    session: MIGRATED_MARKER,
                    key: keys.get(index).map(ToString::to_string).unwrap_or_default(),
                    waited: manager.lock_timeout,
                    holder: crate::error::LockHolder::Lease {
                        storage: Arc::clone(&storage.name),
                    },
                },
            })?,
        _ => storage
            .storage
            .load(keys)
            .await
            .map_err(|source| storage.failed(MIGRATED_MARKER, &keys[0], source))?,
    };
    match records.len() == keys.len() {
        true => Ok(records),
        false => Err(storage.failed(
            MIGRATED_MARKER,
            &keys[0],
            StorageError::other(format!(
                "asked for {} keys, got {} records",
                keys.len(),
                records.len()
            )),
        )),
    }
}

/// Applies `writes`, fenced by the leases where the storage has them, and
/// releases `release` with them.
async fn write(
    storage: &StorageEntry,
    leases: Option<&UpdateLeases>,
    writes: &[Write],
    release: &[StorageKey],
) -> Result<Vec<WriteOutcome>, StorageError> {
    match (storage.storage.leases(), leases) {
        (Some(shared), Some(leases)) => {
            shared
                .write_and_release(writes, release, leases.owner())
                .await
        }
        _ if writes.is_empty() => Ok(Vec::new()),
        _ => storage.storage.write(writes).await,
    }
}

fn checked(
    storage: &StorageEntry,
    writes: &[Write],
    outcomes: Result<Vec<WriteOutcome>, StorageError>,
) -> Result<Vec<WriteOutcome>, Error> {
    let key = |writes: &[Write]| writes.first().map(Write::key).cloned();
    match outcomes {
        Ok(outcomes) if outcomes.len() == writes.len() => Ok(outcomes),
        Ok(outcomes) => Err(storage.failed(
            MIGRATED_MARKER,
            &key(writes).unwrap_or_else(|| StorageKey::new(None, None, MIGRATED_MARKER, "")),
            StorageError::other(format!(
                "answered {} outcomes for {} writes",
                outcomes.len(),
                writes.len()
            )),
        )),
        Err(source) => Err(storage.failed(
            MIGRATED_MARKER,
            &key(writes).unwrap_or_else(|| StorageKey::new(None, None, MIGRATED_MARKER, "")),
            source,
        )),
    }
}

/// Whether the update is in a supergroup, the only kind of chat a group
/// migrates to: the only updates whose missing `user_in_chat` records are
/// looked up in a group they may have come from.
pub(crate) fn in_supergroup(ids: &UpdateIds) -> bool {
    ids.chat_id()
        .is_some_and(|chat| chat < SUPERGROUP_IDS_BELOW)
}

/// The `user_in_chat` session [`follow`] looks for in the old group.
pub(crate) struct Member<'a> {
    pub(crate) session: &'static str,
    pub(crate) storage_index: usize,
    /// Its key in the supergroup.
    pub(crate) key: &'a StorageKey,
    pub(crate) ttl: Option<Duration>,
}

/// The record a `user_in_chat` session with no record of its own in a
/// supergroup had in the group the supergroup came from, moved to `key`
/// now; `None` if the chat did not migrate or the member had no record.
///
/// The caller holds `key` (its lock, and its lease under `lease_owner`);
/// this takes the old key the same way, as the same update, and keeps its
/// lease with the update's others until the commit.
pub(crate) async fn follow(
    manager: &ManagerInner,
    leases: Option<&UpdateLeases>,
    taker: Taker,
    member: Member<'_>,
    ids: &UpdateIds,
) -> Result<Option<Record>, Error> {
    let Member {
        session,
        storage_index,
        key,
        ttl,
    } = member;
    let Some(chat) = ids.chat_id().filter(|_| in_supergroup(ids)) else {
        return Ok(None);
    };
    let storage = &manager.storages[storage_index];
    let from = match manager.chat_lookups.cache.get(&(storage_index, chat)) {
        Some(from) => from,
        None => {
            let marker = marker_key(manager, ids.bot_id(), chat)?;
            let loaded = storage
                .storage
                .load(std::slice::from_ref(&marker))
                .await
                .map_err(|source| storage.failed(MIGRATED_MARKER, &marker, source))?;
            let from = loaded
                .into_iter()
                .next()
                .flatten()
                .and_then(|record| std::str::from_utf8(&record.value).ok()?.parse().ok());
            manager
                .chat_lookups
                .cache
                .insert((storage_index, chat), from);
            from
        }
    };
    let Some(from) = from else { return Ok(None) };
    let old = manager.storage_key(
        session,
        &KeyStrategy::Scope(Scope::UserInChat),
        &ids.clone().chat(from),
    )?;
    let _old_lock = lock_key(manager, &storage.home, session, &old, taker).await?;
    let deadline = Instant::now() + manager.lock_timeout;
    let records = match (storage.storage.leases(), leases) {
        (Some(shared), Some(leases)) => leases
            .acquire(
                storage_index,
                &storage.storage,
                shared,
                std::slice::from_ref(&old),
                &SessionNames::one(session),
                deadline,
            )
            .await
            .map_err(|error| match error {
                AcquireError::Storage(source) => storage.failed(session, &old, source),
                AcquireError::Busy { .. } => Error::LockTimeout {
                    session,
                    key: old.to_string(),
                    waited: manager.lock_timeout,
                    holder: crate::error::LockHolder::Lease {
                        storage: Arc::clone(&storage.name),
                    },
                },
            })?,
        _ => storage
            .storage
            .load(std::slice::from_ref(&old))
            .await
            .map_err(|source| storage.failed(session, &old, source))?,
    };
    let Some(record) = records.into_iter().next().flatten() else {
        return Ok(None);
    };
    let put = [Write::Put {
        key: key.clone(),
        value: record.value.clone(),
        expected_version: None,
        ttl,
    }];
    let outcome = checked(storage, &put, write(storage, leases, &put, &[]).await)?;
    let version = match outcome.into_iter().next() {
        Some(WriteOutcome::Written { version }) => version,
        Some(WriteOutcome::Conflict(cause)) => {
            return Err(Error::Conflict {
                session,
                key: key.to_string(),
                storage: Arc::clone(&storage.name),
                cause,
            });
        }
        Some(WriteOutcome::Failed(source)) => {
            return Err(storage.failed(session, key, source));
        }
        Some(WriteOutcome::Deleted) | None => {
            return Err(storage.failed(
                session,
                key,
                StorageError::other("answered no write outcome for one put"),
            ));
        }
    };
    let delete = [Write::Delete { key: old.clone() }];
    let outcome = checked(storage, &delete, write(storage, leases, &delete, &[]).await)?;
    if let Some(WriteOutcome::Failed(source)) = outcome.into_iter().next() {
        // The copy is at the new key: an old one left behind is only garbage.
        tracing::warn!(session, key = %old, error = %source, "moved session not deleted from the group's key");
    }
    tracing::debug!(session, from = %old, to = %key, "member session followed the chat to its supergroup");
    Ok(Some(Record {
        value: record.value,
        version,
    }))
}
