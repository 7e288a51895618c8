//! [`Soon`]: a future that is often ready when it is made.

use std::future::{Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The answer of work that usually needs no wait (an update whose sessions
/// live in memory): ready when it is made, with no state machine around it;
/// else the boxed rest of the work. The usual path then costs no future to
/// build, move and drop, which showed on every update.
pub(crate) enum Soon<T> {
    Now(Ready<T>),
    Later(Pin<Box<dyn Future<Output = T> + Send>>),
}

impl<T> Soon<T> {
    /// Done already: `value` is the answer.
    pub(crate) fn now(value: T) -> Self {
        Soon::Now(std::future::ready(value))
    }

    /// The answer comes from `rest`.
    pub(crate) fn later(rest: impl Future<Output = T> + Send + 'static) -> Self {
        Soon::Later(Box::pin(rest))
    }
}

impl<T> Future for Soon<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Soon::Now(ready) => Pin::new(ready).poll(cx),
            Soon::Later(rest) => rest.as_mut().poll(cx),
        }
    }
}

/// A future whose error travels boxed, answered unboxed: an `Error` is
/// about a hundred bytes, and a commit's answer is moved on every update
/// for a failure that is rare.
pub(crate) struct Unboxed<F>(pub(crate) F);

impl<F, E> Future for Unboxed<F>
where
    F: Future<Output = Result<(), Box<E>>> + Unpin,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0)
            .poll(cx)
            .map(|answer| answer.map_err(|error| *error))
    }
}
