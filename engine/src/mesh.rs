//! Connection setup: every shard of this node gets one authenticated connection to every
//! shard of every peer node.
//!
//! The lower node id dials the higher one (so each pair of shards has exactly one
//! connection), asking for each peer shard in turn; the first connection to a node reveals
//! its shard count. One listening port serves all of a node's shards: one acceptor thread runs
//! the server side of every handshake at once, non-blocking, in a bounded pool
//! ([`wire::handshake::AcceptPool`]: silent and trickling sockets expire, the peers'
//! addresses are preferred, a new dialler is never turned away), and hands authenticated
//! connections to the setup, or — once the mesh is complete — to the shard they are for
//! (a member whose connection broke dials again, and the shard's session resumes on the new
//! one; see [`crate::shard::session`]). Connections from nodes declared dead are refused
//! and counted (a node that restarts must rejoin as a new node). Refusals of every kind are
//! counted in [`HandshakeStats`].

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use wire::handshake::{
    self, AcceptPool, Authenticated, HandshakeConfig, HandshakeError, HandshakeStats, NodeIdentity,
    PoolLimits, PLATFORM_CHANNEL, PROBE_CHANNEL,
};
use wire::ratelimit::LogLimiter;
use wire::FrameAuth;

use crate::config::{ClusterSpec, NodeSpec};
use crate::doorbell::Doorbell;
use crate::node_state::NodeState;
use crate::shard::mailbox::{Command, Mailbox};
use crate::shard::Conn;
use coherence::NodeId;

/// Pause between attempts to reach a peer that is not listening yet.
const DIAL_RETRY: Duration = Duration::from_millis(50);
/// Deadline of one handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands a shard's mailbox may hold before a new connection for it is refused.
const MAILBOX_LIMIT: usize = 256;

/// Why the mesh could not be formed.
#[derive(Debug, Error)]
pub enum MeshError {
    /// A handshake failed in a way retrying cannot fix.
    #[error("connecting to node {node} at {addr}: {source}")]
    Handshake {
        /// The peer.
        node: u16,
        /// Its address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: HandshakeError,
    },
    /// Not every peer connected in time.
    #[error(
        "timed out after {secs} s waiting for node(s) {missing}: start them with the same \
         --peer list, check that they are reachable, or raise --connect-timeout"
    )]
    Timeout {
        /// How long we waited.
        secs: u64,
        /// The nodes that did not connect, by id.
        missing: String,
    },
    /// A peer runs a number of shards this node cannot address.
    #[error("node {node} reports {count} shards; a node runs 1 to 1024")]
    ShardCount {
        /// The peer.
        node: u16,
        /// What it reported.
        count: u16,
    },
    /// Socket setup failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A peer that knows the secret sees a different cluster.
    #[error("a peer with the cluster secret sees a different cluster: {0}")]
    Incompatible(HandshakeError),
    /// Configuration error (secret too short, ...).
    #[error(transparent)]
    Config(HandshakeError),
}

/// The formed mesh: each local shard's connections, and the acceptor left running.
#[derive(Debug)]
pub struct Mesh {
    /// Connections by local shard.
    pub conns: Vec<Vec<Conn>>,
    /// The acceptor, refusing late connections until the node stops.
    pub acceptor: Acceptor,
}

/// Where the acceptor hands authenticated guest platform channels
/// ([`PLATFORM_CHANNEL`]): a guest run that spans nodes sets a sender while it accepts them;
/// with none set they are refused.
pub type PlatformSink = Arc<Mutex<Option<Sender<Authenticated>>>>;

/// The background acceptor.
#[derive(Debug)]
pub struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Where platform channels go.
    pub platform: PlatformSink,
    /// Handshake outcomes by reason (server side and our own dials).
    pub stats: Arc<HandshakeStats>,
    /// Connections from known nodes refused after the mesh formed.
    pub late_refused: Arc<AtomicUsize>,
    late: LateRoute,
}

/// Where connections that arrive after formation go: each to its shard, whose session
/// resumes on it.
#[derive(Debug)]
pub struct LateSink {
    /// Every local shard's mailbox.
    pub mailboxes: Vec<Arc<Mailbox>>,
    /// Every local shard's doorbell (rung after posting).
    pub doorbells: Arc<[Doorbell]>,
    /// Which nodes are dead.
    pub state: Arc<NodeState>,
}

