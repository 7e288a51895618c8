//! [`Sessions`]: the sessions of one update, from load to commit.

use std::any::{Any, TypeId};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use smallvec::SmallVec;
use tracing::Instrument as _;

use crate::error::{Error, LockHolder};
use crate::guard::SessionRef;
use crate::key::{KeyStrategy, StorageKey, UpdateIds};
use crate::key_lock::{lock_key, next_update_id};
use crate::lock::{KeyClaim, Taker};
use crate::manager::{ManagerInner, Registration, SavePolicy, SessionManager, StorageEntry};
use crate::metrics::{self, Operation};
use crate::session::Session;
use crate::slot::{
    self, Borrowed, EntryState, ErasedSlot, NotLoaded, PerSession, SlotBox, SlotEntry, SlotMeta,
    Slots, TypedSlot,
};
use crate::soon::{Soon, SoonDone};
use crate::storage::StorageError;
use crate::storage::memory::{MemoryStorage, UpdateKey};
use crate::storage::{LeaseOwner, Record, Write};
use crate::update_leases::{AcquireError, LeasedKeys, UpdateLeases};

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
    /// Tells this update's key locks from other updates' in this process.
    id: u64,
    /// The eager sessions' entries, in the order of their registrations
    /// (see [`ManagerInner::eager_types`]), taken before the update is
    /// shared and never changed: an accessor finds its slot with no lock,
    /// and borrows it for as long as the update lives.
    eager: Slots,
    /// The entries of the sessions loaded on first use.
    lazy: LazyEntries,
    /// The cross-process leases this update holds, once it takes one.
    leases: OnceLock<UpdateLeases>,
    finished: AtomicBool,
}

/// An entry of an update, as the commit reads it: its session's type and
/// registration (`None` for a lazy type not registered), its storage and
/// its state.
#[derive(Clone, Copy)]
struct Entry<'a> {
    type_id: TypeId,
    registration: Option<&'a Registration>,
    storage_index: usize,
    state: &'a EntryState,
}

/// The entries an update adds after `begin`, one per session type loaded
/// on first use: a list only ever appended to, so that an accessor borrows
/// an entry for as long as the update lives, as it does an eager one. The
/// first entry is kept inline (most updates load one lazy session at
/// most); the others are boxed.
#[derive(Default)]
struct LazyEntries {
    first: OnceLock<LazyNode>,
    /// Held while an entry is looked for and added: a type gets one.
    adding: Mutex<()>,
}

struct LazyNode {
    /// Always set (see [`LazyEntries::push`]).
    entry: Option<SlotEntry>,
    next: OnceLock<Box<LazyNode>>,
}

impl LazyEntries {
    fn iter(&self) -> impl Iterator<Item = &SlotEntry> {
        std::iter::successors(self.first.get(), |node| node.next.get().map(|next| &**next))
            .filter_map(|node| node.entry.as_ref())
    }

    /// Appends `entry` and answers it (always: the node's `Option` is only
    /// how the entry is moved into it); the caller holds `adding`.
    fn push(&self, entry: SlotEntry) -> Option<&SlotEntry> {
        // Taken by the cell's initialization from here: a closure that owned
        // it was copied, and the entry in it, on its way into the cell.
        let mut entry = Some(entry);
        let mut node = || LazyNode {
            entry: entry.take(),
            next: OnceLock::new(),
        };
        let Some(mut last) = self.first.get() else {
            return self.first.get_or_init(node).entry.as_ref();
        };
        while let Some(next) = last.next.get() {
            last = next;
        }
        last.next.get_or_init(|| Box::new(node())).entry.as_ref()
    }
}

impl UpdateState {
    // Always inlined: built where it is moved into its `Arc`.
    #[inline(always)]
    fn new(manager: Arc<ManagerInner>, ids: UpdateIds, id: u64, eager: Slots) -> Self {
        Self {
            manager,
            ids,
            id,
            eager,
            lazy: LazyEntries::default(),
            leases: OnceLock::new(),
            finished: AtomicBool::new(false),
        }
    }

