//! What one in-process read-modify-write of a session costs with no
//! framework around it: the floor of the memory storage's design (each
//! key's lock kept in its record), of the design it replaced (a lock table
//! beside the records), of one record per user, of the whole update as
//! the runtime is built, and of a record that is its updates' slot. Instructions are
//! counted as `per_update`'s are, so the two compare:
//!
//! ```text
//! cargo build --release -p tg-session-benches --example floors
//! valgrind --tool=callgrind target/release/examples/floors fused 20000
//! valgrind --tool=callgrind target/release/examples/floors fused 40000
//! ```
//!
//! Workloads, cycling over 1,000 users as `per_update` does:
//!
//! - `table`: what the runtime did for one session before the memory
//!   storage kept locks in records, and no more: build the key, insert it
//!   in a lock table (a mutex over a hash map), copy the stored value out of
//!   a sharded map into an allocated slot, write it back under a version
//!   check, remove the key from the table;
//! - `fused`: the key's lock kept in its record, as the memory storage did
//!   before its records were shared cells: one map access takes the key
//!   and copies the value, one writes the value back and frees the key (the
//!   runtime also allocates the update's slot, which this floor does not);
//! - `fused-4`: four session types of one user, four fused records;
//! - `grouped-4`: the same four sessions in one record per user;
//! - `runtime`, `runtime-4`: the design before `held` with the runtime's
//!   own parts and none of its glue: the update's state (an `Arc` with a locked slot
//!   list), a slot allocated per session, one borrow per session through an
//!   owned guard, the commit writing back through the map;
//! - `cell`, `cell-4`: the record is its updates' slot: the working copy is
//!   allocated once per record and used by every update of the key, and
//!   the commit writes into the record it holds, with no second map access;
//! - `held`, `held-4`: half of `cell`: the update holds its records (shared
//!   cells of the map) from claim to commit, so the commit writes into the
//!   record it holds with no second map access, but its working copy is
//!   allocated per session and update as in `runtime` (no copy kept beside
//!   each stored value). This was the memory storage's design until
//!   `borrowed`;
//! - `grouped-held`, `grouped-held-4`: `held` over records that each keep
//!   all of a user's sessions (as `grouped-4`): one access to the map and
//!   one lock of the record take all the update's sessions, one more lock
//!   writes them back; slots and borrows as in `held`;
//! - `borrowed`, `borrowed-4`: `held` with the update's slots fixed before
//!   the handler runs and each slot boxed, not shared: an accessor finds
//!   its slot with no lock of the list and borrows it through a guard tied
//!   to the update, with no reference counted. This is the memory
//!   storage's design now: the distance to `per_update memory` is the
//!   runtime's glue (type erasure, dynamic calls, error and metrics
//!   plumbing, values moved between layers).
//!
//! The designs are in `floor_designs/`; `--bench paired` times some of
//! them against teloxide in the same run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;

mod floor_designs;
mod workload;
use floor_designs::{Design, Floors};

fn main() {
    let usage = format!("usage: floors <{}> <updates>", Design::NAMES);
    let mut args = std::env::args().skip(1);
    let design: Design = args
        .next()
        .expect(&usage)
        .parse()
        .unwrap_or_else(|error| panic!("{error}"));
    let updates: u64 = args.next().and_then(|n| n.parse().ok()).expect(&usage);
    let floors = Floors::default();
    for update in 0..updates {
        floors.run(design, black_box(update % 1_000 + 1), update);
    }
    black_box(floors.sizes());
}
