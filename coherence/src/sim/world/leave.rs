//! The scenario's home leave (docs/protocol.md §13), driven as the control plane and the
//! engine drive it: `Retire` reaches every other node's instances (at random moments); once
//! all have it, the messages then in flight to the leaving node are its fence; once the fence
//! has arrived, `Retire` reaches the leaving node's instances, which drain; meanwhile its
//! threads stop and its copies of other homes' pages are evicted; when every instance of the
//! leaving node has drained, it holds nothing and nothing it sent is still in flight, `Retired` reaches every other instance and the node is gone. A home that dies
//! meanwhile stops the cluster, and the leave with it.

use super::{Ev, FailKind, Failure, Map, ThreadState, World};
use crate::{Input, NodeId};
use rand::Rng;

/// Where the leave stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not started (or the scenario has none).
    #[default]
    Idle,
    /// `Retire` is on its way to every other node's instances.
    Announcing,
    /// They all have it: what was then in flight to the leaving node is on its way.
    Fencing,
    /// `Retire` is on its way to the leaving node's instances, which drain.
    Draining,
    /// `Retired` is on its way; the node is gone.
    Finishing,
    /// A home died: the cluster stopped, the leave with it.
    Abandoned,
}

/// The leave's state.
#[derive(Debug, Default)]
pub(super) struct Leave {
    pub(super) phase: Phase,
    /// `Retire` (or `Retired`) inputs not delivered yet.
    pub(super) pending: usize,
    /// Fence messages still in flight to the leaving node.
    pub(super) fence: usize,
}

impl World {
    fn leave_nodes(&self) -> Option<(usize, usize)> {
        self.sc.retire.map(|(d, s, _)| (d, s))
    }

    fn ids(&self, d: usize, s: usize) -> Result<(NodeId, NodeId), Failure> {
        let id = |n: usize| {
            NodeId::new(n as u16).map_err(|e| self.fail(FailKind::BadAction, None, e.to_string()))
        };
        Ok((id(d)?, id(s)?))
    }

    /// Whether node `n` is leaving (its threads stop).
    pub(super) fn leave_stops(&self, n: usize) -> bool {
        self.leave.phase != Phase::Idle && self.leave_nodes().is_some_and(|(d, _)| d == n)
    }

    /// Starts the leave once its operation count is reached.
    pub(super) fn fire_leave(&mut self) {
        let Some((d, s, at)) = self.sc.retire else {
            return;
        };
        if self.leave.phase != Phase::Idle || self.issued < at {
            return;
        }
        if !self.alive[d] || !self.alive[s] {
            self.leave.phase = Phase::Abandoned;
            return;
        }
        self.leave.phase = Phase::Announcing;
        if self.trace_page.is_some() {
            eprintln!(
                "  -- t={} n{d} starts to leave, n{s} takes its pages",
                self.now
            );
        }
        for n in 0..self.nodes {
            if n == d {
                continue;
            }
            for i in 0..self.insts[n].len() {
                self.leave.pending += 1;
                let at = self.now + self.rng.gen_range(0..=self.sc.detect_max_ns);
                self.push(at, Ev::Retire(n as u16, i as u16));
            }
        }
        if self.leave.pending == 0 {
            self.leave.phase = Phase::Fencing;
            self.push(self.now, Ev::LeaveCheck);
        }
    }

    pub(super) fn leave_retire(&mut self, n: usize, i: usize) -> Result<(), Failure> {
        let Some((d, s)) = self.leave_nodes() else {
            return Ok(());
        };
        self.leave.pending -= 1;
        if self.alive[n] && self.insts[n][i].m.fatal().is_none() {
            let (node, to) = self.ids(d, s)?;
            self.step(n, i, Input::Retire { node, to }, None, false)?;
        }
        if self.leave.pending == 0 && self.leave.phase == Phase::Announcing {
            // Every other instance refuses moves to the leaving node now: what is in flight
            // to it is all that can still bring it a home.
            self.leave.phase = Phase::Fencing;
            for from in 0..self.nodes {
                for lane in 0..self.lanes {
                    let c = (from * self.nodes + d) * self.lanes + lane;
                    for pkt in self.conns[c].q.iter_mut() {
                        pkt.fence = true;
                        self.leave.fence += 1;
                    }
                }
            }
            self.push(self.now, Ev::LeaveCheck);
        }
        Ok(())
    }

