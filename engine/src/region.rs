//! The guest region: one anonymous mapping covering the whole distributed address space,
//! registered with the node's userfaultfds (MISSING | WP, kernel faults allowed).
//!
//! A node with several shards opens one userfaultfd per shard and registers each over the
//! granules that shard owns ([`SHARD_GRANULE_PAGES`] pages, dealt round-robin; see
//! [`shard_of`]), so a fault is queued on its owner's descriptor: shards do not contend on
//! one wait queue nor hand faults to each other. Each granule becomes a VMA of its own; the
//! number of granules is checked against `vm.max_map_count`.
//!
//! Every node maps the same number of pages; page `p` of the address space lives at
//! `base + p * PAGE_SIZE` on every node. A page is present only where the coherence protocol
//! has installed it: every other access — by a worker thread, a vCPU (through KVM), or the
//! kernel on the process's behalf — stops in the userfaultfd until a shard serves it.

use std::sync::atomic::{AtomicUsize, Ordering};

use thiserror::Error;
use uffd_poller::{Features, OpenError, RegisterError, RegisterMode, Uffd};

use wire::region::PageRegion;

use crate::config::PAGE_SIZE;
use crate::shard::route::{shard_of, SHARD_GRANULE_PAGES};

/// Why the region could not be set up.
#[derive(Debug, Error)]
pub enum RegionError {
    /// The address space is empty.
    #[error("the guest address space is empty: give at least one node a non-zero --memory")]
    Empty,
    /// mmap failed.
    #[error("cannot reserve {bytes} bytes of address space for the guest region: {source}; lower --memory or raise the address-space limit (ulimit -v)")]
    Map {
        /// Size asked for.
        bytes: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// userfaultfd could not be opened with what the data plane needs.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The address space would outgrow the reservation.
    #[error("the address space would need {needed} bytes but only {reserved} are reserved: start the nodes with a larger --max-address-space")]
    Reservation {
        /// Bytes needed.
        needed: u64,
        /// Bytes reserved.
        reserved: u64,
    },
    /// The mapping could not be registered.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// Partitioning the reservation among the shards would need more VMAs than allowed.
    #[error("giving each of {shards} shards its own userfaultfd splits the {bytes}-byte reservation into {granules} mappings, more than half of vm.max_map_count ({max_map_count}): lower --max-address-space, run fewer shards (--cores), or raise vm.max_map_count")]
    TooManyGranules {
        /// Shards asked for.
        shards: u32,
        /// Bytes reserved.
        bytes: u64,
        /// Granules (VMAs) the partition needs.
        granules: u64,
        /// The kernel's limit on mappings per process.
        max_map_count: u64,
    },
}

/// The kernel's limit on mappings per process (`vm.max_map_count`), or its usual default
/// when it cannot be read.
fn max_map_count() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530)
}

/// userfaultfd features the data plane cannot run without: write-protect faults for
/// read-only replicas. Kernel (KVM) faults are allowed because the fd is never opened
/// user-mode-only.
pub fn required_features() -> Features {
    Features::PAGEFAULT_FLAG_WP
}

/// Features used when the kernel offers them: the faulting thread's id (for traces) and
/// POISON (to make a touch beyond the address space, a stray pointer, raise SIGBUS rather
/// than wait forever).
pub fn optional_features() -> Features {
    Features::THREAD_ID | Features::POISON
}

/// The guest region and its userfaultfds.
///
/// The mapping reserves room for the address space to grow (nodes joining append their
/// memory at the top): `reserved` bytes are mapped (`MAP_NORESERVE`, nothing is committed
/// until touched) and registered; `len` is the current address space.
#[derive(Debug)]
pub struct Region {
    /// One per shard, each registered over its shard's granules. Declared first so they
    /// close first: closing a userfaultfd drops its registrations and wakes any thread
    /// still waiting on one of its faults (only while the process exits), before the
    /// mapping goes.
    uffds: Box<[Uffd]>,
    /// The reservation (unmapped when the region drops, after the uffds let go of it).
    map: PageRegion,
    reserved: usize,
    len: AtomicUsize,
}

