//! The faults waiting on a page: adding (deduplicated, bounded), completing
//! the ones the current access satisfies, failing them all.

use super::action::{Action, Actions, FailReason};
use super::machine::Machine;
use super::records::{Waiter, NIL};
use super::state::PageAccess;

/// Whether `access` allows a read (or a write).
pub(crate) fn allows(access: PageAccess, write: bool) -> bool {
    match access {
        PageAccess::Writable => true,
        PageAccess::ReadOnly => !write,
        PageAccess::Invalid | PageAccess::Lost => false,
    }
}

impl Machine {
    pub(crate) fn add_waiter(&mut self, ri: u16, token: u64, write: bool) -> bool {
        let r = *self.rec(ri);
        let mut w = r.waiters;
        while w != NIL {
            let x = self.recs.waiters[w as usize];
            if x.token == token && x.write == write {
                return true;
            }
            w = x.next;
        }
        if r.n_waiters >= self.cfg.max_waiters_per_page {
            return false;
        }
        let Some(w) = self.recs.waiter_alloc() else {
            return false;
        };
        self.recs.waiters[w as usize] = Waiter {
            token,
            write,
            next: NIL,
        };
        if r.waiters_tail == NIL {
            self.rec_mut(ri).waiters = w;
        } else {
            self.recs.waiters[r.waiters_tail as usize].next = w;
        }
        let rec = self.rec_mut(ri);
        rec.waiters_tail = w;
        rec.n_waiters += 1;
        true
    }

    pub(crate) fn any_writer(&self, ri: u16) -> bool {
        let mut w = self.rec(ri).waiters;
        while w != NIL {
            let x = self.recs.waiters[w as usize];
            if x.write {
                return true;
            }
            w = x.next;
        }
        false
    }

    /// Completes (and removes) the waiters the current access satisfies.
    pub(crate) fn complete_waiters(&mut self, ri: u16, out: &mut Actions) {
        let r = *self.rec(ri);
        let acc = self.local[r.li as usize].access();
        let (mut prev, mut w) = (NIL, r.waiters);
        while w != NIL {
            let x = self.recs.waiters[w as usize];
            if allows(acc, x.write) {
                out.push(Action::FaultDone {
                    page: r.page,
                    token: x.token,
                });
                if prev == NIL {
                    self.rec_mut(ri).waiters = x.next;
                } else {
                    self.recs.waiters[prev as usize].next = x.next;
                }
                self.rec_mut(ri).n_waiters -= 1;
                self.recs.waiter_free(w);
            } else {
                prev = w;
            }
            w = x.next;
        }
        self.rec_mut(ri).waiters_tail = prev;
    }

    /// Fails (and removes) every waiter.
    pub(crate) fn fail_waiters(&mut self, ri: u16, reason: FailReason, out: &mut Actions) {
        let page = self.rec(ri).page;
        let mut w = self.rec(ri).waiters;
        while w != NIL {
            let x = self.recs.waiters[w as usize];
            out.push(Action::FaultFailed {
                page,
                token: x.token,
                reason,
            });
            self.recs.waiter_free(w);
            w = x.next;
        }
        let r = self.rec_mut(ri);
        r.waiters = NIL;
        r.waiters_tail = NIL;
        r.n_waiters = 0;
    }
}
