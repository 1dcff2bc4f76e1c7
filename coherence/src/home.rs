//! The home side of the protocol: the per-page transaction queue, the
//! transition table of `docs/protocol.md` §5, and the replies the home
//! collects (acks, forwarded-data confirmations, recalls, evictions).

use super::action::{Action, Actions, DataSource, FailReason, InstallSource};
use super::inject::Bug;
use super::machine::{Machine, Outcome, StepError};
use super::msg::{FwdOutcome, Msg, NackReason, RecallHave};
use super::node::{NodeId, NodeSet};
use super::records::{DeferredOp, ReqKind};
use super::state::{DirState, PageAccess, VERSION_MASK};
use super::txn::{Phase, Txn, NIL16};

impl Machine {
    /// A request from a peer.
    pub(crate) fn on_request(
        &mut self,
        from: NodeId,
        page: u64,
        kind: ReqKind,
        txn: u64,
        ver13: u16,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        if !self.homed_here(page) {
            // Home migration: not (or no longer) the home.
            self.redirect(from, page, txn, out);
            return Ok(Outcome::Done);
        }
        if !self.home_enqueue(page, from, kind, txn, ver13, out) {
            self.stats.nacks_busy += 1;
            let nack = Msg::Nack {
                txn,
                page,
                reason: NackReason::Busy,
            };
            self.send(from, nack, None, out);
        }
        Ok(Outcome::Done)
    }

    /// Queues a request at this home and starts it if the page is idle.
    /// False when the transaction pool is full.
    pub(crate) fn home_enqueue(
        &mut self,
        page: u64,
        requester: NodeId,
        kind: ReqKind,
        txn: u64,
        ver13: u16,
        out: &mut Actions,
    ) -> bool {
        let Some(di) = self.home_range.index(page) else {
            return false;
        };
        if !self.homed_here(page) {
            return false;
        }
        let Some(h) = self.txns.alloc(Txn::new(requester, txn, kind, ver13)) else {
            return false;
        };
        self.enqueue_at(di, h, out);
        true
    }

    /// Appends transaction `h` to page `di`'s queue and starts it if the page is idle.
    pub(crate) fn enqueue_at(&mut self, di: usize, h: u16, out: &mut Actions) {
        match self.dir[di].head() {
            None => {
                self.dir[di].set_head(Some(h));
                self.txn_mut(h).tail = h;
                self.run_queue(di, out);
            }
            Some(head) => {
                let tail = self.txn(head).tail;
                self.txn_mut(tail).next = h;
                self.txn_mut(head).tail = h;
            }
        }
    }

    /// Starts queued transactions until one has to wait.
    fn run_queue(&mut self, di: usize, out: &mut Actions) {
        while let Some(h) = self.dir[di].head() {
            if self.txn(h).phase != Phase::Queued {
                break;
            }
            let r = self.txn(h).requester;
            let complete = if r != self.me && self.dead.contains(r) {
                true
            } else {
                self.begin(di, h, out)
            };
            if !complete {
                break;
            }
            self.pop_head(di);
        }
        if let Some(page) = self.reissue_local.take() {
            if let Some(ri) = self
                .local_range
                .index(page)
                .and_then(|li| self.local[li].record())
            {
                self.issue(ri, out);
                self.rec_maybe_free(ri);
            }
        }
    }

    /// The head transaction completed: start the next.
    pub(crate) fn finish(&mut self, di: usize, out: &mut Actions) {
        self.pop_head(di);
        self.run_queue(di, out);
    }

    fn pop_head(&mut self, di: usize) {
        let Some(h) = self.dir[di].head() else {
            return;
        };
        let t = *self.txn(h);
        if t.next == NIL16 {
            self.dir[di].set_head(None);
        } else {
            self.txn_mut(t.next).tail = t.tail;
            self.dir[di].set_head(Some(t.next));
        }
        self.txns.free(h);
    }