impl Region {
    /// Maps `pages` pages and registers them with `shards` new userfaultfds (one per shard,
    /// each over its shard's granules), reserving room for the address space to grow to
    /// `reserve_pages` (at least `pages`).
    pub fn new(pages: u64, reserve_pages: u64, shards: u32) -> Result<Self, RegionError> {
        if pages == 0 {
            return Err(RegionError::Empty);
        }
        let bytes_of = |p: u64| {
            p.checked_mul(PAGE_SIZE)
                .and_then(|b| usize::try_from(b).ok())
                .ok_or(RegionError::Map {
                    bytes: u64::MAX,
                    source: std::io::Error::from_raw_os_error(libc::ENOMEM),
                })
        };
        let current = bytes_of(pages)?;
        let len = bytes_of(reserve_pages.max(pages))?;
        let bytes = len as u64;
        let shards = shards.max(1);
        let granule = (SHARD_GRANULE_PAGES * PAGE_SIZE) as usize;
        let granules = len.div_ceil(granule) as u64;
        let limit = max_map_count();
        if shards > 1 && granules > limit / 2 {
            return Err(RegionError::TooManyGranules {
                shards,
                bytes,
                granules,
                max_map_count: limit,
            });
        }
        let uffds = (0..shards)
            .map(|_| Uffd::open_with(required_features(), optional_features()))
            .collect::<Result<Box<[Uffd]>, _>>()?;
        let map = PageRegion::reserve(len).map_err(|source| RegionError::Map { bytes, source })?;
        let base = map.as_ptr() as usize;
        let region = Region {
            uffds,
            map,
            reserved: len,
            len: AtomicUsize::new(current),
        };
        let mode = RegisterMode::MISSING | RegisterMode::WP;
        if shards == 1 {
            // SAFETY: the range is the private anonymous mapping created above, owned by
            // `region` and accessed only through raw pointers; its missing pages are filled
            // by the shards.
            unsafe { region.uffds[0].register(base, len, mode) }?;
        } else {
            for g in 0..granules as usize {
                let start = g * granule;
                let owner = shard_of(g as u64 * SHARD_GRANULE_PAGES, shards) as usize;
                // SAFETY: as above, for one granule of the mapping, registered with the
                // userfaultfd of the shard that owns it.
                unsafe {
                    region.uffds[owner].register(base + start, granule.min(len - start), mode)
                }?;
            }
        }
        Ok(region)
    }

