//! The simulated cluster: nodes running protocol instances, a network with
//! per-connection FIFO and random delays, node memories, threads, crashes,
//! and the invariant checks run after every step.

use super::super::{
    Access, Action, Actions, DataSource, DirState, FailReason, FatalReason, InstallSource, Layout,
    Machine, Msg, NodeId, NodeRange, NodeSet, Outcome, PageAccess, Partition,
};
use super::scenario::{Family, Profile, Scenario};
use super::trace::Trace;
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
            by_kind: [0; KINDS],
        }
    }
}

/// Message variants told apart in coverage counts.
pub(crate) const KINDS: usize = 24;

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
];

fn kind_of(m: &Msg) -> usize {
    use super::super::{FwdOutcome, NackReason, RecallHave};
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
    Crash(u16),
    /// A tick at an arbitrary time (callers may tick early or often).
    SpuriousTick(u16, u16),
}

/// Steps a fault may wait before it counts as a liveness failure.
const LIVENESS_STEPS: u64 = 200_000;
/// Events a run may take before it counts as not draining.
const MAX_EVENTS: u64 = 30_000_000;

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
                let part = Partition::new(k, s).map_err(|e| e.to_string())?;
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
                let h = self.homes[p];
                if self.insts[h][self.inst_of(h, page)]
                    .m
                    .dir_entry(page)
                    .is_some_and(|e| e.busy())
                {
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
        (page % u64::from(self.sc.shards[node])) as usize
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
        while let Some(Reverse((at, _, ev))) = self.events.pop() {
            events += 1;
            if events > MAX_EVENTS {
                return Err(self.fail(FailKind::Liveness, None, "the run did not drain".into()));
            }
            self.now = at;
            self.handle(ev)?;
            if events % 128 == 0 {
                self.check_liveness()?;
            }
        }
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
                self.stats.lost += s.pages_lost;
                self.stats.evictions += s.evictions_clean + s.evictions_dirty;
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
            Ev::SpuriousTick(n, i) => {
                let (n, i) = (usize::from(n), usize::from(i));
                if !self.alive[n] {
                    return Ok(());
                }
                self.step(n, i, super::super::Input::Tick, None, false)
                    .map(|_| ())
            }
            Ev::Crash(n) => self.crash(n.into()),
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
        let input_page = match input {
            super::super::Input::Fault { page, .. } | super::super::Input::Evict { page } => {
                Some(page)
            }
            super::super::Input::Message { msg, .. } => Some(msg.page()),
            _ => None,
        };
        let outcome = res.map_err(|e| {
            self.fail(
                FailKind::Violation,
                input_page,
                format!("n{n}/{i} step error: {e}"),
            )
        })?;
        self.trace.set_outcome(outcome);
        if outcome == Outcome::Busy {
            // A local refusal the thread retries: keep it out of the trace.
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

    fn apply(
        &mut self,
        n: usize,
        i: usize,
        a: Action,
        payload: Option<u64>,
    ) -> Result<(), Failure> {
        let bad = |w: &Self, page: u64, what: &str| {
            w.fail(
                FailKind::BadAction,
                Some(page),
                format!("n{n}/{i}: {what}: {a:?}"),
            )
        };
        match a {
            Action::Send { to, msg, data } => {
                let page = msg.page();
                let p = self.pidx(page)?;
                let to = to.index();
                if to == n || to >= self.nodes {
                    return Err(bad(self, page, "send to itself or outside the cluster"));
                }
                let inst = &self.insts[n][i];
                if inst
                    .knows_dead
                    .contains(NodeId::new(to as u16).unwrap_or(NodeId::ZERO))
                {
                    return Err(self.fail(
                        FailKind::SendToDead,
                        Some(page),
                        format!("n{n}/{i} sent {msg:?} to n{to}, which it knows is dead"),
                    ));
                }
                if inst.m.fatal().is_some() {
                    return Err(self.fail(
                        FailKind::Fatal,
                        Some(page),
                        format!("n{n}/{i} sent after the cluster stopped: {msg:?}"),
                    ));
                }
                if data.is_some() != msg.has_data() {
                    return Err(bad(self, page, "payload source does not match the message"));
                }
                let value = match data {
                    None => None,
                    Some(DataSource::Zero) => Some(0),
                    Some(DataSource::Local) => {
                        let m = self.mem[n][p];
                        if m.map == Map::None {
                            return Err(bad(self, page, "sent the local copy of an unmapped page"));
                        }
                        Some(m.value)
                    }
                };
                if value.is_some() {
                    self.touched_ever[p] = true;
                }
                self.stats.messages += 1;
                self.stats.by_kind[kind_of(&msg)] += 1;
                if !self.alive[to] {
                    return Ok(());
                }
                let lane = if self.lanes > 1 { p } else { 0 };
                let c = (n * self.nodes + to) * self.lanes + lane;
                let r = self.rng.gen_range(0..100u32);
                let mut delay = self.rng.gen_range(1..=self.sc.delay_max_ns);
                if r < self.sc.slow_pct / 4 {
                    delay *= 100;
                } else if r < self.sc.slow_pct {
                    delay *= 10;
                }
                let conn = &mut self.conns[c];
                let at = (self.now + delay).max(conn.last);
                conn.last = at;
                conn.q.push_back(Packet {
                    from: n,
                    to,
                    msg,
                    payload: value,
                });
                if !conn.listed {
                    conn.listed = true;
                    self.busy_conns.push(c as u32);
                }
                self.push(at, Ev::Deliver(c as u32));
            }
            Action::Install {
                page,
                writable,
                source,
            } => {
                let p = self.pidx(page)?;
                if self.mem[n][p].map != Map::None {
                    return Err(bad(self, page, "install over a mapped page"));
                }
                let value = match source {
                    InstallSource::Zero => 0,
                    InstallSource::Payload => match payload {
                        Some(v) => v,
                        None => {
                            return Err(bad(
                                self,
                                page,
                                "install from a payload the input did not carry",
                            ))
                        }
                    },
                };
                self.mem[n][p] = Mem {
                    value,
                    map: if writable { Map::Rw } else { Map::Ro },
                };
                self.touched_ever[p] = true;
                self.step_pages.push(p);
            }
            Action::MakeWritable { page } => {
                let p = self.pidx(page)?;
                if self.mem[n][p].map != Map::Ro {
                    return Err(bad(
                        self,
                        page,
                        "make-writable of a page not mapped read-only",
                    ));
                }
                self.mem[n][p].map = Map::Rw;
                self.step_pages.push(p);
            }
            Action::WriteProtect { page } => {
                let p = self.pidx(page)?;
                if self.mem[n][p].map != Map::Rw {
                    return Err(bad(
                        self,
                        page,
                        "write-protect of a page not mapped writable",
                    ));
                }
                self.mem[n][p].map = Map::Ro;
            }
            Action::Drop { page } => {
                let p = self.pidx(page)?;
                if self.mem[n][p].map == Map::None {
                    return Err(bad(self, page, "drop of an unmapped page"));
                }
                self.mem[n][p] = Mem {
                    value: u64::MAX,
                    map: Map::None,
                };
            }
            Action::Wake { page } => {
                self.pidx(page)?;
            }
            Action::FaultDone { page, token } => {
                let p = self.pidx(page)?;
                let (tn, th) = ((token >> 48) as usize, ((token >> 32) & 0xffff) as usize);
                let ok = tn == n && th < self.sc.threads;
                let state = if ok {
                    self.threads[n][th].state
                } else {
                    ThreadState::Stopped
                };
                match state {
                    ThreadState::Waiting {
                        token: t,
                        pidx,
                        write,
                        ..
                    } if t == token && pidx == p => {
                        if !allows(self.mem[n][p].map, write) {
                            return Err(bad(
                                self,
                                page,
                                "fault completed without granting the access",
                            ));
                        }
                        self.threads[n][th].state = ThreadState::Idle;
                        let at = if self.rng.gen_bool(0.8) {
                            self.now
                        } else {
                            self.now + self.rng.gen_range(0..=self.sc.think_max_ns)
                        };
                        self.push(at, Ev::Thread(n as u16, th as u16));
                    }
                    _ => {
                        return Err(bad(
                            self,
                            page,
                            "completion for a fault that is not waiting",
                        ))
                    }
                }
            }
            Action::FaultFailed {
                page,
                token,
                reason,
            } => {
                let p = self.pidx(page)?;
                let (tn, th) = ((token >> 48) as usize, ((token >> 32) & 0xffff) as usize);
                let waiting = tn == n
                    && th < self.sc.threads
                    && matches!(self.threads[n][th].state, ThreadState::Waiting { token: t, .. } if t == token);
                if !waiting {
                    return Err(bad(self, page, "failure for a fault that is not waiting"));
                }
                match reason {
                    FailReason::Lost => {
                        if !self.lossable[p] {
                            return Err(self.fail(
                                FailKind::UnjustifiedLoss,
                                Some(page),
                                format!("n{n}/{i}: fault failed as lost, but the page was never at risk"),
                            ));
                        }
                        let t = &mut self.threads[n][th];
                        t.state = ThreadState::Idle;
                        t.op = None;
                        let at = self.now + self.rng.gen_range(0..=self.sc.think_max_ns);
                        self.push(at, Ev::Thread(n as u16, th as u16));
                    }
                    FailReason::ClusterDown => {
                        if self.sc.family != Family::HomeDeath
                            || self.insts[n][i].m.fatal().is_none()
                        {
                            return Err(self.fail(
                                FailKind::Fatal,
                                Some(page),
                                format!("n{n}/{i}: unexpected ClusterDown"),
                            ));
                        }
                        self.threads[n][th].state = ThreadState::Stopped;
                    }
                }
            }
            Action::PageLost { page } => {
                let p = self.pidx(page)?;
                if !self.lossable[p] {
                    return Err(self.fail(
                        FailKind::UnjustifiedLoss,
                        Some(page),
                        format!("n{n}/{i} reported page {page} lost, but it was never at risk"),
                    ));
                }
            }
            Action::ClusterFatal { reason } => {
                let FatalReason::HomeDied(d) = reason;
                if self.sc.family != Family::HomeDeath
                    || self.alive[d.index()]
                    || self.insts[n][i].fatal_seen
                {
                    return Err(self.fail(
                        FailKind::Fatal,
                        None,
                        format!("n{n}/{i}: unexpected {a:?}"),
                    ));
                }
                self.insts[n][i].fatal_seen = true;
            }
        }
        Ok(())
    }

    // ---- invariants ----

    /// SWMR and data value for one page over the live nodes.
    fn check_page(&self, p: usize) -> Result<(), Failure> {
        let page = self.base + p as u64;
        let mut writers = 0;
        let mut mapped = 0;
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            let m = self.mem[n][p];
            if m.map == Map::None {
                continue;
            }
            mapped += 1;
            if m.map == Map::Rw {
                writers += 1;
            }
            if m.value != self.latest[p] {
                return Err(self.fail(
                    FailKind::StaleCopy,
                    Some(page),
                    format!(
                        "n{n} maps page {page} with value {} but the latest write is {}",
                        m.value, self.latest[p]
                    ),
                ));
            }
        }
        if writers > 1 || (writers == 1 && mapped > 1) {
            return Err(self.fail(
                FailKind::Swmr,
                Some(page),
                format!("page {page}: {writers} writable and {mapped} mapped copies"),
            ));
        }
        Ok(())
    }

    /// Marks pages whose latest value is, right now, neither in a live
    /// node's memory nor in a message between live nodes.
    fn update_lossable(&mut self) {
        let mut carried = vec![false; self.pages];
        let mut k = 0;
        while k < self.busy_conns.len() {
            let c = self.busy_conns[k] as usize;
            if self.conns[c].q.is_empty() {
                self.conns[c].listed = false;
                self.busy_conns.swap_remove(k);
                continue;
            }
            for pkt in &self.conns[c].q {
                let p = (pkt.msg.page() - self.base) as usize;
                // A write-back's payload is not a surviving copy: the home may
                // refuse it, and the evicting node's memory is the copy that
                // counts until the answer.
                let write_back = matches!(pkt.msg, Msg::EvictReq { .. });
                if !write_back
                    && self.alive[pkt.from]
                    && self.alive[pkt.to]
                    && pkt.payload == Some(self.latest[p])
                {
                    carried[p] = true;
                }
            }
            k += 1;
        }
        for (p, carried) in carried.into_iter().enumerate() {
            if self.lossable[p] || !self.touched_ever[p] || carried {
                continue;
            }
            let held = (0..self.nodes).any(|n| {
                self.alive[n]
                    && self.mem[n][p].map != Map::None
                    && self.mem[n][p].value == self.latest[p]
            });
            if !held {
                self.lossable[p] = true;
                if self.trace_page == Some(self.base + p as u64) {
                    eprintln!(
                        "  -- t={} page {} is now at risk (lossable)",
                        self.now,
                        self.base + p as u64
                    );
                }
            }
        }
    }

    fn check_liveness(&self) -> Result<(), Failure> {
        if !self.strict {
            return Ok(());
        }
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            for t in &self.threads[n] {
                if let ThreadState::Waiting { pidx, since, .. } = t.state {
                    if self.progress - since > LIVENESS_STEPS {
                        let page = self.base + pidx as u64;
                        return Err(self.fail(
                            FailKind::Liveness,
                            Some(page),
                            format!(
                                "a fault of n{n} on page {page} waits for {} steps",
                                self.progress - since
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Nothing is left to happen: every live thread must be done.
    fn check_drained(&self) -> Result<(), Failure> {
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            for t in &self.threads[n] {
                if let ThreadState::Waiting { pidx, .. } = t.state {
                    let page = self.base + pidx as u64;
                    return Err(self.fail(
                        FailKind::Liveness,
                        Some(page),
                        format!("deadlock: a fault of n{n} on page {page} never completed"),
                    ));
                }
            }
            for (i, inst) in self.insts[n].iter().enumerate() {
                if inst.m.fatal().is_some() {
                    continue;
                }
                if !inst.m.is_quiescent() || !inst.m.records_idle() {
                    return Err(self.fail(
                        FailKind::Liveness,
                        None,
                        format!("n{n}/{i} is not quiescent after the run drained (stuck transaction or leaked record)"),
                    ));
                }
                if inst.m.free_waiters() != self.sc.config.max_waiters as usize {
                    return Err(self.fail(
                        FailKind::Liveness,
                        None,
                        format!("n{n}/{i} leaked waiter slots"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// At quiescence the directory, the local states and the mappings agree.
    fn check_end_state(&self) -> Result<(), Failure> {
        for p in 0..self.pages {
            let page = self.base + p as u64;
            let h = self.homes[p];
            let st = self.insts[h][self.inst_of(h, page)].m.dir_state(page);
            let mut ro = NodeSet::EMPTY;
            let mut rw = NodeSet::EMPTY;
            for n in 0..self.nodes {
                if !self.alive[n] {
                    continue;
                }
                let id = NodeId::new(n as u16).unwrap_or(NodeId::ZERO);
                let la = self.insts[n][self.inst_of(n, page)].m.local_access(page);
                let map = self.mem[n][p].map;
                let agree = matches!(
                    (la, map),
                    (Some(PageAccess::Invalid | PageAccess::Lost), Map::None)
                        | (Some(PageAccess::ReadOnly), Map::Ro)
                        | (Some(PageAccess::Writable), Map::Rw)
                );
                if !agree {
                    return Err(self.fail(
                        FailKind::EndState,
                        Some(page),
                        format!("n{n}'s local state {la:?} disagrees with its mapping {map:?} of page {page}"),
                    ));
                }
                match map {
                    Map::Ro => ro.insert(id),
                    Map::Rw => rw.insert(id),
                    Map::None => {}
                }
            }
            let ok = match st {
                Some(DirState::Zero) => ro.is_empty() && rw.is_empty(),
                // Sharer sets may list nodes that dropped their copy; every
                // holder must be listed and the home must hold one.
                Some(DirState::Shared(s)) => {
                    rw.is_empty()
                        && ro.minus(s).is_empty()
                        && ro.contains(NodeId::new(h as u16).unwrap_or(NodeId::ZERO))
                }
                Some(DirState::Exclusive(o)) => ro.is_empty() && rw == NodeSet::single(o),
                Some(DirState::Lost) => self.lossable[p] && ro.is_empty() && rw.is_empty(),
                None => false,
            };
            if !ok {
                return Err(self.fail(
                    FailKind::EndState,
                    Some(page),
                    format!("page {page}: directory {st:?} but read-only {ro:?} writable {rw:?}"),
                ));
            }
        }
        Ok(())
    }

    /// After a home died, every survivor stopped and told every waiter.
    fn check_fatal_end(&self) -> Result<(), Failure> {
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            for (i, inst) in self.insts[n].iter().enumerate() {
                if inst.m.fatal().is_none() || !inst.fatal_seen {
                    return Err(self.fail(
                        FailKind::Fatal,
                        None,
                        format!("n{n}/{i} did not stop after a home died"),
                    ));
                }
            }
        }
        Ok(())
    }

    // ---- workload ----

    fn run_thread(&mut self, n: usize, th: usize) -> Result<(), Failure> {
        if !self.alive[n] || self.threads[n][th].state != ThreadState::Idle {
            return Ok(());
        }
        let (p, write) = match self.threads[n][th].op {
            Some(op) => op,
            None => {
                if self.ops_left == 0 {
                    self.threads[n][th].state = ThreadState::Stopped;
                    return Ok(());
                }
                self.ops_left -= 1;
                self.issued += 1;
                self.stats.ops += 1;
                self.fire_crashes();
                if self.sc.evict_pct > 0 && self.rng.gen_range(0..100) < self.sc.evict_pct {
                    let victim = self.rng.gen_range(0..self.nodes);
                    let at = self.now + self.rng.gen_range(0..=self.sc.think_max_ns);
                    self.push(at, Ev::Evict(victim as u16));
                }
                if self.rng.gen_range(0..100) < 3 {
                    let i = self.rng.gen_range(0..self.insts[n].len());
                    let at = self.now + self.rng.gen_range(0..=self.sc.think_max_ns);
                    self.push(at, Ev::SpuriousTick(n as u16, i as u16));
                }
                let op = self.gen_op(n, th);
                self.threads[n][th].op = Some(op);
                op
            }
        };
        let page = self.base + p as u64;
        let m = self.mem[n][p];
        if allows(m.map, write) {
            if write {
                self.latest[p] += 1;
                self.mem[n][p].value = self.latest[p];
                self.check_page(p)?;
            } else if m.value != self.latest[p] {
                return Err(self.fail(
                    FailKind::StaleRead,
                    Some(page),
                    format!(
                        "n{n} read {} from page {page}, the latest write is {}",
                        m.value, self.latest[p]
                    ),
                ));
            }
            let t = &mut self.threads[n][th];
            t.op = (t.profile == Profile::ReadModifyWrite && !write).then_some((p, true));
            let at = self.now + self.rng.gen_range(0..=self.sc.think_max_ns);
            self.push(at, Ev::Thread(n as u16, th as u16));
            return Ok(());
        }
        let t = &mut self.threads[n][th];
        t.seq = t.seq.wrapping_add(1);
        let token = ((n as u64) << 48) | ((th as u64) << 32) | u64::from(t.seq);
        t.state = ThreadState::Waiting {
            token,
            pidx: p,
            write,
            since: self.progress,
        };
        let access = if write { Access::Write } else { Access::Read };
        let i = self.inst_of(n, page);
        let out = self.step(
            n,
            i,
            super::super::Input::Fault {
                page,
                access,
                token,
            },
            None,
            false,
        )?;
        if out == Outcome::Busy {
            // Back off exponentially, as a data plane retrying a refused
            // fault would, so tiny pools do not turn into busy loops.
            let t = &mut self.threads[n][th];
            t.state = ThreadState::Idle;
            t.busy_streak = (t.busy_streak + 1).min(8);
            let at = self.now + (self.rng.gen_range(1_000..=10_000) << t.busy_streak);
            self.push(at, Ev::Thread(n as u16, th as u16));
        } else {
            self.threads[n][th].busy_streak = 0;
        }
        Ok(())
    }

    fn gen_op(&mut self, n: usize, th: usize) -> (usize, bool) {
        let pages = self.pages;
        let w = self.sc.write_pct;
        let r = &mut self.rng;
        match self.threads[n][th].profile {
            Profile::Uniform | Profile::Mix => (r.gen_range(0..pages), r.gen_range(0..100) < w),
            Profile::ReadMostly => (r.gen_range(0..pages), r.gen_range(0..100) < 5),
            Profile::HotPage => {
                let p = if r.gen_bool(0.7) {
                    0
                } else {
                    r.gen_range(0..pages)
                };
                (p, r.gen_range(0..100) < w)
            }
            Profile::PingPong => {
                if n < 2 && r.gen_bool(0.9) {
                    (0, true)
                } else {
                    (r.gen_range(0..pages), r.gen_range(0..100) < w)
                }
            }
            Profile::FalseSharing => (r.gen_range(0..pages.min(2)), r.gen_range(0..100) < 85),
            Profile::ReadModifyWrite => (r.gen_range(0..pages), false),
        }
    }

    fn evict(&mut self, n: usize) -> Result<(), Failure> {
        if !self.alive[n] {
            return Ok(());
        }
        let held: Vec<usize> = (0..self.pages)
            .filter(|&p| self.mem[n][p].map != Map::None && self.homes[p] != n)
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let p = held[self.rng.gen_range(0..held.len())];
        let page = self.base + p as u64;
        let i = self.inst_of(n, page);
        self.step(n, i, super::super::Input::Evict { page }, None, false)
            .map(|_| ())
    }

    fn fire_crashes(&mut self) {
        for k in 0..self.sc.crashes.len() {
            let (victim, at) = self.sc.crashes[k];
            if !self.crashes_fired[k] && self.issued >= at {
                self.crashes_fired[k] = true;
                self.push(self.now, Ev::Crash(victim as u16));
            }
        }
    }

    fn crash(&mut self, d: usize) -> Result<(), Failure> {
        if !self.alive[d] {
            return Ok(());
        }
        self.alive[d] = false;
        if self.trace_page.is_some() {
            eprintln!("  -- t={} n{d} crashes", self.now);
        }
        for t in &mut self.threads[d] {
            t.state = ThreadState::Stopped;
        }
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            for i in 0..self.insts[n].len() {
                let at = self.now + self.rng.gen_range(0..=self.sc.detect_max_ns);
                self.pending_deaths += 1;
                self.push(at, Ev::Dead(n as u16, i as u16, d as u16));
            }
        }
        self.update_lossable();
        Ok(())
    }

    fn deliver(&mut self, c: usize) -> Result<(), Failure> {
        let Some(pkt) = self.conns[c].q.pop_front() else {
            return Err(self.fail(
                FailKind::BadAction,
                None,
                "delivery from an empty connection".into(),
            ));
        };
        if !self.alive[pkt.to] {
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
