//! [`Soon`] and [`SoonDone`]: futures that are often ready when made.
//!
//! An update whose sessions live in memory needs no wait to begin or to
//! commit: its future is ready at once, with no state machine to build,
//! move and drop; otherwise it holds the boxed rest of the work.
//!
//! Each is two pointers, either of them null, and nothing else: returned
//! from the call that makes it in two registers. As an enum of the two
//! cases (what these were), it was returned through memory, and the caller
//! read it back wider than it was written, waiting for the stores, on
//! every update.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A value ready now, or the future that gives it.
pub(crate) struct Soon<T, F> {
    now: Option<T>,
    later: Option<Pin<Box<F>>>,
}

impl<T, F: Future<Output = T>> Soon<T, F> {
    /// Done already: `value` is the answer.
    pub(crate) fn now(value: T) -> Self {
        Self {
            now: Some(value),
            later: None,
        }
    }

    /// The answer comes from `rest`.
    pub(crate) fn later(rest: F) -> Self {
        Self {
            now: None,
            later: Some(Box::pin(rest)),
        }
    }
}

impl<T: Unpin, F: Future<Output = T>> Future for Soon<T, F> {
    type Output = T;

    #[expect(
        clippy::panic,
        reason = "polling a future after it completed is the caller's bug, as `std::future::Ready` says"
    )]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        if let Some(rest) = &mut this.later {
            return rest.as_mut().poll(cx);
        }
        match this.now.take() {
            Some(value) => Poll::Ready(value),
            None => panic!("`Soon` polled after completion"),
        }
    }
}

/// Work that succeeded now, failed now with a boxed error, or is left to a
/// future that answers so; answered with the error unboxed. (A
/// [`Soon`] of a `Result` would take a third word for the `Result`'s tag.)
pub(crate) struct SoonDone<E, F> {
    /// Set when the work failed now.
    failed: Option<Box<E>>,
    later: Option<Pin<Box<F>>>,
}

impl<E, F: Future<Output = Result<(), Box<E>>>> SoonDone<E, F> {
    /// Done already: failed with `error`, or succeeded.
    pub(crate) fn now(answer: Result<(), Box<E>>) -> Self {
        Self {
            failed: answer.err(),
            later: None,
        }
    }

    /// The answer comes from `rest`.
    pub(crate) fn later(rest: F) -> Self {
        Self {
            failed: None,
            later: Some(Box::pin(rest)),
        }
    }
}

impl<E, F: Future<Output = Result<(), Box<E>>>> Future for SoonDone<E, F> {
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        let this = self.get_mut();
        if let Some(rest) = &mut this.later {
            return rest
                .as_mut()
                .poll(cx)
                .map(|answer| answer.map_err(|error| *error));
        }
        // Polled again after it completed, it answers `Ok` again.
        Poll::Ready(this.failed.take().map_or(Ok(()), |error| Err(*error)))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Ready;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn each_takes_two_words() {
        assert_eq!(size_of::<Soon<Arc<u8>, Ready<Arc<u8>>>>(), 16);
        assert_eq!(size_of::<SoonDone<u8, Ready<Result<(), Box<u8>>>>>(), 16);
    }
}