    /// Address of page 0.
    pub fn base(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Length of the current address space in bytes.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the region is empty (never true for a constructed region).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of pages of the current address space.
    pub fn pages(&self) -> u64 {
        self.len() as u64 / PAGE_SIZE
    }

    /// Bytes mapped and registered (the most the address space can grow to).
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Grows the address space to `pages` pages (a node joined); fails if that exceeds the
    /// reservation.
    pub fn grow(&self, pages: u64) -> Result<(), RegionError> {
        let bytes = pages.saturating_mul(PAGE_SIZE);
        if bytes > self.reserved as u64 {
            return Err(RegionError::Reservation {
                needed: bytes,
                reserved: self.reserved as u64,
            });
        }
        self.len.fetch_max(bytes as usize, Ordering::AcqRel);
        Ok(())
    }

    /// Number of userfaultfds (one per shard).
    pub fn partitions(&self) -> u32 {
        self.uffds.len() as u32
    }

    /// The userfaultfd of shard `shard`, registered over the granules that shard owns.
    pub fn uffd(&self, shard: u32) -> &Uffd {
        &self.uffds[shard as usize]
    }

    /// The userfaultfd registered over `page`.
    #[inline]
    pub fn uffd_of(&self, page: u64) -> &Uffd {
        &self.uffds[shard_of(page, self.partitions()) as usize]
    }

    /// Host address of page `page` (which must lie in the reservation).
    #[inline]
    pub fn page_addr(&self, page: u64) -> usize {
        debug_assert!(page * PAGE_SIZE < self.reserved as u64);
        self.map.as_ptr() as usize + (page * PAGE_SIZE) as usize
    }

    /// The page containing host address `addr`, if it lies in the reservation (pages past
    /// the current address space included: a fault there must be answered, not lost).
    #[inline]
    pub fn page_of(&self, addr: usize) -> Option<u64> {
        self.page_index().page_of(addr)
    }

    /// The reservation's address range as a plain value, to map fault addresses to pages
    /// without holding a borrow of the region.
    #[inline]
    pub fn page_index(&self) -> PageIndex {
        PageIndex {
            base: self.map.as_ptr() as usize,
            reserved: self.reserved,
        }
    }

    /// Drops the local copy of a page (`MADV_DONTNEED`): the next access faults again.
    /// The uffd has no REMOVE event negotiated, so this never waits for a reader.
    pub fn discard(&self, page: u64) -> std::io::Result<()> {
        // SAFETY: the range is one page inside our own mapping; discarding its contents is
        // what the protocol asked for and nothing holds references into guest memory.
        let rc = unsafe {
            libc::madvise(
                self.page_addr(page) as *mut libc::c_void,
                PAGE_SIZE as usize,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The bytes of a mapped page.
    ///
    /// # Safety
    ///
    /// The page must be mapped (the protocol says this node holds a copy), so reading it does
    /// not fault, and the caller must not keep the slice across an action that changes or
    /// drops the page.
    pub unsafe fn page_bytes(&self, page: u64) -> &[u8] {
        // SAFETY: in bounds (`page < pages`); the caller guarantees it is mapped and stable.
        unsafe { std::slice::from_raw_parts(self.page_addr(page) as *const u8, PAGE_SIZE as usize) }
    }
}

/// Where the region's pages are in this process (see [`Region::page_index`]).
#[derive(Debug, Clone, Copy)]
pub struct PageIndex {
    base: usize,
    reserved: usize,
}

impl PageIndex {
    /// The page containing host address `addr`, if it lies in the reservation.
    #[inline]
    pub fn page_of(self, addr: usize) -> Option<u64> {
        let off = addr.checked_sub(self.base)?;
        (off < self.reserved).then_some(off as u64 / PAGE_SIZE)
    }
}

/// A page of zeros, page-aligned, for zero-filled sends and read-only zero installs.
#[repr(C, align(4096))]
pub struct ZeroPage(pub [u8; PAGE_SIZE as usize]);

impl std::fmt::Debug for ZeroPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZeroPage")
    }
}

/// The shared zero page.
pub static ZERO_PAGE: ZeroPage = ZeroPage([0; PAGE_SIZE as usize]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_region_is_refused() {
        assert!(matches!(Region::new(0, 0, 1), Err(RegionError::Empty)));
    }

    #[test]
    fn addresses_map_to_pages() {
        let r = Region::new(4, 8, 1).expect("region (needs root or uffd access)");
        assert_eq!(r.pages(), 4);
        assert_eq!(r.reserved(), 8 * 4096);
        assert_eq!(
            r.page_of(r.base() as usize + 5 * 4096),
            Some(5),
            "reserved pages are known"
        );
        r.grow(6).unwrap();
        assert_eq!(r.pages(), 6);
        assert!(r.grow(9).is_err(), "beyond the reservation");
        let a = r.page_addr(2);
        assert_eq!(r.page_of(a), Some(2));
        assert_eq!(r.page_of(a + 4095), Some(2));
        assert_eq!(r.page_of(r.base() as usize + r.reserved()), None);
        assert_eq!(r.page_of(0), None);
        assert!(r.uffd(0).features().contains(Features::PAGEFAULT_FLAG_WP));
        assert_eq!(r.partitions(), 1);
    }

    /// With two shards, a fault on a granule is queued on its owner's userfaultfd only, and
    /// the owner's descriptor resolves it.
    #[test]
    fn each_shard_reads_the_faults_of_its_own_granules() {
        use uffd_poller::{Event, EventBuf, ZeropageMode};
        let g = SHARD_GRANULE_PAGES;
        let r = Region::new(3 * g, 3 * g, 2).expect("region (needs root or uffd access)");
        assert_eq!(r.partitions(), 2);
        let mut buf: Box<EventBuf<8>> = Box::default();
        for (page, owner) in [(5, 0u32), (g + 5, 1), (2 * g + 5, 0), (3 * g - 1, 0)] {
            let addr = r.page_addr(page);
            // SAFETY: reads one byte of the mapping; the fault is resolved below.
            let toucher =
                std::thread::spawn(move || unsafe { std::ptr::read_volatile(addr as *const u8) });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let seen = loop {
                let evs = r.uffd(owner).read_events(&mut buf).expect("read events");
                if let Some(Event::PageFault(f)) = evs.first() {
                    break f.address;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no fault on page {page}"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            assert_eq!(r.page_of(seen), Some(page));
            let other = r
                .uffd(1 - owner)
                .read_events(&mut buf)
                .expect("read events");
            assert!(
                other.is_empty(),
                "page {page} also queued on shard {}",
                1 - owner
            );
            assert!(std::ptr::eq(r.uffd_of(page), r.uffd(owner)));
            r.uffd_of(page)
                .zeropage(addr, PAGE_SIZE as usize, ZeropageMode::empty())
                .expect("zeropage");
            assert_eq!(toucher.join().expect("toucher"), 0);
        }
    }
}
