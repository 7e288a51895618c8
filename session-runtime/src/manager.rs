//! [`SessionManager`]: the long-lived configuration every update starts from
//! (the update's lifecycle, [`SessionManager::begin`] and [`SessionManager::run`],
//! lives with the context).

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use smol_str::SmolStr;

use crate::chat_migration::lookups::ChatLookups;
use crate::codec::CodecError;
use crate::error::Error;
use crate::key::{Id, KeyStrategy, Scope, StorageKey, UpdateIds};
use crate::lock::{KeyHome, KeyLocks};
use crate::metrics::StorageMetrics;
use crate::session::Session;
use crate::slot::{self, SlotBox, SlotMeta, Slots};
use crate::storage::memory::{IdKey, MemoryStorage, UpdateKey};
use crate::storage::{Record, SharedStorage, Storage, StorageError};

/// When sessions changed by a handler are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SavePolicy {
    /// Only when the handler succeeded; a failed handler's changes are dropped (default).
    #[default]
    OnSuccess,
    /// Whatever the handler returned.
    Always,
}

/// The default time an update waits for a key another update holds.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// The default time to live of a cross-process lease: how long a key stays
/// blocked after the process holding it died. Running handlers renew their
/// leases every third of it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// Configuration shared by every update: storages, key layout, save policy and
/// the session types loaded before the handler.
///
/// Build one at start-up and start a [`Sessions`](crate::Sessions) context per update with
/// [`SessionManager::begin`] (framework glue does this for you). Cloning is cheap.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tg_session::{MemoryStorage, Session, SessionManager};
///
/// #[derive(Session, Serialize, Deserialize)]
/// #[session(key = "counter")]
/// struct Counter {
///     apple: u32,
/// }
///
/// let manager = SessionManager::builder()
///     .storage(MemoryStorage::new())
///     .prefix("my_bot")
///     .register::<Counter>()
///     .build()?;
/// # Ok::<(), tg_session::Error>(())
/// ```
#[derive(Clone)]
pub struct SessionManager {
    pub(crate) inner: Arc<ManagerInner>,
}

pub(crate) struct ManagerInner {
    /// Index 0 is the default storage.
    pub(crate) storages: Vec<Arc<StorageEntry>>,
    prefix: Option<String>,
    bot_id_in_keys: bool,
    pub(crate) save_policy: SavePolicy,
    pub(crate) lock_timeout: Duration,
    pub(crate) lease_ttl: Duration,
    /// The eager session types first, then the lazy ones, each in the
    /// order registered.
    pub(crate) registrations: Vec<Registration>,
    /// The eager session types, as `registrations` starts: an update keeps
    /// its eager sessions' entries in this order, and an accessor finds its
    /// own by its place here (kept apart from the registrations, some
    /// hundred bytes each, so that the search reads one line).
    pub(crate) eager_types: Box<[TypeId]>,
    /// Every eager session type lives in a memory storage: an update whose
    /// keys are free loads them all at once, with no await.
    pub(crate) eager_in_process: bool,
    /// The manager's key locks: the keys of its storages that keep none of
    /// their own (see [`StorageEntry::home`]), and chat migrations' markers.
    pub(crate) locks: Arc<dyn KeyHome>,
    /// Which supergroups this process saw come from which group.
    pub(crate) chat_lookups: ChatLookups,
}

pub(crate) struct StorageEntry {
    pub(crate) storage: SharedStorage,
    pub(crate) name: Arc<str>,
    /// The storage itself when it is a [`MemoryStorage`]: its sessions are
    /// kept as values, loaded and written with no codec and no await.
    pub(crate) in_process: Option<MemoryStorage>,
    /// Its metrics' labels and handles.
    pub(crate) metrics: StorageMetrics,
    /// Where the keys of its sessions are locked and given back: the
    /// manager's key locks, or the records of a memory storage (a slot
    /// keeps this entry already: no other reference).
    pub(crate) home: Arc<dyn KeyHome>,
}

impl StorageEntry {
    /// This storage's failure at `key` of session `session`, as a user sees it.
    pub(crate) fn failed(
        &self,
        session: &'static str,
        key: &StorageKey,
        source: StorageError,
    ) -> Error {
        Error::Storage {
            session,
            key: key.to_string(),
            storage: Arc::clone(&self.name),
            source,
        }
    }
}

