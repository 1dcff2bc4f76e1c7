//! Two nodes alternately writing one page: a turn word says whose round it is; each node
//! waits for its turn, writes the round number and passes the turn. Every round moves the
//! page exclusively from one node to the other.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::{per_op, Ctx, Report, WorkerResult};

/// Data-page index of the ping-pong page.
const PAGE: u64 = 12;

pub(crate) fn work(ctx: &Ctx<'_>, worker: u64) -> WorkerResult {
    if worker != 0 {
        return WorkerResult::default();
    }
    let page = ctx
        .plan
        .page(PAGE)
        .expect("homes have room for the ping-pong page");
    let turn = ctx.mem.atomic64(page, 0);
    let mut result = WorkerResult::default();
    for round in 0..ctx.ops {
        let mine = round * 2 + ctx.rank;
        while turn.load(SeqCst) != mine {
            std::hint::spin_loop();
        }
        // The other node's last write must be visible with the turn.
        if round > 0 || ctx.rank == 1 {
            let last = ctx.mem.read64(page, 8);
            if last + 1 != mine {
                result.violations += 1;
            }
        }
        ctx.mem.write64(page, 8, mine);
        turn.store(mine + 1, SeqCst);
        result.ops += 1;
    }
    result
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: WorkerResult, t: Duration) -> Report {
    let page = ctx
        .plan
        .page(PAGE)
        .expect("homes have room for the ping-pong page");
    let turn = ctx.mem.atomic64(page, 0).load(SeqCst);
    let want = 2 * ctx.ops;
    Report {
        ok: turn == want && mine.violations == 0,
        summary: format!(
            "pingpong: {turn} turns (expected {want}), {} stale values ({} per round trip)",
            mine.violations,
            per_op(mine.ops, t)
        ),
        work_time: t,
    }
}
