//! State a node's shards share with its control side, all atomics: the stop flag, which peer
//! nodes are down, whether the cluster stopped, and requests to evict every cached replica
//! (before a node leaves). Shards read these with relaxed loads once per loop turn.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::OnceLock;

use coherence::FatalReason;

/// Why a node stopped working for the cluster. Threads whose faults can no longer be served
/// are left waiting (never woken into a SIGBUS): whoever runs the node watches
/// [`NodeState::fatal`], reports the reason and ends the process, which ends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The protocol stopped: a home node died, or a step overflowed its action buffer.
    Protocol(FatalReason),
    /// A thread of this node touched `page`, whose only copy died with another node.
    PageLost {
        /// The page.
        page: u64,
    },
    /// The cluster declared this node dead (it was paused or cut off for longer than the
    /// failure timeout); it must rejoin as a new node.
    DeclaredDead,
    /// A memory operation the protocol asked for (install, write-protect, write-unprotect,
    /// drop, wake) failed on `page`: this node's memory no longer matches what its protocol
    /// recorded (a copy left writable or mapped, or a thread never woken), so it stops rather
    /// than serve wrong data. The shard logged the kernel's error.
    MemoryOp {
        /// The operation, as the log names it.
        op: &'static str,
        /// The page.
        page: u64,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Protocol(FatalReason::HomeDied(n)) => {
                write!(f, "node {n}, home to guest pages, died")
            }
            StopReason::Protocol(FatalReason::ActionOverflow) => {
                f.write_str("a protocol step overflowed its action buffer (a bug)")
            }
            StopReason::PageLost { page } => {
                write!(f, "page {page} was lost with the node that held it")
            }
            StopReason::DeclaredDead => f.write_str("the cluster declared this node dead"),
            StopReason::MemoryOp { op, page } => {
                write!(f, "the {op} of page {page} failed")
            }
        }
    }
}

