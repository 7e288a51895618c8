//! What tg-session's tests and benchmarks share, wired one way: each test
//! binary and benchmark depends on this crate.
//!
//! - [`suite`]: the behaviour suite, every storage-dependent rule written once
//!   and run over each storage by [`behaviour_suite!`], with the session types
//!   it uses and a [`CountingStorage`](suite::counting::CountingStorage);
//! - [`redis_server`] and [`postgres_server`]: real servers on loopback,
//!   started in a temporary directory and stopped when dropped;
//! - [`sql_cases`]: the cases SQLite and PostgreSQL share.
//!
//! Unpublished. Test code: a failed setup panics with what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each behaviour and SQL case is a public function named after the rule it
// checks (`versions_never_repeat_after_a_delete`); the name is its doc.
#![allow(missing_docs)]

pub mod postgres_server;
pub mod redis_server;
pub mod sql_cases;
pub mod suite;
