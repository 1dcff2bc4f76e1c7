//! Per-fault timestamps for latency breakdowns (`fault-latency --breakdown`): on the faulting
//! node, when a shard read the fault, sent the request, received the reply and installed the
//! page; on the node that answered, when the message that let it answer arrived and when its
//! answer went out.
//!
//! Off by default (`NodeConfig::fault_trace == 0`). When on, each shard owns a [`Tracer`] with
//! a fixed-size table of request send times and publishes one [`FaultTrace`] per completed
//! fault and one [`ServeTrace`] per data or grant it sent into [`TraceRings`] that any thread
//! reads without locks. Everything is allocated when the node starts; recording is a few plain
//! stores and never blocks. The rings overwrite their oldest records when full; readers learn
//! how many they missed.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::clock::now_ns;

/// Slots of the table that remembers when a request for a page was sent (direct-mapped by
/// page number; a collision loses the send time of the older page, never a record).
const SENT_SLOTS: usize = 1024;
/// Requests stamped again after the turn's flush (the rest keep their queueing time).
const FLUSH_STAMPS: usize = 64;

/// The timestamps of one completed fault, in `clock::now_ns` nanoseconds; 0 means "did not
/// happen" (a local fault sends no request) or "not known" (the send time was overwritten).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultTrace {
    /// The faulting page.
    pub page: u64,
    /// The shard read the fault from the userfaultfd.
    pub event_ns: u64,
    /// The request to the home went out (the transport flush that carried it returned).
    pub sent_ns: u64,
    /// The message that completed the fault (data or grant) was taken from the transport
    /// (0: the fault completed without one, e.g. a local first touch).
    pub received_ns: u64,
    /// The install (or write-unprotect) returned. It wakes the faulting threads inside the
    /// call, so a woken thread on the shard's own CPU may run before this time.
    pub installed_ns: u64,
}

/// One answer a node sent that completes another node's fault (`Data` or `Grant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServeTrace {
    /// The page.
    pub page: u64,
    /// The message that let this node answer was taken from the transport (the request, or
    /// for a write the last invalidation acknowledgement).
    pub received_ns: u64,
    /// The transport flush that carried the answer returned.
    pub sent_ns: u64,
}

const FIELDS: usize = 5;

/// A record a [`TraceRing`] holds: at most five words.
pub trait TraceRecord: Copy {
    /// The record as words.
    fn to_words(self) -> [u64; FIELDS];
    /// The record from words.
    fn from_words(w: [u64; FIELDS]) -> Self;
}

impl TraceRecord for FaultTrace {
    fn to_words(self) -> [u64; FIELDS] {
        [
            self.page,
            self.event_ns,
            self.sent_ns,
            self.received_ns,
            self.installed_ns,
        ]
    }

    fn from_words(w: [u64; FIELDS]) -> Self {
        Self {
            page: w[0],
            event_ns: w[1],
            sent_ns: w[2],
            received_ns: w[3],
            installed_ns: w[4],
        }
    }
}

impl TraceRecord for ServeTrace {
    fn to_words(self) -> [u64; FIELDS] {
        [self.page, self.received_ns, self.sent_ns, 0, 0]
    }

    fn from_words(w: [u64; FIELDS]) -> Self {
        Self {
            page: w[0],
            received_ns: w[1],
            sent_ns: w[2],
        }
    }
}

/// A bounded, overwriting, single-writer ring of trace records; see the module documentation.
pub struct TraceRing<R: TraceRecord = FaultTrace> {
    /// Per slot: the sequence number of the record it holds (+1; 0 = empty), then the fields.
    slots: Box<[[AtomicU64; FIELDS + 1]]>,
    mask: u64,
    head: AtomicU64,
    _record: PhantomData<R>,
}

impl<R: TraceRecord> std::fmt::Debug for TraceRing<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceRing")
            .field("capacity", &self.slots.len())
            .field("written", &self.written())
            .finish()
    }
}

