//! A shard: one pinned thread running one protocol instance over its partition of the pages
//! (16 MiB granules dealt round-robin, [`route::shard_of`]) in a run-to-completion loop, reading
//! the faults of those pages from its own userfaultfd.
//!
//! Each turn: offer parked sends to the transport, reap transport completions (messages,
//! peer failures), read a batch of events from this shard's own userfaultfd, drain this
//! shard's inbound rings (node-down notices; faults only if one ever reached the wrong
//! shard), retry deferred faults, run the
//! protocol's timers, scan for replicas to evict when the node is leaving, then submit once.
//! A turn that found nothing to do spins, or sleeps in the transport's `wait` with the
//! userfaultfd and the doorbell watched, as the idle policy says. Nothing on this path
//! allocates, locks or queues without a bound.

pub mod codec;
pub mod exec;
pub mod mailbox;
pub mod route;
pub mod session;
pub mod trace;

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use uffd_poller::{Event as UffdEvent, EventBuf, FaultFlags};
use wire::ratelimit::LogLimiter;
use wire::{DownReason, Event, FrameError, FrameKeys, Header, MsgType, PeerId, RxBuf, Transport};

use self::exec::{Aftermath, Io};
use self::mailbox::{Command, DirView, Mailbox, PageState, RetireProgress};
use self::route::{next_owned, peer_id, peer_node, prev_owned, shard_of, PeerShards, ShardMsg};
use self::session::{ResumeError, SessionError, Sessions, ACK_DELAY_NS};
use self::trace::{TraceRings, Tracer};
use crate::clock::now_ns;
use crate::doorbell::Doorbell;
use crate::idle::IdlePolicy;
use crate::node_state::NodeState;
use crate::redial::{RedialTx, Request};
use crate::region::Region;
use crate::replica_cache::{self, ReplicaCache};
use crate::spsc::{Consumer, Producer};
use crate::stats::{bump, set, FaultKind, ShardStats};
use coherence::{
    Access, Action, Actions, DirState, Input, Layout, Machine, Msg, NodeId, NodeSet, Outcome,
    PageAccess, StepError,
};

/// Token the shard's userfaultfd is watched with.
const TOKEN_UFFD: u64 = 1;
/// Token the shard's doorbell eventfd is watched with.
const TOKEN_DOORBELL: u64 = 2;
/// Userfaultfd events read per turn.
const UFFD_BATCH: usize = 64;
/// A shard that reads the userfaultfd only when told it is ready still reads it when it has
/// not for this long (a lost readiness report costs at most this much).
const UFFD_RESCAN_NS: u64 = 10_000_000;
/// Messages taken from one inbound ring per turn.
const INBOX_BUDGET: usize = 256;
/// Longest sleep in `wait` (the stop flag is also a doorbell kick; this bounds surprises).
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Replicas offered for eviction per turn while leaving.
const EVICT_BUDGET: usize = 256;
/// Most evictions the replica cache offers per turn, and stale entries it skips.
const CACHE_BUDGET: usize = 64;
/// Busy turns between publications of the protocol counters.
const PUBLISH_EVERY: u32 = 1024;
/// Longest sleep while a session waits for a connection (bounds how late its window is
/// noticed).
const DOWN_CHECK: Duration = Duration::from_millis(10);

/// An authenticated connection for this shard.
#[derive(Debug)]
pub struct Conn {
    /// The peer node.
    pub node: NodeId,
    /// The peer shard on the other end.
    pub peer_shard: u16,
    /// The peer node's shard count.
    pub peer_shard_count: u16,
    /// The stream.
    pub stream: TcpStream,
    /// The keys sealing its frames (from the handshake).
    pub keys: FrameKeys,
    /// The peer offered RDMA verbs in the handshake: a transport that offers them too
    /// carries the connection over verbs.
    pub peer_offers_verbs: bool,
}

/// Hands `c` to `t` as `peer`: over RDMA verbs when both ends offered them in the handshake,
/// else as a TCP connection.
fn add_conn<T: Transport>(t: &mut T, peer: PeerId, c: Conn) -> Result<(), wire::TransportError> {
    let node = Some(c.node.get());
    if t.offers_verbs() && c.peer_offers_verbs {
        t.add_peer_verbs(peer, c.stream, node, &c.keys)
    } else {
        t.add_peer(peer, c.stream, node, &c.keys)
    }
}

/// Everything a shard needs to start.
pub struct ShardSetup<T: Transport> {
    /// This shard's index.
    pub index: u32,
    /// Shards on this node.
    pub count: u32,
    /// The protocol instance for the partition.
    pub machine: Machine,
    /// The cluster layout.
    pub layout: Layout,
    /// The transport (one per shard).
    pub transport: T,
    /// Connections to every peer shard that serves this shard's pages.
    pub conns: Vec<Conn>,
    /// The guest region.
    pub region: Arc<Region>,
    /// Rings from other shards (`(from shard, ring)`).
    pub inbox: Vec<(usize, Consumer<ShardMsg>)>,
    /// Rings to other shards, by destination index (`None` for this shard).
    pub outbox: Vec<Option<Producer<ShardMsg>>>,
    /// Every shard's doorbell, by index.
    pub doorbells: Arc<[Doorbell]>,
    /// Counters and histograms this shard publishes.
    pub stats: Arc<ShardStats>,
    /// State shared with the node.
    pub state: Arc<NodeState>,
    /// What to do when idle.
    pub idle: IdlePolicy,
    /// Frames each session keeps until its peer acknowledges them, and page copies over all
    /// sessions (see [`session`]).
    pub sessions: (usize, usize),
    /// How long a session may be without a working connection before its node is declared
    /// dead; zero: at once, as in a cluster without resumable sessions.
    pub resume_window: Duration,
    /// Where to ask for a new connection when one to a higher-numbered node breaks (`None`:
    /// nobody dials; the engine simulator reconnects by itself).
    pub redial: Option<RedialTx>,
    /// Faults that may wait for a free protocol record.
    pub retry_limit: usize,
    /// Commands from the control side.
    pub mailbox: Arc<Mailbox>,
    /// Pages whose every protocol step is logged (`--trace-page`; empty: none).
    pub traced: Vec<u64>,
    /// Where to publish per-fault timestamps (`None`: not traced).
    pub trace: Option<TraceRings>,
    /// Where the protocol's time comes from (the monotonic clock but in the simulator).
    pub clock: crate::clock::Clock,
    /// Most pages of other homes this shard may hold at once (0: no bound); see
    /// [`crate::replica_cache`].
    pub replica_cache: usize,
}