/// Decodes a loaded record into a slot of the registered type.
pub(crate) type OpenSlot = fn(SlotMeta, Option<Record>) -> Result<SlotBox, Error>;

/// Loads a slot of the registered type from a memory storage, as a value.
pub(crate) type OpenInProcess = fn(SlotMeta, &MemoryStorage) -> Result<SlotBox, Error>;

/// Takes the key of an update's eager session of the registered type, kept
/// in a memory storage, and pushes its entry into the update's slots, if
/// the key is free (see [`slot::claim_entry`]).
pub(crate) type ClaimEntry = fn(&ManagerInner, &UpdateIds, u64, &Registration, &mut Slots) -> bool;

/// A session type known to the manager, with its type erased.
pub(crate) struct Registration {
    /// Its place in `ManagerInner::registrations`: set by the builder.
    pub(crate) index: usize,
    /// Its place in the order the builder was given the types, which
    /// `registrations` does not keep (eager types come first there): the
    /// order `SessionManager::data` lists them in.
    pub(crate) registered: usize,
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) name: &'static str,
    pub(crate) lazy: bool,
    pub(crate) key: KeyStrategy,
    pub(crate) storage_index: usize,
    pub(crate) open: OpenSlot,
    pub(crate) open_in_process: OpenInProcess,
    pub(crate) claim_entry: ClaimEntry,
    pub(crate) ttl: Option<Duration>,
    /// Set once a value of this type was checked to survive its codec's
    /// round trip (see [`Registration::check_round_trip`]).
    round_trip_checked: AtomicBool,
    /// The bytes of the type's initial value, encoded the first time a
    /// session of it with nothing stored is written: what its value is
    /// compared with when the type has no `PartialEq` (see
    /// [`Registration::initial_bytes`]).
    initial_bytes: OnceLock<Vec<u8>>,
    /// Moved at once when its chat becomes a supergroup.
    pub(crate) follows_chat: bool,
    /// The text its keys start with, when it is the same for every update
    /// (no bot id in keys): set by the builder.
    namespace: Option<SmolStr>,
    /// The namespace's hash, for a memory storage's lookups by a key's
    /// parts (see [`ManagerInner::update_key`]).
    namespace_hash: u64,
}

impl Registration {
    fn of<T: Session>(storage_index: usize) -> Self {
        Self {
            index: 0,
            registered: 0,
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            name: T::NAME,
            lazy: T::LAZY,
            key: T::KEY,
            storage_index,
            open: slot::open::<T>,
            open_in_process: slot::open_in_process::<T>,
            claim_entry: slot::claim_entry::<T>,
            ttl: T::TTL,
            round_trip_checked: AtomicBool::new(false),
            initial_bytes: OnceLock::new(),
            namespace: None,
            namespace_hash: 0,
            follows_chat: matches!(T::KEY, KeyStrategy::Scope(Scope::Chat | Scope::ChatThread)),
        }
    }
}

impl Registration {
    /// Whether a value of this type written to a memory storage is first
    /// checked to survive its codec's round trip: always in debug builds,
    /// once per type and manager in release builds.
    pub(crate) fn check_round_trip(&self) -> bool {
        // Read before the swap: every later write only reads the flag, with
        // no write to a line the threads share.
        cfg!(debug_assertions)
            || (!self.round_trip_checked.load(Ordering::Relaxed)
                && !self.round_trip_checked.swap(true, Ordering::Relaxed))
    }

    /// The bytes of `T::initial()` (`T` is this registration's type),
    /// encoded once: a session first written compares its value's bytes
    /// with them, rather than encode a new initial value each time.
    ///
    /// So a type whose `initial()` is not always the same value (a
    /// timestamp in it, say) is compared with the first one encoded: either
    /// way, a value that differs from it is stored.
    pub(crate) fn initial_bytes<T: Session>(&self) -> Result<&[u8], CodecError> {
        debug_assert_eq!(self.type_id, TypeId::of::<T>());
        if let Some(bytes) = self.initial_bytes.get() {
            return Ok(bytes);
        }
        let bytes = crate::session::encode_record(&T::initial())?;
        Ok(self.initial_bytes.get_or_init(|| bytes))
    }
}

