//! A barrier kept in distributed memory: one 64-bit counter per barrier on a barrier page,
//! which every participant increments once and then watches (a read-only replica, refetched
//! after each increment invalidates it) until all have arrived.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::mem::Mem;

/// Barriers one run may use (slots on the barrier page).
pub const SLOTS: u64 = 8;

/// See the module documentation.
#[derive(Debug)]
pub struct Barrier {
    mem: Mem,
    page: u64,
    parties: u64,
}

impl Barrier {
    /// Barriers for `parties` participants on page `page`.
    pub fn new(mem: Mem, page: u64, parties: u64) -> Self {
        Self { mem, page, parties }
    }

    /// Arrives at barrier `slot` without waiting.
    pub fn arrive(&self, slot: u64) {
        assert!(slot < SLOTS);
        self.mem
            .atomic64(self.page, (slot * 8) as usize)
            .fetch_add(1, SeqCst);
    }

    /// Waits until every party arrived at barrier `slot`.
    pub fn wait_for(&self, slot: u64) {
        let c = self.mem.atomic64(self.page, (slot * 8) as usize);
        let mut pause = Duration::from_micros(20);
        while c.load(SeqCst) < self.parties {
            // Each read may refetch the page; back off so waiting nodes do not flood the
            // home while the others work.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Arrives at barrier `slot` and waits for everyone.
    pub fn wait(&self, slot: u64) {
        self.arrive(slot);
        self.wait_for(slot);
    }

    /// A barrier used once per round: arrives at `slot` and waits until every party has
    /// arrived `round + 1` times.
    pub fn wait_round(&self, slot: u64, round: u64) {
        self.arrive(slot);
        let c = self.mem.atomic64(self.page, (slot * 8) as usize);
        let want = self.parties * (round + 1);
        let mut pause = Duration::from_micros(20);
        while c.load(SeqCst) < want {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}
