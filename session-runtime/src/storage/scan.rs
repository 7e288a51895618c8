//! What the data operations ask of a storage: walk its keys page by page
//! ([`Storage::scan`]) and write records back with their own version and
//! time to live ([`Storage::restore`]).
//!
//! [`Storage::scan`]: crate::storage::Storage::scan
//! [`Storage::restore`]: crate::storage::Storage::restore

use std::time::Duration;

use crate::key::StorageKey;
use crate::storage::Record;
use crate::storage::StorageError;

/// The most entries one page may ask for; a larger `limit` is lowered to it.
pub const MAX_SCAN_PAGE: usize = 10_000;

/// Which keys a [`scan`](crate::storage::Storage::scan) visits.
///
/// Keys are compared as text, in the layout of [`StorageKey`]
/// (`[prefix:][bot_id:]<session name>:<scope key>`):
///
/// - [`KeyPrefix::text`]: every key starting with some text that ends
///   within the namespace part (`my_bot:`, `my_bot:counter:`);
/// - [`KeyPrefix::scope`]: the keys of one whole namespace
///   (`my_bot:counter:`) whose scope key starts with some text (`-100:` for
///   the `user_in_chat` sessions of chat -100).
///
/// The two are told apart because Redis stores the scope key apart from the
/// namespace (as a hash tag); text running on into the scope key would find
/// nothing there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyPrefix {
    namespace: String,
    scope: Option<String>,
}

impl KeyPrefix {
    /// Every key.
    pub fn all() -> Self {
        Self::default()
    }

    /// The keys starting with `text`, which must end within the namespace
    /// (`my_bot:` or `my_bot:counter:`, not `my_bot:counter:4`; use
    /// [`KeyPrefix::scope`] to select by scope key).
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            namespace: text.into(),
            scope: None,
        }
    }

    /// The keys of `namespace` (a whole one, as [`StorageKey::namespace`]
    /// gives it) whose scope key starts with `scope_prefix`.
    pub fn scope(namespace: impl Into<String>, scope_prefix: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            scope: Some(scope_prefix.into()),
        }
    }

    /// The namespace text: a prefix of namespaces for [`KeyPrefix::text`],
    /// a whole namespace for [`KeyPrefix::scope`].
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The start of the scope key, when the prefix selects within one namespace.
    pub fn scope_prefix(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The whole prefix as text: what every selected key starts with.
    pub fn full_text(&self) -> String {
        let mut text = self.namespace.clone();
        text.push_str(self.scope.as_deref().unwrap_or(""));
        text
    }

    /// Whether `key` is selected.
    pub fn matches(&self, key: &StorageKey) -> bool {
        match &self.scope {
            Some(scope) => {
                key.namespace() == self.namespace && key.scope_key().starts_with(&**scope)
            }
            None => key.as_str().starts_with(&self.namespace),
        }
    }

    /// The storage key of `full`, a key this prefix selected in a storage
    /// that keeps keys as whole text: split after the namespace when the
    /// prefix names one, else as [`StorageKey::parse`] does.
    pub fn key_of(&self, full: &str) -> StorageKey {
        match &self.scope {
            Some(_) if full.starts_with(&self.namespace) => {
                StorageKey::from_parts(&self.namespace, &full[self.namespace.len()..])
            }
            _ => StorageKey::parse(full),
        }
    }
}

/// Where a scan goes on: opaque text a storage made, to hand back to the
/// same storage (the same kind, the same data) for the next page. It can
/// be kept (printed, stored) to resume a scan in another process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScanCursor(String);

impl ScanCursor {
    /// A cursor from its text (as [`ScanCursor::as_str`] gave it).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The cursor's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ScanCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One key a scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedRecord {
    /// The key.
    pub key: StorageKey,
    /// The record, when the scan asked for values (`None` otherwise).
    pub record: Option<Record>,
    /// The time the record has left to live, when the scan asked for values
    /// and the record has a TTL.
    pub ttl: Option<Duration>,
}

/// One page of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The keys found, at most the page's limit (possibly none while
    /// `next` is `Some`: a Redis `SCAN` step may find nothing).
    pub entries: Vec<ScannedRecord>,
    /// Where the next page starts; `None` when the scan is complete.
    pub next: Option<ScanCursor>,
}

/// A record to write with its own version and TTL (a copy from another
/// storage, a backup put back): see [`Storage::restore`](crate::storage::Storage::restore).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    /// Where.
    pub key: StorageKey,
    /// The bytes and the version to store, as they are.
    pub record: Record,
    /// The time the record has left to live; `None` keeps it.
    pub ttl: Option<Duration>,
}

/// What became of one [`Restore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RestoreOutcome {
    /// The record is stored with its version and TTL.
    Restored,
    /// Nothing was written: the key holds (or held, a cleared or expired
    /// record whose version the key keeps) the same or a newer version, or
    /// an update holds its lease. A copy run again skips what it copied.
    Skipped,
}

/// The error of a storage that lacks an optional operation.
pub(crate) fn unsupported(storage: &str, operation: &str) -> StorageError {
    StorageError::new(
        crate::storage::StorageErrorKind::Unsupported,
        format!(
            "the storage `{storage}` does not support {operation}: implement \
         `Storage::{operation}` for it, or copy its data with a storage that does"
        ),
    )
}
