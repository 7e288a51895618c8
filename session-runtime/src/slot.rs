//! One session of one update: its entry in the update's list, its value,
//! what was loaded, whether it changed.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::OnceCell;

use crate::codec::CodecError;
use crate::codec::{self, Codec};
use crate::error::Error;
use crate::key::{StorageKey, UpdateIds};
use crate::lock::{KeyClaim, Taker};
use crate::manager::{ManagerInner, Registration, StorageEntry};
use crate::metrics::{self, DecodeError, Operation};
use crate::session::{OnDecodeError, Session, encode_record, encode_record_into};
use crate::storage::memory::{Found, HeldRecord, MemoryStorage, UpdateKey};
use crate::storage::{LeaseOwner, Record, Storage, StorageError, Write, WriteOutcome};

/// The eager sessions of an update, one entry per eager registration in
/// its order (see `ManagerInner::eager_types`): inline for the first few,
/// as most updates have. An entry is two words: pushed from registers, with
/// no copy through the stack (a 56-byte entry was read back in 16-byte
/// pieces while its 8-byte stores were in flight, on every session).
pub(crate) type Slots = PerSession<EntryState>;

/// How many sessions an update keeps without allocating for them.
const INLINE_SESSIONS: usize = 4;

/// Something per session of an update, inline for the first few.
pub(crate) type PerSession<T> = SmallVec<[T; INLINE_SESSIONS]>;

/// An update's entry for one lazy session type: which, and its slot.
pub(crate) struct SlotEntry {
    pub(crate) type_id: TypeId,
    /// Its registration's place in `ManagerInner::registrations`, or
    /// `usize::MAX` for a lazy type that was not registered: no search by
    /// type at the commit.
    pub(crate) registration: usize,
    /// The storage its session is kept in (see `ManagerInner::storages`).
    pub(crate) storage_index: usize,
    pub(crate) state: EntryState,
}

impl SlotEntry {
    pub(crate) fn new(registration: &Registration, state: EntryState) -> Self {
        Self {
            type_id: registration.type_id,
            registration: registration.index,
            storage_index: registration.storage_index,
            state,
        }
    }
}

/// A session slot of some type, owned by its update's entry for as long as
/// the update lives: an accessor borrows it from there (see `SessionRef`).
// A new box per slot and update: keeping dropped slots per thread for the
// next update of their type was slower than the allocator (4 sessions
// 463-475 -> 524-559 ns per update, `benches/paired.rs`): finding one by
// type and dropping its stale state cost what malloc and free do.
pub(crate) type SlotBox = Box<dyn ErasedSlot>;

/// Where an update's session of one type stands: two words.
pub(crate) enum EntryState {
    /// A session loaded: an eager one before the handler, a lazy one kept
    /// in memory when first asked for.
    Loaded(SlotBox),
    /// Not loaded: it failed, or waits for its first use (boxed: rare, and
    /// the entry stays two words).
    NotLoaded(Box<NotLoaded>),
}

// The two words `Slots` is laid out for.
const _: () = assert!(std::mem::size_of::<EntryState>() == 2 * std::mem::size_of::<usize>());

/// An entry not loaded (see [`EntryState::NotLoaded`]).
pub(crate) enum NotLoaded {
    /// An eager session that could not be loaded.
    Failed(Error),
    /// A lazy session: loaded at most once, on first access.
    Lazy(OnceCell<SlotBox>),
}

/// An error an entry keeps, boxed or not: moved into the entry's own box
/// as it is, with no box made only to be opened again.
pub(crate) trait EntryError {
    fn into_error(self) -> Error;
}

impl EntryError for Error {
    fn into_error(self) -> Error {
        self
    }
}

impl EntryError for Box<Error> {
    fn into_error(self) -> Error {
        *self
    }
}

impl EntryState {
    /// A failure with `error`, boxed or not.
    pub(crate) fn failed(error: impl EntryError) -> Self {
        EntryState::NotLoaded(Box::new(NotLoaded::Failed(error.into_error())))
    }

