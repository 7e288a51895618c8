//! Time ratios of tg-session against teloxide, measured in pairs.
//!
//! Each round times a batch of our updates and a batch of teloxide's, back
//! to back and in alternating order, so that whatever a shared machine does
//! meanwhile (other tenants, clock changes) weighs on both alike. The median
//! of the rounds' ratios is reported with its quartiles, and each side's
//! median time per update.
//!
//! Rows: the memory storage with 1 and 4 sessions; the floors of three
//! designs (`floors.rs`: `borrowed`, the memory storage's design with no
//! glue, `held`, the one before it, and `grouped-held`, one record per
//! user) against the same teloxide sides, which tell what no glue at all
//! would give; the dispatch path;
//! the bounded memory storage (`MemoryStorage::with_capacity`, room for
//! every user) with 1 and 4 sessions, and with room for half the users
//! (every update evicts a record and makes one).
//!
//! Read a ratio to about 10%: the layout of the whole binary moves a side
//! by that much. teloxide's side of the memory rows, its code unchanged,
//! took 160 ns per update in one build and 180 ns in another, builds that
//! differed only in rows added to this file or in library code those rows
//! never run.
//!
//! The workspace builds benchmarks with one codegen unit (see its
//! `Cargo.toml`): with sixteen, adding the floor rows to this file moved
//! the memory rows' ratios from 1.30 to 1.40 (1 session) and from 1.17 to
//! 1.26 (4 sessions), the library unchanged.
//!
//! The criterion benches (`memory`, `dispatch`) time each side in a few
//! seconds of its own: on a shared 2-core machine a side's row moved by 40%
//! from one run to the next, more than the gap being measured. The ratio
//! taken inside each round does not see that drift.
//!
//! `cargo bench -p tg-session-benches --bench paired`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use teloxide::dispatching::dialogue::InMemStorage;
use teloxide::prelude::dptree;
use tg_session::MemoryStorage;
use tokio::runtime::Runtime;

mod dispatch_trees;
mod floor_designs;
mod workload;
use floor_designs::{Design, Floors};
use workload::{One, TeloxideFour, USERS, manager, next_user, ours_four, ours_one, teloxide_rmw};

/// Rounds per comparison (odd: the median is one of them).
const ROUNDS: usize = 31;

/// How long one side of a round runs, about.
const SIDE: Duration = Duration::from_millis(40);

/// Times `batch` runs of `update` (one update each), on `runtime`.
///
/// Never inlined, and a runtime entered per batch rather than one future
/// around every comparison: each side's loop is a function of its own,
/// whatever other rows this file has.
#[inline(never)]
fn timed<F, Fut>(runtime: &Runtime, batch: u64, update: &mut F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..batch {
            update().await;
        }
        start.elapsed()
    })
}

