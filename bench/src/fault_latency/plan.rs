//! What a run measures: the scenarios in order, how many fresh pages each needs on which home,
//! and the address-space layout that gives every sample a page nobody touched before.
//!
//! Nodes: 0 is this process (the faulting threads live here), 1 homes every remote page, 2 is
//! the third node (`remote-read-fwd`'s owner, the first sharer), 3.. are further sharers.
//! Nodes other than 0 and 1 contribute no memory, except with `--homes K`: nodes 1..=K then
//! home the throughput rows' pages, round-robin page by page. With `--space`, node 1 also
//! contributes the rest of the address space, reserved and never touched.

use thiserror::Error;

/// A bad selection of scenarios.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    /// An unknown scenario name.
    #[error("unknown scenario {0:?}: use floor, local-zero, remote-read, remote-read-shared, remote-read-fwd, remote-write, upgrade, pingpong, throughput, floor-throughput, prefetch or floor-prefetch")]
    Unknown(String),
    /// A thread count of 0 or too many.
    #[error("bad thread count {0}: use 1 to 256")]
    Threads(usize),
    /// Too many sharers for the cluster size limit.
    #[error("--max-sharers {0} is too large: at most 16")]
    Sharers(usize),
    /// A prefetch depth the data plane does not take.
    #[error("--prefetch-depth {0} is out of range: use 2 to 64 pages")]
    PrefetchDepth(u32),
    /// A number of throughput homes the cluster cannot have.
    #[error("--homes {0} is out of range: use 1 to {MAX_HOMES} helper nodes")]
    Homes(usize),
    /// An address space smaller than the scenarios need, or larger than the benchmark maps.
    #[error("--space {asked} bytes is out of range: the scenarios need at least {need} bytes, and at most {MAX_SPACE} bytes (1 TiB) are mapped; give a size in between, such as 1G or 64G")]
    Space {
        /// Bytes asked for.
        asked: u64,
        /// Bytes the scenarios' pages take.
        need: u64,
    },
}

/// Most helper nodes that can home throughput pages (`--homes`).
pub const MAX_HOMES: usize = 15;
/// Largest address space `--space` takes (1 TiB: 512 MiB of local page state per node).
pub const MAX_SPACE: u64 = 1 << 40;
const PAGE: u64 = 4096;

/// One measured scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The hand-written floor: uffd read → 16-byte request over TCP → 4 KiB reply → COPY.
    Floor,
    /// First touch (read) of a page homed on node 0.
    LocalZero,
    /// Read miss served by the home (node 1, which wrote the page, so it holds it writable
    /// and must write-protect it before sending).
    RemoteRead,
    /// Read miss served by the home from a copy that is already read-only (node 1 wrote the
    /// page, node 2 read it): the home only sends.
    RemoteReadShared,
    /// Read miss forwarded by the home to node 2, which owns the page exclusively.
    RemoteReadFwd,
    /// Write miss on a page the home wrote and `k` other nodes read.
    RemoteWrite {
        /// Sharers to invalidate (besides the home).
        k: usize,
    },
    /// Write to a read-only replica (node 0 read the page the home wrote).
    Upgrade,
    /// Node 0 and node 1 alternately write one page; node 0's write misses are timed.
    PingPong,
    /// `threads` threads each reading fresh remote pages, as fast as they can.
    Throughput {
        /// Faulting threads.
        threads: usize,
    },
    /// `threads` threads, each reading its own run of fresh remote pages front to back with
    /// node 0's sequential prefetch at `depth` pages: every touch is a sample (hits
    /// included), the rate is pages/s.
    Prefetch {
        /// Pages per prefetch trigger (`--prefetch` of the node).
        depth: u32,
        /// Scanning threads.
        threads: usize,
    },
    /// The throughput floor: `threads` threads fault on fresh pages of a uffd mapping; one
    /// hand-written handler reads up to 64 events at once, sends all their requests with one
    /// send and installs each reply as it arrives (many in flight). Bounds `throughput-tN`.
    FloorThroughput {
        /// Faulting threads.
        threads: usize,
    },
    /// The prefetch floor: one thread reads fresh pages front to back; a fault requests the
    /// aligned `depth`-page block, installed with one `UFFDIO_COPY`. Bounds `prefetch-D`.
    FloorPrefetch {
        /// Pages per request.
        depth: u32,
    },
}

