//! The measured loops. Each scenario prepares fresh pages through the helper nodes (untimed),
//! then a faulting thread pinned to its CPU touches each page once between two
//! `CLOCK_MONOTONIC` reads: the sample is the fault's service time as that thread sees it.
//! Every value read is checked against the writer the protocol says it must come from.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;

use engine::clock::now_ns;
use engine::histlog::HistLog;
use engine::node::Node;
use engine::stats::{FaultKind, Locality};
use thiserror::Error;

use super::cluster::{Cluster, ClusterError};
use super::plan::{PageCursor, Scenario};
use super::progress::Progress;
use super::report::PrefetchCounts;
use super::stamp;
use crate::Latency;

/// Pages node 0 reads (untimed) before timing writes to them in `upgrade`.
const UPGRADE_BATCH: usize = 256;
/// Pages read back after a write scenario to check that the home sees node 0's writes.
const WRITE_CHECK: u64 = 256;
/// How often a scenario's HDR log gets a new interval.
const HLOG_INTERVAL_NS: u64 = 1_000_000_000;

/// Why a scenario could not be measured.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// A helper node failed a set-up command (or a check).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The plan ran out of fresh pages (a bug in the sizing).
    #[error("{0}: no fresh pages left in the address space")]
    Exhausted(String),
    /// Node 0 read values the protocol forbids.
    #[error("{scenario}: {wrong} of the values node 0 read were not the last ones written")]
    WrongData {
        /// The scenario.
        scenario: String,
        /// How many.
        wrong: u64,
    },
    /// A scenario that does not run on the cluster (the floors have their own runner).
    #[error("{0} is not a cluster scenario")]
    NotCluster(String),
    /// The HDR log could not be written.
    #[error(transparent)]
    Hlog(#[from] engine::histlog::HistLogError),
}

/// One sample: the page touched and the thread's clock before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The page.
    pub page: u64,
    /// Before the touch (ns, `clock::now_ns`).
    pub t0: u64,
    /// After it returned.
    pub t1: u64,
}

/// Collects the samples of one scenario (or of one thread of it).
#[derive(Debug)]
pub struct Recorder<'a> {
    /// Service times.
    pub lat: Latency,
    samples: Vec<Sample>,
    keep: bool,
    hlog: Option<(HistLog, String)>,
    last_dump: u64,
    progress: &'a Progress,
    unreported: u64,
    active_since: Option<u64>,
    measured_ns: u64,
    /// Node 0's counters over a prefetch row.
    pub prefetch: Option<PrefetchCounts>,
}

impl<'a> Recorder<'a> {
    /// A recorder for up to `capacity` samples; `keep` keeps each sample (for the
    /// breakdown); `hlog` writes an interval log with the given tag.
    pub fn new(
        progress: &'a Progress,
        keep: bool,
        capacity: usize,
        hlog: Option<(HistLog, String)>,
    ) -> Self {
        Self {
            lat: Latency::new(),
            samples: Vec::with_capacity(if keep { capacity } else { 0 }),
            keep,
            hlog,
            last_dump: now_ns(),
            progress,
            unreported: 0,
            active_since: None,
            measured_ns: 0,
            prefetch: None,
        }
    }

    /// A recorder for one thread of a multi-thread row: the same progress line and sample
    /// keeping, no HDR log (this recorder writes it once it has absorbed the threads').
    pub fn for_thread(&self, capacity: usize) -> Recorder<'a> {
        Recorder::new(self.progress, self.keep, capacity, None)
    }

    /// Measured time starts (again) now.
    pub fn restart_clock(&mut self) {
        self.active_since = Some(now_ns());
    }

    /// Measured time stops now (set-up follows).
    pub fn pause_clock(&mut self) {
        if let Some(s) = self.active_since.take() {
            self.measured_ns += now_ns().saturating_sub(s);
        }
    }

    /// Forgets the time since the clock was last started (a warm-up sample).
    pub fn discard_clock(&mut self) {
        self.active_since = None;
    }

    /// Records one sample.
    #[inline]
    pub fn record(&mut self, page: u64, t0: u64, t1: u64) {
        self.lat.record(t1.saturating_sub(t0));
        if self.keep && self.samples.len() < self.samples.capacity() {
            self.samples.push(Sample { page, t0, t1 });
        }
        self.unreported += 1;
        if self.unreported == 64 {
            self.progress.add(64);
            self.unreported = 0;
            if self.hlog.is_some() && t1.saturating_sub(self.last_dump) >= HLOG_INTERVAL_NS {
                self.dump();
                self.last_dump = now_ns();
            }
        }
    }

    fn dump(&mut self) {
        if let Some((log, tag)) = &mut self.hlog {
            if let Err(e) = log.dump(&[(tag.clone(), self.lat.histogram().clone())]) {
                eprintln!("fault-latency: {e}");
                self.hlog = None;
            }
        }
    }

    /// The scenario is over: `total_ns` of measured time if the clock was never started.
    pub fn finish(&mut self, total_ns: u64) {
        self.pause_clock();
        if self.measured_ns == 0 {
            self.measured_ns = total_ns;
        }
        self.progress.add(self.unreported);
        self.unreported = 0;
        self.dump();
    }

    /// Adds another recorder's samples (threads of one scenario).
    pub fn absorb(&mut self, other: Recorder<'_>) {
        self.lat.merge(&other.lat);
        self.samples.extend(other.samples);
    }

    /// Measured time (ns).
    pub fn measured_ns(&self) -> u64 {
        self.measured_ns
    }

    /// Overrides the measured time (throughput: the wall time of all threads).
    pub fn set_measured_ns(&mut self, ns: u64) {
        self.measured_ns = ns;
    }

    /// The samples kept.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