impl<T: Transport> std::fmt::Debug for ShardSetup<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSetup")
            .field("index", &self.index)
            .field("count", &self.count)
            .finish()
    }
}

/// A running shard (see the module documentation).
pub struct Shard<T: Transport> {
    index: u32,
    count: u32,
    me: NodeId,
    machine: Machine,
    actions: Actions,
    io: Io<T>,
    events: Vec<Event>,
    ubuf: Option<Box<EventBuf<UFFD_BATCH>>>,
    inbox: Vec<(usize, Consumer<ShardMsg>)>,
    outbox: Vec<Option<Producer<ShardMsg>>>,
    doorbells: Arc<[Doorbell]>,
    retry: VecDeque<ShardMsg>,
    retry_limit: usize,
    state: Arc<NodeState>,
    idle: IdlePolicy,
    down: NodeSet,
    resume_window_ns: u64,
    redial: Option<RedialTx>,
    evict_gen: u64,
    evict_cursor: Option<u64>,
    mailbox: Arc<Mailbox>,
    turns_since_publish: u32,
    traced: Vec<u64>,
    /// The page of this shard's last remote read miss (sequential-prefetch trigger).
    last_miss: u64,
    /// Whether the userfaultfd is read only when the transport reported it readable (a
    /// shard that may sleep: it enters the kernel anyway, so readiness costs nothing extra;
    /// a spinning shard reads it every turn instead, see [`Shard::turn`]).
    uffd_gated: bool,
    /// The userfaultfd may hold events (reported readable, or the last read filled the
    /// batch).
    uffd_ready: bool,
    /// When the userfaultfd was last read.
    uffd_read_at: u64,
    /// The bound on pages of other homes held here, if there is one.
    cache: Option<Box<ReplicaCache>>,
    /// A home's leave in progress (docs/protocol.md §13): the leaving node and, at every
    /// other node, the fence on what this shard had sent it when `Retire` was processed.
    retire: Option<(NodeId, Vec<(u32, u64)>)>,
    /// Home migration's policy, when it is on ([`coherence::Config::migration`]).
    placement: Option<crate::placement::Policy>,
}

impl<T: Transport> std::fmt::Debug for Shard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("index", &self.index)
            .field("me", &self.me)
            .finish()
    }
}

impl<T: Transport> Shard<T> {
    /// Takes over the connections and prepares the loop.
    pub fn new(s: ShardSetup<T>) -> Result<Self, wire::TransportError> {
        let me = s.machine.node();
        let mut transport = s.transport;
        assert_eq!(
            s.region.partitions(),
            s.count,
            "the region has one userfaultfd per shard"
        );
        transport.watch_fd(s.region.uffd(s.index).as_raw_fd(), TOKEN_UFFD)?;
        transport.watch_fd(s.doorbells[s.index as usize].fd(), TOKEN_DOORBELL)?;
        let actions = s.machine.new_actions();
        let sessions = Sessions::new(me, s.state.incarnation(), s.sessions.0, s.sessions.1);
        let mut shard = Self {
            index: s.index,
            count: s.count,
            me,
            machine: s.machine,
            actions,
            io: Io {
                me,
                transport,
                region: s.region,
                stats: s.stats,
                sessions,
                peers: PeerShards::default(),
                layout: s.layout,
                log: LogLimiter::new(10, 2),
                state: s.state.clone(),
                tracer: s.trace.map(Tracer::new),
                deferred: exec::Deferred::default(),
                clock: s.clock,
            },
            events: Vec::with_capacity(wire::TransportConfig::default().poll_budget.max(1024)),
            ubuf: Some(Box::default()),
            inbox: s.inbox,
            outbox: s.outbox,
            doorbells: s.doorbells,
            retry: VecDeque::with_capacity(s.retry_limit),
            retry_limit: s.retry_limit,
            state: s.state,
            idle: s.idle,
            down: NodeSet::default(),
            resume_window_ns: s.resume_window.as_nanos().min(u128::from(u64::MAX)) as u64,
            redial: s.redial,
            evict_gen: 0,
            evict_cursor: None,
            mailbox: s.mailbox,
            turns_since_publish: 0,
            traced: s.traced,
            last_miss: u64::MAX,
            uffd_gated: !matches!(s.idle, IdlePolicy::Spin),
            uffd_ready: true,
            uffd_read_at: 0,
            cache: None,
            placement: None,
            retire: None,
        };
        if shard.machine.config().migration {
            shard.placement = Some(crate::placement::Policy::default());
        }
        if s.replica_cache > 0 {
            shard.cache = Some(Box::new(ReplicaCache::new(
                s.replica_cache,
                shard.machine.partition(),
                shard.machine.layout(),
            )));
        }
        // In the order of the peer (node, shard): a transport that sets a connection up with
        // a blocking exchange (verbs: each side writes its message, then waits for the
        // peer's) then waits only on peers that come before it in one order every shard of
        // every node shares, so no set of shards can wait on each other in a cycle.
        let mut conns = s.conns;
        conns.sort_by_key(|c| (c.node.get(), c.peer_shard));
        for c in conns {
            let peer = peer_id(c.node, c.peer_shard);
            shard.open_sessions(c.node, c.peer_shard_count);
            add_conn(&mut shard.io.transport, peer, c)?;
            let now = shard.io.clock.now();
            shard
                .io
                .sessions
                .attach(&mut shard.io.transport, peer, now)?;
        }
        Ok(shard)
    }

    /// Creates the sessions with `node`'s shards (when new) and routes its pages to them.
    fn open_sessions(&mut self, node: NodeId, shards: u16) {
        let now = self.io.clock.now();
        self.io.sessions.open(node, shards, now);
        self.io.peers.set(node, shards);
    }

    /// Runs the loop until the node stops.
    pub fn run(mut self) {
        self.state.shard_started();
        let mut last_work = now_ns();
        while !self.state.stopping() {
            let work = self.turn();
            self.turns_since_publish += 1;
            if work > 0 {
                bump(&self.io.stats.busy_turns);
                last_work = now_ns();
                if self.turns_since_publish >= PUBLISH_EVERY {
                    self.publish();
                }
                continue;
            }
            bump(&self.io.stats.idle_turns);
            self.publish();
            let sleep = match self.idle {
                IdlePolicy::Spin => false,
                IdlePolicy::Block => true,
                IdlePolicy::Hybrid { spin } => {
                    now_ns().saturating_sub(last_work) >= spin.as_nanos() as u64
                }
            };
            if sleep {
                self.sleep();
            } else {
                std::hint::spin_loop();
            }
        }
        // Whatever is still queued goes out before the connections close.
        let _ = self.io.transport.flush();
        self.state.shard_stopped();
    }

