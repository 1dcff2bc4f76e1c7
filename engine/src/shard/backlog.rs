//! Frames the transport refused with backpressure, parked in order until it has room.
//!
//! The protocol machine has already decided these sends, and later actions (a drop of the
//! page, say) may follow at once, so a parked frame keeps its own copy of the page contents,
//! taken when the send was decided. Capacity is fixed at creation; the protocol's own limits
//! (outstanding requests per shard) keep it from filling in practice, and a full backlog is a
//! configuration error reported as such, never a silent drop.

use std::collections::VecDeque;

use wire::{Header, PeerId, PAGE_SIZE};

/// One parked frame.
#[derive(Debug, Clone, Copy)]
struct Parked {
    peer: PeerId,
    header: Header,
    /// Index of the page copy in the pool, when the frame carries a payload.
    slot: Option<u32>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Backlog {
    frames: VecDeque<Parked>,
    cap: usize,
    pages: Box<[u8]>,
    free: Vec<u32>,
}

/// The backlog is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogFull;

impl Backlog {
    /// A backlog of up to `frames` frames, `pages` of which may carry a payload.
    pub fn new(frames: usize, pages: usize) -> Self {
        Self {
            frames: VecDeque::with_capacity(frames),
            cap: frames,
            pages: vec![0u8; pages * PAGE_SIZE].into_boxed_slice(),
            free: (0..pages as u32).rev().collect(),
        }
    }

    /// Parks a frame (copying `payload`). Never grows beyond the capacity.
    pub fn park(
        &mut self,
        peer: PeerId,
        header: Header,
        payload: Option<&[u8]>,
    ) -> Result<(), BacklogFull> {
        if self.frames.len() == self.cap {
            return Err(BacklogFull);
        }
        let slot = match payload {
            None => None,
            Some(bytes) => {
                let s = self.free.pop().ok_or(BacklogFull)?;
                let off = s as usize * PAGE_SIZE;
                self.pages[off..off + bytes.len()].copy_from_slice(bytes);
                Some(s)
            }
        };
        self.frames.push_back(Parked { peer, header, slot });
        Ok(())
    }

    /// Whether nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames parked.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether a frame for `peer` is parked (later frames to it must queue behind it to keep
    /// the per-connection order).
    pub fn holds(&self, peer: PeerId) -> bool {
        self.frames.iter().any(|f| f.peer == peer)
    }

    /// Offers parked frames in order to `send`, which answers whether it took each one;
    /// stops at the first refusal. Returns how many were sent.
    pub fn drain(&mut self, mut send: impl FnMut(PeerId, &Header, Option<&[u8]>) -> bool) -> usize {
        let mut n = 0;
        while let Some(f) = self.frames.front().copied() {
            let payload = f.slot.map(|s| {
                let off = s as usize * PAGE_SIZE;
                &self.pages[off..off + f.header.payload_len as usize]
            });
            if !send(f.peer, &f.header, payload) {
                break;
            }
            self.frames.pop_front();
            if let Some(s) = f.slot {
                self.free.push(s);
            }
            n += 1;
        }
        n
    }

    /// Drops every frame for `peer` (it went down).
    pub fn forget(&mut self, peer_of: impl Fn(PeerId) -> bool) {
        let free = &mut self.free;
        self.frames.retain(|f| {
            let keep = !peer_of(f.peer);
            if !keep {
                if let Some(s) = f.slot {
                    free.push(s);
                }
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::MsgType;

    fn hdr(txn: u64, len: u32) -> Header {
        let mut h = Header::new(MsgType::Data, 1);
        h.txn = txn;
        h.set_payload_len(len);
        h
    }

    #[test]
    fn parks_in_order_with_payload_copies_and_stays_bounded() {
        let mut b = Backlog::new(3, 1);
        let page = vec![7u8; PAGE_SIZE];
        b.park(1, hdr(1, PAGE_SIZE as u32), Some(&page)).unwrap();
        b.park(2, hdr(2, 0), None).unwrap();
        assert_eq!(
            b.park(3, hdr(3, PAGE_SIZE as u32), Some(&page)),
            Err(BacklogFull)
        );
        b.park(3, hdr(3, 0), None).unwrap();
        assert_eq!(b.park(4, hdr(4, 0), None), Err(BacklogFull));
        assert!(b.holds(2) && !b.holds(9));

        // The first send is refused: nothing leaves, order is kept.
        assert_eq!(b.drain(|_, _, _| false), 0);
        let mut seen = Vec::new();
        assert_eq!(
            b.drain(|p, h, pl| {
                seen.push((p, h.txn, pl.map(|x| x[0])));
                h.txn != 3
            }),
            2
        );
        assert_eq!(seen, vec![(1, 1, Some(7)), (2, 2, None), (3, 3, None)]);
        assert_eq!(b.len(), 1);
        // The page slot came back.
        b.park(5, hdr(5, PAGE_SIZE as u32), Some(&page)).unwrap();
        b.forget(|p| p == 3 || p == 5);
        assert!(b.is_empty());
    }
}
