//! Peer authentication at connection setup: an HMAC-SHA256 challenge–response with fresh
//! nonces on a blocking `TcpStream`, proving each side's node id and knowledge of the cluster
//! secret, checking wire version, cluster layout digest and frame protection mode, and
//! agreeing the connection's frame keys ([`crate::seal`]) by an ephemeral X25519 exchange.
//! Outcomes are counted by reason.
//!
//! Exchange (every message starts with an 8-byte prefix: magic, version, kind, reason, pad):
//! 1. client → server `ClientHello { node, shard, shard_count, target, nonce_c, digest,
//!    share_c, auth }`
//! 2. server → client `ServerHello { node, shard = target, …, nonce_s, digest, share_s, auth }`
//!    + `mac_s`, or `Reject`
//! 3. client → server `ClientAuth { mac_c }`, or `Abort { reason }`
//! 4. server → client `Accept` or `Reject { reason }`
//!
//! With per-node identities ([`NodeIdentity`], both hellos say so), the server hello's MAC is
//! followed by the server's identity, and the client's auth by the client's: a credential
//! (the node's certificate) and its signature over `label ‖ client hello ‖ server hello`
//! (`"ssi-dp server identity"` / `"ssi-dp client identity"`), checked to name the node id
//! claimed. Holding the secret then no longer lets anyone claim another node's id, nor sit in
//! the middle of the key exchange.
//!
//! `mac_s = HMAC(secret, "ssi-dp server" ‖ client hello ‖ server hello)` and
//! `mac_c = HMAC(secret, "ssi-dp client" ‖ client hello ‖ server hello)`. The frame keys are
//! `HMAC(prk, "client to server")` and `HMAC(prk, "server to client")` with
//! `prk = HMAC(secret, "ssi-dp frame keys" ‖ client hello ‖ server hello ‖ X25519(share_c,
//! share_s))`: fresh for every connection, and unknown to anyone who only watched the
//! handshake, even with the secret.
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
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::seal::{FrameAuth, FrameKeys, KEY_LEN};
use crate::transport::NodeId;
use crate::MAX_NODES;

mod pool;
mod server;

pub use pool::{AcceptPool, PoolLimits, PoolStats};
pub use server::{accept, accept_stream, ServerConn, ServerProgress};

/// Handshake magic: the bytes `S S H K` on the wire.
pub const HS_MAGIC: u32 = u32::from_le_bytes(*b"SSHK");
/// Handshake protocol version (2: key exchange and frame protection mode; 3: a peer's shard
/// for page `p` is `(p / 4096) % shard_count`, 16 MiB granules, where 2 dealt single pages,
/// so nodes of the two versions would send each other's pages to the wrong shard).
pub const HS_VERSION: u8 = 3;
/// Length of the common message prefix.
pub const PREFIX_LEN: usize = 8;
/// Length of a hello body (after the prefix).
pub const HELLO_BODY_LEN: usize = 108;
/// Length of an X25519 public key share.
pub const SHARE_LEN: usize = 32;
/// Largest credential (certificate) accepted in an identity.
pub const MAX_CREDENTIAL: usize = 4096;
/// Largest signature accepted in an identity.
pub const MAX_SIGNATURE: usize = 512;
/// Length of an identity's head: credential and signature lengths (u16 each).
pub const IDENTITY_HEAD: usize = 4;
/// Hello flag: the sender proves a per-node identity.
const FLAG_IDENTITY: u8 = 1;
/// Hello flag: the sender can carry this connection's frames over RDMA verbs (a node that
/// does not know the flag ignores it and never sets it, so such pairs stay on TCP).
const FLAG_VERBS: u8 = 2;

/// A node's own credential for data connections, and the check of a peer's: for example the
/// node's control-plane certificate signed by the cluster CA (`ssi-dp` provides that one).
/// Implementations are called during handshakes only, never per frame.
pub trait NodeIdentity: Send + Sync + fmt::Debug {
    /// Our credential, sent to the peer (at most [`MAX_CREDENTIAL`] bytes).
    fn credential(&self) -> &[u8];
    /// Signs `msg` with our private key (at most [`MAX_SIGNATURE`] bytes).
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError>;
    /// Checks that `credential` is valid for node `node` and that `signature` is its key's
    /// signature over `msg`.
    fn verify(
        &self,
        node: NodeId,
        credential: &[u8],
        msg: &[u8],
        signature: &[u8],
    ) -> Result<(), IdentityError>;
}

