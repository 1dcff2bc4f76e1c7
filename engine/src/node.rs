//! The node: the embedding API that starts a data plane in-process — the guest region, the
//! mesh of authenticated connections, and one pinned shard per data-plane core — and hands
//! back the region's base pointer and layout so that worker threads (a VMM's vCPUs, a test, a
//! benchmark) touch guest memory directly.

use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use wire::{Transport, TransportConfig};

use crate::config::{ClusterSpec, PAGE_SIZE};
use crate::doorbell::Doorbell;
use crate::host_area::HostArea;
use crate::idle::IdlePolicy;
use crate::measure::{self, Figures};
use crate::mesh::{self, Acceptor, Credentials, LateSink, MeshError};
use crate::node_state::NodeState;
use crate::pmqos::LatencyGuard;
use crate::redial::{RedialSetup, RedialTx, Redialer};
use crate::region::{Region, RegionError};
use crate::shard::mailbox::{Command, Mailbox, PageState, RetireProgress};
use crate::shard::route::ShardMsg;
use crate::shard::trace::TraceRings;
use crate::shard::{Conn, Shard, ShardSetup};
use crate::spsc;
use crate::stats::ShardStats;
use coherence::{Layout, Machine, NodeId, NodeRange, Partition};

/// Capacity of each ring between two shards.
const SHARD_RING: usize = 1024;

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// io_uring when it works here, else the epoll fallback (and say why); and RDMA verbs,
    /// per peer, where a device is ready here and the peer offers verbs too.
    Auto,
    /// io_uring, or fail.
    Uring,
    /// The epoll fallback.
    Fallback,
    /// RDMA verbs on the first device with an active port, or fail with the reason. Every
    /// peer must offer verbs too (`auto` uses verbs per peer where both ends offer it).
    Verbs,
}

impl TransportKind {
    /// The `--transport` value that selects this kind.
    pub fn as_arg(self) -> &'static str {
        match self {
            TransportKind::Auto => "auto",
            TransportKind::Uring => "uring",
            TransportKind::Fallback => "fallback",
            TransportKind::Verbs => "verbs",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "fallback" | "epoll" => Ok(Self::Fallback),
            "verbs" | "rdma" => Ok(Self::Verbs),
            _ => Err(format!(
                "bad transport {s:?}: use auto, uring, fallback or verbs"
            )),
        }
    }
}

