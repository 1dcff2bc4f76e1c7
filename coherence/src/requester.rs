//! The requester/holder side of the protocol: local faults, the replies to
//! this node's requests, the invalidations, forwards and recalls it must
//! serve, and evictions. See `docs/protocol.md` §6.

use super::action::{Action, Actions, DataSource, FailReason, InstallSource};
use super::machine::{Access, EvictRefusal, Machine, Outcome, StepError};
use super::msg::{FwdOutcome, Msg, NackReason, RecallHave};
use super::node::NodeId;
use super::records::{DeferredOp, Req, ReqKind, TIMER_RETRY};
use super::state::{PageAccess, VERSION_MASK};
use super::waiters::allows;

impl Machine {
    pub(crate) fn on_fault(
        &mut self,
        page: u64,
        access: Access,
        token: u64,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let li = self.local_index(page)?;
        self.stats.faults += 1;
        if self.bug_on(super::inject::Bug::FloodActions) {
            for _ in 0..=out.capacity() {
                out.push(Action::WriteProtect { page });
            }
        }
        let write = access == Access::Write;
        let acc = self.local[li].access();
        if allows(acc, write) {
            out.push(Action::Wake { page });
            out.push(Action::FaultDone { page, token });
            return Ok(Outcome::Done);
        }
        if acc == PageAccess::Lost {
            out.push(Action::FaultFailed {
                page,
                token,
                reason: FailReason::Lost,
            });
            return Ok(Outcome::Done);
        }
        let (ri, fresh) = match self.local[li].record() {
            Some(ri) => (ri, false),
            None => match self.rec_alloc(li, page) {
                Some(ri) => (ri, true),
                None => {
                    self.stats.faults_busy += 1;
                    return Ok(Outcome::Busy);
                }
            },
        };
        if !self.add_waiter(ri, token, write) {
            if fresh {
                self.rec_maybe_free(ri);
            }
            self.stats.faults_busy += 1;
            return Ok(Outcome::Busy);
        }
        if self.rec(ri).req == Req::Idle {
            self.issue(ri, out);
        } else {
            self.stats.faults_coalesced += 1;
        }
        Ok(Outcome::Done)
    }

    pub(crate) fn on_prefetch(
        &mut self,
        page: u64,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let li = self.local_index(page)?;
        let home = self.home_now(page)?;
        let idle =
            self.local[li].access() == PageAccess::Invalid && self.local[li].record().is_none();
        // Faults keep a quarter of the records: a prefetch never makes one wait.
        let spare = self.recs.free_count() > self.recs.recs.len() / 4;
        if home == self.me || self.dead.contains(home) || !idle || !spare {
            return Ok(Outcome::Ignored);
        }
        let Some(ri) = self.rec_alloc(li, page) else {
            return Ok(Outcome::Ignored);
        };
        // A read with no waiter: the reply installs a read-only replica and frees the record
        // (after its hold); a fault arriving meanwhile joins it like any coalesced fault; a
        // busy refusal drops it (the retry finds no waiter to issue for).
        let txn = self.fresh_txn();
        self.stats.requests += 1;
        self.stats.prefetches += 1;
        let r = self.rec_mut(ri);
        r.req = Req::Pending {
            kind: ReqKind::Read,
            txn,
        };
        r.asked = home;
        r.recalled = false;
        self.send(home, Msg::ReadReq { txn, page }, None, out);
        Ok(Outcome::PrefetchStarted)
    }

