//! [`SessionRef`]: what an accessor returns.

use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::error::Error;
use crate::session::Session;
use crate::slot::{Loaded, SlotGuard, SlotMeta};
use crate::storage::{Record, Write, WriteOutcome};

/// A session of the current update, borrowed from its context (as a
/// `MutexGuard` borrows its mutex): it lives as long as the context it came
/// from, across awaits too.
///
/// Derefs to the session value; a mutable access marks it changed, and the
/// context writes it after the handler if its encoded bytes differ from what
/// was loaded. Drop it before the handler returns: only one `SessionRef` per
/// session can be alive at a time, and a session still borrowed when the
/// update is committed is not written (the commit says so), its key held
/// until the context is dropped.
pub struct SessionRef<'a, T: Session> {
    state: SlotGuard<'a, T>,
}

impl<'a, T: Session> SessionRef<'a, T> {
    pub(crate) fn new(state: SlotGuard<'a, T>) -> Self {
        Self { state }
    }

    fn meta(&self) -> &SlotMeta {
        &self.state.meta
    }

    /// The storage key of this session (`[prefix:][bot:]name:scope`).
    pub fn key(&self) -> &str {
        self.meta().key.as_str()
    }

    /// The stored version this update works on; `None` if nothing is stored.
    pub fn version(&self) -> Option<u64> {
        self.state.stored.as_ref().map(Loaded::version)
    }

    /// Deletes the session from its storage now and resets the value to its
    /// initial value. A later change in this update is saved again.
    pub async fn clear(&mut self) -> Result<(), Error> {
        let delete = Write::Delete {
            key: self.meta().key.clone(),
        };
        match self.meta().write_now(delete).await? {
            WriteOutcome::Deleted => {}
            WriteOutcome::Conflict(cause) => return Err(self.meta().conflict(cause)),
            other => return Err(self.unexpected("a delete", &other)),
        }
        tracing::debug!(session = self.meta().session, key = %self.meta().key, "session cleared");
        let state = &mut *self.state;
        state.value = T::initial();
        state.stored = None;
        state.touched = false;
        Ok(())
    }

    /// Writes the session now if it changed, instead of waiting for the end of
    /// the handler (for long handlers). Fails with [`Error::Conflict`] if
    /// the write was refused (see its cause); the change is then dropped, so
    /// the commit does not send the same refused write again.
    pub async fn save(&mut self) -> Result<(), Error> {
        let Some(write) = self.state.pending_write()? else {
            self.state.touched = false;
            return Ok(());
        };
        let Write::Put { value, .. } = &write else {
            return Err(self.unexpected("a put", &WriteOutcome::Deleted));
        };
        let value = value.clone();
        let outcome = self.meta().write_now(write).await?;
        match outcome {
            WriteOutcome::Written { version } => {
                self.state.stored = Some(Loaded::Record(Record { value, version }));
                self.state.touched = false;
                Ok(())
            }
            WriteOutcome::Conflict(cause) => {
                self.state.touched = false;
                Err(self.meta().conflict(cause))
            }
            WriteOutcome::Failed(source) => Err(self.meta().storage_error(source)),
            other => Err(self.unexpected("a put", &other)),
        }
    }

    fn unexpected(&self, what: &str, outcome: &WriteOutcome) -> Error {
        self.meta()
            .storage_error(crate::storage::StorageError::other(format!(
                "the storage answered {outcome:?} to {what}"
            )))
    }
}

impl<T: Session> Deref for SessionRef<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.state.value
    }
}

impl<T: Session> DerefMut for SessionRef<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.state.touched = true;
        &mut self.state.value
    }
}

impl<T: Session + fmt::Debug> fmt::Debug for SessionRef<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRef")
            .field("key", &self.meta().key.as_str())
            .field("value", &self.state.value)
            .finish()
    }
}