    /// Every entry of the update: the eager sessions', then the lazy ones'.
    fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let registrations = &self.manager.registrations;
        let eager = self
            .eager
            .iter()
            .zip(registrations)
            .map(|(state, registration)| Entry {
                type_id: registration.type_id,
                registration: Some(registration),
                storage_index: registration.storage_index,
                state,
            });
        let lazy = self.lazy.iter().map(|entry| Entry {
            type_id: entry.type_id,
            registration: registrations.get(entry.registration),
            storage_index: entry.storage_index,
            state: &entry.state,
        });
        eager.chain(lazy)
    }

    /// The entry of the session of type `type_id`, if the update has one:
    /// an eager one by its registration's place, a lazy one by a search.
    // Inlined: every accessor starts here.
    #[inline]
    fn entry(&self, type_id: TypeId) -> Option<&EntryState> {
        match self
            .manager
            .eager_types
            .iter()
            .position(|eager| *eager == type_id)
        {
            Some(index) => self.eager.get(index),
            None => self.lazy_entry(type_id),
        }
    }

    /// The entry of the lazy session of type `type_id`, if the update has one.
    fn lazy_entry(&self, type_id: TypeId) -> Option<&EntryState> {
        self.lazy
            .iter()
            .find(|entry| entry.type_id == type_id)
            .map(|entry| &entry.state)
    }

    /// Gives back the keys the commit has not given back yet: every key
    /// after a failed handler, else those of sessions not kept in memory
    /// (each in-process session's key went back with its write). A session
    /// a `SessionRef` still holds keeps its key until the update is dropped.
    fn give_back_keys(&self, all: bool) {
        for entry in self.entries() {
            let in_process = self.manager.storages[entry.storage_index]
                .in_process
                .is_some();
            if let Some(slot) = entry.state.loaded().filter(|_| all || !in_process) {
                // Borrowed, it keeps its key (see above): nothing to do now.
                let _ = slot.give_back();
            }
        }
    }

    fn leases(&self) -> &UpdateLeases {
        self.leases
            .get_or_init(|| UpdateLeases::new(self.manager.lease_ttl))
    }

    /// The error for a session of type `type_id` that a `SessionRef` holds
    /// when it is asked for again (its key is built anew: this is rare).
    fn already_borrowed(&self, type_id: TypeId, session: &'static str) -> Error {
        let key = self
            .manager
            .registration(type_id)
            .and_then(|r| self.manager.registration_key(r, &self.ids).ok())
            .map_or_else(|| "?".to_owned(), |key| key.to_string());
        Error::AlreadyBorrowed { session, key }
    }

    /// The name of the sessions of type `type_id`.
    fn session_name(&self, type_id: TypeId) -> &'static str {
        self.manager
            .registration(type_id)
            .map_or("(unregistered)", |registration| registration.name)
    }

    fn taker(&self, session: &'static str, type_name: &'static str) -> Taker {
        Taker {
            update: self.id,
            session,
            type_name,
        }
    }

    /// Loads `keys` (of the sessions named in `sessions`) from the storage
    /// at `storage_index`: through its leases when it has them (waiting for
    /// other processes until `deadline`), else with a plain load.
    async fn load(
        &self,
        storage_index: usize,
        keys: &[StorageKey],
        sessions: &metrics::SessionNames,
        deadline: Instant,
    ) -> Result<(Vec<Option<Record>>, Option<LeaseOwner>), LoadError> {
        let storage = &self.manager.storages[storage_index];
        let span = tracing::debug_span!("session.load", storage = %storage.name, keys = keys.len());
        let timer = metrics::Timer::start();
        let loaded = match storage.storage.leases() {
            Some(leases) => {
                let update_leases = self.leases();
                update_leases
                    .acquire(
                        storage_index,
                        &storage.storage,
                        leases,
                        keys,
                        sessions,
                        deadline,
                    )
                    .instrument(span)
                    .await
                    .map(|records| (records, Some(update_leases.owner().clone())))
                    .map_err(|error| match error {
                        AcquireError::Storage(error) => {
                            metrics::storage_failed(&storage.name, Operation::Load, &error);
                            LoadError::Storage(error)
                        }
                        AcquireError::Busy { index } => LoadError::Leased { index },
                    })?
            }
            None => (
                storage
                    .storage
                    .load(keys)
                    .instrument(span)
                    .await
                    .map_err(|error| {
                        metrics::storage_failed(&storage.name, Operation::Load, &error);
                        LoadError::Storage(error)
                    })?,
                None,
            ),
        };
        match loaded.0.len() == keys.len() {
            true => {
                metrics::loaded(sessions, &storage.metrics, timer);
                Ok(loaded)
            }
            false => {
                let error = StorageError::other(format!(
                    "asked for {} keys, got {} records",
                    keys.len(),
                    loaded.0.len()
                ));
                metrics::storage_failed(&storage.name, Operation::Load, &error);
                Err(LoadError::Storage(error))
            }
        }
    }
}

/// Why a batch of sessions was not loaded.
enum LoadError {
    Storage(StorageError),
    /// The key at this index stayed leased by another process until the deadline.
    Leased {
        index: usize,
    },
}

