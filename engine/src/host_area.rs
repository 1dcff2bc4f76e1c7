//! The host area: the top [`HOST_AREA`] bytes of the distributed address space, kept out of
//! guest RAM (no KVM memory slot covers them) for the nodes' own coordination through shared
//! memory.
//!
//! | pages (from the start of the area) | use |
//! |---|---|
//! | 0 | barriers of a guest run (loaded, reported, end); for a Linux guest also each node's vCPU count, the clock the loader read and each vCPU's node ([`linux_words`]) |
//! | 1 | the formation barrier (measurements exchanged) |
//! | 2 .. 2 + [`ROW_PAGES`] | one row of measured figures per node (64 × (latency, bandwidth)) |
//! | [`REPORTS`] .. | one report slot of [`SLOT_PAGES`] pages per vCPU of a guest run |
//!
//! The area exists only when the address space is at least [`MIN_SPACE`] bytes, so that guest
//! RAM below it stays useful; smaller (test) clusters have none.

use crate::config::PAGE_SIZE;
use crate::mem::Mem;
use crate::node::Node;

/// Bytes of the host area.
pub const HOST_AREA: u64 = 2 << 20;
/// Smallest address space that gets a host area.
pub const MIN_SPACE: u64 = 4 * HOST_AREA;
/// Page (in the area) of the guest-run barriers.
pub const GUEST_BARRIERS: u64 = 0;
/// Page (in the area) of the formation barrier.
pub const FORMATION: u64 = 1;
/// First page (in the area) of the measurement rows.
pub const ROWS: u64 = 2;
/// Pages of the measurement rows: 64 rows of 64 (latency, bandwidth) pairs of u64.
pub const ROW_PAGES: u64 = 64 * 64 * 2 * 8 / PAGE_SIZE;
/// First page (in the area) of the vCPU report slots.
pub const REPORTS: u64 = ROWS + ROW_PAGES;
/// Pages of one vCPU's report slot.
pub const SLOT_PAGES: u64 = 15;
/// Most vCPUs whose reports fit.
pub const MAX_VCPUS: u32 = ((HOST_AREA / PAGE_SIZE - REPORTS) / SLOT_PAGES) as u32;

/// Byte offsets in the guest-barrier page, after the barrier counters, that a Linux guest
/// run uses to agree on its setup.
pub mod linux_words {
    /// `vcpus + 1` as node `n` was told (`--vcpus`), at `VCPUS + 8 * n` (64 nodes).
    pub const VCPUS: usize = 128;
    /// What the loading node read from its VM: ready flag, guest TSC offset, kvm-clock
    /// value, its flags, host realtime (five words).
    pub const CLOCK: usize = 1024;
    /// Milliseconds from the start of the run to the guest starting init, plus one, written
    /// by the device node when its console shows it (0 until then).
    pub const INIT: usize = 1088;
    /// `node + 1` of the node that runs vCPU `v`, at `OWNERS + 8 * v` (256 vCPUs).
    pub const OWNERS: usize = 2048;
    /// Most vCPUs a Linux guest may have (the OWNERS words).
    pub const MAX_VCPUS: u32 = 255;
}

/// The host area of a node's address space.
#[derive(Debug, Clone, Copy)]
pub struct HostArea {
    /// The whole address space.
    pub mem: Mem,
    /// Its first page.
    pub first: u64,
}

impl HostArea {
    /// The node's host area, if its address space is large enough to have one.
    pub fn of(node: &Node) -> Option<HostArea> {
        let total = node.region().len() as u64;
        if total < MIN_SPACE {
            return None;
        }
        // SAFETY: the region stays mapped while `node` lives; callers use the area only while
        // they hold the node.
        let mem = unsafe { Mem::new(node.base(), node.region().pages()) };
        Some(HostArea {
            mem,
            first: (total - HOST_AREA) / PAGE_SIZE,
        })
    }

    /// The first byte above guest RAM (the area's start).
    pub fn start(&self) -> u64 {
        self.first * PAGE_SIZE
    }

    /// Page `k` of the area.
    pub fn page(&self, k: u64) -> u64 {
        self.first + k
    }

    /// First page of vCPU `v`'s report slot.
    pub fn slot(&self, v: u32) -> u64 {
        self.first + REPORTS + u64::from(v) * SLOT_PAGES
    }

    /// Address `(page, offset)` of word `w` of node `row`'s measurement row.
    pub fn row_word(&self, row: u16, w: u64) -> (u64, usize) {
        let word = u64::from(row) * 128 + w;
        (self.first + ROWS + word / 512, ((word % 512) * 8) as usize)
    }
}

// The layout is checked when the crate compiles.
const _: () = assert!(ROW_PAGES == 16 && REPORTS == 18);
const _: () = assert!(MAX_VCPUS >= 32);
const _: () = assert!(REPORTS + MAX_VCPUS as u64 * SLOT_PAGES <= HOST_AREA / PAGE_SIZE);
