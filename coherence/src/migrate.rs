//! Home migration (docs/protocol.md §12): moving a page's home — its directory entry and
//! the copy invariant H keeps there — from one node that contributes memory to another.
//!
//! The old home runs the move as a transaction of its own queue: a write on its own behalf
//! that, once every other copy is invalidated or surrendered (so nothing it sent about the
//! page is still unanswered), sends the page to the new home in one `HomeMove` and drops it,
//! instead of completing a local fault. Requests queued behind it, and any that reach the
//! old home later, are answered `Nack(Moved(new home))`; the requester asks the new home.

use super::action::{Action, Actions, DataSource, InstallSource};
use super::machine::{Machine, MoveRefusal, Outcome, StepError};
use super::msg::{MovedPage, Msg, NackReason};
use super::node::NodeId;
use super::records::{DeferredOp, Req, ReqKind};
use super::state::{DirState, PageAccess};
use super::txn::Txn;

impl Machine {
    /// `Input::MoveHome`: starts moving `page`'s home to `to`.
    pub(crate) fn on_move_home(
        &mut self,
        page: u64,
        to: NodeId,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        self.local_index(page)?;
        if !self.cfg.migration {
            return Ok(Outcome::MoveRefused(MoveRefusal::Off));
        }
        if !self.homed_here(page) {
            return Ok(Outcome::MoveRefused(MoveRefusal::NotHome));
        }
        if !self.move_target(to) {
            return Ok(Outcome::MoveRefused(MoveRefusal::Target));
        }
        let Some(di) = self.home_range.index(page) else {
            return Ok(Outcome::MoveRefused(MoveRefusal::NotHome));
        };
        if self.dir[di].busy() {
            return Ok(Outcome::MoveRefused(MoveRefusal::Busy));
        }
        if self.dir[di].state() == DirState::Lost {
            return Ok(Outcome::MoveRefused(MoveRefusal::Lost));
        }
        if self.drain.is_some() {
            // A leaving node moves its pages only to its successor (its drain does).
            return Ok(Outcome::MoveRefused(MoveRefusal::Target));
        }
        Ok(self.start_move(di, to, out))
    }

    /// Whether a page's home may move to `to`: another live home that is not leaving.
    pub(crate) fn move_target(&self, to: NodeId) -> bool {
        to != self.me
            && self.layout.homes().contains(to)
            && !self.dead.contains(to)
            && !self.leaving.contains(to)
    }

    /// Queues the move of idle entry `di`'s home to `to` (a valid target).
    pub(crate) fn start_move(&mut self, di: usize, to: NodeId, out: &mut Actions) -> Outcome {
        let txn = self.fresh_txn();
        let mut t = Txn::new(self.me, txn, ReqKind::Write, 0);
        t.move_to = Some(to);
        let Some(h) = self.txns.alloc(t) else {
            return Outcome::MoveRefused(MoveRefusal::Busy);
        };
        self.stats.moves_started += 1;
        self.enqueue_at(di, h, out);
        Outcome::MoveStarted
    }

    /// A transaction of this home that wanted the page for itself has it: complete the
    /// local request, or, for a move, hand the page over.
    pub(crate) fn home_granted(&mut self, di: usize, h: u16, acquired: bool, out: &mut Actions) {
        match self.txn(h).move_to {
            Some(to) => self.complete_move(di, to, out),
            None => {
                let page = self.home_range.page(di);
                self.local_granted(page, acquired, out);
            }
        }
    }

    /// The move's transaction holds the only copy (the directory says `Exclusive(me)` or
    /// `Zero`): send it to `to` with the entry, drop it, and point at the new home.
    pub(crate) fn complete_move(&mut self, di: usize, to: NodeId, out: &mut Actions) {
        let page = self.home_range.page(di);
        let state = self.dir[di].state();
        let version = self.dir[di].version();
        let acc = self.home_access(page);
        if self.dead.contains(to) || self.leaving.contains(to) {
            // The target died meanwhile (which stops the cluster, since it contributes
            // memory) or started to leave: keep the page here, writable, as the transaction
            // left it.
            if state == DirState::Exclusive(self.me) && acc == PageAccess::ReadOnly {
                out.push(Action::MakeWritable { page });
                self.set_home_access(page, PageAccess::Writable);
            }
            return;
        }
        let txn = self.home_txn_id(di);
        let zero = state == DirState::Zero;
        if !zero && acc == PageAccess::Writable {
            out.push(Action::WriteProtect { page });
        }
        let content = if zero {
            MovedPage::Zero
        } else {
            MovedPage::Page
        };
        self.hand_over(di, to, txn, version, content, out);
        if !zero {
            out.push(Action::Drop { page });
            self.set_home_access(page, PageAccess::Invalid);
        }
    }