    pub(crate) fn on_evict(&mut self, page: u64, out: &mut Actions) -> Result<Outcome, StepError> {
        let li = self.local_index(page)?;
        let home = self.home_now(page)?;
        if home == self.me {
            return Ok(Outcome::EvictRefused(EvictRefusal::HomeOwned));
        }
        let acc = self.local[li].access();
        if !matches!(acc, PageAccess::ReadOnly | PageAccess::Writable) {
            return Ok(Outcome::EvictRefused(EvictRefusal::NotHeld));
        }
        let ri = match self.local[li].record() {
            Some(ri) => {
                let r = self.rec(ri);
                if r.req != Req::Idle
                    || r.n_waiters > 0
                    || r.deferred.is_some()
                    || self.in_window(ri)
                {
                    return Ok(Outcome::EvictRefused(EvictRefusal::Busy));
                }
                ri
            }
            None => match self.rec_alloc(li, page) {
                Some(ri) => ri,
                None => return Ok(Outcome::EvictRefused(EvictRefusal::Busy)),
            },
        };
        let txn = self.fresh_txn();
        // The copy is kept until the home answers: it may be the only one
        // while a recall is pending, and a crossing forward is served from it.
        let dirty = acc == PageAccess::Writable;
        if dirty {
            out.push(Action::WriteProtect { page });
            self.local[li].set_access(PageAccess::ReadOnly);
            self.stats.evictions_dirty += 1;
        } else {
            self.stats.evictions_clean += 1;
        }
        let r = self.rec_mut(ri);
        r.req = Req::Evicting { txn, dirty };
        r.asked = home;
        r.acquired_at = None;
        let msg = Msg::EvictReq { txn, page, dirty };
        self.send(home, msg, dirty.then_some(DataSource::Local), out);
        Ok(Outcome::EvictStarted)
    }

    pub(crate) fn on_data(
        &mut self,
        li: usize,
        from: NodeId,
        txn: u64,
        version: u32,
        writable: bool,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let page = self.local_range.page(li);
        let home = self.home_now(page)?;
        let pending = self.local[li]
            .record()
            .and_then(|ri| match self.rec(ri).req {
                Req::Pending { kind, txn: t } if t == txn => Some((ri, kind)),
                _ => None,
            });
        let Some((ri, kind)) = pending else {
            if from != home && txn < self.peek_txn() {
                // Data from a forward whose owner died: the home recalled the
                // request and already answered it; this copy arrived late.
                self.stats.late_messages += 1;
                return Ok(Outcome::Ignored);
            }
            self.violate("data for a transaction that is not outstanding", page);
            return Ok(Outcome::Done);
        };
        let r = *self.rec(ri);
        // The home serving this request is the node it went to.
        let home = r.asked;
        if r.recalled && from != home {
            // The home recalled the request; only its answer counts now.
            self.stats.late_messages += 1;
            return Ok(Outcome::Ignored);
        }
        if (kind == ReqKind::Read) == writable {
            self.violate("data grant does not match the request", page);
            return Ok(Outcome::Done);
        }
        if self.local[li].access() != PageAccess::Invalid {
            self.violate("data for a page that is already mapped", page);
            return Ok(Outcome::Done);
        }
        out.push(Action::Install {
            page,
            writable,
            source: InstallSource::Payload,
        });
        self.local[li].set_access(if writable {
            PageAccess::Writable
        } else {
            PageAccess::ReadOnly
        });
        let r = self.rec_mut(ri);
        r.version = version;
        r.req = Req::Idle;
        r.recalled = false;
        self.stats.installs += 1;
        if from != home && !self.bug_on(super::inject::Bug::RequesterSkipsDone) {
            self.send(home, Msg::Done { txn, page }, None, out);
        }
        self.acquired(ri, out);
        Ok(Outcome::Done)
    }

    pub(crate) fn on_grant(
        &mut self,
        li: usize,
        txn: u64,
        version: u32,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let page = self.local_range.page(li);
        let ok = self.local[li].record().filter(|&ri| {
            matches!(self.rec(ri).req, Req::Pending { kind: ReqKind::Upgrade, txn: t } if t == txn)
        });
        let Some(ri) = ok else {
            self.violate("grant for an upgrade that is not outstanding", page);
            return Ok(Outcome::Done);
        };
        if self.local[li].access() != PageAccess::ReadOnly {
            self.violate("grant for a page not held read-only", page);
            return Ok(Outcome::Done);
        }
        out.push(Action::MakeWritable { page });
        self.local[li].set_access(PageAccess::Writable);
        let r = self.rec_mut(ri);
        r.version = version;
        r.req = Req::Idle;
        self.acquired(ri, out);
        Ok(Outcome::Done)
    }

