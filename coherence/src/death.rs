//! Node failure: `NodeDead` handling, the incremental clean-up of the
//! directory, and recalls (`docs/protocol.md` §7).

use super::action::{Actions, FailReason, FatalReason};
use super::inject::Bug;
use super::machine::{Machine, Outcome, StepError};
use super::msg::Msg;
use super::node::{NodeId, NodeSet};
use super::state::DirState;
use super::txn::Phase;

impl Machine {
    pub(crate) fn on_node_dead(
        &mut self,
        node: NodeId,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        if node == self.me || !self.layout.members().contains(node) {
            return Err(StepError::BadDeadNode(node));
        }
        if self.dead.contains(node) {
            return Ok(Outcome::Done);
        }
        self.dead.insert(node);
        if self.left {
            // This node has left the cluster: the others closing their connections to it is
            // expected, and it holds nothing to clean up.
            return Ok(Outcome::Done);
        }
        if self.layout.homes().contains(node) {
            self.go_fatal(FatalReason::HomeDied(node), out);
            return Ok(Outcome::Done);
        }
        // (Re)start the scan; entries are idempotent to revisit.
        self.cleanup = Some(0);
        self.run_cleanup(out);
        Ok(Outcome::Done)
    }

    /// Continues the directory scan within the step's budget.
    pub(crate) fn run_cleanup(&mut self, out: &mut Actions) {
        let Some(mut c) = self.cleanup else {
            return;
        };
        let mut n = 0;
        while c < self.dir.len()
            && n < self.cfg.cleanup_chunk
            && out.remaining() >= self.page_bound
            && self.fatal.is_none()
        {
            self.cleanup_entry(c, out);
            c += 1;
            n += 1;
        }
        self.cleanup = (c < self.dir.len()).then_some(c);
    }

    fn cleanup_entry(&mut self, di: usize, out: &mut Actions) {
        let e = self.dir[di];
        match e.head() {
            None => match e.state() {
                DirState::Shared(s) if self.live(s) != s => self.set_dir(di, DirState::Shared(s)),
                DirState::Exclusive(o) if self.dead.contains(o) => self.mark_lost(di, out),
                _ => {}
            },
            Some(h) => self.txn_on_death(di, h, out),
        }
    }

    /// Re-evaluates the head transaction of a page against the dead set.
    fn txn_on_death(&mut self, di: usize, h: u16, out: &mut Actions) {
        let t = *self.txn(h);
        let me = self.me;
        let r_dead = t.requester != me && self.dead.contains(t.requester);
        match t.phase {
            Phase::Queued | Phase::WaitHome => {
                if r_dead {
                    self.finish(di, out);
                }
            }
            Phase::Invalidating => {
                if !self.bug_on(Bug::KeepDeadSharers) {
                    self.txn_mut(h).pending = t.pending.minus(self.dead);
                }
                if r_dead {
                    self.txn_mut(h).req_gone = true;
                }
                if self.txn(h).pending.is_empty() {
                    self.grant_write(di, h, out);
                    self.finish(di, out);
                }
            }
            Phase::Forwarded => {
                if self.dead.contains(t.owner) {
                    self.owner_died(di, h, out);
                } else if r_dead {
                    self.txn_mut(h).req_gone = true;
                    self.try_finish_forward(di, h, out);
                }
            }
            Phase::Recalling => {
                if r_dead {
                    self.resolve_without_requester(di, h, out);
                    self.finish(di, out);
                }
            }
        }
    }

    /// The owner of a forwarded transaction died before it completed.
    fn owner_died(&mut self, di: usize, h: u16, out: &mut Actions) {
        let page = self.home_range.page(di);
        let t = *self.txn(h);
        let me = self.me;
        let r = t.requester;
        if r == me {
            // Only the FwdAck could bring the data, and it never will. (A home move has no
            // waiter of its own; a local request queued behind it finds the page lost.)
            self.mark_lost(di, out);
            if t.move_to.is_none() {
                self.local_failed(page, FailReason::Lost, out);
            }
            self.finish(di, out);
            return;
        }
        if t.req_gone || self.dead.contains(r) {
            self.resolve_without_requester(di, h, out);
            self.finish(di, out);
            return;
        }
        if !t.await_done {
            // The requester confirmed it installed the data.
            if t.is_write() {
                self.dir[di].set_version(t.new_version);
                self.set_dir(di, DirState::Exclusive(r));
                self.finish(di, out);
                return;
            }
            if t.home_has {
                self.set_dir(di, DirState::Shared(NodeSet::single(me).with(r)));
                self.finish(di, out);
                return;
            }
        }
        // Only the requester knows whether the data reached it.
        self.stats.recalls += 1;
        self.txn_mut(h).phase = Phase::Recalling;
        self.send(
            r,
            Msg::Recall {
                txn: t.req_txn,
                page,
            },
            None,
            out,
        );
    }
}