impl Sessions {
    /// Starts an update (see [`SessionManager::begin`]): ready at once when
    /// its eager sessions were taken with no wait.
    pub(crate) fn begin(
        manager: Arc<ManagerInner>,
        ids: UpdateIds,
    ) -> Soon<Self, impl Future<Output = Self> + Send + 'static> {
        let id = next_update_id();
        let mut eager = Slots::new();
        if load_eager_at_once(&manager, &ids, id, &mut eager) {
            return Soon::now(Self {
                inner: Arc::new(UpdateState::new(manager, ids, id, eager)),
            });
        }
        // The path that waits (for a key, a remote storage).
        Soon::later(async move {
            let mut state = UpdateState::new(manager, ids, id, eager);
            state.eager = load_eager(&state).await;
            Self {
                inner: Arc::new(state),
            }
        })
    }

    /// The ids of the update these sessions belong to.
    pub fn ids(&self) -> &UpdateIds {
        &self.inner.ids
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
    pub fn get<T: Session>(&self) -> Result<SessionRef<'_, T>, Error> {
        self.check_open::<T>()?;
        match self.inner.entry(TypeId::of::<T>()) {
            Some(EntryState::Loaded(slot)) => borrow::<T>(&self.inner, slot.as_ref()),
            Some(EntryState::NotLoaded(not_loaded)) => match &**not_loaded {
                NotLoaded::Failed(error) => Err(error.clone()),
                NotLoaded::Lazy(cell) => match cell.get() {
                    Some(slot) => borrow::<T>(&self.inner, slot.as_ref()),
                    None => Err(not_registered::<T>()),
                },
            },
            None => Err(not_registered::<T>()),
        }
    }

    /// A session, loaded now if this update has not loaded it yet (what
    /// `ctx.profile().await?` calls). Works for eager types too.
    pub async fn load<T: Session>(&self) -> Result<SessionRef<'_, T>, Error> {
        self.check_open::<T>()?;
        let state = &*self.inner;
        let entry = match state.entry(TypeId::of::<T>()) {
            Some(entry) => entry,
            None => self.add_lazy_entry::<T>()?,
        };
        match entry {
            EntryState::Loaded(slot) => borrow::<T>(state, slot.as_ref()),
            EntryState::NotLoaded(not_loaded) => match &**not_loaded {
                NotLoaded::Failed(error) => Err(error.clone()),
                NotLoaded::Lazy(cell) => {
                    let slot = cell.get_or_try_init(|| self.load_lazy::<T>()).await?;
                    borrow::<T>(state, slot.as_ref())
                }
            },
        }
    }

    /// Adds the entry of a session of type `T` loaded on first use, unless
    /// another call did since it was looked for: loaded already if it is
    /// kept in memory and its key was free (see [`Sessions::load_at_once`]),
    /// else a cell its load fills.
    fn add_lazy_entry<T: Session>(&self) -> Result<&EntryState, Error> {
        let state = &*self.inner;
        let _adding = state.lazy.adding.lock();
        if let Some(entry) = state.lazy_entry(TypeId::of::<T>()) {
            return Ok(entry);
        }
        let registration = state.manager.registration(TypeId::of::<T>());
        let entry = |state| match registration {
            Some(registration) => SlotEntry::new(registration, state),
            None => SlotEntry {
                type_id: TypeId::of::<T>(),
                registration: usize::MAX,
                // The default storage, as its lazy load takes.
                storage_index: 0,
                state,
            },
        };
        let entry_state = match self.load_at_once::<T>(registration) {
            Some(opened) => EntryState::Loaded(opened?),
            None => EntryState::lazy(),
        };
        // Pushed under `adding`: always there.
        state
            .lazy
            .push(entry(entry_state))
            .map(|entry| &entry.state)
            .ok_or_else(not_registered::<T>)
    }

    /// A lazy session kept in memory, taken and copied in one access as an
    /// eager one is, if no other update holds or waits for its key: no
    /// cell for a second load of it to wait on. `None` if it must be
    /// waited for, or is not kept in memory (nothing was taken).
    fn load_at_once<T: Session>(
        &self,
        registration: Option<&Registration>,
    ) -> Option<Result<SlotBox, Error>> {
        let state = &*self.inner;
        let manager = &state.manager;
        let storage = &manager.storages[registration.map_or(0, |r| r.storage_index)];
        let memory = storage
            .in_process
            .as_ref()
            .filter(|_| !follows_members(&T::KEY, &state.ids))?;
        // Found by its parts where it has them, as an eager one is.
        let key = match registration {
            Some(registration) => manager
                .update_key(registration, &state.ids)
                .map_err(|error| *error),
            None => self.lazy_key::<T>(None).map(UpdateKey::Built),
        };
        let key = match key {
            Ok(key) => key,
            Err(error) => return Some(Err(error)),
        };
        let timer = metrics::Timer::start();
        let opened = slot::claim_in_process::<T>(storage, memory, key, state.id)?;
        Some(match opened {
            Ok(slot) => {
                metrics::loaded(
                    &metrics::SessionNames::one(T::NAME),
                    &storage.metrics,
                    timer,
                );
                Ok(slot)
            }
            Err(error) => Err(*error),
        })
    }

    /// The key of a lazy session of type `T`, registered or not.
    fn lazy_key<T: Session>(
        &self,
        registration: Option<&Registration>,
    ) -> Result<StorageKey, Error> {
        let state = &*self.inner;
        match registration {
            Some(registration) => state
                .manager
                .registration_key(registration, &state.ids)
                .map_err(|error| *error),
            None => state.manager.storage_key(T::NAME, &T::KEY, &state.ids),
        }
    }

    async fn load_lazy<T: Session>(&self) -> Result<SlotBox, Error> {
        let state = &*self.inner;
        let manager = &state.manager;
        let registration = manager.registration(TypeId::of::<T>());
        let storage_index = registration.map_or(0, |registration| registration.storage_index);
        let key = self.lazy_key::<T>(registration)?;
        let deadline = Instant::now() + manager.lock_timeout;
        let taker = state.taker(T::NAME, std::any::type_name::<T>());
        let storage = &manager.storages[storage_index];
        let lock = lock_key(manager, &storage.home, T::NAME, &key, taker).await?;
        let follows = follows_members(&T::KEY, &state.ids);
        if let Some(memory) = storage.in_process.as_ref().filter(|_| !follows) {
            let timer = metrics::Timer::start();
            let meta = SlotMeta::new(storage, T::NAME, key, lock.into_claim(), None);
            let slot = slot::open_in_process::<T>(meta, memory)?;
            metrics::loaded(
                &metrics::SessionNames::one(T::NAME),
                &storage.metrics,
                timer,
            );
            return Ok(slot);
        }
        let (mut records, lease_owner) = state
            .load(
                storage_index,
                std::slice::from_ref(&key),
                &metrics::SessionNames::one(T::NAME),
                deadline,
            )
            .await
            .map_err(|error| {
                if let LoadError::Storage(error) = &error {
                    lock.storage_failed(error, &storage.name);
                }
                load_error(manager, storage, T::NAME, &key, error)
            })?;
        let record = match records.pop().flatten() {
            None if follows => {
                let taker = state.taker(T::NAME, std::any::type_name::<T>());
                let ids = &state.ids;
                let leases = storage.storage.leases().map(|_| state.leases());
                crate::chat_migration::follow(
                    manager,
                    leases,
                    taker,
                    crate::chat_migration::Member {
                        session: T::NAME,
                        storage_index,
                        key: &key,
                        ttl: T::TTL,
                    },
                    ids,
                )
                .await?
            }
            record => record,
        };
        tracing::debug!(session = T::NAME, key = %key, found = record.is_some(), "lazy session loaded");
        let meta = SlotMeta::new(storage, T::NAME, key, lock.into_claim(), lease_owner);
        slot::open::<T>(meta, record)
    }

    /// Writes the sessions this update changed, in one batch per storage, and
    /// releases their keys (and, in a storage shared across processes, their
    /// leases, in the same round trip). After a failed handler nothing is
    /// written unless the manager's [`SavePolicy`] is `Always`.
    ///
    /// Every session is attempted; the first error is returned and the others
    /// are logged. Later calls do nothing.
    ///
    /// The sessions kept in memory storages are written, and their keys
    /// given back, when this is called: the future is then ready, or
    /// writes to the other storages once it is polled (on a Tokio runtime,
    /// to the end even if it is then dropped). A future dropped before it
    /// was ever polled writes nothing there, and gives the keys back.
    pub fn commit(
        &self,
        outcome: HandlerOutcome,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.commit_in_process(outcome)
    }

    /// The part of a commit done here and now: sessions kept in memory
    /// storages are written and their keys given back (no await: nothing a
    /// cancelled commit could leave half done), and if nothing is left to
    /// send anywhere, the other keys are given back too. Otherwise the
    /// future of what remains (see [`commit_remote`]), built here: what it
    /// takes is moved once.
    fn commit_in_process(
        &self,
        outcome: HandlerOutcome,
    ) -> SoonDone<Error, impl Future<Output = Result<(), Box<Error>>> + Send + 'static> {
        if self.inner.finished.swap(true, Ordering::AcqRel) {
            return SoonDone::now(Ok(()));
        }
        let state = &*self.inner;
        let save =
            outcome == HandlerOutcome::Succeeded || state.manager.save_policy == SavePolicy::Always;
        let mut errors = Vec::new();
        let left = write_in_process(state, save, &mut errors);
        if left.dropped {
            tracing::debug!("handler failed: session changes dropped");
        }
        if !left.writes && state.leases.get().is_none() {
            if left.keys {
                state.give_back_keys(!save);
            }
            return SoonDone::now(first_error(errors));
        }
        let remote = RemoteCommit {
            keys: HeldKeys(Arc::clone(&self.inner)),
            save,
            errors,
        };
        SoonDone::later(commit_remote(remote))
    }
}