    /// A lazy session, loaded on first access.
    pub(crate) fn lazy() -> Self {
        EntryState::NotLoaded(Box::new(NotLoaded::Lazy(OnceCell::new())))
    }

    /// The slot an eager session's load opened, or the error it met.
    // Always inlined: `claim_entry` makes every session's entry with it.
    #[inline(always)]
    pub(crate) fn opened(opened: Result<SlotBox, impl EntryError>) -> Self {
        match opened {
            Ok(slot) => EntryState::Loaded(slot),
            Err(error) => EntryState::failed(error),
        }
    }

    // Inlined: every accessor calls it.
    #[inline]
    pub(crate) fn loaded(&self) -> Option<&dyn ErasedSlot> {
        match self {
            EntryState::Loaded(slot) => Some(slot.as_ref()),
            EntryState::NotLoaded(not_loaded) => match &**not_loaded {
                NotLoaded::Lazy(cell) => cell.get().map(AsRef::as_ref),
                NotLoaded::Failed(_) => None,
            },
        }
    }
}

/// What a slot knows about where its session lives. Holding it keeps the key
/// locked for this update, until the commit gives it back (see
/// [`SlotMeta::give_back`]) or, for an update never committed, until it is
/// dropped.
pub(crate) struct SlotMeta {
    pub(crate) session: &'static str,
    pub(crate) key: StorageKey,
    /// Its storage, shared with the manager (one reference to count, not
    /// two), and where its key is locked (`StorageEntry::home`): where the
    /// key goes back.
    pub(crate) storage: Arc<StorageEntry>,
    /// The update's lease on the key, when its storage has leases.
    pub(crate) lease_owner: Option<LeaseOwner>,
    pub(crate) lock: KeyClaim,
    /// The memory record the key was taken in, when it was: the commit
    /// writes there, with no second access to the map.
    pub(crate) record: Option<HeldRecord>,
}

impl Drop for SlotMeta {
    fn drop(&mut self) {
        // Given back by the commit already, but for an update dropped
        // without one or a slot that failed to open.
        self.give_back();
    }
}

impl SlotMeta {
    /// Gives the key back if this update still holds it: the commit's
    /// last step for each session (most keys kept in memory records were
    /// freed by their write already).
    // Inlined: a check of a flag, the work itself out of line.
    #[inline]
    pub(crate) fn give_back(&mut self) {
        if !self.lock.is_released() {
            self.give_back_held();
        }
    }

    /// Gives the held key back: a key taken in its record (a session not
    /// written: untouched, or its handler failed) is freed there, with no
    /// access to the map; any other goes back through its home.
    // Never inlined: the drop of every slot would carry it, and most have
    // nothing to give back (10 to 15 instructions per session inlined:
    // callgrind, `per_update memory` and `memory-4`).
    #[inline(never)]
    fn give_back_held(&mut self) {
        if let (Some(record), Some(memory)) = (&self.record, &self.storage.in_process) {
            record.free(memory, &mut self.lock);
        }
        if !self.lock.is_released() {
            self.storage.home.give_back(&mut self.lock);
        }
    }
}

impl SlotMeta {
    pub(crate) fn new(
        storage: &Arc<StorageEntry>,
        session: &'static str,
        key: StorageKey,
        lock: KeyClaim,
        lease_owner: Option<LeaseOwner>,
    ) -> Self {
        Self {
            session,
            key,
            storage: Arc::clone(storage),
            lease_owner,
            lock,
            record: None,
        }
    }

    /// The meta of a session whose key `lock` took in the memory record
    /// `record`: the commit writes there.
    // Always inlined: the slot's parts are made where it keeps them (see
    // `storage::memory::Taken`).
    #[inline(always)]
    fn in_record(
        storage: &Arc<StorageEntry>,
        session: &'static str,
        key: StorageKey,
        lock: KeyClaim,
        record: HeldRecord,
    ) -> Self {
        Self {
            session,
            key,
            storage: Arc::clone(storage),
            lease_owner: None,
            lock,
            record: Some(record),
        }
    }

    pub(crate) fn storage_error(&self, source: crate::storage::StorageError) -> Error {
        Error::Storage {
            session: self.session,
            key: self.key.to_string(),
            storage: Arc::clone(&self.storage.name),
            source,
        }
    }

