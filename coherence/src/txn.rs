//! Home-side transaction records: a preallocated pool, linked per page in
//! FIFO order (the head is the active transaction; it stores the tail).

use super::node::{NodeId, NodeSet};
use super::records::ReqKind;

/// End of a per-page queue.
pub(crate) const NIL16: u16 = u16::MAX;

/// Where a home transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting in the page's queue (or at the head, not started).
    Queued,
    /// Started, but waits for the home's own residency window to end.
    WaitHome,
    /// Invalidations sent, acks awaited.
    Invalidating,
    /// Forwarded to the owner; `FwdAck` and/or `Done` awaited.
    Forwarded,
    /// The owner died; the requester's `RecallAck` is awaited.
    Recalling,
}

/// One request at the home.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Txn {
    pub(crate) requester: NodeId,
    pub(crate) req_txn: u64,
    pub(crate) kind: ReqKind,
    /// Low version bits sent with an upgrade.
    pub(crate) ver13: u16,
    pub(crate) phase: Phase,
    /// Acks still awaited (Invalidating).
    pub(crate) pending: NodeSet,
    /// The owner a forward went to.
    pub(crate) owner: NodeId,
    /// The version a write grant will set.
    pub(crate) new_version: u32,
    /// The requester is a sharer with a current copy: grant without data.
    pub(crate) upgrade_grant: bool,
    pub(crate) await_fwd_ack: bool,
    pub(crate) await_done: bool,
    /// The requester died (or the owner said so): grant nothing.
    pub(crate) req_gone: bool,
    /// The home installed a copy during this transaction.
    pub(crate) home_has: bool,
    /// The owner kept a read-only copy.
    pub(crate) kept: bool,
    /// Already passed the residency check once (resumed after a deferral).
    pub(crate) resumed: bool,
    /// A home move (requester = this home): once the home holds the only copy, the page
    /// goes to this node instead of completing a local request.
    pub(crate) move_to: Option<NodeId>,
    pub(crate) next: u16,
    pub(crate) tail: u16,
}

impl Txn {
    pub(crate) fn new(requester: NodeId, req_txn: u64, kind: ReqKind, ver13: u16) -> Self {
        Self {
            requester,
            req_txn,
            kind,
            ver13,
            phase: Phase::Queued,
            pending: NodeSet::EMPTY,
            owner: requester,
            new_version: 0,
            upgrade_grant: false,
            await_fwd_ack: false,
            await_done: false,
            req_gone: false,
            home_has: false,
            kept: false,
            resumed: false,
            move_to: None,
            next: NIL16,
            tail: NIL16,
        }
    }

    /// Write or upgrade.
    pub(crate) fn is_write(&self) -> bool {
        self.kind != ReqKind::Read
    }
}

/// The pool.
#[derive(Debug)]
pub(crate) struct Txns {
    pub(crate) items: Vec<Txn>,
    free: Vec<u16>,
}

impl Txns {
    pub(crate) fn new(n: u32) -> Self {
        let blank = Txn::new(NodeId::ZERO, 0, ReqKind::Read, 0);
        Self {
            items: vec![blank; n as usize],
            free: (0..n).rev().map(|i| i as u16).collect(),
        }
    }

    pub(crate) fn alloc(&mut self, t: Txn) -> Option<u16> {
        let i = self.free.pop()?;
        self.items[usize::from(i)] = t;
        Some(i)
    }

    pub(crate) fn free(&mut self, i: u16) {
        self.free.push(i);
    }

    pub(crate) fn in_use(&self) -> usize {
        self.items.len() - self.free.len()
    }
}
