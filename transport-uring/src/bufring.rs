//! A provided-buffer ring for one connection's multishot receive: the ring of buffer
//! descriptors shared with the kernel, the buffers themselves, and recycling in order.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use wire::region::PageRegion;

/// Layout of one `struct io_uring_buf`; the `resv` field of entry 0 is the ring's tail.
#[repr(C)]
#[allow(dead_code)] // Only used through `offset_of!`: the kernel reads the fields.
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// Buffers handed to the kernel for one connection (buffer group id = connection slot).
#[derive(Debug)]
pub struct BufRing {
    ring: PageRegion,
    bufs: PageRegion,
    count: u16,
    size: u32,
    tail: u16,
    bgid: u16,
    registered: bool,
}

impl BufRing {
    /// Preallocates `count` (a power of two) buffers of `size` bytes for group `bgid`.
    pub fn new(bgid: u16, count: u16, size: u32) -> io::Result<BufRing> {
        Ok(BufRing {
            ring: PageRegion::new(usize::from(count) * std::mem::size_of::<RawBuf>())?,
            bufs: PageRegion::new(usize::from(count) * size as usize)?,
            count,
            size,
            tail: 0,
            bgid,
            registered: false,
        })
    }

    fn entry(&self, idx: u16) -> *mut RawBuf {
        let i = usize::from(idx & (self.count - 1));
        self.ring.as_ptr().cast::<RawBuf>().wrapping_add(i)
    }

    fn field<T>(&self, idx: u16, offset: usize) -> *mut T {
        self.entry(idx)
            .cast::<u8>()
            .wrapping_add(offset)
            .cast::<T>()
    }

    fn publish(&self) {
        let tail = self.field::<u16>(0, std::mem::offset_of!(RawBuf, resv));
        // SAFETY: `tail` points at entry 0's `resv` field inside our mapping, 2-byte aligned
        // (page-aligned region, offset 14); the kernel only reads it, and AtomicU16 has the
        // layout of u16.
        let t = unsafe { AtomicU16::from_ptr(tail) };
        t.store(self.tail, Ordering::Release);
    }

    fn put(&mut self, bid: u16) {
        let idx = self.tail;
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: the fields are inside our mapping and aligned; the entry
        // at `tail` is not owned by the kernel (it consumes only entries before the published
        // tail). `resv` is left alone: for entry 0 it is the tail.
        unsafe {
            self.field::<u64>(idx, std::mem::offset_of!(RawBuf, addr))
                .write(addr)
        };
        // SAFETY: as above.
        unsafe {
            self.field::<u32>(idx, std::mem::offset_of!(RawBuf, len))
                .write(self.size)
        };
        // SAFETY: as above.
        unsafe {
            self.field::<u16>(idx, std::mem::offset_of!(RawBuf, bid))
                .write(bid)
        };
        self.tail = self.tail.wrapping_add(1);
    }

    /// Fills the ring with every buffer and registers it with the kernel.
    pub fn register(&mut self, sub: &Submitter<'_>) -> io::Result<()> {
        self.tail = 0;
        for bid in 0..self.count {
            self.put(bid);
        }
        self.publish();
        // SAFETY: the ring memory lives in `self.ring`, which outlives the registration: it is
        // unregistered in `unregister` (called before the transport drops) and the kernel
        // unregisters it when the ring closes.
        unsafe {
            sub.register_buf_ring_with_flags(self.ring.as_ptr() as u64, self.count, self.bgid, 0)?
        };
        self.registered = true;
        Ok(())
    }

    /// Unregisters the ring (when the connection is torn down).
    pub fn unregister(&mut self, sub: &Submitter<'_>) -> io::Result<()> {
        if std::mem::take(&mut self.registered) {
            sub.unregister_buf_ring(self.bgid)?;
        }
        Ok(())
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.put(bid);
        self.publish();
    }

    /// The first `len` bytes of buffer `bid` (empty if out of range).
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        if bid >= self.count || len > self.size as usize {
            return &[];
        }
        self.bufs
            .slice(usize::from(bid) * self.size as usize, len)
            .unwrap_or(&[])
    }

    /// The buffer group id.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Number of buffers.
    pub fn count(&self) -> u16 {
        self.count
    }
}