impl<R: TraceRecord> TraceRing<R> {
    /// A ring holding the last `capacity` records (rounded up to a power of two, at least 1).
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(1).next_power_of_two();
        Self {
            slots: (0..cap)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            mask: cap as u64 - 1,
            head: AtomicU64::new(0),
            _record: PhantomData,
        }
    }

    /// How many records it holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Records written since the start (including overwritten ones).
    pub fn written(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Appends a record. Only the owning shard calls this.
    pub(crate) fn push(&self, t: R) {
        let seq = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[(seq & self.mask) as usize];
        // Invalidate the slot first so that a concurrent reader never takes a half-written one.
        slot[0].store(0, Ordering::Release);
        for (i, v) in t.to_words().into_iter().enumerate() {
            slot[i + 1].store(v, Ordering::Relaxed);
        }
        slot[0].store(seq + 1, Ordering::Release);
        self.head.store(seq + 1, Ordering::Release);
    }

    /// Appends to `out` every record written after `*cursor` that is still held, advances the
    /// cursor, and returns how many records were missed (overwritten before being read).
    pub fn read_since(&self, cursor: &mut u64, out: &mut Vec<R>) -> u64 {
        let head = self.written();
        let cap = self.slots.len() as u64;
        let first = (*cursor).max(head.saturating_sub(cap));
        let mut missed = first - *cursor;
        for seq in first..head {
            let slot = &self.slots[(seq & self.mask) as usize];
            let before = slot[0].load(Ordering::Acquire);
            let f: [u64; FIELDS] = std::array::from_fn(|i| slot[i + 1].load(Ordering::Relaxed));
            std::sync::atomic::fence(Ordering::Acquire);
            if before != seq + 1 || slot[0].load(Ordering::Relaxed) != seq + 1 {
                missed += 1;
                continue;
            }
            out.push(R::from_words(f));
        }
        *cursor = head;
        missed
    }
}

/// The rings one shard publishes into.
#[derive(Debug, Clone)]
pub struct TraceRings {
    /// Faults this shard completed.
    pub faults: Arc<TraceRing<FaultTrace>>,
    /// Answers this shard sent.
    pub served: Arc<TraceRing<ServeTrace>>,
}

impl TraceRings {
    /// Rings of `capacity` records each.
    pub fn new(capacity: usize) -> Self {
        Self {
            faults: Arc::new(TraceRing::new(capacity)),
            served: Arc::new(TraceRing::new(capacity)),
        }
    }
}

/// A shard's side of tracing: remembers send times until the fault completes.
#[derive(Debug)]
pub struct Tracer {
    rings: TraceRings,
    /// `(page + 1, send time)`, direct-mapped by page.
    sent: Box<[(u64, u64)]>,
    /// Slots of `sent` filled since the last flush.
    unflushed: [u16; FLUSH_STAMPS],
    n_unflushed: usize,
    /// When the message being processed was taken from the transport (0: not a message).
    rx_ns: u64,
    /// Answers queued since the last flush: `(page, received_ns)`.
    replies: [(u64, u64); FLUSH_STAMPS],
    n_replies: usize,
}

impl Tracer {
    /// A tracer publishing into `rings`.
    pub fn new(rings: TraceRings) -> Self {
        Self {
            rings,
            sent: vec![(0, 0); SENT_SLOTS].into_boxed_slice(),
            unflushed: [0; FLUSH_STAMPS],
            n_unflushed: 0,
            rx_ns: 0,
            replies: [(0, 0); FLUSH_STAMPS],
            n_replies: 0,
        }
    }

    /// A request for `page` was queued.
    pub(crate) fn request_queued(&mut self, page: u64) {
        let i = (page % SENT_SLOTS as u64) as usize;
        self.sent[i] = (page + 1, now_ns());
        if self.n_unflushed < FLUSH_STAMPS {
            self.unflushed[self.n_unflushed] = i as u16;
            self.n_unflushed += 1;
        }
    }

    /// An answer (data or grant) for `page` was queued while processing a message.
    pub(crate) fn reply_queued(&mut self, page: u64) {
        if self.rx_ns != 0 && self.n_replies < FLUSH_STAMPS {
            self.replies[self.n_replies] = (page, self.rx_ns);
            self.n_replies += 1;
        }
    }

    /// The transport flushed: requests and answers queued since the last flush went out now.
    pub(crate) fn flushed(&mut self) {
        if self.n_unflushed == 0 && self.n_replies == 0 {
            return;
        }
        let now = now_ns();
        for &i in &self.unflushed[..self.n_unflushed] {
            self.sent[i as usize].1 = now;
        }
        self.n_unflushed = 0;
        for &(page, received_ns) in &self.replies[..self.n_replies] {
            self.rings.served.push(ServeTrace {
                page,
                received_ns,
                sent_ns: now,
            });
        }
        self.n_replies = 0;
    }

