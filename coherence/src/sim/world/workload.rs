//! The simulated workload: threads touching pages (faults when the mapping
//! does not allow it), evictions asked by a replacement policy, crashes.

use super::{allows, Ev, FailKind, Failure, Map, ThreadState, World};
use crate::sim::scenario::Profile;
use crate::{Access, Input, Outcome};
use rand::Rng;

impl World {
    pub(super) fn run_thread(&mut self, n: usize, th: usize) -> Result<(), Failure> {
        if !self.alive[n] || self.threads[n][th].state != ThreadState::Idle {
            return Ok(());
        }
        if self.leave_stops(n) && self.threads[n][th].op.is_none() {
            // The leaving node's threads stop before it hands its pages over.
            self.threads[n][th].state = ThreadState::Stopped;
            return Ok(());
        }
        let (p, write) = match self.threads[n][th].op {
            Some(op) => op,
            None => {
                if self.ops_left == 0 {
                    self.threads[n][th].state = ThreadState::Stopped;
                    return Ok(());
                }
                self.ops_left -= 1;
                self.issued += 1;
                self.stats.ops += 1;
                self.fire_crashes();
                self.fire_leave();
                if self.sc.evict_pct > 0 && self.rng.gen_range(0..100) < self.sc.evict_pct {
                    let victim = self.rng.gen_range(0..self.nodes);
                    let at = self.now + self.rng.gen_range(0..=self.sc.think_max_ns);
                    self.push(at, Ev::Evict(victim as u16));
                }
                if self.sc.move_pct > 0 && self.rng.gen_range(0..100) < self.sc.move_pct {
                    let at = self.now + self.rng.gen_range(0..=self.sc.think_max_ns);
                    self.push(at, Ev::Move);
                }
                if self.rng.gen_range(0..100) < 3 {
                    let i = self.rng.gen_range(0..self.insts[n].len());
                    let at = self.now + self.rng.gen_range(0..=self.sc.think_max_ns);
                    self.push(at, Ev::SpuriousTick(n as u16, i as u16));
                }
                let op = self.gen_op(n, th);
                self.threads[n][th].op = Some(op);
                op
            }
        };
        let page = self.base + p as u64;
        let m = self.mem[n][p];
        if allows(m.map, write) {
            if write {
                self.latest[p] += 1;
                self.mem[n][p].value = self.latest[p];
                self.check_page(p)?;
            } else if m.value != self.latest[p] {
                return Err(self.fail(
                    FailKind::StaleRead,
                    Some(page),
                    format!(
                        "n{n} read {} from page {page}, the latest write is {}",
                        m.value, self.latest[p]
                    ),
                ));
            }
            let t = &mut self.threads[n][th];
            t.op = (t.profile == Profile::ReadModifyWrite && !write).then_some((p, true));
            let at = self.now + self.rng.gen_range(0..=self.sc.think_max_ns);
            self.push(at, Ev::Thread(n as u16, th as u16));
            return Ok(());
        }
        let t = &mut self.threads[n][th];
        t.seq = t.seq.wrapping_add(1);
        let token = ((n as u64) << 48) | ((th as u64) << 32) | u64::from(t.seq);
        t.state = ThreadState::Waiting {
            token,
            pidx: p,
            write,
            since: self.progress,
        };
        let access = if write { Access::Write } else { Access::Read };
        let i = self.inst_of(n, page);
        let out = self.step(
            n,
            i,
            Input::Fault {
                page,
                access,
                token,
            },
            None,
            false,
        )?;
        if out != Outcome::Busy && !write {
            for k in 1..u64::from(self.sc.prefetch) {
                let q = p as u64 + k;
                if q >= self.pages as u64 {
                    break;
                }
                let qpage = self.base + q;
                let qi = self.inst_of(n, qpage);
                self.step(n, qi, Input::Prefetch { page: qpage }, None, false)?;
            }
        }
        if out == Outcome::Busy {
            // Back off exponentially, as a data plane retrying a refused
            // fault would, so tiny pools do not turn into busy loops.
            let t = &mut self.threads[n][th];
            t.state = ThreadState::Idle;
            t.busy_streak = (t.busy_streak + 1).min(8);
            let at = self.now + (self.rng.gen_range(1_000..=10_000) << t.busy_streak);
            self.push(at, Ev::Thread(n as u16, th as u16));
        } else {
            self.threads[n][th].busy_streak = 0;
        }
        Ok(())
    }

