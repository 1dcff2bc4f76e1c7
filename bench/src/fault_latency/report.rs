//! Results of a run: one [`ScenarioResult`] per scenario and axis point, printed as a table
//! (p50, p90, p99, p99.9, max, count, faults/s, p50 over the latency floor's, rate over the
//! rate floor's) or as JSON lines, with the machine, transport, idle policy and CPU placement
//! every result was measured with.

use std::fmt::Write as _;

use super::breakdown::{Breakdown, STEP_KEYS};
use super::plan::Scenario;
use crate::{Latency, Ns};

/// One measured row.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// What was measured.
    pub scenario: Scenario,
    /// Transport (as node 0 reported it, short form).
    pub transport: String,
    /// Node 0's idle policy.
    pub idle: String,
    /// Where every thread ran.
    pub placement: String,
    /// Service times.
    pub lat: Latency,
    /// Measured time (ns) the faults/s figure divides by.
    pub measured_ns: u64,
    /// Where the time went (`--breakdown`).
    pub breakdown: Option<Breakdown>,
    /// Percent of the machine's CPU time other processes used while this was measured.
    pub others_pct: f64,
    /// What node 0 counted during a prefetch row.
    pub prefetch: Option<PrefetchCounts>,
}

/// Node 0's counters over a prefetch row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchCounts {
    /// Remote read faults node 0 served (touches that found no page mapped).
    pub faults: u64,
    /// Read requests its prefetch issued.
    pub requests: u64,
}

impl ScenarioResult {
    /// Faults per second over the measured time.
    pub fn faults_per_s(&self) -> f64 {
        if self.measured_ns == 0 {
            return 0.0;
        }
        self.lat.count() as f64 * 1e9 / self.measured_ns as f64
    }

    /// p50 relative to the floor's p50 (none for a prefetch row, whose samples are mostly
    /// hits, not faults).
    pub fn floor_ratio(&self, floor: Option<&ScenarioResult>) -> Option<f64> {
        if self.prefetch.is_some() {
            return None;
        }
        let f = floor?.lat.percentile(50.0);
        (f > 0).then(|| self.lat.percentile(50.0) as f64 / f as f64)
    }

    /// The rate (faults/s; pages/s for prefetch) relative to its rate floor's, measured in the
    /// same run (`throughput-tN` over `floor-throughput-tN`, `prefetch-D` over
    /// `floor-prefetch-D`; 1 for a rate floor itself).
    pub fn rate_ratio(&self, rate_floor: Option<&ScenarioResult>) -> Option<f64> {
        let f = rate_floor?.faults_per_s();
        (f > 0.0).then(|| self.faults_per_s() / f)
    }

    /// A label unique within a run with several axis points.
    pub fn series_label(&self, multi_axis: bool) -> String {
        if multi_axis {
            format!(
                "{} [{} {}]",
                self.scenario.label(),
                self.transport,
                self.idle
            )
        } else {
            self.scenario.label()
        }
    }
}

/// The row among `rows` (one axis point) whose rate bounds `r`'s, if it ran.
pub fn rate_floor_of<'r>(
    r: &ScenarioResult,
    rows: &'r [ScenarioResult],
) -> Option<&'r ScenarioResult> {
    let f = r.scenario.rate_floor()?;
    rows.iter().find(|x| x.scenario == f)
}

/// The header line of the table.
pub fn header() -> String {
    format!(
        "{:<20} {:>3} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>7} {:>6}",
        "scenario",
        "thr",
        "count",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "faults/s",
        "xfloor",
        "xrate"
    )
}

/// One table row: `floor` is the latency floor, `rate_floor` the row bounding this one's rate.
pub fn row(
    r: &ScenarioResult,
    floor: Option<&ScenarioResult>,
    rate_floor: Option<&ScenarioResult>,
) -> String {
    let l = &r.lat;
    format!(
        "{:<20} {:>3} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10.0} {:>7} {:>6}",
        r.scenario.label(),
        r.scenario.threads(),
        l.count(),
        Ns(l.percentile(50.0)),
        Ns(l.percentile(90.0)),
        Ns(l.percentile(99.0)),
        Ns(l.percentile(99.9)),
        Ns(l.histogram().max()),
        r.faults_per_s(),
        r.floor_ratio(floor)
            .map_or("-".to_string(), |x| format!("{x:.2}")),
        r.rate_ratio(rate_floor)
            .map_or("-".to_string(), |x| format!("{x:.2}")),
    )
}

