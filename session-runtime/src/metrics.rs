//! Counters and histograms through the [`metrics`](https://docs.rs/metrics)
//! facade, with the `metrics` feature; without it every function here is
//! empty and inlined away, and [`Timer`] and [`LockWait`] are empty types, so
//! the call sites cost nothing.
//!
//! The bot installs a recorder (`metrics-exporter-prometheus`, or any
//! other); with none installed the calls are no-ops. Every metric is listed
//! here and in README's "Metrics" table; durations are in seconds.
//!
//! | name | kind | labels | one per |
//! |---|---|---|---|
//! | `tg_session_loads_total` | counter | `session`, `storage` | session read from its storage (found or not) |
//! | `tg_session_load_duration_seconds` | histogram | `storage` | batched load of an update from one storage, a wait for another process's lease included |
//! | `tg_session_writes_total` | counter | `session`, `storage` | session written (by the commit or `save`) |
//! | `tg_session_deletes_total` | counter | `session`, `storage` | session deleted (`clear`) |
//! | `tg_session_commit_duration_seconds` | histogram | `storage` | batched write (and lease release) of a commit to one storage |
//! | `tg_session_conflicts_total` | counter | `session`, `storage`, `cause` | write refused: `newer_version`, `expired`, `lease_lost` |
//! | `tg_session_decode_errors_total` | counter | `session`, `storage`, `error` | stored record not turned into the type: `decode` (an error), `reset` (replaced by the initial value, as the type opted in), `newer_schema`, `migration` |
//! | `tg_session_migrations_total` | counter | `session`, `storage` | record of an older schema version migrated |
//! | `tg_session_lock_waits_total` | counter | `session`, `lock` | update that found its key held by another update and waited: `lock` is `in_process` or `lease` (another process) |
//! | `tg_session_lock_wait_duration_seconds` | histogram | `session`, `lock` | such wait, ended (key taken, timed out or given up) |
//! | `tg_session_lock_timeouts_total` | counter | `session`, `lock` | such wait that reached the lock timeout |
//! | `tg_session_storage_errors_total` | counter | `storage`, `operation`, `kind` | failed storage call (`operation`: `load`, `commit`, `write` for `save`/`clear`, `renew`; `kind`: `unavailable`, `timeout`, `other`), or write its batch reported failed |
//! | `tg_session_evictions_total` | counter | `storage` (`memory`) | record a bounded memory store (`MemoryStorage::with_capacity`) evicted to make room for a new one: a session its user loses |

#[cfg(feature = "metrics")]
mod handles;

#[cfg(feature = "metrics")]
use ::metrics::{Counter, Histogram, counter, histogram};
#[cfg(feature = "metrics")]
use std::time::Instant;

use std::sync::Arc;

#[cfg(feature = "metrics")]
use crate::storage::Conflict;
use crate::storage::StorageError;
use crate::storage::WriteOutcome;

/// Gives the current recorder the help text and unit of every metric
/// (Prometheus `# HELP` lines); called when a manager is built.
#[inline(always)]
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        use ::metrics::{Unit, describe_counter, describe_histogram};
        describe_counter!(
            "tg_session_loads_total",
            "Sessions read from their storage (found or not)."
        );
        describe_histogram!(
            "tg_session_load_duration_seconds",
            Unit::Seconds,
            "Batched loads of an update from one storage, a wait for another process's lease included."
        );
        describe_counter!(
            "tg_session_writes_total",
            "Sessions written (by the commit or save)."
        );
        describe_counter!("tg_session_deletes_total", "Sessions deleted (clear).");
        describe_histogram!(
            "tg_session_commit_duration_seconds",
            Unit::Seconds,
            "Batched writes (and lease releases) of a commit to one storage."
        );
        describe_counter!(
            "tg_session_conflicts_total",
            "Writes refused by the storage, by cause."
        );
        describe_counter!(
            "tg_session_decode_errors_total",
            "Stored records that did not become their session type."
        );
        describe_counter!(
            "tg_session_migrations_total",
            "Stored records of an older schema version migrated."
        );
        describe_counter!(
            "tg_session_lock_waits_total",
            "Updates that waited for a key another update held."
        );
        describe_histogram!(
            "tg_session_lock_wait_duration_seconds",
            Unit::Seconds,
            "Waits for a key another update held."
        );
        describe_counter!(
            "tg_session_lock_timeouts_total",
            "Waits for a key that reached the lock timeout."
        );
        describe_counter!(
            "tg_session_storage_errors_total",
            "Failed storage calls, and writes a batch reported failed."
        );
        describe_counter!(
            "tg_session_evictions_total",
            "Records a bounded memory store evicted to make room for new ones."
        );
    }
}

/// Which lock an update waited for.
#[derive(Clone, Copy)]
pub(crate) enum Lock {
    /// Another update of this process held the key.
    InProcess,
    /// Another process held the key's lease in a shared storage.
    Lease,
}

/// The storage call that failed.
#[derive(Clone, Copy)]
pub(crate) enum Operation {
    Load,
    Commit,
    Write,
    Renew,
}

