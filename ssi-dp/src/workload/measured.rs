//! The measured phase of the miss-ratio workloads (issue 19: partition, readmostly, queue,
//! zipf), and what they share: a seeded random stream every node can replay, and tables of
//! pages spread over the homes.
//!
//! A run is: warm-up, a barrier of every worker of every participant, the measured phase.
//! Once all of this node's workers are past that barrier, one of them takes the first snapshot
//! of the node's fault counters (every shard's served faults, by kind and locality, and its
//! failed ones) before any of them starts the measured phase; the second snapshot is taken
//! after every worker has returned, before the node touches the barrier page again. What the
//! node reports is the difference: the faults its own workers took during the measured phase,
//! next to the page accesses they counted in it. A miss is a fault served on this node (a page
//! it could not access where it was); a remote miss is one on a page homed on another node.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use engine::stats::{FaultKind, Locality, ShardStats};

use super::{Ctx, WorkloadError};

/// Barrier slot at the end of the warm-up (a worker barrier; the run uses 0 to 3, scan 4
/// and 5).
const WARM: u64 = 6;
/// Barrier slot of a second node barrier a workload's check may need (queue).
pub(crate) const CHECKED: u64 = 7;
/// Data-page offset, within each home's range, of the workloads' tables (clear of the pages
/// the other workloads use at the start of every range).
pub(crate) const OFFSET: u64 = 64;

/// Fault counters summed over a node's shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Faults {
    /// Served, on pages homed here.
    pub home: u64,
    /// Served, on pages homed elsewhere.
    pub remote: u64,
    /// Served, by kind (read, write, upgrade).
    pub kind: [u64; 3],
    /// Failed.
    pub failed: u64,
}

impl Faults {
    /// The counters now.
    pub fn now(stats: &[Arc<ShardStats>]) -> Self {
        let mut f = Faults::default();
        for s in stats {
            for k in FaultKind::ALL {
                let home = s.served_count(k, Locality::Home);
                let remote = s.served_count(k, Locality::Remote);
                f.home += home;
                f.remote += remote;
                f.kind[k as usize] += home + remote;
            }
            f.failed += s.faults_failed.load(Relaxed);
        }
        f
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(self, earlier: Faults) -> Faults {
        Faults {
            home: self.home.wrapping_sub(earlier.home),
            remote: self.remote.wrapping_sub(earlier.remote),
            kind: std::array::from_fn(|k| self.kind[k].wrapping_sub(earlier.kind[k])),
            failed: self.failed.wrapping_sub(earlier.failed),
        }
    }

    /// Served faults (misses).
    pub fn misses(&self) -> u64 {
        self.home + self.remote
    }
}

/// The node's side of the measured phase: its workers meet here, and the first snapshot.
#[derive(Debug)]
pub(crate) struct Measure {
    local: std::sync::Barrier,
    start: Mutex<Option<Faults>>,
}

impl Measure {
    /// For `workers` workers on this node.
    pub fn new(workers: usize) -> Self {
        Self {
            local: std::sync::Barrier::new(workers),
            start: Mutex::new(None),
        }
    }

    /// The snapshot at the start of the measured phase, if a run took one.
    pub fn start(&self) -> Option<Faults> {
        self.start.lock().ok().and_then(|s| *s)
    }
}

impl Ctx<'_> {
    /// Ends the warm-up (every worker of every workload that measures calls this once):
    /// waits for every worker of every participant, then for this node's, snapshots the
    /// node's fault counters, and lets this node's workers go on together.
    pub(crate) fn begin_measured(&self) {
        self.worker_barrier().wait(WARM);
        if self.measure.local.wait().is_leader() {
            if let Ok(mut s) = self.measure.start.lock() {
                *s = Some(Faults::now(self.stats));
            }
        }
        self.measure.local.wait();
    }
}

