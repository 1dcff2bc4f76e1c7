//! Deliberate protocol bugs, used only by the simulator's self-tests to prove
//! that its checker catches them. The knob (`Machine::bug`) exists only in
//! test builds; in a normal build `bug_on` is a constant `false` and the
//! compiler removes every injected branch.

use super::machine::Machine;

/// A bug to inject.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bug {
    /// The home grants a write without waiting for the last sharer's ack.
    SkipInvAckWait,
    /// An owner serving a read forward does not write-protect its copy.
    NoWriteProtectOnForward,
    /// A requester that got data from a non-home node does not send `Done`.
    RequesterSkipsDone,
    /// The home completes a forwarded transaction without waiting for `Done`.
    HomeSkipsDoneWait,
    /// Dead nodes stay in sharer sets and ack sets.
    KeepDeadSharers,
    /// The home installs a zero page instead of a dirty write-back.
    DropWriteBack,
    /// A fault produces more actions than the buffer holds.
    FloodActions,
    /// A home move hands the page over without invalidating the other sharers first.
    MoveKeepsSharers,
    /// A leaving home keeps its pointers instead of handing them to its successor.
    RetireDropsPointers,
}

impl Machine {
    /// Whether `bug` is injected into this instance.
    #[cfg(test)]
    pub(crate) fn bug_on(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    /// Always false outside tests.
    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn bug_on(&self, _bug: Bug) -> bool {
        false
    }
}
