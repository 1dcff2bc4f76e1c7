//! The simulated cluster: nodes running protocol instances, a network with
//! per-connection FIFO and random delays, node memories, threads, crashes,
//! and the invariant checks run after every step.

use super::super::{Actions, Layout, Machine, Msg, NodeId, NodeRange, NodeSet, Outcome, Partition};
use super::scenario::{Family, Profile, Scenario};
use super::trace::Trace;

mod actions;
mod checks;
mod leave;
mod workload;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Which invariant broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailKind {
    /// Two writers, or a writer and a reader, at the same instant.
    Swmr,
    /// A mapped copy differs from the page's latest value.
    StaleCopy,
    /// A read returned something other than the latest write.
    StaleRead,
    /// An action the memory model forbids (install over a mapping, send of
    /// an unmapped page, completion without access, ...).
    BadAction,
    /// A fault did not complete in bounded steps, or the run did not drain.
    Liveness,
    /// A message sent to a node the sender knows is dead.
    SendToDead,
    /// A late message from a dead node produced actions.
    LateMessage,
    /// A home still waits on a dead node after its clean-up.
    WaitingOnDead,
    /// A page reported lost that was never at risk.
    UnjustifiedLoss,
    /// The machine reported a protocol violation or an error.
    Violation,
    /// At quiescence the directory, local states and mappings disagree.
    EndState,
    /// Cluster-fatal handling went wrong.
    Fatal,
}

/// A checker failure.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: FailKind,
    pub(crate) message: String,
    pub(crate) page: Option<u64>,
    pub(crate) step: u64,
    pub(crate) time: u64,
    pub(crate) trace: String,
}

/// What a finished run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunStats {
    /// Machine steps, excluding faults refused locally as busy.
    pub(crate) steps: u64,
    /// Faults refused locally as busy (threads retry them).
    pub(crate) busy_faults: u64,
    pub(crate) ops: u64,
    pub(crate) messages: u64,
    pub(crate) lost: u64,
    pub(crate) ping_pong: u64,
    pub(crate) deferred: u64,
    pub(crate) recalls: u64,
    pub(crate) evictions: u64,
    /// Prefetch requests issued.
    pub(crate) prefetches: u64,
    /// Home moves started.
    pub(crate) moves: u64,
    /// Home nodes that left (docs/protocol.md §13).
    pub(crate) retired: u64,
    /// Pointers a successor kept from a node that left.
    pub(crate) pointers_taken: u64,
    /// Events the run took to drain after its last operation.
    pub(crate) drain_events: u64,
    /// Messages sent, by variant (coverage).
    pub(crate) by_kind: [u64; KINDS],
}

impl Default for RunStats {
    fn default() -> Self {
        Self {
            steps: 0,
            busy_faults: 0,
            ops: 0,
            messages: 0,
            lost: 0,
            ping_pong: 0,
            deferred: 0,
            recalls: 0,
            evictions: 0,
            prefetches: 0,
            moves: 0,
            retired: 0,
            pointers_taken: 0,
            drain_events: 0,
            by_kind: [0; KINDS],
        }
    }
}

/// Message variants told apart in coverage counts.
pub(crate) const KINDS: usize = 29;

/// Names of the coverage counters.
pub(crate) const KIND_NAMES: [&str; KINDS] = [
    "ReadReq",
    "WriteReq",
    "UpgradeReq",
    "FwdRead",
    "FwdWrite",
    "Inv",
    "InvAck",
    "Data(ro)",
    "Data(rw)",
    "Grant",
    "FwdAck(shared)",
    "FwdAck(handed-off)",
    "FwdAck(surrendered)",
    "FwdAck(requester-gone)",
    "Done",
    "EvictReq(clean)",
    "EvictReq(dirty)",
    "EvictAck",
    "Nack(busy)",
    "Nack(lost)",
    "Recall",
    "RecallAck(nothing)",
    "RecallAck(copy)",
    "RecallAck(exclusive)",
    "Nack(moved)",
    "HomeMove(zero)",
    "HomeMove(data)",
    "HomeMove(lost)",
    "HomePointer",
];