/// The report's miss line: `misses after warm-up: M of A accesses (R %), remote …`.
pub(crate) fn line(accesses: u64, start: Option<Faults>, end: Faults) -> String {
    let Some(start) = start else {
        return "misses after warm-up: not measured (no measured phase)".into();
    };
    let d = end.since(start);
    let ratio = if accesses == 0 {
        "no accesses".to_string()
    } else {
        format!("{:.2} %", d.misses() as f64 * 100.0 / accesses as f64)
    };
    format!(
        "misses after warm-up: {} of {} accesses ({ratio}), remote {}, home {}, failed {} \
         (read {}, write {}, upgrade {})",
        d.misses(),
        accesses,
        d.remote,
        d.home,
        d.failed,
        d.kind[0],
        d.kind[1],
        d.kind[2]
    )
}

/// Warm-up operations of a worker doing `ops` in all: the first fifth.
pub(crate) fn warm_ops(ops: u64) -> u64 {
    ops / 5
}

/// A deterministic random stream (splitmix64) for one worker of one participant: every node
/// can replay any worker's choices to know what memory must hold.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    seed: u64,
    i: u64,
}

impl Rng {
    /// The stream of worker `worker` of the participant of rank `rank`, for workload `salt`.
    pub fn new(salt: u64, rank: u64, worker: u64) -> Self {
        Self {
            seed: engine::mem::mix(salt, (rank << 32) ^ worker),
            i: 0,
        }
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.i += 1;
        engine::mem::mix(self.seed, self.i)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// True `per_mille` times in a thousand.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// `n` pages dealt round-robin over the homes from [`OFFSET`] on (entry `k` on home
/// `k % homes`), or the error naming what `workload` needs.
pub(crate) fn spread(
    ctx: &Ctx<'_>,
    n: u64,
    workload: &'static str,
    hint: &'static str,
) -> Result<Vec<u64>, WorkloadError> {
    let homes = (ctx.plan.homes() as u64).max(1);
    let need = OFFSET
        .saturating_add(n.div_ceil(homes.max(1)))
        .saturating_add(1);
    (0..n)
        .map(|k| {
            ctx.plan
                .run_page((k % homes) as usize, OFFSET + k / homes)
                .ok_or(WorkloadError::TableNeedsMemory {
                    workload,
                    pages: need,
                    hint,
                })
        })
        .collect()
}

/// Checks of a run: reads of a counter that went backwards, and the like.
pub(crate) fn verdict(wrong: &[String]) -> String {
    if wrong.is_empty() {
        "exact".into()
    } else {
        let shown: Vec<_> = wrong.iter().take(5).cloned().collect();
        format!("WRONG ({} of them): {}", wrong.len(), shown.join("; "))
    }
}

/// A worker's view of a table of per-page counters (the first 8 bytes of each page): reads
/// and locked increments, each checked against the last value this worker saw.
pub(crate) struct Counters<'a> {
    mem: engine::mem::Mem,
    pages: &'a [u64],
    last: Vec<u64>,
}

impl<'a> Counters<'a> {
    /// The counters of `pages` (one per page), none seen yet.
    pub(crate) fn new(mem: engine::mem::Mem, pages: &'a [u64]) -> Self {
        Self {
            mem,
            pages,
            last: vec![0; pages.len()],
        }
    }

    /// Reads counter `i`, or increments it (`write`); a value below one seen before is a
    /// violation.
    pub(crate) fn touch(&mut self, i: usize, write: bool, r: &mut super::WorkerResult) {
        let page = self.pages[i];
        let seen = if write {
            self.mem
                .atomic64(page, 0)
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        } else {
            r.reads += 1;
            self.mem.read64(page, 0)
        };
        if seen < self.last[i] {
            r.violations += 1;
        }
        self.last[i] = seen + u64::from(write);
    }
}

/// Compares each page's counter with `expect` (same order as `pages`); returns the
/// mismatches, each named `what i (page p) = got, expected want`, and the counters' total.
pub(crate) fn check_counters(
    mem: engine::mem::Mem,
    pages: &[u64],
    expect: &[u64],
    what: &str,
) -> (Vec<String>, u64) {
    let mut wrong = Vec::new();
    let mut total = 0;
    for (i, (&page, &want)) in pages.iter().zip(expect).enumerate() {
        let got = mem
            .atomic64(page, 0)
            .load(std::sync::atomic::Ordering::SeqCst);
        total += got;
        if got != want {
            wrong.push(format!("{what} {i} (page {page}) = {got}, expected {want}"));
        }
    }
    (wrong, total)
}
