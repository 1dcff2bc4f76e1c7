//! The bounded replica cache: how many pages of other homes a shard may hold at once, and
//! which of them it gives back first (`--replica-cache`, issue 19).
//!
//! A node maps its whole guest address space, so without a bound it keeps a copy of every
//! page of another home it ever touched until a write elsewhere takes it away. With a bound,
//! the shard counts the pages of other homes it holds (read-only replicas and pages it owns
//! writable) and, when there are more than its share of the bound, evicts the one it
//! acquired least recently through the protocol's ordinary eviction (a clean replica is
//! dropped, a dirty page is written back to its home; docs/protocol.md §5.4).
//!
//! **Recency is that of acquisition.** A page that is already mapped is read and written by
//! the guest without the data plane seeing it (no fault), so the only uses a shard sees are
//! the faults that install a page or make it writable. The cache orders pages by the last of
//! those, oldest first: a FIFO with a second chance for a page that was busy when its turn
//! came (it goes to the back).
//!
//! **Bounded memory, nothing per fault.** One byte per page of the shard's partition (zeroed
//! memory, resident only where written) holds whether the page is held, whether an eviction
//! was started, and a 6-bit generation; a ring of fixed capacity holds `(page, byte)` entries
//! in acquisition order. An entry whose byte no longer matches the page's (the page was
//! dropped, or acquired again later and has a newer entry) is stale and skipped when it
//! reaches the front. Nothing allocates after [`ReplicaCache::new`].

use coherence::{Layout, Partition};

/// The page is held (mapped read-only or writable).
const HELD: u8 = 1;
/// An eviction of the page was started and has not ended with a drop yet.
const EVICTING: u8 = 2;
/// The generation lives in the upper six bits.
const GEN_STEP: u8 = 4;

/// Ring entries beyond the bound: acquisitions that can happen between two turns of the
/// shard (one poll batch of data frames and one batch of faults), and stale entries waiting
/// to be skipped.
const RING_SLACK: usize = 4096;

/// What the shard does next for an over-full cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Offer this page for eviction.
    Evict(u64),
    /// Nothing (within bound, or no candidate left this turn).
    Nothing,
}

/// Counts and order of the pages of other homes a shard holds (see the module documentation).
#[derive(Debug)]
pub(crate) struct ReplicaCache {
    /// Pages this shard may hold of other homes.
    cap: usize,
    part: Partition,
    /// `part`'s rank of the layout's first page: page state index 0.
    base: u64,
    /// Per page of the partition: `HELD | EVICTING | generation`.
    state: Vec<u8>,
    /// Entries `page << 8 | byte` in acquisition order, oldest at `head`.
    ring: Box<[u64]>,
    head: usize,
    len: usize,
    /// Pages held (the `HELD` bytes).
    held: usize,
    /// Held pages whose eviction was started.
    evicting: usize,
    /// Acquisitions that found the ring full and were not recorded (a bug if ever non-zero:
    /// the slack covers what one turn can add).
    lost: u64,
}

impl ReplicaCache {
    /// A cache of `cap` pages (at least one) for partition `part` of `layout`'s address space.
    pub(crate) fn new(cap: usize, part: Partition, layout: &Layout) -> Self {
        let cap = cap.max(1);
        let base = part.rank(layout.first_page());
        let pages = part.rank(layout.end_page()) - base;
        let ring = cap.saturating_mul(2).saturating_add(RING_SLACK);
        Self {
            cap,
            part,
            base,
            // `vec![0; n]` takes zeroed memory: untouched pages cost no resident memory.
            state: vec![0u8; usize::try_from(pages).unwrap_or(usize::MAX)],
            ring: vec![0u64; ring].into_boxed_slice(),
            head: 0,
            len: 0,
            held: 0,
            evicting: 0,
            lost: 0,
        }
    }

    /// The address space grew (a node joined): pages of the new ranges start not held.
    /// Runs on the control path, never per fault.
    pub(crate) fn grow(&mut self, layout: &Layout) {
        let pages = self.part.rank(layout.end_page()).saturating_sub(self.base);
        let pages = usize::try_from(pages).unwrap_or(usize::MAX);
        if pages > self.state.len() {
            self.state.resize(pages, 0);
        }
    }

    /// The bound.
    #[cfg(test)]
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Pages of other homes held now.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Acquisitions the ring had no room for (see the field).
    pub(crate) fn lost(&self) -> u64 {
        self.lost
    }

