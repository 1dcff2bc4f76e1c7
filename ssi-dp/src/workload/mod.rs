//! Built-in workloads: worker threads in the node process operate on shared guest memory and
//! produce a result every node can verify exactly. They drive the demo and the multi-process
//! tests (`ssi-dp ... --workload NAME --ops N`).
//!
//! Every participating node runs the same workload; nodes meet at barriers kept in guest
//! memory itself (page 0). The run is: set-up, barrier, work, barrier, verify, hand cached
//! pages back home, final barrier. Nodes leave only after the final barrier, so no node's
//! departure takes a page another node still needs. The miss-ratio workloads (partition,
//! readmostly, queue, zipf) split their work into a warm-up and a measured phase, and report
//! the faults this node took in the measured phase against the accesses it made
//! (`measured`).

mod counters;
mod measured;
mod partition;
mod pingpong;
mod queue;
mod readmostly;
mod scan;
mod seqs;
mod share;
mod spinlock;
mod zipf;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::barrier::Barrier;
use engine::mem::{Mem, Plan, BARRIER_PAGE};
use engine::node::{Node, NodeError};
use engine::stats::ShardStats;

/// Why a workload could not run (a verdict of FAILED is a [`Report`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// `--workload` names no workload.
    #[error(
        "unknown workload {0:?}: use counters, lock, seqs, pingpong, demo, scan, private, \
         partition, readmostly, queue or zipf"
    )]
    UnknownKind(String),
    /// This node runs the workload but is not one of its participants.
    #[error("node {node} is not among the participants {participants:?}")]
    NotAParticipant {
        /// This node.
        node: u16,
        /// `--participants`.
        participants: Vec<u16>,
    },
    /// `--workers 0`.
    #[error("a workload needs at least one worker (--workers)")]
    NoWorkers,
    /// `pingpong` with other than two participants.
    #[error("pingpong needs exactly two participants")]
    PingPongParties,
    /// A participant did not join the cluster in time.
    #[error("a participant never became a member of this node's cluster")]
    ParticipantNeverJoined,
    /// A home has no room for the scan workload's table.
    #[error(
        "the scan workload needs {pages} pages ({} KiB) on every node that contributes memory; \
         give each at least --memory {}K",
        .pages * 4,
        .pages * 4
    )]
    ScanNeedsMemory {
        /// Pages needed on every home.
        pages: u64,
    },
    /// A home has no room for its part of a miss-ratio workload's table.
    #[error(
        "the {workload} workload needs {pages} pages ({} KiB) on every node that contributes \
         memory; give each at least --memory {}K{hint}",
        .pages.saturating_mul(4),
        .pages.saturating_mul(4)
    )]
    TableNeedsMemory {
        /// The workload.
        workload: &'static str,
        /// Pages needed on every home.
        pages: u64,
        /// What else would do (empty, or starting with ", ").
        hint: &'static str,
    },
    /// `queue` with a single participant.
    #[error(
        "the queue workload needs at least two participants (the first produces, the others \
         consume): start more nodes or list more in --participants"
    )]
    QueueParties,
    /// Handing cached pages back home at the end failed.
    #[error(transparent)]
    HandBack(#[from] NodeError),
}

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Lock-prefixed increments on counters spread over every home → exact totals.
    Counters,
    /// A spinlock in guest memory protecting a non-atomic counter and checksummed page-sized
    /// records → exact total, no torn or stale record ever seen under the lock.
    Lock,
    /// Random reads and writes of per-writer sequence numbers sharing pages → no reader ever
    /// sees a value go backwards; every writer's final value exact.
    Seqs,
    /// Two nodes alternately writing one page.
    PingPong,
    /// Read sharing of a table, then contended atomics: the demo.
    Demo,
    /// Rounds of writing a table spread over every home, then scanning it front to back on
    /// every worker (sequential remote misses: what `--prefetch` is for) → no stale page.
    Scan,
    /// Writes to pages only this node touches, until killed (the failure drill's victim).
    Private,
    /// A partitioned array: each participant reads and increments per-page counters mostly in
    /// its own part (homed on the next node), 2 % in the others' → exact counters; reports
    /// the miss ratio after warm-up.
    Partition,
    /// A table read by everyone, 1 % of operations bumping a page's version → no version read
    /// goes backwards, exact versions; reports the miss ratio after warm-up.
    ReadMostly,
    /// A bounded ring of page-sized checksummed items: the first participant produces, the
    /// others consume → every item whole, once, in order per producer; reports the miss ratio
    /// after warm-up.
    Queue,
    /// A key-value table of pages with Zipf-distributed keys (s = 0.99), 90 % reads and 10 %
    /// increments → exact per-key counts; reports the miss ratio after warm-up.
    Zipf,
}

