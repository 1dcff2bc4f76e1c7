//! Peer authentication at connection setup: an HMAC-SHA256 challenge–response with fresh
//! nonces on a blocking `TcpStream`, proving each side's node id and knowledge of the cluster
//! secret, and checking wire version and cluster layout digest. Outcomes are counted by reason.
//!
//! Exchange (every message starts with an 8-byte prefix: magic, version, kind, reason, pad):
//! 1. client → server `ClientHello { node, shard, shard_count, target, nonce_c, digest }`
//! 2. server → client `ServerHello { node, shard = target, …, nonce_s, digest }` + `mac_s`, or
//!    `Reject`
//! 3. client → server `ClientAuth { mac_c }`, or `Abort { reason }`
//! 4. server → client `Accept` or `Reject { reason }`
//!
//! `mac_s = HMAC(secret, "ssi-dp server" ‖ client hello ‖ server hello)` and
//! `mac_c = HMAC(secret, "ssi-dp client" ‖ client hello ‖ server hello)`.
//!
//! `target` is the server shard (data-plane core) the client wants this connection to serve:
//! nodes run one connection per pair of shards, and one listening port serves all of a node's
//! shards. The server refuses a target beyond its shard count.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::transport::NodeId;
use crate::MAX_NODES;

mod pool;
mod server;

pub use pool::{AcceptPool, PoolLimits, PoolStats};
pub use server::{accept, accept_stream, ServerConn, ServerProgress};

/// Handshake magic: the bytes `S S H K` on the wire.
pub const HS_MAGIC: u32 = u32::from_le_bytes(*b"SSHK");
/// Handshake protocol version.
pub const HS_VERSION: u8 = 1;
/// Length of the common message prefix.
pub const PREFIX_LEN: usize = 8;
/// Length of a hello body (after the prefix).
pub const HELLO_BODY_LEN: usize = 72;
/// Length of a MAC.
pub const MAC_LEN: usize = 32;
/// Smallest accepted cluster secret.
pub const MIN_SECRET_LEN: usize = 16;
/// Client nonces remembered to detect replays.
pub const NONCE_CACHE: usize = 1024;
/// The `target` a client names to open the guest platform channel (interrupts and device
/// accesses of a guest spanning nodes, docs/vmm.md) instead of a shard connection. A server
/// accepts it whatever its shard count; what it does with the connection is its own choice.
pub const PLATFORM_CHANNEL: u16 = 0xFF00;

const KIND_CLIENT_HELLO: u8 = 1;
const KIND_SERVER_HELLO: u8 = 2;
const KIND_CLIENT_AUTH: u8 = 3;
const KIND_ABORT: u8 = 4;
const KIND_ACCEPT: u8 = 5;
const KIND_REJECT: u8 = 6;

type HmacSha256 = Hmac<Sha256>;

/// A 32-byte cluster layout digest, printed in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Why one side refused the other (sent on the wire in `Reject` / `Abort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The MAC did not verify: the cluster secrets differ.
    WrongSecret,
    /// The node id is not in the allowed set.
    UnknownNode,
    /// The cluster layout digests differ.
    LayoutMismatch,
    /// The handshake versions differ.
    VersionMismatch,
    /// The client nonce was seen before.
    Replayed,
    /// The node id is not the one dialled.
    UnexpectedNode,
    /// A message did not parse.
    Malformed,
    /// The client asked for a shard the server does not have.
    NoSuchShard,
    /// A reason code this build does not know.
    Other(u8),
}