/// Times `ours` against `theirs` in [`ROUNDS`] pairs and prints the ratio
/// of our time to theirs per update: below 1, ours is faster.
fn compare<A, FutA, B, FutB>(runtime: &Runtime, name: &str, mut ours: A, mut theirs: B)
where
    A: FnMut() -> FutA,
    FutA: Future<Output = ()>,
    B: FnMut() -> FutB,
    FutB: Future<Output = ()>,
{
    // A batch of about `SIDE` on our side, found by doubling (warms both up).
    let mut batch = 16;
    while timed(runtime, batch, &mut ours) < SIDE / 4 {
        batch *= 2;
    }
    batch *= 4;
    timed(runtime, batch, &mut theirs);
    let mut ratios: Vec<f64> = Vec::with_capacity(ROUNDS);
    // Each side's time per update, for the absolute numbers beside the ratio.
    let mut ours_each: Vec<f64> = Vec::with_capacity(ROUNDS);
    let mut theirs_each: Vec<f64> = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let (ours_took, theirs_took) = match round % 2 {
            0 => {
                let ours_took = timed(runtime, batch, &mut ours);
                (ours_took, timed(runtime, batch, &mut theirs))
            }
            _ => {
                let theirs_took = timed(runtime, batch, &mut theirs);
                (timed(runtime, batch, &mut ours), theirs_took)
            }
        };
        ratios.push(ours_took.as_secs_f64() / theirs_took.as_secs_f64());
        ours_each.push(ours_took.as_secs_f64() * 1e9 / batch as f64);
        theirs_each.push(theirs_took.as_secs_f64() * 1e9 / batch as f64);
    }
    for sample in [&mut ratios, &mut ours_each, &mut theirs_each] {
        sample.sort_by(f64::total_cmp);
    }
    let quartile = |q: usize| ratios[(ROUNDS - 1) * q / 4];
    println!(
        "{name:<20} ours / teloxide time: median {:.2} (quartiles {:.2}-{:.2}, range {:.2}-{:.2}), \
         ours runs {:.2}x teloxide's updates/s; {ROUNDS} rounds of {batch} updates a side \
         (median per update: ours {:.0} ns, teloxide {:.0} ns)",
        quartile(2),
        quartile(1),
        quartile(3),
        ratios[0],
        ratios[ROUNDS - 1],
        1.0 / quartile(2),
        ours_each[ROUNDS / 2],
        theirs_each[ROUNDS / 2],
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter is not supported.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        let user = AtomicU64::new(0);
        let next = || black_box(next_user(&user));

        let one = manager(MemoryStorage::new(), false);
        let teloxide_one = InMemStorage::<One>::new();
        compare(
            &runtime,
            "memory, 1 session",
            || ours_one(&one, next()),
            || teloxide_rmw(&teloxide_one, next(), |s| s.apple += 1),
        );

        let four = manager(MemoryStorage::new(), true);
        let teloxide_four = TeloxideFour::new();
        compare(
            &runtime,
            "memory, 4 sessions",
            || ours_four(&four, next()),
            || teloxide_four.update(next(), 4),
        );

        // The floors of the memory storage's design and of one record per
        // user (see `floors.rs`), against the same teloxide sides: what
        // no glue at all would give.
        let floors = Floors::default();
        let mut update = 0;
        for (name, design, sessions) in [
            ("floor held, 1", Design::Held, 1),
            ("floor held, 4", Design::Held4, 4),
            ("floor grouped-held, 4", Design::GroupedHeld4, 4),
            ("floor borrowed, 1", Design::Borrowed, 1),
            ("floor borrowed, 4", Design::Borrowed4, 4),
        ] {
            let floors = &floors;
            compare(
                &runtime,
                name,
                || {
                    update += 1;
                    let user = next();
                    async move { floors.run(design, user, update) }
                },
                || teloxide_four.update(next(), sessions),
            );
        }
        black_box(floors.sizes());

        // A dispatch "update" here is one round over the trees' users.
        let ours_tree = dispatch_trees::tg_session_tree(MemoryStorage::new());
        let ours_updates = dispatch_trees::deps(&dptree::deps![]);
        let theirs_tree = dispatch_trees::teloxide_tree();
        let theirs_updates = dispatch_trees::deps(&dptree::deps![InMemStorage::<
            dispatch_trees::Counter,
        >::new()]);
        compare(
            &runtime,
            "dispatch, 100 users",
            || dispatch_trees::run_all(&ours_tree, &ours_updates),
            || dispatch_trees::run_all(&theirs_tree, &theirs_updates),
        );

        let one = manager(MemoryStorage::with_capacity(100_000), false);
        compare(
            &runtime,
            "bounded, 1 session",
            || ours_one(&one, next()),
            || teloxide_rmw(&teloxide_one, next(), |s| s.apple += 1),
        );
        let four = manager(MemoryStorage::with_capacity(100_000), true);
        compare(
            &runtime,
            "bounded, 4 sessions",
            || ours_four(&four, next()),
            || teloxide_four.update(next(), 4),
        );

        // Half the users' room: each update's user was evicted since its
        // last update (cycling, the one unused the longest is the next),
        // so each makes its record anew and evicts another.
        let full = manager(MemoryStorage::with_capacity(USERS / 2), false);
        compare(
            &runtime,
            "bounded full, 1 session",
            || ours_one(&full, next()),
            || teloxide_rmw(&teloxide_one, next(), |s| s.apple += 1),
        );
    }
}
