//! A home node's leave (docs/protocol.md §13): `Retire` stops every home move towards the
//! leaving node, which then moves each page it homes to its successor and hands it the
//! pointers it keeps for pages it moved elsewhere; `Retired` sends to the successor whatever
//! would have gone to the node that left.
//!
//! Pointers are ordered by the move numbers (`epochs`) every `HomeMove` carries: the
//! successor keeps the newer of its own pointer and the one it is handed, so following
//! pointers always goes forward in the page's history and ends at its home.

use super::action::Actions;
use super::machine::{Machine, Outcome, StepError};
use super::msg::{MovedPage, Msg};
use super::node::NodeId;
use super::state::DirState;

/// The leaving node's scan over its directory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drain {
    /// The successor.
    pub(crate) to: NodeId,
    /// Next entry of the pass.
    pub(crate) cursor: usize,
    /// Something in this pass is not handed over yet (a move under way, a busy page).
    pub(crate) unfinished: bool,
    /// A whole pass found nothing left to hand over.
    pub(crate) done: bool,
    /// When the next pass may start (a pass that left moves under way waits for them).
    pub(crate) next_pass: u64,
    /// Entries that may still send something before the caller allows more
    /// ([`Machine::allow_drain`]; `None`: no limit).
    pub(crate) allowance: Option<u32>,
}

impl Drain {
    /// When the drain wants a tick (`None`: done).
    pub(crate) fn deadline(&self, now: u64) -> Option<u64> {
        if self.done || self.allowance == Some(0) {
            None
        } else if self.cursor == 0 {
            Some(self.next_pass.max(now))
        } else {
            Some(now)
        }
    }
}

impl Machine {
    /// `Input::Retire`.
    pub(crate) fn on_retire(
        &mut self,
        node: NodeId,
        to: NodeId,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let refuse = |why| StepError::BadRetire { node, to, why };
        if !self.cfg.migration {
            return Err(refuse(
                "home migration is off (every node must run with --placement on)",
            ));
        }
        let homes = self.layout.homes();
        if !homes.contains(node) || !homes.contains(to) || node == to {
            return Err(refuse("both must be distinct nodes that contribute memory"));
        }
        if self.dead.contains(to) || self.leaving.contains(to) {
            return Err(refuse("the successor is dead or has left"));
        }
        match self.retiring {
            Some(r) if r == (node, to) => return Ok(Outcome::Done),
            Some(_) => return Err(refuse("another leave is in progress")),
            None if self.leaving.contains(node) => return Err(refuse("it has left already")),
            None => {}
        }
        self.retiring = Some((node, to));
        self.leaving.insert(node);
        if node == self.me {
            self.drain = Some(Drain {
                to,
                cursor: 0,
                unfinished: false,
                done: false,
                next_pass: 0,
                allowance: None,
            });
            self.run_drain(out);
        }
        Ok(Outcome::Done)
    }

    /// `Input::Retired`.
    pub(crate) fn on_retired(
        &mut self,
        node: NodeId,
        to: NodeId,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        if self.retiring != Some((node, to)) {
            return Err(StepError::BadRetire {
                node,
                to,
                why: "no such leave is in progress",
            });
        }
        self.retiring = None;
        if node == self.me {
            // This node is gone from the cluster's point of view: it holds nothing, and the
            // other nodes closing their connections is no failure.
            self.left = true;
            return Ok(Outcome::Done);
        }
        self.succ[usize::from(node.get())] = to.get() as u8 + 1;
        self.dead.insert(node);
        // Requests and evictions the node that left was asked go to its successor: a scan of
        // the page records, within each step's room for actions (`run_reroute`).
        self.reroute = Some((node, to, 0));
        self.run_reroute(out);
        // Whatever the directory still names it for (nothing, if it left as it should).
        self.cleanup = Some(0);
        self.run_cleanup(out);
        Ok(Outcome::Done)
    }

    /// Continues sending to the successor what was outstanding at the node that left, while
    /// the step has room for one page's work.
    pub(crate) fn run_reroute(&mut self, out: &mut Actions) {
        let Some((node, to, mut ri)) = self.reroute else {
            return;
        };
        while usize::from(ri) < self.recs.recs.len()
            && out.remaining() >= self.page_bound
            && self.fatal.is_none()
        {
            let r = *self.rec(ri);
            let txn = match r.req {
                super::records::Req::Pending { txn, .. }
                | super::records::Req::Evicting { txn, .. }
                    if r.in_use && r.asked == node =>
                {
                    Some(txn)
                }
                _ => None,
            };
            if let Some(txn) = txn {
                // As if the node that left had redirected it; a violation is impossible here
                // (the record waits for exactly this transaction).
                let _ = self.on_nack(r.li as usize, txn, super::msg::NackReason::Moved(to), out);
            }
            ri += 1;
        }
        self.reroute = (usize::from(ri) < self.recs.recs.len()).then_some((node, to, ri));
    }

    /// The node that answers for `node`: itself, or the successor it left its pages to.
    pub(crate) fn successor(&self, node: NodeId) -> NodeId {
        let mut n = node;
        // Successors form chains that end at a node still here (at most one per node).
        for _ in 0..super::node::MAX_NODES {
            match self.succ[usize::from(n.get())].checked_sub(1) {
                Some(s) => n = NodeId::new(u16::from(s)).unwrap_or(n),
                None => break,
            }
        }
        n
    }

