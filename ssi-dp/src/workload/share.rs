//! Read sharing: the first participant fills a table of pages (homed on every node) before
//! the start barrier; every worker of every node then reads every page and checks it whole,
//! so each page ends up replicated read-only on every node.

use super::{Ctx, Report, WorkerResult};

/// First data-page index of the table, and its size in pages.
const FIRST: u64 = 32;
const PAGES: u64 = 16;

fn page(ctx: &Ctx<'_>, k: u64) -> u64 {
    ctx.plan
        .page(FIRST + k)
        .expect("homes have room for the table")
}

fn seed(k: u64) -> u64 {
    0x0007_ab1e_0000 + k
}

pub(crate) fn setup(ctx: &Ctx<'_>) {
    for k in 0..PAGES {
        ctx.mem.fill_page(page(ctx, k), seed(k));
    }
}

pub(crate) fn work(ctx: &Ctx<'_>, _worker: u64) -> WorkerResult {
    let mut r = WorkerResult::default();
    for k in 0..PAGES {
        r.reads += 1;
        if !ctx.mem.check_page(page(ctx, k), seed(k)) {
            r.violations += 1;
        }
    }
    r
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: &WorkerResult) -> Report {
    let want = ctx.workers * PAGES;
    Report {
        ok: mine.violations == 0 && mine.reads == want,
        summary: format!(
            "shared table: {} page reads, {} bad",
            mine.reads, mine.violations
        ),
        work_time: std::time::Duration::ZERO,
    }
}