/// Why a node could not start or leave.
#[derive(Debug, Error)]
pub enum NodeError {
    /// No data-plane core was given.
    #[error("no data-plane cores: give at least one CPU with --cores")]
    NoCores,
    /// More shards than the protocol can partition over.
    #[error("{0} data-plane cores is more than the 1024 a node supports")]
    TooManyCores(usize),
    /// The guest region could not be set up.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The protocol refused the layout or configuration.
    #[error("protocol setup: {0}")]
    Protocol(#[from] coherence::StepError),
    /// io_uring was required but cannot be used here.
    #[error("--transport uring was asked for, but {0}; use --transport auto or fallback")]
    UringUnavailable(String),
    /// RDMA verbs were required but cannot be used.
    #[error("--transport verbs was asked for, but {0}; use --transport auto (TCP)")]
    VerbsUnavailable(String),
    /// The mesh could not be formed.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// A shard could not start.
    #[error("shard {shard} could not start: {why}")]
    Shard {
        /// Shard index.
        shard: usize,
        /// What failed.
        why: String,
    },
    /// The formation measurements failed.
    #[error("measuring the cluster at formation: {0}")]
    Measure(#[from] crate::measure::MeasureError),
    /// A join could not be applied.
    #[error("join: {0}")]
    Join(String),
    /// Replicas were still held when the leave timed out.
    #[error("replicas still held after {0:?}: workers may still be touching remote pages")]
    LeaveTimeout(Duration),
    /// A home node's leave step could not be applied (docs/protocol.md §13).
    #[error("home leave: {0}")]
    Retire(String),
}

impl NodeError {
    /// Whether the operator fixes this by changing the command line, the configuration or
    /// the host's permissions (a missing privilege included), rather than it being a failure
    /// of the run: the node exits with the usage code then (docs/operations.md, Exit codes).
    pub fn is_setup(&self) -> bool {
        use uffd_poller::OpenError;
        match self {
            NodeError::NoCores
            | NodeError::TooManyCores(_)
            | NodeError::UringUnavailable(_)
            | NodeError::VerbsUnavailable(_) => true,
            NodeError::Region(r) => matches!(
                r,
                RegionError::Empty
                    | RegionError::Reservation { .. }
                    | RegionError::TooManyGranules { .. }
                    | RegionError::Open(
                        OpenError::PermissionDenied { .. } | OpenError::Unsupported
                    )
            ),
            _ => false,
        }
    }
}

/// How long a shard may take to answer a leave command.
const RETIRE_ANSWER: Duration = Duration::from_secs(5);

fn retire_id(id: u16) -> Result<NodeId, NodeError> {
    NodeId::new(id).map_err(|e| NodeError::Retire(e.to_string()))
}

/// How to start a node.
#[derive(Debug)]
pub struct NodeConfig {
    /// The cluster as this node sees it.
    pub cluster: ClusterSpec,
    /// The bound listening socket (`--listen`).
    pub listener: TcpListener,
    /// One shard per CPU listed, pinned to it.
    pub cores: Vec<usize>,
    /// Pin shard threads (turn off only in tests that run many nodes on few CPUs).
    pub pin: bool,
    /// Idle policy of every shard.
    pub idle: IdlePolicy,
    /// Transport choice.
    pub transport: TransportKind,
    /// Send page payloads with io_uring `SEND_ZC` instead of one copying vectored send per
    /// flush (default false: for 4 KiB pages the copy is cheaper; see docs/wire.md).
    pub zero_copy: bool,
    /// The cluster secret (at least 16 bytes).
    pub secret: Vec<u8>,
    /// How frames are protected after the handshake (default MAC; every node must agree).
    pub frame_auth: wire::FrameAuth,
    /// This node's per-node identity for data connections (see [`Credentials::identity`]).
    pub identity: Option<Arc<dyn wire::handshake::NodeIdentity>>,
    /// How long to wait for every peer to connect.
    pub connect_timeout: Duration,
    /// Protocol tunables (`max_home_txns` is sized from the cluster automatically).
    pub protocol: coherence::Config,
    /// Measure inter-node fetch latency and bandwidth once the cluster is formed (every node
    /// must agree: it is an exchange). See [`crate::measure`].
    pub measure: bool,
    /// Bytes of address space reserved for growth (nodes joining); at least the cluster's.
    pub max_address_space: u64,
    /// Pages whose every protocol step is logged (at most [`MAX_TRACED_PAGES`]).
    pub trace_pages: Vec<u64>,
    /// Per-fault timestamps each shard keeps for [`Node::traces`] (the most recent
    /// this many records per shard); 0, the default, turns tracing off.
    pub fault_trace: usize,
    /// Sequential-prefetch depth in pages (0 or 1: off); see [`NodeState::set_prefetch`],
    /// which also changes it while the node runs.
    pub prefetch: u32,
    /// A shard that finishes no loop turn for this long while not asleep is named in the log
    /// (see [`crate::watchdog`]); zero turns the watchdog off.
    pub stall_after: Duration,
    /// How long a connection between two live shards may stay broken (reset, link down)
    /// before the peer node is declared dead; meanwhile this node dials again (or waits for
    /// the peer to) and the session resumes without losing a frame (see
    /// [`crate::shard::session`]). Zero: a broken connection is the node's death at once.
    pub resume_window: Duration,
    /// Most pages of other homes the node holds at once (read-only replicas and pages it
    /// owns writable), shared out over its shards; beyond it the least recently acquired are
    /// evicted (see [`crate::replica_cache`]). 0, the default: no bound.
    pub replica_cache: u64,
}

/// Default for [`NodeConfig::resume_window`]: the control plane's default failure timeout
/// (`--dead-ms`), so both declare a silent node dead after the same time.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_millis(1500);

/// Default for [`NodeConfig::stall_after`]: far above any turn (microseconds) and any
/// scheduling delay of a busy host, short enough to be seen while the stall lasts.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(5);

/// Frames each session keeps until its peer acknowledges them (acknowledgements come every
/// 64 frames and at every idle turn; a peer's requests are bounded by its protocol records).
const SESSION_WINDOW: usize = 4096;
/// Page copies over all sessions of a shard (16 MiB of address space; only what is used is
/// backed by memory).
const SESSION_PAGES: usize = 4096;

/// Most pages traced at once.
pub const MAX_TRACED_PAGES: usize = 16;

/// Default address-space reservation: 256 GiB (virtual only; nothing is committed until
/// touched).
pub const DEFAULT_MAX_ADDRESS_SPACE: u64 = 256 << 30;

impl NodeConfig {
    /// A configuration with defaults: shards unpinned on the given cores, `block` idle,
    /// automatic transport, 30 s to connect.
    pub fn new(cluster: ClusterSpec, listener: TcpListener, secret: Vec<u8>) -> Self {
        Self {
            cluster,
            listener,
            cores: vec![0],
            pin: true,
            idle: IdlePolicy::Block,
            transport: TransportKind::Auto,
            zero_copy: false,
            secret,
            frame_auth: wire::FrameAuth::default(),
            identity: None,
            connect_timeout: Duration::from_secs(30),
            protocol: coherence::Config::default(),
            measure: true,
            max_address_space: DEFAULT_MAX_ADDRESS_SPACE,
            trace_pages: Vec::new(),
            fault_trace: 0,
            prefetch: 0,
            stall_after: DEFAULT_STALL_AFTER,
            resume_window: DEFAULT_RESUME_WINDOW,
            replica_cache: 0,
        }
    }
}

/// What opening a link probe to a member takes (a snapshot, usable off the node's thread).
#[derive(Debug, Clone)]
pub(crate) struct ProbeDialer {
    cluster: ClusterSpec,
    creds: Credentials,
    shards: u16,
}

impl ProbeDialer {
    /// Opens a probe connection to member `peer` and measures the stream from it, in MB/s.
    pub(crate) fn stream_mbps(&self, peer: u16) -> Result<u64, String> {
        let spec = self
            .cluster
            .nodes
            .iter()
            .find(|n| n.id == peer)
            .ok_or_else(|| format!("node {peer} is not a member"))?;
        let (stream, keys) =
            mesh::dial_probe(&self.cluster, spec, self.shards, &self.creds, PROBE_DIAL)
                .map_err(|e| e.to_string())?;
        crate::link_probe::measure(stream, &keys).map_err(|e| e.to_string())
    }
}

/// How long opening a link probe may take.
const PROBE_DIAL: Duration = Duration::from_secs(5);

/// A running node.
#[derive(Debug)]
pub struct Node {
    me: u16,
    cluster: Arc<Mutex<ClusterSpec>>,
    layout: Mutex<Arc<Layout>>,
    mailboxes: Vec<Arc<Mailbox>>,
    creds: Credentials,
    region: Arc<Region>,
    state: Arc<NodeState>,
    stats: Vec<Arc<ShardStats>>,
    traces: Vec<TraceRings>,
    threads: Vec<JoinHandle<()>>,
    doorbells: Arc<[Doorbell]>,
    acceptor: Acceptor,
    redialer: Option<Redialer>,
    transport_line: String,
    transport_stats: Vec<Arc<wire::TransportStats>>,
    figures: Option<Figures>,
    /// Home nodes that left, and the node that took each one's pages.
    successors: Mutex<Vec<(u16, u16)>>,
    _pm_qos: Option<LatencyGuard>,
}

/// The protocol layout of a cluster.
pub fn layout_of(cluster: &ClusterSpec) -> Result<Layout, coherence::StepError> {
    let ranges = cluster
        .ranges()
        .into_iter()
        .map(|(id, first_page, page_count)| NodeRange {
            node: NodeId::new(id).expect("cluster ids are validated"),
            first_page,
            page_count,
        })
        .collect();
    Ok(Layout::new(PAGE_SIZE, ranges)?)
}

/// The transport the shards use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chosen {
    Uring,
    Epoll,
    /// On this device (its port 1).
    Verbs(String),
    /// Verbs on this device for peers that offer them too, io_uring (or epoll) TCP for the
    /// others (`auto` on a host with a usable device).
    Mixed {
        uring: bool,
        device: String,
    },
}

/// The transport to use, and the line that tells the user which and why (`Node::start`
/// adds, for `auto`, why RDMA is not used).
fn choose(kind: TransportKind, zero_copy: bool) -> Result<(Chosen, String), NodeError> {
    if kind == TransportKind::Verbs {
        let found = transport_verbs::probe();
        return match found.usable() {
            Some((dev, port)) if port.number == 1 => Ok((
                Chosen::Verbs(dev.name.clone()),
                format!(
                    "transport: RDMA verbs on {} port 1 ({}), RC queue pairs, frames by SEND \
                     with credits",
                    dev.name, port.link_layer
                ),
            )),
            Some((dev, port)) => Err(NodeError::VerbsUnavailable(format!(
                "the active port of {} is port {}, and this version uses port 1",
                dev.name, port.number
            ))),
            None => Err(NodeError::VerbsUnavailable(
                transport_verbs::unavailable_reason(&found),
            )),
        };
    }
    let (tcp, mut line) = choose_tcp(kind)?;
    if tcp == Chosen::Uring {
        line.push_str(if zero_copy {
            "; pages sent zero-copy where available (--zero-copy)"
        } else {
            "; pages sent with vectored copying sends"
        });
    }
    if kind != TransportKind::Auto {
        return Ok((tcp, line));
    }
    let found = transport_verbs::probe();
    let usable = match found.usable() {
        Some((dev, port)) if port.number == 1 => transport_verbs::verbs::Verbs::load()
            .and_then(|v| v.open(&dev.name))
            .and_then(|ctx| ctx.active_port(1))
            .map(|_| dev.name.clone())
            .map_err(|e| e.to_string()),
        Some((dev, port)) => Err(format!(
            "the active port of {} is port {}, and this version uses port 1",
            dev.name, port.number
        )),
        None => Err(transport_verbs::unavailable_reason(&found)),
    };
    Ok(match usable {
        Ok(device) => (
            Chosen::Mixed {
                uring: tcp == Chosen::Uring,
                device: device.clone(),
            },
            format!("{line}; RDMA verbs on {device} port 1 for each peer that offers them too"),
        ),
        Err(why) => (tcp, format!("{line}; TCP, not RDMA: {why}")),
    })
}

/// "; links: node 1 verbs, node 2 TCP" for a node that offered verbs: which of its peers
/// offered them too (connections formed later follow the same rule).
fn links_line(conns: &[crate::shard::Conn]) -> String {
    let mut nodes: Vec<(u16, bool)> = conns
        .iter()
        .map(|c| (c.node.get(), c.peer_offers_verbs))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let each: Vec<String> = nodes
        .iter()
        .map(|&(n, v)| format!("node {n} {}", if v { "verbs" } else { "TCP" }))
        .collect();
    format!("; links: {}", each.join(", "))
}

/// The TCP transport for `kind` (io_uring or epoll) and the line that says which and why.
fn choose_tcp(kind: TransportKind) -> Result<(Chosen, String), NodeError> {
    match (kind, transport_uring::choose()) {
        (TransportKind::Fallback, _) => Ok((
            Chosen::Epoll,
            "transport: epoll fallback (asked for)".into(),
        )),
        (TransportKind::Uring, transport_uring::Choice::Fallback(r)) => {
            Err(NodeError::UringUnavailable(r.to_string()))
        }
        (_, c) => Ok((
            if matches!(c, transport_uring::Choice::Uring(_)) {
                Chosen::Uring
            } else {
                Chosen::Epoll
            },
            c.to_string(),
        )),
    }
}

impl Node {
    /// Starts the node: maps and registers the region, forms the mesh (waiting for every
    /// peer), then starts the shards. Returns once every shard runs.
    pub fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let shards = shard_count(&cfg.cores)?;
        let layout = layout_of(&cfg.cluster)?;
        let (chosen, mut transport_line) = transport_choice(&cfg)?;
        let reserve = (cfg.max_address_space / PAGE_SIZE).max(layout.end_page());
        let region = Arc::new(Region::new(layout.end_page(), reserve, shards as u32)?);
        let bucket_pages = layout
            .end_page()
            .div_ceil(crate::stats::HEAT_BUCKETS as u64 / 4)
            .max(1);
        let me = NodeId::new(cfg.cluster.me).expect("validated");
        let creds = Credentials {
            secret: cfg.secret,
            frame_auth: cfg.frame_auth,
            identity: cfg.identity,
            offer_verbs: matches!(chosen, Chosen::Verbs(_) | Chosen::Mixed { .. }),
            migration: cfg.protocol.migration,
        };
        let mesh = mesh::establish(
            cfg.listener,
            &cfg.cluster,
            shards as u16,
            &creds,
            cfg.connect_timeout,
        )?;
        let (proto, tcfg) = sizes(cfg.protocol, cfg.zero_copy, &mesh.conns[0], shards);
        if creds.offer_verbs {
            transport_line.push_str(&links_line(&mesh.conns[0]));
        }