    pub(crate) fn conflict(&self, cause: crate::storage::Conflict) -> Error {
        Error::Conflict {
            session: self.session,
            key: self.key.to_string(),
            storage: Arc::clone(&self.storage.name),
            cause,
        }
    }

    /// Applies one write now (`save`, `clear`), fenced by the update's lease
    /// where the key has one; the lease stays held until the commit.
    pub(crate) async fn write_now(&self, write: Write) -> Result<WriteOutcome, Error> {
        let writes = std::slice::from_ref(&write);
        let outcomes = match (&self.lease_owner, self.storage.storage.leases()) {
            (Some(owner), Some(leases)) => leases.write_and_release(writes, &[], owner).await,
            _ => self.storage.storage.write(writes).await,
        }
        .map_err(|source| {
            metrics::storage_failed(&self.storage.name, Operation::Write, &source);
            self.storage_error(source)
        })?;
        match <[WriteOutcome; 1]>::try_from(outcomes) {
            Ok([outcome]) => {
                metrics::written(self.session, &self.storage.metrics, &outcome);
                Ok(outcome)
            }
            Err(outcomes) => {
                let source = crate::storage::StorageError::other(format!(
                    "answered {} outcomes for one write",
                    outcomes.len()
                ));
                metrics::storage_failed(&self.storage.name, Operation::Write, &source);
                Err(self.storage_error(source))
            }
        }
    }

    /// Records a storage failure at this key, for the updates queued on it
    /// (see `KeyLocks::storage_failed`).
    pub(crate) fn storage_failed(&self, source: &StorageError) {
        self.storage
            .home
            .table()
            .storage_failed(&self.lock, source, &self.storage.name);
    }

    fn encode_failed<T: Session>(&self, source: CodecError) -> Error {
        Error::Encode {
            session: self.session,
            key: self.key.to_string(),
            codec: T::Codec::NAME,
            source,
        }
    }

    fn round_trip_failed<T: Session>(&self, source: CodecError) -> Error {
        Error::RoundTrip {
            session: self.session,
            key: self.key.to_string(),
            type_name: std::any::type_name::<T>(),
            codec: T::Codec::NAME,
            source,
        }
    }

    /// Reports what the storage did with this session's write: metrics, a
    /// debug line, or the error the commit answers.
    // Always inlined: every commit reports each write it made (as a call,
    // about 18 instructions more per session in memory).
    #[inline(always)]
    pub(crate) fn report(&self, outcome: WriteOutcome, errors: &mut Vec<Error>) {
        metrics::written(self.session, &self.storage.metrics, &outcome);
        match outcome {
            WriteOutcome::Written { .. } | WriteOutcome::Deleted => {
                tracing::debug!(session = self.session, key = %self.key, "session saved");
            }
            WriteOutcome::Conflict(cause) => errors.push(self.conflict(cause)),
            WriteOutcome::Failed(source) => {
                self.storage_failed(&source);
                errors.push(self.storage_error(source));
            }
        }
    }
}

/// One session of one update: where it lives and its value, in one
/// allocation (a `Box` of the mutex, owned by the update's entry), borrowed
/// by one `SessionRef` or the commit at a time, never waited for: a second
/// borrow is an error at once.
pub(crate) struct SlotState<T> {
    pub(crate) meta: SlotMeta,
    pub(crate) value: T,
    /// What is stored, as loaded or last written by this update; `None` when
    /// nothing is.
    pub(crate) stored: Option<Loaded>,
    /// Set by mutable access; only touched sessions are encoded at commit.
    pub(crate) touched: bool,
}

/// A session slot of type `T`.
///
/// Its lock is only ever tried, never waited for (see [`SlotState`]): a
/// flag, which `spin`'s mutex is, let go by a plain store where a mutex
/// that may have parked waiters (`parking_lot`'s) makes an atomic
/// exchange of every release, one per borrow and one per commit.
pub(crate) type TypedSlot<T> = spin::mutex::SpinMutex<SlotState<T>>;

