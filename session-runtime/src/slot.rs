//! One session of one update: its value, what was loaded, whether it changed.

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;

use crate::codec::CodecError;
use crate::codec::{self, Codec};
use crate::error::Error;
use crate::key::StorageKey;
use crate::lock::KeyLockGuard;
use crate::metrics::{self, DecodeError, Operation};
use crate::session::{OnDecodeError, Session};
use crate::storage::{LeaseOwner, Record, Storage, Write, WriteOutcome};

/// What a slot knows about where its session lives. Holding it keeps the key
/// locked for this update.
pub(crate) struct SlotMeta {
    pub(crate) session: &'static str,
    pub(crate) key: StorageKey,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) storage_index: usize,
    pub(crate) storage_name: Arc<str>,
    /// The update's lease on the key, when its storage has leases.
    pub(crate) lease_owner: Option<LeaseOwner>,
    pub(crate) lock: KeyLockGuard,
}

impl SlotMeta {
    pub(crate) fn storage_error(&self, source: crate::storage::StorageError) -> Error {
        Error::Storage {
            session: self.session,
            key: self.key.to_string(),
            storage: Arc::clone(&self.storage_name),
            source,
        }
    }

    pub(crate) fn conflict(&self, cause: crate::storage::Conflict) -> Error {
        Error::Conflict {
            session: self.session,
            key: self.key.to_string(),
            storage: Arc::clone(&self.storage_name),
            cause,
        }
    }

    /// Applies one write now (`save`, `clear`), fenced by the update's lease
    /// where the key has one; the lease stays held until the commit.
    pub(crate) async fn write_now(&self, write: Write) -> Result<WriteOutcome, Error> {
        let writes = std::slice::from_ref(&write);
        let outcomes = match (&self.lease_owner, self.storage.leases()) {
            (Some(owner), Some(leases)) => leases.write_and_release(writes, &[], owner).await,
            _ => self.storage.write(writes).await,
        }
        .map_err(|source| {
            metrics::storage_failed(&self.storage_name, Operation::Write, &source);
            self.storage_error(source)
        })?;
        match <[WriteOutcome; 1]>::try_from(outcomes) {
            Ok([outcome]) => {
                metrics::written(self.session, &self.storage_name, &outcome);
                Ok(outcome)
            }
            Err(outcomes) => {
                let source = crate::storage::StorageError::other(format!(
                    "answered {} outcomes for one write",
                    outcomes.len()
                ));
                metrics::storage_failed(&self.storage_name, Operation::Write, &source);
                Err(self.storage_error(source))
            }
        }
    }

    pub(crate) fn already_borrowed(&self) -> Error {
        Error::AlreadyBorrowed {
            session: self.session,
            key: self.key.to_string(),
        }
    }
}

pub(crate) struct SlotState<T> {
    pub(crate) value: T,
    /// The record as loaded or last written by this update; `None` when
    /// nothing is stored.
    pub(crate) stored: Option<Record>,
    /// Set by mutable access; only touched sessions are encoded at commit.
    pub(crate) touched: bool,
}

impl<T: Session> SlotState<T> {
    /// The put this session needs, if its bytes differ from what is stored.
    pub(crate) fn pending_write(&self, meta: &SlotMeta) -> Result<Option<Write>, Error> {
        if !self.touched {
            return Ok(None);
        }
        let encode = |value: &T| {
            let payload = T::Codec::encode(value).map_err(|source| Error::Encode {
                session: meta.session,
                key: meta.key.to_string(),
                codec: T::Codec::NAME,
                source,
            })?;
            Ok::<_, Error>(match T::SCHEMA_VERSION {
                Some(version) => codec::with_schema_version(version, &payload),
                None => payload,
            })
        };
        let bytes = encode(&self.value)?;
        let unchanged = match &self.stored {
            Some(record) => record.value == bytes,
            // Never write a session that still is its initial value: a bot
            // must not store a record for everyone who ever said hello.
            None => encode(&T::initial())? == bytes,
        };
        if unchanged {
            return Ok(None);
        }
        Ok(Some(Write::Put {
            key: meta.key.clone(),
            value: Bytes::from(bytes),
            expected_version: self.stored.as_ref().map(|record| record.version),
            ttl: T::TTL,
        }))
    }
}