/// The part of a commit left after its in-process part (see
/// [`Sessions::commit`]).
async fn commit_remote(remote: RemoteCommit) -> Result<(), Box<Error>> {
    let RemoteCommit { keys, save, errors } = remote;
    // The writes run to completion in a task of their own, holding the
    // keys until they are done: a caller that gives up on the commit
    // (a timeout around the handler, a shutdown) must not let the next
    // update of a key read it before the write it started lands.
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn(write_back(keys, save, errors))
            .await
            .unwrap_or_else(|error| match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => Err(Box::new(Error::Storage {
                    session: "(every session of the update)",
                    key: String::new(),
                    storage: Arc::from("(the runtime)"),
                    source: StorageError::other(format!(
                        "the commit did not finish: {error} (the runtime is shutting down)"
                    )),
                })),
            }),
        Err(_) => write_back(keys, save, errors).await,
    }
}

/// What a commit has left to do after its in-process part: writes to
/// storages elsewhere, leases and keys to give back.
struct RemoteCommit {
    keys: HeldKeys,
    save: bool,
    errors: Vec<Error>,
}

/// An update whose commit has keys left to give back: they go back when
/// this is dropped, after the commit's writes or if its future is dropped
/// before it ran.
struct HeldKeys(Arc<UpdateState>);