    /// The next step processes a message taken from the transport at `ns` (0: not a message).
    pub(crate) fn set_rx(&mut self, ns: u64) {
        self.rx_ns = ns;
    }

    /// The fault on `page` read at `event_ns` completed (its install already ran).
    pub(crate) fn fault_done(&mut self, page: u64, event_ns: u64) {
        let i = (page % SENT_SLOTS as u64) as usize;
        let sent_ns = match self.sent[i] {
            (p, t) if p == page + 1 && t >= event_ns => t,
            _ => 0,
        };
        let received_ns = self.rx_ns;
        self.rings.faults.push(FaultTrace {
            page,
            event_ns,
            sent_ns,
            received_ns,
            installed_ns: now_ns(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(page: u64) -> FaultTrace {
        FaultTrace {
            page,
            event_ns: page * 10,
            sent_ns: page * 10 + 1,
            received_ns: page * 10 + 2,
            installed_ns: page * 10 + 3,
        }
    }

    #[test]
    fn ring_returns_records_in_order_and_counts_overwritten_ones() {
        let r: TraceRing = TraceRing::new(3);
        assert_eq!(r.capacity(), 4);
        let mut cur = 0;
        let mut out = Vec::new();
        assert_eq!(r.read_since(&mut cur, &mut out), 0);
        assert!(out.is_empty());
        for p in 1..=3 {
            r.push(rec(p));
        }
        assert_eq!(r.read_since(&mut cur, &mut out), 0);
        assert_eq!(out, vec![rec(1), rec(2), rec(3)]);
        out.clear();
        for p in 4..=10 {
            r.push(rec(p));
        }
        // 7 written since the cursor, 4 held: 3 missed.
        assert_eq!(r.read_since(&mut cur, &mut out), 3);
        assert_eq!(out, vec![rec(7), rec(8), rec(9), rec(10)]);
        assert_eq!(cur, 10);
        assert_eq!(r.written(), 10);
    }

    #[test]
    fn tracer_pairs_send_times_with_completions() {
        let rings = TraceRings::new(16);
        let ring = rings.faults.clone();
        let mut t = Tracer::new(rings);
        let event = now_ns();
        t.request_queued(5);
        t.flushed();
        t.set_rx(now_ns());
        t.fault_done(5, event);
        // A local fault: no request, no reply.
        t.set_rx(0);
        t.fault_done(6, now_ns());
        // A request whose slot was taken by another page loses its send time only.
        t.request_queued(7);
        t.request_queued(7 + SENT_SLOTS as u64);
        t.set_rx(now_ns());
        t.fault_done(7, event);
        let mut cur = 0;
        let mut out = Vec::new();
        assert_eq!(ring.read_since(&mut cur, &mut out), 0);
        assert_eq!(out.len(), 3);
        let r = out[0];
        assert_eq!(r.page, 5);
        assert!(r.event_ns <= r.sent_ns, "{r:?}");
        assert!(
            r.sent_ns <= r.received_ns && r.received_ns <= r.installed_ns,
            "{r:?}"
        );
        assert_eq!((out[1].page, out[1].sent_ns, out[1].received_ns), (6, 0, 0));
        assert!(out[1].installed_ns >= out[1].event_ns);
        assert_eq!((out[2].page, out[2].sent_ns), (7, 0));
        assert_ne!(out[2].received_ns, 0, "the reply time is still known");
    }

    #[test]
    fn answers_are_stamped_at_the_flush_that_carries_them() {
        let rings = TraceRings::new(16);
        let served = rings.served.clone();
        let mut t = Tracer::new(rings);
        // Not while processing a message (a local step): nothing to record.
        t.set_rx(0);
        t.reply_queued(1);
        let rx = now_ns();
        t.set_rx(rx);
        t.reply_queued(2);
        t.reply_queued(3);
        let mut cur = 0;
        let mut out = Vec::new();
        served.read_since(&mut cur, &mut out);
        assert!(out.is_empty(), "nothing before the flush");
        t.flushed();
        served.read_since(&mut cur, &mut out);
        assert_eq!(out.iter().map(|r| r.page).collect::<Vec<_>>(), vec![2, 3]);
        assert!(out.iter().all(|r| r.received_ns == rx && r.sent_ns >= rx));
        t.flushed();
        assert_eq!(
            served.written(),
            2,
            "a flush with nothing queued records nothing"
        );
    }
}
