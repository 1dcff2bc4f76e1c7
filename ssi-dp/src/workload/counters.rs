//! Lock-prefixed increments on counters spread over pages homed on every node: each
//! increment needs the page exclusively, so counters move between nodes under contention and
//! every lost update would show in the exact totals.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::{per_op, Ctx, Report, WorkerResult};

/// Number of counters (one per page, round-robin over the homes).
pub(crate) const COUNTERS: u64 = 8;
/// First data-page index the counters use.
const FIRST: u64 = 0;

fn counter_of(ctx: &Ctx<'_>, worker: u64, i: u64) -> u64 {
    (i + worker + ctx.rank) % COUNTERS
}

pub(crate) fn work(ctx: &Ctx<'_>, worker: u64) -> WorkerResult {
    for i in 0..ctx.ops {
        let k = counter_of(ctx, worker, i);
        let page = ctx
            .plan
            .page(FIRST + k)
            .expect("homes have room for the counters");
        ctx.mem.atomic64(page, 0).fetch_add(1, SeqCst);
        // Let the other workers (and the shards) run between increments, so that nodes
        // interleave at page-move granularity rather than each finishing its run while it
        // happens to hold the pages.
        std::thread::yield_now();
    }
    WorkerResult {
        ops: ctx.ops,
        ..Default::default()
    }
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: WorkerResult, t: Duration) -> Report {
    // What every counter must hold: the same rule every worker of every node followed.
    let mut expect = [0u64; COUNTERS as usize];
    for rank in 0..ctx.parties {
        for w in 0..ctx.workers {
            for i in 0..ctx.ops {
                expect[((i + w + rank) % COUNTERS) as usize] += 1;
            }
        }
    }
    let mut wrong = Vec::new();
    let mut total = 0;
    for k in 0..COUNTERS {
        let page = ctx
            .plan
            .page(FIRST + k)
            .expect("homes have room for the counters");
        let got = ctx.mem.atomic64(page, 0).load(SeqCst);
        total += got;
        if got != expect[k as usize] {
            wrong.push(format!(
                "counter {k} (page {page}) = {got}, expected {}",
                expect[k as usize]
            ));
        }
    }
    let want = ctx.parties * ctx.workers * ctx.ops;
    Report {
        ok: wrong.is_empty() && total == want,
        summary: if wrong.is_empty() {
            format!(
                "counters: {COUNTERS} counters on {} homes total {total} = {} nodes x {} workers x {} ops ({})",
                ctx.plan.homes(),
                ctx.parties,
                ctx.workers,
                ctx.ops,
                per_op(mine.ops, t)
            )
        } else {
            format!("counters: WRONG: {}", wrong.join("; "))
        },
        work_time: t,
    }
}