/// A slot borrowed by a `SessionRef`, for as long as it borrows the update.
pub(crate) type SlotGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, SlotState<T>>;

/// A `SessionRef` holds the slot: the commit cannot borrow it.
#[derive(Debug)]
pub(crate) struct Borrowed;

/// What an update loaded, to tell at commit whether its copy changed.
pub(crate) enum Loaded {
    /// A record of bytes, as every storage returns.
    Record(Record),
    /// A copy of the value a memory storage keeps, of the slot's own type:
    /// the storage tells at the write whether the copy changed.
    Value { version: u64 },
}

impl Loaded {
    pub(crate) fn version(&self) -> u64 {
        match self {
            Loaded::Record(record) => record.version,
            Loaded::Value { version } => *version,
        }
    }
}

impl<T: Session> SlotState<T> {
    /// Moves the value into `memory` if it changed (see
    /// [`ErasedSlot::write_in_process`]): the update is over for this slot.
    // Always inlined into its one caller per session type, as
    // `MemoryStorage::claim_typed` is.
    #[inline(always)]
    fn write_value(
        &mut self,
        memory: &MemoryStorage,
        registration: Option<&Registration>,
    ) -> Result<Option<WriteOutcome>, Error> {
        if !self.touched {
            return Ok(None);
        }
        // A copy of a stored value is compared with it by the storage, where
        // it still is; anything else is compared here.
        let compared_here = !matches!(self.stored, Some(Loaded::Value { .. }));
        if compared_here && !self.changed(registration)? {
            return Ok(None);
        }
        if round_trip_due(registration) {
            self::check_round_trip(&self.meta, &self.value)?;
        }
        let expected_version = self.stored.take().as_ref().map(Loaded::version);
        self.touched = false;
        let value = std::mem::replace(&mut self.value, T::initial());
        let SlotMeta {
            key, record, lock, ..
        } = &mut self.meta;
        // Only while the claim holds the key is its record sure to be the
        // map's (see `HeldRecord`).
        let held = !lock.is_released();
        Ok(match record {
            // The record the update took its key in: written there, with
            // no access to the map.
            Some(record) if held => record
                .commit(memory, value, expected_version, T::TTL, lock)
                .map(|written| match written {
                    Ok(version) => WriteOutcome::Written { version },
                    Err(cause) => WriteOutcome::Conflict(cause),
                }),
            _ => memory.put_typed(key, value, expected_version, T::TTL, lock),
        })
    }

    /// The put this session needs, if it changed: what is sent to a storage
    /// that keeps bytes.
    pub(crate) fn pending_write(&self) -> Result<Option<Write>, Error> {
        let meta = &self.meta;
        if !self.touched {
            return Ok(None);
        }
        let bytes = encode_record(&self.value).map_err(|source| meta.encode_failed::<T>(source))?;
        // The value's bytes are at hand: compare them rather than encode again.
        let unchanged = match &self.stored {
            Some(Loaded::Record(record)) => record.value == bytes,
            None => match T::initial().same_value(&self.value) {
                Some(same) => same,
                None => {
                    encode_record(&T::initial())
                        .map_err(|source| meta.encode_failed::<T>(source))?
                        == bytes
                }
            },
            Some(Loaded::Value { .. }) => !self.changed(None)?,
        };
        if unchanged {
            return Ok(None);
        }
        Ok(Some(Write::Put {
            key: meta.key.clone(),
            value: Bytes::from(bytes),
            expected_version: self.stored.as_ref().map(Loaded::version),
            ttl: T::TTL,
        }))
    }

