//! A shared read-mostly table (issue 19): [`TABLE`] pages dealt round-robin over the homes,
//! each with a version word, read by every worker of every participant at random; 1 % of the
//! operations bump a random page's version instead (a locked add), like a guest's
//! configuration, routing or page-cache data that everyone reads and someone now and then
//! updates.
//!
//! Warm-up: every node reads the whole table once (its workers share the pass), then each
//! worker does the first fifth of its operations; the rest is measured. Check: every
//! version equals the bumps every worker's replayed random stream made to it, and no read saw
//! a version go backwards.

use std::time::Duration;

use super::measured::{check_counters, spread, verdict, warm_ops, Counters, Rng};
use super::{per_op, Ctx, Report, WorkerResult, WorkloadError};

/// Pages in the table.
pub(crate) const TABLE: u64 = 256;
/// Version bumps among the operations, per mille.
const WRITES: u64 = 10;
const SALT: u64 = 0x9a27_0002;

/// The table's pages.
pub(crate) fn layout(ctx: &Ctx<'_>) -> Result<Vec<u64>, WorkloadError> {
    spread(ctx, TABLE, "readmostly", "")
}

/// The next operation of a stream: the page's index and whether it bumps the version.
fn next_op(rng: &mut Rng) -> (usize, bool) {
    let write = rng.chance(WRITES);
    (rng.below(TABLE) as usize, write)
}

pub(crate) fn work(ctx: &Ctx<'_>, worker: u64) -> WorkerResult {
    let mut r = WorkerResult::default();
    let mut counters = Counters::new(ctx.mem, &ctx.pages);
    let mut op = |i: usize, write: bool, r: &mut WorkerResult| counters.touch(i, write, r);
    for i in (worker..TABLE).step_by(ctx.workers as usize) {
        op(i as usize, false, &mut r);
    }
    let mut rng = Rng::new(SALT, ctx.rank, worker);
    let warm = warm_ops(ctx.ops);
    for _ in 0..warm {
        let (i, write) = next_op(&mut rng);
        op(i, write, &mut r);
        std::thread::yield_now();
    }
    ctx.begin_measured();
    for _ in warm..ctx.ops {
        let (i, write) = next_op(&mut rng);
        op(i, write, &mut r);
        r.accesses += 1;
        // Let the other workers and nodes run between operations (see partition).
        std::thread::yield_now();
    }
    r.ops = ctx.ops;
    r
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: &WorkerResult, t: Duration) -> Report {
    let mut expect = vec![0u64; ctx.pages.len()];
    let mut bumps = 0;
    for rank in 0..ctx.parties {
        for w in 0..ctx.workers {
            let mut rng = Rng::new(SALT, rank, w);
            for _ in 0..ctx.ops {
                let (i, write) = next_op(&mut rng);
                if write {
                    expect[i] += 1;
                    bumps += 1;
                }
            }
        }
    }
    let (wrong, total) = check_counters(ctx.mem, &ctx.pages, &expect, "version of page");
    Report {
        ok: wrong.is_empty()
            && total == bumps
            && mine.violations == 0
            && mine.ops == ctx.workers * ctx.ops,
        summary: format!(
            "readmostly: {TABLE} pages on {} homes; {bumps} version bumps, versions {} (total \
             {total}); {} reads, {} saw a version go backwards ({})",
            ctx.plan.homes(),
            verdict(&wrong),
            mine.reads,
            mine.violations,
            per_op(mine.ops, t)
        ),
        work_time: t,
    }
}
