//! What a storage reports when a call fails.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The cause inside a [`StorageError`]: shared, not boxed, because one
/// failure is reported to every accessor it affects (the errors are `Clone`).
type SharedSource = Arc<dyn StdError + Send + Sync + 'static>;

/// What a [`Storage`](crate::storage::Storage) reports when it fails.
#[derive(Debug, Clone)]
pub struct StorageError {
    kind: StorageErrorKind,
    source: SharedSource,
}

/// The broad class of a [`StorageError`], for retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The storage could not be reached (connection refused or lost).
    Unavailable,
    /// The storage did not answer in time.
    Timeout,
    /// The storage answered with an error, or held something it should not.
    Other,
    /// The storage does not offer the operation (a storage without
    /// [`Storage::scan`](crate::storage::Storage::scan), for instance).
    Unsupported,
}

impl StorageError {
    /// A storage error of the given kind with its cause.
    pub fn new(kind: StorageErrorKind, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            kind,
            source: Arc::from(source.into()),
        }
    }

    /// The storage could not be reached.
    pub fn unavailable(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(StorageErrorKind::Unavailable, source)
    }

    /// The storage did not answer within `after`.
    pub fn timeout(after: Duration) -> Self {
        Self::new(
            StorageErrorKind::Timeout,
            format!("no answer within {after:?}"),
        )
    }

    /// Any other failure.
    pub fn other(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(StorageErrorKind::Other, source)
    }

    /// The class of failure.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }
}

/// Two storage errors are equal when their kind and message are (their
/// sources are not comparable).
impl PartialEq for StorageError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.source.to_string() == other.source.to_string()
    }
}

impl Eq for StorageError {}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            StorageErrorKind::Unavailable => "unavailable",
            StorageErrorKind::Timeout => "timed out",
            StorageErrorKind::Other => "error",
            StorageErrorKind::Unsupported => "not supported",
        };
        write!(f, "{kind}: {}", self.source)
    }
}

impl StdError for StorageError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}