impl Scenario {
    /// The family name (the `scenario` field of the JSON output).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Floor => "floor",
            Scenario::LocalZero => "local-zero",
            Scenario::RemoteRead => "remote-read",
            Scenario::RemoteReadShared => "remote-read-shared",
            Scenario::RemoteReadFwd => "remote-read-fwd",
            Scenario::RemoteWrite { .. } => "remote-write",
            Scenario::Upgrade => "upgrade",
            Scenario::PingPong => "pingpong",
            Scenario::Throughput { .. } => "throughput",
            Scenario::Prefetch { .. } => "prefetch",
            Scenario::FloorThroughput { .. } => "floor-throughput",
            Scenario::FloorPrefetch { .. } => "floor-prefetch",
        }
    }

    /// A unique label (table rows, plot lines, HDR log tags): no spaces, commas or colons.
    pub fn label(self) -> String {
        match self {
            Scenario::RemoteWrite { k } => format!("remote-write-k{k}"),
            Scenario::Throughput { threads } => format!("throughput-t{threads}"),
            Scenario::Prefetch { depth, threads: 1 } => format!("prefetch-{depth}"),
            Scenario::Prefetch { depth, threads } => format!("prefetch-{depth}-t{threads}"),
            Scenario::FloorThroughput { threads } => format!("floor-throughput-t{threads}"),
            Scenario::FloorPrefetch { depth } => format!("floor-prefetch-{depth}"),
            s => s.name().to_string(),
        }
    }

    /// Faulting threads.
    pub fn threads(self) -> usize {
        match self {
            Scenario::Throughput { threads }
            | Scenario::FloorThroughput { threads }
            | Scenario::Prefetch { threads, .. } => threads,
            _ => 1,
        }
    }

    /// Whether this is a hand-written floor (no cluster, no protocol).
    pub fn is_floor(self) -> bool {
        matches!(
            self,
            Scenario::Floor | Scenario::FloorThroughput { .. } | Scenario::FloorPrefetch { .. }
        )
    }

    /// Whether the scenario needs a running cluster (the floors do not).
    pub fn needs_cluster(self) -> bool {
        !self.is_floor()
    }

    /// The floor whose rate (faults/s, pages/s) bounds this row's, measured in the same run:
    /// `floor-throughput-tN` for `throughput-tN`, `floor-prefetch-D` for `prefetch-D` (one
    /// thread; the floor has no multi-threaded form, so `prefetch-D-tN` has none), and a rate
    /// floor itself. `None` for the latency rows (their floor is `floor`, by p50).
    pub fn rate_floor(self) -> Option<Scenario> {
        match self {
            Scenario::Throughput { threads } => Some(Scenario::FloorThroughput { threads }),
            Scenario::Prefetch { depth, threads: 1 } => Some(Scenario::FloorPrefetch { depth }),
            Scenario::FloorThroughput { .. } | Scenario::FloorPrefetch { .. } => Some(self),
            _ => None,
        }
    }
}

/// The scenarios of a run and the pages they need.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenarios in the order they run.
    pub scenarios: Vec<Scenario>,
    /// Pages per latency scenario (samples and warm-up).
    pub samples: usize,
    /// Faults per throughput row.
    pub tp_faults: usize,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Pages homed on node 0.
    pub local_pages: u64,
    /// Pages homed on node 1.
    pub remote_pages: u64,
    /// Helper nodes homing the throughput rows' pages (nodes 1..=homes; 1 by default).
    pub homes: usize,
    /// Pages homed on each of nodes 2..=homes (their share of the throughput rows).
    pub home_pages: u64,
    /// The whole address space in pages, when `--space` sets it (node 1 contributes the rest).
    pub space_pages: Option<u64>,
}

/// Pages one home holds for a throughput row of `threads` threads faulting `tp_faults` in
/// all, spread over `homes` homes page by page: thread `t`'s page `i` lives on home
/// `(t + i) % homes`, so each home holds at most `ceil(per / homes)` pages of each thread.
pub fn tp_pages_per_home(tp_faults: usize, threads: usize, homes: usize) -> u64 {
    let per = tp_faults.div_ceil(threads);
    (per.div_ceil(homes.max(1)) * threads) as u64
}

/// Pages kept free at the start of each range (never used as samples).
const GUARD_PAGES: u64 = 16;

