//! [`Sessions`]: the sessions of one update, from load to commit.

use std::any::TypeId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OnceCell;
use tracing::Instrument as _;

use crate::error::Error;
use crate::guard::SessionRef;
use crate::key::{StorageKey, UpdateIds};
use crate::manager::{ManagerInner, Registration, SavePolicy};
use crate::session::Session;
use crate::slot::{ErasedSlot, SlotMeta, TypedSlot};
use crate::storage::{Write, WriteOutcome};

/// How the handler of an update ended, for [`Sessions::commit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandlerOutcome {
    /// The handler returned `Ok`: changes are saved.
    Succeeded,
    /// The handler failed: changes are saved only under [`SavePolicy::Always`].
    Failed,
}

/// Anything that carries the sessions of the current update. The accessors
/// that `#[derive(Session)]` generates work on every implementor, so a
/// framework's own context type can expose them.
pub trait SessionContext {
    /// The sessions of the current update.
    fn sessions(&self) -> &Sessions;
}

impl SessionContext for Sessions {
    fn sessions(&self) -> &Sessions {
        self
    }
}

impl<C: SessionContext + ?Sized> SessionContext for &C {
    fn sessions(&self) -> &Sessions {
        (**self).sessions()
    }
}

impl<C: SessionContext + ?Sized> SessionContext for Arc<C> {
    fn sessions(&self) -> &Sessions {
        (**self).sessions()
    }
}

/// The sessions of one update: started by [`SessionManager::begin`]
/// (eager sessions already loaded), read and changed through the generated
/// accessors, written by [`Sessions::commit`].
///
/// Cloning is cheap and shares the state. Keys taken by this update stay
/// locked for other updates of the process until it is committed or dropped.
///
/// [`SessionManager::begin`]: crate::SessionManager::begin
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<UpdateState>,
}

struct UpdateState {
    manager: Arc<ManagerInner>,
    ids: UpdateIds,
    slots: Mutex<Vec<SlotEntry>>,
    finished: AtomicBool,
}

struct SlotEntry {
    type_id: TypeId,
    state: EntryState,
}

enum EntryState {
    /// An eager session, loaded before the handler.
    Loaded(Arc<dyn ErasedSlot>),
    /// An eager session that could not be loaded.
    Failed(Error),
    /// A lazy session: loaded at most once, on first access.
    Lazy(Arc<OnceCell<Arc<dyn ErasedSlot>>>),
}

impl EntryState {
    fn loaded(&self) -> Option<&Arc<dyn ErasedSlot>> {
        match self {
            EntryState::Loaded(slot) => Some(slot),
            EntryState::Lazy(cell) => cell.get(),
            EntryState::Failed(_) => None,
        }
    }
}

impl Sessions {
    pub(crate) async fn begin(manager: Arc<ManagerInner>, ids: UpdateIds) -> Self {
        let slots = load_eager(&manager, &ids).await;
        Self {
            inner: Arc::new(UpdateState {
                manager,
                ids,
                slots: Mutex::new(slots),
                finished: AtomicBool::new(false),
            }),
        }
    }

    /// The ids of the update these sessions belong to.
    pub fn ids(&self) -> &UpdateIds {
        &self.inner.ids
    }

    fn slots(&self) -> MutexGuard<'_, Vec<SlotEntry>> {
        // Entries are pushed whole, so a poisoned list is still consistent.
        self.inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check_open<T: Session>(&self) -> Result<(), Error> {
        match self.inner.finished.load(Ordering::Acquire) {
            true => Err(Error::Finished { session: T::NAME }),
            false => Ok(()),
        }
    }

    /// An eager session, loaded before the handler (what `ctx.counter()?` calls).
    ///
    /// Fails if `T` was not registered on the manager, or is lazy and not
    /// loaded yet (use [`Sessions::load`]), or with the error its load met.
    pub fn get<T: Session>(&self) -> Result<SessionRef<T>, Error> {
        self.check_open::<T>()?;
        let slot = {
            let slots = self.slots();
            let entry = slots
                .iter()
                .find(|entry| entry.type_id == TypeId::of::<T>());
            match entry.map(|entry| &entry.state) {
                Some(EntryState::Failed(error)) => return Err(error.clone()),
                Some(state) => state.loaded().cloned(),
                None => None,
            }
        };
        match slot {
            Some(slot) => borrow::<T>(&slot),
            None => Err(Error::NotRegistered {
                session: T::NAME,
                type_name: std::any::type_name::<T>(),
            }),
        }
    }