/// How a stored record failed to become the session's type.
#[derive(Clone, Copy)]
pub(crate) enum DecodeError {
    Decode,
    Reset,
    NewerSchema,
    Migration,
}

/// Whether metrics are recorded (the `metrics` feature): work done only to
/// build labels can be skipped without it.
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");

/// What one storage's metrics are labelled with, and the handles its
/// updates record through (registered once, see `metrics/handles.rs`);
/// empty without the feature.
pub(crate) struct StorageMetrics {
    #[cfg(feature = "metrics")]
    storage: Arc<str>,
    #[cfg(feature = "metrics")]
    handles: handles::Cache,
}

impl StorageMetrics {
    /// The metrics of the storage named `storage`, where the sessions named
    /// `sessions` are registered.
    #[inline(always)]
    pub(crate) fn new(storage: &Arc<str>, sessions: impl Iterator<Item = &'static str>) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = (storage, sessions);
        Self {
            #[cfg(feature = "metrics")]
            storage: Arc::clone(storage),
            #[cfg(feature = "metrics")]
            handles: handles::Cache::new(sessions),
        }
    }
}

#[cfg(feature = "metrics")]
impl StorageMetrics {
    fn load_duration(&self) -> Histogram {
        histogram!("tg_session_load_duration_seconds", "storage" => Arc::clone(&self.storage))
    }

    fn commit_duration(&self) -> Histogram {
        histogram!("tg_session_commit_duration_seconds", "storage" => Arc::clone(&self.storage))
    }

    fn loads(&self, session: &'static str) -> Counter {
        counter!("tg_session_loads_total", "session" => session, "storage" => Arc::clone(&self.storage))
    }

    fn writes(&self, session: &'static str) -> Counter {
        counter!("tg_session_writes_total", "session" => session, "storage" => Arc::clone(&self.storage))
    }
}

/// The session names of a load's keys, in key order: the `session` labels.
/// Empty (and never allocated) without the feature, so an update pays for
/// the labels only when they are recorded.
pub(crate) struct SessionNames {
    #[cfg(feature = "metrics")]
    names: smallvec::SmallVec<[&'static str; 4]>,
}

impl SessionNames {
    /// The names of a batch, one per key.
    #[inline(always)]
    pub(crate) fn collect(names: impl Iterator<Item = &'static str>) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = names;
        Self {
            #[cfg(feature = "metrics")]
            names: names.collect(),
        }
    }

    /// The name of a single key's session.
    #[inline(always)]
    pub(crate) fn one(name: &'static str) -> Self {
        Self::collect(std::iter::once(name))
    }

    /// The name of the session of key `index` ("?" past the end, and
    /// without the feature, where nothing reads it).
    #[inline(always)]
    pub(crate) fn get(&self, index: usize) -> &'static str {
        #[cfg(feature = "metrics")]
        return self.names.get(index).copied().unwrap_or("?");
        #[cfg(not(feature = "metrics"))]
        {
            let _ = index;
            "?"
        }
    }
}

/// Measures one storage call; empty without the feature.
#[derive(Clone, Copy)]
pub(crate) struct Timer {
    #[cfg(feature = "metrics")]
    started: Instant,
}

impl Timer {
    #[inline(always)]
    pub(crate) fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            started: Instant::now(),
        }
    }

    #[cfg(feature = "metrics")]
    fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// A wait for a key another update holds: counted when it starts, its
/// duration recorded when it is dropped (key taken, timed out, or the
/// update cancelled).
pub(crate) struct LockWait {
    #[cfg(feature = "metrics")]
    session: &'static str,
    #[cfg(feature = "metrics")]
    lock: Lock,
    #[cfg(feature = "metrics")]
    timer: Timer,
}

impl LockWait {
    #[inline(always)]
    pub(crate) fn start(session: &'static str, lock: Lock) -> Self {
        #[cfg(feature = "metrics")]
        counter!("tg_session_lock_waits_total", "session" => session, "lock" => lock.label())
            .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = (session, lock);
        Self {
            #[cfg(feature = "metrics")]
            session,
            #[cfg(feature = "metrics")]
            lock,
            #[cfg(feature = "metrics")]
            timer: Timer::start(),
        }
    }

    /// The wait reached the lock timeout.
    #[inline(always)]
    pub(crate) fn timed_out(&self) {
        #[cfg(feature = "metrics")]
        counter!("tg_session_lock_timeouts_total", "session" => self.session, "lock" => self.lock.label())
            .increment(1);
    }
}

#[cfg(feature = "metrics")]
impl Drop for LockWait {
    fn drop(&mut self) {
        histogram!("tg_session_lock_wait_duration_seconds", "session" => self.session, "lock" => self.lock.label())
            .record(self.timer.seconds());
    }
}