impl std::str::FromStr for Kind {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "counters" => Kind::Counters,
            "lock" => Kind::Lock,
            "seqs" => Kind::Seqs,
            "pingpong" => Kind::PingPong,
            "demo" => Kind::Demo,
            "scan" => Kind::Scan,
            "private" => Kind::Private,
            "partition" => Kind::Partition,
            "readmostly" => Kind::ReadMostly,
            "queue" => Kind::Queue,
            "zipf" => Kind::Zipf,
            _ => return Err(WorkloadError::UnknownKind(s.to_string())),
        })
    }
}

impl Kind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counters => "counters",
            Kind::Lock => "lock",
            Kind::Seqs => "seqs",
            Kind::PingPong => "pingpong",
            Kind::Demo => "demo",
            Kind::Scan => "scan",
            Kind::Private => "private",
            Kind::Partition => "partition",
            Kind::ReadMostly => "readmostly",
            Kind::Queue => "queue",
            Kind::Zipf => "zipf",
        }
    }

    /// Whether the workload has a warm-up and a measured phase, and reports its misses.
    pub fn measures_misses(self) -> bool {
        matches!(
            self,
            Kind::Partition | Kind::ReadMostly | Kind::Queue | Kind::Zipf
        )
    }
}

/// A workload run's parameters.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Which workload.
    pub kind: Kind,
    /// Operations per worker.
    pub ops: u64,
    /// Worker threads on this node.
    pub workers: usize,
    /// The nodes that run it (and meet at its barriers), sorted.
    pub participants: Vec<u16>,
}

/// What a node saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether every check passed.
    pub ok: bool,
    /// One line: what was checked and found.
    pub summary: String,
    /// Time spent in the work phase.
    pub work_time: Duration,
}

/// Where a run is (the node's main thread watches it).
#[derive(Debug, Default)]
pub struct Progress {
    /// The result was verified; only the final barrier is left. From here on a peer going
    /// away is an orderly end.
    pub verified: AtomicBool,
    /// The verified result, once there is one.
    pub report: Mutex<Option<Report>>,
}

/// What one workload does; `rank` is this node's index among the participants.
pub(crate) struct Ctx<'a> {
    pub mem: Mem,
    pub plan: &'a Plan,
    pub rank: u64,
    pub parties: u64,
    pub workers: u64,
    pub ops: u64,
    /// The participants' node ids, by rank.
    pub nodes: &'a [u16],
    /// This node's shard counters (the miss-ratio workloads' measurement).
    pub stats: &'a [Arc<ShardStats>],
    /// The measured phase's meeting point on this node.
    pub measure: &'a measured::Measure,
    /// The pages of a miss-ratio workload's table, laid out before the start.
    pub pages: Vec<u64>,
}