impl Drop for HeldKeys {
    fn drop(&mut self) {
        self.0.give_back_keys(true);
    }
}

/// What the in-process part of a commit left to do.
struct Left {
    /// Sessions changed in storages elsewhere: writes to send.
    writes: bool,
    /// Keys still held: of sessions elsewhere, or of any session when
    /// nothing is saved.
    keys: bool,
    /// The failed handler changed a session: its change is dropped.
    dropped: bool,
}

/// Writes the changed sessions this update keeps in memory storages, as
/// values, and gives their keys back, when the commit `save`s (see
/// [`Sessions::commit`]); tells what is left, in the same pass over the
/// sessions. Each in-process session tells whether it was touched as it
/// is written: no pass over them to ask first.
fn write_in_process(state: &UpdateState, save: bool, errors: &mut Vec<Error>) -> Left {
    let timer = metrics::Timer::start();
    let mut written_to: SmallVec<[usize; 2]> = SmallVec::new();
    let mut left = Left {
        writes: false,
        keys: false,
        dropped: false,
    };
    for entry in state.entries() {
        let Some(slot) = entry.state.loaded() else {
            continue;
        };
        let storage_index = entry.storage_index;
        let memory = match &state.manager.storages[storage_index].in_process {
            Some(memory) if save => memory,
            _ => {
                left.keys = true;
                match save {
                    true => left.writes |= slot.maybe_touched(),
                    false => left.dropped |= slot.maybe_touched(),
                }
                continue;
            }
        };
        match slot.write_in_process(memory, entry.registration, errors) {
            // Without the feature, nothing reads which storages were written.
            Ok(true) if metrics::ENABLED && !written_to.contains(&storage_index) => {
                written_to.push(storage_index)
            }
            Ok(_) => {}
            Err(Borrowed) => errors
                .push(state.already_borrowed(entry.type_id, state.session_name(entry.type_id))),
        }
    }
    for storage_index in written_to {
        metrics::committed(&state.manager.storages[storage_index].metrics, timer);
    }
    left
}

/// The first error is the caller's to report; the others are logged here,
/// each once. Boxed, as the commit's future carries it (see [`SoonDone`]).
#[inline]
fn first_error(errors: Vec<Error>) -> Result<(), Box<Error>> {
    // The usual case, on every commit: no iterator to build and drop.
    if errors.is_empty() {
        return Ok(());
    }
    log_others(errors)
}

/// [`first_error`] with errors to tell: kept out of the usual path.
fn log_others(errors: Vec<Error>) -> Result<(), Box<Error>> {
    let mut errors = errors.into_iter();
    let first = errors.next();
    for error in errors {
        tracing::warn!(%error, "session not saved");
    }
    first.map_or(Ok(()), |first| Err(Box::new(first)))
}

