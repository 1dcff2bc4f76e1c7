//! Typed access to guest memory for the built-in workloads: atomics and plain words at
//! `(page, offset)`, page fills and checksums. Every access is a real load or store on the
//! guest region, so it faults into the data plane exactly like a vCPU's access would.

use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::config::PAGE_SIZE;
use coherence::Layout;

/// The guest address space as the workloads see it.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    base: usize,
    pages: u64,
}

// SAFETY: `Mem` is an address range; every access through it is an atomic or volatile
// access to guest memory whose coherence across threads and nodes the data plane provides.
unsafe impl Send for Mem {}
// SAFETY: see above.
unsafe impl Sync for Mem {}

impl Mem {
    /// The address space at `base`, `pages` pages long.
    ///
    /// # Safety
    ///
    /// `base .. base + pages * PAGE_SIZE` must be the node's guest region (mapped for the
    /// node's lifetime, which must outlast every use of this `Mem`).
    pub unsafe fn new(base: *mut u8, pages: u64) -> Self {
        Self {
            base: base as usize,
            pages,
        }
    }

    fn addr(&self, page: u64, off: usize) -> usize {
        assert!(
            page < self.pages && off < PAGE_SIZE as usize,
            "page {page} offset {off} outside the region"
        );
        self.base + (page * PAGE_SIZE) as usize + off
    }

    /// The 64-bit atomic at `(page, off)` (`off` 8-byte aligned).
    pub fn atomic64(&self, page: u64, off: usize) -> &AtomicU64 {
        assert_eq!(off % 8, 0);
        // SAFETY: in the region (checked), aligned, and the region lives as long as `self`'s
        // contract says; atomics may alias any other access to guest memory.
        unsafe { AtomicU64::from_ptr(self.addr(page, off) as *mut u64) }
    }

    /// The 32-bit atomic at `(page, off)` (`off` 4-byte aligned).
    pub fn atomic32(&self, page: u64, off: usize) -> &AtomicU32 {
        assert_eq!(off % 4, 0);
        // SAFETY: as for `atomic64`.
        unsafe { AtomicU32::from_ptr(self.addr(page, off) as *mut u32) }
    }

    /// A plain (non-atomic, volatile) load.
    pub fn read64(&self, page: u64, off: usize) -> u64 {
        assert_eq!(off % 8, 0);
        // SAFETY: in the region and aligned; volatile so the access really happens.
        unsafe { std::ptr::read_volatile(self.addr(page, off) as *const u64) }
    }

    /// A plain (non-atomic, volatile) store.
    pub fn write64(&self, page: u64, off: usize, v: u64) {
        assert_eq!(off % 8, 0);
        // SAFETY: in the region and aligned; volatile so the access really happens.
        unsafe { std::ptr::write_volatile(self.addr(page, off) as *mut u64, v) }
    }

    /// Fills page `page` with 64-bit words derived from `seed`, the last word being a
    /// checksum of the others.
    pub fn fill_page(&self, page: u64, seed: u64) {
        let words = PAGE_SIZE as usize / 8;
        let mut sum = 0u64;
        for i in 0..words - 1 {
            let v = mix(seed, i as u64);
            sum = sum.wrapping_add(v).rotate_left(1);
            self.write64(page, i * 8, v);
        }
        self.write64(page, (words - 1) * 8, sum);
    }

    /// Whether page `page` holds exactly what `fill_page(page, seed)` wrote: every word and
    /// the checksum (false for a torn, stale or never-filled page).
    pub fn check_page(&self, page: u64, seed: u64) -> bool {
        let words = PAGE_SIZE as usize / 8;
        let mut sum = 0u64;
        for i in 0..words - 1 {
            let v = self.read64(page, i * 8);
            if v != mix(seed, i as u64) {
                return false;
            }
            sum = sum.wrapping_add(v).rotate_left(1);
        }
        self.read64(page, (words - 1) * 8) == sum
    }
}

/// A cheap 64-bit mixer (splitmix64 finaliser) for fill patterns.
pub fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where the workloads put things: page 0 is the barrier page; each workload takes pages
/// from every home's range so that its data is spread over all contributing nodes.
#[derive(Debug, Clone)]
pub struct Plan {
    homes: Vec<(u16, u64, u64)>,
}

/// The barrier page.
pub const BARRIER_PAGE: u64 = 0;

impl Plan {
    /// The plan for a layout.
    pub fn new(layout: &Layout) -> Self {
        let homes = layout
            .ranges()
            .iter()
            .filter(|r| r.page_count > 0)
            .map(|r| (r.node.get(), r.first_page, r.page_count))
            .collect();
        Self { homes }
    }

    /// Nodes that home pages.
    pub fn homes(&self) -> usize {
        self.homes.len()
    }

    /// The `k`-th data page, round-robin over the homes (never the barrier page). `None`
    /// when the homes have too few pages.
    pub fn page(&self, k: u64) -> Option<u64> {
        let h = self.homes.len() as u64;
        let (_, first, count) = self.homes[(k % h) as usize];
        // Page 0 of the address space is the barrier page: skip the first page of every home
        // so that every home loses the same amount.
        let idx = 1 + k / h;
        (idx < count).then_some(first + idx)
    }

    /// Page `i` of the `h`-th home's range (contiguous within the home; page 0 of the range
    /// is left out, as in [`Plan::page`]). `None` beyond the range.
    pub fn run_page(&self, h: usize, i: u64) -> Option<u64> {
        let &(_, first, count) = self.homes.get(h)?;
        (1 + i < count).then_some(first + 1 + i)
    }

    /// The home node of the `k`-th data page.
    pub fn home_of(&self, k: u64) -> u16 {
        self.homes[(k % self.homes.len() as u64) as usize].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coherence::{NodeId, NodeRange};

    #[test]
    fn plan_spreads_pages_over_homes_and_skips_page_zero() {
        let n = |i| NodeId::new(i).unwrap();
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
                    page_count: 0,
                },
                NodeRange {
                    node: n(2),
                    first_page: 4,
                    page_count: 4,
                },
            ],
        )
        .unwrap();
        let p = Plan::new(&layout);
        assert_eq!(p.homes(), 2);
        let pages: Vec<_> = (0..7).map(|k| p.page(k)).collect();
        assert_eq!(
            pages,
            vec![Some(1), Some(5), Some(2), Some(6), Some(3), Some(7), None]
        );
        assert_eq!((p.home_of(0), p.home_of(1)), (0, 2));
    }

    #[test]
    fn page_fill_checks_whole_pages_only() {
        let mut buf = vec![0u64; 3 * 512];
        let base = buf.as_mut_ptr() as usize;
        let aligned = (base + 4095) & !4095;
        // Use the page-aligned part of the buffer (two pages fit).
        // SAFETY: the two pages at `aligned` lie inside `buf`, which outlives `m`.
        let m = unsafe { Mem::new(aligned as *mut u8, 2) };
        m.fill_page(1, 42);
        assert!(m.check_page(1, 42));
        assert!(!m.check_page(1, 43), "another seed");
        m.write64(1, 800, 0);
        assert!(!m.check_page(1, 42), "a torn page");
        assert!(!m.check_page(0, 42), "an empty page");
        drop(buf);
    }
}
