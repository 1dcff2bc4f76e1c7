//! What shards publish for the control side: plain atomic counters and lock-free latency
//! histograms, written by the shard that owns them and read by anyone at any time.
//!
//! Each shard's counters have one writer, its own thread, so they are updated with a plain
//! load and store ([`bump`], [`add`]) rather than a locked read-modify-write: readers see every
//! value whole, and the fault path pays no bus lock per counter.
//!
//! Fault service time is measured by the shard from the moment it reads the fault from the
//! userfaultfd to the moment the page is installed (which wakes the faulting threads); the
//! thread's own view adds the kernel's wake-up, which benchmarks measure on their side.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::atomic_hist::AtomicHistogram;

/// The kinds of fault a shard serves, for counters and histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultKind {
    /// Read of a missing page.
    Read = 0,
    /// Write to a missing page.
    Write = 1,
    /// Write to a read-only copy.
    Upgrade = 2,
}

impl FaultKind {
    /// Every kind, in index order.
    pub const ALL: [FaultKind; 3] = [FaultKind::Read, FaultKind::Write, FaultKind::Upgrade];

    /// Stable lower-case name (log tags, metric labels).
    pub const fn name(self) -> &'static str {
        match self {
            FaultKind::Read => "read",
            FaultKind::Write => "write",
            FaultKind::Upgrade => "upgrade",
        }
    }

    /// From the two low bits of a fault token.
    pub const fn from_bits(b: u64) -> FaultKind {
        match b & 3 {
            0 => FaultKind::Read,
            1 => FaultKind::Write,
            _ => FaultKind::Upgrade,
        }
    }
}

/// Where a page's home is, relative to the faulting node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// This node is the page's home.
    Home,
    /// Another node is.
    Remote,
}

impl Locality {
    /// Stable lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Locality::Home => "home",
            Locality::Remote => "remote",
        }
    }
}

/// Address-space buckets the heat map has.
pub const HEAT_BUCKETS: usize = 1024;
/// Pages whose recent requesters a home remembers (direct-mapped by page number).
pub const RECENT_PAGES: usize = 256;
const NODES: usize = 64;

/// Page heat as a home sees it: requests for its pages by requesting node, per address-space
/// bucket, and for a few recently requested pages. Written by the owning shard only, with
/// relaxed atomics; read by the control side at any time.
#[derive(Debug)]
pub struct Heat {
    bucket_pages: u64,
    buckets: Box<[[AtomicU64; NODES]]>,
    recent_page: Box<[AtomicU64]>,
    recent: Box<[[AtomicU64; NODES]]>,
    /// Per bucket: pages homed here now that the layout homes elsewhere (home migration).
    homes_in: Box<[AtomicU64]>,
    /// Per bucket: pages of this node's layout range homed elsewhere now.
    homes_out: Box<[AtomicU64]>,
}

