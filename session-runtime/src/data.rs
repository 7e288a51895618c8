//! Operations on stored sessions, without hand-written Redis or SQL: list the
//! keys of a session type, find, overwrite or erase everything stored about
//! one user or one chat, and copy every record from one storage to another.
//!
//! Everything here goes through [`Storage::scan`] and [`Storage::restore`]
//! (memory, Redis, Redis Cluster, SQLite and PostgreSQL have both) and the
//! ordinary [`Storage::load`] and [`Storage::write`]; memory stays bounded
//! by the page size however many records a storage holds.
//!
//! - [`Scanner`]: the keys (optionally the records) under a [`KeyPrefix`],
//!   page by page, resumable from a [`ScanCursor`].
//! - [`copy`]: every record from one storage to another, versions and
//!   remaining TTLs kept, with counts, resumable.
//! - [`SessionData`] (from [`SessionManager::data`]): the same, knowing the
//!   manager's session types, key prefix and storages: [`SessionData::keys`]
//!   of one type, [`SessionData::find`] and [`SessionData::erase`] of a
//!   [`Subject`] (a user or a chat) across every type and scope holding its id.
//!
//! # Which session types are known
//!
//! Session types are generic parameters of the manager's builder, so the
//! manager knows only the types given to
//! [`register`](crate::SessionManagerBuilder::register) or
//! [`register_in`](crate::SessionManagerBuilder::register_in): register lazy
//! types too, or name them with [`SessionData::with_session`], for
//! [`SessionData::erase`] to reach them. Types keyed by a `key_fn` cannot be
//! found by a user or chat id (the function is not invertible):
//! [`Found::unsearchable`] names them, to be handled by their key.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tg_session::StorageError> {
//! use tg_session::data::{copy, CopyOptions};
//! use tg_session::MemoryStorage;
//!
//! let (from, to) = (MemoryStorage::new(), MemoryStorage::new());
//! let report = copy(&from, &to, CopyOptions::default()).await.map_err(|e| e.error)?;
//! assert_eq!(report.copied, 0);
//! assert!(report.resume_from.is_none(), "the copy is complete");
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::key::{KeyStrategy, Scope, StorageKey};
use crate::manager::{Registration, SessionManager};
use crate::storage::StorageError;
use crate::storage::{
    KeyPrefix, Record, Restore, RestoreOutcome, ScanCursor, ScannedRecord, SharedStorage, Storage,
    Write, WriteOutcome,
};

/// The page size of scans and copies unless told otherwise.
pub const DEFAULT_PAGE: usize = 500;

/// The keys (and, if asked, the records) under a prefix, page by page.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tg_session::StorageError> {
/// use tg_session::data::Scanner;
/// use tg_session::storage::KeyPrefix;
/// use tg_session::MemoryStorage;
///
/// let storage = MemoryStorage::new();
/// let mut scanner = Scanner::new(&storage, KeyPrefix::text("my_bot:counter:")).page_size(100);
/// while let Some(page) = scanner.next_page().await? {
///     for entry in page {
///         println!("{}", entry.key);
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct Scanner<'a> {
    storage: &'a dyn Storage,
    prefix: KeyPrefix,
    cursor: Option<ScanCursor>,
    page_size: usize,
    with_values: bool,
    done: bool,
}

impl<'a> Scanner<'a> {
    /// A scan of the keys of `storage` that `prefix` selects.
    pub fn new(storage: &'a dyn Storage, prefix: KeyPrefix) -> Self {
        Self {
            storage,
            prefix,
            cursor: None,
            page_size: DEFAULT_PAGE,
            with_values: false,
            done: false,
        }
    }

    /// At most this many keys a page (default [`DEFAULT_PAGE`]).
    #[must_use]
    pub fn page_size(mut self, size: usize) -> Self {
        self.page_size = size.max(1);
        self
    }

    /// Also reads each record and its remaining TTL.
    #[must_use]
    pub fn with_values(mut self) -> Self {
        self.with_values = true;
        self
    }

    /// Goes on from where an earlier scan of the same storage stopped
    /// ([`Scanner::cursor`] after its last page).
    #[must_use]
    pub fn resume_from(mut self, cursor: ScanCursor) -> Self {
        self.cursor = Some(cursor);
        self
    }

    /// The next page, or `None` once the scan is complete. A page may be
    /// empty while the scan goes on (a Redis `SCAN` step that found nothing).
    pub async fn next_page(&mut self) -> Result<Option<Vec<ScannedRecord>>, StorageError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .storage
            .scan(
                &self.prefix,
                self.cursor.as_ref(),
                self.page_size,
                self.with_values,
            )
            .await?;
        self.done = page.next.is_none();
        self.cursor = page.next;
        Ok(Some(page.entries))
    }

    /// Where the scan goes on after the pages read so far; `None` before
    /// the first page or once complete.
    pub fn cursor(&self) -> Option<&ScanCursor> {
        self.cursor.as_ref()
    }
}

