//! Hearing of lease releases: one pub/sub connection per storage, subscribed
//! to the release channel, wakes the waiters of the lease each message names.
//!
//! Pub/sub needs a connection of its own: a subscribed connection can send
//! nothing else, and the multiplexed connection that carries every load and
//! write must never wait on anything. The connection is made the first time
//! an update waits for a lease (a bot that never contends never opens it).
//! While it is down (not yet subscribed, or lost and being re-made), waiters
//! poll; when it is lost, every waiter is woken so it retries at once and
//! then polls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::Client;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::storage::ReleaseWatch;

/// The channel every release of a waited-for lease is published on; the
/// message is the lease's Redis key. One channel for all keys: a subscriber
/// keeps one subscription whatever the number of keys, and on a cluster a
/// classic `PUBLISH` reaches every node, so any one node will do.
pub(super) const CHANNEL: &str = "tg-session:released";

/// How often a quiet subscription is checked with a `PING`, so a server that
/// stopped answering (paused, a silently dropped connection) is noticed and
/// the connection re-made.
const PING_EVERY: Duration = Duration::from_secs(5);

/// The first wait before subscribing again after a failure; it doubles up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The release listener of one storage (shared by its clones).
pub(super) struct ReleaseListener {
    /// Where to subscribe, tried in turn; empty: waiters always poll.
    sources: Vec<Client>,
    state: Arc<State>,
    /// The subscription task, started by the first watch (again by a later
    /// one if the runtime it ran on has shut down); aborted when the last
    /// clone of the storage is dropped.
    task: Mutex<Option<AbortOnDrop>>,
}

/// What the subscription task and the watchers share.
#[derive(Default)]
struct State {
    inner: Mutex<Watchers>,
}

/// The watched leases, and whether releases are heard right now. Both under
/// one lock, so a watch never starts on a subscription that was just lost
/// without the loss waking it.
struct Watchers {
    /// Lease key → the `Notify` its waiters hold. Weak: an entry whose
    /// waiters are all gone is dead and swept, so the map does not grow with
    /// every key ever waited for.
    by_lease: HashMap<String, Weak<Notify>>,
    /// Sweep dead entries when the map reaches this size (then twice the
    /// live count): amortized O(1) per watch.
    sweep_at: usize,
    subscribed: bool,
}

const FIRST_SWEEP: usize = 64;