/// Why an identity could not be made or was not accepted (from a [`NodeIdentity`]).
pub type IdentityError = Box<dyn std::error::Error + Send + Sync>;
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
/// The `target` a client names to open a link probe (the bandwidth measurement at cluster
/// formation, docs/acpi.md) instead of a shard connection; accepted whatever the shard count.
pub const PROBE_CHANNEL: u16 = 0xFF01;

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
    /// The two sides protect frames differently (`--frame-auth`).
    AuthMismatch,
    /// The key exchange failed (an invalid key share).
    KeyExchange,
    /// The node's identity (certificate and signature) was not accepted.
    IdentityRefused,
    /// One side proves a per-node identity, the other does not.
    IdentityMismatch,
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
            RejectReason::AuthMismatch => 9,
            RejectReason::KeyExchange => 10,
            RejectReason::IdentityRefused => 11,
            RejectReason::IdentityMismatch => 12,
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
            9 => RejectReason::AuthMismatch,
            10 => RejectReason::KeyExchange,
            11 => RejectReason::IdentityRefused,
            12 => RejectReason::IdentityMismatch,
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
            RejectReason::AuthMismatch => "it protects frames in another mode (--frame-auth)",
            RejectReason::KeyExchange => "the key exchange failed",
            RejectReason::IdentityRefused => "it did not accept our node certificate",
            RejectReason::IdentityMismatch => {
                "one side has per-node certificates for the data plane, the other not"
            }
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
    #[error("cluster layout mismatch: ours is {ours}, the peer's is {theirs}; every node must list the same nodes (--peer) with the same memory sizes and the same --placement")]
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
    /// The two sides protect frames differently.
    #[error("frame protection differs: we use {ours}, the peer {}; give every node the same --frame-auth", .theirs.map_or("an unknown mode", FrameAuth::name))]
    AuthMismatch {
        /// Our mode.
        ours: FrameAuth,
        /// The peer's mode (`None` when its code is unknown to this build).
        theirs: Option<FrameAuth>,
    },
    /// The key exchange failed.
    #[error("the key exchange failed: the peer's key share is invalid")]
    KeyExchange,
    /// The peer's identity was not accepted.
    #[error("node {node} did not prove its identity ({source}): its certificate must be signed by the cluster CA and valid for node-{node}.ssi-dp")]
    Identity {
        /// The node id the peer claimed.
        node: NodeId,
        /// What the check said.
        source: IdentityError,
    },
    /// Our own identity could not be used.
    #[error("cannot prove our node identity: {0}; check this node's certificate and key")]
    OwnIdentity(IdentityError),
    /// One side proves a per-node identity, the other does not.
    #[error("{}", if *.ours { "we prove a per-node identity but the peer does not: give every node its certificate (--tls-*, or the inventory)" } else { "the peer proves a per-node identity but we do not: give this node its certificate (--tls-*, or the inventory)" })]
    IdentityMismatch {
        /// Whether we have an identity.
        ours: bool,
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
    /// Frame protection mode mismatches and failed key exchanges.
    pub auth_mode: AtomicU64,
    /// Identities refused or missing.
    pub identity: AtomicU64,
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
            HandshakeError::AuthMismatch { .. } | HandshakeError::KeyExchange => &self.auth_mode,
            HandshakeError::Identity { .. }
            | HandshakeError::OwnIdentity(_)
            | HandshakeError::IdentityMismatch { .. } => &self.identity,
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
            &self.auth_mode,
            &self.identity,
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
    /// How frames are protected after the handshake (both sides must agree; default `Mac`).
    pub frame_auth: FrameAuth,
    /// Our per-node identity; with one, peers must prove theirs (default none: the secret
    /// alone admits any node id).
    pub identity: Option<Arc<dyn NodeIdentity>>,
    /// Deadline for a whole handshake.
    pub timeout: Duration,
    /// Offer to carry the connection over RDMA verbs (default false); the connection uses
    /// verbs when both sides offer ([`Authenticated::peer_offers_verbs`]).
    pub offer_verbs: bool,
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
            .field("frame_auth", &self.frame_auth)
            .field("identity", &self.identity.is_some())
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
            frame_auth: FrameAuth::default(),
            identity: None,
            timeout: Duration::from_secs(5),
            offer_verbs: false,
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

    /// The frame keys of a connection whose hellos are `ch` and `sh`, from our key share
    /// `ours` and the peer's share `theirs`; `client` says which end we are.
    fn frame_keys(
        &self,
        ours: EphemeralPrivateKey,
        theirs: &[u8; SHARE_LEN],
        (ch, sh): (&[u8], &[u8]),
        client: bool,
    ) -> Result<FrameKeys, HandshakeError> {
        let peer = UnparsedPublicKey::new(&X25519, theirs);
        let prk = agreement::agree_ephemeral(ours, &peer, |dh| {
            let mut m = <HmacSha256 as Mac>::new_from_slice(&self.secret).ok()?;
            m.update(b"ssi-dp frame keys");
            m.update(ch);
            m.update(sh);
            m.update(dh);
            Some(m.finalize().into_bytes())
        })
        .ok()
        .flatten()
        .ok_or(HandshakeError::KeyExchange)?;
        let derive = |label: &[u8]| -> Result<[u8; KEY_LEN], HandshakeError> {
            let mut m = <HmacSha256 as Mac>::new_from_slice(&prk)
                .map_err(|_| HandshakeError::KeyExchange)?;
            m.update(label);
            Ok(m.finalize().into_bytes().into())
        };
        let (c2s, s2c) = (derive(b"client to server")?, derive(b"server to client")?);
        Ok(if client {
            FrameKeys::new(self.frame_auth, c2s, s2c)
        } else {
            FrameKeys::new(self.frame_auth, s2c, c2s)
        })
    }
}

