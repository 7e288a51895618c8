//! Session values the memory storage keeps as they are: the update's copy
//! comes from a clone, not a decode, and its commit moves the value back in,
//! with no encode. Bytes are made only when someone asks for them (a plain
//! `Storage::load`, a scan, a copy to another storage).

use std::any::Any;

use bytes::Bytes;

use crate::codec::CodecError;
use crate::session::{Session, encode_record};
use crate::storage::Record;

/// A session value of some type, as the memory storage keeps it.
pub(crate) trait TypedValue: Any + Send + Sync {
    /// The record a storage that keeps bytes would hold for this value.
    fn encode(&self) -> Result<Bytes, CodecError>;
    /// A copy of the value, for a type that can be copied.
    fn copy(&self) -> Option<Box<dyn TypedValue>>;
}

impl<T: Session> TypedValue for T {
    fn encode(&self) -> Result<Bytes, CodecError> {
        encode_record(self).map(Bytes::from)
    }

    fn copy(&self) -> Option<Box<dyn TypedValue>> {
        self.copy_value()
            .map(|copy| Box::new(copy) as Box<dyn TypedValue>)
    }
}

/// A stored session's value: bytes written through [`Storage::write`] (or
/// restored), or a value an update of this process left.
///
/// A value is boxed, not shared: the record owns it, and a commit writes
/// over it in place with no count of its owners to check (an `Arc`'s
/// `get_mut` took an atomic operation per write, 4-5% of an update's time:
/// `per_update memory` and `memory-4`).
///
/// [`Storage::write`]: crate::storage::Storage::write
pub(super) enum Value {
    Encoded(Bytes),
    Typed(Box<dyn TypedValue>),
}

impl Value {
    /// A copy of the value: a copy of a typed value where its type can be
    /// copied, else its bytes.
    pub(super) fn copy(&self) -> Result<Self, CodecError> {
        match self {
            Value::Encoded(bytes) => Ok(Value::Encoded(bytes.clone())),
            Value::Typed(value) => match value.copy() {
                Some(copy) => Ok(Value::Typed(copy)),
                None => value.encode().map(Value::Encoded),
            },
        }
    }

    /// The stored bytes, encoding a typed value.
    pub(super) fn encoded(&self) -> Result<Bytes, CodecError> {
        match self {
            Value::Encoded(bytes) => Ok(bytes.clone()),
            Value::Typed(value) => value.encode(),
        }
    }

    /// Whether this is a value of `T` equal to `value` by `PartialEq`;
    /// `false` when it cannot tell (bytes, another type, no `PartialEq`).
    pub(super) fn holds_same<T: Session>(&self, value: &T) -> bool {
        match self {
            Value::Typed(stored) => (stored.as_ref() as &dyn Any)
                .downcast_ref::<T>()
                .and_then(|stored| value.same_value(stored))
                .unwrap_or(false),
            Value::Encoded(_) => false,
        }
    }

    /// The value, if it is a value of `T`.
    // Always inlined: see `HeldRecord::commit`.
    #[inline(always)]
    pub(super) fn typed_mut<T: Session>(&mut self) -> Option<&mut T> {
        match self {
            Value::Typed(stored) => (stored.as_mut() as &mut dyn Any).downcast_mut::<T>(),
            Value::Encoded(_) => None,
        }
    }

    /// Replaces the value by `value`, in place when it already holds a value
    /// of `T` (the usual case: no allocation).
    // Always inlined: a typed put (`MemoryStorage::put_typed`, the bounded
    // store's commit) writes through here.
    #[inline(always)]
    pub(super) fn set_typed<T: Session>(&mut self, value: T) {
        match self.typed_mut::<T>() {
            Some(stored) => *stored = value,
            None => *self = Value::Typed(Box::new(value)),
        }
    }
}

/// What a typed load found at a key.
pub(crate) enum Found<T> {
    /// Nothing stored (or it expired).
    Nothing,
    /// A value of `T`, copied without the codec. Whether the copy changed
    /// is told at its write, against the value still stored (the key's
    /// lock keeps it there), so the load shares nothing with the storage.
    Value { value: T, version: u64 },
    /// Bytes, or a value that cannot be copied: decoded as any storage's
    /// record is.
    Record(Record),
}

impl<T: Session> Found<T> {
    pub(super) fn of(value: &Value, version: u64) -> Result<Self, CodecError> {
        if let Value::Typed(stored) = value
            && let Some(typed) = (stored.as_ref() as &dyn Any).downcast_ref::<T>()
            && let Some(value) = typed.copy_value()
        {
            return Ok(Found::Value { value, version });
        }
        Ok(Found::Record(Record {
            value: value.encoded()?,
            version,
        }))
    }
}
