//! Per-writer sequence numbers sharing pages: every (node, worker) owns one 64-bit slot,
//! slots of different nodes interleave on the same pages (false sharing), and workers
//! randomly bump their own slot or read someone else's. A value that goes backwards, or a
//! writer's final value that differs from its count, means a lost or stale page.

use std::time::Duration;

use super::{per_op, Ctx, Report, WorkerResult};

/// First data-page index of the slots.
const FIRST: u64 = 16;
const SLOTS_PER_PAGE: u64 = 8;

fn slots(ctx: &Ctx<'_>) -> u64 {
    ctx.parties * ctx.workers
}

/// Slot of `(rank, worker)`: consecutive slots belong to different nodes.
fn slot(ctx: &Ctx<'_>, rank: u64, worker: u64) -> u64 {
    worker * ctx.parties + rank
}

fn at(ctx: &Ctx<'_>, s: u64) -> (u64, usize) {
    let page = ctx
        .plan
        .page(FIRST + s / SLOTS_PER_PAGE)
        .expect("homes have room for the slots");
    (page, ((s % SLOTS_PER_PAGE) * 8) as usize)
}

pub(crate) fn work(ctx: &Ctx<'_>, worker: u64) -> WorkerResult {
    let n = slots(ctx);
    let own = slot(ctx, ctx.rank, worker);
    let (own_page, own_off) = at(ctx, own);
    let mut last = vec![0u64; n as usize];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (own + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut value = 0;
    let mut result = WorkerResult::default();
    for _ in 0..ctx.ops {
        // Give the CPU away between operations, so that the nodes' workers (and the shards
        // serving them) interleave at page-move granularity instead of one worker finishing
        // its run within a single ownership period.
        std::thread::yield_now();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if rng % 2 == 0 || n == 1 {
            value += 1;
            ctx.mem.write64(own_page, own_off, value);
        } else {
            let other = (own + 1 + (rng >> 8) % (n - 1)) % n;
            let (p, off) = at(ctx, other);
            let v = ctx.mem.read64(p, off);
            if v < last[other as usize] {
                result.violations += 1;
            }
            last[other as usize] = v;
            result.reads += 1;
        }
        result.ops += 1;
    }
    result.writes.push((own, value));
    result
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: WorkerResult, t: Duration) -> Report {
    let mut wrong = Vec::new();
    for &(s, v) in &mine.writes {
        let (p, off) = at(ctx, s);
        let got = ctx.mem.read64(p, off);
        if got != v {
            wrong.push(format!("slot {s} = {got}, its writer wrote {v}"));
        }
    }
    let ok = wrong.is_empty() && mine.violations == 0;
    Report {
        ok,
        summary: format!(
            "seqs: {} slots on {} pages, {} reads checked, {} went backwards, own slots {} ({})",
            slots(ctx),
            slots(ctx).div_ceil(SLOTS_PER_PAGE),
            mine.reads,
            mine.violations,
            if wrong.is_empty() {
                "exact".to_string()
            } else {
                format!("WRONG: {}", wrong.join("; "))
            },
            per_op(mine.ops, t)
        ),
        work_time: t,
    }
}
