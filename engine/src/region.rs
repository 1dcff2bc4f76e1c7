//! The guest region: one anonymous mapping covering the whole distributed address space,
//! registered with the node's userfaultfd (MISSING | WP, kernel faults allowed).
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

/// The guest region and its userfaultfd.
///
/// The mapping reserves room for the address space to grow (nodes joining append their
/// memory at the top): `reserved` bytes are mapped (`MAP_NORESERVE`, nothing is committed
/// until touched) and registered; `len` is the current address space.
#[derive(Debug)]
pub struct Region {
    /// The reservation (unmapped when the region drops, after the uffd lets go of it).
    map: PageRegion,
    reserved: usize,
    len: AtomicUsize,
    uffd: Uffd,
}

impl Region {
    /// Maps `pages` pages and registers them with a new userfaultfd, reserving room for the
    /// address space to grow to `reserve_pages` (at least `pages`).
    pub fn new(pages: u64, reserve_pages: u64) -> Result<Self, RegionError> {
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
        let uffd = Uffd::open_with(required_features(), optional_features())?;
        let map = PageRegion::reserve(len).map_err(|source| RegionError::Map { bytes, source })?;
        let base = map.as_ptr();
        let region = Region {
            map,
            reserved: len,
            len: AtomicUsize::new(current),
            uffd,
        };
        // SAFETY: the range is the private anonymous mapping created above, owned by `region`
        // and accessed only through raw pointers; its missing pages are filled by the shards.
        unsafe {
            region
                .uffd
                .register(base as usize, len, RegisterMode::MISSING | RegisterMode::WP)
        }?;
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

    /// The userfaultfd the region is registered with.
    pub fn uffd(&self) -> &Uffd {
        &self.uffd
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

impl Drop for Region {
    fn drop(&mut self) {
        // Unregistering wakes any thread still waiting on a fault; they then see zero pages,
        // which only happens while the process exits.
        let _ = self
            .uffd
            .unregister(self.map.as_ptr() as usize, self.reserved);
        // `map` unmaps the memory when the fields drop, after this.
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
        assert!(matches!(Region::new(0, 0), Err(RegionError::Empty)));
    }

    #[test]
    fn addresses_map_to_pages() {
        let r = Region::new(4, 8).expect("region (needs root or uffd access)");
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
        assert!(r.uffd().features().contains(Features::PAGEFAULT_FLAG_WP));
    }
}
