//! What shards publish for the control side: plain atomic counters and lock-free latency
//! histograms, written by the shard that owns them and read by anyone at any time.
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
    /// Sends parked because the transport answered backpressure.
    pub sends_backlogged: AtomicU64,
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
    /// Service time histograms, `[kind][home, remote]`, nanoseconds.
    pub service_ns: [[AtomicHistogram; 2]; 3],
}

impl ShardStats {
    /// Records a served fault.
    #[inline]
    pub fn served(&self, kind: FaultKind, loc: Locality, ns: u64) {
        let l = loc as usize;
        self.faults_served[kind as usize][l].fetch_add(1, Relaxed);
        self.service_ns[kind as usize][l].record(ns);
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

/// Adds one to a counter.
#[inline]
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Adds `n` to a counter.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Sums one counter over shards.
pub fn sum(shards: &[std::sync::Arc<ShardStats>], f: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
    shards.iter().map(|s| f(s).load(Relaxed)).sum()
}