/// Runs the workload on a started node and returns the verified result.
pub fn run(node: &Node, spec: &Spec, progress: &Progress) -> Result<Report, WorkloadError> {
    let me = node.id();
    let Some(rank) = spec.participants.iter().position(|&p| p == me) else {
        return Err(WorkloadError::NotAParticipant {
            node: me,
            participants: spec.participants.clone(),
        });
    };
    let mem_now = || {
        // SAFETY: the node's region stays mapped while `node` lives, which outlives this call.
        unsafe { Mem::new(node.base(), node.region().pages()) }
    };
    if spec.kind == Kind::Private {
        return Ok(spinlock::private(
            mem_now(),
            &Plan::new(&node.layout()),
            me,
            spec.ops,
        ));
    }
    if spec.workers == 0 {
        return Err(WorkloadError::NoWorkers);
    }
    let parties = spec.participants.len() as u64;
    if spec.kind == Kind::PingPong && parties != 2 {
        return Err(WorkloadError::PingPongParties);
    }
    if spec.kind == Kind::Queue && parties < 2 {
        return Err(WorkloadError::QueueParties);
    }
    // Everyone present (a participant may join the running cluster first; page 0 is homed by
    // a founding node, so the barrier page exists from the start).
    Barrier::new(mem_now(), BARRIER_PAGE, parties).wait(0);
    // The address space is final once every participant is a member here too.
    let deadline = Instant::now() + Duration::from_secs(60);
    let member =
        |p: u16| coherence::NodeId::new(p).is_ok_and(|n| node.layout().range_of(n).is_some());
    while !spec.participants.iter().all(|&p| member(p)) {
        if Instant::now() > deadline {
            return Err(WorkloadError::ParticipantNeverJoined);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let plan = Plan::new(&node.layout());
    let mem = mem_now();
    let measure = measured::Measure::new(spec.workers);
    let mut ctx = Ctx {
        mem,
        plan: &plan,
        rank: rank as u64,
        parties,
        workers: spec.workers as u64,
        ops: spec.ops,
        nodes: &spec.participants,
        stats: node.stats(),
        measure: &measure,
        pages: Vec::new(),
    };
    let barrier = Barrier::new(mem, BARRIER_PAGE, ctx.parties);
    match spec.kind {
        Kind::Scan => scan::check(&ctx)?,
        Kind::Partition => ctx.pages = partition::layout(&ctx)?,
        Kind::ReadMostly => ctx.pages = readmostly::layout(&ctx)?,
        Kind::Queue => ctx.pages = queue::layout(&ctx)?,
        Kind::Zipf => ctx.pages = zipf::layout(&ctx)?,
        _ => {}
    }

    // Set-up by the first participant, then everyone starts together.
    if rank == 0 {
        match spec.kind {
            Kind::Lock => spinlock::setup(&ctx),
            Kind::Demo => share::setup(&ctx),
            _ => {}
        }
    }
    barrier.wait(3);
    let t0 = Instant::now();
    let work = std::thread::scope(|s| {
        let handles: Vec<_> = (0..ctx.workers)
            .map(|w| {
                let ctx = &ctx;
                let kind = spec.kind;
                std::thread::Builder::new()
                    .name(format!("worker{w}"))
                    .spawn_scoped(s, move || match kind {
                        Kind::Counters => counters::work(ctx, w),
                        Kind::Lock => spinlock::work(ctx, w),
                        Kind::Seqs => seqs::work(ctx, w),
                        Kind::PingPong => pingpong::work(ctx, w),
                        Kind::Scan => scan::work(ctx, w),
                        Kind::Partition => partition::work(ctx, w),
                        Kind::ReadMostly => readmostly::work(ctx, w),
                        Kind::Queue => queue::work(ctx, w),
                        Kind::Zipf => zipf::work(ctx, w),
                        Kind::Demo => {
                            let shared = share::work(ctx, w);
                            let c = counters::work(ctx, w);
                            shared.merge(c)
                        }
                        Kind::Private => unreachable!("handled above"),
                    })
                    .expect("spawn worker")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect::<Vec<_>>()
    });
    let work_time = t0.elapsed();
    // Every worker has returned: the end of the measured phase, before this node touches the
    // barrier page again.
    let faults_end = measured::Faults::now(node.stats());
    barrier.wait(1);
    let mut outcome = WorkerResult::default();
    for w in work {
        outcome = outcome.merge(w);
    }
    let accesses = outcome.accesses;
    let mut report = match spec.kind {
        Kind::Counters => counters::verify(&ctx, outcome, work_time),
        Kind::Lock => spinlock::verify(&ctx, outcome, work_time),
        Kind::Seqs => seqs::verify(&ctx, outcome, work_time),
        Kind::PingPong => pingpong::verify(&ctx, outcome, work_time),
        Kind::Scan => scan::verify(&ctx, &outcome, work_time),
        Kind::Partition => partition::verify(&ctx, &outcome, work_time),
        Kind::ReadMostly => readmostly::verify(&ctx, &outcome, work_time),
        Kind::Queue => queue::verify(&ctx, &outcome, work_time),
        Kind::Zipf => zipf::verify(&ctx, &outcome, work_time),
        Kind::Demo => {
            let a = share::verify(&ctx, &outcome);
            let b = counters::verify(&ctx, outcome, work_time);
            Report {
                ok: a.ok && b.ok,
                summary: format!("{}; {}", a.summary, b.summary),
                work_time,
            }
        }
        Kind::Private => unreachable!("handled above"),
    };
    if spec.kind.measures_misses() {
        report.summary = format!(
            "{}; {}",
            report.summary,
            measured::line(accesses, measure.start(), faults_end)
        );
    }
    finish(node, &barrier, progress, report)
}

/// The orderly end of a checked run, after barrier 1 and the check: hand every cached page
/// back home, publish the result, then meet at barrier 2 and return. Nothing this node leaves
/// with is then needed by another, and from barrier 2 on a departing peer (even a home) is
/// the expected end.
pub(crate) fn finish(
    node: &Node,
    barrier: &Barrier,
    progress: &Progress,
    report: Report,
) -> Result<Report, WorkloadError> {
    let leave = Duration::from_secs(30);
    node.leave(leave)?;
    if let Ok(mut r) = progress.report.lock() {
        *r = Some(report.clone());
    }
    progress.verified.store(true, Ordering::SeqCst);
    node.state().expect_departures();
    barrier.arrive(2);
    node.leave(leave)?;
    barrier.wait_for(2);
    Ok(report)
}

/// What a worker found, merged over workers.
#[derive(Debug, Default, Clone)]
pub(crate) struct WorkerResult {
    /// Operations done.
    pub ops: u64,
    /// Checks that failed (torn, stale or backwards values).
    pub violations: u64,
    /// Per-slot final values a worker wrote (seqs): `(slot, value)`.
    pub writes: Vec<(u64, u64)>,
    /// Reads checked.
    pub reads: u64,
    /// Page accesses in the measured phase (miss-ratio workloads).
    pub accesses: u64,
    /// Items consumed (queue).
    pub consumed: Vec<u64>,
}

impl Ctx<'_> {
    /// A barrier every worker of every participant arrives at (the run's own barrier counts
    /// nodes).
    pub(crate) fn worker_barrier(&self) -> Barrier {
        Barrier::new(self.mem, BARRIER_PAGE, self.parties * self.workers)
    }
}

impl WorkerResult {
    pub(crate) fn merge(mut self, o: WorkerResult) -> WorkerResult {
        self.ops += o.ops;
        self.violations += o.violations;
        self.reads += o.reads;
        self.accesses += o.accesses;
        self.writes.extend(o.writes);
        self.consumed.extend(o.consumed);
        self
    }
}

/// Wall time per operation, for reports.
pub(crate) fn per_op(total_ops: u64, t: Duration) -> String {
    if total_ops == 0 {
        return "no ops".into();
    }
    format!("{:.1} us/op", t.as_secs_f64() * 1e6 / total_ops as f64)
}