type LateRoute = Arc<Mutex<Option<LateSink>>>;

impl Acceptor {
    /// From now on, connections from members go to their shard (until this is called they
    /// are refused: no shard runs yet).
    pub fn route_late(&self, sink: LateSink) {
        *self.late.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Stops the acceptor thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a node proves in its data-plane handshakes, and how its frames are protected.
#[derive(Clone)]
pub struct Credentials {
    /// The cluster secret (at least 16 bytes).
    pub secret: Vec<u8>,
    /// Frame protection after the handshake (every node must use the same).
    pub frame_auth: FrameAuth,
    /// This node's identity (its certificate); with one, every peer must prove its own, and
    /// the secret alone no longer admits a node id. Every node must have one, or none.
    pub identity: Option<Arc<dyn NodeIdentity>>,
    /// Offer RDMA verbs in every handshake (the node's shards can carry connections over
    /// verbs).
    pub offer_verbs: bool,
    /// Home migration is on (`--placement on`): every node must agree, so it is part of the
    /// layout digest the handshake compares (a node with the other setting is refused as a
    /// layout mismatch).
    pub migration: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("secret", &"<redacted>")
            .field("frame_auth", &self.frame_auth)
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// What the handshake compares: the layout digest, bound to the placement setting when home
/// migration is on (the protocol's messages differ, so both ends must run the same).
fn handshake_digest(cluster: &ClusterSpec, creds: &Credentials) -> [u8; 32] {
    let d = cluster.digest().0;
    if !creds.migration {
        return d;
    }
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"ssi-dp placement: home migration\0");
    h.update(d);
    h.finalize().into()
}

/// Handshake configuration for node `me` speaking as local shard `shard`.
pub(crate) fn hs_config(
    cluster: &ClusterSpec,
    shard: u16,
    shards: u16,
    creds: &Credentials,
    stats: &Arc<HandshakeStats>,
) -> Result<HandshakeConfig, MeshError> {
    let mut c = HandshakeConfig::new(cluster.me, &creds.secret, handshake_digest(cluster, creds))
        .map_err(MeshError::Config)?;
    c.frame_auth = creds.frame_auth;
    c.identity = creds.identity.clone();
    c.offer_verbs = creds.offer_verbs;
    c.shard = shard;
    c.shard_count = shards;
    c.allowed = cluster
        .nodes
        .iter()
        .filter(|n| n.id != cluster.me)
        .fold(0, |m, n| m | 1u64 << n.id);
    c.timeout = HANDSHAKE_TIMEOUT;
    c.stats = stats.clone();
    Ok(c)
}

/// Forms the mesh for `shards` local shards within `timeout`.
pub fn establish(
    listener: TcpListener,
    cluster: &ClusterSpec,
    shards: u16,
    creds: &Credentials,
    timeout: Duration,
) -> Result<Mesh, MeshError> {
    let stats = Arc::new(HandshakeStats::default());
    let server_cfg = Arc::new(hs_config(cluster, 0, shards, creds, &stats)?);
    let (tx, rx) = mpsc::channel::<Result<Authenticated, HandshakeError>>();
    let setup_done = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let late_refused = Arc::new(AtomicUsize::new(0));
    let platform: PlatformSink = Arc::default();
    let late: LateRoute = Arc::default();
    // Connections from the peers' addresses are preferred over unknown ones.
    let expected = cluster
        .nodes
        .iter()
        .filter(|n| n.id != cluster.me)
        .map(|n| n.addr.ip())
        .collect();
    let thread = spawn_acceptor(
        listener,
        expected,
        server_cfg,
        Routes {
            tx,
            setup_done: setup_done.clone(),
            late: late_refused.clone(),
            platform: platform.clone(),
            sink: late.clone(),
            probes: Arc::default(),
        },
        stop.clone(),
    )?;
    let mut acceptor = Acceptor {
        stop,
        thread: Some(thread),
        platform,
        stats: stats.clone(),
        late_refused,
        late,
    };

    let deadline = Instant::now() + timeout;
    let mut conns: Vec<Vec<Conn>> = (0..shards).map(|_| Vec::new()).collect();
    let me = cluster.me;
    let result = (|| {
        // Dial every higher node, one connection per (local shard, peer shard).
        for peer in cluster.nodes.iter().filter(|n| n.id > me) {
            let per_shard = dial_all(cluster, peer, shards, creds, &stats, deadline)?;
            for (local, c) in per_shard.into_iter().enumerate() {
                conns[local].extend(c);
            }
        }
        // Take the connections lower nodes dial to us.
        collect_accepted(&rx, cluster, shards, deadline, timeout, &mut conns)
    })();
    setup_done.store(true, Ordering::SeqCst);
    match result {
        Ok(()) => Ok(Mesh { conns, acceptor }),
        Err(e) => {
            acceptor.stop();
            Err(e)
        }
    }
}

/// Connects every local shard to every shard of `peer`; returns the connections by local
/// shard.
fn dial_all(
    cluster: &ClusterSpec,
    peer: &NodeSpec,
    shards: u16,
    creds: &Credentials,
    stats: &Arc<HandshakeStats>,
    deadline: Instant,
) -> Result<Vec<Vec<Conn>>, MeshError> {
    let node = NodeId::new(peer.id).expect("validated node id");
    let mut out: Vec<Vec<Conn>> = (0..shards).map(|_| Vec::new()).collect();
    for local in 0..shards {
        let cfg = hs_config(cluster, local, shards, creds, stats)?;
        let first = dial(peer.addr, &cfg, peer.id, 0, deadline)?;
        let count = first.peer_shard_count;
        if count == 0 || count > 1024 {
            return Err(MeshError::ShardCount {
                node: peer.id,
                count,
            });
        }
        out[usize::from(local)].push(conn(node, first));
        for target in 1..count {
            let a = dial(peer.addr, &cfg, peer.id, target, deadline)?;
            out[usize::from(local)].push(conn(node, a));
        }
    }
    Ok(out)
}

/// Connects every local shard to every shard of `peer`, a node that joined the running
/// cluster (it waits for the connections of every lower-numbered member); `cluster` is the
/// grown cluster, whose layout digest both sides check.
pub fn dial_node(
    cluster: &ClusterSpec,
    peer: &NodeSpec,
    shards: u16,
    creds: &Credentials,
    timeout: Duration,
) -> Result<Vec<Vec<Conn>>, MeshError> {
    let stats = Arc::new(HandshakeStats::default());
    dial_all(
        cluster,
        peer,
        shards,
        creds,
        &stats,
        Instant::now() + timeout,
    )
}

/// The shard's view of an authenticated connection to `node`.
pub(crate) fn conn(node: NodeId, a: Authenticated) -> Conn {
    Conn {
        node,
        peer_shard: a.peer_shard,
        peer_shard_count: a.peer_shard_count,
        stream: a.stream,
        keys: a.keys,
        peer_offers_verbs: a.peer_offers_verbs,
    }
}

/// Opens the guest platform channel to `peer` (authenticated like a shard connection; the
/// peer's acceptor hands it to its guest run), with the keys that seal its messages. Retries
/// until `timeout` while the peer is not listening yet.
pub fn dial_platform(
    cluster: &ClusterSpec,
    peer: &NodeSpec,
    shards: u16,
    creds: &Credentials,
    timeout: Duration,
) -> Result<(TcpStream, wire::FrameKeys), MeshError> {
    dial_channel(cluster, peer, shards, creds, timeout, PLATFORM_CHANNEL)
}

/// Opens a link probe to `peer` ([`crate::link_probe`], authenticated like a shard
/// connection), with the keys that seal its requests.
pub fn dial_probe(
    cluster: &ClusterSpec,
    peer: &NodeSpec,
    shards: u16,
    creds: &Credentials,
    timeout: Duration,
) -> Result<(TcpStream, wire::FrameKeys), MeshError> {
    dial_channel(cluster, peer, shards, creds, timeout, PROBE_CHANNEL)
}

/// Opens the connection to `peer` whose handshake names `channel` instead of a shard.
fn dial_channel(
    cluster: &ClusterSpec,
    peer: &NodeSpec,
    shards: u16,
    creds: &Credentials,
    timeout: Duration,
    channel: u16,
) -> Result<(TcpStream, wire::FrameKeys), MeshError> {
    let stats = Arc::new(HandshakeStats::default());
    let cfg = hs_config(cluster, 0, shards, creds, &stats)?;
    let a = dial(peer.addr, &cfg, peer.id, channel, Instant::now() + timeout)?;
    Ok((a.stream, a.keys))
}

/// Dials until the peer answers or the deadline passes; configuration errors end at once.
fn dial(
    addr: SocketAddr,
    cfg: &HandshakeConfig,
    node: u16,
    target: u16,
    deadline: Instant,
) -> Result<Authenticated, MeshError> {
    loop {
        match handshake::connect(addr, cfg, node, target) {
            Ok(a) => return Ok(a),
            Err(HandshakeError::Io(e)) if Instant::now() < deadline => {
                // Not listening yet (or reset while starting): try again shortly.
                let _ = e;
                std::thread::sleep(DIAL_RETRY);
            }
            Err(HandshakeError::Io(e)) => {
                return Err(MeshError::Handshake {
                    node,
                    addr,
                    source: HandshakeError::Io(e),
                })
            }
            Err(source) => return Err(MeshError::Handshake { node, addr, source }),
        }
    }
}

fn collect_accepted(
    rx: &Receiver<Result<Authenticated, HandshakeError>>,
    cluster: &ClusterSpec,
    shards: u16,
    deadline: Instant,
    timeout: Duration,
    conns: &mut [Vec<Conn>],
) -> Result<(), MeshError> {
    // For each lower node: the (peer shard, local shard) pairs seen, and its shard count.
    let lower: Vec<u16> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id < cluster.me)
        .collect();
    let mut seen: Vec<Vec<(u16, u16)>> = vec![Vec::new(); 64];
    let mut counts = [0u16; 64];
    let complete = |seen: &Vec<Vec<(u16, u16)>>, counts: &[u16; 64]| {
        lower.iter().all(|&n| {
            counts[n as usize] != 0
                && seen[n as usize].len() == usize::from(counts[n as usize]) * usize::from(shards)
        })
    };
    while !complete(&seen, &counts) {
        let left = deadline.saturating_duration_since(Instant::now());
        let a = match rx.recv_timeout(left) {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(MeshError::Incompatible(e)),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                let missing: Vec<String> = lower
                    .iter()
                    .filter(|&&n| {
                        counts[n as usize] == 0
                            || seen[n as usize].len()
                                != usize::from(counts[n as usize]) * usize::from(shards)
                    })
                    .map(|n| n.to_string())
                    .collect();
                return Err(MeshError::Timeout {
                    secs: timeout.as_secs(),
                    missing: missing.join(", "),
                });
            }
        };
        let n = a.peer_node;
        let key = (a.peer_shard, a.local_shard);
        if n >= cluster.me || seen[n as usize].contains(&key) {
            tracing::warn!(
                "refusing a connection from node {n} (shard {}): unexpected or duplicate",
                a.peer_shard
            );
            continue;
        }
        if a.peer_shard_count == 0 || a.peer_shard_count > 1024 {
            return Err(MeshError::ShardCount {
                node: n,
                count: a.peer_shard_count,
            });
        }
        counts[n as usize] = a.peer_shard_count;
        seen[n as usize].push(key);
        let node = NodeId::new(n).expect("handshake checks node ids");
        let local = usize::from(a.local_shard);
        conns[local].push(conn(node, a));
    }
    Ok(())
}

