//! Producer/consumer (issue 19): a bounded ring of [`RING`] page-sized slots in guest memory
//! (dealt round-robin over the homes). The first participant's workers produce `--ops` items
//! each; every worker of the other participants consumes. Like a guest's pipe, socket buffer
//! or work queue between CPUs, every item crosses from the producer's node to a consumer's.
//!
//! The ring is a sequenced bounded queue: producers claim positions with a locked add on a
//! tail counter, consumers with a compare-and-swap on a head counter (so each position goes
//! to one consumer); slot `p % RING` holds position `p` in round `p / RING`, and its state
//! word says whose turn it is (`2 * round`: the producer's, `2 * round + 1`: a consumer's).
//! An item is a page: its id, then words derived from the id, then a checksum.
//!
//! Every load or store a worker makes on the ring counts as an access, including each poll
//! of a state word or a counter while waiting (a spinning CPU reads too).
//!
//! Warm-up: the first fifth of every producer's items go through the ring; the rest is
//! measured. Check: every item a consumer takes is whole, a real item, and later than the
//! last it took from the same producer; then every participant publishes a bitmap of the
//! items its workers consumed, and every node checks that the bitmaps together hold each
//! item exactly once.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};
use std::time::Duration;

use engine::barrier::Barrier;
use engine::mem::{mix, Mem, BARRIER_PAGE};

use super::measured::{spread, warm_ops, CHECKED};
use super::{per_op, Ctx, Report, WorkerResult, WorkloadError};

/// Slots in the ring.
pub(crate) const RING: u64 = 16;
const WORDS: usize = 512;
/// Items a bitmap page covers.
const BITS_PER_PAGE: u64 = WORDS as u64 * 64;
const SALT: u64 = 0x9a27_0003;

/// Items in the run: every producer (a worker of the first participant) makes `--ops`.
fn items(ctx: &Ctx<'_>) -> u64 {
    ctx.workers.saturating_mul(ctx.ops)
}

/// Bitmap pages per participant.
fn bitmap_pages(ctx: &Ctx<'_>) -> u64 {
    items(ctx).div_ceil(BITS_PER_PAGE)
}

/// The ring's slots, then the tail and head counters' pages, then every participant's bitmap.
pub(crate) fn layout(ctx: &Ctx<'_>) -> Result<Vec<u64>, WorkloadError> {
    let n = (RING + 2).saturating_add(ctx.parties.saturating_mul(bitmap_pages(ctx)));
    spread(
        ctx,
        n,
        "queue",
        ", or fewer --ops (every node keeps a bitmap of all items in guest memory for the check)",
    )
}

fn slot(ctx: &Ctx<'_>, p: u64) -> u64 {
    ctx.pages[(p % RING) as usize]
}

fn tail<'c>(ctx: &'c Ctx<'_>) -> &'c AtomicU64 {
    ctx.mem.atomic64(ctx.pages[RING as usize], 0)
}

fn head<'c>(ctx: &'c Ctx<'_>) -> &'c AtomicU64 {
    ctx.mem.atomic64(ctx.pages[RING as usize + 1], 0)
}

fn bitmap_page(ctx: &Ctx<'_>, rank: u64, b: u64) -> u64 {
    ctx.pages[(RING + 2 + rank * bitmap_pages(ctx) + b) as usize]
}

/// Word `i` (2 ≤ i < 511) of item `id`.
fn word(id: u64, i: usize) -> u64 {
    mix(SALT ^ id, i as u64)
}

/// Writes item `id` into a slot page (all but the state word).
fn put(mem: &Mem, page: u64, id: u64) {
    mem.write64(page, 8, id);
    let mut sum = id;
    for i in 2..WORDS - 1 {
        let v = word(id, i);
        sum = sum.wrapping_add(v).rotate_left(1);
        mem.write64(page, i * 8, v);
    }
    mem.write64(page, (WORDS - 1) * 8, sum);
}

/// Reads the item in a slot page: its id, if the page holds a whole item.
fn take(mem: &Mem, page: u64) -> Option<u64> {
    let id = mem.read64(page, 8);
    let mut sum = id;
    let mut whole = true;
    for i in 2..WORDS - 1 {
        let v = mem.read64(page, i * 8);
        whole &= v == word(id, i);
        sum = sum.wrapping_add(v).rotate_left(1);
    }
    (whole && mem.read64(page, (WORDS - 1) * 8) == sum).then_some(id)
}

/// Polls `state` until it holds `want`; false if it went past (a turn was lost: a bug, which
/// must not hang the run). Each poll counts as an access.
fn wait_turn(state: &AtomicU64, want: u64, r: &mut WorkerResult) -> bool {
    let mut polls = 0u32;
    loop {
        r.accesses += 1;
        let v = state.load(Acquire);
        if v == want {
            return true;
        }
        if v > want {
            return false;
        }
        polls += 1;
        if polls < 32 {
            std::thread::yield_now();
        } else {
            let us = 10u64 << (polls - 32).min(6);
            std::thread::sleep(Duration::from_micros(us));
        }
    }
}

