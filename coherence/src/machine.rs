//! The protocol instance: its tables, `step`, and read-only queries. The
//! requester side lives in `requester.rs`, the home side in `home.rs`, node
//! failure in `death.rs`.

use super::action::{Action, Actions, FailReason, FatalReason};
use super::config::{Config, ConfigError};
use super::layout::{DenseRange, Layout, LayoutError, Partition};
use super::msg::{Msg, NackReason};
use super::node::{NodeId, NodeSet, MAX_NODES};
use super::records::{Records, Req};
use super::state::{zeroed_table, DirEntry, DirState, LocalState, PageAccess};
use super::stats::Stats;
use super::txn::{Phase, Txns};
use thiserror::Error;

/// The access a faulting thread needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
}

/// One input to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A local thread touched a page its local state does not allow.
    Fault {
        /// Page number.
        page: u64,
        /// The access needed.
        access: Access,
        /// Identifies the waiter in completion notices (0 is fine when the
        /// caller wakes by address).
        token: u64,
    },
    /// A protocol message received from `from` (its payload, if any, stays
    /// with the caller until the step's actions are executed).
    Message {
        /// Sender.
        from: NodeId,
        /// The message.
        msg: Msg,
    },
    /// Time advanced: run residency expiries, retries and pending clean-up.
    Tick,
    /// The replacement policy asks to drop the local replica of `page`.
    Evict {
        /// Page number.
        page: u64,
    },
    /// Membership declared `node` dead.
    NodeDead(NodeId),
    /// Fetch a read-only copy of `page` ahead of any fault (sequential prefetch). Only a page
    /// homed elsewhere, not held, with no activity, and only while a quarter of the page
    /// records stay free for faults; otherwise ignored. The request is an ordinary read
    /// transaction, so the copy is an ordinary replica at the home.
    Prefetch {
        /// Page number.
        page: u64,
    },
    /// Move the home of `page` (homed here) to `to`, which contributes memory (home
    /// migration, docs/protocol.md §12). Only with [`Config::migration`].
    MoveHome {
        /// Page number.
        page: u64,
        /// The new home.
        to: NodeId,
    },
    /// Membership: home node `node` is leaving and `to` (another home) takes its pages
    /// (docs/protocol.md §13). At every other node: no page's home moves to `node` from now
    /// on. At `node`, which must be given it last (once every other node has it and what they
    /// sent `node` before has been processed): it moves every page it homes to `to` and hands
    /// `to` its pointers ([`Machine::drained`] says when). Only with [`Config::migration`],
    /// one leave at a time.
    Retire {
        /// The node that leaves.
        node: NodeId,
        /// Its successor.
        to: NodeId,
    },
    /// Membership: `node` has left after its `Retire` drained ([`Machine::drained`]) and every
    /// frame it sent was processed: whatever would have gone to `node` goes to `to`, and
    /// requests outstanding at `node` are sent again there.
    Retired {
        /// The node that left.
        node: NodeId,
        /// Its successor.
        to: NodeId,
    },
}

impl Input {
    /// The page the input is about (`None` for `Tick`, `NodeDead`, `Retire` and `Retired`).
    pub fn page(&self) -> Option<u64> {
        match *self {
            Input::Fault { page, .. }
            | Input::Evict { page }
            | Input::Prefetch { page }
            | Input::MoveHome { page, .. } => Some(page),
            Input::Message { msg, .. } => Some(msg.page()),
            Input::Tick | Input::NodeDead(_) | Input::Retire { .. } | Input::Retired { .. } => None,
        }
    }
}

/// Why an eviction was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictRefusal {
    /// This node is the page's home; home pages are never evicted.
    HomeOwned,
    /// No copy is held.
    NotHeld,
    /// The page is busy (request, waiters, deferred work, or inside its
    /// residency window) or no record is free: try another page.
    Busy,
}

/// Why a home move was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveRefusal {
    /// Home migration is off ([`Config::migration`]).
    Off,
    /// This node is not the page's home.
    NotHome,
    /// The target is this node, a node that contributes no memory, or a node known dead.
    Target,
    /// The page is busy (a transaction is active or queued) or no transaction record is
    /// free: try later.
    Busy,
    /// The page is lost.
    Lost,
}

