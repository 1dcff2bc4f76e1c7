//! Page records over time: attaching and freeing them, the residency window
//! (holds, deferred take-overs, ping-pong accounting) and the timers that
//! release holds and retry refused requests.

use super::action::Actions;
use super::machine::Machine;
use super::node::NodeId;
use super::records::{Deferred, DeferredOp, PageRec, Req, TIMER_DEFER, TIMER_HOLD, TIMER_RETRY};

/// Pages whose ping-pong damping level an instance remembers (direct-mapped).
pub(crate) const PP_SLOTS: usize = 256;
/// The highest damping level: the window grows to `ping_pong_hold_ns << (level - 1)`.
const PP_MAX_LEVEL: u8 = 4;
/// A page left alone for this many `ping_pong_hold_ns` falls back to no damping.
const PP_FORGET: u64 = 1_000;

/// One remembered page's damping level.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PpSlot {
    page: u64,
    level: u8,
    /// When it last ping-ponged.
    at: u64,
}

impl Machine {
    pub(crate) fn start_hold(&mut self, ri: u16) {
        let page = self.rec(ri).page;
        let damped = self.damping_window(page);
        if damped > self.cfg.residency_ns {
            self.stats.ping_pong_held += 1;
        }
        let window = self.cfg.residency_ns.max(damped);
        let hold_ns = self.cfg.hold_ns(window);
        self.rec_mut(ri).window_ns = window;
        if hold_ns == 0 {
            return;
        }
        let first = if window > 0 { window } else { hold_ns };
        let now = self.now;
        self.rec_mut(ri).acquired_at = Some(now);
        self.recs.arm(ri, TIMER_HOLD, now.saturating_add(first));
    }

    /// Ping-pong damping: the residency window `page` gets at this acquisition (0: none
    /// beyond the configured one).
    fn damping_window(&mut self, page: u64) -> u64 {
        let base = self.cfg.ping_pong_hold_ns;
        if base == 0 {
            return 0;
        }
        let slot = &mut self.pp[(page % PP_SLOTS as u64) as usize];
        if slot.page != page || slot.level == 0 {
            return 0;
        }
        // Left alone long enough: it no longer ping-pongs.
        let forget = base.saturating_mul(PP_FORGET);
        if self.now.saturating_sub(slot.at) > forget {
            slot.level = 0;
            return 0;
        }
        base << (slot.level - 1)
    }

    /// Inside the residency window of the last acquisition.
    pub(crate) fn in_window(&self, ri: u16) -> bool {
        let d = self.rec(ri).window_ns;
        d > 0
            && self
                .rec(ri)
                .acquired_at
                .is_some_and(|t| self.now < t.saturating_add(d))
    }

    /// Counts a take-over within the ping-pong window of the acquisition, and raises the
    /// page's damping level: its next acquisition here is held longer.
    pub(crate) fn count_ping_pong(&mut self, ri: u16) {
        let w = self.cfg.ping_pong_window_ns;
        if w > 0
            && self
                .rec(ri)
                .acquired_at
                .is_some_and(|t| self.now < t.saturating_add(w))
        {
            self.stats.ping_pong += 1;
            let page = self.rec(ri).page;
            let now = self.now;
            let slot = &mut self.pp[(page % PP_SLOTS as u64) as usize];
            if slot.page == page {
                slot.level = (slot.level + 1).min(PP_MAX_LEVEL);
            } else {
                *slot = PpSlot {
                    page,
                    level: 1,
                    at: now,
                };
            }
            slot.at = now;
        }
    }

    /// Holds `op` until the residency window ends.
    pub(crate) fn defer(
        &mut self,
        ri: u16,
        op: DeferredOp,
        requester: NodeId,
        txn: u64,
        version: u32,
    ) {
        if self.rec(ri).deferred.is_some() {
            let page = self.rec(ri).page;
            self.violate("a second take-over while one is deferred", page);
            return;
        }
        self.stats.deferred += 1;
        let r = self.rec_mut(ri);
        r.deferred = Some(Deferred {
            op,
            requester,
            txn,
            version,
        });
        let at = r.acquired_at.unwrap_or(0).saturating_add(r.window_ns);
        self.recs.arm(ri, TIMER_DEFER, at);
    }