/// Writes what the update changed and gives back its leases (see
/// [`Sessions::commit`]).
async fn write_back(keys: HeldKeys, save: bool, mut errors: Vec<Error>) -> Result<(), Box<Error>> {
    {
        let state = &*keys.0;
        // A read-only update allocates nothing here.
        let mut pending: PerSession<(Write, usize, &dyn ErasedSlot)> = SmallVec::new();
        if save {
            for entry in state.entries() {
                let storage_index = entry.storage_index;
                let Some(slot) = entry.state.loaded() else {
                    continue;
                };
                if state.manager.storages[storage_index].in_process.is_some() {
                    continue;
                }
                match slot.pending_write() {
                    Ok(Ok(Some(write))) => pending.push((write, storage_index, slot)),
                    Ok(Ok(None)) => {}
                    Ok(Err(error)) => errors.push(error),
                    Err(Borrowed) => errors.push(
                        state.already_borrowed(entry.type_id, state.session_name(entry.type_id)),
                    ),
                }
            }
        }
        let mut release = match state.leases.get() {
            Some(leases) => leases.for_release(),
            None => SmallVec::new(),
        };
        // Stable: one batch per storage, in the order the sessions were taken.
        pending.sort_by_key(|(_, storage_index, _)| *storage_index);
        while let Some(storage_index) = pending
            .first()
            .map(|(_, storage_index, _)| *storage_index)
            .or_else(|| release.first().map(|(index, _)| *index))
        {
            let batch = pending
                .iter()
                .take_while(|(_, index, _)| *index == storage_index)
                .count();
            let (writes, slots): (PerSession<Write>, PerSession<&dyn ErasedSlot>) = pending
                .drain(..batch)
                .map(|(write, _, slot)| (write, slot))
                .unzip();
            let keys = match release
                .iter()
                .position(|(index, _)| *index == storage_index)
            {
                Some(position) => release.swap_remove(position).1,
                None => LeasedKeys::new(),
            };
            let storage = &state.manager.storages[storage_index];
            let span = tracing::debug_span!("session.commit", storage = %storage.name, writes = writes.len(), released = keys.len());
            let timer = metrics::Timer::start();
            let written = match (storage.storage.leases(), state.leases.get()) {
                (Some(leases), Some(update_leases)) if !keys.is_empty() => {
                    leases
                        .write_and_release(&writes, &keys, update_leases.owner())
                        .instrument(span)
                        .await
                }
                _ if writes.is_empty() => continue,
                _ => storage.storage.write(&writes).instrument(span).await,
            };
            metrics::committed(&storage.metrics, timer);
            if let Some(update_leases) = state.leases.get() {
                update_leases.released(storage_index);
            }
            match written {
                Ok(outcomes) if outcomes.len() == writes.len() => {
                    for (slot, outcome) in slots.iter().zip(outcomes) {
                        slot.report(outcome, &mut errors);
                    }
                }
                Ok(outcomes) => {
                    let source = StorageError::other(format!(
                        "answered {} outcomes for {} writes",
                        outcomes.len(),
                        writes.len()
                    ));
                    metrics::storage_failed(&storage.name, Operation::Commit, &source);
                    for slot in &slots {
                        slot.storage_failed(&source, &mut errors);
                    }
                }
                Err(source) => {
                    metrics::storage_failed(&storage.name, Operation::Commit, &source);
                    if slots.is_empty() {
                        tracing::warn!(storage = %storage.name, error = %source, "session leases not released; they expire by themselves");
                    }
                    for slot in &slots {
                        slot.storage_failed(&source, &mut errors);
                    }
                }
            }
        }
        first_error(errors)
    }
}

/// An update's lifecycle, started from the manager's configuration.
impl SessionManager {
    /// Starts the sessions of one update: takes the keys of the eager
    /// sessions, then loads them in one batch per storage.
    ///
    /// This never fails: a session that could not be loaded (missing id,
    /// storage down, undecodable bytes) reports its error from its accessor,
    /// and the others keep working.
    ///
    /// When every eager session lives in a memory storage and no other
    /// update holds its key, the keys are taken and the sessions loaded when
    /// this is called, and the future is ready; otherwise the future waits
    /// for them. It holds its own handle on the manager: it does not borrow
    /// `self`.
    pub fn begin(&self, ids: UpdateIds) -> impl Future<Output = Sessions> + Send + 'static {
        Sessions::begin(Arc::clone(&self.inner), ids)
    }

    /// Runs `handler` with the sessions of one update and commits them after
    /// it (when it succeeded, or always per [`SavePolicy`]).
    ///
    /// A commit failure becomes the result when the handler succeeded; when
    /// it failed, its own error wins and the commit error is logged.
    pub async fn run<F, Fut, T, E>(&self, ids: UpdateIds, handler: F) -> Result<T, E>
    where
        F: FnOnce(Sessions) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let sessions = self.begin(ids).await;
        let result = handler(sessions.clone()).await;
        let outcome = match result {
            Ok(_) => HandlerOutcome::Succeeded,
            Err(_) => HandlerOutcome::Failed,
        };
        let committed = sessions.commit(outcome).await;
        match (result, committed) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(error)) => Err(error.into()),
            (Err(error), Ok(())) => Err(error),
            (Err(error), Err(not_saved)) => {
                tracing::warn!(error = %not_saved, "session not saved after a failed handler");
                Err(error)
            }
        }
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