    /// The home's residency window ended: resume a transaction waiting on it.
    pub(crate) fn home_kick(&mut self, page: u64, out: &mut Actions) {
        let Some(di) = self.home_range.index(page) else {
            return;
        };
        if !self.homed_here(page) {
            return;
        }
        if let Some(h) = self.dir[di].head() {
            if self.txn(h).phase == Phase::WaitHome {
                let t = self.txn_mut(h);
                t.phase = Phase::Queued;
                t.resumed = true;
                self.run_queue(di, out);
            }
        }
    }

    /// Starts the head transaction; true when it completed at once.
    fn begin(&mut self, di: usize, h: u16, out: &mut Actions) -> bool {
        let page = self.home_range.page(di);
        let t = *self.txn(h);
        let me = self.me;
        let r = t.requester;
        if !self.homed_here(page) {
            // The page's home moved away while this request waited behind the move.
            self.redirect_queued(h, page, out);
            return true;
        }
        if !t.resumed {
            self.stats.txns += 1;
        }
        if let DirState::Exclusive(o) = self.dir[di].state() {
            if o != me && self.dead.contains(o) {
                self.mark_lost(di, out);
            }
        }
        let st = self.dir[di].state();
        if st == DirState::Lost {
            self.answer_lost(di, h, out);
            return true;
        }
        let is_write = t.is_write();
        let home_acc = self.home_access(page);
        if r == me
            && (home_acc == PageAccess::Writable || (home_acc == PageAccess::ReadOnly && !is_write))
        {
            // An earlier transaction already gave the home what it asked for.
            self.home_granted(di, h, false, out);
            return true;
        }
        // Does this transaction downgrade or drop the home's own copy?
        let takes_home = r != me
            && match st {
                DirState::Exclusive(o) => o == me,
                DirState::Shared(_) => is_write,
                DirState::Zero | DirState::Lost => false,
            };
        if takes_home && !t.resumed && self.home_window(page) {
            self.txn_mut(h).phase = Phase::WaitHome;
            return false;
        }
        match st {
            DirState::Lost => true,
            DirState::Zero => self.serve_zero(di, h, out),
            DirState::Shared(s) => self.serve_shared(di, h, s, out),
            DirState::Exclusive(o) => self.serve_exclusive(di, h, o, out),
        }
    }

    /// A request for a page nobody holds (all zeros).
    fn serve_zero(&mut self, di: usize, h: u16, out: &mut Actions) -> bool {
        let page = self.home_range.page(di);
        let t = *self.txn(h);
        let (me, r, txn) = (self.me, t.requester, t.req_txn);
        let v = self.dir[di].version();
        let is_write = t.is_write();
        if let Some(to) = t.move_to {
            self.complete_move(di, to, out);
            true
        } else if r == me {
            out.push(Action::Install {
                page,
                writable: true,
                source: InstallSource::Zero,
            });
            self.set_home_access(page, PageAccess::Writable);
            self.stats.installs += 1;
            self.dir[di].set_version(v.wrapping_add(1));
            self.set_dir(di, DirState::Exclusive(me));
            self.local_granted(page, true, out);
            true
        } else if !is_write {
            // Materialise the home copy so the page is Shared with the home.
            out.push(Action::Install {
                page,
                writable: false,
                source: InstallSource::Zero,
            });
            self.set_home_access(page, PageAccess::ReadOnly);
            self.stats.installs += 1;
            self.send(
                r,
                data_msg(txn, page, v, false),
                Some(DataSource::Zero),
                out,
            );
            self.set_dir(di, DirState::Shared(NodeSet::single(me).with(r)));
            true
        } else {
            let nv = v.wrapping_add(1);
            self.dir[di].set_version(nv);
            self.send(
                r,
                data_msg(txn, page, nv, true),
                Some(DataSource::Zero),
                out,
            );
            self.set_dir(di, DirState::Exclusive(r));
            true
        }
    }