impl RejectReason {
    fn code(self) -> u8 {
        match self {
            RejectReason::WrongSecret => 1,
            RejectReason::UnknownNode => 2,
            RejectReason::LayoutMismatch => 3,
            RejectReason::VersionMismatch => 4,
            RejectReason::Replayed => 5,
            RejectReason::UnexpectedNode => 6,
            RejectReason::Malformed => 7,
            RejectReason::NoSuchShard => 8,
            RejectReason::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> RejectReason {
        match c {
            1 => RejectReason::WrongSecret,
            2 => RejectReason::UnknownNode,
            3 => RejectReason::LayoutMismatch,
            4 => RejectReason::VersionMismatch,
            5 => RejectReason::Replayed,
            6 => RejectReason::UnexpectedNode,
            7 => RejectReason::Malformed,
            8 => RejectReason::NoSuchShard,
            c => RejectReason::Other(c),
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RejectReason::WrongSecret => "authentication failed (the cluster secrets differ)",
            RejectReason::UnknownNode => "our node id is not in its allowed set",
            RejectReason::LayoutMismatch => "the cluster layouts differ",
            RejectReason::VersionMismatch => "the handshake versions differ",
            RejectReason::Replayed => "the handshake was a replay",
            RejectReason::UnexpectedNode => "its node id is not the one we dialled",
            RejectReason::Malformed => "a handshake message was malformed",
            RejectReason::NoSuchShard => "it has no shard with the index we asked for",
            RejectReason::Other(c) => return write!(f, "unknown reason code {c}"),
        };
        f.write_str(s)
    }
}

/// Why a handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The configuration is unusable.
    #[error("invalid handshake configuration: {0}")]
    Config(&'static str),
    /// Socket failure or timeout.
    #[error("handshake I/O failed (peer unreachable, too slow, or it closed the connection): {0}")]
    Io(#[from] io::Error),
    /// A message did not parse.
    #[error("malformed handshake message ({0}): the peer is not an ssi-dp node of this version")]
    Malformed(&'static str),
    /// Handshake versions differ.
    #[error("handshake version mismatch: we speak {ours}, the peer {theirs}; run the same ssi-dp version on every node")]
    VersionMismatch {
        /// Our version.
        ours: u8,
        /// The peer's version.
        theirs: u8,
    },
    /// The peer's MAC did not verify.
    #[error(
        "peer failed authentication: the cluster secrets differ; give every node the same secret"
    )]
    WrongSecret,
    /// The server is not the node we dialled.
    #[error("dialled node {expected} but the peer authenticated as node {got}: check the peer address list")]
    UnexpectedNode {
        /// The node we dialled.
        expected: NodeId,
        /// The node that answered.
        got: NodeId,
    },
    /// The client's node id is not allowed here.
    #[error("node {0} is not in this node's allowed set: add it to the cluster inventory")]
    UnknownNode(NodeId),
    /// The cluster layouts differ.
    #[error("cluster layout mismatch: ours is {ours}, the peer's is {theirs}; every node must list the same nodes (--peer) with the same memory sizes")]
    LayoutMismatch {
        /// Our digest.
        ours: Digest,
        /// The peer's digest.
        theirs: Digest,
    },
    /// The client nonce was used before.
    #[error("replayed handshake refused: this client nonce was already used")]
    Replayed,
    /// The client asked for a shard this node does not have.
    #[error("the peer asked for shard {asked} but this node runs {count} shards: check --cores on both nodes")]
    NoSuchShard {
        /// The shard asked for.
        asked: u16,
        /// Our shard count.
        count: u16,
    },
    /// The server answered for another shard than the one asked for.
    #[error("asked the peer for shard {asked} but it answered for shard {got}")]
    WrongShard {
        /// The shard asked for.
        asked: u16,
        /// The shard that answered.
        got: u16,
    },
    /// The peer refused us.
    #[error("the peer refused the connection: {0}")]
    Rejected(RejectReason),
    /// The peer gave up after our hello.
    #[error("the peer aborted the handshake: {0}")]
    Aborted(RejectReason),
}

/// Handshake outcomes by reason, readable from any thread.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    /// Successful handshakes (either side).
    pub ok: AtomicU64,
    /// I/O failures and timeouts.
    pub io: AtomicU64,
    /// Malformed messages.
    pub malformed: AtomicU64,
    /// Version mismatches.
    pub version: AtomicU64,
    /// MAC failures (wrong secret).
    pub wrong_secret: AtomicU64,
    /// Unexpected node id from a dialled peer.
    pub unexpected_node: AtomicU64,
    /// Client not in the allowed set.
    pub unknown_node: AtomicU64,
    /// Layout digest mismatches.
    pub layout: AtomicU64,
    /// Replayed client hellos.
    pub replayed: AtomicU64,
    /// Refusals received from the peer.
    pub rejected: AtomicU64,
    /// Aborts received from the peer.
    pub aborted: AtomicU64,
}

impl HandshakeStats {
    fn count(&self, e: &HandshakeError) {
        let c = match e {
            HandshakeError::Config(_) => return,
            HandshakeError::Io(_) => &self.io,
            HandshakeError::Malformed(_)
            | HandshakeError::NoSuchShard { .. }
            | HandshakeError::WrongShard { .. } => &self.malformed,
            HandshakeError::VersionMismatch { .. } => &self.version,
            HandshakeError::WrongSecret => &self.wrong_secret,
            HandshakeError::UnexpectedNode { .. } => &self.unexpected_node,
            HandshakeError::UnknownNode(_) => &self.unknown_node,
            HandshakeError::LayoutMismatch { .. } => &self.layout,
            HandshakeError::Replayed => &self.replayed,
            HandshakeError::Rejected(_) => &self.rejected,
            HandshakeError::Aborted(_) => &self.aborted,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Total refusals and failures of any reason.
    pub fn failures(&self) -> u64 {
        [
            &self.io,
            &self.malformed,
            &self.version,
            &self.wrong_secret,
            &self.unexpected_node,
            &self.unknown_node,
            &self.layout,
            &self.replayed,
            &self.rejected,
            &self.aborted,
        ]
        .iter()
        .map(|c| c.load(Relaxed))
        .sum()
    }
}

/// Bounded memory of client nonces that completed a handshake.
#[derive(Debug)]
struct NonceCache {
    ring: Vec<[u8; 32]>,
    next: usize,
}

impl NonceCache {
    fn contains(&self, n: &[u8; 32]) -> bool {
        self.ring.iter().any(|x| x == n)
    }

    fn insert(&mut self, n: [u8; 32]) {
        if self.ring.len() < NONCE_CACHE {
            self.ring.push(n);
        } else {
            self.ring[self.next] = n;
            self.next = (self.next + 1) % NONCE_CACHE;
        }
    }
}

/// What a node proves and checks during handshakes.
pub struct HandshakeConfig {
    /// Our node id.
    pub node: NodeId,
    /// Our shard (data-plane core) index on this connection.
    pub shard: u16,
    /// Number of shards on our node.
    pub shard_count: u16,
    /// Hash of the cluster layout; peers with another digest are refused.
    pub digest: Digest,
    /// Node ids (bit per node) allowed to connect to us.
    pub allowed: u64,
    /// Deadline for a whole handshake.
    pub timeout: Duration,
    /// Outcomes by reason.
    pub stats: Arc<HandshakeStats>,
    secret: Vec<u8>,
    seen: Mutex<NonceCache>,
}

impl fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("node", &self.node)
            .field("shard", &self.shard)
            .field("shard_count", &self.shard_count)
            .field("digest", &self.digest)
            .field("allowed", &format_args!("{:#x}", self.allowed))
            .field("timeout", &self.timeout)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl HandshakeConfig {
    /// A configuration for node `node` (shard 0 of 1) that accepts every other node id,
    /// with a 5 s deadline.
    pub fn new(node: NodeId, secret: &[u8], digest: [u8; 32]) -> Result<Self, HandshakeError> {
        if node >= MAX_NODES {
            return Err(HandshakeError::Config("node id must be below 64"));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(HandshakeError::Config(
                "cluster secret must be at least 16 bytes",
            ));
        }
        Ok(HandshakeConfig {
            node,
            shard: 0,
            shard_count: 1,
            digest: Digest(digest),
            allowed: !(1u64 << node),
            timeout: Duration::from_secs(5),
            stats: Arc::new(HandshakeStats::default()),
            secret: secret.to_vec(),
            seen: Mutex::new(NonceCache {
                ring: Vec::new(),
                next: 0,
            }),
        })
    }

    fn mac(
        &self,
        label: &[u8],
        client_hello: &[u8],
        server_hello: &[u8],
    ) -> Result<[u8; MAC_LEN], HandshakeError> {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.secret)
            .map_err(|_| HandshakeError::Config("the cluster secret is not a usable HMAC key"))?;
        m.update(label);
        m.update(client_hello);
        m.update(server_hello);
        Ok(m.finalize().into_bytes().into())
    }
}

/// An authenticated connection, ready to hand to a transport.
#[derive(Debug)]
pub struct Authenticated {
    /// The blocking stream (timeouts still set).
    pub stream: TcpStream,
    /// The peer's node id.
    pub peer_node: NodeId,
    /// The peer's shard index.
    pub peer_shard: u16,
    /// The peer's shard count.
    pub peer_shard_count: u16,
    /// Our shard this connection serves (the client's `target` on the server side, the
    /// configured shard on the client side).
    pub local_shard: u16,
}

#[derive(Debug)]
struct Hello {
    node: u16,
    shard: u16,
    shard_count: u16,
    target: u16,
    nonce: [u8; 32],
    digest: [u8; 32],
}

fn prefix(kind: u8, reason: u8) -> [u8; PREFIX_LEN] {
    let m = HS_MAGIC.to_le_bytes();
    [m[0], m[1], m[2], m[3], HS_VERSION, kind, reason, 0]
}

fn encode_hello(
    kind: u8,
    cfg: &HandshakeConfig,
    shard: u16,
    target: u16,
    nonce: &[u8; 32],
) -> [u8; PREFIX_LEN + HELLO_BODY_LEN] {
    let mut b = [0u8; PREFIX_LEN + HELLO_BODY_LEN];
    b[..PREFIX_LEN].copy_from_slice(&prefix(kind, 0));
    b[8..10].copy_from_slice(&cfg.node.to_le_bytes());
    b[10..12].copy_from_slice(&shard.to_le_bytes());
    b[12..14].copy_from_slice(&cfg.shard_count.to_le_bytes());
    b[14..16].copy_from_slice(&target.to_le_bytes());
    b[16..48].copy_from_slice(nonce);
    b[48..80].copy_from_slice(&cfg.digest.0);
    b
}

fn decode_hello(b: &[u8; PREFIX_LEN + HELLO_BODY_LEN]) -> Hello {
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&b[16..48]);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&b[48..80]);
    Hello {
        node: u16::from_le_bytes([b[8], b[9]]),
        shard: u16::from_le_bytes([b[10], b[11]]),
        shard_count: u16::from_le_bytes([b[12], b[13]]),
        target: u16::from_le_bytes([b[14], b[15]]),
        nonce,
        digest,
    }
}

