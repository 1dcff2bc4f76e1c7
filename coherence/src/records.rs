//! Requester-side bookkeeping in preallocated pools: page records (a busy or
//! recently acquired page), their waiters, and the timer heap (residency
//! expiries and retries). Nothing here allocates after construction.

use super::node::NodeId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// End of a waiter list.
pub(crate) const NIL: u32 = u32::MAX;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReqKind {
    /// A read-only copy.
    Read,
    /// A writable copy (requester holds none).
    Write,
    /// Writable access to the read-only copy the requester holds.
    Upgrade,
}

/// The page's own request, as the requester sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Req {
    /// Nothing outstanding.
    Idle,
    /// Sent to the home (or queued in the local directory).
    Pending {
        /// What was asked.
        kind: ReqKind,
        /// Its transaction id.
        txn: u64,
    },
    /// Refused as busy; re-issue at `at`.
    Retry {
        /// When.
        at: u64,
    },
    /// An eviction awaits the home's answer; the copy is kept until then.
    Evicting {
        /// Its transaction id.
        txn: u64,
        /// Write-back of an exclusive copy.
        dirty: bool,
    },
}

/// An invalidation, forward or home take-over held back by the residency
/// window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeferredOp {
    /// `Inv`.
    Inv,
    /// `FwdRead`.
    FwdRead,
    /// `FwdWrite`.
    FwdWrite,
    /// A home transaction that will downgrade or drop the home's own copy.
    HomeTxn,
}

/// A deferred operation with the fields needed to perform it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deferred {
    pub(crate) op: DeferredOp,
    pub(crate) requester: NodeId,
    pub(crate) txn: u64,
    pub(crate) version: u32,
}

/// A busy or recently acquired page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageRec {
    pub(crate) page: u64,
    /// Dense local index of `page`.
    pub(crate) li: u32,
    pub(crate) in_use: bool,
    pub(crate) req: Req,
    /// The node the outstanding request went to: the home that serves it (under home
    /// migration the node's idea of the home may change while the request is out).
    pub(crate) asked: NodeId,
    /// The home recalled the outstanding request: only data from the home
    /// is accepted for it.
    pub(crate) recalled: bool,
    pub(crate) version: u32,
    pub(crate) waiters: u32,
    pub(crate) waiters_tail: u32,
    pub(crate) n_waiters: u32,
    /// When the page was last acquired (install or upgrade), while tracked.
    pub(crate) acquired_at: Option<u64>,
    /// The residency window of that acquisition: the configured one, or longer for a page
    /// that ping-pongs (§9).
    pub(crate) window_ns: u64,
    pub(crate) deferred: Option<Deferred>,
    /// A hold entry for this record is in the timer heap.
    pub(crate) hold_timer: bool,
    /// A retry entry for this record is in the timer heap.
    pub(crate) retry_timer: bool,
    /// A deferral's release entry for this record is in the timer heap.
    pub(crate) defer_timer: bool,
}

impl PageRec {
    const EMPTY: Self = Self {
        page: 0,
        li: 0,
        in_use: false,
        req: Req::Idle,
        asked: NodeId::ZERO,
        recalled: false,
        version: 0,
        waiters: NIL,
        waiters_tail: NIL,
        n_waiters: 0,
        acquired_at: None,
        window_ns: 0,
        deferred: None,
        hold_timer: false,
        retry_timer: false,
        defer_timer: false,
    };
}

/// One waiting fault.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiter {
    pub(crate) token: u64,
    pub(crate) write: bool,
    pub(crate) next: u32,
}

/// Timer kinds.
pub(crate) const TIMER_HOLD: u8 = 0;
pub(crate) const TIMER_RETRY: u8 = 1;
/// Releases a deferred take-over when its residency window ends (its own entry: the hold
/// timer of an earlier acquisition may be due later).
pub(crate) const TIMER_DEFER: u8 = 2;

/// The pools.
#[derive(Debug)]
pub(crate) struct Records {
    pub(crate) recs: Vec<PageRec>,
    free: Vec<u16>,
    pub(crate) waiters: Vec<Waiter>,
    free_waiters: Vec<u32>,
    /// (deadline, record, kind); at most one entry per record and kind.
    timers: BinaryHeap<Reverse<(u64, u16, u8)>>,
    /// Clock hand for reclaiming holds under pressure.
    hand: usize,
}

