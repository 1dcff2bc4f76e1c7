//! Dialling again: when a shard's connection to a higher-numbered node breaks, this node
//! (the lower id dials, as at formation) connects that pair of shards again, authenticated
//! like the first time, and hands the new connection to the shard, whose session resumes on
//! it (see [`crate::shard::session`]).
//!
//! One thread per node, off the data path. Shards ask through a bounded channel
//! ([`RedialTx::request`], never blocking); attempts back off from [`FIRST_BACKOFF`] to
//! [`MAX_BACKOFF`] and go on until they succeed, the node is declared dead (its session
//! window ran out, or the control plane said so) or this node stops. Handshakes a peer
//! refuses are logged and retried the same way: whether the node is dead is the session
//! window's decision, not the dialler's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use wire::handshake::{self, HandshakeStats};
use wire::ratelimit::LogLimiter;

use crate::config::ClusterSpec;
use crate::doorbell::Doorbell;
use crate::mesh::{self, Credentials};
use crate::node_state::NodeState;
use crate::shard::mailbox::{Command, Mailbox};
use coherence::NodeId;

/// Requests a shard may have waiting (one per broken connection; more are refused, and the
/// session's window decides).
const QUEUE: usize = 1024;
/// First pause after a failed attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Deadline of one attempt (connect and handshake).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Commands a shard's mailbox may hold before a new connection for it waits.
const MAILBOX_LIMIT: usize = 256;

/// One pair of shards to connect again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The local shard.
    pub shard: u16,
    /// The peer node.
    pub node: NodeId,
    /// The peer's shard.
    pub peer_shard: u16,
}

/// The shards' side of the redialer.
#[derive(Debug, Clone)]
pub struct RedialTx {
    tx: SyncSender<Request>,
    refused: Arc<AtomicU64>,
}

impl RedialTx {
    /// Asks for a new connection; never blocks. `false`: the queue is full (counted).
    pub fn request(&self, r: Request) -> bool {
        match self.tx.try_send(r) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Where the redialer finds what it needs.
#[derive(Debug)]
pub struct RedialSetup {
    /// The cluster (it grows with joins; the handshake checks its layout digest).
    pub cluster: Arc<Mutex<ClusterSpec>>,
    /// What this node proves.
    pub creds: Credentials,
    /// Local shards.
    pub shards: u16,
    /// Every local shard's mailbox (new connections go there).
    pub mailboxes: Vec<Arc<Mailbox>>,
    /// Every local shard's doorbell (rung after posting).
    pub doorbells: Arc<[Doorbell]>,
    /// Dead nodes and the stop flag.
    pub state: Arc<NodeState>,
}

/// The running redialer.
#[derive(Debug)]
pub struct Redialer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Connections restored by dialling.
    pub dialled: Arc<AtomicU64>,
}

impl Redialer {
    /// Starts the thread; returns it and the handle shards ask through.
    pub fn start(setup: RedialSetup) -> std::io::Result<(Redialer, RedialTx)> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let dialled = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, dialled) = (stop.clone(), dialled.clone());
            std::thread::Builder::new()
                .name("ssi-dp-redial".into())
                .spawn(move || run(setup, rx, &stop, &dialled))?
        };
        Ok((
            Redialer {
                stop,
                thread: Some(thread),
                dialled,
            },
            RedialTx {
                tx,
                refused: Arc::default(),
            },
        ))
    }

    /// Stops the thread (an attempt in progress finishes first, within its deadline).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // The thread only returns; a panic in it has already been reported.
            let _ = t.join();
        }
    }
}

impl Drop for Redialer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request with its next attempt.
struct Want {
    r: Request,
    at: Instant,
    backoff: Duration,
}

fn run(setup: RedialSetup, rx: Receiver<Request>, stop: &AtomicBool, dialled: &AtomicU64) {
    let mut wants: Vec<Want> = Vec::new();
    let mut log = LogLimiter::new(10, 1);
    let stats = Arc::new(HandshakeStats::default());
    while !stop.load(Ordering::SeqCst) && !setup.state.stopping() {
        let now = Instant::now();
        let wait = wants
            .iter()
            .map(|w| w.at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        match rx.recv_timeout(wait) {
            Ok(r) => add(&mut wants, r),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if wants.is_empty() {
                    return;
                }
            }
        }
        while let Ok(r) = rx.try_recv() {
            add(&mut wants, r);
        }
        let dead = setup.state.dead();
        wants.retain(|w| dead & (1u64 << w.r.node.get()) == 0);
        let now = Instant::now();
        let Some(k) = wants.iter().position(|w| w.at <= now) else {
            continue;
        };
        let w = &mut wants[k];
        match attempt(&setup, w.r, &stats) {
            Ok(()) => {
                dialled.fetch_add(1, Ordering::Relaxed);
                wants.swap_remove(k);
            }
            Err(e) => {
                log.warn(format_args!(
                    "reconnecting shard {} to node {} (its shard {}): {e}; trying again in {} ms",
                    w.r.shard,
                    w.r.node,
                    w.r.peer_shard,
                    w.backoff.as_millis()
                ));
                w.at = Instant::now() + w.backoff;
                w.backoff = (w.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Adds a request unless the same pair already waits.
fn add(wants: &mut Vec<Want>, r: Request) {
    if wants.iter().any(|w| w.r == r) || wants.len() >= QUEUE {
        return;
    }
    wants.push(Want {
        r,
        at: Instant::now(),
        backoff: FIRST_BACKOFF,
    });
}

/// Why an attempt failed.
#[derive(Debug, Error)]
enum AttemptError {
    /// The node is not in the cluster as this node knows it.
    #[error("node {0} is not in the cluster")]
    Unknown(u16),
    /// Connecting or the handshake failed.
    #[error(transparent)]
    Mesh(#[from] mesh::MeshError),
    /// The shard has not taken its earlier commands.
    #[error("the shard's mailbox is full")]
    MailboxFull,
}

/// One connect and handshake; the connection goes to the shard's mailbox.
fn attempt(
    setup: &RedialSetup,
    r: Request,
    stats: &Arc<HandshakeStats>,
) -> Result<(), AttemptError> {
    let cluster = setup
        .cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(peer) = cluster.nodes.iter().find(|n| n.id == r.node.get()) else {
        return Err(AttemptError::Unknown(r.node.get()));
    };
    let mut cfg = mesh::hs_config(&cluster, r.shard, setup.shards, &setup.creds, stats)?;
    cfg.timeout = ATTEMPT_TIMEOUT;
    let a = handshake::connect(peer.addr, &cfg, r.node.get(), r.peer_shard).map_err(|source| {
        mesh::MeshError::Handshake {
            node: r.node.get(),
            addr: peer.addr,
            source,
        }
    })?;
    let i = usize::from(r.shard);
    let conn = mesh::conn(r.node, a);
    if !setup.mailboxes[i].post_bounded(Command::AddConns(vec![conn]), MAILBOX_LIMIT) {
        return Err(AttemptError::MailboxFull);
    }
    setup.doorbells[i].kick();
    Ok(())
}