    /// A session, loaded now if this update has not loaded it yet (what
    /// `ctx.profile().await?` calls). Works for eager types too.
    pub async fn load<T: Session>(&self) -> Result<SessionRef<T>, Error> {
        self.check_open::<T>()?;
        let cell = {
            let mut slots = self.slots();
            let entry = slots
                .iter()
                .find(|entry| entry.type_id == TypeId::of::<T>());
            match entry.map(|entry| &entry.state) {
                Some(EntryState::Loaded(slot)) => return borrow::<T>(slot),
                Some(EntryState::Failed(error)) => return Err(error.clone()),
                Some(EntryState::Lazy(cell)) => Arc::clone(cell),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    slots.push(SlotEntry {
                        type_id: TypeId::of::<T>(),
                        state: EntryState::Lazy(Arc::clone(&cell)),
                    });
                    cell
                }
            }
        };
        let slot = cell.get_or_try_init(|| self.load_lazy::<T>()).await?;
        borrow::<T>(slot)
    }

    async fn load_lazy<T: Session>(&self) -> Result<Arc<dyn ErasedSlot>, Error> {
        let manager = &self.inner.manager;
        let storage_index = manager
            .registration(TypeId::of::<T>())
            .map_or(0, |registration| registration.storage_index);
        let key = manager.storage_key(T::NAME, &T::KEY, &self.inner.ids)?;
        let meta = lock_key(manager, T::NAME, key, storage_index).await?;
        let span =
            tracing::debug_span!("session.load", storage = %meta.storage_name, key = %meta.key);
        let record = meta
            .storage
            .load(std::slice::from_ref(&meta.key))
            .instrument(span)
            .await
            .map_err(|source| meta.storage_error(source))?
            .pop()
            .flatten();
        tracing::debug!(session = T::NAME, key = %meta.key, found = record.is_some(), "lazy session loaded");
        TypedSlot::<T>::erased(meta, record)
    }

    /// Writes the sessions this update changed, in one batch per storage, and
    /// releases their keys. After a failed handler nothing is written unless
    /// the manager's [`SavePolicy`] is `Always`.
    ///
    /// Every session is attempted; the first error is returned and all are
    /// logged. Later calls do nothing.
    pub async fn commit(&self, outcome: HandlerOutcome) -> Result<(), Error> {
        if self.inner.finished.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let entries = std::mem::take(&mut *self.slots());
        let save = outcome == HandlerOutcome::Succeeded
            || self.inner.manager.save_policy == SavePolicy::Always;
        if !save {
            tracing::debug!("handler failed: session changes dropped");
            return Ok(());
        }
        let mut first_error = None;
        let mut report = |error: Error| {
            tracing::warn!(%error, "session not saved");
            first_error.get_or_insert(error);
        };
        // A read-only update stops here without allocating.
        let mut pending: Vec<(Write, &SlotMeta)> = Vec::new();
        for slot in entries.iter().filter_map(|entry| entry.state.loaded()) {
            match slot.pending_write() {
                Ok(Some(write)) => pending.push((write, slot.meta())),
                Ok(None) => {}
                Err(error) => report(error),
            }
        }
        // Stable: one batch per storage, in the order the sessions were taken.
        pending.sort_by_key(|(_, meta)| meta.storage_index);
        while let Some((_, first)) = pending.first() {
            let storage_index = first.storage_index;
            let batch = pending
                .iter()
                .take_while(|(_, meta)| meta.storage_index == storage_index)
                .count();
            let (writes, metas): (Vec<Write>, Vec<&SlotMeta>) = pending.drain(..batch).unzip();
            let Some(first) = metas.first() else { break };
            let span = tracing::debug_span!("session.commit", storage = %first.storage_name, writes = writes.len());
            match first.storage.write(&writes).instrument(span).await {
                Ok(outcomes) => {
                    for (meta, outcome) in metas.iter().zip(outcomes) {
                        match outcome {
                            WriteOutcome::Conflict(cause) => report(meta.conflict(cause)),
                            WriteOutcome::Failed(source) => report(meta.storage_error(source)),
                            WriteOutcome::Written { .. } | WriteOutcome::Deleted => {
                                tracing::debug!(session = meta.session, key = %meta.key, "session saved");
                            }
                        }
                    }
                }
                Err(source) => {
                    for meta in metas {
                        report(meta.storage_error(source.clone()));
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("ids", &self.inner.ids)
            .field("finished", &self.inner.finished.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Borrows the typed value of a loaded slot for one accessor call.
fn borrow<T: Session>(slot: &Arc<dyn ErasedSlot>) -> Result<SessionRef<T>, Error> {
    let typed = Arc::clone(slot)
        .into_any()
        .downcast::<TypedSlot<T>>()
        // Entries are keyed by `TypeId`, so this only fires if that invariant breaks.
        .map_err(|_| slot.meta().already_borrowed())?;
    let state = Arc::clone(&typed.state)
        .try_lock_owned()
        .map_err(|_| typed.meta.already_borrowed())?;
    Ok(SessionRef::new(typed, state))
}

/// Takes the in-process lock of `key`, within the manager's lock timeout.
async fn lock_key(
    manager: &ManagerInner,
    session: &'static str,
    key: StorageKey,
    storage_index: usize,
) -> Result<SlotMeta, Error> {
    let lock = manager
        .locks
        .lock(key.as_str(), manager.lock_timeout)
        .await
        .ok_or_else(|| lock_timeout(manager, session, &key))?;
    let storage = &manager.storages[storage_index];
    Ok(SlotMeta {
        session,
        key,
        storage: Arc::clone(&storage.storage),
        storage_index,
        storage_name: Arc::clone(&storage.name),
        _lock: lock,
    })
}

/// Locks and loads the eager sessions of an update: keys in a fixed order (so
/// two updates never wait on each other in a cycle), then one load per storage.
async fn load_eager(manager: &ManagerInner, ids: &UpdateIds) -> Vec<SlotEntry> {
    let mut entries = Vec::with_capacity(manager.registrations.len());
    let failed = |registration: &Registration, error| SlotEntry {
        type_id: registration.type_id,
        state: EntryState::Failed(error),
    };
    let mut wanted: Vec<(&Registration, StorageKey)> = Vec::with_capacity(entries.capacity());
    for registration in manager.registrations.iter().filter(|r| !r.lazy) {
        match manager.storage_key(registration.name, &registration.key, ids) {
            Ok(key) => wanted.push((registration, key)),
            Err(error) => entries.push(failed(registration, error)),
        }
    }
    if wanted.is_empty() {
        return entries;
    }
    wanted.sort_unstable_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
    let mut locked = Vec::with_capacity(wanted.len());
    for (registration, key) in wanted {
        match manager.locks.lock(key.as_str(), manager.lock_timeout).await {
            Some(lock) => locked.push((registration, key, lock)),
            None => {
                let error = lock_timeout(manager, registration.name, &key);
                entries.push(failed(registration, error));
            }
        }
    }
    // Stable: keeps the key order inside each storage's batch.
    locked.sort_by_key(|(registration, ..)| registration.storage_index);
    while let Some((first, ..)) = locked.first() {
        let storage_index = first.storage_index;
        let batch = locked
            .iter()
            .take_while(|(registration, ..)| registration.storage_index == storage_index)
            .count();
        let (keys, held): (Vec<StorageKey>, Vec<_>) = locked
            .drain(..batch)
            .map(|(registration, key, lock)| (key, (registration, lock)))
            .unzip();
        let storage = &manager.storages[storage_index];
        let span = tracing::debug_span!("session.load", storage = %storage.name, keys = keys.len());
        let records = match storage.storage.load(&keys).instrument(span).await {
            Ok(records) if records.len() == keys.len() => Ok(records),
            Ok(records) => Err(crate::StorageError::other(format!(
                "asked for {} keys, got {} records",
                keys.len(),
                records.len()
            ))),
            Err(source) => Err(source),
        };
        for (index, (key, (registration, lock))) in keys.into_iter().zip(held).enumerate() {
            let meta = SlotMeta {
                session: registration.name,
                key,
                storage: Arc::clone(&storage.storage),
                storage_index,
                storage_name: Arc::clone(&storage.name),
                _lock: lock,
            };
            let state = match &records {
                Ok(records) => match (registration.open)(meta, records[index].clone()) {
                    Ok(slot) => EntryState::Loaded(slot),
                    Err(error) => EntryState::Failed(error),
                },
                Err(source) => EntryState::Failed(meta.storage_error(source.clone())),
            };
            entries.push(SlotEntry {
                type_id: registration.type_id,
                state,
            });
        }
    }
    entries
}

fn lock_timeout(manager: &ManagerInner, session: &'static str, key: &StorageKey) -> Error {
    Error::LockTimeout {
        session,
        key: key.to_string(),
        waited: manager.lock_timeout,
        holder: crate::error::LockHolder::ThisProcess,
    }
}