    /// A request for a page held read-only by the sharers `s`.
    fn serve_shared(&mut self, di: usize, h: u16, s: NodeSet, out: &mut Actions) -> bool {
        let page = self.home_range.page(di);
        let t = *self.txn(h);
        let (me, r, txn) = (self.me, t.requester, t.req_txn);
        let v = self.dir[di].version();
        let is_write = t.is_write();
        if !is_write {
            // A listed requester may have dropped its copy after an
            // eviction (sharer sets may be supersets): it gets data like
            // anyone else.
            if r == me {
                self.violate("home read miss on a page it shares", page);
            } else {
                self.send(
                    r,
                    data_msg(txn, page, v, false),
                    Some(DataSource::Local),
                    out,
                );
                self.set_dir(di, DirState::Shared(s.with(r)));
            }
            true
        } else {
            // A listed requester that sends an upgrade holds a read-only
            // copy, which is current: any write since would have removed
            // it from the set. One that sends a write dropped its copy.
            let upgrade_grant = r != me && t.kind == ReqKind::Upgrade && s.contains(r);
            if upgrade_grant && (v & VERSION_MASK) != u32::from(t.ver13) {
                self.violate("upgrade of a copy whose version is not current", page);
            }
            let mut targets = self.live(s.without(me).without(r));
            if t.move_to.is_some() && self.bug_on(Bug::MoveKeepsSharers) {
                // Injected bug: move the home while other nodes keep their copies.
                targets = NodeSet::EMPTY;
            }
            for x in targets.iter() {
                self.stats.invalidations += 1;
                self.send(
                    x,
                    Msg::Inv {
                        txn,
                        page,
                        requester: r,
                    },
                    None,
                    out,
                );
            }
            let mut pending = targets;
            if self.bug_on(Bug::SkipInvAckWait) {
                // Injected bug: do not wait for the last sharer's ack.
                let last = pending.iter().last();
                if let Some(x) = last {
                    pending.remove(x);
                }
            }
            let tx = self.txn_mut(h);
            tx.upgrade_grant = upgrade_grant;
            tx.pending = pending;
            if pending.is_empty() {
                self.grant_write(di, h, out);
                true
            } else {
                self.txn_mut(h).phase = Phase::Invalidating;
                false
            }
        }
    }

    /// A request for a page the node `o` holds writable.
    fn serve_exclusive(&mut self, di: usize, h: u16, o: NodeId, out: &mut Actions) -> bool {
        let page = self.home_range.page(di);
        let t = *self.txn(h);
        let (me, r, txn) = (self.me, t.requester, t.req_txn);
        let v = self.dir[di].version();
        let is_write = t.is_write();
        if o == me && !is_write {
            out.push(Action::WriteProtect { page });
            self.set_home_access(page, PageAccess::ReadOnly);
            self.send(
                r,
                data_msg(txn, page, v, false),
                Some(DataSource::Local),
                out,
            );
            self.set_dir(di, DirState::Shared(NodeSet::single(me).with(r)));
            true
        } else if o == me {
            let nv = v.wrapping_add(1);
            self.dir[di].set_version(nv);
            out.push(Action::WriteProtect { page });
            self.send(
                r,
                data_msg(txn, page, nv, true),
                Some(DataSource::Local),
                out,
            );
            out.push(Action::Drop { page });
            self.set_home_access(page, PageAccess::Invalid);
            self.set_dir(di, DirState::Exclusive(r));
            true
        } else {
            if o == r {
                self.violate("request from the node the directory lists as owner", page);
                let nack = Msg::Nack {
                    txn,
                    page,
                    reason: NackReason::Busy,
                };
                self.send(r, nack, None, out);
                return true;
            }
            let nv = if is_write { v.wrapping_add(1) } else { v };
            let msg = if is_write {
                Msg::FwdWrite {
                    txn,
                    page,
                    requester: r,
                    version: nv,
                }
            } else {
                Msg::FwdRead {
                    txn,
                    page,
                    requester: r,
                    version: v,
                }
            };
            self.stats.forwards += 1;
            self.send(o, msg, None, out);
            let skip_done = self.bug_on(Bug::HomeSkipsDoneWait);
            let tx = self.txn_mut(h);
            tx.phase = Phase::Forwarded;
            tx.owner = o;
            tx.new_version = nv;
            tx.await_fwd_ack = true;
            tx.await_done = r != me && !skip_done;
            false
        }
    }