/// Labels of the identity signatures.
const ID_SERVER: &[u8] = b"ssi-dp server identity";
const ID_CLIENT: &[u8] = b"ssi-dp client identity";

/// Our identity for this handshake (`label` says which end we are): head, credential and
/// signature; empty without an identity.
fn identity_proof(
    cfg: &HandshakeConfig,
    label: &[u8],
    (ch, sh): (&[u8], &[u8]),
) -> Result<Vec<u8>, HandshakeError> {
    let Some(id) = cfg.identity.as_ref() else {
        return Ok(Vec::new());
    };
    let msg = [label, ch, sh].concat();
    let sig = id.sign(&msg).map_err(HandshakeError::OwnIdentity)?;
    let cred = id.credential();
    if cred.len() > MAX_CREDENTIAL || sig.len() > MAX_SIGNATURE {
        return Err(HandshakeError::OwnIdentity(
            "the certificate or signature is too large".into(),
        ));
    }
    let mut v = Vec::with_capacity(IDENTITY_HEAD + cred.len() + sig.len());
    v.extend_from_slice(&(cred.len() as u16).to_le_bytes());
    v.extend_from_slice(&(sig.len() as u16).to_le_bytes());
    v.extend_from_slice(cred);
    v.extend_from_slice(&sig);
    Ok(v)
}

/// The body length an identity head announces, refused beyond the limits.
fn identity_len(head: &[u8; IDENTITY_HEAD]) -> Result<(usize, usize), HandshakeError> {
    let cred = usize::from(u16::from_le_bytes([head[0], head[1]]));
    let sig = usize::from(u16::from_le_bytes([head[2], head[3]]));
    if cred == 0 || cred > MAX_CREDENTIAL || sig == 0 || sig > MAX_SIGNATURE {
        return Err(HandshakeError::Malformed("identity lengths out of range"));
    }
    Ok((cred, sig))
}