        let state = Arc::new(NodeState::new(shards));
        state.set_prefetch(cfg.prefetch);
        let doorbells = doorbells(shards)?;
        let (mut inbox, mut outbox) = shard_rings(shards);
        let pm_qos = pm_qos_for(cfg.idle);

        let traces: Vec<TraceRings> = (0..shards)
            .filter(|_| cfg.fault_trace > 0)
            .map(|_| TraceRings::new(cfg.fault_trace))
            .collect();
        // Every shard's machine and tables first: a failure here leaves no thread behind.
        let common = ShardCommon {
            me,
            layout: &layout,
            region: &region,
            doorbells: &doorbells,
            state: &state,
            idle: cfg.idle,
            proto,
            bucket_pages,
            traced: &cfg.trace_pages,
            replica_cache: cfg.replica_cache,
        };
        let rings = inbox.drain(..).zip(outbox.drain(..));
        let mut setups = common.setups(mesh.conns, rings, &traces)?;
        let stats: Vec<_> = setups.iter().map(|s| s.stats.clone()).collect();
        let mailboxes: Vec<_> = setups.iter().map(|s| s.mailbox.clone()).collect();
        let cluster = Arc::new(Mutex::new(cfg.cluster));
        let (redialer, redial) = Redialer::start(RedialSetup {
            cluster: cluster.clone(),
            creds: creds.clone(),
            shards: shards as u16,
            mailboxes: mailboxes.clone(),
            doorbells: doorbells.clone(),
            state: state.clone(),
        })
        .map_err(|e| NodeError::Shard {
            shard: 0,
            why: format!("cannot start the redial thread: {e}"),
        })?;
        for s in &mut setups {
            s.redial = Some(redial.clone());
            s.resume_window = cfg.resume_window;
        }
        let placement = Placement {
            cores: &cfg.cores,
            pin: cfg.pin,
            chosen: &chosen,
            tcfg: &tcfg,
        };
        let (threads, ready_rx) = placement.spawn(setups, &state, &doorbells)?;
        // Connections that arrive from now on go to their shard's session.
        mesh.acceptor.route_late(LateSink {
            mailboxes: mailboxes.clone(),
            doorbells: doorbells.clone(),
            state: state.clone(),
        });
        let mut node = Node {
            me: me.get(),
            cluster,
            layout: Mutex::new(Arc::new(layout)),
            mailboxes,
            creds,
            region,
            state,
            stats,
            traces,
            threads,
            doorbells,
            acceptor: mesh.acceptor,
            redialer: Some(redialer),
            transport_line,
            transport_stats: Vec::new(),
            figures: None,
            successors: Mutex::new(Vec::new()),
            _pm_qos: pm_qos,
        };
        node.await_shards(&ready_rx, shards)?;
        node.start_watchdog(&cfg.cores, cfg.stall_after)?;
        if cfg.measure && HostArea::of(&node).is_some() {
            node.figures = Some(measure::measure(&node)?);
            // Hand the probe replicas back: the node starts with nothing cached.
            node.leave(Duration::from_secs(30))?;
        }
        Ok(node)
    }