fn kind_of(m: &Msg) -> usize {
    use super::super::{FwdOutcome, MovedPage, NackReason, RecallHave};
    match *m {
        Msg::ReadReq { .. } => 0,
        Msg::WriteReq { .. } => 1,
        Msg::UpgradeReq { .. } => 2,
        Msg::FwdRead { .. } => 3,
        Msg::FwdWrite { .. } => 4,
        Msg::Inv { .. } => 5,
        Msg::InvAck { .. } => 6,
        Msg::Data {
            writable: false, ..
        } => 7,
        Msg::Data { writable: true, .. } => 8,
        Msg::Grant { .. } => 9,
        Msg::FwdAck { outcome, .. } => match outcome {
            FwdOutcome::Shared => 10,
            FwdOutcome::HandedOff => 11,
            FwdOutcome::Surrendered => 12,
            FwdOutcome::RequesterGone => 13,
        },
        Msg::Done { .. } => 14,
        Msg::EvictReq { dirty: false, .. } => 15,
        Msg::EvictReq { dirty: true, .. } => 16,
        Msg::EvictAck { .. } => 17,
        Msg::Nack {
            reason: NackReason::Busy,
            ..
        } => 18,
        Msg::Nack {
            reason: NackReason::Lost,
            ..
        } => 19,
        Msg::Recall { .. } => 20,
        Msg::RecallAck { have, .. } => match have {
            RecallHave::Nothing => 21,
            RecallHave::Copy => 22,
            RecallHave::Exclusive => 23,
        },
        Msg::Nack {
            reason: NackReason::Moved(_),
            ..
        } => 24,
        Msg::HomeMove { content, .. } => match content {
            MovedPage::Zero => 25,
            MovedPage::Page => 26,
            MovedPage::Lost => 27,
        },
        Msg::HomePointer { .. } => 28,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Map {
    None,
    Ro,
    Rw,
}

#[derive(Debug, Clone, Copy)]
struct Mem {
    value: u64,
    map: Map,
}

fn allows(map: Map, write: bool) -> bool {
    match map {
        Map::Rw => true,
        Map::Ro => !write,
        Map::None => false,
    }
}

#[derive(Debug)]
struct Inst {
    m: Machine,
    tick_at: Option<u64>,
    knows_dead: NodeSet,
    verified_dead: NodeSet,
    fatal_seen: bool,
}

#[derive(Debug, Clone, Copy)]
struct Packet {
    from: usize,
    to: usize,
    msg: Msg,
    payload: Option<u64>,
    /// Lost in its sender's crash (its delivery event finds nothing).
    lost: bool,
    /// In flight to a leaving node when every node had taken in the leave (its fence).
    fence: bool,
}

#[derive(Debug, Default)]
struct Conn {
    q: VecDeque<Packet>,
    last: u64,
    listed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThreadState {
    Idle,
    Waiting {
        token: u64,
        pidx: usize,
        write: bool,
        since: u64,
    },
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct Thread {
    state: ThreadState,
    op: Option<(usize, bool)>,
    seq: u32,
    profile: Profile,
    /// Consecutive faults refused as busy.
    busy_streak: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver(u32),
    Thread(u16, u16),
    Tick(u16, u16),
    Dead(u16, u16, u16),
    Evict(u16),
    /// Home migration: move a random page's home to a random other node that contributes
    /// memory.
    Move,
    Crash(u16),
    /// A tick at an arbitrary time (callers may tick early or often).
    SpuriousTick(u16, u16),
    /// The scenario's home leave: `Retire` reaches node n's instance i.
    Retire(u16, u16),
    /// The leave's progress check (the control plane's part).
    LeaveCheck,
    /// `Retired` reaches node n's instance i.
    Retired(u16, u16),
}

/// Steps a fault may wait before it counts as a liveness failure.
const LIVENESS_STEPS: u64 = 200_000;
/// Pages per partition granule of a sharded node: 2, so both the interleaving of granules
/// and the pages within one are exercised (the engine uses 16 MiB granules).
const SIM_GRANULE: u64 = 2;
/// Events a run may take before it counts as not draining.
const MAX_EVENTS: u64 = 3_000_000;
/// Events a run may take to drain once every operation has been issued
/// (the longest drain seen in soaks is about 8 000).
const DRAIN_EVENTS: u64 = 100_000;

/// The simulated cluster.
pub(crate) struct World {
    sc: Scenario,
    rng: StdRng,
    nodes: usize,
    pages: usize,
    base: u64,
    homes: Vec<usize>,
    insts: Vec<Vec<Inst>>,
    alive: Vec<bool>,
    mem: Vec<Vec<Mem>>,
    latest: Vec<u64>,
    touched_ever: Vec<bool>,
    lossable: Vec<bool>,
    conns: Vec<Conn>,
    busy_conns: Vec<u32>,
    lanes: usize,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    now: u64,
    steps: u64,
    /// Steps other than faults refused locally as busy (those spin without
    /// protocol progress when requester pools are tiny).
    progress: u64,
    threads: Vec<Vec<Thread>>,
    ops_left: u64,
    issued: u64,
    crashes_fired: Vec<bool>,
    pending_deaths: usize,
    buf: Actions,
    step_pages: Vec<usize>,
    trace: Trace,
    /// `SIM_TRACE_PAGE`: print every step touching this page as it runs.
    trace_page: Option<u64>,
    /// The scenario's home leave, as it goes.
    leave: leave::Leave,
    /// Faults must complete in bounded steps (home pools are sized).
    strict: bool,
    stats: RunStats,
}

impl World {
    /// Builds the cluster of a scenario.
    pub(crate) fn new(sc: Scenario) -> Result<Self, String> {
        let nodes = sc.contrib.len();
        let mut ranges = Vec::new();
        let mut first = sc.base_page;
        let mut homes = Vec::new();
        for (i, &c) in sc.contrib.iter().enumerate() {
            let node = NodeId::new(i as u16).map_err(|e| e.to_string())?;
            ranges.push(NodeRange {
                node,
                first_page: first,
                page_count: c,
            });
            homes.extend(std::iter::repeat_n(i, c as usize));
            first += c;
        }
        let layout = Layout::new(4096, ranges).map_err(|e| e.to_string())?;
        let mut insts = Vec::new();
        for (i, &s) in sc.shards.iter().enumerate() {
            let node = NodeId::new(i as u16).map_err(|e| e.to_string())?;
            let mut v = Vec::new();
            for k in 0..s {
                let part = Partition::granular(k, s, SIM_GRANULE).map_err(|e| e.to_string())?;
                let mut m = Machine::new(node, layout.clone(), part, sc.config)
                    .map_err(|e| e.to_string())?;
                m.bug = sc.bug;
                v.push(Inst {
                    m,
                    tick_at: None,
                    knows_dead: NodeSet::EMPTY,
                    verified_dead: NodeSet::EMPTY,
                    fatal_seen: false,
                });
            }
            insts.push(v);
        }
        let buf = insts[0][0].m.new_actions();
        let pages = sc.pages() as usize;
        let lanes = if sc.fifo_per_page { pages } else { 1 };
        let mut rng = StdRng::seed_from_u64(sc.seed);
        let threads = (0..nodes)
            .map(|_| {
                (0..sc.threads)
                    .map(|_| Thread {
                        state: ThreadState::Idle,
                        op: None,
                        seq: 0,
                        profile: sc.thread_profile(&mut rng),
                        busy_streak: 0,
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            rng,
            nodes,
            pages,
            base: sc.base_page,
            homes,
            insts,
            alive: vec![true; nodes],
            mem: vec![
                vec![
                    Mem {
                        value: u64::MAX,
                        map: Map::None
                    };
                    pages
                ];
                nodes
            ],
            latest: vec![0; pages],
            touched_ever: vec![false; pages],
            lossable: vec![false; pages],
            conns: (0..nodes * nodes * lanes)
                .map(|_| Conn::default())
                .collect(),
            busy_conns: Vec::new(),
            lanes,
            events: BinaryHeap::new(),
            seq: 0,
            now: 0,
            steps: 0,
            progress: 0,
            threads,
            ops_left: sc.ops,
            issued: 0,
            crashes_fired: vec![false; sc.crashes.len()],
            pending_deaths: 0,
            buf,
            step_pages: Vec::new(),
            trace: Trace::new(),
            trace_page: std::env::var("SIM_TRACE_PAGE")
                .ok()
                .and_then(|v| v.trim().parse().ok()),
            leave: leave::Leave::default(),
            strict: sc.strict_liveness(),
            stats: RunStats::default(),
            sc,
        })
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, ev)));
    }

    fn fail(&self, kind: FailKind, page: Option<u64>, message: String) -> Failure {
        let mut message = message;
        if let Some(page) = page {
            for n in 0..self.nodes {
                let i = self.inst_of(n, page);
                let state = self.insts[n][i].m.debug_page(page);
                let map = page
                    .checked_sub(self.base)
                    .and_then(|p| self.mem[n].get(p as usize))
                    .map(|m| (m.map, m.value));
                message.push_str(&format!(
                    "\n    n{n}/{i}{}: mem {map:?} {state}",
                    if self.alive[n] { "" } else { " (dead)" }
                ));
            }
        }
        if kind == FailKind::Liveness {
            // Every page some home is busy with, at every node.
            for p in 0..self.pages {
                let page = self.base + p as u64;
                // Busy at its home, or waited for by some node's threads.
                let busy = (0..self.nodes).any(|h| {
                    let m = &self.insts[h][self.inst_of(h, page)].m;
                    m.dir_entry(page).is_some_and(|e| e.busy()) || m.waiters_on(page) > 0
                });
                if busy {
                    message.push_str(&format!("\n  busy page {page}:"));
                    for n in 0..self.nodes {
                        let i = self.inst_of(n, page);
                        message.push_str(&format!(
                            "\n    n{n}/{i}: mem {:?} {}",
                            self.mem[n][p].map,
                            self.insts[n][i].m.debug_page(page)
                        ));
                    }
                }
            }
        }
        Failure {
            kind,
            message,
            page,
            step: self.steps,
            time: self.now,
            trace: self.trace.render(page, 40),
        }
    }

    fn inst_of(&self, node: usize, page: u64) -> usize {
        ((page / SIM_GRANULE) % u64::from(self.sc.shards[node])) as usize
    }

    /// Runs to completion and checks the end state.
    pub(crate) fn run(mut self) -> Result<RunStats, Failure> {
        for n in 0..self.nodes {
            for t in 0..self.sc.threads {
                let at = self.rng.gen_range(0..=self.sc.think_max_ns);
                self.push(at, Ev::Thread(n as u16, t as u16));
            }
        }
        let mut events = 0u64;
        let mut drain_events = 0u64;
        while let Some(Reverse((at, _, ev))) = self.events.pop() {
            events += 1;
            if self.ops_left == 0 {
                drain_events += 1;
            }
            if events > MAX_EVENTS || drain_events > DRAIN_EVENTS {
                return Err(self.fail(
                    FailKind::Liveness,
                    None,
                    format!("the run did not drain ({events} events, {drain_events} after the workload ended)"),
                ));
            }
            self.now = at;
            self.handle(ev)?;
            if events % 128 == 0 {
                self.check_liveness()?;
            }
        }
        self.stats.drain_events = drain_events;
        self.check_drained()?;
        if self.sc.family == Family::HomeDeath {
            self.check_fatal_end()?;
        } else {
            self.check_end_state()?;
        }
        for n in 0..self.nodes {
            for i in &self.insts[n] {
                let s = i.m.stats();
                self.stats.ping_pong += s.ping_pong;
                self.stats.deferred += s.deferred;
                self.stats.recalls += s.recalls;
                self.stats.prefetches += s.prefetches;
                self.stats.lost += s.pages_lost;
                self.stats.evictions += s.evictions_clean + s.evictions_dirty;
                self.stats.pointers_taken += s.pointers_taken;
            }
        }
        self.stats.steps = self.progress;
        self.stats.busy_faults = self.steps - self.progress;
        Ok(self.stats)
    }

    fn handle(&mut self, ev: Ev) -> Result<(), Failure> {
        match ev {
            Ev::Thread(n, t) => self.run_thread(n.into(), t.into()),
            Ev::Deliver(c) => self.deliver(c as usize),
            Ev::Tick(n, i) => {
                let (n, i) = (usize::from(n), usize::from(i));
                if !self.alive[n] || self.insts[n][i].tick_at != Some(self.now) {
                    return Ok(());
                }
                self.insts[n][i].tick_at = None;
                self.step(n, i, super::super::Input::Tick, None, false)
                    .map(|_| ())
            }
            Ev::Dead(n, i, d) => {
                let (n, i, d) = (usize::from(n), usize::from(i), usize::from(d));
                self.pending_deaths -= 1;
                if !self.alive[n] {
                    return Ok(());
                }
                let dead = NodeId::new(d as u16)
                    .map_err(|e| self.fail(FailKind::BadAction, None, e.to_string()))?;
                self.insts[n][i].knows_dead.insert(dead);
                self.step(n, i, super::super::Input::NodeDead(dead), None, false)
                    .map(|_| ())
            }
            Ev::Evict(n) => self.evict(n.into()),
            Ev::Move => self.move_home(),
            Ev::SpuriousTick(n, i) => {
                let (n, i) = (usize::from(n), usize::from(i));
                if !self.alive[n] {
                    return Ok(());
                }
                self.step(n, i, super::super::Input::Tick, None, false)
                    .map(|_| ())
            }
            Ev::Crash(n) => self.crash(n.into()),
            Ev::Retire(n, i) => self.leave_retire(n.into(), i.into()),
            Ev::LeaveCheck => self.leave_check(),
            Ev::Retired(n, i) => self.leave_retired(n.into(), i.into()),
        }
    }

    // ---- machine steps and actions ----

    fn step(
        &mut self,
        n: usize,
        i: usize,
        input: super::super::Input,
        payload: Option<u64>,
        late: bool,
    ) -> Result<Outcome, Failure> {
        let res = self.insts[n][i].m.step(self.now, input, &mut self.buf);
        self.steps += 1;
        self.trace
            .push(self.steps, self.now, n, i, input, self.buf.as_slice());
        if let Some(p) = self.trace_page {
            if let Some(line) = self.trace.render_last(p) {
                eprint!("{line}");
            }
        }
        let input_page = input.page();
        let outcome = res.map_err(|e| {
            self.fail(
                FailKind::Violation,
                input_page,
                format!("n{n}/{i} step error: {e}"),
            )
        })?;
        self.trace.set_outcome(outcome);
        let skipped_prefetch =
            matches!(input, super::super::Input::Prefetch { .. }) && outcome == Outcome::Ignored;
        if outcome == Outcome::Busy || skipped_prefetch {
            // A local refusal the thread retries, or a prefetch with nothing to do: keep it
            // out of the trace; it is not progress.
            self.trace.drop_last();
        } else {
            self.progress += 1;
        }
        if late && (outcome != Outcome::Ignored || !self.buf.is_empty()) {
            return Err(self.fail(
                FailKind::LateMessage,
                input_page,
                format!("n{n}/{i} acted on a message from a node it knows is dead"),
            ));
        }
        self.step_pages.clear();
        for k in 0..self.buf.len() {
            let a = self.buf.as_slice()[k];
            self.apply(n, i, a, payload)?;
        }
        for k in 0..self.step_pages.len() {
            let p = self.step_pages[k];
            self.check_page(p)?;
        }
        if self.pending_deaths > 0 {
            self.update_lossable();
        }
        // Next tick.
        let inst = &mut self.insts[n][i];
        if let Some(d) = inst.m.next_deadline() {
            let at = d.max(self.now);
            if inst.tick_at.is_none_or(|t| at < t) {
                inst.tick_at = Some(at);
                self.push(at, Ev::Tick(n as u16, i as u16));
            }
        }
        // After a death's clean-up, nothing may wait on the dead node.
        let inst = &mut self.insts[n][i];
        if inst.m.fatal().is_none() && !inst.m.cleanup_pending() {
            for d in inst.knows_dead.minus(inst.verified_dead).iter() {
                if inst.m.is_waiting_on(d) {
                    return Err(self.fail(
                        FailKind::WaitingOnDead,
                        None,
                        format!("n{n}/{i} still waits on {d} after its clean-up"),
                    ));
                }
                inst.verified_dead.insert(d);
            }
        }
        Ok(outcome)
    }

    fn pidx(&self, page: u64) -> Result<usize, Failure> {
        page.checked_sub(self.base)
            .map(|p| p as usize)
            .filter(|&p| p < self.pages)
            .ok_or_else(|| {
                self.fail(
                    FailKind::BadAction,
                    Some(page),
                    format!("action on page {page} outside the layout"),
                )
            })
    }

    fn deliver(&mut self, c: usize) -> Result<(), Failure> {
        let Some(pkt) = self.conns[c].q.pop_front() else {
            return Err(self.fail(
                FailKind::BadAction,
                None,
                "delivery from an empty connection".into(),
            ));
        };
        if pkt.fence {
            self.leave.fence -= 1;
        }
        if !self.alive[pkt.to] || pkt.lost {
            return Ok(());
        }
        let page = pkt.msg.page();
        let i = self.inst_of(pkt.to, page);
        let from = NodeId::new(pkt.from as u16).unwrap_or(NodeId::ZERO);
        let late = self.insts[pkt.to][i].knows_dead.contains(from);
        let input = super::super::Input::Message { from, msg: pkt.msg };
        self.step(pkt.to, i, input, pkt.payload, late).map(|_| ())
    }
}