    /// All invalidations acknowledged: give the requester write access.
    pub(crate) fn grant_write(&mut self, di: usize, h: u16, out: &mut Actions) {
        let page = self.home_range.page(di);
        let t = *self.txn(h);
        let me = self.me;
        let r = t.requester;
        if t.req_gone || (r != me && self.dead.contains(r)) {
            // Requester died meanwhile: the home keeps the only copy.
            self.set_dir(di, DirState::Shared(NodeSet::single(me)));
            return;
        }
        let nv = self.dir[di].version().wrapping_add(1);
        self.dir[di].set_version(nv);
        if let Some(to) = t.move_to {
            // Every other copy is gone: the home's read-only copy is the page.
            self.set_dir(di, DirState::Exclusive(me));
            self.complete_move(di, to, out);
            return;
        }
        if r == me {
            out.push(Action::MakeWritable { page });
            self.set_home_access(page, PageAccess::Writable);
            self.set_dir(di, DirState::Exclusive(me));
            self.local_granted(page, true, out);
            return;
        }
        let txn = t.req_txn;
        if t.upgrade_grant {
            self.stats.upgrades += 1;
            let grant = Msg::Grant {
                txn,
                page,
                version: nv,
            };
            self.send(r, grant, None, out);
        } else {
            self.send(
                r,
                data_msg(txn, page, nv, true),
                Some(DataSource::Local),
                out,
            );
        }
        out.push(Action::Drop { page });
        self.set_home_access(page, PageAccess::Invalid);
        self.set_dir(di, DirState::Exclusive(r));
    }

    pub(crate) fn on_inv_ack(
        &mut self,
        from: NodeId,
        page: u64,
        txn: u64,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let Some((di, h)) = self.head_of(page) else {
            return Ok(self.unexpected(
                "invalidation ack for an idle page",
                page,
                Bug::SkipInvAckWait,
            ));
        };
        let t = *self.txn(h);
        if t.phase != Phase::Invalidating || t.req_txn != txn || !t.pending.contains(from) {
            return Ok(self.unexpected("unexpected invalidation ack", page, Bug::SkipInvAckWait));
        }
        self.txn_mut(h).pending.remove(from);
        if self.txn(h).pending.is_empty() {
            self.grant_write(di, h, out);
            self.finish(di, out);
        }
        Ok(Outcome::Done)
    }

    pub(crate) fn on_fwd_ack(
        &mut self,
        from: NodeId,
        page: u64,
        txn: u64,
        outcome: FwdOutcome,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let Some((di, h)) = self.head_of(page) else {
            self.violate("forward ack for an idle page", page);
            return Ok(Outcome::Done);
        };
        let t = *self.txn(h);
        if t.phase != Phase::Forwarded || t.owner != from || t.req_txn != txn || !t.await_fwd_ack {
            self.violate("unexpected forward ack", page);
            return Ok(Outcome::Done);
        }
        let me = self.me;
        let to_home = t.requester == me;
        let (install, writable, kept, gone) = match outcome {
            FwdOutcome::Shared if !t.is_write() => (true, false, true, false),
            FwdOutcome::HandedOff if t.is_write() && !to_home => (false, false, false, false),
            FwdOutcome::Surrendered if t.is_write() && to_home => (true, true, false, false),
            FwdOutcome::RequesterGone if !to_home => (true, false, true, true),
            _ => {
                self.violate("forward ack does not match the forward", page);
                return Ok(Outcome::Done);
            }
        };
        if install {
            if self.home_access(page) != PageAccess::Invalid {
                self.violate("forward ack data for a page the home maps", page);
                return Ok(Outcome::Done);
            }
            out.push(Action::Install {
                page,
                writable,
                source: InstallSource::Payload,
            });
            self.stats.installs += 1;
            self.set_home_access(
                page,
                if writable {
                    PageAccess::Writable
                } else {
                    PageAccess::ReadOnly
                },
            );
        }
        let tx = self.txn_mut(h);
        tx.await_fwd_ack = false;
        tx.home_has |= install;
        tx.kept = kept;
        tx.req_gone |= gone;
        self.try_finish_forward(di, h, out);
        Ok(Outcome::Done)
    }