impl ManagerInner {
    /// The storage key of session `name` for this update.
    pub(crate) fn storage_key(
        &self,
        name: &'static str,
        strategy: &KeyStrategy,
        ids: &UpdateIds,
    ) -> Result<StorageKey, Error> {
        let missing = |needs| missing_id(name, needs);
        let bot_id = match self.bot_id_in_keys {
            true => Some(
                ids.bot_id()
                    .ok_or_else(|| missing("the bot's id (keys include it)"))?,
            ),
            false => None,
        };
        StorageKey::for_update(self.prefix.as_deref(), bot_id, name, strategy, ids).map_err(missing)
    }

    /// The key of `registration`'s session for the update `ids`, from its
    /// namespace built once when it has one.
    ///
    /// The error is boxed, as the update's list keeps it: the answer is
    /// moved on every update, and a missing id is rare.
    pub(crate) fn registration_key(
        &self,
        registration: &Registration,
        ids: &UpdateIds,
    ) -> Result<StorageKey, Box<Error>> {
        match &registration.namespace {
            Some(namespace) => StorageKey::in_namespace(namespace, &registration.key, ids)
                .map_err(|needs| Box::new(missing_id(registration.name, needs))),
            None => self
                .storage_key(registration.name, &registration.key, ids)
                .map_err(Box::new),
        }
    }

    /// The key of `registration`'s session for the update `ids`, as a
    /// memory storage finds it: by its namespace and id where it is made of
    /// them (a `user` or `chat` key with no bot id in it), with no text
    /// built; else built as [`ManagerInner::registration_key`] builds it.
    #[inline]
    pub(crate) fn update_key<'a>(
        &self,
        registration: &'a Registration,
        ids: &UpdateIds,
    ) -> Result<UpdateKey<'a>, Box<Error>> {
        if let (Some(namespace), Some(id)) =
            (&registration.namespace, Id::of_key(&registration.key, ids))
        {
            return Ok(UpdateKey::Id(IdKey {
                namespace,
                namespace_hash: registration.namespace_hash,
                id,
            }));
        }
        self.registration_key(registration, ids)
            .map(UpdateKey::Built)
    }

    /// The key prefix every key starts with, if any.
    pub(crate) fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    pub(crate) fn registration(&self, type_id: TypeId) -> Option<&Registration> {
        self.registrations.iter().find(|r| r.type_id == type_id)
    }
}

impl SessionManager {
    /// Starts configuring a manager (memory storage unless told otherwise).
    pub fn builder() -> SessionManagerBuilder {
        SessionManagerBuilder::default()
    }
}

