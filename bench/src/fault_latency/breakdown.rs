//! `--breakdown`: where the time of a fault goes. The faulting thread knows when it touched
//! the page and when it resumed; node 0's shard records when it read the fault, sent the
//! request, received the reply and installed the page (`engine::shard::trace`). Samples and
//! shard records are matched by page and time; each step's durations are aggregated.

use std::fmt::Write as _;

use engine::shard::trace::FaultTrace;

use super::scenario::Sample;
use crate::{Latency, Ns};

/// The steps of a fault, in order.
pub const STEPS: [&str; 6] = [
    "fault -> event read",
    "event read -> request sent",
    "request sent -> reply received",
    "reply received -> installed",
    "event read -> installed (local)",
    "installed -> thread resumed",
];

/// Short keys of [`STEPS`] for JSON.
pub const STEP_KEYS: [&str; 6] = [
    "fault_to_event",
    "event_to_sent",
    "sent_to_received",
    "received_to_installed",
    "event_to_installed_local",
    "installed_to_resumed",
];

/// Each step's durations over the matched samples of one scenario.
#[derive(Debug, Clone)]
pub struct Breakdown {
    /// Durations per step (index as [`STEPS`]); steps that did not happen stay empty.
    pub steps: [Latency; 6],
    /// The whole fault as the thread saw it, over the matched samples.
    pub total: Latency,
    /// Samples with a shard record.
    pub matched: u64,
    /// Samples.
    pub samples: u64,
    /// Shard records lost to the ring's bound.
    pub missed: u64,
    /// Remote faults whose request send time was not known (its slot in the shard's
    /// direct-mapped table was reused by another page in flight).
    pub send_unknown: u64,
    /// Per helper node that answered during the timed part: `(node, count, p50_ns, p99_ns)`
    /// of "message that let it answer received → answer sent", on that node's clock.
    pub answered: Vec<(u16, u64, u64, u64)>,
}

/// Matches samples with shard records and aggregates the steps.
pub fn compute(samples: &[Sample], traces: &[FaultTrace], missed: u64) -> Breakdown {
    let mut sorted: Vec<FaultTrace> = traces.to_vec();
    sorted.sort_unstable_by_key(|t| t.event_ns);
    let mut b = Breakdown {
        steps: std::array::from_fn(|_| Latency::new()),
        total: Latency::new(),
        matched: 0,
        samples: samples.len() as u64,
        missed,
        send_unknown: 0,
        answered: Vec::new(),
    };
    for s in samples {
        // The record of this fault: same page, read by the shard while the thread waited.
        // (Its install may end after the thread resumed: the install wakes the thread inside
        // the call, and a thread on the shard's CPU preempts the shard at once.)
        let from = sorted.partition_point(|t| t.event_ns < s.t0);
        let Some(t) = sorted[from..]
            .iter()
            .take_while(|t| t.event_ns <= s.t1)
            .find(|t| t.page == s.page)
        else {
            continue;
        };
        b.matched += 1;
        b.total.record(s.t1 - s.t0);
        b.steps[0].record(t.event_ns - s.t0);
        if t.received_ns != 0 {
            if t.sent_ns != 0 && t.received_ns >= t.sent_ns {
                b.steps[1].record(t.sent_ns - t.event_ns);
                b.steps[2].record(t.received_ns - t.sent_ns);
            } else {
                b.send_unknown += 1;
            }
            b.steps[3].record(t.installed_ns.saturating_sub(t.received_ns));
        } else {
            b.steps[4].record(t.installed_ns.saturating_sub(t.event_ns));
        }
        b.steps[5].record(s.t1.saturating_sub(t.installed_ns));
    }
    b
}

/// The breakdown as a small table.
pub fn render(title: &str, b: &Breakdown) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "breakdown {title}: {} of {} samples matched to shard records{}{}",
        b.matched,
        b.samples,
        if b.missed > 0 {
            format!(" ({} records lost to the ring bound)", b.missed)
        } else {
            String::new()
        },
        if b.send_unknown > 0 {
            format!(" ({} without a known send time)", b.send_unknown)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "  {:<34} {:>9} {:>9} {:>9}",
        "step", "count", "p50", "p99"
    );
    for (name, l) in STEPS.iter().zip(b.steps.iter()) {
        if l.count() == 0 {
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<34} {:>9} {:>9} {:>9}",
            name,
            l.count(),
            Ns(l.percentile(50.0)),
            Ns(l.percentile(99.0))
        );
    }
    for &(node, count, p50, p99) in &b.answered {
        let _ = writeln!(
            s,
            "  {:<34} {:>9} {:>9} {:>9}",
            format!("  of which node {node}: msg -> answer"),
            count,
            Ns(p50),
            Ns(p99)
        );
    }
    let _ = writeln!(
        s,
        "  {:<34} {:>9} {:>9} {:>9}",
        "total (as the thread saw it)",
        b.total.count(),
        Ns(b.total.percentile(50.0)),
        Ns(b.total.percentile(99.0))
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_their_own_records_and_steps_add_up() {
        let samples = [
            Sample {
                page: 7,
                t0: 1_000,
                t1: 11_000,
            },
            // Same page later (ping-pong): must match the second record, not the first.
            Sample {
                page: 7,
                t0: 20_000,
                t1: 30_000,
            },
            // Local fault: no request.
            Sample {
                page: 9,
                t0: 40_000,
                t1: 43_000,
            },
            // No record at all.
            Sample {
                page: 11,
                t0: 50_000,
                t1: 51_000,
            },
            // Resumed (on the shard's CPU) before the install call returned.
            Sample {
                page: 12,
                t0: 60_000,
                t1: 65_000,
            },
        ];
        let traces = [
            FaultTrace {
                page: 7,
                event_ns: 2_000,
                sent_ns: 3_000,
                received_ns: 8_000,
                installed_ns: 9_000,
            },
            FaultTrace {
                page: 9,
                event_ns: 41_000,
                sent_ns: 0,
                received_ns: 0,
                installed_ns: 42_000,
            },
            FaultTrace {
                page: 7,
                event_ns: 21_000,
                sent_ns: 22_000,
                received_ns: 27_000,
                installed_ns: 29_500,
            },
            // Send time lost (slot reused), install returned after the thread resumed.
            FaultTrace {
                page: 12,
                event_ns: 61_000,
                sent_ns: 0,
                received_ns: 64_000,
                installed_ns: 65_500,
            },
        ];
        let b = compute(&samples, &traces, 0);
        assert_eq!((b.matched, b.samples), (4, 5));
        assert_eq!(b.steps[0].count(), 4);
        assert_eq!(
            b.steps[2].count(),
            2,
            "two remote faults with a known send time"
        );
        assert_eq!(b.send_unknown, 1);
        assert_eq!(b.steps[3].count(), 3, "three remote faults");
        assert_eq!(b.steps[4].count(), 1, "one local fault");
        // Install-to-resume: 2000, 500, 1000 (local) and 0 (resumed first).
        assert!(
            b.steps[5].percentile(0.0) <= 1,
            "recorded as the 1 ns floor"
        );
        assert_eq!(b.steps[5].percentile(100.0), 2000);
        let text = render("test", &b);
        assert!(text.contains("4 of 5 samples matched"), "{text}");
        assert!(text.contains("1 without a known send time"), "{text}");
        assert!(text.contains("request sent -> reply received"), "{text}");
    }
}