impl Plan {
    /// Builds the plan from the selected names (empty: all); `samples` counts the pages one
    /// latency scenario touches (its warm-up included). A rate floor runs whenever the row it
    /// bounds does (`throughput` brings `floor-throughput`, `prefetch` brings
    /// `floor-prefetch`), or alone when named; each follows the row it bounds.
    pub fn new(
        names: &[String],
        max_sharers: usize,
        threads: &[usize],
        samples: usize,
        tp_faults: usize,
        prefetch_depth: u32,
    ) -> Result<Plan, PlanError> {
        if !(2..=64).contains(&prefetch_depth) {
            return Err(PlanError::PrefetchDepth(prefetch_depth));
        }
        if max_sharers > 16 {
            return Err(PlanError::Sharers(max_sharers));
        }
        if let Some(&t) = threads.iter().find(|&&t| t == 0 || t > 256) {
            return Err(PlanError::Threads(t));
        }
        const ALL: [&str; 12] = [
            "floor",
            "local-zero",
            "remote-read",
            "remote-read-shared",
            "remote-read-fwd",
            "remote-write",
            "upgrade",
            "pingpong",
            "throughput",
            "prefetch",
            "floor-throughput",
            "floor-prefetch",
        ];
        for n in names {
            if !ALL.contains(&n.as_str()) {
                return Err(PlanError::Unknown(n.clone()));
            }
        }
        let want = |n: &str| names.is_empty() || names.iter().any(|x| x == n);
        let mut scenarios = Vec::new();
        if want("floor") {
            scenarios.push(Scenario::Floor);
        }
        if want("local-zero") {
            scenarios.push(Scenario::LocalZero);
        }
        if want("remote-read") {
            scenarios.push(Scenario::RemoteRead);
        }
        if want("remote-read-shared") {
            scenarios.push(Scenario::RemoteReadShared);
        }
        if want("remote-read-fwd") {
            scenarios.push(Scenario::RemoteReadFwd);
        }
        if want("remote-write") {
            scenarios.extend((0..=max_sharers).map(|k| Scenario::RemoteWrite { k }));
        }
        if want("upgrade") {
            scenarios.push(Scenario::Upgrade);
        }
        if want("pingpong") {
            scenarios.push(Scenario::PingPong);
        }
        let tp = want("throughput");
        let tp_floor = tp || want("floor-throughput");
        for &t in threads {
            if tp {
                scenarios.push(Scenario::Throughput { threads: t });
            }
            if tp_floor {
                scenarios.push(Scenario::FloorThroughput { threads: t });
            }
        }
        // `prefetch` runs once per thread count; its (one-thread) floor follows the
        // one-thread row, or ends the list when there is none.
        let depth = prefetch_depth;
        let pf = want("prefetch");
        let pf_floor = pf || want("floor-prefetch");
        for &t in threads {
            if pf {
                scenarios.push(Scenario::Prefetch { depth, threads: t });
            }
            if pf_floor && t == 1 {
                scenarios.push(Scenario::FloorPrefetch { depth });
            }
        }
        if pf_floor && !threads.contains(&1) {
            scenarios.push(Scenario::FloorPrefetch { depth });
        }
        let mut nodes = 2;
        let mut local = 0u64;
        let mut remote = 0u64;
        for s in &scenarios {
            match *s {
                // The floors map their own memory.
                Scenario::Floor
                | Scenario::FloorThroughput { .. }
                | Scenario::FloorPrefetch { .. } => {}
                Scenario::LocalZero => local += samples as u64,
                Scenario::RemoteReadFwd | Scenario::RemoteReadShared => {
                    nodes = nodes.max(3);
                    remote += samples as u64;
                }
                Scenario::RemoteWrite { k } => {
                    nodes = nodes.max(2 + k);
                    remote += samples as u64;
                }
                Scenario::PingPong => remote += 1,
                Scenario::Throughput { threads } => {
                    // Every thread gets the same share, rounded up.
                    remote += (tp_faults.div_ceil(threads) * threads) as u64;
                }
                Scenario::RemoteRead | Scenario::Upgrade => remote += samples as u64,
                // Every thread scans the same share, rounded up; the last may prefetch up to
                // `depth` pages past the end: keep them fresh.
                Scenario::Prefetch { depth, threads } => {
                    remote += (tp_faults.div_ceil(threads) * threads + depth as usize) as u64
                }
            }
        }
        Ok(Plan {
            scenarios,
            samples,
            tp_faults,
            nodes,
            local_pages: local + GUARD_PAGES,
            remote_pages: remote + GUARD_PAGES,
            homes: 1,
            home_pages: 0,
            space_pages: None,
        })
    }