/// What a step did besides its actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Processed.
    Done,
    /// The fault could not be accepted (no free page record or waiter slot):
    /// retry it later. No action was produced.
    Busy,
    /// The input was ignored: a late message from a node known dead, or any
    /// non-fault input after the cluster stopped.
    Ignored,
    /// The eviction started; the page is dropped when the home accepts
    /// (or kept, writable again if it was, when it refuses).
    EvictStarted,
    /// The eviction was refused.
    EvictRefused(EvictRefusal),
    /// The prefetch request went out.
    PrefetchStarted,
    /// The home move started: the page is collected here, then handed to the new home.
    MoveStarted,
    /// The home move was refused.
    MoveRefused(MoveRefusal),
}

/// Errors of [`Machine::new`] and [`Machine::step`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StepError {
    /// A page outside the layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A page of another instance's partition.
    #[error("page {page} belongs to another shard (partition {index} of {count}): route it by (page / granule) % count")]
    NotMine {
        /// Page number.
        page: u64,
        /// This instance's partition index.
        index: u32,
        /// Partition count.
        count: u32,
    },
    /// `me` is not in the layout.
    #[error("node {0} is not in the layout: build the layout from the cluster inventory that includes it")]
    NotMember(NodeId),
    /// A message from a node outside the layout, or from this node.
    #[error("message from node {0}, which is not a peer in the layout")]
    BadSender(NodeId),
    /// `NodeDead` for this node or a non-member.
    #[error("NodeDead({0}) names this node or a node outside the layout")]
    BadDeadNode(NodeId),
    /// A message only a page's home may receive, for a page homed elsewhere,
    /// or one only the home may send, from another node.
    #[error(
        "message {name} about page {page} from {from} is misrouted: page {page}'s home is {home}"
    )]
    Misrouted {
        /// The message's name.
        name: &'static str,
        /// Page number.
        page: u64,
        /// Sender.
        from: NodeId,
        /// The page's home.
        home: NodeId,
    },
    /// A `Retire` or `Retired` this instance cannot carry out.
    #[error("cannot retire node {node} to node {to}: {why}")]
    BadRetire {
        /// The leaving node.
        node: NodeId,
        /// The successor named.
        to: NodeId,
        /// Why not.
        why: &'static str,
    },
    /// A layout given to `extend` changes or drops existing ranges.
    #[error("the new layout does not extend the current one: a join may only append nodes (with higher ids) after the existing ranges")]
    NotAnExtension,
    /// A step produced more actions than the buffer holds (a bug in the protocol): the
    /// instance stopped ([`FatalReason::ActionOverflow`]); the step's actions are its stop.
    #[error("a protocol step produced {lost} actions more than its buffer of {cap} holds: this instance stopped (a bug; please report it with the log)")]
    ActionOverflow {
        /// The buffer's capacity.
        cap: usize,
        /// Actions that did not fit.
        lost: usize,
    },
    /// The action buffer was not created by this machine's `new_actions`.
    #[error("action buffer holds {have} actions, this machine needs {need}: create it with Machine::new_actions")]
    BufferTooSmall {
        /// Its capacity.
        have: usize,
        /// The capacity needed.
        need: usize,
    },
    /// A peer (or this instance) broke the protocol. The step's actions are
    /// still valid and must be executed; the offending message was not
    /// applied.
    #[error(
        "protocol violation on page {page}: {what} (a peer runs a buggy or different protocol)"
    )]
    Violation {
        /// What was wrong.
        what: &'static str,
        /// Page number.
        page: u64,
    },
}