    pub(crate) fn on_nack(
        &mut self,
        li: usize,
        txn: u64,
        reason: NackReason,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let page = self.local_range.page(li);
        let Some(ri) = self.local[li].record() else {
            self.violate("nack for a page with no outstanding request", page);
            return Ok(Outcome::Done);
        };
        match (self.rec(ri).req, reason) {
            (Req::Pending { txn: t, .. }, NackReason::Busy) if t == txn => {
                let at = self.now.saturating_add(self.cfg.retry_backoff_ns);
                self.rec_mut(ri).req = Req::Retry { at };
                self.recs.arm(ri, TIMER_RETRY, at);
            }
            (Req::Pending { txn: t, .. }, NackReason::Lost) if t == txn => {
                self.local[li].set_access(PageAccess::Lost);
                self.rec_mut(ri).req = Req::Idle;
                self.fail_waiters(ri, FailReason::Lost, out);
                self.rec_maybe_free(ri);
            }
            (Req::Pending { txn: t, .. }, NackReason::Moved(home)) if t == txn => {
                // Home migration: the home moved; ask the node the old home names.
                self.set_hint(li, home);
                self.stats.redirected += 1;
                self.rec_mut(ri).req = Req::Idle;
                self.issue(ri, out);
                self.rec_maybe_free(ri);
            }
            (Req::Evicting { txn: t, dirty }, NackReason::Busy | NackReason::Moved(_))
                if t == txn =>
            {
                if let NackReason::Moved(home) = reason {
                    self.set_hint(li, home);
                }
                self.stats.evictions_refused += 1;
                if dirty && self.local[li].access() == PageAccess::ReadOnly {
                    // Still the exclusive owner: restore write access.
                    out.push(Action::MakeWritable { page });
                    self.local[li].set_access(PageAccess::Writable);
                }
                self.rec_mut(ri).req = Req::Idle;
                self.issue(ri, out);
                self.rec_maybe_free(ri);
            }
            // A redirect for a request that was already answered another way: nothing to do.
            (_, NackReason::Moved(_)) => self.stats.late_messages += 1,
            _ => self.violate("nack for a transaction that is not outstanding", page),
        }
        Ok(Outcome::Done)
    }

    pub(crate) fn on_inv(
        &mut self,
        li: usize,
        txn: u64,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        if let Some(ri) = self.local[li].record() {
            self.count_ping_pong(ri);
            if self.in_window(ri) {
                self.defer(ri, DeferredOp::Inv, NodeId::ZERO, txn, 0);
                return Ok(Outcome::Done);
            }
        }
        self.do_inv(li, txn, out);
        Ok(Outcome::Done)
    }

    pub(crate) fn do_inv(&mut self, li: usize, txn: u64, out: &mut Actions) {
        let page = self.local_range.page(li);
        match self.local[li].access() {
            PageAccess::ReadOnly => {
                out.push(Action::Drop { page });
                self.local[li].set_access(PageAccess::Invalid);
            }
            PageAccess::Invalid => {}
            PageAccess::Writable | PageAccess::Lost => {
                self.violate("invalidation of an exclusive or lost page", page);
                return;
            }
        }
        let Ok(home) = self.home_now(page) else {
            return;
        };
        self.send(home, Msg::InvAck { txn, page }, None, out);
        if let Some(ri) = self.local[li].record() {
            self.rec_maybe_free(ri);
        }
    }

    pub(crate) fn on_fwd(
        &mut self,
        li: usize,
        write: bool,
        requester: NodeId,
        txn: u64,
        version: u32,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        if let Some(ri) = self.local[li].record() {
            self.count_ping_pong(ri);
            if self.in_window(ri) {
                let op = if write {
                    DeferredOp::FwdWrite
                } else {
                    DeferredOp::FwdRead
                };
                self.defer(ri, op, requester, txn, version);
                return Ok(Outcome::Done);
            }
        }
        self.do_fwd(li, write, requester, txn, version, out);
        Ok(Outcome::Done)
    }