/// What scenarios share: the cluster, placement, sizes, page cursors.
#[derive(Debug)]
pub struct Ctx<'c> {
    /// The running cluster.
    pub cluster: &'c mut Cluster,
    /// The progress line.
    pub progress: &'c Progress,
    /// CPUs of the faulting threads.
    pub fault_cpus: Vec<usize>,
    /// Samples per latency scenario.
    pub samples: usize,
    /// Unrecorded samples before them.
    pub warmup: usize,
    /// Faults per throughput row.
    pub tp_faults: usize,
    /// Fresh pages homed on node 0.
    pub local: PageCursor,
    /// Fresh pages homed on node 1.
    pub remote: PageCursor,
    /// Fresh pages homed on nodes 2.. (`--homes`: the throughput rows' further homes).
    pub homes: Vec<PageCursor>,
    /// Keep every sample (for the breakdown).
    pub keep_samples: bool,
    /// Where HDR logs go, and the suffix naming the axis values (`uring.spin`).
    pub hlog: Option<(PathBuf, String)>,
}

/// Word 0 of `page` in node 0's region. Pages come from the plan's cursors, which stay
/// inside the address space; anything else is a bug in the benchmark.
fn word(node: &Node, page: u64) -> &AtomicU64 {
    assert!(
        page < node.layout().end_page(),
        "page {page} is outside the address space"
    );
    // SAFETY: the page is inside the region (checked above), which lives as long as `node`;
    // word 0 of a page is 8-byte aligned and only ever accessed atomically.
    unsafe { AtomicU64::from_ptr(node.page_ptr(page).cast()) }
}

/// Touches `page` for reading and returns the value and the two clock readings.
#[inline]
fn timed_read(node: &Node, page: u64) -> (u64, u64, u64) {
    let w = word(node, page);
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    let t0 = now_ns();
    let v = w.load(Ordering::Acquire);
    let t1 = now_ns();
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    (v, t0, t1)
}

/// Writes `value` to `page`; returns the two clock readings.
#[inline]
fn timed_write(node: &Node, page: u64, value: u64) -> (u64, u64) {
    let w = word(node, page);
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    let t0 = now_ns();
    w.store(value, Ordering::Release);
    let t1 = now_ns();
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    (t0, t1)
}

fn pin(cpu: usize) {
    if let Err(e) = crate::pin_current_thread(cpu) {
        eprintln!("fault-latency: {e}");
    }
}