    /// The engine simulator's hooks: a fault as if a thread had touched `page` (it takes the
    /// path a userfaultfd event takes), the protocol instance to check, and the shard
    /// counts of peers it reaches through the simulated transport.
    #[cfg(test)]
    pub(crate) fn sim_fault(&mut self, page: u64, access: Access) {
        let kind = match access {
            Access::Read => FaultKind::Read,
            Access::Write => FaultKind::Write,
        };
        let token = (self.io.clock.now() << 2) | kind as u64;
        self.route_fault(ShardMsg::Fault {
            page,
            access,
            token,
        });
    }

    /// See [`Shard::sim_fault`]: asks this shard (the page's home) to move the page's home to
    /// `to`, as the placement policy would; whether the move started.
    #[cfg(test)]
    pub(crate) fn sim_move(&mut self, page: u64, to: NodeId) -> bool {
        matches!(
            self.step(Input::MoveHome { page, to }, None, None),
            Some(Outcome::MoveStarted)
        )
    }

    /// See [`Shard::sim_fault`].
    #[cfg(test)]
    pub(crate) fn sim_machine(&self) -> &Machine {
        &self.machine
    }

    /// See [`Shard::sim_fault`]: why the node stopped, if it did.
    #[cfg(test)]
    pub(crate) fn sim_stopped(&self) -> Option<crate::node_state::StopReason> {
        self.state.fatal()
    }

    /// See [`Shard::sim_fault`]: `node` (one shard) is reachable through the simulated
    /// transport, on a new connection (the first, or one after a break): the session
    /// resumes on it.
    #[cfg(test)]
    pub(crate) fn sim_peer(&mut self, node: NodeId) {
        self.open_sessions(node, 1);
        let now = self.io.clock.now();
        let peer = peer_id(node, 0);
        if let Err(e) = self.io.sessions.attach(&mut self.io.transport, peer, now) {
            panic!("the simulated connection to node {node} refused its first frame: {e}");
        }
    }

    /// See [`Shard::sim_fault`]: the transport, to connect it again.
    #[cfg(test)]
    pub(crate) fn sim_transport(&mut self) -> &mut T {
        &mut self.io.transport
    }

    /// See [`Shard::sim_fault`]: sessions resumed on a new connection so far.
    #[cfg(test)]
    pub(crate) fn sim_restored(&self) -> u64 {
        self.io.sessions.counts().restored
    }

    /// See [`Shard::sim_fault`]: evictions the replica cache started, and pages of other homes
    /// held now beyond the bound (with those whose eviction is on its way).
    #[cfg(test)]
    pub(crate) fn sim_cache(&self) -> (u64, usize) {
        let evictions = self
            .io
            .stats
            .replica_evictions
            .load(std::sync::atomic::Ordering::Relaxed);
        let over = self
            .cache
            .as_ref()
            .map_or(0, |c| c.held().saturating_sub(c.cap()));
        (evictions, over)
    }

    /// See [`Shard::sim_fault`]: whether the session with `node` waits for a connection.
    #[cfg(test)]
    pub(crate) fn sim_detached(&self, node: NodeId) -> bool {
        !self.down.contains(node) && !self.io.sessions.is_attached(peer_id(node, 0))
    }