    /// Completes a forwarded transaction once nothing more is awaited.
    pub(crate) fn try_finish_forward(&mut self, di: usize, h: u16, out: &mut Actions) {
        let page = self.home_range.page(di);
        let t = *self.txn(h);
        let me = self.me;
        let r = t.requester;
        let r_gone = t.req_gone || (r != me && self.dead.contains(r));
        if t.await_fwd_ack || (t.await_done && !r_gone) {
            return;
        }
        if r_gone {
            self.resolve_without_requester(di, h, out);
        } else if !t.is_write() {
            if !t.home_has {
                self.violate("read forward completed without a home copy", page);
            }
            let mut s = NodeSet::single(me);
            if t.kept {
                s.insert(t.owner);
            }
            if r != me {
                s.insert(r);
            }
            self.set_dir(di, DirState::Shared(s));
            if r == me {
                self.local_granted(page, true, out);
            }
        } else {
            self.dir[di].set_version(t.new_version);
            self.set_dir(di, DirState::Exclusive(r));
            if r == me {
                self.home_granted(di, h, true, out);
            }
        }
        self.finish(di, out);
    }

    /// The requester of a forwarded transaction is gone: keep what the home
    /// holds, or lose the page.
    pub(crate) fn resolve_without_requester(&mut self, di: usize, h: u16, out: &mut Actions) {
        let t = *self.txn(h);
        if t.home_has {
            let mut s = NodeSet::single(self.me);
            if t.kept {
                s.insert(t.owner);
            }
            self.set_dir(di, DirState::Shared(s));
        } else {
            self.mark_lost(di, out);
        }
    }

    pub(crate) fn on_done(
        &mut self,
        from: NodeId,
        page: u64,
        txn: u64,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let Some((di, h)) = self.head_of(page) else {
            return Ok(self.unexpected("done for an idle page", page, Bug::HomeSkipsDoneWait));
        };
        let t = *self.txn(h);
        if t.requester != from || t.req_txn != txn {
            return Ok(self.unexpected("unexpected done", page, Bug::HomeSkipsDoneWait));
        }
        match t.phase {
            Phase::Forwarded if t.await_done => {
                self.txn_mut(h).await_done = false;
                self.try_finish_forward(di, h, out);
            }
            // The requester installed the data before it saw the recall; its
            // RecallAck follows on the same connection and says whether it
            // still holds the copy.
            Phase::Recalling if t.await_done => self.txn_mut(h).await_done = false,
            _ => return Ok(self.unexpected("unexpected done", page, Bug::HomeSkipsDoneWait)),
        }
        Ok(Outcome::Done)
    }