impl Records {
    pub(crate) fn new(pages: u32, waiters: u32) -> Self {
        Self {
            recs: vec![PageRec::EMPTY; pages as usize],
            // Pop order: low indices first.
            free: (0..pages).rev().map(|i| i as u16).collect(),
            waiters: vec![
                Waiter {
                    token: 0,
                    write: false,
                    next: NIL
                };
                waiters as usize
            ],
            free_waiters: (0..waiters).rev().collect(),
            timers: BinaryHeap::with_capacity(3 * pages as usize),
            hand: 0,
        }
    }

    /// Takes a free record for `page`, keeping its timer flags (entries may
    /// still be in the heap; they are validated when they pop).
    pub(crate) fn alloc(&mut self, page: u64, li: u32, version: u32) -> Option<u16> {
        let i = self.free.pop()?;
        let r = &mut self.recs[usize::from(i)];
        *r = PageRec {
            page,
            li,
            in_use: true,
            version,
            hold_timer: r.hold_timer,
            retry_timer: r.retry_timer,
            defer_timer: r.defer_timer,
            ..PageRec::EMPTY
        };
        Some(i)
    }

    pub(crate) fn free(&mut self, i: u16) {
        let r = &mut self.recs[usize::from(i)];
        debug_assert!(r.in_use && r.n_waiters == 0);
        r.in_use = false;
        r.acquired_at = None;
        r.deferred = None;
        r.req = Req::Idle;
        self.free.push(i);
    }

    /// A record holding nothing but an acquisition time, to be released
    /// early under pressure: prefers one past `residency_end` (only counting
    /// ping-pong), else any.
    pub(crate) fn reclaim_candidate(&mut self, now: u64) -> Option<u16> {
        let n = self.recs.len();
        let pure = |r: &PageRec| {
            r.in_use && r.req == Req::Idle && r.n_waiters == 0 && r.deferred.is_none()
        };
        for pass in 0..2 {
            for k in 0..n {
                let i = (self.hand + k) % n;
                let r = &self.recs[i];
                let past = r
                    .acquired_at
                    .is_none_or(|t| now >= t.saturating_add(r.window_ns));
                if pure(r) && (pass == 1 || past) {
                    self.hand = (i + 1) % n;
                    return Some(i as u16);
                }
            }
        }
        None
    }

    pub(crate) fn waiter_alloc(&mut self) -> Option<u32> {
        self.free_waiters.pop()
    }

    pub(crate) fn waiter_free(&mut self, w: u32) {
        self.free_waiters.push(w);
    }

    pub(crate) fn waiters_free_count(&self) -> usize {
        self.free_waiters.len()
    }

    /// Arms a timer unless one of this kind is already pending for the record
    /// (the pending one is earlier: deadlines only grow, and a popped entry
    /// re-arms with the record's current deadline).
    pub(crate) fn arm(&mut self, i: u16, kind: u8, at: u64) {
        let r = &mut self.recs[usize::from(i)];
        let flag = match kind {
            TIMER_HOLD => &mut r.hold_timer,
            TIMER_RETRY => &mut r.retry_timer,
            _ => &mut r.defer_timer,
        };
        if !*flag {
            *flag = true;
            self.timers.push(Reverse((at, i, kind)));
        }
    }

    /// Pops the earliest timer due at `now`, clearing its pending flag.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u16, u8)> {
        let &Reverse((at, i, kind)) = self.timers.peek()?;
        if at > now {
            return None;
        }
        self.timers.pop();
        let r = &mut self.recs[usize::from(i)];
        match kind {
            TIMER_HOLD => r.hold_timer = false,
            TIMER_RETRY => r.retry_timer = false,
            _ => r.defer_timer = false,
        }
        Some((i, kind))
    }

    /// The earliest timer deadline.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    pub(crate) fn all_free(&self) -> bool {
        self.free.len() == self.recs.len()
    }
}
