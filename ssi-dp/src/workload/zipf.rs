//! A key-value table with skewed keys (issue 19): [`KEYS`] pages (one value per key) dealt
//! round-robin over the homes, keys drawn from a Zipf distribution with exponent 0.99 (key 0
//! the most popular: about 13 % of the draws with 1024 keys), 90 % reads and 10 % increments
//! of the key's counter (a locked add), like a guest's cache or hash table under a realistic
//! popularity skew.
//!
//! Keys are sampled by inversion over a precomputed cumulative table in 2^-53 units (integer
//! arithmetic from the table on, so every node replays every worker's draws exactly).
//! Warm-up: every node reads every key once (its workers share the pass), then each worker
//! does the first fifth of its operations; the rest is measured. Check: every key's counter
//! equals the increments every worker's replayed stream made to it (so the per-key counts
//! summed over nodes equal all increments), and no read saw a counter go backwards.

use std::time::Duration;

use super::measured::{check_counters, spread, verdict, warm_ops, Counters, Rng};
use super::{per_op, Ctx, Report, WorkerResult, WorkloadError};

/// Keys (pages) in the table.
pub(crate) const KEYS: u64 = 1024;
/// The Zipf exponent.
const S: f64 = 0.99;
/// Increments among the operations, per mille.
const WRITES: u64 = 100;
const SALT: u64 = 0x9a27_0004;
const ONE: u64 = 1 << 53;

/// The table's pages, key by key.
pub(crate) fn layout(ctx: &Ctx<'_>) -> Result<Vec<u64>, WorkloadError> {
    spread(ctx, KEYS, "zipf", "")
}

/// A Zipf sampler over `0..n`: `cdf[k]` is P(key ≤ k) in units of 2^-53, the last exactly 1.
#[derive(Debug, Clone)]
pub(crate) struct Zipf {
    cdf: Vec<u64>,
}

impl Zipf {
    /// P(k) proportional to `1 / (k + 1)^s`, over `n > 0` keys.
    pub fn new(n: u64, s: f64) -> Self {
        let w: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-s)).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let mut cdf: Vec<u64> = w
            .iter()
            .map(|x| {
                acc += x;
                ((acc / total) * ONE as f64).min(ONE as f64) as u64
            })
            .collect();
        if let Some(l) = cdf.last_mut() {
            *l = ONE;
        }
        Self { cdf }
    }

    /// A key.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next() >> 11;
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// The next operation of a stream: the key and whether it increments.
fn next_op(z: &Zipf, rng: &mut Rng) -> (usize, bool) {
    let key = z.sample(rng);
    (key, rng.chance(WRITES))
}

pub(crate) fn work(ctx: &Ctx<'_>, worker: u64) -> WorkerResult {
    let z = Zipf::new(KEYS, S);
    let mut r = WorkerResult::default();
    let mut counters = Counters::new(ctx.mem, &ctx.pages);
    let mut op = |i: usize, write: bool, r: &mut WorkerResult| counters.touch(i, write, r);
    for k in (worker..KEYS).step_by(ctx.workers as usize) {
        op(k as usize, false, &mut r);
    }
    let mut rng = Rng::new(SALT, ctx.rank, worker);
    let warm = warm_ops(ctx.ops);
    for _ in 0..warm {
        let (k, write) = next_op(&z, &mut rng);
        op(k, write, &mut r);
        std::thread::yield_now();
    }
    ctx.begin_measured();
    for _ in warm..ctx.ops {
        let (k, write) = next_op(&z, &mut rng);
        op(k, write, &mut r);
        r.accesses += 1;
        // Let the other workers and nodes run between operations (see partition).
        std::thread::yield_now();
    }
    r.ops = ctx.ops;
    r
}

pub(crate) fn verify(ctx: &Ctx<'_>, mine: &WorkerResult, t: Duration) -> Report {
    let z = Zipf::new(KEYS, S);
    let mut expect = vec![0u64; ctx.pages.len()];
    let mut increments = 0;
    for rank in 0..ctx.parties {
        for w in 0..ctx.workers {
            let mut rng = Rng::new(SALT, rank, w);
            for _ in 0..ctx.ops {
                let (k, write) = next_op(&z, &mut rng);
                if write {
                    expect[k] += 1;
                    increments += 1;
                }
            }
        }
    }
    let (wrong, total) = check_counters(ctx.mem, &ctx.pages, &expect, "key");
    let hottest = expect.first().copied().unwrap_or(0);
    Report {
        ok: wrong.is_empty()
            && total == increments
            && mine.violations == 0
            && mine.ops == ctx.workers * ctx.ops,
        summary: format!(
            "zipf: {KEYS} keys on {} homes, s = {S}; {increments} increments (key 0: \
             {hottest}), per-key counts {} (total {total}); {} reads, {} saw a count go \
             backwards ({})",
            ctx.plan.homes(),
            verdict(&wrong),
            mine.reads,
            mine.violations,
            per_op(mine.ops, t)
        ),
        work_time: t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_sampler_follows_the_distribution() {
        let z = Zipf::new(KEYS, S);
        let mut rng = Rng::new(1, 2, 3);
        let n = 400_000;
        let mut counts = vec![0u64; KEYS as usize];
        for _ in 0..n {
            counts[z.sample(&mut rng)] += 1;
        }
        let h: f64 = (1..=KEYS).map(|k| (k as f64).powf(-S)).sum();
        for k in [0usize, 1, 9, 99, KEYS as usize - 1] {
            let want = n as f64 * ((k + 1) as f64).powf(-S) / h;
            let got = counts[k] as f64;
            assert!(
                (got - want).abs() < 5.0 * want.sqrt() + 1.0,
                "key {k}: {got} draws, expected about {want:.0}"
            );
        }
        // Deterministic: the same stream draws the same keys.
        let (mut a, mut b) = (Rng::new(9, 0, 1), Rng::new(9, 0, 1));
        assert!((0..1000).all(|_| z.sample(&mut a) == z.sample(&mut b)));
    }
}
