//! A home node's leave (`DELETE /nodes/{id}` for a node that contributes memory; the
//! protocol side is docs/protocol.md §13). The member that takes the request coordinates
//! three steps; each must be acknowledged by every live member it concerns before the next
//! begins:
//!
//! 1. **fence**: every other member stops moving pages to the leaving node and answers once
//!    the leaving node has processed everything it had sent it (so no page is still on its
//!    way there);
//! 2. **drain**: the leaving node moves every page it homes to the successor (the live home
//!    with the lowest id), hands it the pointers it keeps for pages it moved elsewhere, hands
//!    its replicas back, and answers once all of that has been acknowledged;
//! 3. **retired**: every other member sends to the successor what would have gone to the
//!    leaving node.
//!
//! Then the leaving node is told to leave like a compute node (`Leave`, answered by its
//! `Left`). A home that dies meanwhile stops the cluster, as any home's death does; a step
//! that fails or times out ends the request with the reason (the leave can be asked again:
//! the steps already done are idempotent).

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::msg::{ControlMsg, LeaveStep};
use super::{Loop, NodeControl, Work};
use crate::handle::{MemberState, MembershipError};

/// How long a whole home leave may take (the drain moves one page per message).
pub const HOME_LEAVE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the fence may take on one member.
const FENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the fence and retired steps may take over all members.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a step's worker looks at the data plane's progress.
const POLL: Duration = Duration::from_millis(5);
/// How often the drain logs how many pages the leaving node still homes.
const DRAIN_LOG: Duration = Duration::from_secs(5);

/// The leave this node coordinates.
pub(super) struct HomeLeave {
    id: u16,
    to: u16,
    step: LeaveStep,
    req: u64,
    waiting: Vec<u16>,
    /// Members the step has not been sent to yet (no control connection at the time).
    unsent: Vec<u16>,
    /// When the current step must be done.
    deadline: Instant,
    reply: Sender<Result<(), MembershipError>>,
}

/// Why a step failed: a refusal (409) or something that did not happen in time (503).
pub(super) type StepError = (bool, String);

/// Carries out `step` of node `id`'s leave on this node (a worker thread's job).
pub(super) fn run_step(
    node: &Arc<dyn NodeControl>,
    step: LeaveStep,
    id: u16,
    to: u16,
) -> Result<(), StepError> {
    let refused = |e: super::NodeControlError| (true, e.to_string());
    let late = |what: &str| (false, what.to_string());
    match step {
        LeaveStep::Fence => {
            node.retire(id, to).map_err(refused)?;
            let until = Instant::now() + FENCE_TIMEOUT;
            while !node.retire_progress(false).map_err(refused)?.fenced {
                if Instant::now() > until {
                    return Err(late(&format!(
                        "node {id} did not acknowledge what this node sent it within {} s",
                        FENCE_TIMEOUT.as_secs()
                    )));
                }
                std::thread::sleep(POLL);
            }
            Ok(())
        }
        LeaveStep::Drain => {
            node.retire(id, to).map_err(refused)?;
            node.hand_back().map_err(refused)?;
            let until = Instant::now() + HOME_LEAVE_TIMEOUT;
            let mut logged = Instant::now();
            loop {
                let log = logged.elapsed() > DRAIN_LOG || Instant::now() > until;
                let p = node.retire_progress(log).map_err(refused)?;
                if p.drained {
                    break;
                }
                if Instant::now() > until {
                    return Err(late(&format!(
                        "the pages of node {id} did not reach node {to} within {} s ({} left)",
                        HOME_LEAVE_TIMEOUT.as_secs(),
                        p.homed
                    )));
                }
                if log {
                    tracing::info!("leaving: {} pages still homed here", p.homed);
                    logged = Instant::now();
                }
                std::thread::sleep(POLL);
            }
            // From here on this node homes nothing: the others forgetting it is no failure.
            node.retired(id, to).map_err(refused)
        }
        LeaveStep::Retired => node.retired(id, to).map_err(refused),
    }
}

impl Loop {
    /// `DELETE /nodes/{id}` for a node that homes memory (checked by the caller: a member,
    /// alive, no other leave in progress).
    pub(super) fn begin_home_leave(&mut self, id: u16, reply: Sender<Result<(), MembershipError>>) {
        let to = self
            .node
            .nodes()
            .iter()
            .filter(|n| n.id != id && n.memory > 0 && self.is_live(n.id))
            .map(|n| n.id)
            .min();
        let Some(to) = to else {
            let _ = reply.send(Err(MembershipError::Conflict(format!(
                "node {id} is the only live node that homes memory: nothing can take its pages \
                 (stop the cluster instead)"
            ))));
            return;
        };
        tracing::info!("node {id} leaves: its pages go to node {to}");
        self.home_leave = Some(HomeLeave {
            id,
            to,
            step: LeaveStep::Fence,
            req: 0,
            waiting: Vec::new(),
            unsent: Vec::new(),
            deadline: Instant::now(),
            reply,
        });
        self.start_step(LeaveStep::Fence);
    }

    fn is_live(&self, id: u16) -> bool {
        id == self.me.id
            || matches!(
                self.detector.state(id).map(|s| s.0),
                Some(MemberState::Alive | MemberState::Suspect)
            )
    }