impl Default for SessionManager {
    /// A manager over a fresh [`MemoryStorage`] with no registered types.
    fn default() -> Self {
        Self::builder().build_unchecked()
    }
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &self.inner;
        f.debug_struct("SessionManager")
            .field(
                "storages",
                &inner.storages.iter().map(|s| &*s.name).collect::<Vec<_>>(),
            )
            .field("prefix", &inner.prefix)
            .field("bot_id_in_keys", &inner.bot_id_in_keys)
            .field("save_policy", &inner.save_policy)
            .field("lock_timeout", &inner.lock_timeout)
            .field("lease_ttl", &inner.lease_ttl)
            .field(
                "sessions",
                &inner
                    .registrations
                    .iter()
                    .map(|r| r.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Configures a [`SessionManager`].
#[must_use]
pub struct SessionManagerBuilder {
    default_storage: Option<SharedStorage>,
    prefix: Option<String>,
    bot_id_in_keys: bool,
    save_policy: SavePolicy,
    lock_timeout: Duration,
    lease_ttl: Duration,
    registrations: Vec<(Registration, Option<SharedStorage>)>,
    /// `key_fn` types that move with their chat, named by type.
    chat_keyed: Vec<(TypeId, &'static str, &'static str)>,
}

impl Default for SessionManagerBuilder {
    fn default() -> Self {
        Self {
            default_storage: None,
            prefix: None,
            bot_id_in_keys: false,
            save_policy: SavePolicy::default(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            lease_ttl: DEFAULT_LEASE_TTL,
            registrations: Vec::new(),
            chat_keyed: Vec::new(),
        }
    }
}

impl SessionManagerBuilder {
    /// The storage of every session type not given its own (default: a new
    /// [`MemoryStorage`]).
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.default_storage = Some(Arc::new(storage));
        self
    }

    /// Prepends `prefix:` to every key, so several bots or apps share one storage.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Puts the bot's id in every key (after the prefix), so several bots
    /// share one storage without sharing sessions. Updates then need a bot id.
    pub fn bot_id_in_keys(mut self, enabled: bool) -> Self {
        self.bot_id_in_keys = enabled;
        self
    }

    /// When changed sessions are written.
    pub fn save_policy(mut self, policy: SavePolicy) -> Self {
        self.save_policy = policy;
        self
    }

    /// How long an update waits for a session key that another update holds
    /// (in this process, or in another through the storage's lease), before
    /// its accessor fails with [`Error::LockTimeout`] (default 30 s).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The time to live of the leases taken in storages shared across
    /// processes (default [`DEFAULT_LEASE_TTL`], 15 s; at least 30 ms).
    ///
    /// If a process dies while it holds a key, the other processes' updates
    /// of that key wait at most this long. A handler that runs longer keeps
    /// its leases: they are renewed every third of this time. Keep it well
    /// above the storage's command timeout, so a renewal has time to land.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// Registers a session type in the default storage. Eager types must be
    /// registered: they are loaded before the handler. Lazy types may be, to
    /// be checked for key clashes at build time.
    pub fn register<T: Session>(mut self) -> Self {
        self.registrations.push((Registration::of::<T>(0), None));
        self
    }

    /// Registers a session type kept in its own storage. Session types given
    /// the same `Arc` share its load and commit round trips.
    pub fn register_in<T: Session>(mut self, storage: SharedStorage) -> Self {
        self.registrations
            .push((Registration::of::<T>(0), Some(storage)));
        self
    }

    /// Moves the sessions of `T`, a registered type with a `key_fn`, to the
    /// new chat id when a group becomes a supergroup, as the `chat` and
    /// `chat_thread` scopes are moved (see
    /// [`SessionManager::migrate_chat`]).
    ///
    /// The `key_fn` is called twice, with ids that carry only the old chat
    /// id and only the new one (and the bot's id): a key that depends on the
    /// chat alone moves; one that needs another id gives `None` and is left
    /// alone. [`build`](Self::build) fails with [`Error::NotRegistered`] if
    /// `T` is not registered too.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use tg_session_runtime::{Json, KeyStrategy, Session, SessionManager, UpdateIds};
    /// fn per_chat_and_bot(ids: &UpdateIds) -> Option<String> {
    ///     Some(format!("{}@{}", ids.chat_id()?, ids.bot_id()?))
    /// }
    /// # #[derive(Serialize, Deserialize, Default)] struct Rules { text: String }
    /// # impl Session for Rules { const NAME: &'static str = "rules"; type Codec = Json;
    /// #     const KEY: KeyStrategy = KeyStrategy::Custom(per_chat_and_bot);
    /// #     fn initial() -> Self { Rules::default() } }
    /// let manager = SessionManager::builder()
    ///     .register::<Rules>() // `#[session(key_fn = per_chat_and_bot)]`
    ///     .follow_chat_migration::<Rules>()
    ///     .build()?;
    /// # Ok::<(), tg_session_runtime::Error>(())
    /// ```
    pub fn follow_chat_migration<T: Session>(mut self) -> Self {
        self.chat_keyed
            .push((TypeId::of::<T>(), T::NAME, std::any::type_name::<T>()));
        self
    }

    /// Checks the configuration and builds the manager.
    ///
    /// Fails with [`Error::DuplicateSession`] when two registered types use
    /// the same key name (their records would overwrite each other).
    pub fn build(self) -> Result<SessionManager, Error> {
        for (index, (later, _)) in self.registrations.iter().enumerate() {
            if let Some((earlier, _)) = self.registrations[..index]
                .iter()
                .find(|(earlier, _)| earlier.name == later.name)
            {
                return Err(Error::DuplicateSession {
                    session: later.name,
                    first: earlier.type_name,
                    second: later.type_name,
                });
            }
        }
        for (type_id, session, type_name) in &self.chat_keyed {
            if !self
                .registrations
                .iter()
                .any(|(registration, _)| registration.type_id == *type_id)
            {
                return Err(Error::NotRegistered { session, type_name });
            }
        }
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> SessionManager {
        crate::metrics::describe();
        let default = self
            .default_storage
            .unwrap_or_else(|| Arc::new(MemoryStorage::new()));
        let mut storages = vec![default];
        let mut registrations = Vec::with_capacity(self.registrations.len());
        let mut registered = self.registrations;
        for (order, (registration, _)) in registered.iter_mut().enumerate() {
            registration.registered = order;
        }
        // Stable: the eager types first, each kind in the order registered.
        registered.sort_by_key(|(registration, _)| registration.lazy);
        for (mut registration, storage) in registered {
            registration.namespace = (!self.bot_id_in_keys)
                .then(|| StorageKey::namespace_of(self.prefix.as_deref(), registration.name));
            registration.namespace_hash = registration
                .namespace
                .as_deref()
                .map_or(0, crate::storage::memory::head_hash);
            registration.follows_chat |= self
                .chat_keyed
                .iter()
                .any(|(type_id, ..)| *type_id == registration.type_id);
            if let Some(storage) = storage {
                let same = |known: &SharedStorage| {
                    std::ptr::addr_eq(Arc::as_ptr(known), Arc::as_ptr(&storage))
                };
                registration.storage_index = match storages.iter().position(same) {
                    Some(index) => index,
                    None => {
                        storages.push(storage);
                        storages.len() - 1
                    }
                };
            }
            registration.index = registrations.len();
            registrations.push(registration);
        }
        let locks = Arc::<KeyLocks>::default();
        let storages: Vec<Arc<StorageEntry>> = storages
            .into_iter()
            .enumerate()
            .map(|(index, storage)| {
                let sessions = registrations
                    .iter()
                    .filter(|registration| registration.storage_index == index)
                    .map(|registration| registration.name);
                entry(storage, sessions, Arc::clone(&locks))
            })
            .collect();
        let eager_in_process = registrations
            .iter()
            .filter(|registration| !registration.lazy)
            .all(|registration| storages[registration.storage_index].in_process.is_some());
        let eager_types = registrations
            .iter()
            .take_while(|registration| !registration.lazy)
            .map(|registration| registration.type_id)
            .collect();
        SessionManager {
            inner: Arc::new(ManagerInner {
                eager_in_process,
                eager_types,
                storages,
                prefix: self.prefix,
                bot_id_in_keys: self.bot_id_in_keys,
                save_policy: self.save_policy,
                lock_timeout: self.lock_timeout,
                lease_ttl: self.lease_ttl,
                registrations,
                locks: locks as Arc<dyn KeyHome>,
                chat_lookups: ChatLookups::default(),
            }),
        }
    }
}

/// The error for a key of session `session` that needs an id the update lacks.
fn missing_id(session: &'static str, needs: &'static str) -> Error {
    Error::MissingId { session, needs }
}

/// The entry of `storage`, where the sessions named `sessions` are
/// registered, in a manager whose key locks are `locks`.
fn entry(
    storage: SharedStorage,
    sessions: impl Iterator<Item = &'static str>,
    locks: Arc<KeyLocks>,
) -> Arc<StorageEntry> {
    let name = Arc::from(storage.name());
    let in_process = memory_storage(&storage);
    let home = match &in_process {
        Some(memory) => memory.key_home(&locks),
        None => locks as Arc<dyn KeyHome>,
    };
    Arc::new(StorageEntry {
        metrics: StorageMetrics::new(&name, sessions),
        storage,
        name,
        in_process,
        home,
    })
}

/// The [`MemoryStorage`] behind `storage`, also when it was handed over as a
/// [`SharedStorage`] of its own; `None` for any other storage, wrappers
/// included (a wrapper sees every call as bytes, as it expects).
fn memory_storage(storage: &SharedStorage) -> Option<MemoryStorage> {
    let any: &dyn Any = &**storage;
    if let Some(memory) = any.downcast_ref::<MemoryStorage>() {
        return Some(memory.clone());
    }
    any.downcast_ref::<SharedStorage>().and_then(memory_storage)
}