    /// The control plane's look at the leave: evicts the leaving node's copies, and sends
    /// `Retired` once it may.
    pub(super) fn leave_check(&mut self) -> Result<(), Failure> {
        let Some((d, s)) = self.leave_nodes() else {
            return Ok(());
        };
        if !matches!(self.leave.phase, Phase::Fencing | Phase::Draining) {
            return Ok(());
        }
        let stopped = |w: &Self, n: usize| w.insts[n].iter().any(|i| i.m.fatal().is_some());
        if !self.alive[d] || !self.alive[s] || (0..self.nodes).any(|n| stopped(self, n)) {
            self.leave.phase = Phase::Abandoned;
            return Ok(());
        }
        // Its copies of other homes' pages go back (the node's hand-back).
        self.evict(d)?;
        let again = self.now + self.sc.think_max_ns.max(1_000);
        if self.leave.phase == Phase::Fencing {
            if self.leave.fence == 0 && self.leave.pending == 0 {
                self.leave.phase = Phase::Draining;
                for i in 0..self.insts[d].len() {
                    self.leave.pending += 1;
                    let at = self.now + self.rng.gen_range(0..=self.sc.detect_max_ns);
                    self.push(at, Ev::Retire(d as u16, i as u16));
                }
            }
            self.push(again, Ev::LeaveCheck);
            return Ok(());
        }
        let threads_done = self.threads[d]
            .iter()
            .all(|t| t.state == ThreadState::Stopped);
        let holds = (0..self.pages).any(|p| self.mem[d][p].map != Map::None);
        let drained = self.insts[d]
            .iter()
            .all(|i| i.m.drained() && i.m.is_quiescent());
        // Everything it sent has arrived (the engine waits for its sessions' acknowledgements).
        let sending = (0..self.nodes * self.lanes)
            .any(|k| !self.conns[d * self.nodes * self.lanes + k].q.is_empty());
        if !threads_done || holds || !drained || self.leave.pending > 0 || sending {
            self.push(again, Ev::LeaveCheck);
            return Ok(());
        }
        if let Some(p) = (0..self.pages).find(|&p| self.is_home(d, p)) {
            return Err(self.fail(
                FailKind::EndState,
                Some(self.base + p as u64),
                format!("n{d} drained but still homes page {}", self.base + p as u64),
            ));
        }
        // Gone: what is still sent to it is lost, what it sent arrives late.
        self.alive[d] = false;
        self.leave.phase = Phase::Finishing;
        self.stats.retired += 1;
        if self.trace_page.is_some() {
            eprintln!("  -- t={} n{d} has left", self.now);
        }
        for n in 0..self.nodes {
            if n == d || !self.alive[n] {
                continue;
            }
            for i in 0..self.insts[n].len() {
                self.leave.pending += 1;
                let at = self.now + self.rng.gen_range(0..=self.sc.detect_max_ns);
                self.push(at, Ev::Retired(n as u16, i as u16));
            }
        }
        Ok(())
    }

    pub(super) fn leave_retired(&mut self, n: usize, i: usize) -> Result<(), Failure> {
        let Some((d, s)) = self.leave_nodes() else {
            return Ok(());
        };
        self.leave.pending -= 1;
        if !self.alive[n] || self.insts[n][i].m.fatal().is_some() {
            return Ok(());
        }
        let (node, to) = self.ids(d, s)?;
        // From now on this instance must neither send to the node that left nor act on
        // what it sent (the checks for dead nodes apply).
        self.insts[n][i].knows_dead.insert(node);
        self.step(n, i, Input::Retired { node, to }, None, false)
            .map(|_| ())
    }
}
