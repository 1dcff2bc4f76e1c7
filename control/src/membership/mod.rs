//! Membership: who is in the cluster, who is alive, and how nodes join and leave.
//!
//! One low-priority thread per node runs an event loop over mutual-TLS control connections
//! (one per pair of nodes; the lower id dials the higher): heartbeats every period, a failure
//! detector (suspect, then dead — terminal), and the join / leave / stop exchanges. What the
//! loop decides reaches the data plane through [`NodeControl`]; the REST API reaches the loop
//! through [`MembershipOps`] (commands answered over a channel).
//!
//! Join (a new node, highest id, contributing memory at the top of the address space): the
//! joiner waits on its control port ([`wait_for_admission`]); `POST /nodes` on any member makes
//! that member the coordinator: it dials the joiner, sends it `Admitted` with the new member
//! list (the joiner starts its data plane, which waits for the members' connections), sends
//! `Extend` to every member (each extends its layout, connects its shards to the joiner, and
//! acknowledges), and answers the API once every member acknowledged and the joiner reported
//! `JoinDone`. Leave: a node hands back every replica it caches, tells everyone `Left`, and
//! exits; a node that homes memory first hands its pages to another home, in three steps the
//! member that took the request coordinates (`home_leave.rs`, docs/protocol.md §13).

pub mod detector;
mod home_leave;
pub mod link;
pub mod msg;

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::detector::{Change, Detector, Heard};
use self::link::Link;
use self::msg::{ControlMsg, NodeInfo};
use crate::handle::{
    JoinRequest, Member, MemberState, MembershipError, MembershipOps, PageInfo, PageQueryError,
};
use crate::tls::{check_peer, TlsIdentity};

/// How long a join may take before the API gives up on it.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a leave may take.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between attempts to dial a peer's control port.
const DIAL_RETRY: Duration = Duration::from_millis(200);
/// Most control connections at once (members, joiners, and connections not yet identified).
const MAX_LINKS: usize = 256;
/// How long a connection may stay unidentified (no TLS handshake and Hello): a member
/// needs two round trips, a silent or trickling stranger is closed.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest sleep of the loop (bounds heartbeat jitter and command latency).
const LOOP_TICK: Duration = Duration::from_millis(5);

/// What the membership loop asks of the data-plane node.
pub trait NodeControl: Send + Sync {
    /// Every member with its addresses, in id order (this node included).
    fn nodes(&self) -> Vec<NodeInfo>;
    /// The failure detector declared `id` dead: run the protocol's failure path.
    fn declare_dead(&self, id: u16);
    /// `id` left in order (it holds nothing any more): forget it without alarm.
    fn mark_left(&self, id: u16);
    /// A member refused this node because the cluster declared it dead (or it left): it
    /// cannot take part any more. `reason` is the member's text. The node stops and says so.
    /// (A refusal for any other reason is only logged.)
    fn refused(&self, reason: &str);
    /// Nodes the data plane itself found dead (connections broke), as a bit mask.
    fn data_plane_dead(&self) -> u64;
    /// Applies a join: the cluster is now `nodes`, `joiner` is new. Extend the layout,
    /// connect to the joiner, and return once done. Called on a worker thread.
    fn extend(&self, nodes: &[NodeInfo], joiner: u16) -> Result<(), NodeControlError>;
    /// Hands every cached replica back to its home (before leaving). Worker thread.
    fn hand_back(&self) -> Result<(), NodeControlError>;
    /// Home node `id` leaves and `to` takes its pages: the protocol's `Retire` on every
    /// shard (docs/protocol.md §13). Worker thread.
    fn retire(&self, id: u16, to: u16) -> Result<(), NodeControlError>;
    /// How the leave in progress stands on this node (`count_homed`: also count the pages
    /// it still homes, a scan of its directory). Worker thread.
    fn retire_progress(&self, count_homed: bool) -> Result<LeaveProgress, NodeControlError>;
    /// `id` has left and `to` answers for it: the protocol's `Retired`. Worker thread.
    fn retired(&self, id: u16, to: u16) -> Result<(), NodeControlError>;
    /// Stops this node in order (the process ends).
    fn stop(&self);
    /// The state of a page this node homes (answering another node's query).
    fn page_local(&self, gpa: u64) -> Result<PageInfo, PageQueryError>;
}

/// This node's part of a home node's leave, as [`NodeControl::retire_progress`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaveProgress {
    /// The leaving node has processed everything this node sent it before the leave began.
    pub fenced: bool,
    /// At the leaving node: its pages and pointers are with the successor, nothing it sent
    /// is unacknowledged.
    pub drained: bool,
    /// Pages the leaving node still homes.
    pub homed: u64,
}