/// The table of one axis point (rows in run order), with its heading.
pub fn table(heading: &str, rows: &[ScenarioResult]) -> String {
    let floor = rows.iter().find(|r| r.scenario == Scenario::Floor);
    let mut s = String::new();
    let _ = writeln!(s, "{heading}");
    let _ = writeln!(s, "{}", header());
    for r in rows {
        let _ = writeln!(s, "{}", row(r, floor, rate_floor_of(r, rows)));
    }
    for r in rows {
        if let (Some(c), Scenario::FloorPrefetch { depth }) = (r.prefetch, r.scenario) {
            let pages = r.lat.count();
            let _ = writeln!(
                s,
                "{}: every touch is a sample (faults/s is pages/s): {:.0} pages/s; {} of {} \
                 touches faulted (1 per {:.1} pages), each fetching its {depth}-page block with \
                 one request and one UFFDIO_COPY",
                r.scenario.label(),
                r.faults_per_s(),
                c.faults,
                pages,
                pages as f64 / c.faults.max(1) as f64,
            );
        } else if let Some(c) = r.prefetch {
            let pages = r.lat.count();
            let _ = writeln!(
                s,
                "{}: every touch is a sample (faults/s is pages/s): {:.0} pages/s; {} of {} \
                 touches faulted (1 per {:.1} pages), {} prefetch requests",
                r.scenario.label(),
                r.faults_per_s(),
                c.faults,
                pages,
                pages as f64 / c.faults.max(1) as f64,
                c.requests
            );
        }
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// One JSON object (one line) for a result; `floor` is the latency floor, `rate_floor` the
/// row bounding this one's rate.
pub fn json(
    r: &ScenarioResult,
    floor: Option<&ScenarioResult>,
    rate_floor: Option<&ScenarioResult>,
) -> String {
    let l = &r.lat;
    let mut s = format!(
        "{{\"scenario\":{},\"label\":{},\"threads\":{},\"transport\":{},\"idle\":{},\
         \"placement\":{},\"count\":{},\"p50_ns\":{},\"p90_ns\":{},\"p99_ns\":{},\
         \"p999_ns\":{},\"max_ns\":{},\"faults_per_s\":{:.1},\"floor_ratio\":{},\
         \"rate_floor_ratio\":{},\"other_load_pct\":{:.1}",
        json_str(r.scenario.name()),
        json_str(&r.scenario.label()),
        r.scenario.threads(),
        json_str(&r.transport),
        json_str(&r.idle),
        json_str(&r.placement),
        l.count(),
        l.percentile(50.0),
        l.percentile(90.0),
        l.percentile(99.0),
        l.percentile(99.9),
        l.histogram().max(),
        r.faults_per_s(),
        r.floor_ratio(floor)
            .map_or("null".to_string(), |x| format!("{x:.3}")),
        r.rate_ratio(rate_floor)
            .map_or("null".to_string(), |x| format!("{x:.3}")),
        r.others_pct,
    );
    if let Some(c) = r.prefetch {
        let _ = write!(
            s,
            ",\"pages_per_s\":{:.1},\"faults\":{},\"prefetch_requests\":{}",
            r.faults_per_s(),
            c.faults,
            c.requests
        );
    }
    if let Some(b) = &r.breakdown {
        let mut entries: Vec<String> = STEP_KEYS
            .iter()
            .zip(b.steps.iter())
            .filter(|(_, st)| st.count() > 0)
            .map(|(k, st)| {
                format!(
                    "\"{k}\":{{\"count\":{},\"p50_ns\":{},\"p99_ns\":{}}}",
                    st.count(),
                    st.percentile(50.0),
                    st.percentile(99.0)
                )
            })
            .collect();
        entries.extend(b.answered.iter().map(|&(node, count, p50, p99)| {
            format!(
                "\"answered_by_node{node}\":{{\"count\":{count},\"p50_ns\":{p50},\"p99_ns\":{p99}}}"
            )
        }));
        let _ = write!(s, ",\"breakdown\":{{{}}}", entries.join(","));
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(s: Scenario, values: &[u64], measured_ns: u64) -> ScenarioResult {
        let mut lat = Latency::new();
        for &v in values {
            lat.record(v);
        }
        ScenarioResult {
            scenario: s,
            transport: "uring".into(),
            idle: "spin".into(),
            placement: "faults 0".into(),
            lat,
            measured_ns,
            breakdown: None,
            others_pct: 0.0,
            prefetch: None,
        }
    }

    #[test]
    fn rows_and_json_carry_the_measured_numbers() {
        let floor = result(Scenario::Floor, &[10_000; 10], 100_000);
        let rr = result(Scenario::RemoteRead, &[15_000; 20], 1_000_000);
        assert_eq!(rr.faults_per_s(), 20_000.0);
        let ratio = rr.floor_ratio(Some(&floor)).unwrap();
        assert!((ratio - 1.5).abs() < 0.01, "{ratio}");
        let mut pf = result(
            Scenario::Prefetch {
                depth: 16,
                threads: 1,
            },
            &[100; 64],
            1_000_000,
        );
        pf.prefetch = Some(PrefetchCounts {
            faults: 4,
            requests: 60,
        });
        let t = table("run", &[floor.clone(), rr.clone(), pf.clone()]);
        assert!(t.contains("remote-read"), "{t}");
        assert!(t.contains("1.50"), "{t}");
        assert!(
            t.contains("prefetch-16: every touch is a sample (faults/s is pages/s): 64000 pages/s; 4 of 64 touches faulted (1 per 16.0 pages), 60 prefetch requests"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&pf, Some(&floor), None)).unwrap();
        assert_eq!(v["faults"], 4);
        assert_eq!(v["prefetch_requests"], 60);
        assert_eq!(v["pages_per_s"], 64000.0);
        assert!(v["floor_ratio"].is_null(), "{v}");
        let j = json(&rr, Some(&floor), None);
        assert!(j.starts_with("{\"scenario\":\"remote-read\""), "{j}");
        assert!(j.contains("\"count\":20,"), "{j}");
        assert!(j.contains("\"floor_ratio\":1.50"), "{j}");
        assert!(json(&rr, None, None).contains("\"floor_ratio\":null"));
        assert!(j.contains("\"rate_floor_ratio\":null"), "{j}");
        assert_eq!(json_str("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
        // A breakdown with no matched sample but a helper's answers is still valid JSON.
        let mut b = crate::fault_latency::breakdown::compute(&[], &[], 0);
        b.answered = vec![(1, 10, 2000, 3000)];
        let mut with = rr.clone();
        with.breakdown = Some(b);
        let v: serde_json::Value = serde_json::from_str(&json(&with, None, None)).unwrap();
        assert_eq!(v["breakdown"]["answered_by_node1"]["p50_ns"], 2000);
        assert_eq!(v["count"], 20);
    }

    #[test]
    fn rate_floors_sit_next_to_their_rows_with_the_rate_ratio() {
        let floor = result(Scenario::Floor, &[10_000; 10], 100_000);
        // 40 faults in 1 ms: 40 000/s, against the floor's 100 000/s.
        let tp = result(
            Scenario::Throughput { threads: 4 },
            &[50_000; 40],
            1_000_000,
        );
        let ftp = result(
            Scenario::FloorThroughput { threads: 4 },
            &[20_000; 40],
            400_000,
        );
        let mut pf = result(
            Scenario::Prefetch {
                depth: 16,
                threads: 1,
            },
            &[100; 64],
            1_000_000,
        );
        pf.prefetch = Some(PrefetchCounts {
            faults: 4,
            requests: 60,
        });
        let mut fpf = result(Scenario::FloorPrefetch { depth: 16 }, &[100; 64], 250_000);
        fpf.prefetch = Some(PrefetchCounts {
            faults: 4,
            requests: 4,
        });
        let rows = [
            floor.clone(),
            tp.clone(),
            ftp.clone(),
            pf.clone(),
            fpf.clone(),
        ];
        assert_eq!(
            rate_floor_of(&tp, &rows).map(|r| r.scenario),
            Some(ftp.scenario)
        );
        assert_eq!(
            rate_floor_of(&fpf, &rows).map(|r| r.scenario),
            Some(fpf.scenario)
        );
        assert!(rate_floor_of(&floor, &rows).is_none());
        // A bounded row whose floor did not run (or failed) has no ratio.
        assert!(rate_floor_of(&tp, &rows[..2]).is_none());
        let r = tp.rate_ratio(rate_floor_of(&tp, &rows)).unwrap();
        assert!((r - 0.4).abs() < 1e-9, "{r}");
        assert!((pf.rate_ratio(Some(&fpf)).unwrap() - 0.25).abs() < 1e-9);
        assert_eq!(ftp.rate_ratio(Some(&ftp)), Some(1.0));
        // The throughput floor has a latency ratio too; the prefetch floor (mostly hits) not.
        let r = ftp.floor_ratio(Some(&floor)).unwrap();
        assert!((r - 2.0).abs() < 0.01, "{r}");
        assert_eq!(fpf.floor_ratio(Some(&floor)), None);

        let t = table("run", &rows);
        let lines: Vec<&str> = t.lines().collect();
        let line = |label: &str| {
            lines
                .iter()
                .find(|l| l.split_whitespace().next() == Some(label))
                .unwrap_or_else(|| panic!("{label} missing from {t}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        // The last two columns: xfloor, xrate.
        assert_eq!(line("throughput-t4")[9..], ["5.00", "0.40"]);
        assert_eq!(line("floor-throughput-t4")[9..], ["2.00", "1.00"]);
        assert_eq!(line("prefetch-16")[9..], ["-", "0.25"]);
        assert_eq!(line("floor-prefetch-16")[9..], ["-", "1.00"]);
        assert_eq!(line("floor")[9..], ["1.00", "-"]);
        assert!(
            t.contains("floor-prefetch-16: every touch is a sample (faults/s is pages/s): 256000 pages/s; 4 of 64 touches faulted (1 per 16.0 pages), each fetching its 16-page block with one request and one UFFDIO_COPY"),
            "{t}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&json(&tp, Some(&floor), rate_floor_of(&tp, &rows))).unwrap();
        assert_eq!(v["rate_floor_ratio"], 0.4);
        let v: serde_json::Value =
            serde_json::from_str(&json(&fpf, Some(&floor), rate_floor_of(&fpf, &rows))).unwrap();
        assert_eq!(v["rate_floor_ratio"], 1.0);
        assert_eq!(v["label"], "floor-prefetch-16");
        assert!(v["floor_ratio"].is_null(), "{v}");
    }
}