    /// See [`Shard::sim_fault`]: the next time this shard has something to do by the clock
    /// (a protocol timer, an acknowledgement, a session's window running out).
    #[cfg(test)]
    pub(crate) fn sim_next_deadline(&self) -> Option<u64> {
        let now = self.io.clock.now();
        [
            self.machine.next_deadline(),
            self.io.sessions.next_ack_due(),
            self.io
                .sessions
                .any_down()
                .then(|| now + self.resume_window_ns / 4),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// See [`Shard::sim_fault`]: whether a fault on `page` waits in this shard's retry list
    /// (the protocol had no room for it yet).
    #[cfg(test)]
    pub(crate) fn sim_deferred(&self, page: u64) -> bool {
        self.retry
            .iter()
            .any(|m| matches!(m, ShardMsg::Fault { page: p, .. } if *p == page))
    }

    /// Mirrors the protocol instance's counters into the published atomics.
    fn publish(&mut self) {
        self.turns_since_publish = 0;
        self.io.stats.proto.publish(self.machine.stats());
    }

    /// Carries out the control side's commands.
    fn mailbox(&mut self) -> usize {
        let cmds = self.mailbox.take();
        let n = cmds.len();
        for c in cmds {
            match c {
                Command::Extend(layout) => match self.machine.extend(layout.clone()) {
                    Ok(()) => {
                        if let Some(c) = &mut self.cache {
                            c.grow(&layout);
                        }
                        self.io.layout = layout;
                    }
                    Err(e) => self
                        .io
                        .log
                        .warn(format_args!("cannot grow the layout: {e}")),
                },
                Command::AddConns(conns) => {
                    for c in conns {
                        self.take_conn(c);
                    }
                }
                Command::QueryPage(page, reply) => {
                    let dir = self.machine.dir_entry(page).map(|e| {
                        let (state, owner, sharers) = match e.state() {
                            DirState::Zero => ("zero", None, Vec::new()),
                            DirState::Shared(set) => {
                                ("shared", None, set.iter().map(|n| n.get()).collect())
                            }
                            DirState::Exclusive(o) => ("exclusive", Some(o.get()), Vec::new()),
                            DirState::Lost => ("lost", None, Vec::new()),
                        };
                        DirView {
                            state,
                            owner,
                            sharers,
                            version: e.version(),
                            busy: e.busy(),
                        }
                    });
                    let moves = self.io.stats.moves.lock().map_or_else(
                        |_| Vec::new(),
                        |log| log.iter().filter(|m| m.page == page).copied().collect(),
                    );
                    let _ = reply.send(PageState {
                        dir,
                        recent: self.io.stats.heat.recent(page),
                        moved_to: self.machine.moved_to(page).map(|n| n.get()),
                        moves,
                    });
                }
                Command::Retire { node, to, reply } => {
                    let _ = reply.send(self.retire(node, to));
                }
                Command::RetireStatus { count_homed, reply } => {
                    let _ = reply.send(self.retire_progress(count_homed));
                }
                Command::Retired { node, to, reply } => {
                    let _ = reply.send(self.retired(node, to));
                }
            }
        }
        self.mailbox.finished(n as u64);
        n
    }

    /// `Command::Retire`: the protocol's `Retire`, and at every other node a fence on what
    /// this shard has sent the leaving node so far.
    fn retire(&mut self, node: NodeId, to: NodeId) -> Option<String> {
        if let Err(e) = self.control_step(Input::Retire { node, to }) {
            return Some(e);
        }
        let fence = if node == self.me {
            Vec::new()
        } else {
            self.io.sessions.fence(node)
        };
        self.retire = Some((node, fence));
        None
    }

    /// Feeds the machine an input from the control side and carries out its actions; a
    /// refusal is the caller's to report (it is not a peer's protocol violation).
    fn control_step(&mut self, input: Input) -> Result<(), String> {
        let now = self.io.clock.now();
        let res = self.machine.step(now, input, &mut self.actions);
        let after = self.io.execute(&self.actions, None, &self.machine);
        self.aftermath(after);
        res.map(|_| ()).map_err(|e| e.to_string())
    }

    /// How this shard's part of the leave in progress stands.
    fn retire_progress(&self, count_homed: bool) -> RetireProgress {
        let Some((node, fence)) = &self.retire else {
            return RetireProgress::default();
        };
        let leaving = *node == self.me;
        RetireProgress {
            fenced: leaving || self.io.sessions.passed(fence),
            drained: leaving
                && self.machine.drained()
                && self.machine.is_quiescent()
                && self.io.sessions.all_acked(),
            homed: if leaving && count_homed {
                self.machine.homed_pages() as u64
            } else {
                0
            },
        }
    }

    /// `Command::Retired`: the protocol's `Retired`; the node that left is gone for this
    /// shard (its sessions and connections close, without a failure being reported).
    fn retired(&mut self, node: NodeId, to: NodeId) -> Option<String> {
        if let Err(e) = self.control_step(Input::Retired { node, to }) {
            return Some(e);
        }
        self.retire = None;
        if node == self.me {
            // This node has left: the others closing their connections is expected.
            self.state.expect_departures();
        } else {
            self.state.mark_left(node.get());
            self.node_down_local(node, "it left");
        }
        None
    }

    /// One loop turn; returns how much work it found.
    pub(crate) fn turn(&mut self) -> usize {
        if self.mailbox.has_work() {
            self.mailbox();
        }
        if self.state.dead() & !self.down.bits() != 0 {
            self.sync_dead();
        }
        let mut work = self.pump();
        work += self.poll_transport();
        // A read of an empty userfaultfd is a system call that finds nothing: a home serving
        // remote reads made about four per fault with its doorbell reads (docs/benchmarks.md,
        // "Profile of a remote read"), one per turn. A shard that may sleep reads
        // it only once the transport's watch reported it readable (or a full batch suggests
        // more; or it has not been read for UFFD_RESCAN_NS). A spinning shard reads it every
        // turn: for it, learning of readiness would take an extra io_uring_enter per fault
        // (task work under COOP_TASKRUN), which costs more throughput than the reads.
        if !self.uffd_gated
            || self.uffd_ready
            || self.io.clock.now().saturating_sub(self.uffd_read_at) >= UFFD_RESCAN_NS
        {
            work += self.read_faults();
        }
        work += self.drain_inbox();
        work += self.retry_faults();
        if let Some(to) = self.machine.draining() {
            // A leaving node's drain may use half of what the connection to its successor
            // holds, whatever else is in flight; acknowledgements make room again (and wake
            // this shard).
            let room = self.io.sessions.bulk_room(to);
            self.machine.allow_drain(room as u32);
        }
        work += self.run_timers();
        work += self.evict_scan();
        if self.cache.is_some() {
            work += self.cache_turn();
        }
        work += self.sessions_turn();
        if let Err(e) = self.io.transport.flush() {
            self.io
                .log
                .warn(format_args!("transport flush failed: {e}"));
        }
        if let Some(t) = &mut self.io.tracer {
            t.flushed();
        }
        work
    }

    fn sleep(&mut self) {
        let my_bell = &self.doorbells[self.index as usize];
        if !my_bell.prepare_sleep() {
            my_bell.awake();
            return;
        }
        let mut timeout = match self.machine.next_deadline() {
            Some(d) => Duration::from_nanos(d.saturating_sub(self.io.clock.now())).min(MAX_SLEEP),
            None => MAX_SLEEP,
        };
        if self.io.sessions.any_down() {
            // A session's window can run out while the shard sleeps.
            timeout = timeout.min(DOWN_CHECK);
        }
        if let Some(due) = self.io.sessions.next_ack_due() {
            let left = due.saturating_sub(self.io.clock.now());
            timeout = timeout.min(Duration::from_nanos(left));
        }
        bump(&self.io.stats.sleeps);
        if let Err(e) = self.io.transport.wait(Some(timeout)) {
            self.io.log.warn(format_args!("transport wait failed: {e}"));
        }
        self.doorbells[self.index as usize].awake();
    }

    /// Feeds one input to the machine and carries out its actions.
    fn step(
        &mut self,
        input: Input,
        payload: Option<&RxBuf>,
        from: Option<NodeId>,
    ) -> Option<Outcome> {
        let now = self.io.clock.now();
        if let Some(t) = &mut self.io.tracer {
            t.set_rx(if from.is_some() { now } else { 0 });
        }
        let res = self.machine.step(now, input, &mut self.actions);
        if !self.traced.is_empty() {
            self.trace(&input, from);
        }
        let after = self.io.execute(&self.actions, payload, &self.machine);
        if self.cache.is_some() {
            self.note_replicas(input.page());
        }
        self.aftermath(after);
        match res {
            Ok(o) => Some(o),
            Err(e) => {
                bump(&self.io.stats.violations);
                self.io.log.warn(format_args!("protocol: {e}"));
                if let (Some(node), StepError::Violation { .. } | StepError::Misrouted { .. }) =
                    (from, &e)
                {
                    self.io.log.warn(format_args!(
                        "closing the connection to node {node}, which broke the protocol"
                    ));
                    self.node_down(node, "protocol violation");
                }
                None
            }
        }
    }

    /// Logs one step on a traced page: its input and every action, each with the page and
    /// the transaction id that correlates the steps of one fault across nodes.
    fn trace(&self, input: &Input, from: Option<NodeId>) {
        // An input not about one page (a tick, a death) is traced when its actions touch a
        // traced page.
        let Some(page) = input
            .page()
            .or_else(|| self.actions.iter().find_map(|a| a.page()))
        else {
            return;
        };
        if !self.traced.contains(&page) {
            return;
        }
        let txn = match *input {
            Input::Message { msg, .. } => msg.txn(),
            _ => self
                .actions
                .iter()
                .find_map(|a| match a {
                    coherence::Action::Send { msg, .. } => Some(msg.txn()),
                    _ => None,
                })
                .unwrap_or(0),
        };
        tracing::info!(target: "ssi_dp::trace", page, txn, from = from.map(|n| n.get()), "input {input:?}");
        for a in &self.actions {
            match a {
                coherence::Action::Send { to, msg, .. } => {
                    tracing::info!(target: "ssi_dp::trace", page, txn = msg.txn(), to = to.get(), "send {msg:?}")
                }
                other => tracing::info!(target: "ssi_dp::trace", page, txn, "action {other:?}"),
            }
        }
    }

    fn aftermath(&mut self, after: Aftermath) {
        if let Some(reason) = after.fatal {
            self.state.set_fatal(reason);
        }
        for n in after.down.iter() {
            self.node_down(n, "its connection refused a send");
        }
    }

    fn poll_transport(&mut self) -> usize {
        let events = &mut self.events;
        let n = match self.io.transport.poll(|e| events.push(e)) {
            Ok(n) => n,
            Err(e) => {
                self.io.log.warn(format_args!("transport poll failed: {e}"));
                0
            }
        };
        let mut i = 0;
        // The steps of one batch may hold write-protects back (see `exec::Deferred`).
        self.io.deferred.on = true;
        while i < self.events.len() {
            // Events are taken by value; the vector keeps its capacity.
            let e = std::mem::replace(&mut self.events[i], Event::FdReady { token: 0 });
            self.on_event(e);
            i += 1;
        }
        self.io.deferred.on = false;
        let mut after = Aftermath::default();
        self.io.run_deferred(&mut after);
        self.aftermath(after);
        self.events.clear();
        n
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Received {
                peer,
                header,
                payload,
            } => {
                self.on_received(peer, header, payload.as_ref());
                if let Some(buf) = payload {
                    self.io.transport.release(buf);
                }
            }
            Event::PeerDown { peer, reason } => self.on_peer_down(peer, reason),
            Event::SendDone { token, .. } => self.io.sessions.send_done(token),
            Event::FdReady { token } => {
                if token == TOKEN_DOORBELL {
                    self.doorbells[self.index as usize].drain();
                } else if token == TOKEN_UFFD {
                    self.uffd_ready = true;
                }
            }
        }
    }

    /// A frame from `peer`: session frames are the session's, protocol frames count in it
    /// before the protocol sees them.
    fn on_received(&mut self, peer: PeerId, header: Header, payload: Option<&RxBuf>) {
        let node = NodeId::new(peer_node(peer)).expect("peer ids carry valid node ids");
        if self.down.contains(node) {
            return;
        }
        let now = self.io.clock.now();
        match header.ty {
            MsgType::Resume => self.on_resume(peer, &header),
            MsgType::Ack => {
                if let Err(e) = self.io.sessions.on_ack(peer, header.arg) {
                    self.session_broken(node, e);
                }
            }
            MsgType::Ping | MsgType::Pong => {}
            ty => {
                let ack_now = match self.io.sessions.on_frame(peer, ty, now) {
                    Ok(a) => a,
                    Err(e) => return self.session_broken(node, e),
                };
                bump(&self.io.stats.msgs_received);
                crate::stats::add(&self.io.stats.bytes_received, u64::from(header.payload_len));
                self.on_frame(node, header, payload);
                if ack_now {
                    // Refused for room: the next idle turn or frame tries again.
                    if let Err(e) = self.io.sessions.ack(&mut self.io.transport, peer) {
                        self.io.log.warn(format_args!(
                            "acknowledging frames of node {node} failed: {e}"
                        ));
                    }
                }
            }
        }
    }

    fn on_resume(&mut self, peer: PeerId, h: &Header) {
        let node = NodeId::new(peer_node(peer)).expect("peer ids carry valid node ids");
        let now = self.io.clock.now();
        match self
            .io
            .sessions
            .on_resume(&mut self.io.transport, peer, h.txn, h.arg, now)
        {
            Ok(r) if r.again => {
                bump(&self.io.stats.links_restored);
                crate::stats::add(&self.io.stats.frames_resent, r.resent);
                self.io.log.warn(format_args!(
                    "connection to node {node} (its shard {}) restored after {} ms; {} frames sent again",
                    peer & 0xffff,
                    r.down_ns / 1_000_000,
                    r.resent
                ));
            }
            Ok(_) => {}
            Err(ResumeError::Session(e)) => self.session_broken(node, e),
            Err(ResumeError::Transport(e)) => self
                .io
                .log
                .warn(format_args!("resending to node {node} failed: {e}")),
            Err(ResumeError::NoSession) => {}
        }
    }

    /// A session cannot go on: its node is treated as failed.
    fn session_broken(&mut self, node: NodeId, e: SessionError) {
        if !matches!(e, SessionError::Restarted) {
            bump(&self.io.stats.violations);
        }
        self.io
            .log
            .warn(format_args!("closing the session with node {node}: {e}"));
        self.node_down(node, &format!("its session broke: {e}"));
    }

    /// A connection is gone. A reset, a close or a frame that failed authentication is a
    /// transient fault while the session's window lasts: the session waits for a new
    /// connection (this node dials one when the peer's id is higher). Anything else, or any
    /// loss while the cluster is ending, is the node's failure.
    fn on_peer_down(&mut self, peer: PeerId, reason: DownReason) {
        let node = peer_node(peer);
        let Ok(n) = NodeId::new(node) else {
            return;
        };
        let now = self.io.clock.now();
        if let Some(conn) = self.io.sessions.detach(peer, now) {
            // The old connection of a session that has a new one finished closing.
            return self.attach(conn);
        }
        if self.down.contains(n) {
            return;
        }
        if reason == DownReason::Local {
            // Closed here without a replacement (a new connection that could not be set
            // up): the session waits for another one.
            return self.redial(peer);
        }
        let transient = matches!(
            reason,
            DownReason::Closed
                | DownReason::Io(_)
                | DownReason::Protocol(FrameError::Unauthenticated)
        );
        let ending = self.state.departures_expected() || self.state.left() & (1u64 << node) != 0;
        if !transient || ending || self.resume_window_ns == 0 {
            return self.node_down(n, &reason.to_string());
        }
        bump(&self.io.stats.links_lost);
        self.io.log.warn(format_args!(
            "connection to node {n} (its shard {}) lost: {reason}; reconnecting (the node is \
             declared dead if it is not back within {} ms)",
            peer & 0xffff,
            self.resume_window_ns / 1_000_000
        ));
        self.redial(peer);
    }

    /// Asks for a new connection to `peer` when this node is the one that dials it.
    fn redial(&mut self, peer: PeerId) {
        let node = NodeId::new(peer_node(peer)).expect("peer ids carry valid node ids");
        let Some(tx) = &self.redial else { return };
        if node.get() < self.me.get() {
            return;
        }
        let r = Request {
            shard: self.index as u16,
            node,
            peer_shard: (peer & 0xffff) as u16,
        };
        if !tx.request(r) {
            self.io.log.warn(format_args!(
                "cannot ask for a new connection to node {node}: too many requests wait"
            ));
        }
    }

    /// A new authenticated connection for this shard (a node that joined, or a session's
    /// new connection after a break).
    fn take_conn(&mut self, c: Conn) {
        let node = c.node;
        let known = self.io.sessions.shard_count(node);
        if self.down.contains(node) {
            self.io.log.warn(format_args!(
                "refusing a connection from node {node}: it was declared dead"
            ));
            return;
        }
        if (known != 0 && known != c.peer_shard_count) || c.peer_shard >= c.peer_shard_count {
            self.io.log.warn(format_args!(
                "refusing a connection from node {node}: it reports shard {} of {}, this \
                 node knows {known} shards",
                c.peer_shard, c.peer_shard_count
            ));
            return;
        }
        self.open_sessions(node, c.peer_shard_count);
        let peer = peer_id(node, c.peer_shard);
        if self.io.sessions.is_attached(peer) {
            // The peer saw its connection break before this side did: the old one closes
            // first (frames wait), and the new one is attached at its `PeerDown`.
            let now = self.io.clock.now();
            if self.io.sessions.link(peer) == Some(session::Link::Up) {
                bump(&self.io.stats.links_lost);
            }
            self.io.sessions.replace(peer, c, now);
            if let Err(e) = self.io.transport.close_peer(peer) {
                self.io.log.warn(format_args!(
                    "closing the old connection to node {node}: {e}"
                ));
            }
            return;
        }
        self.attach(c);
    }

    /// Puts a session on a new connection: the transport takes it, our `Resume` goes first.
    fn attach(&mut self, c: Conn) {
        let node = c.node;
        let peer = peer_id(node, c.peer_shard);
        if let Err(e) = add_conn(&mut self.io.transport, peer, c) {
            self.io.log.warn(format_args!(
                "cannot take the new connection to node {node}: {e}"
            ));
            return self.redial(peer);
        }
        let now = self.io.clock.now();
        if let Err(e) = self.io.sessions.attach(&mut self.io.transport, peer, now) {
            self.io.log.warn(format_args!(
                "resuming the session with node {node} failed: {e}"
            ));
            // Its PeerDown follows; the session waits for another connection.
            if let Err(e) = self.io.transport.close_peer(peer) {
                self.io
                    .log
                    .warn(format_args!("closing the connection to node {node}: {e}"));
            }
        }
    }

    /// Offers frames waiting for transport room again.
    fn pump(&mut self) -> usize {
        let (n, failed) = self.io.sessions.pump(&mut self.io.transport);
        if let Some((peer, e)) = failed {
            let node = peer_node(peer);
            self.io
                .log
                .warn(format_args!("send to node {node} failed: {e}"));
            if let Ok(node) = NodeId::new(node) {
                self.node_down(node, "its connection refused a send");
            }
        }
        n
    }

    /// Acknowledgements that waited long enough, and sessions whose window ran out.
    fn sessions_turn(&mut self) -> usize {
        let now = self.io.clock.now();
        let mut work = 0;
        if self.io.sessions.any_unacked() {
            work += self
                .io
                .sessions
                .ack_due(&mut self.io.transport, now, ACK_DELAY_NS);
        }
        if self.io.sessions.any_down() {
            if let Some(node) = self.io.sessions.expired(now, self.resume_window_ns) {
                let why = format!(
                    "its connection broke and was not restored within {} ms",
                    self.resume_window_ns / 1_000_000
                );
                self.node_down(node, &why);
                work += 1;
            }
        }
        work
    }

    fn on_frame(&mut self, from: NodeId, h: wire::Header, payload: Option<&RxBuf>) {
        let msg = match codec::decode(&h) {
            Ok(m) => m,
            Err(e) => {
                bump(&self.io.stats.violations);
                self.io
                    .log
                    .warn(format_args!("malformed message from node {from}: {e}"));
                self.node_down(from, "malformed protocol message");
                return;
            }
        };
        let request = matches!(
            msg,
            Msg::ReadReq { .. } | Msg::WriteReq { .. } | Msg::UpgradeReq { .. }
        );
        let count = if request {
            self.io.stats.heat.record(msg.page(), from.get())
        } else {
            0
        };
        if shard_of(msg.page(), self.count) != self.index
            || msg.page() >= self.machine.layout().end_page()
        {
            bump(&self.io.stats.violations);
            self.io.log.warn(format_args!(
                "node {from} sent page {} to the wrong shard or outside the address space",
                msg.page()
            ));
            self.node_down(from, "misrouted message");
            return;
        }
        let done = self.step(Input::Message { from, msg }, payload, Some(from));
        if request {
            self.consider_move(msg.page(), count);
        }
        if let (Msg::HomeMove { page, .. }, Some(Outcome::Done)) = (msg, done) {
            if self.machine.is_home(page) {
                let own = self.io.layout.home_of(page) == Ok(self.me);
                self.io.stats.heat.home_arrived(page, own);
            }
        }
    }

    /// Home migration: after a request for a page homed here, move the page's home to the
    /// node that uses it most, if the policy says so ([`crate::placement`]).
    fn consider_move(&mut self, page: u64, count: u64) {
        let Some(policy) = self.placement else {
            return;
        };
        if !self.machine.is_home(page) {
            return;
        }
        let to = policy.decide(
            &self.io.stats.heat,
            self.machine.layout(),
            page,
            count,
            self.me,
        );
        let Some(to) = to else {
            return;
        };
        let (requests, of) = self
            .io
            .stats
            .heat
            .dominant(page)
            .map_or((0, 0), |(_, n, all)| (n, all));
        if let Some(Outcome::MoveStarted) = self.step(Input::MoveHome { page, to }, None, None) {
            self.io.stats.heat.forget(page);
            // Once per move, never per fault: the control side reads the log under the lock.
            if let Ok(mut log) = self.io.stats.moves.lock() {
                if log.len() == crate::stats::MOVE_LOG {
                    log.pop_front();
                }
                log.push_back(crate::stats::MoveRecord {
                    page,
                    to: to.get(),
                    requests,
                    of,
                });
            }
        }
    }

    fn read_faults(&mut self) -> usize {
        let mut buf = self.ubuf.take().expect("event buffer is always returned");
        // The events borrow `buf` (taken out of `self`), not the region: no clone per turn.
        let pages = self.io.region.page_index();
        let now = self.io.clock.now();
        self.uffd_read_at = now;
        let n = match self.io.region.uffd(self.index).read_events(&mut buf) {
            Ok(evs) => {
                // A full batch may have left events behind.
                self.uffd_ready = evs.len() == UFFD_BATCH;
                for ev in evs {
                    match *ev {
                        UffdEvent::PageFault(f) => {
                            bump(&self.io.stats.uffd_events);
                            let Some(page) = pages.page_of(f.address) else {
                                continue;
                            };
                            let (access, kind) = if f.flags.contains(FaultFlags::WP) {
                                (Access::Write, FaultKind::Upgrade)
                            } else if f.flags.contains(FaultFlags::WRITE) {
                                (Access::Write, FaultKind::Write)
                            } else {
                                (Access::Read, FaultKind::Read)
                            };
                            let token = (now << 2) | kind as u64;
                            self.route_fault(ShardMsg::Fault {
                                page,
                                access,
                                token,
                            });
                        }
                        other => self
                            .io
                            .log
                            .warn(format_args!("unexpected userfaultfd event {other:?}")),
                    }
                }
                evs.len()
            }
            Err(e) => {
                self.uffd_ready = false;
                self.io
                    .log
                    .warn(format_args!("reading the userfaultfd failed: {e}"));
                0
            }
        };
        self.ubuf = Some(buf);
        n
    }

    /// Hands a fault to the shard that owns its page. Each shard reads its own userfaultfd,
    /// registered over exactly its granules, so the owner is this shard; the hand-over over
    /// the SPSC ring only runs (and `faults_forwarded` counts it) if the registration and
    /// [`shard_of`] ever disagreed, rather than losing the fault.
    fn route_fault(&mut self, m: ShardMsg) {
        let ShardMsg::Fault { page, .. } = m else {
            return;
        };
        let owner = shard_of(page, self.count) as usize;
        if owner == self.index as usize {
            self.fault(m);
            return;
        }
        bump(&self.io.stats.faults_forwarded);
        let pushed = self.outbox[owner]
            .as_mut()
            .is_some_and(|tx| tx.push(m).is_ok());
        if pushed {
            self.doorbells[owner].ring(self.index as usize);
        } else {
            self.defer(m);
        }
    }

    fn fault(&mut self, m: ShardMsg) {
        let ShardMsg::Fault {
            page,
            access,
            token,
        } = m
        else {
            return;
        };
        let remote = match self.machine.home_of(page) {
            Some(h) if h == self.me => {
                self.io.stats.heat.record(page, self.me.get());
                false
            }
            Some(_) => true,
            None => {
                // Beyond the address space (a stray pointer into the reserved region): the
                // toucher gets SIGBUS instead of waiting forever.
                bump(&self.io.stats.faults_out_of_range);
                self.io.log.warn(format_args!(
                    "fault on page {page}, beyond the address space"
                ));
                let addr = self.io.region.page_addr(page);
                if let Err(e) = self.io.region.uffd_of(page).poison(
                    addr,
                    4096,
                    uffd_poller::PoisonMode::empty(),
                ) {
                    // Without POISON the thread stays blocked; the node keeps serving.
                    self.io.log.warn(format_args!(
                        "poison of page {page} (beyond the address space) failed: {e}; \
                         the thread that touched it stays blocked"
                    ));
                }
                return;
            }
        };
        if let Some(Outcome::Busy) = self.step(
            Input::Fault {
                page,
                access,
                token,
            },
            None,
            None,
        ) {
            self.defer(m);
            return;
        }
        if remote && access == Access::Read {
            self.prefetch_after(page);
        }
    }

    /// Sequential prefetch: a remote read miss on `page` whose predecessor in this shard's
    /// partition missed just before or is held also requests the next `depth - 1` pages of
    /// the partition (the rest of its granule, then the shard's next granule). Their
    /// requests leave in this turn's flush with the fault's own. Each is an ordinary read
    /// transaction (see `Input::Prefetch`); pages held, busy or homed here are skipped, and a
    /// quarter of the protocol records stay for faults.
    fn prefetch_after(&mut self, page: u64) {
        let depth = self.state.prefetch();
        let prev = prev_owned(page, self.count);
        let sequential = prev.is_some_and(|q| {
            q == self.last_miss
                || matches!(
                    self.machine.local_access(q),
                    Some(PageAccess::ReadOnly | PageAccess::Writable)
                )
        });
        self.last_miss = page;
        if depth <= 1 || !sequential || self.evict_cursor.is_some() {
            return;
        }
        let end = self.machine.layout().end_page();
        let mut q = page;
        for _ in 1..depth {
            q = next_owned(q, self.count);
            if q >= end {
                break;
            }
            self.step(Input::Prefetch { page: q }, None, None);
        }
    }

    /// Keeps a fault for a later turn; when even that list is full, gives it back to the
    /// kernel (the thread is woken and faults again).
    fn defer(&mut self, m: ShardMsg) {
        if self.retry.len() < self.retry_limit {
            bump(&self.io.stats.faults_deferred);
            self.retry.push_back(m);
        } else if let ShardMsg::Fault { page, .. } = m {
            bump(&self.io.stats.faults_bounced);
            let _ = self
                .io
                .region
                .uffd_of(page)
                .wake(self.io.region.page_addr(page), 4096);
        }
    }

    fn retry_faults(&mut self) -> usize {
        let n = self.retry.len();
        for _ in 0..n {
            let Some(m) = self.retry.pop_front() else {
                break;
            };
            self.route_fault(m);
        }
        // Work only if something left the list.
        n.saturating_sub(self.retry.len())
    }

    fn drain_inbox(&mut self) -> usize {
        let bits = self.doorbells[self.index as usize].take();
        if bits == 0 && self.inbox.iter().all(|(_, rx)| rx.is_empty()) {
            return 0;
        }
        let mut n = 0;
        for i in 0..self.inbox.len() {
            for _ in 0..INBOX_BUDGET {
                let Some(m) = self.inbox[i].1.pop() else {
                    break;
                };
                n += 1;
                match m {
                    ShardMsg::Fault { .. } => self.fault(m),
                    ShardMsg::NodeDown(node) => {
                        if let Ok(node) = NodeId::new(node) {
                            self.node_down_local(node, "reported by another shard");
                        }
                    }
                }
            }
            if !self.inbox[i].1.is_empty() {
                let from = self.inbox[i].0;
                self.doorbells[self.index as usize].restore(1 << from);
            }
        }
        n
    }

    fn run_timers(&mut self) -> usize {
        match self.machine.next_deadline() {
            Some(d) if d <= self.io.clock.now() => {
                self.step(Input::Tick, None, None);
                1
            }
            _ => 0,
        }
    }

    /// While the node is leaving: offer every replica this shard holds for eviction, a
    /// bounded number per turn, until none is left.
    fn evict_scan(&mut self) -> usize {
        let gen = self.state.evict_generation();
        if gen != self.evict_gen {
            self.evict_gen = gen;
            self.evict_cursor = Some(self.first_owned());
        }
        let Some(mut page) = self.evict_cursor else {
            return 0;
        };
        let mut offered = 0;
        let mut busy = false;
        let pages = self.machine.layout().end_page();
        while page < pages && offered < EVICT_BUDGET {
            if matches!(
                self.machine.local_access(page),
                Some(PageAccess::ReadOnly | PageAccess::Writable)
            ) && self.machine.home_of(page).is_some_and(|h| h != self.me)
            {
                offered += 1;
                // Started, refused as busy (offered again next pass) or refused because the
                // page is not held after all: the check below decides whether to come back.
                self.step(Input::Evict { page }, None, None);
                if matches!(
                    self.machine.local_access(page),
                    Some(PageAccess::ReadOnly | PageAccess::Writable)
                ) {
                    busy = true;
                }
            }
            page = next_owned(page, self.count);
        }
        if page >= pages {
            // A full pass: done when nothing was left held; otherwise start over.
            if busy || !self.machine.is_quiescent() {
                self.evict_cursor = Some(self.first_owned());
            } else {
                self.evict_cursor = None;
                self.state.evict_finished(self.index as usize, gen);
            }
        } else {
            self.evict_cursor = Some(page);
        }
        offered
    }

    /// Tells the replica cache what the last step (on `page`, if it was about one) did to
    /// pages of other homes.
    fn note_replicas(&mut self, page: Option<u64>) {
        let Some(cache) = &mut self.cache else { return };
        if let Some(p) = page {
            // A home that refuses an eviction (busy) ends it without a drop: the page stays.
            cache.evicting_now(p, self.machine.is_evicting(p));
        }
        for a in &self.actions {
            let (page, acquired) = match *a {
                Action::Install { page, .. } | Action::MakeWritable { page } => (page, true),
                Action::Drop { page } => (page, false),
                _ => continue,
            };
            if self.machine.home_of(page).is_some_and(|h| h != self.me) {
                if acquired {
                    cache.acquired(page);
                } else {
                    cache.dropped(page);
                }
            }
        }
        let held = cache.held() as u64;
        set(&self.io.stats.replicas_held, held);
        if held
            > self
                .io
                .stats
                .replicas_held_max
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            set(&self.io.stats.replicas_held_max, held);
        }
    }