/// The data plane's own error, as [`NodeControlError`] carries it (membership only reports it).
pub type DataPlaneError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the data plane could not do what membership asked of it ([`NodeControl::extend`],
/// [`NodeControl::hand_back`]). Membership logs it, answers the API with it, or sends its
/// text to the coordinator in `ExtendAck`.
#[derive(Debug, thiserror::Error)]
pub enum NodeControlError {
    /// The grown member list does not include this node.
    #[error("this node is not in the grown cluster")]
    NotAMember,
    /// The grown member list does not describe a cluster this node can use (an address
    /// that does not resolve, an id twice, ...).
    #[error(transparent)]
    Members(DataPlaneError),
    /// The data plane could not apply the change (a shard did not switch in time, the
    /// joiner could not be reached, replicas still held when handing back).
    #[error(transparent)]
    DataPlane(DataPlaneError),
}

/// How to run membership.
#[derive(Debug)]
pub struct MembershipConfig {
    /// This node.
    pub me: NodeInfo,
    /// The bound control listener.
    pub listener: TcpListener,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Silence before suspicion.
    pub suspect: Duration,
    /// Silence before death.
    pub dead: Duration,
    /// This node's TLS identity.
    pub tls: TlsIdentity,
    /// A link already open to the coordinator that admitted this node (joiners only); the
    /// loop first tells it `JoinDone`.
    pub admitted_by: Option<Link>,
}

enum Cmd {
    Page(u16, u64, Sender<Result<PageInfo, PageQueryError>>),
    Join(JoinRequest, Sender<Result<Member, MembershipError>>),
    Leave(u16, Sender<Result<(), MembershipError>>),
    Stop(Sender<Result<(), MembershipError>>),
}

/// What the API and the node see of membership.
struct Shared {
    members: Mutex<Vec<Member>>,
    rtt: Mutex<Vec<(u16, f64)>>,
    cmds: Mutex<Sender<Cmd>>,
    reconnects: std::sync::atomic::AtomicU64,
}

/// The running membership of a node.
pub struct Membership {
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").finish()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

fn resolve(addr: &str) -> Option<SocketAddr> {
    addr.to_socket_addrs().ok()?.next()
}

/// Sets the calling thread's nice value to 19 (control work never competes with shards).
fn lower_priority() {
    // SAFETY: plain syscall on the calling thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
}

impl Membership {
    /// Starts the membership loop for a node whose data plane runs.
    pub fn start(
        cfg: MembershipConfig,
        node: Arc<dyn NodeControl>,
    ) -> Result<Membership, MembershipError> {
        cfg.listener
            .set_nonblocking(true)
            .map_err(|e| MembershipError::Unavailable(format!("control listener: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            members: Mutex::new(Vec::new()),
            rtt: Mutex::new(Vec::new()),
            cmds: Mutex::new(tx),
            reconnects: std::sync::atomic::AtomicU64::new(0),
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, st2) = (shared.clone(), stop.clone());
        // The peers count as heard from now, not from when the thread first runs: a stop in
        // between is this node's silence, and the loop must see it as a gap.
        let origin = Instant::now();
        let thread = std::thread::Builder::new()
            .name("ssi-dp-membership".into())
            .spawn(move || {
                lower_priority();
                Loop::new(cfg, node, s2, rx, st2, origin).run();
            })
            .map_err(|e| MembershipError::Unavailable(e.to_string()))?;
        Ok(Membership {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The members as last seen (refreshed by the loop every few milliseconds).
    pub fn members(&self) -> Vec<Member> {
        self.shared
            .members
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Heartbeat round-trip time per peer, in seconds.
    pub fn rtt(&self) -> Vec<(u16, f64)> {
        self.shared
            .rtt
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Control connections (re)established after the first.
    pub fn reconnects(&self) -> u64 {
        self.shared
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks node `home` for the state of the page at `gpa` over the control plane.
    pub fn query_page(&self, home: u16, gpa: u64) -> Result<PageInfo, PageQueryError> {
        let unavailable = |why: String| PageQueryError::HomeUnavailable { gpa, home, why };
        self.command(|tx| Cmd::Page(home, gpa, tx), Duration::from_secs(3))
            .map_err(|e| unavailable(e.to_string()))?
    }

    fn command<T>(
        &self,
        make: impl FnOnce(Sender<T>) -> Cmd,
        timeout: Duration,
    ) -> Result<T, MembershipError> {
        let (tx, rx) = mpsc::channel();
        self.shared
            .cmds
            .lock()
            .map_err(|_| MembershipError::Unavailable("membership is stopping".into()))?
            .send(make(tx))
            .map_err(|_| MembershipError::Unavailable("membership is not running".into()))?;
        rx.recv_timeout(timeout)
            .map_err(|_| MembershipError::Unavailable("membership did not answer in time".into()))
    }
}

impl MembershipOps for Membership {
    fn join(&self, req: JoinRequest) -> Result<Member, MembershipError> {
        self.command(
            |tx| Cmd::Join(req, tx),
            JOIN_TIMEOUT + Duration::from_secs(5),
        )?
    }

    fn leave(&self, id: u16) -> Result<(), MembershipError> {
        self.command(
            |tx| Cmd::Leave(id, tx),
            home_leave::HOME_LEAVE_TIMEOUT + LEAVE_TIMEOUT + Duration::from_secs(5),
        )?
    }

    fn stop_cluster(&self) -> Result<(), MembershipError> {
        self.command(Cmd::Stop, Duration::from_secs(10))?
    }

    fn form_cluster(&self, _inventory_toml: &str) -> Result<Vec<Member>, MembershipError> {
        Err(MembershipError::Conflict(
            "this node already belongs to a cluster; start a new cluster with `ssi-dp up INVENTORY` \
             or POST /cluster to an `ssi-dp supervisor`"
                .into(),
        ))
    }
}

/// A joiner waits here, on its control port, for a member to admit it: returns the cluster
/// (every member, itself included) and the link to the coordinator.
pub fn wait_for_admission(
    listener: &TcpListener,
    tls: &TlsIdentity,
    timeout: Duration,
) -> Result<(Vec<NodeInfo>, Link), MembershipError> {
    let deadline = Instant::now() + timeout;
    let unavailable = |m: String| MembershipError::Unavailable(m);
    listener
        .set_nonblocking(true)
        .map_err(|e| unavailable(e.to_string()))?;
    // Every connection at once, as the running loop does: a stranger that connects and
    // says nothing cannot hold up the member that comes to admit this node.
    let mut links: Vec<Link> = Vec::new();
    let mut msgs = Vec::new();
    while Instant::now() < deadline {
        loop {
            let sock = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(unavailable(format!("accept: {e}"))),
            };
            if links.len() >= MAX_LINKS {
                if let Some(i) = (0..links.len()).min_by_key(|&i| links[i].opened) {
                    drop(links.swap_remove(i));
                }
            }
            let server = tls.server().map_err(|e| unavailable(e.to_string()))?;
            if let Ok(l) = Link::new(sock, server, false) {
                links.push(l);
            }
        }
        let mut i = 0;
        while i < links.len() {
            match admission_step(&mut links[i], tls, &mut msgs) {
                Step::Wait => i += 1,
                Step::Drop => drop(links.swap_remove(i)),
                Step::Admitted(nodes) => return Ok((nodes, links.swap_remove(i))),
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(unavailable(format!(
        "no member admitted this node within {} s: POST /nodes to a member's API with this node's \
         id, addresses and memory",
        timeout.as_secs()
    )))
}

/// What one pending connection did while this node waits to be admitted.
enum Step {
    Wait,
    Drop,
    Admitted(Vec<NodeInfo>),
}

fn admission_step(link: &mut Link, tls: &TlsIdentity, msgs: &mut Vec<ControlMsg>) -> Step {
    let limit = if link.peer.is_none() {
        IDENTIFY_TIMEOUT
    } else {
        Duration::from_secs(10)
    };
    if link.opened.elapsed() > limit || link.pump(msgs).is_err() {
        msgs.clear();
        return Step::Drop;
    }
    let mut step = Step::Wait;
    for m in msgs.drain(..) {
        match m {
            ControlMsg::Hello { id } if link.peer.is_none() => {
                let verified = link.server_conn().map(|c| check_peer(c, id));
                if !matches!(verified, Some(Ok(()))) {
                    step = Step::Drop;
                    break;
                }
                link.peer = Some(id);
                if link.send(&ControlMsg::Hello { id: tls.node }).is_err() {
                    step = Step::Drop;
                    break;
                }
            }
            ControlMsg::Admitted { nodes } if link.peer.is_some() => {
                step = Step::Admitted(nodes);
                break;
            }
            _ => {}
        }
    }
    msgs.clear();
    step
}

/// A join the coordinator is running.
struct PendingJoin {
    joiner: NodeInfo,
    nodes: Vec<NodeInfo>,
    req: u64,
    waiting_acks: Vec<u16>,
    local_done: bool,
    joiner_done: bool,
    admitted_sent: bool,
    deadline: Instant,
    reply: Sender<Result<Member, MembershipError>>,
}

struct PendingLeave {
    id: u16,
    deadline: Instant,
    reply: Sender<Result<(), MembershipError>>,
}

enum Work {
    PageAnswer {
        req: u64,
        to: u16,
        result: Result<PageInfo, PageQueryError>,
    },
    Extended {
        req: u64,
        coordinator: Option<u16>,
        result: Result<(), NodeControlError>,
    },
    HandedBack(Result<(), NodeControlError>),
    /// This node's part of a step of a home node's leave is done (`coordinator`: whom to
    /// tell; `None` when this node coordinates).
    HomeLeaveStep {
        req: u64,
        coordinator: Option<u16>,
        result: Result<(), home_leave::StepError>,
    },
    Dialled {
        peer: u16,
        sock: std::io::Result<TcpStream>,
    },
}

struct Loop {
    me: NodeInfo,
    listener: TcpListener,
    heartbeat: Duration,
    /// The failure detector's timeouts (also used to recognise this node's own pauses).
    suspect: Duration,
    dead: Duration,
    tls: TlsIdentity,
    node: Arc<dyn NodeControl>,
    shared: Arc<Shared>,
    cmds: Receiver<Cmd>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    links: Vec<Link>,
    detector: Detector,
    /// Peers this node dials (higher ids), and when it may dial each next.
    dial_at: Vec<(u16, Instant, bool)>,
    seq: u64,
    next_heartbeat: Instant,
    origin: Instant,
    work_tx: Sender<Work>,
    work_rx: Receiver<Work>,
    join: Option<PendingJoin>,
    leave: Option<PendingLeave>,
    /// A home node's leave this node coordinates.
    home_leave: Option<home_leave::HomeLeave>,
    leaving: bool,
    next_req: u64,
    ever_connected: Vec<u16>,
    rtt: Vec<(u16, f64)>,
    stale: Vec<std::os::fd::RawFd>,
    /// Page queries waiting for a home's reply: `(req, home, gpa, deadline, reply)`.
    queries: Vec<PendingQuery>,
    refusals: RateLimit,
}

/// Rate-limited logging of what strangers cause (at most a few lines per second).
struct RateLimit {
    window: Instant,
    count: u32,
    suppressed: u64,
}

impl RateLimit {
    fn new() -> Self {
        RateLimit {
            window: Instant::now(),
            count: 0,
            suppressed: 0,
        }
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.window.elapsed() > Duration::from_secs(1) {
            self.window = Instant::now();
            self.count = 0;
        }
        if self.count < 5 {
            self.count += 1;
            if self.suppressed > 0 {
                tracing::warn!(suppressed = std::mem::take(&mut self.suppressed), "{msg}");
            } else {
                tracing::warn!("{msg}");
            }
        } else {
            self.suppressed += 1;
        }
    }
}

/// A page query waiting for its home's reply.
struct PendingQuery {
    req: u64,
    home: u16,
    gpa: u64,
    deadline: Instant,
    sent: bool,
    reply: Sender<Result<PageInfo, PageQueryError>>,
}

impl Loop {
    fn new(
        cfg: MembershipConfig,
        node: Arc<dyn NodeControl>,
        shared: Arc<Shared>,
        cmds: Receiver<Cmd>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        origin: Instant,
    ) -> Loop {
        let mut detector = Detector::new(cfg.suspect, cfg.dead);
        let nodes = node.nodes();
        let mut dial_at = Vec::new();
        for n in &nodes {
            if n.id != cfg.me.id {
                detector.watch(n.id, 0);
                if n.id > cfg.me.id {
                    dial_at.push((n.id, Instant::now(), false));
                }
            }
        }
        let (work_tx, work_rx) = mpsc::channel();
        let mut links = Vec::new();
        if let Some(mut l) = cfg.admitted_by {
            let _ = l.send(&ControlMsg::JoinDone { id: cfg.me.id });
            links.push(l);
        }
        Loop {
            me: cfg.me,
            listener: cfg.listener,
            heartbeat: cfg.heartbeat,
            suspect: cfg.suspect,
            dead: cfg.dead,
            tls: cfg.tls,
            node,
            shared,
            cmds,
            stop,
            links,
            detector,
            dial_at,
            seq: 0,
            next_heartbeat: Instant::now(),
            origin,
            work_tx,
            work_rx,
            join: None,
            leave: None,
            home_leave: None,
            leaving: false,
            next_req: 1,
            ever_connected: Vec::new(),
            rtt: Vec::new(),
            stale: Vec::new(),
            queries: Vec::new(),
            refusals: RateLimit::new(),
        }
    }

    fn run(mut self) {
        let mut changes = Vec::new();
        // From the moment the peers were counted heard (`watch` at 0): a stop before this
        // thread first ran is a gap too.
        let mut last_tick = self.origin;
        while !self.stop.load(std::sync::atomic::Ordering::SeqCst) {
            self.accept();
            self.dial();
            self.read_links();
            self.finish_work();
            self.commands();
            self.heartbeats();
            // Deaths the data plane saw (its connections broke) count as well.
            let dp = self.node.data_plane_dead();
            for id in 0..64u16 {
                if dp & (1 << id) != 0 && self.detector.declare_dead(id) {
                    self.drop_links(id);
                }
            }
            // Measured from one tick to the next, so that a stop anywhere in the turn counts
            // (measured at the start of the turn, a stop in its middle went unseen and the
            // tick right after it declared every peer dead).
            let gap = last_tick.elapsed();
            last_tick = Instant::now();
            if gap > self.suspect {
                // This node did not run (SIGSTOP, a frozen VM, CPU starvation): the silence
                // was ours, not the peers'. They may have declared us dead meanwhile; if so
                // they refuse us and `refused` stops the node.
                tracing::warn!(
                    "this node did not run for {:.1} s (stopped or starved of CPU); the other \
                     members declare a node dead after {} ms of silence",
                    gap.as_secs_f64(),
                    self.dead.as_millis()
                );
                self.detector.forgive(gap.as_nanos() as u64);
            }
            changes.clear();
            if !self.leaving {
                // A node that leaves stops judging the others: they stop talking to it.
                self.detector.tick(now_ns(self.origin), &mut changes);
            }
            for c in &changes {
                match *c {
                    Change::Suspected(id) => tracing::warn!("node {id} is suspect: no heartbeat"),
                    Change::Recovered(id) => {
                        tracing::info!("node {id} is heard again")
                    }
                    Change::Died(id) => {
                        tracing::warn!(
                            "node {id} declared dead: no heartbeat for the failure timeout"
                        );
                        self.drop_links(id);
                        self.node.declare_dead(id);
                    }
                }
            }
            self.progress_join();
            self.progress_leave();
            self.progress_home_leave();
            self.expire_queries();
            self.publish();
            self.sleep();
        }
    }

    fn sleep(&self) {
        let mut fds: Vec<libc::pollfd> = self
            .links
            .iter()
            .map(|l| libc::pollfd {
                fd: l.fd(),
                events: libc::POLLIN | if l.wants_write() { libc::POLLOUT } else { 0 },
                revents: 0,
            })
            .collect();
        fds.push(libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let ms = LOOP_TICK.as_millis() as i32;
        // SAFETY: `fds` is a valid array of pollfd for the call's duration.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }

    fn accept(&mut self) {
        while let Ok((sock, _)) = self.listener.accept() {
            if self.links.len() >= MAX_LINKS {
                // Make room by closing the oldest connection that has not proved who it is
                // (a stranger, or a slow one): a member's new connection is never the one
                // turned away. Only if every link is a member's is the new one dropped.
                let oldest = self
                    .links
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.peer.is_none() && !l.outbound)
                    .min_by_key(|(_, l)| l.opened)
                    .map(|(i, _)| i);
                match oldest {
                    Some(i) => drop(self.links.swap_remove(i)),
                    None => continue, // dropped: closes the socket
                }
            }
            if let Ok(server) = self.tls.server() {
                if let Ok(l) = Link::new(sock, server, false) {
                    self.links.push(l);
                }
            }
        }
    }

    fn dial(&mut self) {
        let now = Instant::now();
        let nodes = self.node.nodes();
        for (peer, at, in_flight) in self.dial_at.iter_mut() {
            let state = self.detector.state(*peer).map(|s| s.0);
            let connected = self.links.iter().any(|l| l.peer == Some(*peer));
            if connected
                || *in_flight
                || now < *at
                || matches!(state, Some(MemberState::Dead | MemberState::Left))
            {
                continue;
            }
            let Some(addr) = nodes
                .iter()
                .find(|n| n.id == *peer)
                .and_then(|n| resolve(&n.control))
            else {
                continue;
            };
            *in_flight = true;
            *at = now + DIAL_RETRY;
            let (tx, p) = (self.work_tx.clone(), *peer);
            std::thread::spawn(move || {
                let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
                let _ = tx.send(Work::Dialled { peer: p, sock });
            });
        }
    }

    fn dialled(&mut self, peer: u16, sock: std::io::Result<TcpStream>) {
        if let Some(d) = self.dial_at.iter_mut().find(|d| d.0 == peer) {
            d.2 = false;
        }
        let Ok(sock) = sock else { return };
        let Ok(client) = self.tls.client(peer) else {
            return;
        };
        if let Ok(mut l) = Link::new(sock, client, true) {
            l.peer = Some(peer);
            if l.send(&ControlMsg::Hello { id: self.me.id }).is_ok() {
                self.connected(peer);
                self.links.push(l);
            }
        }
    }

    fn connected(&mut self, peer: u16) {
        if self.ever_connected.contains(&peer) {
            self.shared
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.ever_connected.push(peer);
        }
    }

    fn drop_links(&mut self, peer: u16) {
        self.links.retain(|l| l.peer != Some(peer));
    }

    fn read_links(&mut self) {
        let mut msgs = Vec::new();
        // Message handlers never add or remove links while this pass runs (indices stay
        // valid); links to drop are collected by fd and removed at the end.
        for i in 0..self.links.len() {
            if self.links[i].peer.is_none() && self.links[i].opened.elapsed() > IDENTIFY_TIMEOUT {
                // Connected but never proved who it is.
                self.stale.push(self.links[i].fd());
                continue;
            }
            msgs.clear();
            if let Err(e) = self.links[i].pump(&mut msgs) {
                if self.links[i].peer.is_none() && !self.links[i].outbound {
                    // A peer that could not prove who it is (no or a foreign certificate).
                    self.refusals
                        .warn(format_args!("refused a control connection: {e}"));
                } else if self.links[i].outbound && !self.links[i].established() {
                    // We dialled, and the peer's certificate (or ours, to it) did not verify.
                    let peer = self.links[i].peer.unwrap_or(u16::MAX);
                    self.refusals.warn(format_args!(
                        "refused a control connection to node {peer}: {e}"
                    ));
                }
                self.stale.push(self.links[i].fd());
                continue;
            }
            for m in msgs.drain(..) {
                if self.on_msg(i, m) {
                    self.stale.push(self.links[i].fd());
                    break;
                }
            }
        }
        if !self.stale.is_empty() {
            let stale = std::mem::take(&mut self.stale);
            self.links.retain(|l| !stale.contains(&l.fd()));
        }
    }

    /// Handles one message from link `i`; returns whether to drop the link.
    fn on_msg(&mut self, i: usize, m: ControlMsg) -> bool {
        let now = now_ns(self.origin);
        let peer = self.links[i].peer;
        match m {
            ControlMsg::Hello { id } => {
                if self.links[i].outbound {
                    return peer != Some(id);
                }
                // Server side: the client's certificate must be valid for the id it claims.
                let verified = self.links[i].server_conn().map(|c| check_peer(c, id));
                if !matches!(verified, Some(Ok(()))) {
                    self.refusals.warn(format_args!(
                        "refused a control connection claiming node {id}: certificate does not match"
                    ));
                    return true;
                }
                if self.leaving {
                    // Not a verdict on the caller: this node is on its way out.
                    let _ = self.links[i].send(&ControlMsg::Refused {
                        reason: format!("node {} is leaving the cluster", self.me.id),
                        dead: false,
                    });
                    return true;
                }
                match self.detector.heard(id, now) {
                    Heard::Refused => {
                        let _ = self.links[i].send(&ControlMsg::Refused {
                            reason: format!(
                                "node {id} was declared dead or left; it must rejoin as a new node"
                            ),
                            dead: true,
                        });
                        let _ = self.links[i].flush();
                        self.refusals.warn(format_args!(
                            "refused node {id}: it was declared dead or left and is not readmitted"
                        ));
                        return true;
                    }
                    Heard::Unknown => {
                        let _ = self.links[i].send(&ControlMsg::Refused {
                            reason: format!("node {id} is not a member"),
                            dead: false,
                        });
                        return true;
                    }
                    _ => {}
                }
                // An older link to the same peer (it reconnected) is dropped after this pass.
                for (k, l) in self.links.iter().enumerate() {
                    if k != i && l.peer == Some(id) {
                        self.stale.push(l.fd());
                    }
                }
                self.links[i].peer = Some(id);
                let _ = self.links[i].send(&ControlMsg::Hello { id: self.me.id });
                self.connected(id);
                false
            }
            _ if peer.is_none() => true,
            ControlMsg::Heartbeat { seq, sent_ns } => {
                let p = peer.unwrap_or(u16::MAX);
                if self.detector.heard(p, now) == Heard::Refused {
                    return true;
                }
                let _ = self.links[i].send(&ControlMsg::HeartbeatAck {
                    seq,
                    echo_ns: sent_ns,
                });
                false
            }
            ControlMsg::HeartbeatAck { echo_ns, .. } => {
                let p = peer.unwrap_or(u16::MAX);
                self.detector.heard(p, now);
                let rtt = now.saturating_sub(echo_ns) as f64 / 1e9;
                match self.rtt.iter_mut().find(|x| x.0 == p) {
                    Some(x) => x.1 = rtt,
                    None => self.rtt.push((p, rtt)),
                }
                false
            }
            ControlMsg::Extend { req, nodes, joiner } => {
                let coordinator = peer;
                let (tx, node) = (self.work_tx.clone(), self.node.clone());
                std::thread::spawn(move || {
                    let result = node.extend(&nodes, joiner);
                    let _ = tx.send(Work::Extended {
                        req,
                        coordinator,
                        result,
                    });
                });
                false
            }
            ControlMsg::ExtendAck { req, error } => {
                if let Some(j) = self.join.as_mut().filter(|j| j.req == req) {
                    if let Some(e) = error {
                        let p = peer.unwrap_or(u16::MAX);
                        let _ = j.reply.send(Err(MembershipError::Unavailable(format!(
                            "node {p} could not apply the join: {e}"
                        ))));
                        self.join = None;
                    } else {
                        j.waiting_acks.retain(|&x| Some(x) != peer);
                    }
                }
                false
            }
            ControlMsg::JoinDone { id } => {
                if let Some(j) = self.join.as_mut().filter(|j| j.joiner.id == id) {
                    j.joiner_done = true;
                }
                false
            }
            ControlMsg::Joined { id } => {
                self.detector.watch(id, now);
                if id > self.me.id && !self.dial_at.iter().any(|d| d.0 == id) {
                    self.dial_at.push((id, Instant::now(), false));
                }
                false
            }
            ControlMsg::Leave { id } if id == self.me.id => {
                self.start_leaving();
                false
            }
            ControlMsg::HomeLeave { req, step, id, to } => {
                // The drain is the leaving node's step, the others every other node's.
                if (step == msg::LeaveStep::Drain) != (id == self.me.id) {
                    let error = Some(format!(
                        "the {step:?} step of node {id}'s leave was sent to node {}",
                        self.me.id
                    ));
                    let _ = self.links[i].send(&ControlMsg::HomeLeaveAck { req, error });
                } else {
                    self.spawn_step(req, peer, step, id, to);
                }
                false
            }
            ControlMsg::HomeLeaveAck { req, error } => {
                let from = peer.unwrap_or(u16::MAX);
                self.home_leave_step_done(from, req, error.map_or(Ok(()), |e| Err((true, e))));
                false
            }
            ControlMsg::Left { id } => {
                tracing::info!("node {id} left the cluster");
                self.detector.left(id);
                self.node.mark_left(id);
                if let Some(l) = self.leave.take() {
                    if l.id == id {
                        let _ = l.reply.send(Ok(()));
                    } else {
                        self.leave = Some(l);
                    }
                }
                id == peer.unwrap_or(u16::MAX)
            }
            ControlMsg::PageQuery { req, gpa } => {
                let Some(to) = peer else { return true };
                let (tx, node) = (self.work_tx.clone(), self.node.clone());
                std::thread::spawn(move || {
                    let _ = tx.send(Work::PageAnswer {
                        req,
                        to,
                        result: node.page_local(gpa),
                    });
                });
                false
            }
            ControlMsg::PageReply { req, info, error } => {
                if let Some(k) = self
                    .queries
                    .iter()
                    .position(|q| q.req == req && Some(q.home) == peer)
                {
                    let PendingQuery {
                        home, gpa, reply, ..
                    } = self.queries.swap_remove(k);
                    let r = match (info, error) {
                        (Some(i), _) => Ok(i),
                        (None, e) => Err(PageQueryError::HomeUnavailable {
                            gpa,
                            home,
                            why: e.unwrap_or_else(|| "no answer".into()),
                        }),
                    };
                    let _ = reply.send(r);
                }
                false
            }
            ControlMsg::Stop => {
                tracing::info!("stopping: the cluster is being stopped");
                self.node.stop();
                false
            }
            ControlMsg::Refused { reason, dead } => {
                tracing::warn!("a peer refused us: {reason}");
                if dead {
                    self.node.refused(&reason);
                }
                true
            }
            ControlMsg::Admitted { .. } | ControlMsg::Leave { .. } => false,
        }
    }

    fn start_leaving(&mut self) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        let (tx, node) = (self.work_tx.clone(), self.node.clone());
        std::thread::spawn(move || {
            let _ = tx.send(Work::HandedBack(node.hand_back()));
        });
    }

    fn finish_work(&mut self) {
        while let Ok(w) = self.work_rx.try_recv() {
            match w {
                Work::Dialled { peer, sock } => self.dialled(peer, sock),
                Work::PageAnswer { req, to, result } => {
                    let (info, error) = match result {
                        Ok(i) => (Some(i), None),
                        Err(e) => (None, Some(e.to_string())),
                    };
                    if let Some(l) = self.links.iter_mut().find(|l| l.peer == Some(to)) {
                        let _ = l.send(&ControlMsg::PageReply { req, info, error });
                    }
                }
                Work::Extended {
                    req,
                    coordinator,
                    result,
                } => {
                    if coordinator.is_none() {
                        // Our own extension as coordinator.
                        if let Some(j) = self.join.as_mut().filter(|j| j.req == req) {
                            match result {
                                Ok(()) => j.local_done = true,
                                Err(e) => {
                                    let _ = j.reply.send(Err(MembershipError::Unavailable(
                                        format!("applying the join here: {e}"),
                                    )));
                                    self.join = None;
                                }
                            }
                        }
                        continue;
                    }
                    let error = result.err().map(|e| e.to_string());
                    if let Some(l) = self.links.iter_mut().find(|l| l.peer == coordinator) {
                        let _ = l.send(&ControlMsg::ExtendAck { req, error });
                    }
                }
                Work::HomeLeaveStep {
                    req,
                    coordinator,
                    result,
                } => match coordinator {
                    None => self.home_leave_step_done(self.me.id, req, result),
                    Some(c) => {
                        let error = result.err().map(|e| e.1);
                        if let Some(l) = self.links.iter_mut().find(|l| l.peer == Some(c)) {
                            let _ = l.send(&ControlMsg::HomeLeaveAck { req, error });
                        }
                    }
                },
                Work::HandedBack(r) => {
                    if let Err(e) = r {
                        tracing::warn!("handing pages back before leaving: {e}");
                    }
                    for l in &mut self.links {
                        let _ = l.send(&ControlMsg::Left { id: self.me.id });
                    }
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while self.links.iter().any(|l| l.wants_write()) && Instant::now() < deadline {
                        for l in &mut self.links {
                            let _ = l.flush();
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    tracing::info!("left the cluster");
                    self.node.stop();
                }
            }
        }
    }

    fn commands(&mut self) {
        while let Ok(c) = self.cmds.try_recv() {
            match c {
                Cmd::Page(home, gpa, reply) => {
                    let req = self.next_req;
                    self.next_req += 1;
                    // Sent by `send_queries` as soon as the link to the home is up.
                    let deadline = Instant::now() + Duration::from_secs(2);
                    self.queries.push(PendingQuery {
                        req,
                        home,
                        gpa,
                        deadline,
                        sent: false,
                        reply,
                    });
                }
                Cmd::Join(req, reply) => self.begin_join(req, reply),
                Cmd::Leave(id, reply) => self.begin_leave(id, reply),
                Cmd::Stop(reply) => {
                    for l in &mut self.links {
                        let _ = l.send(&ControlMsg::Stop);
                    }
                    for l in &mut self.links {
                        let _ = l.flush();
                    }
                    let _ = reply.send(Ok(()));
                    self.node.stop();
                }
            }
        }
    }

    fn begin_join(&mut self, req: JoinRequest, reply: Sender<Result<Member, MembershipError>>) {
        if self.join.is_some() {
            let _ = reply.send(Err(MembershipError::Conflict(
                "another join is in progress".into(),
            )));
            return;
        }
        let nodes = self.node.nodes();
        let max = nodes.iter().map(|n| n.id).max().unwrap_or(0);
        let max_seen = (0..64u16)
            .filter(|&i| self.detector.state(i).is_some())
            .max()
            .unwrap_or(0)
            .max(max);
        let id = req.id.unwrap_or(max_seen + 1);
        let invalid = |m: String| Err(MembershipError::Invalid(m));
        let check = if id >= 64 {
            invalid(format!("node id {id} is out of range (0..63)"))
        } else if id <= max_seen {
            invalid(format!(
                "node id {id} is not above every current or former member ({max_seen}): a joining \
                 node's memory is appended at the top of the address space, and ids are not reused"
            ))
        } else if req.memory % 4096 != 0 {
            invalid(format!("memory {} is not a multiple of 4096", req.memory))
        } else if resolve(&req.addr).is_none() || resolve(&req.control).is_none() {
            invalid(format!("cannot resolve {} or {}", req.addr, req.control))
        } else {
            Ok(())
        };
        if let Err(e) = check {
            let _ = reply.send(Err(e));
            return;
        }
        let joiner = NodeInfo {
            id,
            addr: req.addr,
            control: req.control.clone(),
            memory: req.memory,
        };
        let mut all = nodes;
        all.push(joiner.clone());
        let rq = self.next_req;
        self.next_req += 1;
        let alive: Vec<u16> = all
            .iter()
            .map(|n| n.id)
            .filter(|&i| i != self.me.id && i != id)
            .filter(|&i| {
                matches!(
                    self.detector.state(i).map(|s| s.0),
                    Some(MemberState::Alive | MemberState::Suspect)
                )
            })
            .collect();
        // Dial the joiner (it waits for admission on its control port).
        let Some(addr) = resolve(&req.control) else {
            let _ = reply.send(Err(MembershipError::Invalid(format!(
                "cannot resolve {}",
                req.control
            ))));
            return;
        };
        let tx = self.work_tx.clone();
        std::thread::spawn(move || {
            let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
            let _ = tx.send(Work::Dialled { peer: id, sock });
        });
        self.join = Some(PendingJoin {
            joiner,
            nodes: all,
            req: rq,
            waiting_acks: alive,
            local_done: false,
            joiner_done: false,
            admitted_sent: false,
            deadline: Instant::now() + JOIN_TIMEOUT,
            reply,
        });
    }

    fn progress_join(&mut self) {
        let Some(j) = self.join.as_mut() else { return };
        if Instant::now() > j.deadline {
            let what = if !j.admitted_sent {
                "the joining node did not answer on its control port (start it waiting for admission first)"
            } else if !j.joiner_done {
                "the joining node did not finish connecting its data plane"
            } else {
                "not every member acknowledged the join"
            };
            let _ = j.reply.send(Err(MembershipError::Unavailable(format!(
                "join of node {} timed out: {what}",
                j.joiner.id
            ))));
            self.join = None;
            return;
        }
        if !j.admitted_sent {
            let id = j.joiner.id;
            let ready = self
                .links
                .iter()
                .any(|l| l.peer == Some(id) && l.outbound && l.established());
            if ready {
                let nodes = j.nodes.clone();
                let joiner = j.joiner.id;
                let req = j.req;
                if let Some(l) = self.links.iter_mut().find(|l| l.peer == Some(id)) {
                    if l.send(&ControlMsg::Admitted {
                        nodes: nodes.clone(),
                    })
                    .is_ok()
                    {
                        j.admitted_sent = true;
                    }
                }
                if j.admitted_sent {
                    for l in self.links.iter_mut().filter(|l| l.peer != Some(id)) {
                        let _ = l.send(&ControlMsg::Extend {
                            req,
                            nodes: nodes.clone(),
                            joiner,
                        });
                    }
                    let (tx, node) = (self.work_tx.clone(), self.node.clone());
                    std::thread::spawn(move || {
                        let result = node.extend(&nodes, joiner);
                        let _ = tx.send(Work::Extended {
                            req,
                            coordinator: None,
                            result,
                        });
                    });
                }
            }
            return;
        }
        if j.local_done && j.joiner_done && j.waiting_acks.is_empty() {
            let id = j.joiner.id;
            let member = Member {
                id,
                addr: j.joiner.addr.clone(),
                memory: j.joiner.memory,
                gpa_start: j.nodes.iter().filter(|n| n.id < id).map(|n| n.memory).sum(),
                state: MemberState::Alive,
                this_node: false,
                last_heard_ms: Some(0),
            };
            let _ = j.reply.send(Ok(member));
            self.join = None;
            let now = now_ns(self.origin);
            self.detector.watch(id, now);
            if id > self.me.id && !self.dial_at.iter().any(|d| d.0 == id) {
                // The coordinator already holds a link to the joiner; keep it as the pair's link.
                self.dial_at.push((id, Instant::now(), false));
            }
            for l in &mut self.links {
                let _ = l.send(&ControlMsg::Joined { id });
            }
            tracing::info!("node {id} joined the cluster");
        }
    }

    fn expire_queries(&mut self) {
        let now = Instant::now();
        for q in self.queries.iter_mut().filter(|q| !q.sent) {
            let gpa = q.gpa;
            if let Some(l) = self
                .links
                .iter_mut()
                .find(|l| l.peer == Some(q.home) && l.established())
            {
                q.sent = l.send(&ControlMsg::PageQuery { req: q.req, gpa }).is_ok();
            }
        }
        self.queries.retain(|q| {
            let expired = now > q.deadline;
            if expired {
                let why = if q.sent {
                    "the home did not answer in time".to_string()
                } else {
                    format!("no control connection to node {}", q.home)
                };
                let _ = q.reply.send(Err(PageQueryError::HomeUnavailable {
                    gpa: q.gpa,
                    home: q.home,
                    why,
                }));
            }
            !expired
        });
    }

    fn begin_leave(&mut self, id: u16, reply: Sender<Result<(), MembershipError>>) {
        let nodes = self.node.nodes();
        let Some(n) = nodes.iter().find(|n| n.id == id) else {
            let _ = reply.send(Err(MembershipError::NotFound(id)));
            return;
        };
        if matches!(
            self.detector.state(id).map(|s| s.0),
            Some(MemberState::Dead | MemberState::Left)
        ) {
            let _ = reply.send(Err(MembershipError::Conflict(format!(
                "node {id} is already dead or gone"
            ))));
            return;
        }
        if self.leave.is_some() || self.home_leave.is_some() {
            let _ = reply.send(Err(MembershipError::Conflict(
                "another leave is in progress".into(),
            )));
            return;
        }
        if n.memory != 0 {
            self.begin_home_leave(id, reply);
            return;
        }
        self.ask_to_leave(id, reply);
    }

    /// Tells node `id` to hand its replicas back and leave (this node: does so); `reply` is
    /// answered once it has left.
    pub(super) fn ask_to_leave(&mut self, id: u16, reply: Sender<Result<(), MembershipError>>) {
        if id == self.me.id {
            let _ = reply.send(Ok(()));
            self.start_leaving();
            return;
        }
        let sent = self
            .links
            .iter_mut()
            .find(|l| l.peer == Some(id))
            .is_some_and(|l| l.send(&ControlMsg::Leave { id }).is_ok());
        if sent {
            self.leave = Some(PendingLeave {
                id,
                deadline: Instant::now() + LEAVE_TIMEOUT,
                reply,
            });
        } else {
            let _ = reply.send(Err(MembershipError::Unavailable(format!(
                "no control connection to node {id}"
            ))));
        }
    }

    fn progress_leave(&mut self) {
        if self
            .leave
            .as_ref()
            .is_some_and(|l| Instant::now() > l.deadline)
        {
            if let Some(l) = self.leave.take() {
                let _ = l.reply.send(Err(MembershipError::Unavailable(format!(
                    "node {} did not leave in time",
                    l.id
                ))));
            }
        }
    }

    fn heartbeats(&mut self) {
        if Instant::now() < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = Instant::now() + self.heartbeat;
        self.seq += 1;
        let sent_ns = now_ns(self.origin);
        let seq = self.seq;
        let mut broken = Vec::new();
        for (k, l) in self.links.iter_mut().enumerate() {
            if l.peer.is_some()
                && l.established()
                && l.send(&ControlMsg::Heartbeat { seq, sent_ns }).is_err()
            {
                broken.push(k);
            }
        }
        for k in broken.into_iter().rev() {
            self.links.swap_remove(k);
        }
    }

    fn publish(&mut self) {
        let now = now_ns(self.origin);
        let nodes = self.node.nodes();
        let mut gpa = 0;
        let members: Vec<Member> = nodes
            .iter()
            .map(|n| {
                let start = gpa;
                gpa += n.memory;
                let (state, last) = if n.id == self.me.id {
                    (
                        if self.leaving {
                            MemberState::Left
                        } else {
                            MemberState::Alive
                        },
                        None,
                    )
                } else {
                    match self.detector.state(n.id) {
                        Some((s, l)) => (s, Some((now.saturating_sub(l)) / 1_000_000)),
                        None => (MemberState::Alive, None),
                    }
                };
                Member {
                    id: n.id,
                    addr: n.addr.clone(),
                    memory: n.memory,
                    gpa_start: start,
                    state,
                    this_node: n.id == self.me.id,
                    last_heard_ms: last,
                }
            })
            .collect();
        if let Ok(mut m) = self.shared.members.lock() {
            *m = members;
        }
        if let Ok(mut r) = self.shared.rtt.lock() {
            r.clone_from(&self.rtt);
        }
    }
}

/// Waits until `f` holds or `timeout` passes (test and CLI helper).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}