/// What [`copy`] copies and how.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Only the keys this selects (default: every key).
    pub prefix: KeyPrefix,
    /// Records read and written per round trip (default [`DEFAULT_PAGE`]).
    pub page_size: usize,
    /// Go on from here: the [`CopyReport::resume_from`] of an earlier copy
    /// that stopped, or `None` to start.
    pub resume_from: Option<ScanCursor>,
    /// Stop after this many pages, leaving [`CopyReport::resume_from`] set
    /// (to copy in slices); `None` copies everything.
    pub max_pages: Option<usize>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            prefix: KeyPrefix::all(),
            page_size: DEFAULT_PAGE,
            resume_from: None,
            max_pages: None,
        }
    }
}

/// What a [`copy`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Records written to the destination with their version and TTL.
    pub copied: u64,
    /// Records left alone: the destination holds the same or a newer
    /// version (or an update holds its lease there).
    pub skipped: u64,
    /// Records of the page whose write failed (see [`CopyError`]).
    pub failed: u64,
    /// Where to resume ([`CopyOptions::resume_from`]); `None` when every
    /// record was visited.
    pub resume_from: Option<ScanCursor>,
}

/// A [`copy`] that stopped on a storage error: what it did until then, and
/// where to resume (the page that failed is read again).
#[derive(Clone, Debug, thiserror::Error)]
#[error("copy stopped after {} copied and {} skipped records: {error}", report.copied, report.skipped)]
pub struct CopyError {
    /// The counts so far; `resume_from` is the start of the page that failed.
    pub report: CopyReport,
    /// What failed.
    #[source]
    pub error: StorageError,
}

/// Copies every record of `from` that `options` selects into `to`, each
/// with its version and remaining TTL ([`Storage::restore`]): a record is
/// skipped where `to` already holds the same or a newer version, so a copy
/// run again (or resumed over pages it already did) changes nothing.
///
/// Records are read a page at a time (memory stays bounded by the page
/// size). Expired records are not copied; a TTL keeps running from the
/// moment its page was read. A record changed in `from` after its page was
/// read is not seen by this copy: stop the writers, or copy again.
pub async fn copy(
    from: &dyn Storage,
    to: &dyn Storage,
    options: CopyOptions,
) -> Result<CopyReport, CopyError> {
    let mut scanner = Scanner::new(from, options.prefix)
        .page_size(options.page_size)
        .with_values();
    if let Some(cursor) = options.resume_from {
        scanner = scanner.resume_from(cursor);
    }
    let mut report = CopyReport::default();
    let mut pages = 0;
    loop {
        if options.max_pages.is_some_and(|max| pages >= max) {
            report.resume_from = scanner.cursor().cloned();
            return Ok(report);
        }
        let page_start = scanner.cursor().cloned();
        let stop = |report: &mut CopyReport, error| {
            report.resume_from = page_start.clone();
            Err(CopyError {
                report: report.clone(),
                error,
            })
        };
        let page = match scanner.next_page().await {
            Ok(Some(page)) => page,
            Ok(None) => return Ok(report),
            Err(error) => return stop(&mut report, error),
        };
        pages += 1;
        let records: Vec<Restore> = page
            .into_iter()
            .filter_map(|entry| {
                entry.record.map(|record| Restore {
                    key: entry.key,
                    record,
                    ttl: entry.ttl,
                })
            })
            .collect();
        let restored = match records.is_empty() {
            true => Ok(Vec::new()),
            false => to.restore(&records).await,
        };
        match restored {
            Ok(outcomes) => {
                for outcome in outcomes {
                    match outcome {
                        RestoreOutcome::Restored => report.copied += 1,
                        RestoreOutcome::Skipped => report.skipped += 1,
                    }
                }
            }
            Err(error) => {
                report.failed += records.len() as u64;
                return stop(&mut report, error);
            }
        }
        if scanner.cursor().is_none() {
            return Ok(report);
        }
    }
}

/// Whose sessions to find or erase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user: their `user` sessions and their `user_in_chat` sessions in
    /// every chat. In Telegram a user's private chat with the bot has the
    /// user's id: add [`Subject::Chat`] with that id for its `chat` sessions.
    User(u64),
    /// A chat: its `chat` sessions, its `chat_thread` sessions in every
    /// topic, and the `user_in_chat` sessions of every user in it.
    Chat(i64),
}

/// A session type as the data operations see it.
#[derive(Clone)]
pub struct SessionKind {
    /// The session's key name (`#[session(key = "…")]`).
    pub name: String,
    /// How its keys are made.
    pub key: KeyStrategy,
    /// Where its records are.
    pub storage: SharedStorage,
}

impl std::fmt::Debug for SessionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKind")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("storage", &self.storage.name())
            .finish()
    }
}