impl<'c> Ctx<'c> {
    fn recorder(&self, s: Scenario, capacity: usize) -> Recorder<'c> {
        let hlog = self.hlog.as_ref().map(|(dir, suffix)| {
            let label = s.label();
            let log = HistLog::new(
                dir.join(format!("{label}.{suffix}.hlog")),
                vec![format!(
                    "fault-latency {label} ({suffix}): per-fault service time in ns as the \
                     faulting thread sees it"
                )],
            );
            (log, label)
        });
        Recorder::new(self.progress, self.keep_samples, capacity, hlog)
    }

    fn fresh(&mut self, s: Scenario, remote: bool, n: usize) -> Result<u64, ScenarioError> {
        let c = if remote {
            &mut self.remote
        } else {
            &mut self.local
        };
        c.take(n as u64)
            .ok_or_else(|| ScenarioError::Exhausted(s.label()))
    }

    /// Set-up is over: with `--breakdown`, forget the answers the helpers sent so far, so that
    /// the next [`Cluster::served`] covers the timed part only.
    fn timed_begins(&mut self) -> Result<(), ScenarioError> {
        if self.keep_samples {
            self.cluster.served()?;
        }
        Ok(())
    }

    /// Runs one scenario (not the floor); returns its samples.
    pub fn run(&mut self, s: Scenario) -> Result<Recorder<'c>, ScenarioError> {
        let n = self.samples + self.warmup;
        let (rec, wrong) = match s {
            Scenario::Floor | Scenario::FloorThroughput { .. } | Scenario::FloorPrefetch { .. } => {
                return Err(ScenarioError::NotCluster(s.label()))
            }
            Scenario::LocalZero => {
                let first = self.fresh(s, false, n)?;
                self.timed_begins()?;
                self.read_loop(s, first, None)
            }
            Scenario::RemoteRead => {
                let first = self.fresh(s, true, n)?;
                self.cluster.helper(1).call(&format!("write {first} {n}"))?;
                self.timed_begins()?;
                self.read_loop(s, first, Some(1))
            }
            Scenario::RemoteReadShared => {
                let first = self.fresh(s, true, n)?;
                self.cluster.helper(1).call(&format!("write {first} {n}"))?;
                self.cluster
                    .helper(2)
                    .call(&format!("read {first} {n} 1"))?;
                self.timed_begins()?;
                self.read_loop(s, first, Some(1))
            }
            Scenario::RemoteReadFwd => {
                let first = self.fresh(s, true, n)?;
                self.cluster.helper(2).call(&format!("write {first} {n}"))?;
                self.timed_begins()?;
                self.read_loop(s, first, Some(2))
            }
            Scenario::RemoteWrite { k } => {
                let first = self.fresh(s, true, n)?;
                self.cluster.helper(1).call(&format!("write {first} {n}"))?;
                for j in 0..k {
                    let id = 2 + j as u16;
                    self.cluster
                        .helper(id)
                        .call(&format!("read {first} {n} 1"))?;
                }
                self.timed_begins()?;
                let r = self.write_loop(s, first);
                // The home must now read what node 0 wrote.
                let check = WRITE_CHECK.min(n as u64);
                self.cluster
                    .helper(1)
                    .call(&format!("read {first} {check} 0"))?;
                r
            }
            Scenario::Upgrade => {
                let first = self.fresh(s, true, n)?;
                self.cluster.helper(1).call(&format!("write {first} {n}"))?;
                self.timed_begins()?;
                self.upgrade_loop(s, first)
            }
            Scenario::PingPong => {
                let page = self.fresh(s, true, 1)?;
                self.timed_begins()?;
                self.pingpong_loop(s, page)?
            }
            Scenario::Prefetch { depth, threads } => {
                let per = self.tp_faults.div_ceil(threads);
                let n = per * threads;
                // `depth` more pages stay fresh past the end: the last scan prefetches into
                // them.
                let first = self.fresh(s, true, n + depth as usize)?;
                self.cluster.helper(1).call(&format!("write {first} {n}"))?;
                self.timed_begins()?;
                self.prefetch_scan(s, first, per, threads, depth)
            }
            Scenario::Throughput { threads } => {
                let per = self.tp_faults.div_ceil(threads);
                // One block per home (node 1, then nodes 2..): thread t's page i lives on
                // home (t + i) % homes, at index t * share + i / homes of that home's block.
                let homes = self.homes.len() + 1;
                let share = per.div_ceil(homes);
                let mut firsts = vec![self.fresh(s, true, share * threads)?];
                for c in self.homes.iter_mut() {
                    let f = c
                        .take((share * threads) as u64)
                        .ok_or_else(|| ScenarioError::Exhausted(s.label()))?;
                    firsts.push(f);
                }
                for (h, &first) in firsts.iter().enumerate() {
                    self.cluster
                        .helper(h as u16 + 1)
                        .call(&format!("write {first} {}", share * threads))?;
                }
                self.timed_begins()?;
                self.throughput(s, &firsts, per, threads)
            }
        };
        if wrong != 0 {
            return Err(ScenarioError::WrongData {
                scenario: s.label(),
                wrong,
            });
        }
        Ok(rec)
    }

    /// What a single-threaded latency loop needs: its CPU, the warm-up samples, and the
    /// pages it touches in all (warm-up included).
    fn single_thread(&self) -> (usize, u64, u64) {
        (
            self.fault_cpus[0],
            self.warmup as u64,
            (self.samples + self.warmup) as u64,
        )
    }

    /// One thread reads `n` fresh pages; `writer` is the node whose stamp they must hold
    /// (`None`: never written, so zero).
    fn read_loop(&self, s: Scenario, first: u64, writer: Option<u16>) -> (Recorder<'c>, u64) {
        let mut rec = self.recorder(s, self.samples);
        let node = &*self.cluster.node;
        let (cpu, warmup, n) = self.single_thread();
        let wrong = std::thread::scope(|sc| {
            sc.spawn(|| {
                pin(cpu);
                let mut wrong = 0;
                for i in 0..n {
                    let p = first + i;
                    if i == warmup {
                        rec.restart_clock();
                    }
                    let (v, t0, t1) = timed_read(node, p);
                    if i >= warmup {
                        rec.record(p, t0, t1);
                    }
                    if v != writer.map_or(0, |w| stamp(w, p)) {
                        wrong += 1;
                    }
                }
                rec.finish(0);
                wrong
            })
            .join()
            .expect("the faulting thread does not panic")
        });
        (rec, wrong)
    }

    fn write_loop(&self, s: Scenario, first: u64) -> (Recorder<'c>, u64) {
        let mut rec = self.recorder(s, self.samples);
        let node = &*self.cluster.node;
        let (cpu, warmup, n) = self.single_thread();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                pin(cpu);
                for i in 0..n {
                    let p = first + i;
                    if i == warmup {
                        rec.restart_clock();
                    }
                    let (t0, t1) = timed_write(node, p, stamp(0, p));
                    if i >= warmup {
                        rec.record(p, t0, t1);
                    }
                }
                rec.finish(0);
            })
            .join()
            .expect("the faulting thread does not panic")
        });
        (rec, 0)
    }

    /// Reads a batch of pages (a replica each, untimed), then times a write to each.
    fn upgrade_loop(&self, s: Scenario, first: u64) -> (Recorder<'c>, u64) {
        let mut rec = self.recorder(s, self.samples);
        let node = &*self.cluster.node;
        let (cpu, warmup, n) = self.single_thread();
        let wrong = std::thread::scope(|sc| {
            sc.spawn(|| {
                pin(cpu);
                let mut wrong = 0;
                let mut i = 0u64;
                while i < n {
                    let end = (i + UPGRADE_BATCH as u64).min(n);
                    for j in i..end {
                        let p = first + j;
                        if word(node, p).load(Ordering::Acquire) != stamp(1, p) {
                            wrong += 1;
                        }
                    }
                    if end > warmup {
                        rec.restart_clock();
                    }
                    for j in i..end {
                        let p = first + j;
                        let (t0, t1) = timed_write(node, p, stamp(0, p));
                        if j >= warmup {
                            rec.record(p, t0, t1);
                        }
                    }
                    rec.pause_clock();
                    i = end;
                }
                rec.finish(0);
                wrong
            })
            .join()
            .expect("the faulting thread does not panic")
        });
        (rec, wrong)
    }

    /// Node 1 and node 0 take turns incrementing word 0 of one page; node 0's increments
    /// (write misses on a page node 1 just wrote) are timed.
    fn pingpong_loop(
        &mut self,
        s: Scenario,
        page: u64,
    ) -> Result<(Recorder<'c>, u64), ScenarioError> {
        let mut rec = self.recorder(s, self.samples);
        let (cpu, warmup, n) = self.single_thread();
        let cluster = &mut *self.cluster;
        let node = cluster.node.clone();
        let wrong = std::thread::scope(|sc| {
            sc.spawn(|| -> Result<u64, ScenarioError> {
                pin(cpu);
                let mut wrong = 0;
                let w = word(&node, page);
                for i in 0..n {
                    let reply = cluster.helper(1).call(&format!("incr {page}"))?;
                    let theirs: u64 = reply.trim().parse().unwrap_or(u64::MAX);
                    // Each round waits for node 1's turn: only node 0's write counts as
                    // measured time.
                    rec.restart_clock();
                    std::sync::atomic::compiler_fence(Ordering::SeqCst);
                    let t0 = now_ns();
                    let before = w.fetch_add(1, Ordering::AcqRel);
                    let t1 = now_ns();
                    std::sync::atomic::compiler_fence(Ordering::SeqCst);
                    if i >= warmup {
                        rec.pause_clock();
                        rec.record(page, t0, t1);
                    } else {
                        rec.discard_clock();
                    }
                    if before != theirs {
                        wrong += 1;
                    }
                }
                rec.finish(0);
                Ok(wrong)
            })
            .join()
            .expect("the faulting thread does not panic")
        })?;
        Ok((rec, wrong))
    }

    /// One thread reads `n` fresh remote pages in order with node 0's prefetch at `depth`;
    /// every touch is timed (a hit takes tens of ns, a miss a fault), the rate is pages/s.
    fn prefetch_scan(
        &self,
        s: Scenario,
        first: u64,
        per: usize,
        threads: usize,
        depth: u32,
    ) -> (Recorder<'c>, u64) {
        let mut total = self.recorder(s, per * threads);
        let node = &*self.cluster.node;
        let counts = || {
            let st = node.stats();
            PrefetchCounts {
                faults: engine::summary::served(st, FaultKind::Read, Locality::Remote),
                requests: st
                    .iter()
                    .map(|x| x.proto.prefetches.load(Ordering::Relaxed))
                    .sum(),
            }
        };
        // The shards publish their protocol counters every few turns and whenever idle:
        // give them a moment before reading, on both sides of the scan.
        let settle = || std::thread::sleep(std::time::Duration::from_millis(20));
        settle();
        let before = counts();
        node.state().set_prefetch(depth);
        // Thread t scans pages t * per .. (t + 1) * per of the block, front to back.
        let wrong = self.read_in_threads(&mut total, threads, per, |t, i| {
            (first + t * per as u64 + i, 1)
        });
        node.state().set_prefetch(0);
        settle();
        let after = counts();
        total.prefetch = Some(PrefetchCounts {
            faults: after.faults - before.faults,
            requests: after.requests - before.requests,
        });
        (total, wrong)
    }

    /// Runs `threads` threads on the fault CPUs (round-robin), started together; thread `t`
    /// reads its `per` pages in order, page `i` being `page(t, i)` = (page number, the node
    /// whose stamp it must hold). Their samples go into `total`, which gets the wall time
    /// from the start to the last thread's end and writes its HDR log (one interval: the
    /// threads' samples are merged at the end). Returns the number of wrong values read.
    fn read_in_threads<F>(
        &self,
        total: &mut Recorder<'c>,
        threads: usize,
        per: usize,
        page: F,
    ) -> u64
    where
        F: Fn(u64, u64) -> (u64, u16) + Sync,
    {
        let node = &*self.cluster.node;
        let barrier = Barrier::new(threads + 1);
        let (progress, keep) = (self.progress, self.keep_samples);
        let page = &page;
        let (results, wall) = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let cpu = self.fault_cpus[t % self.fault_cpus.len()];
                    let barrier = &barrier;
                    sc.spawn(move || {
                        pin(cpu);
                        let mut rec = Recorder::new(progress, keep, per, None);
                        let mut wrong = 0;
                        barrier.wait();
                        for i in 0..per as u64 {
                            let (p, home) = page(t as u64, i);
                            let (v, t0, t1) = timed_read(node, p);
                            rec.record(p, t0, t1);
                            if v != stamp(home, p) {
                                wrong += 1;
                            }
                        }
                        rec.finish(0);
                        (rec, wrong, now_ns())
                    })
                })
                .collect();
            barrier.wait();
            let start = now_ns();
            let mut results = Vec::with_capacity(threads);
            let mut end = start;
            for h in handles {
                let (rec, wrong, done) = h.join().expect("faulting threads do not panic");
                end = end.max(done);
                results.push((rec, wrong));
            }
            (results, end - start)
        });
        let mut wrong = 0;
        for (rec, w) in results {
            wrong += w;
            total.absorb(rec);
        }
        total.set_measured_ns(wall);
        total.finish(wall);
        wrong
    }

    /// `threads` threads, each reading its own `per` fresh pages as fast as it can. The pages
    /// come from one block per home (`firsts[h]` on node `h + 1`): thread `t`'s page `i` is
    /// on home `(t + i) % homes`, so every thread asks every home in turn.
    fn throughput(
        &self,
        s: Scenario,
        firsts: &[u64],
        per: usize,
        threads: usize,
    ) -> (Recorder<'c>, u64) {
        let homes = firsts.len() as u64;
        let share = per.div_ceil(firsts.len()) as u64;
        let mut total = self.recorder(s, per * threads);
        let wrong = self.read_in_threads(&mut total, threads, per, |t, i| {
            let h = (t + i) % homes;
            (firsts[h as usize] + t * share + i / homes, h as u16 + 1)
        });
        (total, wrong)
    }
}
