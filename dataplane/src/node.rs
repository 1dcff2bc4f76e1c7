//! The node: the embedding API that starts a data plane in-process — the guest region, the
//! mesh of authenticated connections, and one pinned shard per data-plane core — and hands
//! back the region's base pointer and layout so that worker threads (a VMM's vCPUs, a test, a
//! benchmark) touch guest memory directly.

use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use wire::{Transport, TransportConfig};

use crate::config::{ClusterSpec, PAGE_SIZE};
use crate::doorbell::Doorbell;
use crate::idle::IdlePolicy;
use crate::mesh::{self, Acceptor, MeshError};
use crate::node_state::NodeState;
use crate::pmqos::LatencyGuard;
use crate::protocol::{self, Layout, Machine, NodeId, NodeRange, Partition};
use crate::region::{Region, RegionError};
use crate::shard::route::ShardMsg;
use crate::shard::trace::TraceRings;
use crate::shard::{Conn, Shard, ShardSetup};
use crate::spsc;
use crate::stats::ShardStats;

/// Capacity of each ring between two shards.
const SHARD_RING: usize = 1024;

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// io_uring when it works here, else the epoll fallback (and say why).
    Auto,
    /// io_uring, or fail.
    Uring,
    /// The epoll fallback.
    Fallback,
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "fallback" | "epoll" => Ok(Self::Fallback),
            _ => Err(format!("bad transport {s:?}: use auto, uring or fallback")),
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
    Protocol(#[from] protocol::StepError),
    /// io_uring was required but cannot be used here.
    #[error("--transport uring was asked for, but {0}; use --transport auto or fallback")]
    UringUnavailable(String),
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
    /// Replicas were still held when the leave timed out.
    #[error("replicas still held after {0:?}: workers may still be touching remote pages")]
    LeaveTimeout(Duration),
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
    /// The cluster secret (at least 16 bytes).
    pub secret: Vec<u8>,
    /// How long to wait for every peer to connect.
    pub connect_timeout: Duration,
    /// Protocol tunables (`max_home_txns` is sized from the cluster automatically when 0).
    pub protocol: protocol::Config,
    /// Per-fault timestamps each shard keeps for [`Node::traces`] (the most recent
    /// this many records per shard); 0, the default, turns tracing off.
    pub fault_trace: usize,
}

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
            secret,
            connect_timeout: Duration::from_secs(30),
            protocol: protocol::Config::default(),
            fault_trace: 0,
        }
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    cluster: ClusterSpec,
    layout: Layout,
    region: Arc<Region>,
    state: Arc<NodeState>,
    stats: Vec<Arc<ShardStats>>,
    traces: Vec<TraceRings>,
    threads: Vec<JoinHandle<()>>,
    doorbells: Arc<[Doorbell]>,
    acceptor: Acceptor,
    transport_line: String,
    _pm_qos: Option<LatencyGuard>,
}