/// One stored session [`SessionData::find`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundRecord {
    /// The session type's key name.
    pub session: String,
    /// The record's key.
    pub key: StorageKey,
    /// The record.
    pub record: Record,
    /// The time it has left to live, if it has a TTL (`None` for records
    /// read by key rather than scanned).
    pub ttl: Option<Duration>,
}

/// What [`SessionData::find`] found about a [`Subject`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// The records, by session type in registration order.
    pub records: Vec<FoundRecord>,
    /// Session types keyed by a `key_fn`: they may hold records of the
    /// subject that cannot be found by its id.
    pub unsearchable: Vec<String>,
}

/// What [`SessionData::erase`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Erasure {
    /// The records deleted, as they were.
    pub removed: Vec<FoundRecord>,
    /// Keys an update held the lease of at that moment (in another
    /// process): not deleted; erase again once it is done.
    pub busy: Vec<StorageKey>,
    /// As [`Found::unsearchable`].
    pub unsearchable: Vec<String>,
}

/// The data operations over a manager's session types: see the
/// [module documentation](self).
#[derive(Clone, Debug)]
pub struct SessionData {
    kinds: Vec<SessionKind>,
    prefix: Option<String>,
    bot_id: Option<u64>,
    page_size: usize,
}

impl SessionManager {
    /// The data operations over this manager's registered session types,
    /// key prefix and storages.
    ///
    /// With [`bot_id_in_keys`](crate::SessionManagerBuilder::bot_id_in_keys),
    /// name the bot with [`SessionData::bot`] first.
    pub fn data(&self) -> SessionData {
        let mut registrations: Vec<&Registration> = self.inner.registrations.iter().collect();
        registrations.sort_by_key(|registration| registration.registered);
        SessionData {
            kinds: registrations
                .into_iter()
                .map(|registration| SessionKind {
                    name: registration.name.to_owned(),
                    key: registration.key,
                    storage: self.inner.storages[registration.storage_index]
                        .storage
                        .clone(),
                })
                .collect(),
            prefix: self.inner.prefix().map(str::to_owned),
            bot_id: None,
            page_size: DEFAULT_PAGE,
        }
    }
}

impl SessionData {
    /// Data operations over session types given by hand (no manager), under
    /// the key prefix `prefix`.
    pub fn new(prefix: Option<&str>) -> Self {
        Self {
            kinds: Vec::new(),
            prefix: prefix.map(str::to_owned),
            bot_id: None,
            page_size: DEFAULT_PAGE,
        }
    }

    /// Adds a session type the manager does not know (an unregistered lazy
    /// type, or a type of another process's manager).
    #[must_use]
    pub fn with_session(
        mut self,
        name: impl Into<String>,
        key: KeyStrategy,
        storage: SharedStorage,
    ) -> Self {
        self.kinds.push(SessionKind {
            name: name.into(),
            key,
            storage,
        });
        self
    }

    /// The bot whose sessions to reach, when keys include the bot's id.
    #[must_use]
    pub fn bot(mut self, bot_id: u64) -> Self {
        self.bot_id = Some(bot_id);
        self
    }

    /// Records per scan page (default [`DEFAULT_PAGE`]).
    #[must_use]
    pub fn page_size(mut self, size: usize) -> Self {
        self.page_size = size.max(1);
        self
    }

    /// The session types these operations reach.
    pub fn sessions(&self) -> &[SessionKind] {
        &self.kinds
    }

    /// The namespace of session `name`: `[prefix:][bot_id:]name:`.
    pub fn namespace(&self, name: &str) -> String {
        StorageKey::new(self.prefix.as_deref(), self.bot_id, name, "")
            .namespace()
            .to_owned()
    }

