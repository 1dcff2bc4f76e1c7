//! Checking test-guest results: every vCPU must have finished with DONE(0) and reported
//! exactly what the guest's arithmetic implies; the expected values are recomputed from the
//! parameters, never taken from the guest.

use hdrhistogram::Histogram;

use super::{array_element, touch_marker, GuestParams, TestGuest};
use crate::protocol::keys;
use crate::vcpu::{Outcome, VcpuReport};

/// Why a run's results are wrong.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Reports missing or duplicated.
    #[error("expected one report per vCPU 0..{expected}, got vCPUs {got:?}: merge the reports of every node")]
    Reports {
        /// vCPU count.
        expected: u32,
        /// Ids present.
        got: Vec<u32>,
    },
    /// A vCPU did not finish with DONE(0).
    #[error("vCPU {vcpu} did not finish cleanly: {outcome}")]
    Unfinished {
        /// vCPU.
        vcpu: u32,
        /// Its outcome.
        outcome: String,
    },
    /// A result is missing.
    #[error("vCPU {vcpu} did not report {what}")]
    Missing {
        /// vCPU.
        vcpu: u32,
        /// Which result.
        what: String,
    },
    /// A result is wrong.
    #[error("{what}: expected {expected}, got {got}")]
    Mismatch {
        /// Which result.
        what: String,
        /// Expected value.
        expected: u64,
        /// Reported value.
        got: u64,
    },
    /// The histogram could not be built.
    #[error("latency histogram: {0}")]
    Histogram(String),
}

/// What a correct run computed.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Every counter's final value (all equal to vCPUs × iterations).
    Atomics {
        /// Counter values.
        counters: Vec<u64>,
    },
    /// The protected counter (vCPUs × iterations).
    TicketLock {
        /// Final counter.
        total: u64,
    },
    /// The array's sum (wrapping).
    ParallelSum {
        /// Total.
        total: u64,
    },
    /// First-touch latencies in TSC ticks, all vCPUs together.
    FaultLatency {
        /// Histogram of ticks.
        ticks: Histogram<u64>,
    },
}

impl Verdict {
    /// The fault-latency histogram converted to nanoseconds with the guest TSC frequency
    /// (from [`crate::Vm::tsc_khz`]); `None` for other guests.
    pub fn latency_ns(&self, tsc_khz: u32) -> Option<Histogram<u64>> {
        let Verdict::FaultLatency { ticks } = self else {
            return None;
        };
        let mut ns = Histogram::<u64>::new(3).ok()?;
        let khz = u64::from(tsc_khz.max(1));
        for v in ticks.iter_recorded() {
            let t = v.value_iterated_to() * 1_000_000 / khz;
            ns.record_n(t.max(1), v.count_at_value()).ok()?;
        }
        Some(ns)
    }
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Done(s) => format!("guest status {s:#x}"),
        Outcome::Halted => "halted".into(),
        Outcome::Stopped => "stopped before finishing (timeout or stop flag)".into(),
        Outcome::PoweredOff => "powered off".into(),
        Outcome::Reset => "reset".into(),
        Outcome::Failed(e) => e.to_string(),
    }
}

fn expect(what: impl Into<String>, expected: u64, got: u64) -> Result<(), CheckError> {
    if expected == got {
        Ok(())
    } else {
        Err(CheckError::Mismatch {
            what: what.into(),
            expected,
            got,
        })
    }
}

fn value(r: &VcpuReport, key: u64, what: &str) -> Result<u64, CheckError> {
    r.value(key).ok_or_else(|| CheckError::Missing {
        vcpu: r.vcpu,
        what: what.into(),
    })
}