    /// Starts the watchdog over the running shards (`bound` zero: none).
    fn start_watchdog(&mut self, cores: &[usize], bound: Duration) -> Result<(), NodeError> {
        if bound.is_zero() {
            return Ok(());
        }
        let dog = crate::watchdog::Watchdog::start(
            self.state.clone(),
            &self.stats,
            self.doorbells.clone(),
            cores,
            bound,
        )
        .map_err(|e| NodeError::Shard {
            shard: 0,
            why: format!("cannot start the watchdog thread: {e}"),
        })?;
        self.threads.push(dog);
        Ok(())
    }

    /// Waits until every shard runs (or one failed to start: then stops the others).
    fn await_shards(
        &mut self,
        ready: &mpsc::Receiver<(usize, Ready)>,
        shards: usize,
    ) -> Result<(), NodeError> {
        let mut tstats = vec![None; shards];
        for _ in 0..shards {
            let failed = match ready.recv() {
                Ok((i, Ok(t))) => {
                    tstats[i] = Some(t);
                    continue;
                }
                Ok((shard, Err(why))) => NodeError::Shard { shard, why },
                Err(_) => NodeError::Shard {
                    shard: 0,
                    why: "a shard thread died".into(),
                },
            };
            self.stop_threads();
            return Err(failed);
        }
        self.transport_stats = tstats.into_iter().flatten().collect();
        Ok(())
    }

    /// Every shard's transport counters.
    pub fn transport_stats(&self) -> &[Arc<wire::TransportStats>] {
        &self.transport_stats
    }

    /// Wakes every shard (it then notices a change in the shared state at once).
    pub fn wake_shards(&self) {
        for d in self.doorbells.iter() {
            d.kick();
        }
    }

    /// Inter-node figures measured at formation (when the address space has a host area and
    /// `NodeConfig::measure` was set).
    pub fn figures(&self) -> Option<&Figures> {
        self.figures.as_ref()
    }

