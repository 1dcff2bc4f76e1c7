//! Sequential scans of freshly written memory, in rounds: every worker of every node writes
//! its share of a table of contiguous pages on every home (consecutive pages go to different
//! writers, so the table ends up owned all over the cluster), then, after a barrier, every
//! worker reads the whole table front to back and checks every page whole. The next round
//! writes new contents, which must invalidate every replica the scans left behind.
//!
//! This is the access pattern sequential prefetch (`--prefetch N`) is for: the scans miss on
//! consecutive remote pages. A prefetched replica that missed an invalidation shows up as a
//! page with the previous round's contents.

use std::time::Duration;

use super::{per_op, Ctx, Report, WorkerResult, WorkloadError};

/// Pages of the table on each home, from the home's page [`OFFSET`] on.
pub(crate) const PAGES_PER_HOME: u64 = 256;
const OFFSET: u64 = 64;
/// Barrier slots for the rounds (arrivals accumulate: round `r` waits for `(r + 1)` times
/// every worker).
const WRITTEN: u64 = 4;
const SCANNED: u64 = 5;

fn table(ctx: &Ctx<'_>) -> u64 {
    PAGES_PER_HOME * ctx.plan.homes() as u64
}

/// The `j`-th page of the table: home by home, contiguous within each.
fn page(ctx: &Ctx<'_>, j: u64) -> u64 {
    ctx.plan
        .run_page((j / PAGES_PER_HOME) as usize, OFFSET + j % PAGES_PER_HOME)
        .expect("homes have room for the scan table")
}

fn seed(round: u64, j: u64) -> u64 {
    engine::mem::mix(0x5ca4_0000 + round, j)
}

/// Whether every home has room for its part of the table.
pub(crate) fn check(ctx: &Ctx<'_>) -> Result<(), WorkloadError> {
    for h in 0..ctx.plan.homes() {
        if ctx.plan.run_page(h, OFFSET + PAGES_PER_HOME - 1).is_none() {
            return Err(WorkloadError::ScanNeedsMemory {
                pages: OFFSET + PAGES_PER_HOME + 1,
            });
        }
    }
    Ok(())
}

pub(crate) fn work(ctx: &Ctx<'_>, worker: u64) -> WorkerResult {
    let writers = ctx.parties * ctx.workers;
    let me = ctx.rank * ctx.workers + worker;
    let n = table(ctx);
    let barrier = ctx.worker_barrier();
    let mut r = WorkerResult::default();
    for round in 0..ctx.ops {
        for j in (me..n).step_by(writers as usize) {
            ctx.mem.fill_page(page(ctx, j), seed(round, j));
        }
        barrier.wait_round(WRITTEN, round);
        for j in 0..n {
            r.reads += 1;
            if !ctx.mem.check_page(page(ctx, j), seed(round, j)) {
                r.violations += 1;
            }
        }
        barrier.wait_round(SCANNED, round);
        r.ops += 1;
    }
    r
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: &WorkerResult, work_time: Duration) -> Report {
    let want = ctx.workers * ctx.ops * table(ctx);
    Report {
        ok: mine.violations == 0 && mine.reads == want,
        summary: format!(
            "scans: {} rounds x {} pages read by {} workers, {} stale or torn ({})",
            ctx.ops,
            table(ctx),
            ctx.workers,
            mine.violations,
            per_op(mine.reads, work_time)
        ),
        work_time,
    }
}
