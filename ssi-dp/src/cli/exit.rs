//! How a node ends: its exit codes (the table in docs/operations.md, "Exit codes") and the
//! one line it prints when the cluster, not its own job, stopped it.

use std::time::{Duration, Instant};

use coherence::{FatalReason, Layout, NodeId};
use engine::config::PAGE_SIZE;
use engine::node_state::StopReason;

/// The job finished and its check passed, or the node was stopped in order.
pub const OK: i32 = 0;
/// The job's check failed, or an internal error (a protocol bug, a failed system call).
pub const FAILED: i32 = 1;
/// Bad command line, configuration or file, or missing privileges: fix and run again.
pub const USAGE: i32 = 2;
/// A node that homed guest memory died: its pages are gone and the cluster cannot continue.
pub const HOME_DIED: i32 = 3;
/// The cluster declared this node dead (it was stopped or cut off for longer than the
/// failure timeout); it must rejoin as a new node.
pub const DECLARED_DEAD: i32 = 4;
/// A thread of this node touched a page whose only copy died with another node.
pub const PAGE_LOST: i32 = 5;

/// Notices when the thread that calls [`PauseWatch::tick`] every few milliseconds did not run
/// for about the failure timeout or longer: then the other members have likely declared this
/// node dead, and what stops it soon after (its peers' connections closing look like their
/// deaths) is reported as that.
#[derive(Debug)]
pub struct PauseWatch {
    threshold: Option<Duration>,
    last: Instant,
    /// The latest pause past the threshold: how long, and when it ended.
    pause: Option<(Duration, Instant)>,
}

impl PauseWatch {
    /// Watches for pauses of at least `threshold` (the control plane's failure timeout less
    /// one heartbeat period, as the silence the peers count starts at our last heartbeat;
    /// `None` without a control plane, where silence alone kills nobody).
    pub fn new(threshold: Option<Duration>) -> Self {
        Self {
            threshold,
            last: Instant::now(),
            pause: None,
        }
    }

    /// Call once per loop turn.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let gap = now - self.last;
        if self.threshold.is_some_and(|t| gap >= t) {
            self.pause = Some((gap, now));
        }
        self.last = now;
    }

    /// The pause that may have got this node declared dead, if one ended recently (a stop
    /// long after it has another cause).
    pub fn declared_dead(&self) -> Option<Duration> {
        let (gap, ended) = self.pause?;
        let window = self.threshold?.max(Duration::from_secs(1)) * 5;
        (ended.elapsed() < window).then_some(gap)
    }
}

/// The exit code and the line for a node that `reason` stopped. `pause` is a pause past the
/// failure timeout, if one was seen ([`PauseWatch::declared_dead`]); it explains whatever
/// was recorded after it.
pub fn explain(reason: StopReason, pause: Option<Duration>, layout: &Layout) -> (i32, String) {
    if let Some(p) = pause {
        return (
            DECLARED_DEAD,
            format!(
                "this node did not run for {:.1} s (stopped or starved of CPU), longer than the \
                 failure timeout: the cluster declared it dead and closed its connections; it \
                 must rejoin as a new node, with a new id",
                p.as_secs_f64()
            ),
        );
    }
    match reason {
        StopReason::Protocol(FatalReason::HomeDied(home)) => (HOME_DIED, home_died(home, layout)),
        StopReason::Protocol(FatalReason::ActionOverflow) => (
            FAILED,
            "a protocol instance of this node stopped: one of its steps produced more actions \
             than its buffer holds (a bug; please report it with this log)"
                .into(),
        ),
        StopReason::PageLost { page } => (
            PAGE_LOST,
            format!(
                "a thread of this node touched guest page {page} (address {:#x}), whose only \
                 copy was on a node that died; the page is lost and this node stops",
                page * PAGE_SIZE
            ),
        ),
        StopReason::DeclaredDead => (
            DECLARED_DEAD,
            "a member refused this node: the cluster declared it dead; it must rejoin as a \
             new node, with a new id"
                .into(),
        ),
        StopReason::MemoryOp { op, page } => (
            FAILED,
            format!(
                "the {op} of guest page {page} (address {:#x}) failed (the kernel's error is \
                 logged above): this node's memory no longer matches its protocol state, so it \
                 stops rather than serve stale or unprotected data. If the error is ENOMEM, the \
                 node ran out of memory (a cgroup limit or an overcommitted host): give it more",
                page * PAGE_SIZE
            ),
        ),
    }
}

fn home_died(home: NodeId, layout: &Layout) -> String {
    let homed = match layout.range_of(home) {
        Some(r) if r.page_count > 0 => format!(
            "home to guest pages {}..{} ({} MiB at {:#x})",
            r.first_page,
            r.first_page + r.page_count,
            (r.page_count * PAGE_SIZE) >> 20,
            r.first_page * PAGE_SIZE
        ),
        _ => "home to part of the address space".into(),
    };
    format!(
        "node {} died; it was {homed}; the cluster cannot continue (this version does not \
         replicate home pages)",
        home.get()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use coherence::NodeRange;

    fn layout() -> Layout {
        let r = |node, first_page, page_count| NodeRange {
            node: NodeId::new(node).unwrap(),
            first_page,
            page_count,
        };
        Layout::new(4096, vec![r(0, 0, 4096), r(1, 4096, 4096), r(2, 8192, 0)]).unwrap()
    }

    #[test]
    fn each_reason_has_its_code_and_names_what_was_lost() {
        let home = StopReason::Protocol(FatalReason::HomeDied(NodeId::new(1).unwrap()));
        let (code, line) = explain(home, None, &layout());
        assert_eq!(code, HOME_DIED);
        assert!(
            line.contains(
                "node 1 died; it was home to guest pages 4096..8192 (16 MiB at 0x1000000)"
            ),
            "{line}"
        );
        let (code, line) = explain(StopReason::PageLost { page: 3 }, None, &layout());
        assert_eq!(code, PAGE_LOST);
        assert!(line.contains("page 3 (address 0x3000)"), "{line}");
        assert_eq!(
            explain(StopReason::DeclaredDead, None, &layout()).0,
            DECLARED_DEAD
        );
        let overflow = StopReason::Protocol(FatalReason::ActionOverflow);
        assert_eq!(explain(overflow, None, &layout()).0, FAILED);
        let op = StopReason::MemoryOp {
            op: "write-protect",
            page: 5,
        };
        let (code, line) = explain(op, None, &layout());
        assert_eq!(code, FAILED);
        assert!(
            line.contains("the write-protect of guest page 5 (address 0x5000) failed"),
            "{line}"
        );
        // After a pause past the failure timeout, a peer's "death" is this node's own.
        let (code, line) = explain(home, Some(Duration::from_secs(10)), &layout());
        assert_eq!(code, DECLARED_DEAD);
        assert!(line.contains("did not run for 10.0 s"), "{line}");
    }

    #[test]
    fn only_pauses_past_the_timeout_count() {
        let mut w = PauseWatch::new(Some(Duration::from_millis(30)));
        w.tick();
        assert_eq!(w.declared_dead(), None);
        std::thread::sleep(Duration::from_millis(60));
        w.tick();
        assert!(w
            .declared_dead()
            .is_some_and(|p| p >= Duration::from_millis(60)));
        let mut none = PauseWatch::new(None);
        std::thread::sleep(Duration::from_millis(60));
        none.tick();
        assert_eq!(
            none.declared_dead(),
            None,
            "without a control plane, silence kills nobody"
        );
    }
}