/// One protocol instance: the directory entries of its home pages and the
/// local state of all its pages, plus bounded pools for busy pages.
#[derive(Debug)]
pub struct Machine {
    pub(crate) me: NodeId,
    pub(crate) layout: Layout,
    pub(crate) part: Partition,
    pub(crate) cfg: Config,
    pub(crate) local_range: DenseRange,
    pub(crate) local: Vec<LocalState>,
    pub(crate) home_range: DenseRange,
    pub(crate) dir: Vec<DirEntry>,
    /// Home migration: per local page, 1 + the node this instance believes is the page's
    /// home, or 0 for the layout's home (the first hop of a request; a node that is no
    /// longer home answers `Nack(Moved)`).
    pub(crate) hint: Vec<u8>,
    /// Home migration: per directory entry, the page's move number as this entry knows it
    /// (the move that brought the home here, or the one that took it to `moved_to`).
    pub(crate) epochs: Vec<u32>,
    /// Home nodes leaving or gone (`Retire`): no home moves to them.
    pub(crate) leaving: NodeSet,
    /// Per node, 1 + the node that took over its pages when it left (0: none).
    pub(crate) succ: [u8; MAX_NODES],
    /// The leave in progress: (leaving node, successor).
    pub(crate) retiring: Option<(NodeId, NodeId)>,
    /// At the leaving node: the scan that moves its homes and pointers to the successor.
    pub(crate) drain: Option<super::retire::Drain>,
    /// This node has left (its own `Retired`): other nodes going away is no failure.
    pub(crate) left: bool,
    /// After `Retired`: the scan over page records that sends to the successor what was
    /// outstanding at the node that left (that node, its successor, next record).
    pub(crate) reroute: Option<(NodeId, NodeId, u16)>,
    /// Ping-pong damping levels of recently ping-ponging pages (direct-mapped).
    pub(crate) pp: Vec<super::residency::PpSlot>,
    pub(crate) txns: Txns,
    pub(crate) recs: Records,
    pub(crate) now: u64,
    next_txn: u64,
    pub(crate) dead: NodeSet,
    pub(crate) fatal: Option<FatalReason>,
    /// Death clean-up cursor over `dir`.
    pub(crate) cleanup: Option<usize>,
    pub(crate) stats: Stats,
    /// First violation seen during the current step.
    pub(crate) violation: Option<(&'static str, u64)>,
    /// A home-local request completed with waiters left: issue again after
    /// the queue run.
    pub(crate) reissue_local: Option<u64>,
    /// Most actions one page's work can produce in one step.
    pub(crate) page_bound: usize,
    action_cap: usize,
    #[cfg(test)]
    pub(crate) bug: Option<super::inject::Bug>,
}

impl Machine {
    /// Builds the instance `partition` of node `me`.
    pub fn new(
        me: NodeId,
        layout: Layout,
        partition: Partition,
        config: Config,
    ) -> Result<Self, StepError> {
        config.validate()?;
        let Some(my_range) = layout.range_of(me).copied() else {
            return Err(StepError::NotMember(me));
        };
        let local_range = DenseRange::new(layout.first_page(), layout.end_page(), partition);
        // With home migration a node that contributes memory may become the home of any
        // page: its directory covers the whole address space (zeroed, resident only where
        // used).
        let home_range = if config.migration && my_range.page_count > 0 {
            local_range
        } else {
            DenseRange::new(
                my_range.first_page,
                my_range.first_page + my_range.page_count,
                partition,
            )
        };
        let wpp = config.max_waiters_per_page as usize;
        // One page's work in one step: a chain of up to MAX_NODES + 1 queued
        // transactions (each at most 6 actions, the last one may send an
        // invalidation to every node), every waiter of the page, slack.
        let page_bound = 6 * (MAX_NODES + 1) + MAX_NODES + wpp + 16;
        let action_cap = 2 * page_bound + config.max_waiters as usize + 8;
        Ok(Self {
            me,
            local: zeroed_table(local_range.len()),
            dir: zeroed_table(home_range.len()),
            hint: if config.migration {
                vec![0; local_range.len()]
            } else {
                Vec::new()
            },
            epochs: if config.migration {
                vec![0; home_range.len()]
            } else {
                Vec::new()
            },
            leaving: NodeSet::EMPTY,
            succ: [0; MAX_NODES],
            retiring: None,
            drain: None,
            left: false,
            reroute: None,
            pp: vec![super::residency::PpSlot::default(); super::residency::PP_SLOTS],
            local_range,
            home_range,
            txns: Txns::new(config.max_home_txns),
            recs: Records::new(config.max_active_pages, config.max_waiters),
            layout,
            part: partition,
            cfg: config,
            now: 0,
            next_txn: 1,
            dead: NodeSet::EMPTY,
            fatal: None,
            cleanup: None,
            stats: Stats::default(),
            violation: None,
            reissue_local: None,
            page_bound,
            action_cap,
            #[cfg(test)]
            bug: None,
        })
    }

