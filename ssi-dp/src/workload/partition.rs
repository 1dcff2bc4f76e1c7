//! A partitioned array (issue 19): every participant has its part of the array, [`PART`]
//! pages it uses most of the time, like a guest's per-CPU data or a thread's slice of a shared
//! array. Each part is homed on the home after its user's own (the participant homing the
//! `h`-th range uses the part in range `h + 1`), so without placement every part lives away
//! from the node that uses it. Workers read and increment per-page counters (word 0 of each
//! page): 98 % of their operations in their node's part, 2 % in another participant's; half
//! reads, half increments (a locked add, one write access). Nearly every access to another
//! part misses, and then costs that part's user a miss at its next write to the page (its
//! next access, after a foreign write), so this sharing alone puts the miss ratio near 4 %
//! whatever the placement (with 5 % foreign accesses it measured 9.9–10.9 %).
//!
//! Warm-up: each worker increments its share of its node's part once (so the node holds its
//! part), then does the first fifth of its operations; the rest is measured. Check: every
//! counter equals what every worker's replayed random stream added to it, and no read or
//! increment saw a counter go backwards.

use std::time::Duration;

use super::measured::{check_counters, verdict, warm_ops, Counters, Rng, OFFSET};
use super::{per_op, Ctx, Report, WorkerResult, WorkloadError};

/// Pages in each participant's part.
pub(crate) const PART: u64 = 256;
/// Operations on another participant's part, per mille.
const FOREIGN: u64 = 20;
/// Increments among the operations, per mille.
const WRITES: u64 = 500;
const SALT: u64 = 0x9a27_0001;

/// The array's pages, part by part (part `r` is participant `r`'s).
pub(crate) fn layout(ctx: &Ctx<'_>) -> Result<Vec<u64>, WorkloadError> {
    let homes = ctx.plan.homes();
    let short = |pages| WorkloadError::TableNeedsMemory {
        workload: "partition",
        pages,
        hint: "",
    };
    if homes == 0 {
        return Err(short(OFFSET + PART + 1));
    }
    let home_nodes: Vec<u16> = (0..homes as u64).map(|k| ctx.plan.home_of(k)).collect();
    // The range each part goes to: the next home's, or (a participant homing nothing) dealt
    // round-robin.
    let part_home: Vec<usize> = ctx
        .nodes
        .iter()
        .enumerate()
        .map(|(r, n)| match home_nodes.iter().position(|h| h == n) {
            Some(i) => (i + 1) % homes,
            None => r % homes,
        })
        .collect();
    let mut used = vec![0u64; homes];
    for &h in &part_home {
        used[h] += 1;
    }
    let need = OFFSET + used.iter().max().copied().unwrap_or(0) * PART + 1;
    let mut next = vec![0u64; homes];
    let mut pages = Vec::with_capacity(part_home.len() * PART as usize);
    for &h in &part_home {
        let base = OFFSET + next[h] * PART;
        next[h] += 1;
        for j in 0..PART {
            pages.push(ctx.plan.run_page(h, base + j).ok_or(short(need))?);
        }
    }
    Ok(pages)
}

/// The next operation of a stream: the page's index in the array and whether it increments.
fn next_op(rng: &mut Rng, rank: u64, parties: u64) -> (usize, bool) {
    let part = if parties > 1 && rng.chance(FOREIGN) {
        (rank + 1 + rng.below(parties - 1)) % parties
    } else {
        rank
    };
    let j = rng.below(PART);
    let write = rng.chance(WRITES);
    ((part * PART + j) as usize, write)
}

/// Pages of its node's part a worker increments in the warm-up pass.
fn pass(ctx: &Ctx<'_>, worker: u64) -> impl Iterator<Item = u64> {
    (worker..PART).step_by(ctx.workers as usize)
}

pub(crate) fn work(ctx: &Ctx<'_>, worker: u64) -> WorkerResult {
    let mut r = WorkerResult::default();
    let mut counters = Counters::new(ctx.mem, &ctx.pages);
    let mut op = |i: usize, write: bool, r: &mut WorkerResult| counters.touch(i, write, r);
    for j in pass(ctx, worker) {
        op((ctx.rank * PART + j) as usize, true, &mut r);
    }
    let mut rng = Rng::new(SALT, ctx.rank, worker);
    let warm = warm_ops(ctx.ops);
    for _ in 0..warm {
        let (i, write) = next_op(&mut rng, ctx.rank, ctx.parties);
        op(i, write, &mut r);
        std::thread::yield_now();
    }
    ctx.begin_measured();
    for _ in warm..ctx.ops {
        let (i, write) = next_op(&mut rng, ctx.rank, ctx.parties);
        op(i, write, &mut r);
        r.accesses += 1;
        // Let the other workers and nodes run between operations, so that the nodes
        // interleave instead of each finishing its run in one time slice.
        std::thread::yield_now();
    }
    r.ops = ctx.ops;
    r
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: &WorkerResult, t: Duration) -> Report {
    let mut expect = vec![0u64; ctx.pages.len()];
    let mut increments = 0;
    for rank in 0..ctx.parties {
        for w in 0..ctx.workers {
            for j in pass(ctx, w) {
                expect[(rank * PART + j) as usize] += 1;
                increments += 1;
            }
            let mut rng = Rng::new(SALT, rank, w);
            for _ in 0..ctx.ops {
                let (i, write) = next_op(&mut rng, rank, ctx.parties);
                if write {
                    expect[i] += 1;
                    increments += 1;
                }
            }
        }
    }
    let (wrong, total) = check_counters(ctx.mem, &ctx.pages, &expect, "counter");
    Report {
        ok: wrong.is_empty()
            && total == increments
            && mine.violations == 0
            && mine.ops == ctx.workers * ctx.ops,
        summary: format!(
            "partition: {} parts of {PART} pages, each homed on the next home; {increments} \
             increments, counters {} (total {total}); {} reads, {} saw a counter go backwards \
             ({})",
            ctx.parties,
            verdict(&wrong),
            mine.reads,
            mine.violations,
            per_op(mine.ops, t)
        ),
        work_time: t,
    }
}