/// Checks the peer's identity `body` (credential then signature, lengths from its head) for
/// node `node`.
fn check_identity(
    cfg: &HandshakeConfig,
    node: NodeId,
    label: &[u8],
    (ch, sh): (&[u8], &[u8]),
    (body, cred_len): (&[u8], usize),
) -> Result<(), HandshakeError> {
    let Some(id) = cfg.identity.as_ref() else {
        return Ok(());
    };
    let (cred, sig) = body.split_at(cred_len.min(body.len()));
    let msg = [label, ch, sh].concat();
    id.verify(node, cred, &msg, sig)
        .map_err(|source| HandshakeError::Identity { node, source })
}

/// Whether the peer's hello agrees with us on proving per-node identities.
fn check_identity_flag(cfg: &HandshakeConfig, hello: &Hello) -> Result<(), HandshakeError> {
    let ours = cfg.identity.is_some();
    if hello.identity == ours {
        Ok(())
    } else {
        Err(HandshakeError::IdentityMismatch { ours })
    }
}

/// A fresh X25519 key share: the private half and the public bytes for the hello.
fn key_share() -> Result<(EphemeralPrivateKey, [u8; SHARE_LEN]), HandshakeError> {
    let rng = ring::rand::SystemRandom::new();
    let k = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| {
        HandshakeError::Io(io::Error::other(
            "the system's random source failed while making a key share",
        ))
    })?;
    let public = k
        .compute_public_key()
        .map_err(|_| HandshakeError::KeyExchange)?;
    let mut b = [0u8; SHARE_LEN];
    b.copy_from_slice(public.as_ref());
    Ok((k, b))
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
    /// The peer offered RDMA verbs for this connection (its hello's flag, covered by both
    /// MACs); with our own offer, the connection goes over verbs.
    pub peer_offers_verbs: bool,
    /// The keys that seal this connection's frames (hand them to `Transport::add_peer`).
    pub keys: FrameKeys,
}

#[derive(Debug)]
struct Hello {
    node: u16,
    shard: u16,
    shard_count: u16,
    target: u16,
    nonce: [u8; 32],
    digest: [u8; 32],
    share: [u8; SHARE_LEN],
    /// The raw frame protection code (checked against ours by the receiver).
    auth: u8,
    /// The sender proves a per-node identity.
    identity: bool,
    /// The sender offers RDMA verbs.
    verbs: bool,
}

fn prefix(kind: u8, reason: u8) -> [u8; PREFIX_LEN] {
    let m = HS_MAGIC.to_le_bytes();
    [m[0], m[1], m[2], m[3], HS_VERSION, kind, reason, 0]
}

/// What a hello says besides the configuration's fixed fields.
struct HelloFields<'a> {
    shard: u16,
    target: u16,
    nonce: &'a [u8; 32],
    share: &'a [u8; SHARE_LEN],
}

fn encode_hello(
    kind: u8,
    cfg: &HandshakeConfig,
    f: HelloFields<'_>,
) -> [u8; PREFIX_LEN + HELLO_BODY_LEN] {
    let mut b = [0u8; PREFIX_LEN + HELLO_BODY_LEN];
    b[..PREFIX_LEN].copy_from_slice(&prefix(kind, 0));
    b[8..10].copy_from_slice(&cfg.node.to_le_bytes());
    b[10..12].copy_from_slice(&f.shard.to_le_bytes());
    b[12..14].copy_from_slice(&cfg.shard_count.to_le_bytes());
    b[14..16].copy_from_slice(&f.target.to_le_bytes());
    b[16..48].copy_from_slice(f.nonce);
    b[48..80].copy_from_slice(&cfg.digest.0);
    b[80..112].copy_from_slice(f.share);
    b[112] = cfg.frame_auth.code();
    b[113] = if cfg.identity.is_some() {
        FLAG_IDENTITY
    } else {
        0
    } | if cfg.offer_verbs { FLAG_VERBS } else { 0 };
    b
}

