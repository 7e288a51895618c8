//! Metric handles registered once per storage and reused by every update.
//!
//! A `counter!` or `histogram!` call with labels builds a label vector and
//! looks its series up in the recorder's registry, every time: with a
//! Prometheus recorder that was most of an update's cost (about 6,200
//! instructions of 9,400 for one memory session, and an allocation per
//! call). A handle registered once is a pointer to the series.
//!
//! A handle belongs to the recorder it was registered with. Handles are
//! kept only for the process's global recorder (or the no-op one, while none
//! is installed), which lives as long as the process: a thread's local
//! recorder (`metrics::with_local_recorder`, in tests) may be dropped and
//! another made at its address, which no check could tell apart. Calls made
//! under a local recorder, or under a global one installed after the first
//! updates, register every time, as without the cache: nothing is recorded
//! in the wrong place.

use std::sync::OnceLock;

use metrics::{Counter, Histogram};

/// The handles of one storage's metrics (see the module's docs).
pub(super) struct Cache {
    /// The sessions registered in this storage, the ones with counters here.
    sessions: Box<[&'static str]>,
    handles: OnceLock<Handles>,
}

/// The handles registered with one recorder, each on first use (so a series
/// appears when it is first recorded, as without the cache).
struct Handles {
    /// Which recorder: the global one's address (or the no-op one's) at the
    /// first use.
    recorder: usize,
    load_duration: OnceLock<Histogram>,
    commit_duration: OnceLock<Histogram>,
    /// One per session of `sessions`, in its order.
    loads: Box<[OnceLock<Counter>]>,
    writes: Box<[OnceLock<Counter>]>,
}

impl Cache {
    pub(super) fn new(sessions: impl Iterator<Item = &'static str>) -> Self {
        Self {
            sessions: sessions.collect(),
            handles: OnceLock::new(),
        }
    }

    /// The handles, when the current recorder is the one they are for (the
    /// global recorder as the first use found it).
    pub(super) fn current(&self) -> Option<Current<'_>> {
        let recorder = current_recorder();
        let handles = self.handles.get_or_init(|| Handles {
            // No recorder lives at `usize::MAX`: if the global one could not
            // be looked up, every call registers, and none looks again.
            recorder: global_recorder().unwrap_or(usize::MAX),
            load_duration: OnceLock::new(),
            commit_duration: OnceLock::new(),
            loads: self.sessions.iter().map(|_| OnceLock::new()).collect(),
            writes: self.sessions.iter().map(|_| OnceLock::new()).collect(),
        });
        (handles.recorder == recorder).then_some(Current {
            sessions: &self.sessions,
            handles,
        })
    }
}

/// A storage's handles for the current recorder.
pub(super) struct Current<'a> {
    sessions: &'a [&'static str],
    handles: &'a Handles,
}

impl<'a> Current<'a> {
    pub(super) fn load_duration(&self, register: impl FnOnce() -> Histogram) -> &'a Histogram {
        self.handles.load_duration.get_or_init(register)
    }

    pub(super) fn commit_duration(&self, register: impl FnOnce() -> Histogram) -> &'a Histogram {
        self.handles.commit_duration.get_or_init(register)
    }

    /// The loads counter of `session`, if it is registered in this storage.
    pub(super) fn loads(
        &self,
        session: &'static str,
        register: impl FnOnce() -> Counter,
    ) -> Option<&'a Counter> {
        self.of_session(&self.handles.loads, session, register)
    }

    /// The writes counter of `session`, if it is registered in this storage.
    pub(super) fn writes(
        &self,
        session: &'static str,
        register: impl FnOnce() -> Counter,
    ) -> Option<&'a Counter> {
        self.of_session(&self.handles.writes, session, register)
    }

    fn of_session(
        &self,
        handles: &'a [OnceLock<Counter>],
        session: &'static str,
        register: impl FnOnce() -> Counter,
    ) -> Option<&'a Counter> {
        let index = self.sessions.iter().position(|name| *name == session)?;
        Some(handles.get(index)?.get_or_init(register))
    }
}

/// The recorder the `metrics` macros would use now, by address: a
/// thread's local recorder, else the global one, else the no-op one.
fn current_recorder() -> usize {
    metrics::with_recorder(|recorder| std::ptr::from_ref(recorder).cast::<()>().addr())
}

/// The global recorder (or the no-op one), by address, as a thread with no
/// local recorder sees it; `None` if no thread could be started to look.
/// Once per storage of a manager: the first use of its handles.
fn global_recorder() -> Option<usize> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("tg-session-metrics".into())
            .spawn_scoped(scope, current_recorder)
            .ok()?
            .join()
            .ok()
    })
}
