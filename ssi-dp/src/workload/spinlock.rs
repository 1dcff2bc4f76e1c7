//! A test-and-test-and-set spinlock in guest memory protecting a plain (non-atomic) counter
//! and page-sized checksummed records on pages homed on other nodes. Inside the critical
//! section a worker checks that every record is whole and carries the counter's current value
//! (a torn or stale record means the lock or the coherence protocol failed), then advances
//! the counter and rewrites the records. The final counter must equal every operation done.
//!
//! Also the failure drill's victim workload, [`private`]: it writes pages nobody else uses.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::Duration;

use super::{per_op, Ctx, Report, WorkerResult};
use engine::mem::{mix, Mem, Plan};

/// Data-page indices: the lock word, the counter, the records.
const LOCK: u64 = 8;
const COUNTER: u64 = 9;
const RECORDS: u64 = 10;
const NRECORDS: u64 = 2;

fn seed(value: u64, record: u64) -> u64 {
    mix(value, 0x5eed_0000 + record)
}

fn page(ctx: &Ctx<'_>, k: u64) -> u64 {
    ctx.plan
        .page(k)
        .expect("homes have room for the lock workload")
}

/// Fills the records for counter value 0 (the first participant, before the start barrier).
pub(crate) fn setup(ctx: &Ctx<'_>) {
    for r in 0..NRECORDS {
        ctx.mem.fill_page(page(ctx, RECORDS + r), seed(0, r));
    }
}

pub(crate) fn work(ctx: &Ctx<'_>, _worker: u64) -> WorkerResult {
    let lock = ctx.mem.atomic32(page(ctx, LOCK), 0);
    let counter = page(ctx, COUNTER);
    let mut violations = 0;
    for _ in 0..ctx.ops {
        // Test and test-and-set: spin on a read-only copy, try the exclusive CAS when free.
        loop {
            if lock.load(Relaxed) == 0 && lock.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
                break;
            }
            std::thread::yield_now();
        }
        let c = ctx.mem.read64(counter, 0);
        for r in 0..NRECORDS {
            if !ctx.mem.check_page(page(ctx, RECORDS + r), seed(c, r)) {
                violations += 1;
            }
        }
        for r in 0..NRECORDS {
            ctx.mem.fill_page(page(ctx, RECORDS + r), seed(c + 1, r));
        }
        ctx.mem.write64(counter, 0, c + 1);
        lock.store(0, Release);
    }
    WorkerResult {
        ops: ctx.ops,
        violations,
        ..Default::default()
    }
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: WorkerResult, t: Duration) -> Report {
    let want = ctx.parties * ctx.workers * ctx.ops;
    let got = ctx.mem.read64(page(ctx, COUNTER), 0);
    let whole = (0..NRECORDS).all(|r| ctx.mem.check_page(page(ctx, RECORDS + r), seed(got, r)));
    let ok = got == want && whole && mine.violations == 0;
    Report {
        ok,
        summary: format!(
            "lock: counter {got} (expected {want} = {} nodes x {} workers x {} ops), records {}, \
             {} torn or stale records seen by this node ({})",
            ctx.parties,
            ctx.workers,
            ctx.ops,
            if whole { "whole" } else { "CORRUPT" },
            mine.violations,
            per_op(mine.ops, t)
        ),
        work_time: t,
    }
}

/// Data-page indices the victim writes (far from every other workload's pages).
const PRIVATE_FIRST: u64 = 1000;
const PRIVATE_PAGES: u64 = 16;

/// Writes pages no other node uses, `ops` rounds (0: until the process is killed).
pub(crate) fn private(mem: Mem, plan: &Plan, me: u16, ops: u64) -> Report {
    let mut round = 0u64;
    let start = std::time::Instant::now();
    while ops == 0 || round < ops {
        for k in 0..PRIVATE_PAGES {
            let Some(p) = plan.page(PRIVATE_FIRST + u64::from(me) * PRIVATE_PAGES + k) else {
                return Report {
                    ok: false,
                    summary: "private: the homes have too few pages for this workload".into(),
                    work_time: start.elapsed(),
                };
            };
            mem.write64(p, 0, round);
        }
        round += 1;
    }
    Report {
        ok: true,
        summary: format!("private: {round} rounds over {PRIVATE_PAGES} pages"),
        work_time: start.elapsed(),
    }
}