pub(super) fn check(
    guest: TestGuest,
    params: &GuestParams,
    reports: &[VcpuReport],
) -> Result<Verdict, CheckError> {
    let mut by_id: Vec<Option<&VcpuReport>> = vec![None; params.vcpus as usize];
    let mut ok = reports.len() == params.vcpus as usize;
    for r in reports {
        match by_id.get_mut(r.vcpu as usize) {
            Some(slot @ None) => *slot = Some(r),
            _ => ok = false,
        }
    }
    if !ok || by_id.iter().any(Option::is_none) {
        return Err(CheckError::Reports {
            expected: params.vcpus,
            got: reports.iter().map(|r| r.vcpu).collect(),
        });
    }
    let by_id: Vec<&VcpuReport> = by_id.into_iter().flatten().collect();
    for r in &by_id {
        if !matches!(r.outcome, Outcome::Done(0)) {
            return Err(CheckError::Unfinished {
                vcpu: r.vcpu,
                outcome: outcome_text(&r.outcome),
            });
        }
    }
    let vcpus = u64::from(params.vcpus);
    let total = vcpus * params.iterations;
    match guest {
        TestGuest::Atomics => {
            let mut counters = Vec::with_capacity(params.counters as usize);
            for i in 0..u64::from(params.counters) {
                let got = value(by_id[0], keys::key(keys::COUNTER, i), "every counter")?;
                expect(format!("counter {i}"), total, got)?;
                counters.push(got);
            }
            Ok(Verdict::Atomics { counters })
        }
        TestGuest::TicketLock => {
            for r in &by_id {
                let got = value(
                    r,
                    keys::key(keys::ACQUIRED, u64::from(r.vcpu)),
                    "acquisitions",
                )?;
                expect(
                    format!("acquisitions of vCPU {}", r.vcpu),
                    params.iterations,
                    got,
                )?;
            }
            let got = value(
                by_id[0],
                keys::key(keys::LOCKED_TOTAL, 0),
                "the locked counter",
            )?;
            expect("locked counter", total, got)?;
            Ok(Verdict::TicketLock { total: got })
        }
        TestGuest::ParallelSum => {
            let n = params.sum_bytes / 8;
            let mut sum = 0u64;
            for r in &by_id {
                let v = u64::from(r.vcpu);
                let (lo, hi) = (slice_bound(n, v, vcpus), slice_bound(n, v + 1, vcpus));
                let expected =
                    (lo..hi).fold(0u64, |a, i| a.wrapping_add(array_element(params.seed, i)));
                let got = value(r, keys::key(keys::PARTIAL, v), "its partial sum")?;
                expect(format!("partial of vCPU {v}"), expected, got)?;
                sum = sum.wrapping_add(expected);
            }
            let got = value(by_id[0], keys::key(keys::SUM, 0), "the total")?;
            expect("sum", sum, got)?;
            Ok(Verdict::ParallelSum { total: got })
        }
        TestGuest::FaultLatency => {
            let mut ticks =
                Histogram::<u64>::new(3).map_err(|e| CheckError::Histogram(e.to_string()))?;
            for r in &by_id {
                let v = u64::from(r.vcpu);
                let mut samples = 0u64;
                for (k, t) in &r.results {
                    if keys::kind(*k) == keys::TOUCH_TICKS {
                        samples += 1;
                        ticks
                            .record((*t).max(1))
                            .map_err(|e| CheckError::Histogram(e.to_string()))?;
                    }
                }
                expect(
                    format!("touch samples of vCPU {v}"),
                    u64::from(params.touch_pages),
                    samples,
                )?;
                let expected = (0..u64::from(params.touch_pages))
                    .fold(0u64, |a, j| a.wrapping_add(touch_marker(v, j)));
                let got = value(r, keys::key(keys::TOUCH_CHECKSUM, v), "its checksum")?;
                expect(
                    format!("checksum of the pages vCPU {v} read"),
                    expected,
                    got,
                )?;
            }
            Ok(Verdict::FaultLatency { ticks })
        }
    }
}

/// First element of slice `v` of `n` elements split over `vcpus` (what the payload computes
/// with `mul`/`div`).
fn slice_bound(n: u64, v: u64, vcpus: u64) -> u64 {
    ((u128::from(n) * u128::from(v)) / u128::from(vcpus)) as u64
}
