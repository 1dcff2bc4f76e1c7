//! Shared helpers for the benchmarks: HDR histograms in nanoseconds, percentile rows, and the
//! description of where a benchmark ran (CPU placement, idle policy) that every result carries.

use std::fmt;
use std::time::Instant;

use hdrhistogram::Histogram;

pub mod fault_latency;

/// Highest value a latency histogram records: 10 s in nanoseconds. Larger samples are clamped
/// (and counted in [`Latency::clamped`]) rather than dropped.
pub const MAX_NS: u64 = 10_000_000_000;

/// A latency histogram in nanoseconds with three significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    clamped: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram covering 1 ns ..= [`MAX_NS`].
    pub fn new() -> Self {
        Self {
            // 1..=10 s with 3 significant digits is a valid range, so this cannot fail.
            hist: Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds"),
            clamped: 0,
        }
    }

    /// Records one sample in nanoseconds.
    pub fn record(&mut self, ns: u64) {
        let v = ns.clamp(1, MAX_NS);
        if v != ns.max(1) {
            self.clamped += 1;
        }
        // In range by construction.
        self.hist.record(v).expect("value clamped into range");
    }

    /// Records the time elapsed since `start`.
    pub fn record_since(&mut self, start: Instant) {
        self.record(u64::try_from(start.elapsed().as_nanos()).unwrap_or(MAX_NS));
    }

    /// Samples larger than [`MAX_NS`] that were recorded as [`MAX_NS`].
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Value at percentile `p` (0..=100), in nanoseconds.
    pub fn percentile(&self, p: f64) -> u64 {
        self.hist.value_at_quantile(p / 100.0)
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.clamped += other.clamped;
    }

    /// The underlying histogram (for HDR log output).
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// A table row: `name  count  p50  p90  p99  p99.9  max`.
    pub fn row<'a>(&'a self, name: &'a str) -> Row<'a> {
        Row { name, lat: self }
    }
}

/// One formatted percentile row; see [`Latency::row`] and [`header`].
#[derive(Debug)]
pub struct Row<'a> {
    name: &'a str,
    lat: &'a Latency,
}

/// The header line matching [`Row`]'s columns.
pub fn header() -> String {
    format!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "count", "p50", "p90", "p99", "p99.9", "max"
    )
}

impl fmt::Display for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.lat;
        write!(
            f,
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            self.name,
            l.count(),
            Ns(l.percentile(50.0)),
            Ns(l.percentile(90.0)),
            Ns(l.percentile(99.0)),
            Ns(l.percentile(99.9)),
            Ns(l.hist.max()),
        )
    }
}

/// A nanosecond value printed with a readable unit (`850ns`, `12.3us`, `4.10ms`).
#[derive(Debug, Clone, Copy)]
pub struct Ns(pub u64);

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        let s = if ns < 1_000 {
            format!("{ns}ns")
        } else if ns < 1_000_000 {
            format!("{:.1}us", ns as f64 / 1e3)
        } else if ns < 1_000_000_000 {
            format!("{:.2}ms", ns as f64 / 1e6)
        } else {
            format!("{:.2}s", ns as f64 / 1e9)
        };
        f.pad(&s)
    }
}

pub use engine::affinity::{current_affinity, pin_current_thread};

/// Number of online CPUs.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_samples() {
        let mut l = Latency::new();
        for v in 1..=1000 {
            l.record(v * 1000);
        }
        assert_eq!(l.count(), 1000);
        let p50 = l.percentile(50.0);
        assert!((499_000..=501_000).contains(&p50), "p50 = {p50}");
        assert!(l.percentile(99.9) >= 998_000);
        l.record(MAX_NS * 2);
        assert_eq!(l.clamped(), 1);
    }

    #[test]
    fn ns_picks_units() {
        assert_eq!(Ns(850).to_string(), "850ns");
        assert_eq!(Ns(12_345).to_string(), "12.3us");
        assert_eq!(Ns(4_100_000).to_string(), "4.10ms");
    }
}