    pub(super) fn gen_op(&mut self, n: usize, th: usize) -> (usize, bool) {
        let pages = self.pages;
        let w = self.sc.write_pct;
        let r = &mut self.rng;
        match self.threads[n][th].profile {
            Profile::Uniform | Profile::Mix => (r.gen_range(0..pages), r.gen_range(0..100) < w),
            Profile::ReadMostly => (r.gen_range(0..pages), r.gen_range(0..100) < 5),
            Profile::HotPage => {
                let p = if r.gen_bool(0.7) {
                    0
                } else {
                    r.gen_range(0..pages)
                };
                (p, r.gen_range(0..100) < w)
            }
            Profile::PingPong => {
                if n < 2 && r.gen_bool(0.9) {
                    (0, true)
                } else {
                    (r.gen_range(0..pages), r.gen_range(0..100) < w)
                }
            }
            Profile::FalseSharing => (r.gen_range(0..pages.min(2)), r.gen_range(0..100) < 85),
            Profile::ReadModifyWrite => (r.gen_range(0..pages), false),
        }
    }

    pub(super) fn evict(&mut self, n: usize) -> Result<(), Failure> {
        if !self.alive[n] {
            return Ok(());
        }
        let held: Vec<usize> = (0..self.pages)
            .filter(|&p| self.mem[n][p].map != Map::None && !self.is_home(n, p))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let p = held[self.rng.gen_range(0..held.len())];
        let page = self.base + p as u64;
        let i = self.inst_of(n, page);
        self.step(n, i, Input::Evict { page }, None, false)
            .map(|_| ())
    }

    /// Whether node `n` is page `p`'s home now (under home migration it may not be the
    /// layout's home).
    pub(super) fn is_home(&self, n: usize, p: usize) -> bool {
        let page = self.base + p as u64;
        self.insts[n][self.inst_of(n, page)].m.is_home(page)
    }

    /// The live node that is page `p`'s home now, if exactly one is (none while a move is
    /// in flight).
    pub(super) fn current_home(&self, p: usize) -> Option<usize> {
        let mut homes = (0..self.nodes).filter(|&n| self.alive[n] && self.is_home(n, p));
        let h = homes.next()?;
        homes.next().is_none().then_some(h)
    }

    /// Asks a random page's home to move it to another live node that contributes memory.
    pub(super) fn move_home(&mut self) -> Result<(), Failure> {
        let p = self.rng.gen_range(0..self.pages);
        let Some(h) = self.current_home(p) else {
            return Ok(());
        };
        let targets: Vec<usize> = (0..self.nodes)
            .filter(|&n| n != h && self.alive[n] && self.sc.contrib[n] > 0)
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let to = targets[self.rng.gen_range(0..targets.len())];
        let page = self.base + p as u64;
        let i = self.inst_of(h, page);
        let to = crate::NodeId::new(to as u16)
            .map_err(|e| self.fail(FailKind::BadAction, Some(page), e.to_string()))?;
        let out = self.step(h, i, Input::MoveHome { page, to }, None, false)?;
        if out == Outcome::MoveStarted {
            self.stats.moves += 1;
        }
        Ok(())
    }

    pub(super) fn fire_crashes(&mut self) {
        for k in 0..self.sc.crashes.len() {
            let (victim, at) = self.sc.crashes[k];
            if !self.crashes_fired[k] && self.issued >= at {
                self.crashes_fired[k] = true;
                self.push(self.now, Ev::Crash(victim as u16));
            }
        }
    }

    pub(super) fn crash(&mut self, d: usize) -> Result<(), Failure> {
        if !self.alive[d] {
            return Ok(());
        }
        self.alive[d] = false;
        if self.trace_page.is_some() {
            eprintln!("  -- t={} n{d} crashes", self.now);
        }
        for t in &mut self.threads[d] {
            t.state = ThreadState::Stopped;
        }
        // The crash may interrupt a step's sends or reset its connections:
        // each connection from the dead node delivers a random prefix of
        // what is in flight and loses the rest.
        for to in 0..self.nodes {
            for lane in 0..self.lanes {
                let c = (d * self.nodes + to) * self.lanes + lane;
                let q = &mut self.conns[c].q;
                if q.is_empty() {
                    continue;
                }
                let keep = self.rng.gen_range(0..=q.len());
                for pkt in q.iter_mut().skip(keep) {
                    pkt.lost = true;
                }
            }
        }
        for n in 0..self.nodes {
            if !self.alive[n] {
                continue;
            }
            for i in 0..self.insts[n].len() {
                let at = self.now + self.rng.gen_range(0..=self.sc.detect_max_ns);
                self.pending_deaths += 1;
                self.push(at, Ev::Dead(n as u16, i as u16, d as u16));
            }
        }
        self.update_lossable();
        Ok(())
    }
}
