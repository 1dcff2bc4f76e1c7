//! Page-aligned anonymous mappings: the one helper the workspace maps private anonymous
//! memory with — buffer pools (rx slots, tx copy slots, provided-buffer rings) with
//! [`PageRegion::new`], and address-space reservations (the guest region, the benchmark's
//! floor) with [`PageRegion::reserve`]. Mapped once, never resized, unmapped on drop.

use std::io;
use std::ptr::NonNull;

/// An anonymous, private, page-aligned mapping, zero-filled, unmapped on drop.
#[derive(Debug)]
pub struct PageRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; access to its bytes is mediated by
// `&self` / `&mut self` borrows (or by raw pointers whose users document their own contracts),
// so moving or sharing the owner between threads is sound.
unsafe impl Send for PageRegion {}
// SAFETY: see `Send`; `&PageRegion` only exposes the base pointer and length.
unsafe impl Sync for PageRegion {}

impl PageRegion {
    /// Maps `len` bytes (rounded up to whole pages; at least one page).
    pub fn new(len: usize) -> io::Result<PageRegion> {
        Self::map(len, 0)
    }

    /// Reserves `len` bytes of address space (rounded up to whole pages): `MAP_NORESERVE`, so
    /// nothing is committed until touched, and no transparent huge pages, so every fault is
    /// one 4 KiB page (a huge page would map 512 pages behind a userfaultfd handler's back).
    pub fn reserve(len: usize) -> io::Result<PageRegion> {
        let r = Self::map(len, libc::MAP_NORESERVE)?;
        // SAFETY: advice on the mapping just created, owned by `r`.
        if unsafe { libc::madvise(r.ptr.as_ptr().cast(), r.len, libc::MADV_NOHUGEPAGE) } != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: a kernel without transparent huge pages, where pages are 4 KiB anyway.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
        Ok(r)
    }

    fn map(len: usize, flags: libc::c_int) -> io::Result<PageRegion> {
        let len = len
            .max(1)
            .checked_next_multiple_of(crate::PAGE_SIZE)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh anonymous private mapping at a kernel-chosen address; no existing
        // memory is affected. The result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(PageRegion { ptr, len })
    }

    /// Base address (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes `[off, off + len)`; `None` when out of bounds.
    pub fn slice(&self, off: usize, len: usize) -> Option<&[u8]> {
        if off.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: `off..off + len` is in bounds (checked above); the mapping lives as long as `self`, and writers
        // need `&mut self` (`slice_mut`) or document their own exclusivity.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().wrapping_add(off), len) })
    }

    /// The bytes `[off, off + len)` mutably; `None` when out of bounds.
    pub fn slice_mut(&mut self, off: usize, len: usize) -> Option<&mut [u8]> {
        if off.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: in bounds (checked above); `&mut self` gives exclusive access.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().wrapping_add(off), len) })
    }
}

impl Drop for PageRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping created in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