/// Producer `worker` puts its items `from..to` into the ring.
fn produce(ctx: &Ctx<'_>, worker: u64, from: u64, to: u64, r: &mut WorkerResult) {
    for seq in from..to {
        r.accesses += 1;
        let p = tail(ctx).fetch_add(1, SeqCst);
        let page = slot(ctx, p);
        let state = ctx.mem.atomic64(page, 0);
        let round = p / RING;
        if !wait_turn(state, 2 * round, r) {
            r.violations += 1;
            continue;
        }
        r.accesses += 1;
        put(&ctx.mem, page, worker * ctx.ops + seq);
        r.accesses += 1;
        state.store(2 * round + 1, Release);
        r.ops += 1;
    }
}

/// A consumer takes items until the head reaches `limit`; `last[producer]` is the sequence
/// number of the last item it took from each producer, plus one.
fn consume(ctx: &Ctx<'_>, limit: u64, last: &mut [u64], r: &mut WorkerResult) {
    let n = items(ctx);
    let h = head(ctx);
    loop {
        r.accesses += 1;
        let c = h.load(SeqCst);
        if c >= limit {
            return;
        }
        r.accesses += 1;
        if h.compare_exchange(c, c + 1, SeqCst, SeqCst).is_err() {
            std::thread::yield_now();
            continue;
        }
        let page = slot(ctx, c);
        let state = ctx.mem.atomic64(page, 0);
        let round = c / RING;
        if !wait_turn(state, 2 * round + 1, r) {
            r.violations += 1;
            continue;
        }
        r.accesses += 1;
        match take(&ctx.mem, page) {
            Some(id) if id < n => {
                let (producer, seq) = ((id / ctx.ops) as usize, id % ctx.ops);
                if seq < last[producer] {
                    r.violations += 1;
                }
                last[producer] = seq + 1;
                r.consumed.push(id);
            }
            _ => r.violations += 1,
        }
        r.accesses += 1;
        state.store(2 * round + 2, Release);
        r.ops += 1;
    }
}

pub(crate) fn work(ctx: &Ctx<'_>, worker: u64) -> WorkerResult {
    let mut r = WorkerResult::default();
    let warm = warm_ops(ctx.ops);
    if ctx.rank == 0 {
        produce(ctx, worker, 0, warm, &mut r);
        ctx.begin_measured();
        r.accesses = 0;
        produce(ctx, worker, warm, ctx.ops, &mut r);
    } else {
        let mut last = vec![0u64; ctx.workers as usize];
        consume(ctx, ctx.workers * warm, &mut last, &mut r);
        ctx.begin_measured();
        r.accesses = 0;
        consume(ctx, items(ctx), &mut last, &mut r);
    }
    r
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: &WorkerResult, t: Duration) -> Report {
    let n = items(ctx);
    let pages = bitmap_pages(ctx);
    // This node's bitmap (a duplicate among its own workers shows here already).
    let mut bits = vec![0u64; (pages * WORDS as u64) as usize];
    let mut dups = 0;
    for &id in &mine.consumed {
        let (w, b) = ((id / 64) as usize, id % 64);
        if bits[w] & (1 << b) != 0 {
            dups += 1;
        }
        bits[w] |= 1 << b;
    }
    for b in 0..pages {
        let page = bitmap_page(ctx, ctx.rank, b);
        for i in 0..WORDS {
            ctx.mem.write64(page, i * 8, bits[b as usize * WORDS + i]);
        }
    }
    Barrier::new(ctx.mem, BARRIER_PAGE, ctx.parties).wait(CHECKED);
    let mut seen = 0u64;
    for b in 0..pages {
        for i in 0..WORDS {
            let mut all = 0u64;
            for rank in 0..ctx.parties {
                let v = ctx.mem.read64(bitmap_page(ctx, rank, b), i * 8);
                dups += u64::from((all & v).count_ones());
                all |= v;
            }
            seen += u64::from(all.count_ones());
        }
    }
    let here = if ctx.rank == 0 {
        format!("produced {} items here", mine.ops)
    } else {
        format!("consumed {} items here", mine.ops)
    };
    let produced_all = ctx.rank != 0 || mine.ops == n;
    Report {
        ok: mine.violations == 0 && dups == 0 && seen == n && produced_all,
        summary: format!(
            "queue: {here} through a {RING}-slot ring, {} torn, unknown or out of order; of {n} \
             items {seen} consumed, {} more than once, {} never ({})",
            mine.violations,
            dups,
            n.saturating_sub(seen),
            per_op(mine.ops, t)
        ),
        work_time: t,
    }
}