    fn index(&self, page: u64) -> Option<usize> {
        if !self.part.owns(page) {
            return None;
        }
        let i = usize::try_from(self.part.rank(page).checked_sub(self.base)?).ok()?;
        (i < self.state.len()).then_some(i)
    }

    fn push(&mut self, page: u64, byte: u8) {
        if self.len == self.ring.len() {
            self.lost += 1;
            return;
        }
        let tail = (self.head + self.len) % self.ring.len();
        self.ring[tail] = page << 8 | u64::from(byte);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<(u64, u8)> {
        if self.len == 0 {
            return None;
        }
        let e = self.ring[self.head];
        self.head = (self.head + 1) % self.ring.len();
        self.len -= 1;
        Some((e >> 8, e as u8))
    }

    /// Whether an entry still stands for its page (held, same generation).
    fn current(&self, page: u64, byte: u8) -> bool {
        self.index(page)
            .is_some_and(|i| byte & HELD != 0 && self.state[i] & !EVICTING == byte)
    }

    /// The page was installed (from a message or as zero) or made writable: it is held and
    /// now the most recently acquired.
    pub(crate) fn acquired(&mut self, page: u64) {
        let Some(i) = self.index(page) else { return };
        let s = self.state[i];
        if s & HELD == 0 {
            self.held += 1;
        }
        if s & EVICTING != 0 {
            self.evicting -= 1;
        }
        let byte = (s & !(HELD | EVICTING)).wrapping_add(GEN_STEP) | HELD;
        self.state[i] = byte;
        self.push(page, byte);
    }

    /// The page's local copy was dropped.
    pub(crate) fn dropped(&mut self, page: u64) {
        let Some(i) = self.index(page) else { return };
        let s = self.state[i];
        if s & HELD == 0 {
            return;
        }
        self.held -= 1;
        if s & EVICTING != 0 {
            self.evicting -= 1;
        }
        self.state[i] = (s & !(HELD | EVICTING)).wrapping_add(GEN_STEP);
    }

    /// Whether `page`'s eviction is still outstanding, as the protocol says after a step on
    /// it: one the home refused (busy) ended without a drop, and the page is offered again
    /// when it comes round.
    pub(crate) fn evicting_now(&mut self, page: u64, evicting: bool) {
        let Some(i) = self.index(page) else { return };
        if !evicting && self.state[i] & EVICTING != 0 {
            self.state[i] &= !EVICTING;
            self.evicting -= 1;
        }
    }

    /// Whether more pages are held than the bound allows, not counting those already being
    /// evicted.
    pub(crate) fn over(&self) -> bool {
        self.held - self.evicting > self.cap
    }

    /// The least recently acquired held page, skipping at most `budget` stale entries; the caller offers it for eviction and reports with [`Self::offered`].
    pub(crate) fn next(&mut self, budget: usize) -> Next {
        for _ in 0..budget {
            let Some((page, byte)) = self.pop() else {
                return Next::Nothing;
            };
            if self.current(page, byte) {
                // A page whose eviction was started is offered again when it comes round: the
                // protocol refuses it while that eviction is outstanding, and starts it again
                // if the home refused the first one (busy).
                return Next::Evict(page);
            }
        }
        Next::Nothing
    }

    /// What came of offering `page`: `started` if the eviction began, `held` whether the page
    /// is still mapped afterwards. A page still held goes to the back of the order.
    pub(crate) fn offered(&mut self, page: u64, started: bool, held: bool) {
        let Some(i) = self.index(page) else { return };
        if !held {
            // Not held after all (the protocol says so): forget it.
            self.dropped(page);
            return;
        }
        if started && self.state[i] & EVICTING == 0 {
            self.state[i] |= EVICTING;
            self.evicting += 1;
        }
        let byte = self.state[i] & !EVICTING;
        self.push(page, byte);
    }

    /// Skips stale entries at the front while the ring is longer than the bound needs, at
    /// most `budget` of them; current ones are moved to the back unchanged (their order
    /// among themselves is kept).
    pub(crate) fn compact(&mut self, budget: usize) -> usize {
        let mut n = 0;
        while n < budget && self.len > self.cap + RING_SLACK / 2 {
            let Some((page, byte)) = self.pop() else {
                break;
            };
            if self.current(page, byte) {
                self.push(page, byte);
            }
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coherence::{NodeId, NodeRange};

    fn layout(pages: u64) -> Layout {
        Layout::new(
            4096,
            vec![NodeRange {
                node: NodeId::new(0).unwrap(),
                first_page: 0,
                page_count: pages,
            }],
        )
        .unwrap()
    }

    fn cache(cap: usize) -> ReplicaCache {
        ReplicaCache::new(cap, Partition::WHOLE, &layout(64))
    }

    #[test]
    fn the_least_recently_acquired_page_goes_first() {
        let mut c = cache(2);
        for p in [5, 6, 7] {
            c.acquired(p);
        }
        assert_eq!(c.held(), 3);
        assert!(c.over());
        assert_eq!(c.next(16), Next::Evict(5));
        c.offered(5, true, true);
        // Page 5 is being evicted: the cache is within bound until it is dropped.
        assert!(!c.over());
        c.dropped(5);
        assert_eq!(c.held(), 2);
        assert!(!c.over());
    }

    #[test]
    fn an_upgrade_or_a_new_acquisition_moves_a_page_to_the_back() {
        let mut c = cache(2);
        c.acquired(1);
        c.acquired(2);
        c.acquired(1); // made writable: newest now; its old entry is stale
        c.acquired(3);
        assert_eq!(c.held(), 3);
        assert_eq!(c.next(16), Next::Evict(2));
    }

    #[test]
    fn dropped_pages_are_skipped_and_not_counted() {
        let mut c = cache(1);
        c.acquired(1);
        c.acquired(2);
        c.dropped(1); // invalidated by a writer elsewhere
        assert_eq!(c.held(), 1);
        assert!(!c.over());
        c.acquired(3);
        assert_eq!(c.next(16), Next::Evict(2));
        // Dropping twice, or a page never held, changes nothing.
        c.dropped(1);
        c.dropped(9);
        assert_eq!(c.held(), 2);
    }

    #[test]
    fn a_busy_page_gets_a_second_chance_at_the_back() {
        let mut c = cache(1);
        c.acquired(1);
        c.acquired(2);
        assert_eq!(c.next(16), Next::Evict(1));
        c.offered(1, false, true); // refused: inside its residency window
        assert_eq!(c.next(16), Next::Evict(2));
        c.offered(2, true, true);
        assert!(!c.over());
    }

    #[test]
    fn a_page_the_protocol_does_not_hold_is_forgotten() {
        let mut c = cache(1);
        c.acquired(1);
        c.acquired(2);
        assert_eq!(c.next(16), Next::Evict(1));
        c.offered(1, false, false);
        assert_eq!(c.held(), 1);
        assert!(!c.over());
    }

    #[test]
    fn a_cancelled_eviction_is_offered_again() {
        let mut c = cache(1);
        c.acquired(1);
        c.acquired(2);
        assert_eq!(c.next(16), Next::Evict(1));
        c.offered(1, true, true);
        assert!(!c.over());
        // The home refused the eviction (busy): page 1 stays held and counts again.
        c.evicting_now(1, true);
        assert!(!c.over());
        c.evicting_now(1, false);
        assert!(c.over());
        // Page 2's entry comes first, then page 1 comes round again.
        c.acquired(3);
        assert_eq!(c.next(16), Next::Evict(2));
        c.offered(2, true, true);
        c.acquired(4);
        assert!(c.over());
        assert_eq!(c.next(16), Next::Evict(1));
        // Offered again while marked: counted once.
        c.offered(1, true, true);
        assert_eq!(c.evicting, 2);
    }

    #[test]
    fn the_ring_stays_bounded_under_churn() {
        let mut c = cache(4);
        for round in 0..100_000u64 {
            let p = round % 32;
            c.acquired(p);
            c.dropped(p);
            c.compact(64);
        }
        assert_eq!(c.held(), 0);
        assert_eq!(c.lost(), 0);
        assert!(c.len <= c.cap + RING_SLACK);
    }

    #[test]
    fn pages_of_other_partitions_are_ignored() {
        let part = Partition::granular(1, 2, 4).unwrap();
        let mut c = ReplicaCache::new(1, part, &layout(64));
        c.acquired(0); // granule 0: partition 0's
        assert_eq!(c.held(), 0);
        c.acquired(4);
        c.acquired(5);
        assert_eq!(c.held(), 2);
        assert_eq!(c.next(16), Next::Evict(4));
        c.acquired(1004); // beyond the address space
        assert_eq!(c.held(), 2);
        // Until it grows (a node joined).
        c.grow(&layout(2048));
        c.acquired(1004);
        assert_eq!(c.held(), 3);
    }
}