    /// At a leaving node: whether every page it homed, and every pointer it kept, is with its
    /// successor (or on its way there). Meaningful once every move that was under way
    /// towards this node when the leave began has arrived.
    pub fn drained(&self) -> bool {
        self.drain.is_some_and(|d| d.done)
    }

    /// Where a request for `page` that reached this instance goes next: `None` when this
    /// node is the home, else the node its pointer names (through the successors of nodes
    /// that left), or `Some(me)` when it has none (it would answer busy).
    #[cfg(test)]
    pub(crate) fn next_hop(&self, page: u64) -> Option<NodeId> {
        if self.homed_here(page) {
            return None;
        }
        let at = self
            .home_range
            .index(page)
            .and_then(|di| self.dir[di].moved_to())
            .map(|n| self.successor(n));
        Some(at.unwrap_or(self.me))
    }

    /// At a leaving node whose drain is not done: the successor it sends to.
    pub fn draining(&self) -> Option<NodeId> {
        self.drain.filter(|d| !d.done).map(|d| d.to)
    }

    /// Lets the drain send for at most `entries` more directory entries (a move or a pointer
    /// each) until the next allowance: the caller keeps what is in flight to the successor
    /// within what its connection holds. Without a call the drain is not limited.
    pub fn allow_drain(&mut self, entries: u32) {
        if let Some(d) = self.drain.as_mut() {
            d.allowance = Some(entries);
        }
    }

    /// Pages this instance is the home of (a leaving node's progress; O(directory)).
    pub fn homed_pages(&self) -> usize {
        (0..self.dir.len())
            .filter(|&di| self.homed_here(self.home_range.page(di)))
            .count()
    }

    /// Continues the leaving node's scan within the step's budget.
    pub(crate) fn run_drain(&mut self, out: &mut Actions) {
        let Some(mut d) = self.drain else {
            return;
        };
        if d.done || (d.cursor == 0 && self.now < d.next_pass) {
            return;
        }
        let mut n = 0;
        while n < self.cfg.cleanup_chunk
            && out.remaining() >= self.page_bound
            && self.fatal.is_none()
            && d.allowance != Some(0)
        {
            if d.cursor >= self.dir.len() {
                d.cursor = 0;
                if !d.unfinished {
                    d.done = true;
                } else {
                    // Moves are under way: look again once they have had time to finish.
                    d.unfinished = false;
                    d.next_pass = self.now.saturating_add(self.cfg.retry_backoff_ns);
                }
                break;
            }
            let sent = out.len();
            if self.drain_entry(d.cursor, d.to, out) {
                d.unfinished = true;
            }
            if out.len() > sent {
                if let Some(a) = d.allowance.as_mut() {
                    *a = a.saturating_sub(1);
                }
            }
            d.cursor += 1;
            n += 1;
        }
        self.drain = Some(d);
    }

    /// Hands entry `di` over to the successor `to`; whether something is left to wait for.
    fn drain_entry(&mut self, di: usize, to: NodeId, out: &mut Actions) -> bool {
        let page = self.home_range.page(di);
        if self.homed_here(page) {
            if self.dir[di].busy() {
                // Queued behind the page's transactions (so that a busy page cannot keep
                // it here); the requests queued after it are redirected to the successor.
                if !self.move_queued(di) {
                    let _ = self.start_move(di, to, out);
                }
                return true;
            }
            if self.dir[di].state() == DirState::Lost {
                let version = self.dir[di].version();
                self.hand_over(di, to, 0, version, MovedPage::Lost, out);
                return false;
            }
            // Refused only for want of a transaction record: the next pass tries again.
            let _ = self.start_move(di, to, out);
            return true;
        }
        let Some(at) = self.dir[di].moved_to() else {
            return false;
        };
        if at != to && !self.bug_on(super::inject::Bug::RetireDropsPointers) {
            let epoch = self.epochs[di];
            self.send(
                to,
                Msg::HomePointer {
                    txn: 0,
                    page,
                    home: at,
                    epoch,
                },
                None,
                out,
            );
            self.dir[di].set_moved_to(Some(to));
            self.stats.pointers_sent += 1;
        }
        false
    }

    /// Whether a home move is among entry `di`'s transactions.
    fn move_queued(&self, di: usize) -> bool {
        let mut at = self.dir[di].head();
        while let Some(h) = at {
            let t = self.txn(h);
            if t.move_to.is_some() {
                return true;
            }
            at = (t.next != super::txn::NIL16).then_some(t.next);
        }
        false
    }

    /// `HomePointer` from the leaving node: keep it unless this node knows of a newer move.
    pub(crate) fn on_home_pointer(
        &mut self,
        from: NodeId,
        li: usize,
        home: NodeId,
        epoch: u32,
    ) -> Result<Outcome, StepError> {
        let page = self.local_range.page(li);
        if self.retiring != Some((from, self.me)) || home == self.me || home == from {
            self.violate(
                "home pointer from a node that is not leaving to this one",
                page,
            );
            return Ok(Outcome::Done);
        }
        let Some(di) = self.home_range.index(page) else {
            self.violate("home pointer to a node that cannot be a home", page);
            return Ok(Outcome::Done);
        };
        if self.homed_here(page) || epoch <= self.epochs[di] {
            // This node's own entry is newer.
            self.stats.pointers_stale += 1;
            return Ok(Outcome::Done);
        }
        // The directory side only: this node's own idea of the home (its hint, which replies
        // within a transaction follow) comes from what the home tells it.
        self.epochs[di] = epoch;
        self.dir[di].set_moved_to(Some(home));
        self.stats.pointers_taken += 1;
        Ok(Outcome::Done)
    }
}