    /// Whether this node may answer a forward for local page `li` from `requester`: it owns
    /// the page (or is writing its dirty copy back). The copy stops being dirty whatever
    /// happens next. Returns the page's record and access; `None` after a violation.
    fn fwd_accept(
        &mut self,
        li: usize,
        page: u64,
        requester: NodeId,
    ) -> Option<(Option<u16>, PageAccess)> {
        let rec = self.local[li].record();
        let acc = self.local[li].access();
        let evicting_dirty =
            rec.is_some_and(|ri| matches!(self.rec(ri).req, Req::Evicting { dirty: true, .. }));
        if !(acc == PageAccess::Writable || (acc == PageAccess::ReadOnly && evicting_dirty)) {
            self.violate("forward to a node that does not own the page", page);
            return None;
        }
        if requester == self.me {
            self.violate("forward on behalf of the owner itself", page);
            return None;
        }
        if let Some(ri) = rec {
            if let Req::Evicting { txn: et, .. } = self.rec(ri).req {
                self.rec_mut(ri).req = Req::Evicting {
                    txn: et,
                    dirty: false,
                };
            }
        }
        Some((rec, acc))
    }

    pub(crate) fn do_fwd(
        &mut self,
        li: usize,
        write: bool,
        requester: NodeId,
        txn: u64,
        version: u32,
        out: &mut Actions,
    ) {
        let page = self.local_range.page(li);
        let Ok(home) = self.home_now(page) else {
            return;
        };
        let Some((rec, acc)) = self.fwd_accept(li, page, requester) else {
            return;
        };
        if acc == PageAccess::Writable {
            if !self.bug_on(super::inject::Bug::NoWriteProtectOnForward) {
                out.push(Action::WriteProtect { page });
            }
            self.local[li].set_access(PageAccess::ReadOnly);
        }
        let gone = requester != home && self.dead.contains(requester);
        if !write || gone {
            if !gone && requester != home {
                let data = Msg::Data {
                    txn,
                    page,
                    version,
                    writable: false,
                };
                self.send(requester, data, Some(DataSource::Local), out);
            }
            let outcome = if gone {
                FwdOutcome::RequesterGone
            } else {
                FwdOutcome::Shared
            };
            self.send(
                home,
                Msg::FwdAck { txn, page, outcome },
                Some(DataSource::Local),
                out,
            );
        } else {
            if requester == home {
                let ack = Msg::FwdAck {
                    txn,
                    page,
                    outcome: FwdOutcome::Surrendered,
                };
                self.send(home, ack, Some(DataSource::Local), out);
            } else {
                let data = Msg::Data {
                    txn,
                    page,
                    version,
                    writable: true,
                };
                self.send(requester, data, Some(DataSource::Local), out);
                let ack = Msg::FwdAck {
                    txn,
                    page,
                    outcome: FwdOutcome::HandedOff,
                };
                self.send(home, ack, None, out);
            }
            out.push(Action::Drop { page });
            self.local[li].set_access(PageAccess::Invalid);
        }
        if let Some(ri) = rec {
            self.rec_maybe_free(ri);
        }
    }

    pub(crate) fn on_recall(
        &mut self,
        li: usize,
        txn: u64,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let page = self.local_range.page(li);
        let home = self.home_now(page)?;
        let rec = self.local[li].record();
        let evicting_dirty =
            rec.is_some_and(|ri| matches!(self.rec(ri).req, Req::Evicting { dirty: true, .. }));
        let have = match self.local[li].access() {
            PageAccess::Writable => RecallHave::Exclusive,
            PageAccess::ReadOnly if evicting_dirty => RecallHave::Exclusive,
            PageAccess::ReadOnly => RecallHave::Copy,
            PageAccess::Invalid | PageAccess::Lost => {
                if let Some(ri) = rec {
                    if matches!(self.rec(ri).req, Req::Pending { txn: t, .. } if t == txn) {
                        self.rec_mut(ri).recalled = true;
                    }
                }
                RecallHave::Nothing
            }
        };
        let data = (have == RecallHave::Copy).then_some(DataSource::Local);
        self.send(home, Msg::RecallAck { txn, page, have }, data, out);
        Ok(Outcome::Done)
    }

