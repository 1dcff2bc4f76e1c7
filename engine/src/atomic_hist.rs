//! A latency histogram that the hot path records into with one relaxed atomic add and that
//! another thread reads at any time without stopping the writers.
//!
//! Buckets are log-linear: each power of two is split into [`SUB_BUCKETS`] equal parts, so a
//! recorded value is known to within 1/128 (< 0.8 %) — the same idea as HdrHistogram with about
//! two significant digits. Readers convert a snapshot into an [`hdrhistogram::Histogram`] for
//! percentiles and HDR log output. The memory is fixed at creation (64 KiB); recording never
//! allocates, locks or blocks.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

/// Sub-buckets per power of two (must be a power of two).
pub const SUB_BUCKETS: usize = 128;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Number of buckets: values below `SUB_BUCKETS` get one bucket each, then one row of
/// `SUB_BUCKETS` per remaining power of two up to `u64::MAX`.
const BUCKETS: usize = SUB_BUCKETS * (64 - SUB_BITS as usize + 1);

/// See the module documentation.
pub struct AtomicHistogram {
    counts: Box<[AtomicU64]>,
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicHistogram")
            .field("count", &self.count())
            .finish()
    }
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket a value falls in.
#[inline]
fn index(v: u64) -> usize {
    if v < SUB_BUCKETS as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = msb - SUB_BITS;
    let row = (msb - SUB_BITS + 1) as usize;
    let sub = ((v >> shift) as usize) & (SUB_BUCKETS - 1);
    row * SUB_BUCKETS + sub
}

/// The lowest and highest value of a bucket.
fn bounds(i: usize) -> (u64, u64) {
    if i < SUB_BUCKETS {
        return (i as u64, i as u64);
    }
    let row = (i / SUB_BUCKETS) as u32;
    let sub = (i % SUB_BUCKETS) as u64;
    let shift = row - 1;
    let lo = (SUB_BUCKETS as u64 | sub) << shift;
    let hi = lo + ((1u64 << shift) - 1);
    (lo, hi)
}

impl AtomicHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records one value (any thread; never blocks).
    #[inline]
    pub fn record(&self, v: u64) {
        self.counts[index(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// Records one value from the histogram's only writer (a shard's own histograms): a load
    /// and a store instead of a locked add.
    #[inline]
    pub fn record_owned(&self, v: u64) {
        let c = &self.counts[index(v)];
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Total number of recorded values (a racy sum while writers run).
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Adds the current contents to `into`, each bucket as its midpoint. Values above the
    /// target's range are clamped to its highest trackable value.
    pub fn add_to(&self, into: &mut Histogram<u64>) {
        let top = into.high();
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let (lo, hi) = bounds(i);
            let mid = (lo + (hi - lo) / 2).clamp(into.low().max(1), top);
            // `mid` lies inside the histogram's range, so recording cannot fail.
            let _ = into.record_n(mid, n);
        }
    }

    /// A snapshot as an HDR histogram covering 1 ns ..= 60 s with 3 significant digits.
    pub fn snapshot(&self) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds");
        self.add_to(&mut h);
        h
    }

    /// Adds `other`'s counts into `self` (aggregation across shards).
    pub fn merge_from(&self, other: &AtomicHistogram) {
        for (a, b) in self.counts.iter().zip(other.counts.iter()) {
            let n = b.load(Ordering::Relaxed);
            if n != 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_contains_it() {
        let mut v = 0u64;
        while v < u64::MAX / 3 {
            let (lo, hi) = bounds(index(v));
            assert!(lo <= v && v <= hi, "{v} not in [{lo}, {hi}]");
            assert!(hi - lo <= lo / 64 + 1, "bucket too wide at {v}");
            v = v * 3 / 2 + 1;
        }
        let (lo, hi) = bounds(index(u64::MAX));
        assert!(lo < u64::MAX && hi == u64::MAX);
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn the_single_writer_path_counts_like_the_shared_one() {
        let (a, b) = (AtomicHistogram::new(), AtomicHistogram::new());
        for v in [0, 1, 999, 1_000, 52_000, 52_001, 7_000_000, 7_000_000] {
            a.record(v);
            b.record_owned(v);
        }
        assert_eq!(a.snapshot().len(), 8);
        assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn buckets_are_contiguous() {
        for i in 1..BUCKETS {
            assert_eq!(bounds(i - 1).1 + 1, bounds(i).0, "gap before bucket {i}");
        }
    }

    #[test]
    fn snapshot_percentiles_match_recorded_values() {
        let h = AtomicHistogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1_000);
        }
        assert_eq!(h.count(), 10_000);
        let s = h.snapshot();
        let p50 = s.value_at_quantile(0.5) as f64;
        let p99 = s.value_at_quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.01, "p50 {p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.01, "p99 {p99}");
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let h = std::sync::Arc::new(AtomicHistogram::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..100_000u64 {
                        h.record(i % 5000 + t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.count(), 400_000);
        let m = AtomicHistogram::new();
        m.merge_from(&h);
        m.merge_from(&h);
        assert_eq!(m.count(), 800_000);
    }
}
