//! One `EVALSHA` of a script, written into a single command buffer as its
//! keys and arguments are added.
//!
//! Not redis's `ScriptInvocation`: it keeps each key and argument in a vector
//! of its own and copies them all into a command when invoked, a dozen
//! allocations for the load and the commit of one session. Here a record's
//! key is written once into a buffer the thread reuses, its lease and flag
//! keys by changing the suffix, and every key and argument goes straight
//! into the command's buffer.

use std::cell::RefCell;
use std::io::Write as _;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, RedisWrite as _, Script, ToRedisArgs};

use super::keys::{KeyOf, set_part, write_record_key};
use crate::key::StorageKey;

/// A script call being built: first every key it declared, then its
/// arguments (the order `EVALSHA` takes them in).
pub(super) struct ScriptCall {
    script: &'static Script,
    command: Cmd,
    /// Keys declared and not added yet.
    keys_left: usize,
}

thread_local! {
    /// Where a record's keys are written before they are copied in: one
    /// buffer per thread, grown once.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

impl ScriptCall {
    /// A call of `script` with `keys` keys.
    pub(super) fn new(script: &'static Script, keys: usize) -> Self {
        // Room for the usual keys and arguments without growing: the
        // command's three, the keys, and at most three arguments per key
        // and three more (a write of small sessions).
        let mut command = Cmd::with_capacity(6 + 4 * keys, 64 + 64 * keys);
        command.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        Self {
            script,
            command,
            keys_left: keys,
        }
    }

    /// Adds the keys `parts` of the record `key`, in that order.
    pub(super) fn keys(&mut self, key: &StorageKey, parts: &[KeyOf]) -> &mut Self {
        let command = &mut self.command;
        let mut add = |scratch: &mut String| {
            write_record_key(scratch, key);
            let record_len = scratch.len();
            for &part in parts {
                set_part(scratch, record_len, part);
                command.arg(scratch.as_bytes());
            }
        };
        // Not borrowed here already (nothing called from here adds keys),
        // but if it ever were, a buffer of its own does as well.
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => add(&mut scratch),
            Err(_) => add(&mut String::new()),
        });
        debug_assert!(parts.len() <= self.keys_left, "more keys than declared");
        self.keys_left = self.keys_left.saturating_sub(parts.len());
        self
    }

    /// Adds an argument, after every key.
    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        debug_assert_eq!(self.keys_left, 0, "arguments go after every key");
        self.command.arg(arg);
        self
    }

    /// Adds one argument made of `parts` one after the other (a record's
    /// version header and its value), with no buffer of its own.
    pub(super) fn arg_joined(&mut self, parts: &[&[u8]]) -> &mut Self {
        debug_assert_eq!(self.keys_left, 0, "arguments go after every key");
        let mut arg = self.command.writer_for_next_arg();
        for part in parts {
            // Writing into the command's `Vec` cannot fail.
            let _ = arg.write_all(part);
        }
        // The argument ends when its writer is dropped.
        drop(arg);
        self
    }

    /// Runs the script, loading it first if the server does not know it
    /// (restarted, flushed, or failed over since the storage connected).
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        connection: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        debug_assert_eq!(self.keys_left, 0, "every declared key was added");
        match self.command.query_async(connection).await {
            Err(error) if error.kind() == ErrorKind::NoScriptError => {
                self.script.prepare_invoke().load_async(connection).await?;
                self.command.query_async(connection).await
            }
            answer => answer,
        }
    }
}
