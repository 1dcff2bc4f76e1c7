//! The receive slot pool: page-aligned 4 KiB slots that page payloads are reassembled into,
//! with a per-peer quota (receive backpressure) and handles ([`RxBuf`]) the caller releases.

use std::io;

use crate::region::PageRegion;
use crate::PAGE_SIZE;

/// A received payload held in a page-aligned receive slot. Opaque; read it with
/// `Transport::payload` and give it back with `Transport::release`. Not `Clone`: each slot has
/// exactly one handle.
#[derive(Debug, PartialEq, Eq)]
pub struct RxBuf {
    index: u32,
    len: u32,
}

impl RxBuf {
    /// A handle for slot `index` holding `len` payload bytes, for a transport that keeps its
    /// own receive memory (the verbs transport receives into registered slots). Only the
    /// transport that hands it out can interpret it; it must make one handle per held slot.
    pub fn from_parts(index: u32, len: u32) -> RxBuf {
        RxBuf { index, len }
    }

    /// Slot index inside its pool.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the payload is empty (never, for buffers a transport hands out).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

const FREE: u16 = u16::MAX;

/// Fixed pool of `owners × per_owner` receive slots.
#[derive(Debug)]
pub struct RxSlots {
    region: PageRegion,
    free: Vec<u32>,
    owner: Vec<u16>,
    in_use: Vec<u32>,
    per_owner: u32,
}

impl RxSlots {
    /// A pool for `owners` peers with `per_owner` slots each, all preallocated.
    pub fn new(owners: usize, per_owner: usize) -> io::Result<RxSlots> {
        let total = owners
            .checked_mul(per_owner)
            .filter(|&t| t > 0 && t <= u32::MAX as usize && owners < FREE as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad rx slot counts"))?;
        Ok(RxSlots {
            region: PageRegion::new(total * PAGE_SIZE)?,
            free: (0..total as u32).rev().collect(),
            owner: vec![FREE; total],
            in_use: vec![0; owners],
            per_owner: per_owner as u32,
        })
    }

    /// Takes a slot for `owner`; `None` when the owner's quota or the pool is exhausted.
    pub fn alloc(&mut self, owner: usize, len: usize) -> Option<RxBuf> {
        let used = self.in_use.get_mut(owner)?;
        if *used >= self.per_owner || len > PAGE_SIZE {
            return None;
        }
        let index = self.free.pop()?;
        *used += 1;
        self.owner[index as usize] = owner as u16;
        Some(RxBuf {
            index,
            len: len as u32,
        })
    }

    /// Returns a slot to the pool. Handles that this pool did not hand out are ignored.
    pub fn release(&mut self, buf: RxBuf) -> Option<usize> {
        let o = *self.owner.get(buf.index as usize)?;
        if o == FREE {
            return None;
        }
        self.owner[buf.index as usize] = FREE;
        self.in_use[o as usize] -= 1;
        self.free.push(buf.index);
        Some(o as usize)
    }

    /// Slots currently held by `owner`.
    pub fn in_use(&self, owner: usize) -> usize {
        self.in_use.get(owner).map_or(0, |&n| n as usize)
    }

    /// Whether `owner` may take another slot now.
    pub fn has_room(&self, owner: usize) -> bool {
        self.in_use.get(owner).is_some_and(|&n| n < self.per_owner) && !self.free.is_empty()
    }

    /// The payload bytes of `buf`.
    pub fn bytes(&self, buf: &RxBuf) -> &[u8] {
        self.region
            .slice(buf.index as usize * PAGE_SIZE, buf.len as usize)
            .unwrap_or(&[])
    }

    /// The payload bytes of `buf`, for filling it.
    pub fn bytes_mut(&mut self, buf: &RxBuf) -> &mut [u8] {
        self.region
            .slice_mut(buf.index as usize * PAGE_SIZE, buf.len as usize)
            .unwrap_or(&mut [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_and_release() {
        let mut s = RxSlots::new(2, 2).unwrap();
        let a = s.alloc(0, 4096).unwrap();
        let b = s.alloc(0, 10).unwrap();
        assert!(s.alloc(0, 1).is_none(), "quota of owner 0 is 2");
        let c = s.alloc(1, 4096).unwrap();
        assert_eq!(
            s.bytes(&a).as_ptr() as usize % 4096,
            0,
            "slots are page-aligned"
        );
        s.bytes_mut(&b).copy_from_slice(&[9; 10]);
        assert_eq!(s.bytes(&b), &[9; 10]);
        assert_eq!(s.release(a), Some(0));
        assert_eq!(s.in_use(0), 1);
        assert!(s.alloc(0, 1).is_some());
        assert_eq!(s.release(c), Some(1));
        assert!(s.alloc(2, 1).is_none(), "unknown owner");
    }
}