/// `sessions` were read from `storage` in one batch.
#[inline(always)]
pub(crate) fn loaded(sessions: &SessionNames, storage: &StorageMetrics, timer: Timer) {
    #[cfg(feature = "metrics")]
    {
        let handles = storage.handles.current();
        let seconds = timer.seconds();
        match &handles {
            Some(handles) => handles
                .load_duration(|| storage.load_duration())
                .record(seconds),
            None => storage.load_duration().record(seconds),
        }
        for &session in &sessions.names {
            // No handle for a lazy type that was not registered.
            match handles
                .as_ref()
                .and_then(|h| h.loads(session, || storage.loads(session)))
            {
                Some(loads) => loads.increment(1),
                None => storage.loads(session).increment(1),
            }
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (sessions, storage, timer);
}

/// A commit's batch reached `storage` and came back (with any answer).
#[inline(always)]
pub(crate) fn committed(storage: &StorageMetrics, timer: Timer) {
    #[cfg(feature = "metrics")]
    {
        let seconds = timer.seconds();
        match storage.handles.current() {
            Some(handles) => handles
                .commit_duration(|| storage.commit_duration())
                .record(seconds),
            None => storage.commit_duration().record(seconds),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (storage, timer);
}

/// What `storage` answered to one write of `session`.
#[inline(always)]
pub(crate) fn written(session: &'static str, metrics: &StorageMetrics, outcome: &WriteOutcome) {
    #[cfg(feature = "metrics")]
    {
        // Cloned for the rare outcomes only: a write uses its handle.
        let storage = || Arc::clone(&metrics.storage);
        match outcome {
            WriteOutcome::Written { .. } => {
                let handles = metrics.handles.current();
                match handles.and_then(|h| h.writes(session, || metrics.writes(session))) {
                    Some(writes) => writes.increment(1),
                    None => metrics.writes(session).increment(1),
                }
            }
            WriteOutcome::Deleted => {
                counter!("tg_session_deletes_total", "session" => session, "storage" => storage())
                    .increment(1);
            }
            WriteOutcome::Conflict(cause) => {
                let cause = match cause {
                    Conflict::NewerVersion => "newer_version",
                    Conflict::Expired => "expired",
                    Conflict::LeaseLost => "lease_lost",
                };
                counter!("tg_session_conflicts_total", "session" => session, "storage" => storage(), "cause" => cause)
                    .increment(1);
            }
            WriteOutcome::Failed(error) => {
                storage_failed_labelled(storage(), Operation::Commit, error)
            }
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (session, metrics, outcome);
}

/// A call to `storage` failed as a whole.
#[inline(always)]
pub(crate) fn storage_failed(storage: &Arc<str>, operation: Operation, error: &StorageError) {
    #[cfg(feature = "metrics")]
    storage_failed_labelled(Arc::clone(storage), operation, error);
    #[cfg(not(feature = "metrics"))]
    let _ = (storage, operation, error);
}

#[cfg(feature = "metrics")]
fn storage_failed_labelled(storage: Arc<str>, operation: Operation, error: &StorageError) {
    use crate::storage::StorageErrorKind;
    let operation = match operation {
        Operation::Load => "load",
        Operation::Commit => "commit",
        Operation::Write => "write",
        Operation::Renew => "renew",
    };
    let kind = match error.kind() {
        StorageErrorKind::Unavailable => "unavailable",
        StorageErrorKind::Timeout => "timeout",
        StorageErrorKind::Unsupported => "unsupported",
        StorageErrorKind::Other => "other",
    };
    counter!("tg_session_storage_errors_total", "storage" => storage, "operation" => operation, "kind" => kind)
        .increment(1);
}

/// A record of `session` in `storage` did not become its type.
#[inline(always)]
pub(crate) fn decode_failed(session: &'static str, storage: &Arc<str>, error: DecodeError) {
    #[cfg(feature = "metrics")]
    {
        let error = match error {
            DecodeError::Decode => "decode",
            DecodeError::Reset => "reset",
            DecodeError::NewerSchema => "newer_schema",
            DecodeError::Migration => "migration",
        };
        counter!("tg_session_decode_errors_total", "session" => session, "storage" => Arc::clone(storage), "error" => error)
            .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (session, storage, error);
}

/// Records a bounded memory store evicted, `count` of them (labelled with
/// the memory store's name, as [`Storage::name`](crate::storage::Storage::name)
/// gives it: the key's text does not tell its session apart from its scope).
#[inline(always)]
pub(crate) fn evicted(count: u64) {
    #[cfg(feature = "metrics")]
    if count > 0 {
        counter!("tg_session_evictions_total", "storage" => "memory").increment(count);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = count;
}

/// A record of `session` in `storage` was migrated to the current schema.
#[inline(always)]
pub(crate) fn migrated(session: &'static str, storage: &Arc<str>) {
    #[cfg(feature = "metrics")]
    counter!("tg_session_migrations_total", "session" => session, "storage" => Arc::clone(storage))
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (session, storage);
}

#[cfg(feature = "metrics")]
impl Lock {
    fn label(self) -> &'static str {
        match self {
            Lock::InProcess => "in_process",
            Lock::Lease => "lease",
        }
    }
}