    /// Whether the value differs from the stored one. Nothing stored counts
    /// as the initial value: a bot must not store a record for everyone who
    /// ever said hello.
    ///
    /// A copy of a value a memory storage keeps is compared with the stored
    /// value only by `PartialEq`: putting it back costs a move, less than
    /// encoding both to compare, and shows only in the version. With
    /// nothing stored, the value is compared with the initial value's bytes
    /// its `registration` keeps, where there is one.
    fn changed(&self, registration: Option<&Registration>) -> Result<bool, Error> {
        let encode_failed = |source| self.meta.encode_failed::<T>(source);
        let same = match &self.stored {
            Some(Loaded::Value { version }) => {
                self.meta.storage.in_process.as_ref().is_some_and(|memory| {
                    memory.holds_same(self.meta.key.as_str(), *version, &self.value)
                })
            }
            Some(Loaded::Record(record)) => {
                encode_record(&self.value).map_err(encode_failed)? == record.value
            }
            None => match registration {
                Some(registration) => {
                    same_as_initial(&self.value, registration).map_err(encode_failed)?
                }
                None => same_value(&self.value, &T::initial()).map_err(encode_failed)?,
            },
        };
        Ok(!same)
    }
}

/// Whether `value` is the initial value of its type (registered as
/// `registration`): by `PartialEq` where the type has it, else by its bytes
/// against the initial value's, encoded once (see
/// [`Registration::initial_bytes`]).
fn same_as_initial<T: Session>(value: &T, registration: &Registration) -> Result<bool, CodecError> {
    if let Some(same) = value.same_value(&T::initial()) {
        return Ok(same);
    }
    let initial = registration.initial_bytes::<T>()?;
    with_buffers(|bytes, _| {
        encode_record_into(value, bytes)?;
        Ok(bytes[..] == *initial)
    })
}

/// Whether two values are the same: by `PartialEq` where the type has it,
/// else by their encoded bytes.
fn same_value<T: Session>(a: &T, b: &T) -> Result<bool, CodecError> {
    if let Some(same) = a.same_value(b) {
        return Ok(same);
    }
    with_buffers(|first, second| {
        encode_record_into(a, first)?;
        encode_record_into(b, second)?;
        Ok(first == second)
    })
}

/// Runs `f` with two empty buffers this thread reuses, so comparing encoded
/// values allocates nothing once they have grown.
fn with_buffers<R>(f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> R) -> R {
    thread_local! {
        static BUFFERS: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }
    BUFFERS.with(|buffers| match buffers.try_borrow_mut() {
        Ok(mut buffers) => {
            let (first, second) = &mut *buffers;
            first.clear();
            second.clear();
            f(first, second)
        }
        // Only a `Serialize` impl that compares sessions itself gets here.
        Err(_) => f(&mut Vec::new(), &mut Vec::new()),
    })
}

/// Whether a write of a session of `registration`'s type checks its round
/// trip first (see [`Registration::check_round_trip`]); always for a lazy
/// type that was not registered.
#[inline]
fn round_trip_due(registration: Option<&Registration>) -> bool {
    registration.is_none_or(Registration::check_round_trip)
}

/// Checks that `value` comes back from its codec as it went in, as it must
/// for Redis or SQL to keep it: encodes, decodes, and compares (by
/// `PartialEq`, else by encoding again).
fn check_round_trip<T: Session>(meta: &SlotMeta, value: &T) -> Result<(), Error> {
    with_buffers(|record, again| {
        encode_record_into(value, record).map_err(|source| meta.encode_failed::<T>(source))?;
        let payload = match T::SCHEMA_VERSION {
            Some(_) => codec::split_schema_version(record).1,
            None => &record[..],
        };
        let decoded: T = T::Codec::decode(payload).map_err(|source| {
            meta.round_trip_failed::<T>(CodecError::new(format!(
                "its encoded bytes do not decode: {source}"
            )))
        })?;
        let same = match decoded.same_value(value) {
            Some(same) => same,
            None => {
                encode_record_into(&decoded, again)
                    .map_err(|source| meta.encode_failed::<T>(source))?;
                again == record
            }
        };
        match same {
            true => Ok(()),
            false => Err(meta.round_trip_failed::<T>(CodecError::new(
                "it decodes to a different value (a field the codec skips or cannot represent exactly)",
            ))),
        }
    })
}