    /// Grows the layout by nodes appended at the top of the address space (a node joined).
    /// `layout` must keep every current range as it is and only add ranges after them; the
    /// pages of the new ranges start Invalid here. Existing state is untouched (dense indices
    /// of existing pages do not move), so this can run between any two steps.
    pub fn extend(&mut self, layout: Layout) -> Result<(), StepError> {
        let old = self.layout.ranges();
        let new = layout.ranges();
        if layout.page_size() != self.layout.page_size()
            || layout.first_page() != self.layout.first_page()
            || new.len() < old.len()
            || new[..old.len()] != *old
        {
            return Err(StepError::NotAnExtension);
        }
        self.local_range = DenseRange::new(layout.first_page(), layout.end_page(), self.part);
        self.local
            .resize(self.local_range.len(), LocalState::default());
        if self.cfg.migration {
            self.hint.resize(self.local_range.len(), 0);
            if self.home_range.len() > 0 {
                self.home_range = self.local_range;
                self.dir.resize(self.home_range.len(), DirEntry::default());
                self.epochs.resize(self.home_range.len(), 0);
            }
        }
        self.layout = layout;
        Ok(())
    }

    /// The protocol's tunables.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The partition of pages this instance serves.
    pub fn partition(&self) -> Partition {
        self.part
    }

    /// The layout this instance works with.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A buffer large enough for any step of this machine.
    pub fn new_actions(&self) -> Actions {
        Actions::with_capacity(self.action_cap)
    }

    /// Processes one input at time `now` (ns, non-decreasing; a smaller value
    /// counts as the previous one). `out` is cleared first; execute its
    /// actions in order. On `Err(Violation)` the actions are still valid.
    pub fn step(
        &mut self,
        now: u64,
        input: Input,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        out.clear();
        if out.capacity() < self.action_cap {
            return Err(StepError::BufferTooSmall {
                have: out.capacity(),
                need: self.action_cap,
            });
        }
        self.now = self.now.max(now);
        self.violation = None;
        if self.fatal.is_some() {
            return self.step_fatal(input, out);
        }
        let res = match input {
            Input::Fault {
                page,
                access,
                token,
            } => self.on_fault(page, access, token, out),
            Input::Message { from, msg } => self.on_message(from, msg, out),
            Input::Tick => {
                self.run_timers(out);
                self.run_reroute(out);
                self.run_cleanup(out);
                self.run_drain(out);
                Ok(Outcome::Done)
            }
            Input::Evict { page } => self.on_evict(page, out),
            Input::NodeDead(node) => self.on_node_dead(node, out),
            Input::Prefetch { page } => self.on_prefetch(page, out),
            Input::MoveHome { page, to } => self.on_move_home(page, to, out),
            Input::Retire { node, to } => self.on_retire(node, to, out),
            Input::Retired { node, to } => self.on_retired(node, to, out),
        };
        if out.overflowed() > 0 {
            let lost = out.overflowed();
            // Some of the step's actions were never recorded: the instance's state has moved
            // past effects that will not happen. Stop it, failing every waiter.
            out.clear();
            self.go_fatal(FatalReason::ActionOverflow, out);
            return Err(StepError::ActionOverflow {
                cap: out.capacity(),
                lost,
            });
        }
        match (res, self.violation.take()) {
            (Ok(_), Some((what, page))) => Err(StepError::Violation { what, page }),
            (res, _) => res,
        }
    }