impl Heat {
    /// Heat over buckets of `bucket_pages` pages each.
    pub fn new(bucket_pages: u64) -> Self {
        let row = || std::array::from_fn::<AtomicU64, NODES, _>(|_| AtomicU64::new(0));
        Self {
            bucket_pages: bucket_pages.max(1),
            buckets: (0..HEAT_BUCKETS).map(|_| row()).collect(),
            recent_page: (0..RECENT_PAGES)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            recent: (0..RECENT_PAGES).map(|_| row()).collect(),
            homes_in: (0..HEAT_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            homes_out: (0..HEAT_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn bucket_of(&self, page: u64) -> usize {
        ((page / self.bucket_pages) as usize).min(HEAT_BUCKETS - 1)
    }

    /// `page`'s home arrived here (`own`: the layout homes it here, so it came back).
    /// Written by the owning shard only.
    pub fn home_arrived(&self, page: u64, own: bool) {
        let b = self.bucket_of(page);
        if own {
            let c = &self.homes_out[b];
            c.store(c.load(Relaxed).saturating_sub(1), Relaxed);
        } else {
            add(&self.homes_in[b], 1);
        }
    }

    /// `page`'s home left this node (`own`: the layout homes it here).
    pub fn home_left(&self, page: u64, own: bool) {
        let b = self.bucket_of(page);
        if own {
            add(&self.homes_out[b], 1);
        } else {
            let c = &self.homes_in[b];
            c.store(c.load(Relaxed).saturating_sub(1), Relaxed);
        }
    }

    /// Pages of bucket `b` homed here although the layout homes them elsewhere.
    pub fn homes_in(&self, b: usize) -> u64 {
        self.homes_in.get(b).map_or(0, |c| c.load(Relaxed))
    }

    /// Pages of bucket `b` the layout homes here that are homed elsewhere now.
    pub fn homes_out(&self, b: usize) -> u64 {
        self.homes_out.get(b).map_or(0, |c| c.load(Relaxed))
    }

    /// Pages per bucket.
    pub fn bucket_pages(&self) -> u64 {
        self.bucket_pages
    }

    /// Counts one request for `page` by `node` (owning shard only); returns `node`'s count
    /// for the page among the recently requested pages.
    #[inline]
    pub fn record(&self, page: u64, node: u16) -> u64 {
        let n = usize::from(node) % NODES;
        let b = ((page / self.bucket_pages) as usize).min(HEAT_BUCKETS - 1);
        add(&self.buckets[b][n], 1);
        let slot = (page as usize) % RECENT_PAGES;
        if self.recent_page[slot].load(Relaxed) != page {
            // A new page takes the slot: its counts start from zero.
            for c in &self.recent[slot] {
                c.store(0, Relaxed);
            }
            self.recent_page[slot].store(page, Relaxed);
        }
        add(&self.recent[slot][n], 1);
        self.recent[slot][n].load(Relaxed)
    }

    /// The node with the most recent requests for `page`, its count and the count over all
    /// nodes, if the page is remembered (no allocation: 64 loads).
    pub fn dominant(&self, page: u64) -> Option<(u16, u64, u64)> {
        let slot = (page as usize) % RECENT_PAGES;
        if self.recent_page[slot].load(Relaxed) != page {
            return None;
        }
        let (mut best, mut best_n, mut total) = (0u16, 0u64, 0u64);
        for (n, c) in self.recent[slot].iter().enumerate() {
            let v = c.load(Relaxed);
            total += v;
            if v > best_n {
                (best, best_n) = (n as u16, v);
            }
        }
        Some((best, best_n, total))
    }

    /// Forgets `page`'s recent requests (its home moved: the evidence starts again).
    pub fn forget(&self, page: u64) {
        let slot = (page as usize) % RECENT_PAGES;
        if self.recent_page[slot].load(Relaxed) == page {
            for c in &self.recent[slot] {
                c.store(0, Relaxed);
            }
        }
    }

    /// Requests of bucket `b` by node `n`.
    pub fn bucket(&self, b: usize, n: usize) -> u64 {
        self.buckets
            .get(b)
            .and_then(|r| r.get(n))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Recent requests for `page`, `(node, count)`, if the page is still remembered.
    pub fn recent(&self, page: u64) -> Vec<(u16, u64)> {
        let slot = (page as usize) % RECENT_PAGES;
        if self.recent_page[slot].load(Relaxed) != page {
            return Vec::new();
        }
        self.recent[slot]
            .iter()
            .enumerate()
            .filter_map(|(n, c)| {
                let v = c.load(Relaxed);
                (v > 0).then_some((n as u16, v))
            })
            .collect()
    }
}

impl Default for Heat {
    fn default() -> Self {
        Self::new(1)
    }
}

/// One home move this shard made, and why (home migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveRecord {
    /// The page.
    pub page: u64,
    /// The node it moved to.
    pub to: u16,
    /// Recent requests for it by that node, when it moved.
    pub requests: u64,
    /// Recent requests for it by every node (this one's own faults included).
    pub of: u64,
}

/// The last home moves a shard made, newest last (at most [`MOVE_LOG`]; written once per move,
/// never on the fault path).
pub const MOVE_LOG: usize = 256;

/// Counters and histograms of one shard.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Faults read from the userfaultfd by this shard (including ones handed to other shards).
    pub uffd_events: AtomicU64,
    /// Faults handed to the shard that owns the page.
    pub faults_forwarded: AtomicU64,
    /// Faults served (completed) by this shard, by kind and locality: `[kind][home, remote]`.
    pub faults_served: [[AtomicU64; 2]; 3],
    /// Faults that failed (page lost, cluster down).
    pub faults_failed: AtomicU64,
    /// Faults retried later because a pool or channel was full.
    pub faults_deferred: AtomicU64,
    /// Faults given back to the kernel (wake without install) because even the retry list
    /// was full; the thread faults again.
    pub faults_bounced: AtomicU64,
    /// Protocol messages sent.
    pub msgs_sent: AtomicU64,
    /// Protocol messages received.
    pub msgs_received: AtomicU64,
    /// Page payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Page payload bytes received.
    pub bytes_received: AtomicU64,
    /// Sends kept for later: the transport answered backpressure, or the session was
    /// without a working connection.
    pub sends_backlogged: AtomicU64,
    /// Connections to peer shards lost while their node was alive (a reset, a close, a frame
    /// that failed authentication).
    pub links_lost: AtomicU64,
    /// Sessions resumed on a new connection.
    pub links_restored: AtomicU64,
    /// Frames sent again after a resume (the peer had not received them).
    pub frames_resent: AtomicU64,
    /// Pages installed with data from a message.
    pub installs_data: AtomicU64,
    /// Pages installed as zero.
    pub installs_zero: AtomicU64,
    /// Installs that found the page already mapped (`EEXIST`: woken instead).
    pub installs_exist: AtomicU64,
    /// Write-protects, upgrades (WP cleared), drops.
    pub write_protects: AtomicU64,
    /// Upgrades done in place.
    pub make_writable: AtomicU64,
    /// Local copies dropped.
    pub drops: AtomicU64,
    /// Pages declared lost.
    pub pages_lost: AtomicU64,
    /// Protocol violations by peers (their connection is closed).
    pub violations: AtomicU64,
    /// Loop turns that found work.
    pub busy_turns: AtomicU64,
    /// Loop turns that found none.
    pub idle_turns: AtomicU64,
    /// Times the shard went to sleep.
    pub sleeps: AtomicU64,
    /// Whether the watchdog finds the shard stalled now (set and cleared by it).
    pub stalled: std::sync::atomic::AtomicBool,
    /// Service time histograms, `[kind][home, remote]`, nanoseconds.
    pub service_ns: [[AtomicHistogram; 2]; 3],
    /// Faults on pages beyond the address space (answered with SIGBUS).
    pub faults_out_of_range: AtomicU64,
    /// Pages of other homes held now, when the replica cache is bounded (`--replica-cache`;
    /// 0 otherwise: nothing counts them).
    pub replicas_held: AtomicU64,
    /// The most pages of other homes this shard held at once (bounded replica cache only).
    pub replicas_held_max: AtomicU64,
    /// Evictions the bounded replica cache started.
    pub replica_evictions: AtomicU64,
    /// Acquisitions the replica cache could not record (its ring was full; a bug if not 0).
    pub replica_cache_lost: AtomicU64,
    /// Protocol counters, published from the shard's protocol instance every few turns.
    pub proto: ProtoCounters,
    /// Page heat at this shard's home pages.
    pub heat: Heat,
    /// The last home moves this shard made (see [`MoveRecord`]).
    pub moves: std::sync::Mutex<std::collections::VecDeque<MoveRecord>>,
}

/// Counters of a shard's protocol instance, mirrored as atomics for the control side.
#[derive(Debug, Default)]
pub struct ProtoCounters {
    /// Invalidations sent by this home.
    pub invalidations: AtomicU64,
    /// Forwards sent by this home.
    pub forwards: AtomicU64,
    /// Pages taken away within the ping-pong window after being acquired.
    pub ping_pong: AtomicU64,
    /// Clean evictions.
    pub evictions_clean: AtomicU64,
    /// Dirty evictions (write-backs of a page).
    pub evictions_dirty: AtomicU64,
    /// Requests issued (remote or to the local directory).
    pub requests: AtomicU64,
    /// Busy refusals sent by this home.
    pub nacks_busy: AtomicU64,
    /// Read requests issued by sequential prefetch.
    pub prefetches: AtomicU64,
    /// Acquisitions held longer because the page ping-ponged (damping).
    pub ping_pong_held: AtomicU64,
    /// Pages whose home moved here (home migration).
    pub homes_in: AtomicU64,
    /// Pages whose home moved away from here.
    pub homes_out: AtomicU64,
    /// Requests and evictions answered with the page's new home (this node had moved it).
    pub redirects: AtomicU64,
}

impl ProtoCounters {
    /// Publishes a protocol instance's counters.
    pub fn publish(&self, s: &coherence::Stats) {
        self.invalidations.store(s.invalidations, Relaxed);
        self.forwards.store(s.forwards, Relaxed);
        self.ping_pong.store(s.ping_pong, Relaxed);
        self.evictions_clean.store(s.evictions_clean, Relaxed);
        self.evictions_dirty.store(s.evictions_dirty, Relaxed);
        self.requests.store(s.requests, Relaxed);
        self.nacks_busy.store(s.nacks_busy, Relaxed);
        self.prefetches.store(s.prefetches, Relaxed);
        self.ping_pong_held.store(s.ping_pong_held, Relaxed);
        self.homes_in.store(s.moves_in, Relaxed);
        self.homes_out.store(s.moves_out, Relaxed);
        self.redirects.store(s.redirects, Relaxed);
    }
}

impl ShardStats {
    /// Counters for a shard whose heat map uses buckets of `bucket_pages` pages.
    pub fn with_heat(bucket_pages: u64) -> Self {
        Self {
            heat: Heat::new(bucket_pages),
            ..Default::default()
        }
    }
}

impl ShardStats {
    /// Records a served fault.
    #[inline]
    pub fn served(&self, kind: FaultKind, loc: Locality, ns: u64) {
        let l = loc as usize;
        bump(&self.faults_served[kind as usize][l]);
        self.service_ns[kind as usize][l].record_owned(ns);
    }

    /// Faults served of one kind and locality.
    pub fn served_count(&self, kind: FaultKind, loc: Locality) -> u64 {
        self.faults_served[kind as usize][loc as usize].load(Relaxed)
    }

    /// The histogram of one kind and locality.
    pub fn histogram(&self, kind: FaultKind, loc: Locality) -> &AtomicHistogram {
        &self.service_ns[kind as usize][loc as usize]
    }
}

/// Sets a gauge (single writer: the shard that owns it).
#[inline]
pub fn set(c: &AtomicU64, v: u64) {
    c.store(v, Relaxed);
}

/// Adds one to a counter that only the calling thread writes (a shard's own counters).
#[inline]
pub fn bump(c: &AtomicU64) {
    add(c, 1);
}

/// Adds `n` to a counter that only the calling thread writes: a load and a store, no locked
/// instruction (a second writer would lose updates; readers are fine).
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Sums one counter over shards.
pub fn sum(shards: &[std::sync::Arc<ShardStats>], f: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
    shards.iter().map(|s| f(s).load(Relaxed)).sum()
}
