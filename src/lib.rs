//! Typed, persistent per-user and per-chat sessions for Telegram bots.
#![doc = include_str!("../README.md")]

pub use tg_session_macros::Session;
pub use tg_session_runtime::*;

/// What `#[derive(Session)]` expands to refers to; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use tg_session_runtime::{
        Error, Json, KeyStrategy, OnDecodeError, Scope, Session, SessionContext, SessionRef,
    };
}