    /// This node's id.
    pub fn id(&self) -> u16 {
        self.me
    }

    /// The cluster (a snapshot: it grows when nodes join).
    pub fn cluster(&self) -> ClusterSpec {
        self.cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Opens a link probe to member `peer` ([`crate::link_probe`]).
    pub(crate) fn probe_dialer(&self) -> ProbeDialer {
        ProbeDialer {
            cluster: self.cluster(),
            creds: self.creds.clone(),
            shards: self.mailboxes.len() as u16,
        }
    }

    /// The protocol layout, which node homes which pages (a snapshot: it grows when nodes
    /// join).
    pub fn layout(&self) -> Arc<Layout> {
        self.layout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies a join: the cluster grows to `cluster` (its old members unchanged, `joiner`
    /// appended with the highest id). Grows the address space, switches every shard to the
    /// new layout, connects every shard to every shard of the joiner (which is waiting for
    /// its lower-numbered peers' connections), and only then publishes the new layout.
    pub fn extend(
        &self,
        cluster: ClusterSpec,
        joiner: u16,
        timeout: Duration,
    ) -> Result<(), NodeError> {
        let layout = layout_of(&cluster)?;
        let old = self.layout();
        if layout.ranges().len() <= old.ranges().len()
            || layout.ranges()[..old.ranges().len()] != *old.ranges()
        {
            return Err(NodeError::Join(format!(
                "the new layout ({}) does not extend the current one: a joiner's id must be above every member's",
                cluster.describe()
            )));
        }
        self.region.grow(layout.end_page())?;
        let shards = self.mailboxes.len();
        let tickets: Vec<_> = self
            .mailboxes
            .iter()
            .map(|m| m.post(Command::Extend(layout.clone())))
            .collect();
        for (m, t) in self.mailboxes.iter().zip(tickets) {
            if !m.wait(t, timeout) {
                return Err(NodeError::Join(
                    "a shard did not switch to the new layout in time".into(),
                ));
            }
        }
        let spec = cluster
            .nodes
            .iter()
            .find(|n| n.id == joiner)
            .cloned()
            .ok_or_else(|| NodeError::Join(format!("node {joiner} is not in the new cluster")))?;
        let node = NodeId::new(joiner).map_err(|e| NodeError::Join(e.to_string()))?;
        let conns = mesh::dial_node(&cluster, &spec, shards as u16, &self.creds, timeout)?;
        for (i, c) in conns.into_iter().enumerate() {
            let t = self.mailboxes[i].post(Command::AddConns(c));
            if !self.mailboxes[i].wait(t, timeout) {
                return Err(NodeError::Join(format!(
                    "shard {i} did not take the connections to node {node}"
                )));
            }
        }
        *self.cluster.lock().unwrap_or_else(|e| e.into_inner()) = cluster;
        *self.layout.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(layout);
        Ok(())
    }

    /// Where authenticated guest platform channels from other nodes arrive: a guest run that
    /// spans nodes puts a sender here while it expects them.
    pub fn platform_sink(&self) -> crate::mesh::PlatformSink {
        self.acceptor.platform.clone()
    }

    /// Opens the guest platform channel to node `peer` (authenticated with the cluster
    /// secret, layout digest checked), retrying until `timeout` while it is not listening;
    /// with the keys that seal its messages.
    pub fn dial_platform(
        &self,
        peer: u16,
        timeout: Duration,
    ) -> Result<(std::net::TcpStream, wire::FrameKeys), NodeError> {
        let cluster = self.cluster();
        let spec = cluster
            .nodes
            .iter()
            .find(|n| n.id == peer)
            .cloned()
            .ok_or_else(|| NodeError::Join(format!("node {peer} is not in the cluster")))?;
        let shards = self.mailboxes.len() as u16;
        Ok(mesh::dial_platform(
            &cluster,
            &spec,
            shards,
            &self.creds,
            timeout,
        )?)
    }

    /// The state of `page` as this node knows it: the directory entry if it homes the page,
    /// and the recent requests it counted for it.
    pub fn query_page(&self, page: u64) -> Option<PageState> {
        let shards = self.mailboxes.len() as u32;
        let m = &self.mailboxes[crate::shard::route::shard_of(page, shards) as usize];
        let (tx, rx) = std::sync::mpsc::channel();
        m.post(Command::QueryPage(page, tx));
        rx.recv_timeout(Duration::from_secs(2)).ok()
    }

    /// The guest region.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Host address of page 0 of the address space.
    pub fn base(&self) -> *mut u8 {
        self.region.base()
    }

    /// Host address of `page`.
    pub fn page_ptr(&self, page: u64) -> *mut u8 {
        self.region.page_addr(page) as *mut u8
    }

    /// Per-shard counters and histograms.
    pub fn stats(&self) -> &[Arc<ShardStats>] {
        &self.stats
    }

    /// Each shard's per-fault and per-answer timestamps (empty unless
    /// `NodeConfig::fault_trace` was set).
    pub fn traces(&self) -> &[TraceRings] {
        &self.traces
    }

    /// State shared with the shards (dead peers, cluster stop, ...).
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The shared state, for a thread that outlives a borrow of the node.
    pub fn shared_state(&self) -> Arc<NodeState> {
        self.state.clone()
    }

    /// Which transport runs, and why (one line for the log).
    pub fn transport_line(&self) -> &str {
        &self.transport_line
    }

    /// Handshake outcomes (the acceptor's and our own dials).
    pub fn handshake_stats(&self) -> &wire::handshake::HandshakeStats {
        &self.acceptor.stats
    }

    /// Home node `node` leaves and `to` takes its pages (docs/protocol.md §13): every shard
    /// stops moving homes to `node`; at `node` itself (which must be told last) the shards
    /// start handing every page they home, and every pointer they keep, to `to`.
    pub fn retire(&self, node: u16, to: u16) -> Result<(), NodeError> {
        let (node, to) = (retire_id(node)?, retire_id(to)?);
        self.on_every_shard(|reply| Command::Retire { node, to, reply })
    }

    /// `node` has left and `to` answers for it: every shard sends there what would have gone
    /// to `node`, and forgets `node` without reporting a failure.
    pub fn retired(&self, node: u16, to: u16) -> Result<(), NodeError> {
        let (id, succ) = (node, to);
        let (node, to) = (retire_id(node)?, retire_id(to)?);
        self.on_every_shard(|reply| Command::Retired { node, to, reply })?;
        if let Ok(mut s) = self.successors.lock() {
            s.push((id, succ));
        }
        Ok(())
    }

    /// The node that answers for `id`: `id` itself, or the successor of a home that left
    /// (followed through later leaves).
    pub fn successor(&self, id: u16) -> u16 {
        let Ok(s) = self.successors.lock() else {
            return id;
        };
        let mut at = id;
        for _ in 0..s.len() {
            match s.iter().find(|&&(d, _)| d == at) {
                Some(&(_, to)) => at = to,
                None => break,
            }
        }
        at
    }

    /// How the leave in progress stands over all shards: `fenced` and `drained` when every
    /// shard says so, `homed` summed (counted only with `count_homed`: a scan of every
    /// shard's directory).
    pub fn retire_progress(&self, count_homed: bool) -> Result<RetireProgress, NodeError> {
        let mut all = RetireProgress {
            fenced: true,
            drained: true,
            homed: 0,
        };
        for m in self.mailboxes.iter() {
            let (tx, rx) = std::sync::mpsc::channel();
            m.post(Command::RetireStatus {
                count_homed,
                reply: tx,
            });
            for d in self.doorbells.iter() {
                d.kick();
            }
            let p = rx
                .recv_timeout(RETIRE_ANSWER)
                .map_err(|_| NodeError::Retire("a shard did not answer in time".into()))?;
            all.fenced &= p.fenced;
            all.drained &= p.drained;
            all.homed += p.homed;
        }
        Ok(all)
    }

    /// Posts one command to every shard and waits for each answer (an error text if the
    /// protocol refused).
    fn on_every_shard(
        &self,
        make: impl Fn(std::sync::mpsc::Sender<Option<String>>) -> Command,
    ) -> Result<(), NodeError> {
        let mut answers = Vec::new();
        for m in self.mailboxes.iter() {
            let (tx, rx) = std::sync::mpsc::channel();
            m.post(make(tx));
            answers.push(rx);
        }
        for d in self.doorbells.iter() {
            d.kick();
        }
        for rx in answers {
            match rx.recv_timeout(RETIRE_ANSWER) {
                Ok(None) => {}
                Ok(Some(why)) => return Err(NodeError::Retire(why)),
                Err(_) => return Err(NodeError::Retire("a shard did not answer in time".into())),
            }
        }
        Ok(())
    }

    /// Hands every replica this node caches back to its home (clean ones are dropped, dirty
    /// ones written back), so that the node can go away without taking the only copy of a
    /// page with it. Call it after the threads that touch guest memory stopped.
    pub fn leave(&self, timeout: Duration) -> Result<(), NodeError> {
        let gen = self.state.request_evict_all();
        for d in self.doorbells.iter() {
            d.kick();
        }
        let deadline = Instant::now() + timeout;
        while !self.state.evicted(gen) {
            if Instant::now() >= deadline {
                return Err(NodeError::LeaveTimeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn stop_threads(&mut self) {
        self.state.request_stop();
        for d in self.doorbells.iter() {
            d.kick();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.acceptor.stop();
        if let Some(mut r) = self.redialer.take() {
            r.stop();
        }
    }

    /// Stops the shards and the acceptor. Peers see this node's connections close.
    pub fn shutdown(mut self) {
        self.state.expect_departures();
        self.stop_threads();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// A shard's setup before its transport exists (the transport is built on the shard's own
/// thread).
struct PartialSetup {
    index: u32,
    count: u32,
    machine: Machine,
    layout: Layout,
    conns: Vec<Conn>,
    region: Arc<Region>,
    inbox: Vec<(usize, spsc::Consumer<ShardMsg>)>,
    outbox: Vec<Option<spsc::Producer<ShardMsg>>>,
    doorbells: Arc<[Doorbell]>,
    stats: Arc<ShardStats>,
    state: Arc<NodeState>,
    idle: IdlePolicy,
    retry_limit: usize,
    mailbox: Arc<Mailbox>,
    traced: Vec<u64>,
    trace: Option<TraceRings>,
    resume_window: Duration,
    redial: Option<RedialTx>,
    replica_cache: usize,
}

/// What a shard thread reports once it runs: its transport's counters, or why it could not
/// start.
type Ready = Result<Arc<wire::TransportStats>, String>;

/// The shard threads, and the channel on which each reports that it runs.
type Spawned = (Vec<JoinHandle<()>>, mpsc::Receiver<(usize, Ready)>);

/// Where and how the shard threads run.
struct Placement<'a> {
    cores: &'a [usize],
    pin: bool,
    chosen: &'a Chosen,
    tcfg: &'a TransportConfig,
}

impl Placement<'_> {
    /// Starts one thread per set-up; each reports on the returned channel once its transport
    /// runs. If a thread cannot be started, the ones already started are stopped.
    fn spawn(
        &self,
        setups: Vec<PartialSetup>,
        state: &NodeState,
        doorbells: &[Doorbell],
    ) -> Result<Spawned, NodeError> {
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Ready)>();
        let mut threads = Vec::with_capacity(setups.len());
        for setup in setups {
            let place = (self.cores[setup.index as usize], self.pin);
            match spawn_shard(setup, place, self.chosen, self.tcfg, ready_tx.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop_shards(state, doorbells, threads);
                    return Err(e);
                }
            }
        }
        Ok((threads, ready_rx))
    }
}

/// Stops shard threads started so far (a later one failed to start).
fn stop_shards(state: &NodeState, doorbells: &[Doorbell], threads: Vec<JoinHandle<()>>) {
    state.request_stop();
    doorbells.iter().for_each(Doorbell::kick);
    for t in threads {
        // A shard that panicked aborted the process; a join error cannot reach here.
        let _ = t.join();
    }
}

/// One doorbell per shard.
fn doorbells(shards: usize) -> Result<Arc<[Doorbell]>, NodeError> {
    let bells = (0..shards)
        .map(|_| Doorbell::new())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NodeError::Shard {
            shard: 0,
            why: format!("doorbell: {e}"),
        })?;
    Ok(bells.into())
}

/// One shard per core; at least one, at most 1024.
fn shard_count(cores: &[usize]) -> Result<usize, NodeError> {
    match cores.len() {
        0 => Err(NodeError::NoCores),
        n if n > 1024 => Err(NodeError::TooManyCores(n)),
        n => Ok(n),
    }
}

/// What every shard of a node shares, for building their set-ups.
struct ShardCommon<'a> {
    me: NodeId,
    layout: &'a Layout,
    region: &'a Arc<Region>,
    doorbells: &'a Arc<[Doorbell]>,
    state: &'a Arc<NodeState>,
    idle: IdlePolicy,
    proto: coherence::Config,
    bucket_pages: u64,
    traced: &'a [u64],
    /// The node's replica-cache bound in pages (0: none), shared out over the shards.
    replica_cache: u64,
}

impl ShardCommon<'_> {
    /// Every shard's set-up, shard `i` taking the `i`-th connection set, ring pair and trace.
    fn setups(
        &self,
        conns: Vec<Vec<crate::shard::Conn>>,
        rings: impl Iterator<Item = ShardRingsOf>,
        traces: &[TraceRings],
    ) -> Result<Vec<PartialSetup>, NodeError> {
        let shards = conns.len();
        let mut setups = Vec::with_capacity(shards);
        for (i, (conns, rings)) in conns.into_iter().zip(rings).enumerate() {
            setups.push(self.setup(i, shards, conns, rings, traces.get(i).cloned())?);
        }
        Ok(setups)
    }

    /// Shard `i` of `shards`: its protocol machine, connections, rings and tables.
    fn setup(
        &self,
        i: usize,
        shards: usize,
        conns: Vec<crate::shard::Conn>,
        (inbox, outbox): ShardRingsOf,
        trace: Option<TraceRings>,
    ) -> Result<PartialSetup, NodeError> {
        let part = Partition::granular(
            i as u32,
            shards as u32,
            crate::shard::route::SHARD_GRANULE_PAGES,
        )
        .map_err(coherence::StepError::from)?;
        Ok(PartialSetup {
            index: i as u32,
            count: shards as u32,
            machine: Machine::new(self.me, self.layout.clone(), part, self.proto)?,
            layout: self.layout.clone(),
            conns,
            region: self.region.clone(),
            inbox,
            outbox,
            doorbells: self.doorbells.clone(),
            stats: Arc::new(ShardStats::with_heat(self.bucket_pages)),
            state: self.state.clone(),
            idle: self.idle,
            retry_limit: self.proto.max_active_pages as usize,
            mailbox: Arc::new(Mailbox::default()),
            traced: self.traced.iter().copied().take(MAX_TRACED_PAGES).collect(),
            trace,
            resume_window: DEFAULT_RESUME_WINDOW,
            redial: None,
            // Each shard holds its share, rounded up (every shard may hold at least one).
            replica_cache: usize::try_from(self.replica_cache.div_ceil(shards as u64))
                .unwrap_or(usize::MAX),
        })
    }
}

/// The protocol's tunables (home transactions sized for every protocol instance of the
/// cluster: ours plus each peer's shards, learnt from the connections to its shard 0) and
/// each shard's transport configuration.
fn sizes(
    protocol: coherence::Config,
    zero_copy: bool,
    conns: &[crate::shard::Conn],
    shards: usize,
) -> (coherence::Config, TransportConfig) {
    let instances: u32 = shards as u32
        + conns
            .iter()
            .filter(|c| c.peer_shard == 0)
            .map(|c| u32::from(c.peer_shard_count))
            .sum::<u32>();
    let mut proto = protocol;
    proto.max_home_txns = coherence::Config::home_txns_needed(instances, proto.max_active_pages);
    let tcfg = TransportConfig {
        max_peers: conns.len().max(1) + 4,
        tx_depth: 512,
        tx_copy_slots: 256,
        rx_slots: 128,
        zero_copy,
        ..TransportConfig::default()
    };
    (proto, tcfg)
}

/// Which transport the shards use and the line that says why.
fn transport_choice(cfg: &NodeConfig) -> Result<(Chosen, String), NodeError> {
    choose(cfg.transport, cfg.zero_copy)
}

/// One shard's inbound rings (from every other shard `i`, tagged with `i`) and outbound
/// producers (indexed by destination; `None` for itself).
type ShardRingsOf = (
    Vec<(usize, spsc::Consumer<ShardMsg>)>,
    Vec<Option<spsc::Producer<ShardMsg>>>,
);

/// Every shard's [`ShardRingsOf`], as two vectors indexed by shard.
type ShardRings = (
    Vec<Vec<(usize, spsc::Consumer<ShardMsg>)>>,
    Vec<Vec<Option<spsc::Producer<ShardMsg>>>>,
);

/// One bounded ring (i -> j) for every ordered pair of distinct shards.
fn shard_rings(shards: usize) -> ShardRings {
    let mut inbox: Vec<Vec<(usize, spsc::Consumer<ShardMsg>)>> =
        (0..shards).map(|_| Vec::new()).collect();
    let mut outbox: Vec<Vec<Option<spsc::Producer<ShardMsg>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    for (i, row) in outbox.iter_mut().enumerate() {
        for (j, slot) in row.iter_mut().enumerate() {
            if i != j {
                let (tx, rx) = spsc::ring(SHARD_RING);
                *slot = Some(tx);
                inbox[j].push((i, rx));
            }
        }
    }
    (inbox, outbox)
}

/// Holds `/dev/cpu_dma_latency` at 0 while any shard may spin (a warning where it cannot).
fn pm_qos_for(idle: IdlePolicy) -> Option<LatencyGuard> {
    if !idle.spins() {
        return None;
    }
    LatencyGuard::hold(0)
        .map_err(|e| tracing::warn!("{e}"))
        .ok()
}

/// Starts shard `setup.index` on its own thread, pinned to `place.0` when `place.1`; the
/// thread builds its transport and reports on `ready`.
fn spawn_shard(
    setup: PartialSetup,
    place: (usize, bool),
    chosen: &Chosen,
    tcfg: &TransportConfig,
    ready: mpsc::Sender<(usize, Ready)>,
) -> Result<JoinHandle<()>, NodeError> {
    let i = setup.index as usize;
    let (cpu, pin) = place;
    let tcfg = tcfg.clone();
    let chosen = chosen.clone();
    std::thread::Builder::new()
        .name(format!("ssi-dp-shard{i}"))
        .spawn(move || {
            let _abort_on_panic = crate::watchdog::AbortOnPanic::new(i);
            // Every event of this thread carries its shard (a field of the span).
            let _span = tracing::info_span!("shard", shard = i).entered();
            if pin {
                if let Err(e) = crate::affinity::pin_current_thread(cpu) {
                    // A closed channel means Node::start already gave up: nobody to tell.
                    let _ = ready.send((i, Err(e.to_string())));
                    return;
                }
            }
            match chosen {
                Chosen::Uring => {
                    run_shard(setup, transport_uring::UringTransport::new(&tcfg), ready, i)
                }
                Chosen::Epoll => {
                    run_shard(setup, transport_epoll::EpollTransport::new(&tcfg), ready, i)
                }
                Chosen::Verbs(device) => {
                    let vcfg = transport_verbs::transport::VerbsConfig { device };
                    let t = transport_verbs::transport::VerbsTransport::new(&tcfg, &vcfg);
                    run_shard(setup, t, ready, i)
                }
                Chosen::Mixed { uring, device } => {
                    // Each half delivers at most half the events of one poll.
                    let tcfg = TransportConfig {
                        poll_budget: (tcfg.poll_budget / 2).max(1),
                        ..tcfg
                    };
                    let vcfg = transport_verbs::transport::VerbsConfig { device };
                    let verbs = transport_verbs::transport::VerbsTransport::new(&tcfg, &vcfg);
                    if uring {
                        let t = transport_uring::UringTransport::new(&tcfg)
                            .and_then(|t| crate::mixed::Mixed::new(t, verbs?, tcfg.max_peers));
                        run_shard(setup, t, ready, i)
                    } else {
                        let t = transport_epoll::EpollTransport::new(&tcfg)
                            .and_then(|t| crate::mixed::Mixed::new(t, verbs?, tcfg.max_peers));
                        run_shard(setup, t, ready, i)
                    }
                }
            }
        })
        .map_err(|e| NodeError::Shard {
            shard: i,
            why: e.to_string(),
        })
}

fn run_shard<T: Transport>(
    s: PartialSetup,
    transport: Result<T, wire::TransportError>,
    ready: mpsc::Sender<(usize, Ready)>,
    i: usize,
) {
    let transport = match transport {
        Ok(t) => t,
        Err(e) => {
            let _ = ready.send((i, Err(e.to_string())));
            return;
        }
    };
    let setup = ShardSetup {
        index: s.index,
        count: s.count,
        machine: s.machine,
        layout: s.layout,
        transport,
        conns: s.conns,
        region: s.region,
        inbox: s.inbox,
        outbox: s.outbox,
        doorbells: s.doorbells,
        stats: s.stats,
        state: s.state,
        idle: s.idle,
        sessions: (SESSION_WINDOW, SESSION_PAGES),
        resume_window: s.resume_window,
        redial: s.redial,
        retry_limit: s.retry_limit,
        mailbox: s.mailbox,
        traced: s.traced,
        trace: s.trace,
        clock: crate::clock::Clock::Monotonic,
        replica_cache: s.replica_cache,
    };
    let tstats = setup.transport.stats().clone();
    match Shard::new(setup) {
        Ok(shard) => {
            let _ = ready.send((i, Ok(tstats)));
            shard.run();
        }
        Err(e) => {
            let _ = ready.send((i, Err(e.to_string())));
        }
    }
}