/// Reads a prefix and checks magic and version; returns (kind, reason).
fn read_prefix(s: &mut TcpStream, deadline: Instant) -> Result<(u8, u8), HandshakeError> {
    let mut p = [0u8; PREFIX_LEN];
    read_exact_by(s, &mut p, deadline)?;
    if u32::from_le_bytes([p[0], p[1], p[2], p[3]]) != HS_MAGIC {
        return Err(HandshakeError::Malformed("bad magic"));
    }
    if p[4] != HS_VERSION {
        return Err(HandshakeError::VersionMismatch {
            ours: HS_VERSION,
            theirs: p[4],
        });
    }
    Ok((p[5], p[6]))
}

fn read_exact_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "handshake deadline passed",
        ));
    }
    s.set_read_timeout(Some(left))?;
    s.read_exact(buf)
}

fn write_by(s: &mut TcpStream, parts: &[&[u8]], deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "handshake deadline passed",
        ));
    }
    s.set_write_timeout(Some(left))?;
    let mut all = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        all.extend_from_slice(p);
    }
    s.write_all(&all)
}

fn fresh_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

fn finish<T>(cfg: &HandshakeConfig, r: Result<T, HandshakeError>) -> Result<T, HandshakeError> {
    match &r {
        Ok(_) => {
            cfg.stats.ok.fetch_add(1, Relaxed);
        }
        Err(e) => cfg.stats.count(e),
    }
    r
}