/// Whether a session keyed by `key` may have to be moved from the group
/// the supergroup of the update `ids` was, on first use (see
/// `chat_migration`).
fn follows_members(key: &KeyStrategy, ids: &UpdateIds) -> bool {
    key.follows_members() && crate::chat_migration::in_supergroup(ids)
}

/// The error for a session type this update has no loaded slot of.
fn not_registered<T: Session>() -> Error {
    Error::NotRegistered {
        session: T::NAME,
        type_name: std::any::type_name::<T>(),
    }
}

/// Borrows the typed value of a loaded slot for one accessor call.
fn borrow<'a, T: Session>(
    state: &UpdateState,
    slot: &'a dyn ErasedSlot,
) -> Result<SessionRef<'a, T>, Error> {
    let borrowed = || state.already_borrowed(TypeId::of::<T>(), T::NAME);
    let typed = (slot as &dyn Any)
        .downcast_ref::<TypedSlot<T>>()
        // Entries are keyed by `TypeId`, so this only fires if that invariant breaks.
        .ok_or_else(borrowed)?;
    let guard = typed.try_lock().ok_or_else(borrowed)?;
    Ok(SessionRef::new(guard))
}

/// The entry of a session kept in `memory`, whose key `lock` holds: its
/// slot, or the error its load met.
fn in_process_entry(
    storage: &Arc<StorageEntry>,
    memory: &MemoryStorage,
    registration: &Registration,
    key: StorageKey,
    lock: KeyClaim,
) -> EntryState {
    let meta = SlotMeta::new(storage, registration.name, key, lock, None);
    EntryState::opened((registration.open_in_process)(meta, memory))
}

/// Loads the eager sessions of an update with no await when it can: all live
/// in memory storages, and their keys are free (no other update of this
/// process holds or waits for them). Answers whether it did; if not, it took
/// nothing, and [`load_eager`] does the work.
///
/// Keys are taken in registration order: an update that waits for none
/// cannot close a cycle of waits, so the key order [`load_eager`] keeps for
/// that is not needed here.
fn load_eager_at_once(manager: &ManagerInner, ids: &UpdateIds, id: u64, slots: &mut Slots) -> bool {
    if !manager.eager_in_process {
        return false;
    }
    let timer = metrics::Timer::start();
    for registration in manager.registrations.iter().filter(|r| !r.lazy) {
        // A session not kept in memory is not claimed here (`false`).
        if follows_members(&registration.key, ids)
            || !(registration.claim_entry)(manager, ids, id, registration, slots)
        {
            // Dropping what was taken gives the keys back.
            slots.clear();
            return false;
        }
    }
    // Without the feature, nothing reads the labels this would gather.
    for (index, storage) in manager
        .storages
        .iter()
        .enumerate()
        .filter(|_| metrics::ENABLED)
    {
        let mut eager = manager
            .registrations
            .iter()
            .filter(|r| !r.lazy && r.storage_index == index)
            .map(|r| r.name)
            .peekable();
        if eager.peek().is_some() {
            metrics::loaded(
                &metrics::SessionNames::collect(eager),
                &storage.metrics,
                timer,
            );
        }
    }
    true
}

/// Locks and loads the eager sessions of an update: keys in a fixed order (so
/// two updates never wait on each other in a cycle), then one load per storage
/// (taking the keys' leases where the storage has them).
async fn load_eager(state: &UpdateState) -> Slots {
    // Made in the order keys are taken and storages answer, then put in
    // the order of the registrations (see `UpdateState::eager`).
    let mut entries: PerSession<(usize, EntryState)> = load_eager_entries(state).await;
    entries.sort_unstable_by_key(|(index, _)| *index);
    entries.into_iter().map(|(_, entry)| entry).collect()
}