    /// Sends `step` to every member it concerns (running this node's part on a worker).
    fn start_step(&mut self, step: LeaveStep) {
        let req = self.next_req;
        self.next_req += 1;
        let members: Vec<u16> = self
            .node
            .nodes()
            .iter()
            .map(|n| n.id)
            .filter(|&n| self.is_live(n))
            .collect();
        let Some(hl) = self.home_leave.as_mut() else {
            return;
        };
        let id = hl.id;
        hl.step = step;
        hl.req = req;
        hl.waiting = match step {
            LeaveStep::Drain => vec![id],
            LeaveStep::Fence | LeaveStep::Retired => {
                members.into_iter().filter(|&n| n != id).collect()
            }
        };
        hl.unsent = hl.waiting.clone();
        hl.deadline = Instant::now()
            + match step {
                LeaveStep::Drain => HOME_LEAVE_TIMEOUT,
                LeaveStep::Fence | LeaveStep::Retired => STEP_TIMEOUT,
            };
        self.send_step();
    }

    /// Sends the current step to the members it has not reached yet (a member whose control
    /// connection is down now gets it once it is back, within the step's time).
    fn send_step(&mut self) {
        let Some(hl) = self.home_leave.as_mut() else {
            return;
        };
        let (req, step, id, to) = (hl.req, hl.step, hl.id, hl.to);
        let mut unsent = std::mem::take(&mut hl.unsent);
        let me = self.me.id;
        if unsent.contains(&me) {
            self.spawn_step(req, None, step, id, to);
        }
        unsent.retain(|&m| {
            if m == me {
                return false;
            }
            let msg = ControlMsg::HomeLeave { req, step, id, to };
            let sent = self
                .links
                .iter_mut()
                .find(|l| l.peer == Some(m) && l.established())
                .is_some_and(|l| l.send(&msg).is_ok());
            !sent
        });
        if let Some(hl) = self.home_leave.as_mut() {
            hl.unsent = unsent;
        }
    }

    /// Runs this node's part of a step on a worker; the result comes back as work.
    pub(super) fn spawn_step(
        &self,
        req: u64,
        coordinator: Option<u16>,
        step: LeaveStep,
        id: u16,
        to: u16,
    ) {
        let (tx, node) = (self.work_tx.clone(), self.node.clone());
        std::thread::spawn(move || {
            let result = run_step(&node, step, id, to);
            let _ = tx.send(Work::HomeLeaveStep {
                req,
                coordinator,
                result,
            });
        });
    }

    /// A member (or this node) finished its part of the step with request id `req`.
    pub(super) fn home_leave_step_done(
        &mut self,
        from: u16,
        req: u64,
        result: Result<(), StepError>,
    ) {
        let Some(hl) = self.home_leave.as_mut().filter(|h| h.req == req) else {
            return;
        };
        match result {
            Ok(()) => hl.waiting.retain(|&m| m != from),
            Err((refused, why)) => {
                let step = hl.step;
                let id = hl.id;
                let text = format!(
                    "node {from} could not do the {step:?} step of node {id}'s leave: {why}"
                );
                let e = if refused {
                    MembershipError::Conflict(text)
                } else {
                    MembershipError::Unavailable(text)
                };
                self.end_home_leave(Err(e));
            }
        }
    }

    /// Moves the leave on: members that died are not waited for; a finished step starts
    /// the next.
    pub(super) fn progress_home_leave(&mut self) {
        let Some(hl) = self.home_leave.as_ref() else {
            return;
        };
        let (id, to, step) = (hl.id, hl.to, hl.step);
        if Instant::now() > hl.deadline {
            let waiting = hl.waiting.clone();
            self.end_home_leave(Err(MembershipError::Unavailable(format!(
                "the {step:?} step of node {id}'s leave did not finish in time (waiting for \
                 nodes {waiting:?})"
            ))));
            return;
        }
        self.send_step();
        for n in [id, to] {
            if !self.is_live(n) {
                self.end_home_leave(Err(MembershipError::Unavailable(format!(
                    "node {n} died during node {id}'s leave"
                ))));
                return;
            }
        }
        let live: Vec<bool> = self
            .home_leave
            .as_ref()
            .map(|h| h.waiting.iter().map(|&m| self.is_live(m)).collect())
            .unwrap_or_default();
        let Some(hl) = self.home_leave.as_mut() else {
            return;
        };
        let mut k = 0;
        hl.waiting.retain(|_| {
            k += 1;
            live[k - 1]
        });
        if !hl.waiting.is_empty() {
            return;
        }
        match step {
            LeaveStep::Fence => self.start_step(LeaveStep::Drain),
            LeaveStep::Drain => self.start_step(LeaveStep::Retired),
            LeaveStep::Retired => {
                let Some(hl) = self.home_leave.take() else {
                    return;
                };
                tracing::info!("node {id}'s pages are with node {to}; it leaves");
                self.ask_to_leave(id, hl.reply);
            }
        }
    }

    fn end_home_leave(&mut self, result: Result<(), MembershipError>) {
        if let Some(hl) = self.home_leave.take() {
            if let Err(e) = &result {
                tracing::warn!("node {}'s leave failed: {e}", hl.id);
            }
            let _ = hl.reply.send(result);
        }
    }
}
