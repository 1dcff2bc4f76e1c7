//! Page-aligned memory regions for buffer pools (rx slots, tx copy slots, provided-buffer
//! rings), mapped once at construction and never resized.

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
        let len = len.max(1).div_ceil(crate::PAGE_SIZE) * crate::PAGE_SIZE;
        // SAFETY: a fresh anonymous private mapping at a kernel-chosen address; no existing
        // memory is affected. The result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
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