    pub(crate) fn on_recall_ack(
        &mut self,
        from: NodeId,
        page: u64,
        txn: u64,
        have: RecallHave,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let Some((di, h)) = self.head_of(page) else {
            self.violate("recall ack for an idle page", page);
            return Ok(Outcome::Done);
        };
        let t = *self.txn(h);
        if t.phase != Phase::Recalling || t.requester != from || t.req_txn != txn {
            self.violate("unexpected recall ack", page);
            return Ok(Outcome::Done);
        }
        let me = self.me;
        // Done seen before this answer: the requester installed the grant and
        // waits for nothing more from this transaction. It cannot have lost
        // the copy since (an eviction is refused while the page is busy), so
        // "nothing" is a violation; the page is still settled safely.
        let installed = !t.await_done;
        match (t.is_write(), have) {
            (false, RecallHave::Nothing) if installed => {
                self.violate("requester lost a read grant during a recall", page);
                if t.home_has {
                    self.set_dir(di, DirState::Shared(NodeSet::single(me)));
                } else {
                    self.mark_lost(di, out);
                }
            }
            (false, RecallHave::Copy) => {
                if !t.home_has {
                    if self.home_access(page) != PageAccess::Invalid {
                        self.violate("recall data for a page the home maps", page);
                        return Ok(Outcome::Done);
                    }
                    out.push(Action::Install {
                        page,
                        writable: false,
                        source: InstallSource::Payload,
                    });
                    self.stats.installs += 1;
                    self.set_home_access(page, PageAccess::ReadOnly);
                }
                self.set_dir(di, DirState::Shared(NodeSet::single(me).with(from)));
            }
            (false, RecallHave::Nothing) if t.home_has => {
                self.send(
                    from,
                    data_msg(txn, page, self.dir[di].version(), false),
                    Some(DataSource::Local),
                    out,
                );
                self.set_dir(di, DirState::Shared(NodeSet::single(me).with(from)));
            }
            (true, RecallHave::Exclusive) => {
                self.dir[di].set_version(t.new_version);
                self.set_dir(di, DirState::Exclusive(from));
            }
            (true, RecallHave::Nothing) if installed => {
                self.violate("requester lost a writable grant during a recall", page);
                self.mark_lost(di, out);
            }
            (_, RecallHave::Nothing) => {
                self.mark_lost(di, out);
                let nack = Msg::Nack {
                    txn,
                    page,
                    reason: NackReason::Lost,
                };
                self.send(from, nack, None, out);
            }
            _ => {
                self.violate("recall answer does not match the request", page);
                return Ok(Outcome::Done);
            }
        }
        self.finish(di, out);
        Ok(Outcome::Done)
    }

    pub(crate) fn on_evict_req(
        &mut self,
        from: NodeId,
        page: u64,
        txn: u64,
        dirty: bool,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let Some(di) = self.home_range.index(page) else {
            return Ok(Outcome::Done);
        };
        if !self.homed_here(page) {
            // Home migration: not (or no longer) the home. The evicting node keeps its copy
            // and learns where the home is, if this node knows.
            self.redirect(from, page, txn, out);
            return Ok(Outcome::Done);
        }
        let busy_nack = Msg::Nack {
            txn,
            page,
            reason: NackReason::Busy,
        };
        if self.dir[di].busy() {
            // The home cannot queue the payload: refuse, the node keeps its
            // copy. (Even when the transaction hands the page to a node that
            // then dies, this payload is not used: the dead node may have
            // written newer contents before dying.)
            self.stats.nacks_busy += 1;
            self.send(from, busy_nack, None, out);
            return Ok(Outcome::Done);
        }
        let me = self.me;
        match self.dir[di].state() {
            // Idle, so the home holds a valid copy (invariant H). The node
            // stays listed: it maps its copy until the ack arrives, and a
            // later invalidation is acked without one.
            DirState::Shared(s) if !dirty && s.contains(from) && from != me => {}
            DirState::Exclusive(o) if dirty && o == from => {
                if self.home_access(page) != PageAccess::Invalid {
                    self.violate("write-back for a page the home maps", page);
                    self.send(from, busy_nack, None, out);
                    return Ok(Outcome::Done);
                }
                let source = if self.bug_on(Bug::DropWriteBack) {
                    InstallSource::Zero
                } else {
                    InstallSource::Payload
                };
                out.push(Action::Install {
                    page,
                    writable: false,
                    source,
                });
                self.stats.installs += 1;
                self.set_home_access(page, PageAccess::ReadOnly);
                // The node still maps its write-protected copy until the ack
                // arrives: it stays a sharer (a superset entry once it drops).
                self.set_dir(di, DirState::Shared(NodeSet::single(me).with(from)));
            }
            _ if self.cfg.migration => {
                // Home migration: an eviction sent to this node in an earlier spell as the
                // page's home, slow enough to arrive after the home went away and came back.
                // The copy it names was invalidated when the home left (a move collects every
                // copy), and the node cannot have asked for another while its eviction is
                // outstanding: refuse it like a busy one.
                self.stats.late_messages += 1;
                self.send(from, busy_nack, None, out);
                return Ok(Outcome::Done);
            }
            _ => {
                self.violate("eviction of a copy the directory does not record", page);
                self.send(from, busy_nack, None, out);
                return Ok(Outcome::Done);
            }
        }
        self.send(from, Msg::EvictAck { txn, page }, None, out);
        Ok(Outcome::Done)
    }