fn decode_hello(b: &[u8; PREFIX_LEN + HELLO_BODY_LEN]) -> Hello {
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&b[16..48]);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&b[48..80]);
    let mut share = [0u8; SHARE_LEN];
    share.copy_from_slice(&b[80..112]);
    Hello {
        node: u16::from_le_bytes([b[8], b[9]]),
        shard: u16::from_le_bytes([b[10], b[11]]),
        shard_count: u16::from_le_bytes([b[12], b[13]]),
        target: u16::from_le_bytes([b[14], b[15]]),
        nonce,
        digest,
        share,
        auth: b[112],
        identity: b[113] & FLAG_IDENTITY != 0,
        verbs: b[113] & FLAG_VERBS != 0,
    }
}

/// Whether the peer's hello asks for our frame protection mode.
fn check_auth(cfg: &HandshakeConfig, hello: &Hello) -> Result<(), HandshakeError> {
    match FrameAuth::from_code(hello.auth) {
        Some(m) if m == cfg.frame_auth => Ok(()),
        theirs => Err(HandshakeError::AuthMismatch {
            ours: cfg.frame_auth,
            theirs,
        }),
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

/// What the client checks of an authentic server hello: the node dialled, the shard asked
/// for, the layout, the frame protection and whether identities are proved; a failure comes
/// with the reason to send back.
fn check_server_hello(
    cfg: &HandshakeConfig,
    hello: &Hello,
    expected: NodeId,
    target: u16,
) -> Result<(), (RejectReason, HandshakeError)> {
    if hello.node != expected {
        let e = HandshakeError::UnexpectedNode {
            expected,
            got: hello.node,
        };
        return Err((RejectReason::UnexpectedNode, e));
    }
    if hello.shard != target {
        let e = HandshakeError::WrongShard {
            asked: target,
            got: hello.shard,
        };
        return Err((RejectReason::NoSuchShard, e));
    }
    if hello.digest != cfg.digest.0 {
        let e = HandshakeError::LayoutMismatch {
            ours: cfg.digest,
            theirs: Digest(hello.digest),
        };
        return Err((RejectReason::LayoutMismatch, e));
    }
    check_auth(cfg, hello).map_err(|e| (RejectReason::AuthMismatch, e))?;
    check_identity_flag(cfg, hello).map_err(|e| (RejectReason::IdentityMismatch, e))
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
    let (share_key, share) = key_share()?;
    let fields = HelloFields {
        shard: cfg.shard,
        target,
        nonce: &nonce_c,
        share: &share,
    };
    let ch = encode_hello(KIND_CLIENT_HELLO, cfg, fields);
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
    if let Err((r, e)) = check_server_hello(cfg, &hello, expected, target) {
        return abort(&mut s, r, e);
    }
    if cfg.identity.is_some() {
        let mut head = [0u8; IDENTITY_HEAD];
        read_exact_by(&mut s, &mut head, deadline)?;
        let (cred, sig) = identity_len(&head)?;
        let mut body = vec![0u8; cred + sig];
        read_exact_by(&mut s, &mut body, deadline)?;
        let r = check_identity(cfg, hello.node, ID_SERVER, (&ch, &sh), (&body, cred));
        if let Err(e) = r {
            return abort(&mut s, RejectReason::IdentityRefused, e);
        }
    }
    let keys = match cfg.frame_keys(share_key, &hello.share, (&ch, &sh), true) {
        Ok(k) => k,
        Err(e) => return abort(&mut s, RejectReason::KeyExchange, e),
    };
    let mac_c = cfg.mac(b"ssi-dp client", &ch, &sh)?;
    let proof = identity_proof(cfg, ID_CLIENT, (&ch, &sh))?;
    write_by(
        &mut s,
        &[&prefix(KIND_CLIENT_AUTH, 0), &mac_c, &proof],
        deadline,
    )?;
    match read_prefix(&mut s, deadline)? {
        (KIND_ACCEPT, _) => Ok(Authenticated {
            stream: s,
            peer_node: hello.node,
            peer_shard: hello.shard,
            peer_shard_count: hello.shard_count,
            local_shard: cfg.shard,
            peer_offers_verbs: hello.verbs,
            keys,
        }),
        (KIND_REJECT, r) => Err(HandshakeError::Rejected(RejectReason::from_code(r))),
        _ => Err(HandshakeError::Malformed("expected accept or reject")),
    }
}