    /// Who may send what: requests and replies to a home only to the page's home; orders
    /// from a home only from it; data from anyone.
    fn check_route(&self, from: NodeId, msg: &Msg, home: NodeId) -> Result<(), StepError> {
        let to_home = matches!(
            msg,
            Msg::ReadReq { .. }
                | Msg::WriteReq { .. }
                | Msg::UpgradeReq { .. }
                | Msg::InvAck { .. }
                | Msg::FwdAck { .. }
                | Msg::Done { .. }
                | Msg::EvictReq { .. }
                | Msg::RecallAck { .. }
        );
        let misrouted = if to_home {
            home != self.me
        } else {
            !matches!(msg, Msg::Data { .. }) && from != home
        };
        if misrouted {
            return Err(StepError::Misrouted {
                name: msg.name(),
                page: msg.page(),
                from,
                home,
            });
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        from: NodeId,
        msg: Msg,
        out: &mut Actions,
    ) -> Result<Outcome, StepError> {
        if from == self.me || !self.layout.members().contains(from) {
            return Err(StepError::BadSender(from));
        }
        let page = msg.page();
        let li = self.local_index(page)?;
        if self.cfg.migration {
            if self.dead.contains(from) {
                // Under home migration a late reply from a dead node may reach a node the
                // home has since left: it is ignored like any late message, not misrouted.
                self.stats.late_messages += 1;
                return Ok(Outcome::Ignored);
            }
            self.check_route_migrating(from, &msg)?;
        } else {
            let home = self.layout.home_of(page)?;
            self.check_route(from, &msg, home)?;
        }
        if self.dead.contains(from) {
            self.stats.late_messages += 1;
            return Ok(Outcome::Ignored);
        }
        if self.cfg.migration {
            self.learn_home(li, from, &msg);
        }
        match msg {
            Msg::ReadReq { txn, page } => {
                self.on_request(from, page, super::records::ReqKind::Read, txn, 0, out)
            }
            Msg::WriteReq { txn, page } => {
                self.on_request(from, page, super::records::ReqKind::Write, txn, 0, out)
            }
            Msg::UpgradeReq { txn, page, version } => self.on_request(
                from,
                page,
                super::records::ReqKind::Upgrade,
                txn,
                version,
                out,
            ),
            Msg::InvAck { txn, page } => self.on_inv_ack(from, page, txn, out),
            Msg::FwdAck { txn, page, outcome } => self.on_fwd_ack(from, page, txn, outcome, out),
            Msg::Done { txn, page } => self.on_done(from, page, txn, out),
            Msg::EvictReq { txn, page, dirty } => self.on_evict_req(from, page, txn, dirty, out),
            Msg::RecallAck { txn, page, have } => self.on_recall_ack(from, page, txn, have, out),
            Msg::FwdRead {
                txn,
                requester,
                version,
                ..
            } => self.on_fwd(li, false, requester, txn, version, out),
            Msg::FwdWrite {
                txn,
                requester,
                version,
                ..
            } => self.on_fwd(li, true, requester, txn, version, out),
            Msg::Inv { txn, .. } => self.on_inv(li, txn, out),
            Msg::Data {
                txn,
                version,
                writable,
                ..
            } => self.on_data(li, from, txn, version, writable, out),
            Msg::Grant { txn, version, .. } => self.on_grant(li, txn, version, out),
            Msg::Nack { txn, reason, .. } => {
                // A redirect to the node that sends it says nothing (only a buggy or hostile
                // peer sends one): taken as busy, so the request is retried after the
                // backoff instead of bouncing at network speed.
                let reason = match reason {
                    NackReason::Moved(n) if n == from => NackReason::Busy,
                    r => r,
                };
                self.on_nack(li, txn, reason, out)
            }
            Msg::EvictAck { txn, .. } => self.on_evict_ack(li, txn, out),
            Msg::Recall { txn, .. } => self.on_recall(li, txn, out),
            Msg::HomeMove {
                version,
                epoch,
                content,
                ..
            } => self.on_home_move(li, version, epoch, content, out),
            Msg::HomePointer { home, epoch, .. } => self.on_home_pointer(from, li, home, epoch),
        }
    }

    /// [`Self::check_route`] under home migration, where a node cannot know for certain which
    /// node is a page's home: requests and evictions may reach a node that is no longer (or
    /// not yet) the home, which redirects them; replies within a transaction must reach the
    /// home; orders (and home moves) come from nodes that contribute memory, the only ones
    /// that can be homes.
    fn check_route_migrating(&self, from: NodeId, msg: &Msg) -> Result<(), StepError> {
        let page = msg.page();
        let misrouted = match msg {
            Msg::ReadReq { .. }
            | Msg::WriteReq { .. }
            | Msg::UpgradeReq { .. }
            | Msg::EvictReq { .. } => false,
            Msg::InvAck { .. } | Msg::FwdAck { .. } | Msg::Done { .. } | Msg::RecallAck { .. } => {
                !self.homed_here(page)
            }
            Msg::Data { .. } => false,
            _ => !self.layout.homes().contains(from),
        };
        if misrouted {
            return Err(StepError::Misrouted {
                name: msg.name(),
                page,
                from,
                home: self.home_now(page)?,
            });
        }
        Ok(())
    }

    /// Under home migration, what a message says about where the page's home is: an order
    /// comes from the home.
    fn learn_home(&mut self, li: usize, from: NodeId, msg: &Msg) {
        let home = match *msg {
            Msg::Inv { .. }
            | Msg::FwdRead { .. }
            | Msg::FwdWrite { .. }
            | Msg::Grant { .. }
            | Msg::EvictAck { .. }
            | Msg::Recall { .. }
            | Msg::Nack {
                reason: NackReason::Lost,
                ..
            } => from,
            // A redirect counts only for the request it answers (see `on_nack`): one for an
            // earlier request may name a home the page has left since.
            _ => return,
        };
        self.set_hint(li, home);
    }

    fn step_fatal(&mut self, input: Input, out: &mut Actions) -> Result<Outcome, StepError> {
        match input {
            Input::Fault { page, token, .. } => {
                self.local_index(page)?;
                out.push(Action::FaultFailed {
                    page,
                    token,
                    reason: FailReason::ClusterDown,
                });
                Ok(Outcome::Done)
            }
            _ => Ok(Outcome::Ignored),
        }
    }

    /// Stops the instance: every waiter fails, nothing is sent any more.
    pub(crate) fn go_fatal(&mut self, reason: FatalReason, out: &mut Actions) {
        self.fatal = Some(reason);
        out.push(Action::ClusterFatal { reason });
        for i in 0..self.recs.recs.len() {
            if self.recs.recs[i].in_use {
                self.fail_waiters(i as u16, FailReason::ClusterDown, out);
            }
        }
    }

    // ---- helpers shared by the sides ----

    /// Dense local index of `page`, validating range and partition.
    pub(crate) fn local_index(&self, page: u64) -> Result<usize, StepError> {
        self.layout.home_of(page)?;
        self.local_range.index(page).ok_or(StepError::NotMine {
            page,
            index: self.part.index(),
            count: self.part.count(),
        })
    }

    /// Whether this instance holds the live directory entry of `page` (is its home).
    pub(crate) fn homed_here(&self, page: u64) -> bool {
        let Some(di) = self.home_range.index(page) else {
            return false;
        };
        let by_layout = self.layout.home_of(page) == Ok(self.me);
        by_layout != self.dir[di].flipped()
    }

    /// The node this instance takes for `page`'s home: itself when it holds the entry,
    /// otherwise the layout's home or, under home migration, the last home it learnt of.
    pub(crate) fn home_now(&self, page: u64) -> Result<NodeId, StepError> {
        let by_layout = self.layout.home_of(page)?;
        if !self.cfg.migration {
            return Ok(by_layout);
        }
        if self.homed_here(page) {
            return Ok(self.me);
        }
        // A node that left is asked through its successor.
        let hint = self
            .local_range
            .index(page)
            .and_then(|li| self.hint.get(li).copied())
            .unwrap_or(0)
            .checked_sub(1)
            .and_then(|n| NodeId::new(u16::from(n)).ok())
            .map(|n| self.successor(n))
            .filter(|&n| n != self.me);
        // Not this node, which is not the home (told so by a redirect that crossed the home
        // moving away from here, or one that reached it before the move here): where this
        // node sent it last, or the layout's home.
        let moved = self
            .home_range
            .index(page)
            .and_then(|di| self.dir[di].moved_to())
            .map(|n| self.successor(n))
            .filter(|&n| n != self.me);
        Ok(hint.or(moved).unwrap_or_else(|| self.successor(by_layout)))
    }

    /// Records where local page `li`'s home is (home migration only).
    pub(crate) fn set_hint(&mut self, li: usize, home: NodeId) {
        if let Some(h) = self.hint.get_mut(li) {
            // Node ids are below 64.
            *h = home.get() as u8 + 1;
        }
    }

    /// A fresh transaction id.
    pub(crate) fn fresh_txn(&mut self) -> u64 {
        let t = self.next_txn;
        self.next_txn += 1;
        t
    }

    /// The next transaction id (every id below it was issued).
    pub(crate) fn peek_txn(&self) -> u64 {
        self.next_txn
    }

    /// Records a protocol violation (reported by `step` after the work).
    pub(crate) fn violate(&mut self, what: &'static str, page: u64) {
        self.stats.violations += 1;
        if self.violation.is_none() {
            self.violation = Some((what, page));
        }
    }

    pub(crate) fn send(
        &mut self,
        to: NodeId,
        msg: Msg,
        data: Option<super::action::DataSource>,
        out: &mut Actions,
    ) {
        debug_assert_eq!(data.is_some(), msg.has_data());
        out.push(Action::Send { to, msg, data });
    }

    // ---- queries ----

    /// This instance's node.
    pub fn node(&self) -> NodeId {
        self.me
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether the cluster stopped, and why.
    pub fn fatal(&self) -> Option<FatalReason> {
        self.fatal
    }

    /// The nodes this instance knows are dead.
    pub fn dead(&self) -> NodeSet {
        self.dead
    }

    /// The local access to `page`, if it is in this instance's partition.
    pub fn local_access(&self, page: u64) -> Option<PageAccess> {
        let li = self.local_index(page).ok()?;
        Some(self.local[li].access())
    }

    /// The directory state of `page`, if this instance is its home.
    pub fn dir_state(&self, page: u64) -> Option<DirState> {
        self.dir_entry(page).map(|e| e.state())
    }

    /// The directory entry of `page`, if this instance is its home.
    pub fn dir_entry(&self, page: u64) -> Option<DirEntry> {
        if !self.homed_here(page) {
            return None;
        }
        self.home_range.index(page).map(|di| self.dir[di])
    }

    /// Whether this instance is `page`'s home now.
    pub fn is_home(&self, page: u64) -> bool {
        self.homed_here(page)
    }

    /// The node this instance takes for `page`'s home (itself, the layout's home, or under
    /// home migration the last home it learnt of); `None` for a page outside the layout.
    pub fn home_of(&self, page: u64) -> Option<NodeId> {
        self.home_now(page).ok()
    }

    /// Under home migration, where `page`'s home went when it last moved away from here.
    pub fn moved_to(&self, page: u64) -> Option<NodeId> {
        let di = self.home_range.index(page)?;
        if self.homed_here(page) {
            return None;
        }
        self.dir[di].moved_to()
    }

    /// When the caller should next step `Tick` (a past time means now).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.fatal.is_some() {
            return None;
        }
        if self.cleanup.is_some() || self.reroute.is_some() {
            return Some(self.now);
        }
        let drain = self.drain.and_then(|d| d.deadline(self.now));
        match (drain, self.recs.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether nothing is in flight: no home transaction, no outstanding
    /// request, no waiter, no deferred work, no pending clean-up.
    pub fn is_quiescent(&self) -> bool {
        self.txns.in_use() == 0
            && self.cleanup.is_none()
            && self.reroute.is_none()
            && self.recs.recs.iter().all(|r| {
                !r.in_use || (r.req == Req::Idle && r.n_waiters == 0 && r.deferred.is_none())
            })
    }

    /// Whether any transaction at this home still waits for a message from
    /// `node` (after `NodeDead(node)` and its clean-up, it must not).
    pub fn is_waiting_on(&self, node: NodeId) -> bool {
        self.dir.iter().filter_map(DirEntry::head).any(|h| {
            let t = &self.txns.items[usize::from(h)];
            match t.phase {
                Phase::Queued | Phase::WaitHome => false,
                Phase::Invalidating => t.pending.contains(node),
                Phase::Forwarded => {
                    (t.owner == node && t.await_fwd_ack)
                        || (t.requester == node && t.await_done && !t.req_gone)
                }
                Phase::Recalling => t.requester == node,
            }
        })
    }

    /// Whether a dirty write-back of `page` is outstanding here.
    pub fn is_evicting(&self, page: u64) -> bool {
        self.local_range
            .index(page)
            .and_then(|li| self.local[li].record())
            .is_some_and(|ri| matches!(self.recs.recs[usize::from(ri)].req, Req::Evicting { .. }))
    }

    /// Threads waiting for `page` here (0 for a page of another partition).
    pub fn waiters_on(&self, page: u64) -> usize {
        self.local_range
            .index(page)
            .and_then(|li| self.local[li].record())
            .map_or(0, |ri| self.recs.recs[usize::from(ri)].n_waiters as usize)
    }

    /// Whether the death clean-up is still running.
    pub fn cleanup_pending(&self) -> bool {
        self.cleanup.is_some()
    }

    /// Free waiter slots (for tests and telemetry).
    pub fn free_waiters(&self) -> usize {
        self.recs.waiters_free_count()
    }

    /// Whether every page record is free.
    pub fn records_idle(&self) -> bool {
        self.recs.all_free()
    }
}

#[cfg(test)]
impl Machine {
    /// Everything this instance knows about `page` (failure reports).
    pub(crate) fn debug_page(&self, page: u64) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if let Some(li) = self.local_range.index(page) {
            let st = self.local[li];
            let _ = write!(s, "local {:?}", st.access());
            if let Some(ri) = st.record() {
                let r = self.recs.recs[usize::from(ri)];
                let _ = write!(
                    s,
                    " rec#{ri} req={:?} recalled={} version={} waiters={} acquired_at={:?} deferred={:?}",
                    r.req, r.recalled, r.version, r.n_waiters, r.acquired_at, r.deferred
                );
            }
        }
        if let Some(di) = self.home_range.index(page) {
            let e = self.dir[di];
            let _ = write!(s, " | dir {:?} v{}", e.state(), e.version());
            let mut h = e.head();
            while let Some(i) = h {
                let t = self.txns.items[usize::from(i)];
                let _ = write!(
                    s,
                    "\n      txn#{i} {:?} from {} txn {} {:?} pending={:?} owner={} fwd_ack={} done={} gone={} home_has={}",
                    t.kind, t.requester, t.req_txn, t.phase, t.pending, t.owner, t.await_fwd_ack, t.await_done,
                    t.req_gone, t.home_has
                );
                h = (t.next != super::txn::NIL16).then_some(t.next);
            }
        }
        for (di, e) in self.dir.iter().enumerate() {
            if let Some(h) = e.head() {
                let t = self.txns.items[usize::from(h)];
                let _ = write!(
                    s,
                    " [busy page {} {:?} {:?} from {} owner {} pending {:?} fwd_ack {} done {}]",
                    self.home_range.page(di),
                    t.kind,
                    t.phase,
                    t.requester,
                    t.owner,
                    t.pending,
                    t.await_fwd_ack,
                    t.await_done
                );
            }
        }
        let _ = write!(
            s,
            " | txns in use {} free waiters {} next deadline {:?} now {}",
            self.txns.in_use(),
            self.recs.waiters_free_count(),
            self.next_deadline(),
            self.now
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Layout, NodeRange, Partition};

    fn n(i: u16) -> NodeId {
        NodeId::new(i).unwrap()
    }

    #[test]
    fn a_step_that_overflows_its_buffer_stops_the_instance_instead_of_growing_it() {
        let layout = Layout::new(
            4096,
            vec![
                NodeRange {
                    node: n(0),
                    first_page: 0,
                    page_count: 4,
                },
                NodeRange {
                    node: n(1),
                    first_page: 4,
                    page_count: 4,
                },
            ],
        )
        .unwrap();
        let mut m = Machine::new(n(0), layout, Partition::WHOLE, Config::default()).unwrap();
        let mut out = m.new_actions();
        let cap = out.capacity();
        // A remote read waits; then a planted bug floods the next step.
        let read = |page, token| Input::Fault {
            page,
            access: Access::Read,
            token,
        };
        assert_eq!(m.step(1, read(5, 7), &mut out), Ok(Outcome::Done));
        m.bug = Some(super::super::inject::Bug::FloodActions);
        let e = m.step(2, read(6, 8), &mut out).unwrap_err();
        assert!(
            matches!(e, StepError::ActionOverflow { cap: c, lost } if c == cap && lost >= 1),
            "{e:?}"
        );
        // The buffer never grew; the step's actions are the stop: the waiting fault fails.
        assert_eq!(out.capacity(), cap);
        assert!(out.len() <= cap);
        assert_eq!(out.overflowed(), 0);
        assert!(out.iter().any(|a| matches!(
            a,
            Action::ClusterFatal {
                reason: FatalReason::ActionOverflow
            }
        )));
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::FaultFailed { token: 7, .. })));
        // Later faults fail at once.
        m.bug = None;
        assert_eq!(m.step(3, read(7, 9), &mut out), Ok(Outcome::Done));
        assert!(matches!(
            out.as_slice(),
            [Action::FaultFailed {
                reason: FailReason::ClusterDown,
                ..
            }]
        ));
    }
}