    /// Spreads the throughput rows' pages over nodes 1..=`homes` (the cluster grows to at
    /// least `homes + 1` nodes), and, with `space` (bytes), makes the whole address space
    /// that large: node 1 contributes what the scenarios leave, reserved and never touched.
    /// `homes` 1 and no `space` leave the plan as it is.
    pub fn scale(mut self, homes: usize, space: Option<u64>) -> Result<Plan, PlanError> {
        if !(1..=MAX_HOMES).contains(&homes) {
            return Err(PlanError::Homes(homes));
        }
        if homes > 1 {
            for s in &self.scenarios {
                if let Scenario::Throughput { threads } = *s {
                    let alone = tp_pages_per_home(self.tp_faults, threads, 1);
                    let share = tp_pages_per_home(self.tp_faults, threads, homes);
                    self.remote_pages = self.remote_pages - alone + share;
                    self.home_pages += share;
                }
            }
            self.home_pages += GUARD_PAGES;
            self.homes = homes;
            self.nodes = self.nodes.max(homes + 1);
        }
        if let Some(asked) = space {
            let need = self.used_pages() * PAGE;
            if asked < need || asked > MAX_SPACE {
                return Err(PlanError::Space { asked, need });
            }
            self.space_pages = Some(asked / PAGE);
        }
        Ok(self)
    }

    /// Pages the scenarios need, over all nodes.
    fn used_pages(&self) -> u64 {
        self.local_pages + self.remote_pages + (self.homes as u64 - 1) * self.home_pages
    }

    /// Bytes each node contributes, by node id.
    pub fn memory(&self) -> Vec<u64> {
        let pad = self
            .space_pages
            .map_or(0, |s| s.saturating_sub(self.used_pages()));
        (0..self.nodes)
            .map(|n| match n {
                0 => self.local_pages * PAGE,
                1 => (self.remote_pages + pad) * PAGE,
                n if n <= self.homes => self.home_pages * PAGE,
                _ => 0,
            })
            .collect()
    }
}

/// Hands out fresh pages of one node's range, in order.
#[derive(Debug, Clone)]
pub struct PageCursor {
    next: u64,
    end: u64,
}

impl PageCursor {
    /// The range `[first, first + count)`, skipping its guard pages.
    pub fn new(first: u64, count: u64) -> Self {
        Self {
            next: first + GUARD_PAGES.min(count),
            end: first + count,
        }
    }