/// A session slot with its type erased, as the context keeps it. A method
/// that needs the slot answers [`Borrowed`] while a `SessionRef` holds it.
///
/// `Any` is a supertrait: a reference to a slot becomes a `&dyn Any` by
/// upcasting, with no call, for the accessor's downcast.
pub(crate) trait ErasedSlot: Any + Send + Sync {
    /// The write commit must send for this slot, if any.
    fn pending_write(&self) -> Result<Result<Option<Write>, Error>, Borrowed>;
    /// Writes the session to `memory` as a value if it changed (checking
    /// first, if its `registration` says so, that it survives its codec's
    /// round trip), reporting the outcome into `errors`, and gives its key
    /// back; whether it wrote.
    fn write_in_process(
        &self,
        memory: &MemoryStorage,
        registration: Option<&Registration>,
        errors: &mut Vec<Error>,
    ) -> Result<bool, Borrowed>;
    /// Reports what the storage did with this slot's write.
    fn report(&self, outcome: WriteOutcome, errors: &mut Vec<Error>);
    /// Reports that this slot's write failed in its storage.
    fn storage_failed(&self, source: &StorageError, errors: &mut Vec<Error>);
    /// Whether the session may have changed (it was borrowed mutably, or is
    /// borrowed right now), so the commit has work to do.
    fn maybe_touched(&self) -> bool;
    /// Gives the key back if the update still holds it (see
    /// [`SlotMeta::give_back`]). A slot a `SessionRef` holds keeps its key
    /// until the update is dropped.
    fn give_back(&self) -> Result<(), Borrowed>;
}

/// A slot from what the storage returned, decoding it per the type's
/// policy; a record of an older schema version is migrated and marked
/// touched, so the commit writes it back in the current shape.
fn open_state<T: Session>(meta: SlotMeta, record: Option<Record>) -> Result<SlotState<T>, Error> {
    let (value, touched) = match &record {
        None => (T::initial(), false),
        Some(record) => decode::<T>(&meta, &record.value)?,
    };
    Ok(SlotState {
        meta,
        value,
        stored: record.map(Loaded::Record),
        touched,
    })
}

/// A slot from what a storage returned (see [`open_state`]).
pub(crate) fn open<T: Session>(meta: SlotMeta, record: Option<Record>) -> Result<SlotBox, Error> {
    Ok(Box::new(TypedSlot::new(open_state::<T>(meta, record)?)))
}

/// A slot loaded from a memory storage: a copy of the value it keeps, or
/// its bytes decoded as [`open`] does.
pub(crate) fn open_in_process<T: Session>(
    meta: SlotMeta,
    memory: &MemoryStorage,
) -> Result<SlotBox, Error> {
    let found = memory
        .load_typed::<T>(meta.key.as_str())
        .map_err(|source| meta.storage_error(source))?;
    open_found(meta, found)
}

/// What the claim of a memory record opened while the record was locked.
enum Opening<T> {
    /// The slot of a copy of the stored value, or of the initial value
    /// where nothing is stored.
    Opened(SlotBox),
    /// Bytes to decode, or an error, to open once the record is let go
    /// (boxed: rare, and the answer is moved on every update).
    Later(Box<(SlotMeta, Result<Found<T>, StorageError>)>),
}

/// Takes the key of a session kept in `memory` for the update `update`,
/// and opens its slot, if no other update holds or waits for the key;
/// `None` if one does (nothing was taken). A storage that keeps its keys'
/// locks in its records takes the key and copies the value in one access.
///
/// The error is boxed, as the update's list keeps it: the answer is moved
/// on every update, and a failure is rare.
// Always inlined: see `claim_entry`.
#[inline(always)]
pub(crate) fn claim_in_process<T: Session>(
    storage: &Arc<StorageEntry>,
    memory: &MemoryStorage,
    key: UpdateKey<'_>,
    update: u64,
) -> Option<Result<SlotBox, Box<Error>>> {
    // Built here, of constants: not moved through the call.
    let taker = Taker {
        update,
        session: T::NAME,
        type_name: std::any::type_name::<T>(),
    };
    let taken = memory.claim_typed(key, taker, |mut taken| {
        let (value, stored) = match taken.found::<T>() {
            Ok(Found::Value { value, version }) => (value, Some(Loaded::Value { version })),
            Ok(Found::Nothing) => (T::initial(), None),
            // Opened once the record is let go: a slot that fails to open
            // gives its key back there as it is dropped.
            found => {
                let meta = SlotMeta::in_record(
                    storage,
                    T::NAME,
                    taken.key(),
                    taken.claim(),
                    taken.record(),
                );
                return Opening::Later(Box::new((meta, found)));
            }
        };
        // Each part made where the slot keeps it (see `Taken`).
        Opening::Opened(Box::new(TypedSlot::new(SlotState {
            meta: SlotMeta::in_record(storage, T::NAME, taken.key(), taken.claim(), taken.record()),
            value,
            stored,
            touched: false,
        })))
    });
    match taken? {
        Opening::Opened(slot) => Some(Ok(slot)),
        Opening::Later(later) => {
            let (meta, found) = *later;
            Some(match found {
                Ok(found) => open_found(meta, found).map_err(Box::new),
                // Dropping the slot's meta gives the key back.
                Err(source) => Err(Box::new(meta.storage_error(source))),
            })
        }
    }
}

