//! Lock-free counters a transport publishes for the control thread: frames rejected by
//! reason (in total and per connection slot), peers lost, backpressure, frame totals.
//!
//! Each counter has one writer (the transport's thread), so increments are a relaxed load and
//! store (no locked instruction on the hot path); readers on other threads use relaxed loads.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::header::FrameError;

/// Increments a single-writer counter.
#[inline]
pub fn bump(c: &AtomicU64) {
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

/// Frames rejected, by [`FrameError::reason_index`].
#[derive(Debug, Default)]
pub struct RejectCounters([AtomicU64; FrameError::REASONS]);

impl RejectCounters {
    /// Counts one rejection.
    pub fn count(&self, e: &FrameError) {
        bump(&self.0[e.reason_index()]);
    }

    /// Rejections with reason `index` (see [`FrameError::reason_name`]).
    pub fn get(&self, index: usize) -> u64 {
        self.0.get(index).map_or(0, |c| c.load(Relaxed))
    }

    /// Rejections of the same reason as `e`.
    pub fn of(&self, e: &FrameError) -> u64 {
        self.get(e.reason_index())
    }

    /// All rejections.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn reset(&self) {
        for c in &self.0 {
            c.store(0, Relaxed);
        }
    }
}

/// Counters of one connection slot.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// The caller's peer id using this slot, or `u32::MAX` when free.
    pub peer: AtomicU32,
    /// Frames received on the current connection.
    pub rx_frames: AtomicU64,
    /// Frames handed to the kernel on the current connection.
    pub tx_frames: AtomicU64,
    /// Frames rejected on the current connection, by reason.
    pub rejected: RejectCounters,
}

/// Everything a transport counts.
#[derive(Debug)]
pub struct TransportStats {
    /// Frames rejected on any connection, by reason.
    pub rejected: RejectCounters,
    /// Peers reported down.
    pub peers_down: AtomicU64,
    /// `send` calls answered with backpressure.
    pub backpressure: AtomicU64,
    /// Completions that reported an error (io_uring CQEs with a negative result other than
    /// the expected `ENOBUFS` and `ECANCELED`); always 0 for transports without a completion
    /// queue.
    pub cq_errors: AtomicU64,
    /// Per connection slot.
    pub per_slot: Box<[PeerCounters]>,
}

impl TransportStats {
    /// Counters for `slots` connection slots.
    pub fn new(slots: usize) -> TransportStats {
        let per_slot: Box<[PeerCounters]> = (0..slots)
            .map(|_| PeerCounters {
                peer: AtomicU32::new(u32::MAX),
                ..Default::default()
            })
            .collect();
        TransportStats {
            rejected: RejectCounters::default(),
            peers_down: AtomicU64::new(0),
            backpressure: AtomicU64::new(0),
            cq_errors: AtomicU64::new(0),
            per_slot,
        }
    }

    /// Marks slot `slot` as used by `peer` and zeroes its counters.
    pub fn open_slot(&self, slot: usize, peer: u32) {
        if let Some(c) = self.per_slot.get(slot) {
            c.rx_frames.store(0, Relaxed);
            c.tx_frames.store(0, Relaxed);
            c.rejected.reset();
            c.peer.store(peer, Relaxed);
        }
    }

    /// Counts a rejected frame on `slot` (and in the totals).
    pub fn reject(&self, slot: usize, e: &FrameError) {
        self.rejected.count(e);
        if let Some(c) = self.per_slot.get(slot) {
            c.rejected.count(e);
        }
    }
}