impl From<FatalReason> for StopReason {
    fn from(r: FatalReason) -> Self {
        StopReason::Protocol(r)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct NodeState {
    stop: AtomicBool,
    departures_expected: AtomicBool,
    dead: AtomicU64,
    left: AtomicU64,
    cluster_stop: AtomicBool,
    fatal: OnceLock<StopReason>,
    evict_gen: AtomicU64,
    evict_done: Box<[AtomicU64]>,
    running: AtomicU32,
    prefetch: AtomicU32,
    incarnation: u64,
}

/// Most pages one sequential-prefetch trigger covers (the faulting page included).
pub const MAX_PREFETCH: u32 = 64;

impl NodeState {
    /// State for a node with `shards` shards.
    pub fn new(shards: usize) -> Self {
        Self {
            stop: AtomicBool::new(false),
            departures_expected: AtomicBool::new(false),
            dead: AtomicU64::new(0),
            left: AtomicU64::new(0),
            cluster_stop: AtomicBool::new(false),
            fatal: OnceLock::new(),
            evict_gen: AtomicU64::new(0),
            evict_done: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            running: AtomicU32::new(0),
            prefetch: AtomicU32::new(0),
            incarnation: new_incarnation(),
        }
    }

    /// This node's incarnation: random, fixed for the life of the process. Peers resume a
    /// session only with the incarnation they first saw (a restarted node is another one).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Sets the sequential-prefetch depth: a read miss that continues a run of this shard's
    /// pages also requests the next `pages - 1` of them; 0 or 1 turns prefetch off. Clamped
    /// to [`MAX_PREFETCH`]; takes effect at the next fault.
    pub fn set_prefetch(&self, pages: u32) {
        self.prefetch.store(pages.min(MAX_PREFETCH), Relaxed);
    }

    /// The sequential-prefetch depth (see [`NodeState::set_prefetch`]).
    #[inline]
    pub fn prefetch(&self) -> u32 {
        self.prefetch.load(Relaxed)
    }

    /// Asks the shards to stop.
    pub fn request_stop(&self) {
        self.stop.store(true, SeqCst);
    }

    /// Whether the shards were asked to stop.
    #[inline]
    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// From now on a peer going away is part of an orderly shutdown, not a failure.
    pub fn expect_departures(&self) {
        self.departures_expected.store(true, SeqCst);
    }

    /// Whether peers leaving is expected.
    pub fn departures_expected(&self) -> bool {
        self.departures_expected.load(Relaxed)
    }

    /// Records that `node` is down; returns whether this is news.
    pub fn mark_dead(&self, node: u16) -> bool {
        let bit = 1u64 << node;
        self.dead.fetch_or(bit, SeqCst) & bit == 0
    }

    /// Records that `node` left in order (it holds nothing any more): the shards treat it as
    /// gone, without reporting a failure.
    pub fn mark_left(&self, node: u16) {
        self.left.fetch_or(1u64 << node, SeqCst);
        self.dead.fetch_or(1u64 << node, SeqCst);
    }

    /// The nodes that left in order, as a bit mask.
    pub fn left(&self) -> u64 {
        self.left.load(Relaxed)
    }

    /// The control plane asks this node to stop (the cluster is being stopped, or this node
    /// left); the process's main loop ends on it.
    pub fn request_cluster_stop(&self) {
        self.cluster_stop.store(true, SeqCst);
    }

    /// Whether the control plane asked this node to stop.
    pub fn cluster_stop_requested(&self) -> bool {
        self.cluster_stop.load(Relaxed)
    }

    /// The nodes known down, as a bit mask.
    pub fn dead(&self) -> u64 {
        self.dead.load(Relaxed)
    }

    /// Records why this node stopped working for the cluster (the first cause wins).
    pub fn set_fatal(&self, reason: impl Into<StopReason>) {
        // Failing means a cause is already recorded; the first one is what the node reports
        // (a later one is usually its consequence: a lost page after its home died).
        let _ = self.fatal.set(reason.into());
    }

    /// Why this node stopped working for the cluster, if it did.
    pub fn fatal(&self) -> Option<StopReason> {
        self.fatal.get().copied()
    }

    /// Asks every shard to evict its cached replicas; returns the request's generation.
    pub fn request_evict_all(&self) -> u64 {
        self.evict_gen.fetch_add(1, SeqCst) + 1
    }

    /// The latest eviction request.
    #[inline]
    pub fn evict_generation(&self) -> u64 {
        self.evict_gen.load(Relaxed)
    }

    /// Shard `shard` holds no replica as of request `gen`.
    pub fn evict_finished(&self, shard: usize, gen: u64) {
        self.evict_done[shard].store(gen, SeqCst);
    }

    /// Whether every shard finished request `gen`.
    pub fn evicted(&self, gen: u64) -> bool {
        self.evict_done.iter().all(|d| d.load(SeqCst) >= gen)
    }

    /// A shard entered its loop.
    pub fn shard_started(&self) {
        self.running.fetch_add(1, SeqCst);
    }

    /// A shard left its loop.
    pub fn shard_stopped(&self) {
        self.running.fetch_sub(1, SeqCst);
    }

    /// Shards running.
    pub fn running(&self) -> u32 {
        self.running.load(SeqCst)
    }
}

/// A random 64-bit incarnation (never 0). It only has to differ between two runs of a node,
/// not be secret: without `getrandom` the clock and the process id stand in.
fn new_incarnation() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let v = if n == 8 {
        u64::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 32)
    };
    v.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coherence::NodeId;

    #[test]
    fn dead_set_fatal_and_evictions() {
        let s = NodeState::new(2);
        assert!(s.mark_dead(3));
        assert!(
            !s.mark_dead(3),
            "second report of the same death is not news"
        );
        assert_eq!(s.dead(), 1 << 3);
        assert_eq!(s.fatal(), None);
        let home = |i| FatalReason::HomeDied(NodeId::new(i).unwrap());
        s.set_fatal(home(0));
        s.set_fatal(home(5));
        s.set_fatal(StopReason::DeclaredDead);
        assert_eq!(s.fatal(), Some(home(0).into()), "the first cause is kept");
        let t = NodeState::new(1);
        t.set_fatal(StopReason::PageLost { page: 7 });
        t.set_fatal(FatalReason::ActionOverflow);
        assert_eq!(t.fatal(), Some(StopReason::PageLost { page: 7 }));
        let g = s.request_evict_all();
        assert!(!s.evicted(g));
        s.evict_finished(0, g);
        assert!(!s.evicted(g));
        s.evict_finished(1, g);
        assert!(s.evicted(g));
    }
}