    /// Fires due timers while the buffer has room for one page's work.
    pub(crate) fn run_timers(&mut self, out: &mut Actions) {
        while out.remaining() >= self.page_bound && self.fatal.is_none() {
            let Some((ri, kind)) = self.recs.pop_due(self.now) else {
                break;
            };
            if !self.rec(ri).in_use {
                continue;
            }
            if kind == TIMER_RETRY {
                self.retry_fired(ri, out);
            } else {
                self.hold_fired(ri, out);
            }
        }
    }

    fn hold_fired(&mut self, ri: u16, out: &mut Actions) {
        let Some(t) = self.rec(ri).acquired_at else {
            self.rec_maybe_free(ri);
            return;
        };
        let residency_end = t.saturating_add(self.rec(ri).window_ns);
        if let Some(d) = self.rec(ri).deferred {
            if self.now < residency_end {
                self.recs.arm(ri, TIMER_DEFER, residency_end);
                return;
            }
            self.rec_mut(ri).deferred = None;
            let r = *self.rec(ri);
            match d.op {
                DeferredOp::Inv => self.do_inv(r.li as usize, d.txn, out),
                DeferredOp::FwdRead => {
                    self.do_fwd(r.li as usize, false, d.requester, d.txn, d.version, out)
                }
                DeferredOp::FwdWrite => {
                    self.do_fwd(r.li as usize, true, d.requester, d.txn, d.version, out)
                }
                DeferredOp::HomeTxn => self.home_kick(r.page, out),
            }
            if !self.rec(ri).in_use {
                return;
            }
        }
        // The deferred work may have led to a new acquisition.
        let Some(t) = self.rec(ri).acquired_at else {
            self.rec_maybe_free(ri);
            return;
        };
        let hold_end = t.saturating_add(self.cfg.hold_ns(self.rec(ri).window_ns));
        if self.now >= hold_end {
            self.rec_mut(ri).acquired_at = None;
            self.rec_maybe_free(ri);
        } else {
            self.recs.arm(ri, TIMER_HOLD, hold_end);
        }
    }

    fn retry_fired(&mut self, ri: u16, out: &mut Actions) {
        if let Req::Retry { at } = self.rec(ri).req {
            if self.now < at {
                self.recs.arm(ri, TIMER_RETRY, at);
                return;
            }
            self.rec_mut(ri).req = Req::Idle;
            self.stats.retries += 1;
            self.issue(ri, out);
            self.rec_maybe_free(ri);
        }
    }

    pub(crate) fn rec(&self, ri: u16) -> &PageRec {
        &self.recs.recs[usize::from(ri)]
    }

    pub(crate) fn rec_mut(&mut self, ri: u16) -> &mut PageRec {
        &mut self.recs.recs[usize::from(ri)]
    }

    /// Attaches a record to the page, releasing a pure hold under pressure.
    pub(crate) fn rec_alloc(&mut self, li: usize, page: u64) -> Option<u16> {
        let ver = self.local[li].version_bits();
        let li32 = u32::try_from(li).ok()?;
        let ri = match self.recs.alloc(page, li32, ver) {
            Some(ri) => ri,
            None => {
                let victim = self.recs.reclaim_candidate(self.now)?;
                let v = *self.rec(victim);
                self.local[v.li as usize].detach(v.version);
                self.recs.free(victim);
                self.recs.alloc(page, li32, ver)?
            }
        };
        self.local[li].attach(ri);
        Some(ri)
    }

    /// Frees the record if nothing needs it any more.
    pub(crate) fn rec_maybe_free(&mut self, ri: u16) {
        let r = *self.rec(ri);
        if !r.in_use || r.req != Req::Idle || r.n_waiters != 0 || r.deferred.is_some() {
            return;
        }
        let hold_ns = self.cfg.hold_ns(r.window_ns);
        if r.acquired_at
            .is_some_and(|t| self.now < t.saturating_add(hold_ns))
        {
            return;
        }
        self.local[r.li as usize].detach(r.version);
        self.recs.free(ri);
    }
}