    // ---- helpers ----

    /// The page is lost: notice, and the home's own access is `Lost`.
    pub(crate) fn mark_lost(&mut self, di: usize, out: &mut Actions) {
        let page = self.home_range.page(di);
        self.set_dir(di, DirState::Lost);
        self.set_home_access(page, PageAccess::Lost);
        self.stats.pages_lost += 1;
        out.push(Action::PageLost { page });
    }

    /// Answers a request on a lost page.
    fn answer_lost(&mut self, di: usize, h: u16, out: &mut Actions) {
        let page = self.home_range.page(di);
        let t = *self.txn(h);
        if t.requester == self.me {
            self.local_failed(page, FailReason::Lost, out);
        } else {
            let nack = Msg::Nack {
                txn: t.req_txn,
                page,
                reason: NackReason::Lost,
            };
            self.send(t.requester, nack, None, out);
        }
    }

    /// Sets the directory state; sharer sets never keep dead nodes.
    pub(crate) fn set_dir(&mut self, di: usize, st: DirState) {
        let st = match st {
            DirState::Shared(s) => DirState::Shared(self.live(s)),
            other => other,
        };
        self.dir[di].set(st);
    }

    /// `s` without the nodes known dead.
    pub(crate) fn live(&self, s: NodeSet) -> NodeSet {
        if self.bug_on(Bug::KeepDeadSharers) {
            s
        } else {
            s.minus(self.dead)
        }
    }

    pub(crate) fn home_access(&self, page: u64) -> PageAccess {
        self.local_range
            .index(page)
            .map_or(PageAccess::Invalid, |li| self.local[li].access())
    }

    pub(crate) fn set_home_access(&mut self, page: u64, a: PageAccess) {
        if let Some(li) = self.local_range.index(page) {
            self.local[li].set_access(a);
        }
    }

    /// Whether the home's own copy of `page` is inside its residency window;
    /// if so the head transaction waits for it (deferred `HomeTxn`).
    fn home_window(&mut self, page: u64) -> bool {
        let Some(ri) = self
            .local_range
            .index(page)
            .and_then(|li| self.local[li].record())
        else {
            return false;
        };
        self.count_ping_pong(ri);
        if !self.in_window(ri) {
            return false;
        }
        // A kick may already be pending (its transaction was dropped when the
        // requester died); it only restarts the queue, so it serves this one.
        if self.rec(ri).deferred.map(|d| d.op) != Some(DeferredOp::HomeTxn) {
            self.defer(ri, DeferredOp::HomeTxn, self.me, 0, 0);
        }
        true
    }

    fn head_of(&self, page: u64) -> Option<(usize, u16)> {
        let di = self.home_range.index(page)?;
        Some((di, self.dir[di].head()?))
    }

    /// A reply that matches no transaction: a violation, except under the
    /// injected bug that makes it expected.
    fn unexpected(&mut self, what: &'static str, page: u64, bug: Bug) -> Outcome {
        if !self.bug_on(bug) {
            self.violate(what, page);
        }
        Outcome::Done
    }

    pub(crate) fn txn(&self, h: u16) -> &Txn {
        &self.txns.items[usize::from(h)]
    }

    pub(crate) fn txn_mut(&mut self, h: u16) -> &mut Txn {
        &mut self.txns.items[usize::from(h)]
    }
}

/// A `Data` message carrying the page at `version`.
fn data_msg(txn: u64, page: u64, version: u32, writable: bool) -> Msg {
    Msg::Data {
        txn,
        page,
        version,
        writable,
    }
}