    /// A scan of the keys of session type `name` in its storage, or `None`
    /// when no such type is known.
    pub fn keys(&self, name: &str) -> Option<Scanner<'_>> {
        let kind = self.kinds.iter().find(|kind| kind.name == name)?;
        let prefix = KeyPrefix::scope(self.namespace(name), "");
        Some(Scanner::new(&*kind.storage, prefix).page_size(self.page_size))
    }

    /// Every record of `subject` in every known session type and scope that
    /// holds its id (see [`Subject`]).
    ///
    /// `user`/`chat` records are read by key; `user_in_chat` of a chat and
    /// `chat_thread` are scanned by the chat's key prefix; `user_in_chat` of
    /// a user is a scan of the whole type (the user's id ends the key), so
    /// it costs a pass over that type's records.
    pub async fn find(&self, subject: Subject) -> Result<Found, StorageError> {
        let mut found = Found::default();
        for kind in &self.kinds {
            let namespace = self.namespace(&kind.name);
            let records = match (kind.key, subject) {
                (KeyStrategy::Custom(_), _) => {
                    found.unsearchable.push(kind.name.clone());
                    continue;
                }
                (KeyStrategy::Scope(Scope::User), Subject::User(user)) => {
                    self.read_one(kind, &namespace, &user.to_string()).await?
                }
                (KeyStrategy::Scope(Scope::Chat), Subject::Chat(chat)) => {
                    self.read_one(kind, &namespace, &chat.to_string()).await?
                }
                (KeyStrategy::Scope(Scope::UserInChat), Subject::User(user)) => {
                    let suffix = format!(":{user}");
                    self.scan(kind, KeyPrefix::scope(namespace, ""), |key| {
                        key.scope_key().ends_with(&suffix)
                    })
                    .await?
                }
                (
                    KeyStrategy::Scope(Scope::UserInChat | Scope::ChatThread),
                    Subject::Chat(chat),
                ) => {
                    let prefix = KeyPrefix::scope(namespace, format!("{chat}:"));
                    self.scan(kind, prefix, |_| true).await?
                }
                _ => continue,
            };
            found.records.extend(records);
        }
        Ok(found)
    }

    /// Deletes every record [`SessionData::find`] finds for `subject` (a
    /// user's erasure request) and says what went.
    ///
    /// A record an update holds the lease of (in another process) is left
    /// and listed in [`Erasure::busy`]; one whose update commits after the
    /// erasure is written again by it, so run the erasure when the user can
    /// no longer reach the bot (blocked), or again after.
    pub async fn erase(&self, subject: Subject) -> Result<Erasure, StorageError> {
        let found = self.find(subject).await?;
        let mut erasure = Erasure {
            unsearchable: found.unsearchable,
            ..Erasure::default()
        };
        for kind in &self.kinds {
            let mine: Vec<&FoundRecord> = found
                .records
                .iter()
                .filter(|record| record.session == kind.name)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let writes: Vec<Write> = mine
                .iter()
                .map(|record| Write::Delete {
                    key: record.key.clone(),
                })
                .collect();
            let outcomes = kind.storage.write(&writes).await?;
            for (record, outcome) in mine.into_iter().zip(outcomes) {
                match outcome {
                    WriteOutcome::Deleted => erasure.removed.push(record.clone()),
                    WriteOutcome::Failed(error) => return Err(error),
                    _ => erasure.busy.push(record.key.clone()),
                }
            }
        }
        Ok(erasure)
    }

    /// Replaces the record under `key` (of session type `session`) by
    /// `value`, if it is still at `expected_version` (`None`: only if
    /// nothing is stored), as an update would; the new version, or what
    /// refused it.
    pub async fn overwrite(
        &self,
        session: &str,
        key: &StorageKey,
        value: bytes::Bytes,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<WriteOutcome, StorageError> {
        let kind = self.kind(session)?;
        let write = Write::Put {
            key: key.clone(),
            value,
            expected_version,
            ttl,
        };
        let mut outcomes = kind.storage.write(&[write]).await?;
        outcomes
            .pop()
            .ok_or_else(|| StorageError::other("the storage answered no outcome for one write"))
    }

    fn kind(&self, session: &str) -> Result<&SessionKind, StorageError> {
        self.kinds
            .iter()
            .find(|kind| kind.name == session)
            .ok_or_else(|| {
                let known: Vec<&str> = self.kinds.iter().map(|kind| kind.name.as_str()).collect();
                StorageError::other(format!(
                    "no session type `{session}` is known (known: {}); register it with the \
                     manager or name it with `SessionData::with_session`",
                    known.join(", ")
                ))
            })
    }

    async fn read_one(
        &self,
        kind: &SessionKind,
        namespace: &str,
        scope: &str,
    ) -> Result<Vec<FoundRecord>, StorageError> {
        let key = StorageKey::from_parts(namespace, scope);
        let mut records = kind.storage.load(std::slice::from_ref(&key)).await?;
        Ok(records
            .pop()
            .flatten()
            .map(|record| FoundRecord {
                session: kind.name.clone(),
                key,
                record,
                ttl: None,
            })
            .into_iter()
            .collect())
    }

    async fn scan(
        &self,
        kind: &SessionKind,
        prefix: KeyPrefix,
        keep: impl Fn(&StorageKey) -> bool,
    ) -> Result<Vec<FoundRecord>, StorageError> {
        let mut scanner = Scanner::new(&*kind.storage, prefix)
            .page_size(self.page_size)
            .with_values();
        let mut records = Vec::new();
        while let Some(page) = scanner.next_page().await? {
            records.extend(
                page.into_iter()
                    .filter(|entry| keep(&entry.key))
                    .filter_map(|entry| {
                        Some(FoundRecord {
                            session: kind.name.clone(),
                            record: entry.record?,
                            key: entry.key,
                            ttl: entry.ttl,
                        })
                    }),
            );
        }
        Ok(records)
    }
}
