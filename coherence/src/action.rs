//! What the state machine asks its caller to do, and the bounded buffer the
//! caller provides for it. Actions are executed in order; see
//! `docs/protocol.md` §4 for what the order means.

use super::msg::Msg;
use super::node::NodeId;

/// Where the payload of a sent message comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSource {
    /// The page's current local contents, read when the action is executed.
    Local,
    /// A zero page (a home page that was never materialised).
    Zero,
}

/// What to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallSource {
    /// The payload of the message being processed by this step.
    Payload,
    /// A zero page.
    Zero,
}

/// Why a fault cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The page's only copy died with its exclusive owner.
    Lost,
    /// The cluster stopped (a home died).
    ClusterDown,
}

/// Why the cluster stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalReason {
    /// A node that is home to pages died; its pages are gone.
    HomeDied(NodeId),
    /// A step produced more actions than the buffer holds: a bug in this protocol instance.
    /// The actions it could not record were never carried out, so its state no longer
    /// matches the memory, and it stops rather than go on.
    ActionOverflow,
}

/// One thing for the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to `to`; when `msg.has_data()`, `data` says what to attach.
    Send {
        /// Destination node.
        to: NodeId,
        /// The message.
        msg: Msg,
        /// Payload source, `Some` exactly when `msg.has_data()`.
        data: Option<DataSource>,
    },
    /// Map the page (read-only or writable) with the given contents; wakes
    /// the page's waiting threads. The page is unmapped before.
    Install {
        /// Page number.
        page: u64,
        /// Map writable.
        writable: bool,
        /// Contents.
        source: InstallSource,
    },
    /// Clear write protection in place (upgrade); wakes waiters.
    MakeWritable {
        /// Page number.
        page: u64,
    },
    /// Write-protect the mapped page (its contents become stable).
    WriteProtect {
        /// Page number.
        page: u64,
    },
    /// Unmap and discard the local copy (after any earlier send of it has
    /// captured the contents).
    Drop {
        /// Page number.
        page: u64,
    },
    /// Wake threads waiting on the page (the access is already allowed).
    Wake {
        /// Page number.
        page: u64,
    },
    /// The fault identified by `token` is satisfied.
    FaultDone {
        /// Page number.
        page: u64,
        /// The token given with the fault.
        token: u64,
    },
    /// The fault identified by `token` cannot be served.
    FaultFailed {
        /// Page number.
        page: u64,
        /// The token given with the fault.
        token: u64,
        /// Why.
        reason: FailReason,
    },
    /// Notice: the page is lost (its exclusive owner died).
    PageLost {
        /// Page number.
        page: u64,
    },
    /// Notice: the cluster cannot continue.
    ClusterFatal {
        /// Why.
        reason: FatalReason,
    },
}

/// A caller-owned action buffer whose capacity is fixed at creation (by
/// [`super::Machine::new_actions`]); a step never grows it.
#[derive(Debug)]
pub struct Actions {
    items: Vec<Action>,
    cap: usize,
    /// Actions refused because the buffer was full (the machine turns this into a fatal
    /// stop at the end of the step).
    overflow: usize,
}

impl Action {
    /// The page the action is about (`None` for `ClusterFatal`).
    pub fn page(&self) -> Option<u64> {
        match *self {
            Action::Send { msg, .. } => Some(msg.page()),
            Action::Install { page, .. }
            | Action::MakeWritable { page }
            | Action::WriteProtect { page }
            | Action::Drop { page }
            | Action::Wake { page }
            | Action::FaultDone { page, .. }
            | Action::FaultFailed { page, .. }
            | Action::PageLost { page } => Some(page),
            Action::ClusterFatal { .. } => None,
        }
    }
}

impl Actions {
    pub(crate) fn with_capacity(cap: usize) -> Self {
        Self {
            items: Vec::with_capacity(cap),
            cap,
            overflow: 0,
        }
    }

    /// The capacity the buffer was created with.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Number of actions produced.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no action was produced.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The actions, in execution order.
    pub fn as_slice(&self) -> &[Action] {
        &self.items
    }

    /// Iterates in execution order.
    pub fn iter(&self) -> std::slice::Iter<'_, Action> {
        self.items.iter()
    }

    /// Forgets the actions (keeps the storage).
    pub fn clear(&mut self) {
        self.items.clear();
        self.overflow = 0;
    }

    /// Actions the step could not record because the buffer was full (always 0 after a
    /// step returned; see [`FatalReason::ActionOverflow`]).
    pub fn overflowed(&self) -> usize {
        self.overflow
    }

    /// Room left.
    pub(crate) fn remaining(&self) -> usize {
        self.cap.saturating_sub(self.items.len())
    }

    /// Records `a`. The machine sizes the buffer for the worst step and budgets the
    /// open-ended work (timers, death clean-up) against `remaining()`, so a full buffer is a
    /// bug: the action is counted as lost (the buffer never grows, in any build) and the
    /// step ends in [`FatalReason::ActionOverflow`].
    pub(crate) fn push(&mut self, a: Action) {
        if self.items.len() < self.cap {
            self.items.push(a);
        } else {
            self.overflow += 1;
        }
    }
}

impl<'a> IntoIterator for &'a Actions {
    type Item = &'a Action;
    type IntoIter = std::slice::Iter<'a, Action>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}