/// [`claim_in_process`] for the eager session of `registration`'s type of
/// the update `ids` (numbered `update`), kept in a memory storage: its
/// entry is pushed into the update's `slots`, with the slot or the error
/// its key or load met. `false` if another update holds or waits for the
/// key, or the session is not kept in memory (nothing taken, nothing
/// pushed).
///
/// The key is made here, where it is used: made by the caller and handed
/// over, it was read back while its stores were still in flight (2% of a
/// one-session update's time, `per_update memory`). The entry is pushed
/// here too, where the slot is made, for the same reason (1% with four
/// sessions).
pub(crate) fn claim_entry<T: Session>(
    manager: &ManagerInner,
    ids: &UpdateIds,
    update: u64,
    registration: &Registration,
    slots: &mut Slots,
) -> bool {
    let storage = &manager.storages[registration.storage_index];
    let Some(memory) = &storage.in_process else {
        return false;
    };
    let key = match manager.update_key(registration, ids) {
        Ok(key) => key,
        Err(error) => {
            slots.push(EntryState::failed(error));
            return true;
        }
    };
    let Some(opened) = claim_in_process::<T>(storage, memory, key, update) else {
        return false;
    };
    slots.push(EntryState::opened(opened));
    true
}

/// A slot from what a typed load of a memory storage found.
// Always inlined: called with the slot's meta and value by value, it moved
// both once more on every update.
#[inline(always)]
fn open_found<T: Session>(meta: SlotMeta, found: Found<T>) -> Result<SlotBox, Error> {
    match found {
        Found::Nothing => open::<T>(meta, None),
        Found::Record(record) => open::<T>(meta, Some(record)),
        // Wrapped where it is built: the slot is moved once, into its
        // allocation, not first out of a `match`.
        Found::Value { value, version } => Ok(Box::new(TypedSlot::new(SlotState {
            meta,
            value,
            stored: Some(Loaded::Value { version }),
            touched: false,
        }))),
    }
}

impl<T: Session> ErasedSlot for TypedSlot<T> {
    fn pending_write(&self) -> Result<Result<Option<Write>, Error>, Borrowed> {
        Ok(self.try_lock().ok_or(Borrowed)?.pending_write())
    }

    fn write_in_process(
        &self,
        memory: &MemoryStorage,
        registration: Option<&Registration>,
        errors: &mut Vec<Error>,
    ) -> Result<bool, Borrowed> {
        let mut state = self.try_lock().ok_or(Borrowed)?;
        let state = &mut *state;
        let written = match state.write_value(memory, registration) {
            Ok(None) => false,
            Ok(Some(outcome)) => {
                state.meta.report(outcome, errors);
                true
            }
            Err(error) => {
                errors.push(error);
                false
            }
        };
        // Under the same lock: a written key was freed by its write.
        state.meta.give_back();
        Ok(written)
    }

    fn report(&self, outcome: WriteOutcome, errors: &mut Vec<Error>) {
        match self.try_lock() {
            Some(state) => state.meta.report(outcome, errors),
            // The update is finished: no accessor hands the slot out again.
            None => tracing::warn!(
                ?outcome,
                "session write not reported: the session is borrowed"
            ),
        }
    }