    pub(crate) fn on_evict_ack(
        &mut self,
        li: usize,
        txn: u64,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        let page = self.local_range.page(li);
        let ok = self.local[li]
            .record()
            .filter(|&ri| matches!(self.rec(ri).req, Req::Evicting { txn: t, .. } if t == txn));
        let Some(ri) = ok else {
            self.violate("eviction ack for an eviction that is not outstanding", page);
            return Ok(Outcome::Done);
        };
        if matches!(
            self.local[li].access(),
            PageAccess::ReadOnly | PageAccess::Writable
        ) {
            out.push(Action::Drop { page });
        }
        self.local[li].set_access(PageAccess::Invalid);
        self.rec_mut(ri).req = Req::Idle;
        self.issue(ri, out);
        self.rec_maybe_free(ri);
        Ok(Outcome::Done)
    }

    // ---- requests ----

    /// Issues the request the page's waiters need (nothing when idle or
    /// already satisfied).
    pub(crate) fn issue(&mut self, ri: u16, out: &mut Actions) {
        let r = *self.rec(ri);
        if r.req != Req::Idle || r.n_waiters == 0 {
            return;
        }
        let page = r.page;
        let li = r.li as usize;
        let need_write = self.any_writer(ri);
        let kind = match (self.local[li].access(), need_write) {
            (PageAccess::Invalid, false) => ReqKind::Read,
            (PageAccess::Invalid, true) => ReqKind::Write,
            (PageAccess::ReadOnly, true) => ReqKind::Upgrade,
            (PageAccess::Lost, _) => {
                self.fail_waiters(ri, FailReason::Lost, out);
                return;
            }
            (PageAccess::ReadOnly, false) | (PageAccess::Writable, _) => {
                out.push(Action::Wake { page });
                self.complete_waiters(ri, out);
                return;
            }
        };
        let Ok(home) = self.home_now(page) else {
            return;
        };
        let txn = self.fresh_txn();
        self.stats.requests += 1;
        let rec = self.rec_mut(ri);
        rec.req = Req::Pending { kind, txn };
        rec.asked = home;
        rec.recalled = false;
        // The version is below 2^13 after masking.
        let ver13 = (r.version & VERSION_MASK) as u16;
        if home == self.me {
            if !self.home_enqueue(page, self.me, kind, txn, ver13, out) {
                let at = self.now.saturating_add(self.cfg.retry_backoff_ns);
                self.rec_mut(ri).req = Req::Retry { at };
                self.recs.arm(ri, TIMER_RETRY, at);
            }
        } else {
            let msg = match kind {
                ReqKind::Read => Msg::ReadReq { txn, page },
                ReqKind::Write => Msg::WriteReq { txn, page },
                ReqKind::Upgrade => Msg::UpgradeReq {
                    txn,
                    page,
                    version: ver13,
                },
            };
            self.send(home, msg, None, out);
        }
    }

    /// The local directory finished this node's request for one of its home
    /// pages (`acquired`: access was gained in this step).
    pub(crate) fn local_granted(&mut self, page: u64, acquired: bool, out: &mut Actions) {
        let Some(ri) = self
            .local_range
            .index(page)
            .and_then(|li| self.local[li].record())
        else {
            return;
        };
        self.rec_mut(ri).req = Req::Idle;
        if acquired {
            self.start_hold(ri);
        } else {
            out.push(Action::Wake { page });
        }
        self.complete_waiters(ri, out);
        if self.rec(ri).n_waiters > 0 {
            self.reissue_local = Some(page);
        } else {
            self.rec_maybe_free(ri);
        }
    }

    /// The local directory cannot serve this node's request.
    pub(crate) fn local_failed(&mut self, page: u64, reason: FailReason, out: &mut Actions) {
        let Some(li) = self.local_range.index(page) else {
            return;
        };
        if reason == FailReason::Lost {
            self.local[li].set_access(PageAccess::Lost);
        }
        if let Some(ri) = self.local[li].record() {
            self.rec_mut(ri).req = Req::Idle;
            self.fail_waiters(ri, reason, out);
            self.rec_maybe_free(ri);
        }
    }

    /// After an install or upgrade: start the hold, complete the waiters,
    /// ask for more if a writer still waits.
    fn acquired(&mut self, ri: u16, out: &mut Actions) {
        self.start_hold(ri);
        self.complete_waiters(ri, out);
        self.issue(ri, out);
        self.rec_maybe_free(ri);
    }
}
