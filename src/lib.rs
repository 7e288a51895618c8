//! Typed, persistent per-user and per-chat sessions for Telegram bots.
// The README's teloxide quick start is compiled as a doc test, so the README
// is the crate's documentation when the `teloxide` feature is on (as on docs.rs).
#![cfg_attr(feature = "teloxide", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "teloxide"),
    doc = "See the README (or the docs built with feature `teloxide`) for the guide."
)]

pub use tg_session_macros::Session;
pub use tg_session_runtime::*;

/// What `#[derive(Session)]` expands to refers to; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use tg_session_runtime::{
        Error, Json, KeyStrategy, MigrationError, OnDecodeError, Scope, Session, SessionContext,
        SessionRef, decode_shape, step_from, step_with, unknown_version,
    };
}