    /// The first of `n` consecutive fresh pages, or `None` when the range is used up.
    pub fn take(&mut self, n: u64) -> Option<u64> {
        if self.end - self.next < n {
            return None;
        }
        let p = self.next;
        self.next += n;
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_sizes_ranges_for_every_scenario() {
        let p = Plan::new(&[], 2, &[1, 4, 16], 100, 50, 16).unwrap();
        assert_eq!(p.nodes, 4, "k = 2 needs two sharers besides the home");
        assert_eq!(p.scenarios.first(), Some(&Scenario::Floor));
        assert_eq!(
            p.scenarios.last(),
            Some(&Scenario::Prefetch {
                depth: 16,
                threads: 16
            })
        );
        let labels: Vec<String> = p.scenarios.iter().map(|s| s.label()).collect();
        for l in [
            "remote-write-k0",
            "remote-write-k2",
            "throughput-t16",
            "floor-throughput-t16",
            "pingpong",
            "prefetch-16",
            "floor-prefetch-16",
            "prefetch-16-t4",
            "prefetch-16-t16",
        ] {
            assert!(labels.iter().any(|x| x == l), "{l} missing from {labels:?}");
        }
        // read, shared, fwd, 3 writes, upgrade = 7 × 100; pingpong 1; throughput 50 + 52 + 64;
        // prefetch (50 + 16) + (52 + 16) + (64 + 16); the floors map their own memory.
        assert_eq!(
            p.remote_pages,
            700 + 1 + 50 + 52 + 64 + 66 + 68 + 80 + GUARD_PAGES
        );
        assert_eq!(p.local_pages, 100 + GUARD_PAGES);
        assert_eq!(p.memory()[2], 0);
    }

    #[test]
    fn selection_and_errors() {
        let p = Plan::new(&["remote-read".into()], 2, &[1], 10, 10, 16).unwrap();
        assert_eq!(p.scenarios, vec![Scenario::RemoteRead]);
        assert_eq!(p.nodes, 2);
        assert_eq!(
            Plan::new(&["nope".into()], 2, &[1], 10, 10, 16).unwrap_err(),
            PlanError::Unknown("nope".into())
        );
        let msg = PlanError::Unknown("nope".into()).to_string();
        assert!(
            msg.contains("floor-throughput") && msg.contains("floor-prefetch"),
            "{msg}"
        );
        assert_eq!(
            Plan::new(&[], 2, &[0], 10, 10, 16).unwrap_err(),
            PlanError::Threads(0)
        );
        assert_eq!(
            Plan::new(&[], 2, &[1], 10, 10, 1).unwrap_err(),
            PlanError::PrefetchDepth(1)
        );
    }

    #[test]
    fn rate_floors_follow_the_rows_they_bound() {
        let names = |n: &[&str]| -> Vec<String> { n.iter().map(|x| x.to_string()).collect() };
        let tp = |t| Scenario::Throughput { threads: t };
        let ftp = |t| Scenario::FloorThroughput { threads: t };
        let pft = |t| Scenario::Prefetch {
            depth: 8,
            threads: t,
        };
        let (pf, fpf) = (pft(1), Scenario::FloorPrefetch { depth: 8 });
        // A default run has every floor, each right after the row it bounds.
        let all = Plan::new(&[], 0, &[1, 4], 10, 10, 8).unwrap();
        let tail = &all.scenarios[all.scenarios.len() - 7..];
        assert_eq!(tail, [tp(1), ftp(1), tp(4), ftp(4), pf, fpf, pft(4)]);
        // Selecting the bounded rows brings their floors; not the latency floor.
        let p = Plan::new(&names(&["throughput", "prefetch"]), 0, &[1, 4], 10, 10, 8).unwrap();
        assert_eq!(p.scenarios, [tp(1), ftp(1), tp(4), ftp(4), pf, fpf, pft(4)]);
        // Without a one-thread row, the prefetch floor still runs, last.
        let p = Plan::new(&names(&["prefetch"]), 0, &[16], 10, 10, 8).unwrap();
        assert_eq!(p.scenarios, [pft(16), fpf]);
        assert_eq!(pft(16).label(), "prefetch-8-t16");
        assert_eq!(pft(16).threads(), 16);
        assert_eq!(pft(16).rate_floor(), None);
        // A floor alone, by name: no cluster row, no cluster memory.
        let p = Plan::new(&names(&["floor-throughput"]), 0, &[16], 10, 10, 8).unwrap();
        assert_eq!(p.scenarios, [ftp(16)]);
        let p = Plan::new(&names(&["floor-prefetch"]), 0, &[1], 10, 10, 8).unwrap();
        assert_eq!(p.scenarios, [fpf]);
        assert!(p.scenarios.iter().all(|s| !s.needs_cluster()));
        assert_eq!(p.remote_pages, GUARD_PAGES);
        // `floor` is the latency floor only.
        let p = Plan::new(&names(&["floor"]), 0, &[1], 10, 10, 8).unwrap();
        assert_eq!(p.scenarios, [Scenario::Floor]);
        // Names, labels, threads, and which floor bounds which rate.
        assert_eq!(ftp(16).label(), "floor-throughput-t16");
        assert_eq!(ftp(16).name(), "floor-throughput");
        assert_eq!(ftp(16).threads(), 16);
        assert_eq!(fpf.label(), "floor-prefetch-8");
        assert_eq!(fpf.name(), "floor-prefetch");
        assert_eq!(tp(4).rate_floor(), Some(ftp(4)));
        assert_eq!(ftp(4).rate_floor(), Some(ftp(4)));
        assert_eq!(pf.rate_floor(), Some(fpf));
        assert_eq!(Scenario::RemoteRead.rate_floor(), None);
        assert_eq!(Scenario::Floor.rate_floor(), None);
        assert!(Scenario::Floor.is_floor() && ftp(1).is_floor() && fpf.is_floor());
        assert!(!tp(1).is_floor() && !pf.is_floor());
    }

    #[test]
    fn homes_spread_the_throughput_pages_and_grow_the_cluster() {
        let names = vec!["throughput".to_string()];
        let one = Plan::new(&names, 0, &[1, 16], 10, 1000, 8).unwrap();
        assert_eq!(one.nodes, 2);
        // Unchanged by homes = 1 and no space: the default run keeps its layout.
        let same = one.clone().scale(1, None).unwrap();
        assert_eq!(same.memory(), one.memory());
        assert_eq!(one.memory().len(), 2);
        // 7 homes: 8 nodes; thread t's page i on home (t + i) % 7, so each home holds
        // ceil(per / 7) pages of each thread: t1 1000 → 143, t16 63 → 9 × 16 = 144.
        assert_eq!(tp_pages_per_home(1000, 1, 7), 143);
        assert_eq!(tp_pages_per_home(1000, 16, 7), 144);
        assert_eq!(tp_pages_per_home(1000, 16, 1), 63 * 16);
        let p = one.clone().scale(7, None).unwrap();
        assert_eq!(p.nodes, 8);
        assert_eq!(p.remote_pages, 143 + 144 + GUARD_PAGES);
        assert_eq!(p.home_pages, 143 + 144 + GUARD_PAGES);
        let m = p.memory();
        assert_eq!(m.len(), 8);
        assert!(m[1..].iter().all(|&b| b == p.home_pages * 4096), "{m:?}");
        // Every page a thread touches exists: the homes hold at least the faults asked.
        assert!(7 * tp_pages_per_home(1000, 16, 7) >= 1000);
        // More nodes than homes (remote-write k = 3 needs 5): the extra nodes hold nothing.
        let w = Plan::new(
            &["throughput".into(), "remote-write".into()],
            3,
            &[4],
            10,
            100,
            8,
        )
        .unwrap()
        .scale(2, None)
        .unwrap();
        assert_eq!(w.nodes, 5);
        assert_eq!(&w.memory()[3..], &[0, 0]);
        assert_eq!(one.clone().scale(0, None).unwrap_err(), PlanError::Homes(0));
        assert_eq!(
            one.scale(MAX_HOMES + 1, None).unwrap_err(),
            PlanError::Homes(MAX_HOMES + 1)
        );
    }

    #[test]
    fn space_pads_node_one_and_refuses_what_does_not_fit() {
        let p = Plan::new(&["remote-read".into()], 0, &[1], 100, 10, 8).unwrap();
        let need = (p.local_pages + p.remote_pages) * 4096;
        let g = p.clone().scale(1, Some(64 << 30)).unwrap();
        let m = g.memory();
        assert_eq!(m.iter().sum::<u64>(), 64 << 30);
        assert_eq!(m[0], p.memory()[0], "node 0 keeps its small range");
        assert_eq!(m[1], (64 << 30) - m[0]);
        // With homes, node 1 still takes the rest; the other homes keep their share.
        let tp = Plan::new(&["throughput".into()], 0, &[4], 10, 100, 8).unwrap();
        let h = tp.scale(3, Some(1 << 30)).unwrap();
        assert_eq!(h.memory().iter().sum::<u64>(), 1 << 30);
        assert_eq!(h.memory()[3], h.home_pages * 4096);
        // A size that is not a whole number of pages rounds down.
        let r = p.clone().scale(1, Some((1 << 30) + 100)).unwrap();
        assert_eq!(r.memory().iter().sum::<u64>(), 1 << 30);
        assert_eq!(
            p.clone().scale(1, Some(need - 1)).unwrap_err(),
            PlanError::Space {
                asked: need - 1,
                need
            }
        );
        assert!(p.clone().scale(1, Some(need)).is_ok());
        let e = p.scale(1, Some(MAX_SPACE + 1)).unwrap_err();
        assert!(e.to_string().contains("64G"), "{e}");
    }

    #[test]
    fn cursor_hands_out_disjoint_pages_and_stops_at_the_end() {
        let mut c = PageCursor::new(100, GUARD_PAGES + 10);
        assert_eq!(c.take(4), Some(100 + GUARD_PAGES));
        assert_eq!(c.take(6), Some(104 + GUARD_PAGES));
        assert_eq!(c.take(1), None);
    }
}