    /// While more pages of other homes are held than the replica cache allows: offer the
    /// least recently acquired for eviction, a bounded number per turn. An eviction that
    /// started counts as work; refusals do not, so a shard waiting for its evictions'
    /// answers may sleep (the answers wake it).
    fn cache_turn(&mut self) -> usize {
        let mut work = 0;
        for _ in 0..CACHE_BUDGET {
            let next = match &mut self.cache {
                Some(c) if c.over() => c.next(CACHE_BUDGET),
                _ => break,
            };
            let replica_cache::Next::Evict(page) = next else {
                break;
            };
            let out = self.step(Input::Evict { page }, None, None);
            let started = matches!(out, Some(Outcome::EvictStarted));
            let held = matches!(
                self.machine.local_access(page),
                Some(PageAccess::ReadOnly | PageAccess::Writable)
            );
            if let Some(c) = &mut self.cache {
                c.offered(page, started, held);
            }
            if started {
                bump(&self.io.stats.replica_evictions);
                work += 1;
            }
        }
        if let Some(c) = &mut self.cache {
            c.compact(CACHE_BUDGET);
            set(&self.io.stats.replicas_held, c.held() as u64);
            set(&self.io.stats.replica_cache_lost, c.lost());
        }
        work
    }

    /// The first page of this shard's partition (its first granule).
    fn first_owned(&self) -> u64 {
        u64::from(self.index) * route::SHARD_GRANULE_PAGES
    }