    fn storage_failed(&self, source: &StorageError, errors: &mut Vec<Error>) {
        match self.try_lock() {
            Some(state) => {
                state.meta.storage_failed(source);
                errors.push(state.meta.storage_error(source.clone()));
            }
            None => {
                tracing::warn!(error = %source, "session write failed; the session is borrowed")
            }
        }
    }

    fn maybe_touched(&self) -> bool {
        self.try_lock().is_none_or(|state| state.touched)
    }

    fn give_back(&self) -> Result<(), Borrowed> {
        self.try_lock().ok_or(Borrowed)?.meta.give_back();
        Ok(())
    }
}

/// Decodes stored bytes as `T`: `(value, migrated)`.
fn decode<T: Session>(meta: &SlotMeta, bytes: &[u8]) -> Result<(T, bool), Error> {
    let (tag, payload) = codec::split_schema_version(bytes);
    let Some(current) = T::SCHEMA_VERSION else {
        // A type without versions writes no envelope, and a codec of its own
        // may well start a payload with the tag byte: the bytes are the
        // payload. Only if they fail to decode does a tag explain why.
        return match T::Codec::decode::<T>(bytes) {
            Ok(value) => Ok((value, false)),
            Err(source) => match tag {
                Some(stored_version) => Err(newer_schema::<T>(meta, stored_version)),
                None => decode_failed(meta, source).map(|value| (value, false)),
            },
        };
    };
    match tag {
        Some(stored) if stored == current => match T::Codec::decode::<T>(payload) {
            Ok(value) => Ok((value, false)),
            Err(source) => decode_failed(meta, source).map(|value| (value, false)),
        },
        Some(stored) if stored > current => Err(newer_schema::<T>(meta, stored)),
        stored_version => match T::migrate(stored_version, payload) {
            Ok(value) => {
                metrics::migrated(meta.session, &meta.storage.name);
                tracing::info!(
                    session = meta.session,
                    key = %meta.key,
                    storage = %meta.storage.name,
                    from = ?stored_version,
                    to = current,
                    "stored session migrated; the commit writes it back"
                );
                Ok((value, true))
            }
            Err(source) => {
                metrics::decode_failed(meta.session, &meta.storage.name, DecodeError::Migration);
                Err(Error::Migration {
                    session: meta.session,
                    key: meta.key.to_string(),
                    storage: Arc::clone(&meta.storage.name),
                    type_name: std::any::type_name::<T>(),
                    stored_version,
                    target_version: current,
                    source: Box::new(source),
                })
            }
        },
    }
}

/// Bytes of the type's own version (or of a type without versions) that do
/// not decode: an error, or the initial value if the type opted in.
fn decode_failed<T: Session>(meta: &SlotMeta, source: CodecError) -> Result<T, Error> {
    match T::ON_DECODE_ERROR {
        OnDecodeError::Error => {
            metrics::decode_failed(meta.session, &meta.storage.name, DecodeError::Decode);
            Err(Error::Decode {
                session: meta.session,
                key: meta.key.to_string(),
                storage: Arc::clone(&meta.storage.name),
                type_name: std::any::type_name::<T>(),
                codec: T::Codec::NAME,
                source,
            })
        }
        OnDecodeError::Reset => {
            metrics::decode_failed(meta.session, &meta.storage.name, DecodeError::Reset);
            tracing::warn!(
                session = meta.session,
                key = %meta.key,
                storage = %meta.storage.name,
                error = %source,
                "stored session does not decode; starting from its initial value \
                 (on_decode_error = \"reset\")"
            );
            Ok(T::initial())
        }
    }
}

fn newer_schema<T: Session>(meta: &SlotMeta, stored_version: u32) -> Error {
    metrics::decode_failed(meta.session, &meta.storage.name, DecodeError::NewerSchema);
    Error::NewerSchema {
        session: meta.session,
        key: meta.key.to_string(),
        storage: Arc::clone(&meta.storage.name),
        type_name: std::any::type_name::<T>(),
        stored_version,
        known_version: T::SCHEMA_VERSION,
    }
}