impl Default for Watchers {
    fn default() -> Self {
        Self {
            by_lease: HashMap::new(),
            sweep_at: FIRST_SWEEP,
            subscribed: false,
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ReleaseListener {
    /// A listener that subscribes through `sources` (in turn, the next after
    /// a failure) once something waits.
    pub(super) fn new(sources: Vec<Client>) -> Self {
        Self {
            sources,
            state: Arc::default(),
            task: Mutex::new(None),
        }
    }

    /// A watch on `lease` (its Redis key): woken by the next published
    /// release if the subscription is up, else a poll.
    ///
    /// `timeout` bounds each connection attempt and health check of the
    /// subscription task, which this starts if it is not running (it needs
    /// a Tokio runtime; without one, waiters poll).
    pub(super) fn watch(&self, lease: &str, timeout: Duration) -> ReleaseWatch {
        self.start(timeout);
        let mut watchers = self.state.lock();
        if !watchers.subscribed {
            return ReleaseWatch::poll();
        }
        let notify = match watchers.by_lease.get(lease).and_then(Weak::upgrade) {
            Some(notify) => notify,
            None => {
                let notify = Arc::new(Notify::new());
                watchers
                    .by_lease
                    .insert(lease.to_owned(), Arc::downgrade(&notify));
                watchers.sweep();
                notify
            }
        };
        // Enabled here, under the lock: a release dispatched after this
        // point wakes it.
        ReleaseWatch::notify(notify)
    }

    fn start(&self, timeout: Duration) {
        if self.sources.is_empty() {
            return;
        }
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|task| !task.0.is_finished()) {
            return;
        }
        // Not started, or its runtime is gone (and with it the task, before
        // it could say it stopped listening).
        self.state.set_subscribed(false);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *task = Some(AbortOnDrop(runtime.spawn(listen(
            self.sources.clone(),
            Arc::clone(&self.state),
            timeout,
        ))));
    }

    /// How many leases have an entry (live or not yet swept), for tests.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.state.lock().by_lease.len()
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watchers> {
        // The lock guards no invariant a panic could break half-way (a map
        // of weak pointers and a flag), so a poisoned one is used as is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waiters of `lease`.
    fn released(&self, lease: &str) {
        let mut watchers = self.lock();
        match watchers.by_lease.get(lease).map(Weak::upgrade) {
            Some(Some(notify)) => notify.notify_waiters(),
            Some(None) => {
                watchers.by_lease.remove(lease);
            }
            None => {}
        }
    }

    fn set_subscribed(&self, subscribed: bool) {
        let mut watchers = self.lock();
        watchers.subscribed = subscribed;
        if !subscribed {
            // Releases published while down are lost: every waiter retries
            // now, and polls until the subscription is back.
            for notify in watchers.by_lease.values().filter_map(Weak::upgrade) {
                notify.notify_waiters();
            }
            watchers.by_lease.clear();
        }
    }
}

impl Watchers {
    fn sweep(&mut self) {
        if self.by_lease.len() < self.sweep_at {
            return;
        }
        self.by_lease.retain(|_, notify| notify.strong_count() > 0);
        self.sweep_at = (self.by_lease.len() * 2).max(FIRST_SWEEP);
    }
}

/// The subscription task: subscribe, dispatch messages until the
/// connection is lost, then again after a backoff, forever (it is aborted
/// with the storage).
async fn listen(sources: Vec<Client>, state: Arc<State>, timeout: Duration) {
    let mut backoff = MIN_BACKOFF;
    for source in sources.iter().cycle() {
        match tokio::time::timeout(timeout, subscribe(source)).await {
            Ok(Ok((sink, stream))) => {
                backoff = MIN_BACKOFF;
                state.set_subscribed(true);
                tracing::debug!(channel = CHANNEL, "listening for lease releases");
                let reason = serve(&state, sink, stream, timeout).await;
                state.set_subscribed(false);
                tracing::warn!(
                    channel = CHANNEL,
                    reason,
                    "lost the lease release subscription; waiters poll until it is back"
                );
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "cannot subscribe to lease releases; waiters poll");
            }
            Err(_) => {
                tracing::debug!(
                    ?timeout,
                    "subscribing to lease releases timed out; waiters poll"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(source: &Client) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
    let mut pubsub = source.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    Ok(pubsub.split())
}

/// Dispatches releases until the connection ends or stops answering;
/// returns why.
async fn serve(
    state: &State,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    timeout: Duration,
) -> &'static str {
    let mut health = tokio::time::interval(PING_EVERY);
    health.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => match std::str::from_utf8(message.get_payload_bytes()) {
                    Ok(lease) => state.released(lease),
                    Err(_) => tracing::debug!("ignored a release message that is not a lease key"),
                },
                None => return "connection closed",
            },
            _ = health.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return "ping failed",
                    Err(_) => return "no answer to ping",
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribed() -> ReleaseListener {
        let listener = ReleaseListener::new(Vec::new());
        listener.state.set_subscribed(true);
        listener
    }

    #[tokio::test]
    async fn a_release_wakes_the_watchers_of_its_lease_only() {
        let listener = subscribed();
        let timeout = Duration::from_secs(1);
        let a = listener.watch("a:lease", timeout);
        let b = listener.watch("b:lease", timeout);
        assert!(a.is_notified() && b.is_notified());
        listener.state.released("a:lease");
        let wait = Duration::from_secs(30);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), a.wait(wait))
                .await
                .is_ok()
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.wait(wait))
                .await
                .is_err()
        );
    }

    #[test]
    fn without_a_subscription_watchers_poll() {
        let listener = ReleaseListener::new(Vec::new());
        assert!(
            !listener
                .watch("a:lease", Duration::from_secs(1))
                .is_notified()
        );
    }

    #[tokio::test]
    async fn losing_the_subscription_wakes_every_watcher() {
        let listener = subscribed();
        let watch = listener.watch("a:lease", Duration::from_secs(1));
        listener.state.set_subscribed(false);
        let woke =
            tokio::time::timeout(Duration::from_secs(5), watch.wait(Duration::from_secs(30)));
        assert!(woke.await.is_ok());
        assert!(
            !listener
                .watch("a:lease", Duration::from_secs(1))
                .is_notified()
        );
    }

    #[test]
    fn forgets_leases_nobody_watches() {
        let listener = subscribed();
        let timeout = Duration::from_secs(1);
        let kept = listener.watch("kept:lease", timeout);
        for n in 0..10_000 {
            drop(listener.watch(&format!("{n}:lease"), timeout));
        }
        assert!(
            listener.entries() <= 2 * FIRST_SWEEP,
            "{}",
            listener.entries()
        );
        // Two watchers of one lease share its entry; a release for a lease
        // nobody watches any more drops its entry.
        let again = listener.watch("kept:lease", timeout);
        assert!(kept.is_notified() && again.is_notified());
        drop((kept, again));
        listener.state.released("kept:lease");
        assert!(!listener.state.lock().by_lease.contains_key("kept:lease"));
    }
}