/// The protocol layout of a cluster.
pub fn layout_of(cluster: &ClusterSpec) -> Result<Layout, protocol::StepError> {
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

/// The transport to use, and the line that tells the user which and why.
fn choose(kind: TransportKind) -> Result<(bool, String), NodeError> {
    match (kind, transport_uring::choose()) {
        (TransportKind::Fallback, _) => Ok((false, "transport: epoll fallback (asked for)".into())),
        (_, c @ transport_uring::Choice::Uring(_)) => Ok((true, c.to_string())),
        (TransportKind::Uring, transport_uring::Choice::Fallback(r)) => {
            Err(NodeError::UringUnavailable(r.to_string()))
        }
        (TransportKind::Auto, c) => Ok((false, c.to_string())),
    }
}

impl Node {
    /// Starts the node: maps and registers the region, forms the mesh (waiting for every
    /// peer), then starts the shards. Returns once every shard runs.
    pub fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let shards = cfg.cores.len();
        if shards == 0 {
            return Err(NodeError::NoCores);
        }
        if shards > 1024 {
            return Err(NodeError::TooManyCores(shards));
        }
        let layout = layout_of(&cfg.cluster)?;
        let (uring, transport_line) = choose(cfg.transport)?;
        let region = Arc::new(Region::new(layout.end_page())?);
        let me = NodeId::new(cfg.cluster.me).expect("validated");

        let mesh = mesh::establish(
            cfg.listener,
            &cfg.cluster,
            shards as u16,
            &cfg.secret,
            cfg.connect_timeout,
        )?;
        let instances: u32 = shards as u32
            + mesh.conns[0]
                .iter()
                .filter(|c| c.peer_shard == 0)
                .map(|c| u32::from(c.peer_shard_count))
                .sum::<u32>();
        let mut proto = cfg.protocol;
        proto.max_home_txns = protocol::Config::home_txns_needed(instances, proto.max_active_pages);
        let peer_conns: usize = mesh.conns[0].len();
        let tcfg = TransportConfig {
            max_peers: peer_conns.max(1) + 4,
            tx_depth: 512,
            tx_copy_slots: 256,
            rx_slots: 128,
            ..TransportConfig::default()
        };

        let state = Arc::new(NodeState::new(shards));
        let doorbells: Arc<[Doorbell]> = (0..shards)
            .map(|_| Doorbell::new())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NodeError::Shard {
                shard: 0,
                why: format!("doorbell: {e}"),
            })?
            .into();
        // Ring (i -> j) for every ordered pair of distinct shards.
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
        let pm_qos = if cfg.idle.spins() {
            match LatencyGuard::hold(0) {
                Ok(g) => Some(g),
                Err(e) => {
                    eprintln!("ssi-dp: warning: {e}");
                    None
                }
            }
        } else {
            None
        };

        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
        let mut threads = Vec::with_capacity(shards);
        let mut stats = Vec::with_capacity(shards);
        let traces: Vec<TraceRings> = if cfg.fault_trace > 0 {
            (0..shards)
                .map(|_| TraceRings::new(cfg.fault_trace))
                .collect()
        } else {
            Vec::new()
        };
        let mut conns = mesh.conns;
        for (i, (inbox_i, outbox_i)) in inbox.drain(..).zip(outbox.drain(..)).enumerate() {
            let machine = Machine::new(
                me,
                layout.clone(),
                Partition::new(i as u32, shards as u32).map_err(protocol::StepError::from)?,
                proto,
            )?;
            let st = Arc::new(ShardStats::default());
            stats.push(st.clone());
            let setup = PartialSetup {
                index: i as u32,
                count: shards as u32,
                machine,
                layout: layout.clone(),
                conns: std::mem::take(&mut conns[i]),
                region: region.clone(),
                inbox: inbox_i,
                outbox: outbox_i,
                doorbells: doorbells.clone(),
                stats: st,
                state: state.clone(),
                idle: cfg.idle,
                retry_limit: proto.max_active_pages as usize,
                trace: traces.get(i).cloned(),
            };
            let cpu = cfg.cores[i];
            let pin = cfg.pin;
            let ready = ready_tx.clone();
            let tcfg = tcfg.clone();
            let t = std::thread::Builder::new()
                .name(format!("ssi-dp-shard{i}"))
                .spawn(move || {
                    if pin {
                        if let Err(e) = crate::affinity::pin_current_thread(cpu) {
                            let _ = ready.send((i, Err(e.to_string())));
                            return;
                        }
                    }
                    if uring {
                        run_shard(setup, transport_uring::UringTransport::new(&tcfg), ready, i)
                    } else {
                        run_shard(setup, transport_epoll::EpollTransport::new(&tcfg), ready, i)
                    }
                })
                .map_err(|e| NodeError::Shard {
                    shard: i,
                    why: e.to_string(),
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut node = Node {
            cluster: cfg.cluster,
            layout,
            region,
            state,
            stats,
            traces,
            threads,
            doorbells,
            acceptor: mesh.acceptor,
            transport_line,
            _pm_qos: pm_qos,
        };
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((shard, Err(why))) => {
                    node.stop_threads();
                    return Err(NodeError::Shard { shard, why });
                }
                Err(_) => {
                    node.stop_threads();
                    return Err(NodeError::Shard {
                        shard: 0,
                        why: "a shard thread died".into(),
                    });
                }
            }
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> u16 {
        self.cluster.me
    }

    /// The cluster.
    pub fn cluster(&self) -> &ClusterSpec {
        &self.cluster
    }

    /// The protocol layout (which node homes which pages).
    pub fn layout(&self) -> &Layout {
        &self.layout
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

    /// Which transport runs, and why (one line for the log).
    pub fn transport_line(&self) -> &str {
        &self.transport_line
    }

    /// Handshake outcomes (the acceptor's and our own dials).
    pub fn handshake_stats(&self) -> &wire::handshake::HandshakeStats {
        &self.acceptor.stats
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
    trace: Option<TraceRings>,
}

fn run_shard<T: Transport>(
    s: PartialSetup,
    transport: Result<T, wire::TransportError>,
    ready: mpsc::Sender<(usize, Result<(), String>)>,
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
        backlog: (4096, 1024),
        retry_limit: s.retry_limit,
        trace: s.trace,
    };
    match Shard::new(setup) {
        Ok(shard) => {
            let _ = ready.send((i, Ok(())));
            shard.run();
        }
        Err(e) => {
            let _ = ready.send((i, Err(e.to_string())));
        }
    }
}