    /// A peer node is down: tell the other shards, then handle it here.
    fn node_down(&mut self, node: NodeId, why: &str) {
        if self.down.contains(node) {
            return;
        }
        for (i, tx) in self.outbox.iter_mut().enumerate() {
            if let Some(tx) = tx {
                // The rings are sized for bursts of faults; a full one still gets the news
                // through the shared dead mask, which every shard polls.
                if tx.push(ShardMsg::NodeDown(node.get())).is_ok() {
                    self.doorbells[i].ring(self.index as usize);
                }
            }
        }
        self.node_down_local(node, why);
    }

    fn node_down_local(&mut self, node: NodeId, why: &str) {
        if self.down.contains(node) {
            return;
        }
        self.down.insert(node);
        let news = self.state.mark_dead(node.get());
        let left = self.state.left() & (1u64 << node.get()) != 0;
        if news && left {
            tracing::info!("node {node} left the cluster");
        } else if news && !self.state.departures_expected() {
            tracing::warn!("node {node} is down ({why}); continuing without it");
        }
        for s in 0..self.io.peers.count(node) {
            let _ = self.io.transport.close_peer(peer_id(node, s));
        }
        self.io.peers.set(node, 0);
        self.io.sessions.forget(node);
        self.step(Input::NodeDead(node), None, None);
    }

    /// Picks up deaths other shards saw when their ring to us was full.
    fn sync_dead(&mut self) {
        let news = NodeSet::from_bits(self.state.dead()).minus(self.down);
        for node in news.iter() {
            self.node_down_local(node, "reported by another shard");
        }
    }
}