/// A session slot with its type erased, as the context keeps it.
pub(crate) trait ErasedSlot: Send + Sync {
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    fn meta(&self) -> &SlotMeta;
    /// The write commit must send for this slot, if any.
    fn pending_write(&self) -> Result<Option<Write>, Error>;
    /// Whether the session may have changed (it was borrowed mutably, or is
    /// borrowed right now), so the commit has work to do.
    fn maybe_touched(&self) -> bool;
}

pub(crate) struct TypedSlot<T> {
    pub(crate) meta: SlotMeta,
    pub(crate) state: Arc<Mutex<SlotState<T>>>,
}

impl<T: Session> TypedSlot<T> {
    /// A slot from what the storage returned, decoding it per the type's
    /// policy; a record of an older schema version is migrated and marked
    /// touched, so the commit writes it back in the current shape.
    pub(crate) fn open(meta: SlotMeta, record: Option<Record>) -> Result<Self, Error> {
        let (value, touched) = match &record {
            None => (T::initial(), false),
            Some(record) => decode::<T>(&meta, &record.value)?,
        };
        Ok(Self {
            meta,
            state: Arc::new(Mutex::new(SlotState {
                value,
                stored: record,
                touched,
            })),
        })
    }

    pub(crate) fn erased(
        meta: SlotMeta,
        record: Option<Record>,
    ) -> Result<Arc<dyn ErasedSlot>, Error> {
        Ok(Arc::new(Self::open(meta, record)?))
    }
}

impl<T: Session> ErasedSlot for TypedSlot<T> {
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn meta(&self) -> &SlotMeta {
        &self.meta
    }

    fn pending_write(&self) -> Result<Option<Write>, Error> {
        let state = self
            .state
            .try_lock()
            .map_err(|_| self.meta.already_borrowed())?;
        state.pending_write(&self.meta)
    }

    fn maybe_touched(&self) -> bool {
        self.state.try_lock().map_or(true, |state| state.touched)
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
                metrics::migrated(meta.session, &meta.storage_name);
                tracing::info!(
                    session = meta.session,
                    key = %meta.key,
                    storage = %meta.storage_name,
                    from = ?stored_version,
                    to = current,
                    "stored session migrated; the commit writes it back"
                );
                Ok((value, true))
            }
            Err(source) => {
                metrics::decode_failed(meta.session, &meta.storage_name, DecodeError::Migration);
                Err(Error::Migration {
                    session: meta.session,
                    key: meta.key.to_string(),
                    storage: Arc::clone(&meta.storage_name),
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
            metrics::decode_failed(meta.session, &meta.storage_name, DecodeError::Decode);
            Err(Error::Decode {
                session: meta.session,
                key: meta.key.to_string(),
                storage: Arc::clone(&meta.storage_name),
                type_name: std::any::type_name::<T>(),
                codec: T::Codec::NAME,
                source,
            })
        }
        OnDecodeError::Reset => {
            metrics::decode_failed(meta.session, &meta.storage_name, DecodeError::Reset);
            tracing::warn!(
                session = meta.session,
                key = %meta.key,
                storage = %meta.storage_name,
                error = %source,
                "stored session does not decode; starting from its initial value \
                 (on_decode_error = \"reset\")"
            );
            Ok(T::initial())
        }
    }
}

fn newer_schema<T: Session>(meta: &SlotMeta, stored_version: u32) -> Error {
    metrics::decode_failed(meta.session, &meta.storage_name, DecodeError::NewerSchema);
    Error::NewerSchema {
        session: meta.session,
        key: meta.key.to_string(),
        storage: Arc::clone(&meta.storage_name),
        type_name: std::any::type_name::<T>(),
        stored_version,
        known_version: T::SCHEMA_VERSION,
    }
}