    /// Sends entry `di`'s page to `to` as its new home and leaves a pointer to it: the
    /// entry's last step of a move (the page itself, if any, is the caller's to drop).
    pub(crate) fn hand_over(
        &mut self,
        di: usize,
        to: NodeId,
        txn: u64,
        version: u32,
        content: MovedPage,
        out: &mut Actions,
    ) {
        let page = self.home_range.page(di);
        let epoch = self.epochs[di].saturating_add(1);
        let msg = Msg::HomeMove {
            txn,
            page,
            version,
            epoch,
            content,
        };
        let data = (content == MovedPage::Page).then_some(DataSource::Local);
        self.send(to, msg, data, out);
        let by_layout = self.layout.home_of(page) == Ok(self.me);
        self.epochs[di] = epoch;
        let e = &mut self.dir[di];
        e.set(DirState::Zero);
        e.set_version(0);
        e.set_flipped(by_layout);
        e.set_moved_to(Some(to));
        if let Some(li) = self.local_range.index(page) {
            self.set_hint(li, to);
            // A kick still pending for a home transaction that waited on this node's window
            // (its requester died) has nothing left to kick: as a plain holder from now on,
            // the record's deferred slot is for the new home's orders.
            if let Some(ri) = self.local[li].record() {
                if self.rec(ri).deferred.map(|d| d.op) == Some(DeferredOp::HomeTxn) {
                    self.rec_mut(ri).deferred = None;
                    self.rec_maybe_free(ri);
                }
            }
        }
        self.stats.moves_out += 1;
    }

    /// The id of the head transaction of entry `di` (0 when idle).
    fn home_txn_id(&self, di: usize) -> u64 {
        self.dir[di].head().map_or(0, |h| self.txn(h).req_txn)
    }

    /// A request or eviction for a page this node is not the home of: point the sender at
    /// the home if this node moved it away, else ask it to retry (the page may be on its way
    /// here).
    pub(crate) fn redirect(&mut self, to: NodeId, page: u64, txn: u64, out: &mut Actions) {
        let moved = self
            .home_range
            .index(page)
            .and_then(|di| self.dir[di].moved_to());
        let reason = match moved {
            Some(n) => {
                self.stats.redirects += 1;
                NackReason::Moved(n)
            }
            None => {
                self.stats.nacks_busy += 1;
                NackReason::Busy
            }
        };
        self.send(to, Msg::Nack { txn, page, reason }, None, out);
    }

    /// Queued transaction `h` reached the head after the page's home moved away.
    pub(crate) fn redirect_queued(&mut self, h: u16, page: u64, out: &mut Actions) {
        let t = *self.txn(h);
        if t.move_to.is_some() {
            // A second move queued behind the first: there is nothing left to move.
            return;
        }
        if t.requester != self.me {
            self.redirect(t.requester, page, t.req_txn, out);
            return;
        }
        // This node's own request waited in its own queue: ask the new home.
        let Some(ri) = self
            .local_range
            .index(page)
            .and_then(|li| self.local[li].record())
        else {
            return;
        };
        if matches!(self.rec(ri).req, Req::Pending { txn, .. } if txn == t.req_txn) {
            self.rec_mut(ri).req = Req::Idle;
            self.issue(ri, out);
            self.rec_maybe_free(ri);
        }
    }

    /// `HomeMove` from the old home: this node is the page's home from now on.
    pub(crate) fn on_home_move(
        &mut self,
        li: usize,
        version: u32,
        epoch: u32,
        content: MovedPage,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let page = self.local_range.page(li);
        let Some(di) = self.home_range.index(page) else {
            self.violate("home move to a node that cannot be a home", page);
            return Ok(Outcome::Done);
        };
        if self.homed_here(page) || self.dir[di].busy() {
            self.violate("home move for a page already homed here", page);
            return Ok(Outcome::Done);
        }
        let known_lost = content == MovedPage::Lost && self.local[li].access() == PageAccess::Lost;
        if self.local[li].access() != PageAccess::Invalid && !known_lost {
            self.violate("home move for a page this node maps", page);
            return Ok(Outcome::Done);
        }
        if epoch <= self.epochs[di] {
            self.violate("home move older than a move this node knows of", page);
            return Ok(Outcome::Done);
        }
        let by_layout = self.layout.home_of(page) == Ok(self.me);
        self.epochs[di] = epoch;
        let e = &mut self.dir[di];
        e.set_flipped(!by_layout);
        e.set_moved_to(None);
        e.set_version(version);
        match content {
            MovedPage::Zero => e.set(DirState::Zero),
            MovedPage::Lost => {
                e.set(DirState::Lost);
                self.local[li].set_access(PageAccess::Lost);
            }
            MovedPage::Page => {
                e.set(DirState::Exclusive(self.me));
                out.push(Action::Install {
                    page,
                    writable: true,
                    source: InstallSource::Payload,
                });
                self.local[li].set_access(PageAccess::Writable);
                self.stats.installs += 1;
            }
        }
        self.set_hint(li, self.me);
        self.stats.moves_in += 1;
        if let Some(d) = self.drain.as_mut() {
            // A move that left its old home before the leave began: pass it on.
            d.done = false;
        }
        Ok(Outcome::Done)
    }
}
