//! One session of one update: its value, what was loaded, whether it changed.

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;

use crate::codec::Codec;
use crate::error::Error;
use crate::key::StorageKey;
use crate::lock::KeyLockGuard;
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
    pub(crate) fn storage_error(&self, source: crate::error::StorageError) -> Error {
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
        .map_err(|source| self.storage_error(source))?;
        match <[WriteOutcome; 1]>::try_from(outcomes) {
            Ok([outcome]) => Ok(outcome),
            Err(outcomes) => Err(
                self.storage_error(crate::error::StorageError::other(format!(
                    "answered {} outcomes for one write",
                    outcomes.len()
                ))),
            ),
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
            T::Codec::encode(value).map_err(|source| Error::Encode {
                session: meta.session,
                key: meta.key.to_string(),
                codec: T::Codec::NAME,
                source,
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
    /// A slot from what the storage returned, decoding it per the type's policy.
    pub(crate) fn open(meta: SlotMeta, record: Option<Record>) -> Result<Self, Error> {
        let value = match &record {
            None => T::initial(),
            Some(record) => match T::Codec::decode::<T>(&record.value) {
                Ok(value) => value,
                Err(source) => match T::ON_DECODE_ERROR {
                    OnDecodeError::Error => {
                        return Err(Error::Decode {
                            session: meta.session,
                            key: meta.key.to_string(),
                            storage: Arc::clone(&meta.storage_name),
                            type_name: std::any::type_name::<T>(),
                            codec: T::Codec::NAME,
                            source,
                        });
                    }
                    OnDecodeError::Reset => {
                        tracing::warn!(
                            session = meta.session,
                            key = %meta.key,
                            storage = %meta.storage_name,
                            error = %source,
                            "stored session does not decode; starting from its initial value \
                             (on_decode_error = \"reset\")"
                        );
                        T::initial()
                    }
                },
            },
        };
        Ok(Self {
            meta,
            state: Arc::new(Mutex::new(SlotState {
                value,
                stored: record,
                touched: false,
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