/// Where the acceptor sends what it authenticated.
#[derive(Clone)]
struct Routes {
    /// Shard connections while the mesh forms.
    tx: Sender<Result<Authenticated, HandshakeError>>,
    /// Set once the mesh formed (later shard connections are refused).
    setup_done: Arc<AtomicBool>,
    /// Connections from known nodes refused after the mesh formed.
    late: Arc<AtomicUsize>,
    /// Guest platform channels.
    platform: PlatformSink,
    /// Connections after formation.
    sink: LateRoute,
    /// Link probes being served ([`crate::link_probe`]).
    probes: Arc<AtomicUsize>,
}

fn spawn_acceptor(
    listener: TcpListener,
    expected: Vec<IpAddr>,
    cfg: Arc<HandshakeConfig>,
    routes: Routes,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, MeshError> {
    let mut pool =
        AcceptPool::new(listener, PoolLimits::default(), expected).map_err(|source| {
            MeshError::Io {
                what: "making the listener non-blocking",
                source,
            }
        })?;
    std::thread::Builder::new()
        .name("ssi-dp-accept".into())
        .spawn(move || {
            // What strangers cause is logged rate-limited.
            let mut log = LogLimiter::new(10, 1);
            while !stop.load(Ordering::SeqCst) {
                let turn = pool.turn(&cfg, Duration::from_millis(100), |(from, r)| {
                    let msg = match r {
                        Ok(a) => route(a, &routes),
                        Err(e) => Some(refused(e, &routes)),
                    };
                    if let Some(msg) = msg {
                        log.warn(format_args!("connection from {from}: {msg}"));
                    }
                });
                if let Err(e) = turn {
                    log.warn(format_args!("accepting connections: {e}"));
                    // Out of descriptors, say: give the handshakes in progress time to end.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
        .map_err(|source| MeshError::Io {
            what: "starting the acceptor thread",
            source,
        })
}

/// Hands an authenticated connection to whoever waits for it; returns what to log, if
/// anything.
fn route(a: Authenticated, routes: &Routes) -> Option<String> {
    let Routes {
        tx,
        setup_done,
        late,
        platform,
        sink,
        probes,
    } = routes;
    if a.local_shard == PROBE_CHANNEL {
        return crate::link_probe::spawn_server(a, probes).err();
    }
    if a.local_shard == PLATFORM_CHANNEL {
        let node = a.peer_node;
        let sent = match platform.lock() {
            Ok(sink) => sink.as_ref().map(|s| s.send(a).is_ok()),
            Err(_) => None,
        };
        return match sent {
            Some(true) => None,
            _ => Some(format!(
                "refusing node {node}'s guest platform channel: no guest run here accepts one"
            )),
        };
    }
    if setup_done.load(Ordering::SeqCst) {
        let refused = match sink.lock() {
            Ok(s) => match s.as_ref() {
                Some(s) => to_shard(a, s),
                None => Some("no shard runs yet".to_string()),
            },
            Err(_) => Some("the node is stopping".to_string()),
        };
        if let Some(why) = &refused {
            late.fetch_add(1, Ordering::SeqCst);
            return Some(why.clone());
        }
        return None;
    }
    // The receiver is gone only once the mesh is set up (then `setup_done` is set).
    let _ = tx.send(Ok(a));
    None
}

/// Hands a member's connection, after formation, to the shard it is for; returns why not.
fn to_shard(a: Authenticated, s: &LateSink) -> Option<String> {
    let node = a.peer_node;
    if s.state.dead() & (1u64 << node) != 0 {
        return Some(format!(
            "refusing node {node}: the cluster declared it dead (a node that restarts must \
             rejoin as a new node)"
        ));
    }
    let i = usize::from(a.local_shard);
    if i >= s.mailboxes.len() {
        return Some(format!(
            "refusing node {node}: it asks for shard {i}; this node runs {}",
            s.mailboxes.len()
        ));
    }
    let Ok(id) = NodeId::new(node) else {
        return Some(format!("refusing node {node}: not a node id"));
    };
    if !s.mailboxes[i].post_bounded(Command::AddConns(vec![conn(id, a)]), MAILBOX_LIMIT) {
        return Some(format!(
            "refusing node {node}'s connection: shard {i} has not taken earlier ones yet"
        ));
    }
    s.doorbells[i].kick();
    None
}

/// What to log for a failed handshake. A peer that proved it knows the secret but sees
/// another cluster cannot be fixed by waiting: that ends the setup with its error. (Anything
/// a stranger can cause, like a bad MAC, is only logged, so a stranger cannot abort our
/// start.)
fn refused(e: HandshakeError, routes: &Routes) -> String {
    let msg = format!("refused: {e}");
    if matches!(e, HandshakeError::LayoutMismatch { .. })
        && !routes.setup_done.load(Ordering::SeqCst)
    {
        // The receiver is gone only once the mesh is set up.
        let _ = routes.tx.send(Err(e));
    }
    msg
}