/// Dials `addr` and authenticates as a client (our shard is `cfg.shard`); the server must
/// prove it is node `expected` and serve this connection from its shard `target`.
pub fn connect(
    addr: SocketAddr,
    cfg: &HandshakeConfig,
    expected: NodeId,
    target: u16,
) -> Result<Authenticated, HandshakeError> {
    let r = TcpStream::connect_timeout(&addr, cfg.timeout)
        .map_err(HandshakeError::Io)
        .and_then(|s| client(s, cfg, expected, target));
    finish(cfg, r)
}

/// Authenticates as a client on an already connected stream.
pub fn connect_stream(
    stream: TcpStream,
    cfg: &HandshakeConfig,
    expected: NodeId,
    target: u16,
) -> Result<Authenticated, HandshakeError> {
    finish(cfg, client(stream, cfg, expected, target))
}

fn client(
    mut s: TcpStream,
    cfg: &HandshakeConfig,
    expected: NodeId,
    target: u16,
) -> Result<Authenticated, HandshakeError> {
    let deadline = Instant::now() + cfg.timeout;
    s.set_nodelay(true)?;
    let nonce_c = fresh_nonce();
    let ch = encode_hello(KIND_CLIENT_HELLO, cfg, cfg.shard, target, &nonce_c);
    write_by(&mut s, &[&ch], deadline)?;

    let (kind, reason) = read_prefix(&mut s, deadline)?;
    match kind {
        KIND_SERVER_HELLO => {}
        KIND_REJECT => return Err(HandshakeError::Rejected(RejectReason::from_code(reason))),
        _ => return Err(HandshakeError::Malformed("expected a server hello")),
    }
    let mut sh = [0u8; PREFIX_LEN + HELLO_BODY_LEN];
    sh[..PREFIX_LEN].copy_from_slice(&prefix(KIND_SERVER_HELLO, reason));
    let mut mac_s = [0u8; MAC_LEN];
    read_exact_by(&mut s, &mut sh[PREFIX_LEN..], deadline)?;
    read_exact_by(&mut s, &mut mac_s, deadline)?;
    let hello = decode_hello(&sh);
    if hello.nonce == nonce_c {
        return Err(HandshakeError::Replayed);
    }

    let abort = |s: &mut TcpStream, r: RejectReason, e: HandshakeError| {
        // Best effort: the peer learns why; our own error is what matters.
        let _ = write_by(s, &[&prefix(KIND_ABORT, r.code())], deadline);
        Err(e)
    };
    let want = cfg.mac(b"ssi-dp server", &ch, &sh)?;
    if !bool::from(want.ct_eq(&mac_s)) {
        return abort(
            &mut s,
            RejectReason::WrongSecret,
            HandshakeError::WrongSecret,
        );
    }
    if hello.node != expected {
        let e = HandshakeError::UnexpectedNode {
            expected,
            got: hello.node,
        };
        return abort(&mut s, RejectReason::UnexpectedNode, e);
    }
    if hello.shard != target {
        let e = HandshakeError::WrongShard {
            asked: target,
            got: hello.shard,
        };
        return abort(&mut s, RejectReason::NoSuchShard, e);
    }
    if hello.digest != cfg.digest.0 {
        let e = HandshakeError::LayoutMismatch {
            ours: cfg.digest,
            theirs: Digest(hello.digest),
        };
        return abort(&mut s, RejectReason::LayoutMismatch, e);
    }
    let mac_c = cfg.mac(b"ssi-dp client", &ch, &sh)?;
    write_by(&mut s, &[&prefix(KIND_CLIENT_AUTH, 0), &mac_c], deadline)?;
    match read_prefix(&mut s, deadline)? {
        (KIND_ACCEPT, _) => Ok(Authenticated {
            stream: s,
            peer_node: hello.node,
            peer_shard: hello.shard,
            peer_shard_count: hello.shard_count,
            local_shard: cfg.shard,
        }),
        (KIND_REJECT, r) => Err(HandshakeError::Rejected(RejectReason::from_code(r))),
        _ => Err(HandshakeError::Malformed("expected accept or reject")),
    }
}
