//! A shard's mailbox for the rare commands that come from the control side: grow the layout
//! (a node joined), take over new connections, answer a page query, carry out a home node's
//! leave. Posting takes a lock; the shard checks one atomic flag per turn and takes the lock
//! only when something is there, so the fault path never contends on it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Conn;
use coherence::{Layout, NodeId};

/// A directory entry as a page query reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirView {
    /// `zero`, `shared`, `exclusive` or `lost`.
    pub state: &'static str,
    /// The exclusive owner.
    pub owner: Option<u16>,
    /// The read-only holders.
    pub sharers: Vec<u16>,
    /// The page's version.
    pub version: u32,
    /// Whether a transaction is in flight on it.
    pub busy: bool,
}

/// What a page query returns from the shard that owns the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageState {
    /// The directory entry, if this node homes the page.
    pub dir: Option<DirView>,
    /// Recent requests for the page by node, `(node, count)`, as this home counted them.
    pub recent: Vec<(u16, u64)>,
    /// Home migration: where the page's home went when it last left this node (and it is
    /// not back), so the query can follow it.
    pub moved_to: Option<u16>,
    /// The moves of this page this node made, and why (oldest first).
    pub moves: Vec<crate::stats::MoveRecord>,
}

/// A command for a shard.
#[derive(Debug)]
pub enum Command {
    /// Switch to a grown layout (a node joined).
    Extend(Layout),
    /// Take over these connections (to a node that joined, or new connections for sessions
    /// whose connection broke).
    AddConns(Vec<Conn>),
    /// Report the state of a page this shard owns.
    QueryPage(u64, Sender<PageState>),
    /// Home node `node` leaves and `to` takes its pages (docs/protocol.md §13): give the
    /// protocol `Retire`; the answer is why it refused, if it did.
    Retire {
        /// The leaving node.
        node: NodeId,
        /// Its successor.
        to: NodeId,
        /// The protocol's refusal, if any.
        reply: Sender<Option<String>>,
    },
    /// Report how the leave in progress stands on this shard (counting the pages it still
    /// homes, a scan of its directory, only when asked to).
    RetireStatus {
        /// Count the pages still homed here.
        count_homed: bool,
        /// Where the answer goes.
        reply: Sender<RetireProgress>,
    },
    /// `node` has left; `to` answers for it (`Retired`).
    Retired {
        /// The node that left.
        node: NodeId,
        /// Its successor.
        to: NodeId,
        /// The protocol's refusal, if any.
        reply: Sender<Option<String>>,
    },
}

/// One shard's part of a home's leave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetireProgress {
    /// Every frame this shard sent the leaving node before `Retire` was processed there.
    pub fenced: bool,
    /// At the leaving node: every page it homed and every pointer it kept is handed to the
    /// successor, nothing is in flight here, and every frame it sent was acknowledged.
    pub drained: bool,
    /// Pages this shard is still the home of (0 unless counted).
    pub homed: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Mailbox {
    pending: AtomicBool,
    queue: Mutex<Vec<Command>>,
    posted: AtomicU64,
    done: AtomicU64,
}

impl Mailbox {
    /// Posts a command; returns its ticket (see [`Mailbox::wait`]).
    pub fn post(&self, c: Command) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.push(c);
        let ticket = self.posted.fetch_add(1, Ordering::SeqCst) + 1;
        self.pending.store(true, Ordering::SeqCst);
        ticket
    }

    /// Posts a command unless `limit` commands already wait; returns whether it was posted.
    pub fn post_bounded(&self, c: Command, limit: usize) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= limit {
            return false;
        }
        q.push(c);
        self.posted.fetch_add(1, Ordering::SeqCst);
        self.pending.store(true, Ordering::SeqCst);
        true
    }

    /// Shard side: whether commands wait (one relaxed load).
    #[inline]
    pub fn has_work(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Shard side: takes the waiting commands.
    pub fn take(&self) -> Vec<Command> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.pending.store(false, Ordering::SeqCst);
        std::mem::take(&mut *q)
    }

    /// Shard side: `n` commands were carried out.
    pub fn finished(&self, n: u64) {
        self.done.fetch_add(n, Ordering::SeqCst);
    }

    /// Waits until the command with `ticket` was carried out, up to `timeout`.
    pub fn wait(&self, ticket: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.done.load(Ordering::SeqCst) < ticket {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_complete_in_order() {
        let m = Mailbox::default();
        assert!(!m.has_work());
        let (tx, _rx) = std::sync::mpsc::channel();
        let t1 = m.post(Command::QueryPage(1, tx.clone()));
        let t2 = m.post(Command::QueryPage(2, tx));
        assert!(m.has_work());
        let cmds = m.take();
        assert_eq!(cmds.len(), 2);
        assert!(!m.has_work());
        assert!(!m.wait(t1, Duration::from_millis(1)));
        m.finished(2);
        assert!(m.wait(t1, Duration::ZERO) && m.wait(t2, Duration::ZERO));
    }
}