/// The entries [`load_eager`] makes, each with its registration's place.
async fn load_eager_entries(state: &UpdateState) -> PerSession<(usize, EntryState)> {
    let manager = &*state.manager;
    let mut entries = PerSession::new();
    let mut wanted: PerSession<(&Registration, StorageKey)> = SmallVec::new();
    for registration in manager.registrations.iter().filter(|r| !r.lazy) {
        match manager.registration_key(registration, &state.ids) {
            Ok(key) => wanted.push((registration, key)),
            Err(error) => entries.push((registration.index, EntryState::failed(error))),
        }
    }
    if wanted.is_empty() {
        return entries;
    }
    let deadline = Instant::now() + manager.lock_timeout;
    wanted.sort_unstable_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
    let mut locked: PerSession<_> = SmallVec::new();
    for (registration, key) in wanted {
        let taker = state.taker(registration.name, registration.type_name);
        let home = &manager.storages[registration.storage_index].home;
        match lock_key(manager, home, registration.name, &key, taker).await {
            Ok(lock) => locked.push((registration, key, lock)),
            Err(error) => entries.push((registration.index, EntryState::failed(error))),
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
        let (keys, held): (PerSession<StorageKey>, PerSession<_>) = locked
            .drain(..batch)
            .map(|(registration, key, lock)| (key, (registration, lock)))
            .unzip();
        let sessions = metrics::SessionNames::collect(held.iter().map(|(r, _)| r.name));
        let storage = &manager.storages[storage_index];
        let follows = |registration: &Registration| follows_members(&registration.key, &state.ids);
        if let Some(memory) = &storage.in_process
            && !held.iter().any(|(registration, _)| follows(registration))
        {
            let timer = metrics::Timer::start();
            for (key, (registration, lock)) in keys.into_iter().zip(held) {
                entries.push((
                    registration.index,
                    in_process_entry(storage, memory, registration, key, lock.into_claim()),
                ));
            }
            metrics::loaded(&sessions, &storage.metrics, timer);
            continue;
        }
        let loaded = state.load(storage_index, &keys, &sessions, deadline).await;
        if let Err(LoadError::Storage(error)) = &loaded {
            for (_, lock) in &held {
                lock.storage_failed(error, &storage.name);
            }
        }
        for (index, (key, (registration, lock))) in keys.iter().zip(held).enumerate() {
            let state = match &loaded {
                Ok((records, lease_owner)) => {
                    let meta = SlotMeta::new(
                        storage,
                        registration.name,
                        key.clone(),
                        lock.into_claim(),
                        lease_owner.clone(),
                    );
                    let record = match &records[index] {
                        None if follows(registration) => {
                            let followed = crate::chat_migration::follow(
                                manager,
                                lease_owner.as_ref().map(|_| state.leases()),
                                state.taker(registration.name, registration.type_name),
                                crate::chat_migration::Member {
                                    session: registration.name,
                                    storage_index,
                                    key,
                                    ttl: registration.ttl,
                                },
                                &state.ids,
                            )
                            .await;
                            match followed {
                                Ok(record) => record,
                                Err(error) => {
                                    entries.push((registration.index, EntryState::failed(error)));
                                    continue;
                                }
                            }
                        }
                        record => record.clone(),
                    };
                    EntryState::opened((registration.open)(meta, record))
                }
                Err(LoadError::Leased { index: busy }) if keys.get(*busy) == Some(key) => {
                    EntryState::failed(lease_timeout(manager, storage, registration.name, key))
                }
                Err(LoadError::Leased { index: busy }) => {
                    let source = StorageError::new(
                        crate::storage::StorageErrorKind::Timeout,
                        format!(
                            "loaded in one batch with `{}`, which an update of another \
                             process kept leased for more than {:?}",
                            keys.get(*busy).map_or("?", StorageKey::as_str),
                            manager.lock_timeout
                        ),
                    );
                    EntryState::failed(storage.failed(registration.name, key, source))
                }
                Err(LoadError::Storage(source)) => {
                    EntryState::failed(storage.failed(registration.name, key, source.clone()))
                }
            };
            entries.push((registration.index, state));
        }
    }
    entries
}

fn load_error(
    manager: &ManagerInner,
    storage: &StorageEntry,
    session: &'static str,
    key: &StorageKey,
    error: LoadError,
) -> Error {
    match error {
        LoadError::Leased { .. } => lease_timeout(manager, storage, session, key),
        LoadError::Storage(source) => storage.failed(session, key, source),
    }
}

fn lease_timeout(
    manager: &ManagerInner,
    storage: &StorageEntry,
    session: &'static str,
    key: &StorageKey,
) -> Error {
    Error::LockTimeout {
        session,
        key: key.to_string(),
        waited: manager.lock_timeout,
        holder: LockHolder::Lease {
            storage: Arc::clone(&storage.name),
        },
    }
}
