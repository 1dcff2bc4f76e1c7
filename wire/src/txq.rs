//! The per-peer transmit queue shared by every transport: a bounded FIFO of frames (encoded
//! headers in one contiguous array, payload references), the send cursor with its byte offset
//! for short sends, and completion tracking (zero-copy notifications) before entries are freed.

use crate::counters::{bump, TransportStats};
use crate::header::{Header, HEADER_LEN, PAGE_SIZE};
use crate::region::PageRegion;
use crate::transport::{Payload, SendOutcome, TransportError};

/// Payload of a queued frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPayload {
    /// Header-only frame.
    None,
    /// Caller memory sent in place (zero-copy contract of `PageRef`).
    Page {
        /// Address of the first byte.
        addr: usize,
        /// Length in bytes.
        len: u32,
    },
    /// Bytes copied into the transport's transmit slot `slot` at `addr`.
    Copy {
        /// Transmit slot index (transport-defined).
        slot: u32,
        /// Address of the slot.
        addr: usize,
        /// Length in bytes.
        len: u32,
    },
}

impl TxPayload {
    fn len(&self) -> usize {
        match *self {
            TxPayload::None => 0,
            TxPayload::Page { len, .. } | TxPayload::Copy { len, .. } => len as usize,
        }
    }

    fn addr(&self) -> usize {
        match *self {
            TxPayload::None => 0,
            TxPayload::Page { addr, .. } | TxPayload::Copy { addr, .. } => addr,
        }
    }
}

/// What a contiguous byte range to send holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegKind {
    /// Encoded headers of one or more consecutive frames.
    Headers,
    /// The payload of the frame with sequence number `seq`.
    Payload {
        /// Frame sequence number (see [`TxQueue::push`]).
        seq: u32,
        /// The payload reference.
        payload: TxPayload,
    },
}

/// One contiguous byte range ready to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Address of the first byte (valid until the bytes are reported sent with
    /// [`TxQueue::advance`] and, for payloads, the frame is popped).
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
    /// What the bytes are.
    pub kind: SegKind,
}

/// A frame whose bytes left and whose memory the kernel no longer references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxDone {
    /// The caller's token.
    pub token: u64,
    /// The payload, so the transport can free a copy slot or report a page.
    pub payload: TxPayload,
    /// False when the frame was dropped unsent (connection torn down).
    pub sent: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    payload: TxPayload,
    token: u64,
    notifs: u16,
}

const EMPTY: Entry = Entry {
    payload: TxPayload::None,
    token: 0,
    notifs: 0,
};

/// Bounded FIFO of frames for one connection. Sequence numbers wrap; `cap` ≤ 2^16.
#[derive(Debug)]
pub struct TxQueue {
    hdrs: Box<[[u8; HEADER_LEN]]>,
    entries: Box<[Entry]>,
    cap: u32,
    head: u32,
    cursor: u32,
    cursor_off: usize,
    tail: u32,
}

impl TxQueue {
    /// A queue holding at most `cap` frames (clamped to 1..=65536), preallocated.
    pub fn new(cap: usize) -> TxQueue {
        let cap = cap.clamp(1, 1 << 16);
        TxQueue {
            hdrs: vec![[0u8; HEADER_LEN]; cap].into_boxed_slice(),
            entries: vec![EMPTY; cap].into_boxed_slice(),
            cap: cap as u32,
            head: 0,
            cursor: 0,
            cursor_off: 0,
            tail: 0,
        }
    }

    /// Empties the queue for a new connection (entries must have been popped or abandoned).
    pub fn reset(&mut self) {
        self.head = 0;
        self.cursor = 0;
        self.cursor_off = 0;
        self.tail = 0;
    }

    fn idx(&self, seq: u32) -> usize {
        (seq % self.cap) as usize
    }

    /// Frames queued and not yet popped.
    pub fn len(&self) -> usize {
        self.tail.wrapping_sub(self.head) as usize
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Whether [`TxQueue::push`] would refuse.
    pub fn is_full(&self) -> bool {
        self.len() >= self.cap as usize
    }

    /// Whether some bytes are not yet sent.
    pub fn has_unsent(&self) -> bool {
        self.cursor != self.tail
    }

    /// Queues a frame; returns its sequence number, or `None` when full. The header is
    /// encoded as given (callers validate it first).
    pub fn push(&mut self, header: &Header, payload: TxPayload, token: u64) -> Option<u32> {
        if self.is_full() {
            return None;
        }
        let seq = self.tail;
        let i = self.idx(seq);
        header.encode(&mut self.hdrs[i]);
        self.entries[i] = Entry {
            payload,
            token,
            notifs: 0,
        };
        self.tail = self.tail.wrapping_add(1);
        Some(seq)
    }

    fn frame_len(&self, seq: u32) -> usize {
        HEADER_LEN + self.entries[self.idx(seq)].payload.len()
    }

    /// Fills `out` with the unsent byte ranges in order, starting at the send cursor, merging
    /// headers of consecutive frames that are adjacent in memory. Returns the number written
    /// and their total length.
    pub fn segments(&self, out: &mut [Segment]) -> (usize, usize) {
        let (mut n, mut total) = (0usize, 0usize);
        let mut seq = self.cursor;
        let mut off = self.cursor_off;
        while seq != self.tail && n < out.len() {
            let i = self.idx(seq);
            let e = self.entries[i];
            if off < HEADER_LEN {
                let addr = self.hdrs[i].as_ptr() as usize + off;
                let len = HEADER_LEN - off;
                match out[..n].last_mut() {
                    Some(prev) if prev.kind == SegKind::Headers && prev.addr + prev.len == addr => {
                        prev.len += len;
                    }
                    _ => {
                        out[n] = Segment {
                            addr,
                            len,
                            kind: SegKind::Headers,
                        };
                        n += 1;
                    }
                }
                total += len;
                off = HEADER_LEN;
            }
            let plen = e.payload.len();
            if plen > 0 {
                if n == out.len() {
                    break;
                }
                let skip = off - HEADER_LEN;
                out[n] = Segment {
                    addr: e.payload.addr() + skip,
                    len: plen - skip,
                    kind: SegKind::Payload {
                        seq,
                        payload: e.payload,
                    },
                };
                n += 1;
                total += plen - skip;
            }
            seq = seq.wrapping_add(1);
            off = 0;
        }
        (n, total)
    }

    /// Moves the send cursor past `bytes` sent bytes (clamped to what is unsent).
    pub fn advance(&mut self, mut bytes: usize) {
        while bytes > 0 && self.cursor != self.tail {
            let left = self.frame_len(self.cursor) - self.cursor_off;
            if bytes < left {
                self.cursor_off += bytes;
                return;
            }
            bytes -= left;
            self.cursor = self.cursor.wrapping_add(1);
            self.cursor_off = 0;
        }
    }

    /// Counts one pending zero-copy notification for frame `seq`.
    pub fn notif_add(&mut self, seq: u32) {
        let i = self.idx(seq);
        self.entries[i].notifs = self.entries[i].notifs.saturating_add(1);
    }

    /// Retires one zero-copy notification for frame `seq`.
    pub fn notif_done(&mut self, seq: u32) {
        let i = self.idx(seq);
        self.entries[i].notifs = self.entries[i].notifs.saturating_sub(1);
    }

    /// Pops the oldest frame if it is fully sent and unreferenced by the kernel.
    pub fn pop_done(&mut self) -> Option<TxDone> {
        if self.head == self.cursor {
            return None;
        }
        let e = self.entries[self.idx(self.head)];
        if e.notifs > 0 {
            return None;
        }
        self.head = self.head.wrapping_add(1);
        Some(TxDone {
            token: e.token,
            payload: e.payload,
            sent: true,
        })
    }

    /// Pops the oldest frame whatever its state (teardown, after the kernel let go of every
    /// buffer). Frames past the cursor are reported unsent.
    pub fn pop_any(&mut self) -> Option<TxDone> {
        if self.is_empty() {
            return None;
        }
        let e = self.entries[self.idx(self.head)];
        let sent = self.head != self.cursor;
        if self.head == self.cursor {
            self.cursor = self.cursor.wrapping_add(1);
            self.cursor_off = 0;
        }
        self.head = self.head.wrapping_add(1);
        Some(TxDone {
            token: e.token,
            payload: e.payload,
            sent,
        })
    }
}

/// Where a connection's [`Payload::Copy`] bytes go: its free slots in the transport's copy
/// region (slot `c` is the 4 KiB at `c * PAGE_SIZE`).
#[derive(Debug)]
pub struct CopySlots<'a> {
    /// Free slot indices of this connection.
    pub free: &'a mut Vec<u32>,
    /// The transport's copy region.
    pub region: &'a mut PageRegion,
}

/// What every transport checks of a frame before queueing it: a header a peer would accept,
/// and a payload of the length the header announces.
pub fn check_frame(header: &Header, payload: &Payload<'_>) -> Result<(), TransportError> {
    header.validate()?;
    if payload.len() != header.payload_len as usize {
        return Err(TransportError::PayloadMismatch {
            header: header.payload_len,
            payload: payload.len(),
        });
    }
    Ok(())
}

/// The part of `Transport::send` every transport shares, after the peer lookup: validates
/// the frame, takes a copy slot for a `Copy` payload, and queues the frame on `txq`.
/// `Backpressure` (counted in `stats`) when the queue or the copy slots are full; nothing is
/// queued then.
pub fn queue_frame(
    txq: &mut TxQueue,
    copy: CopySlots<'_>,
    stats: &TransportStats,
    header: &Header,
    payload: Payload<'_>,
    token: u64,
) -> Result<SendOutcome, TransportError> {
    check_frame(header, &payload)?;
    if txq.is_full() {
        bump(&stats.backpressure);
        return Ok(SendOutcome::Backpressure);
    }
    let tp = match payload {
        Payload::None => TxPayload::None,
        Payload::Page(r) => TxPayload::Page {
            addr: r.addr(),
            len: r.len() as u32,
        },
        Payload::Copy(bytes) => {
            let Some(c) = copy.free.pop() else {
                bump(&stats.backpressure);
                return Ok(SendOutcome::Backpressure);
            };
            let off = c as usize * PAGE_SIZE;
            match copy.region.slice_mut(off, bytes.len()) {
                Some(dst) => dst.copy_from_slice(bytes),
                None => {
                    copy.free.push(c);
                    return Err(TransportError::Config("copy slot outside its region"));
                }
            }
            TxPayload::Copy {
                slot: c,
                addr: copy.region.as_ptr() as usize + off,
                len: bytes.len() as u32,
            }
        }
    };
    if txq.push(header, tp, token).is_none() {
        if let TxPayload::Copy { slot, .. } = tp {
            copy.free.push(slot);
        }
        bump(&stats.backpressure);
        return Ok(SendOutcome::Backpressure);
    }
    Ok(SendOutcome::Queued)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{MsgType, PAGE_SIZE};

    fn hdr(ty: MsgType, len: u32) -> Header {
        let mut h = Header::new(ty, 1);
        h.set_payload_len(len);
        h
    }

    fn bytes_of(q: &TxQueue) -> Vec<u8> {
        let mut segs = [Segment {
            addr: 0,
            len: 0,
            kind: SegKind::Headers,
        }; 64];
        let (n, total) = q.segments(&mut segs);
        let mut v = Vec::new();
        for s in &segs[..n] {
            // SAFETY: segments point into the queue's header array or the test's page, both
            // alive and unmodified for the duration of this call.
            v.extend_from_slice(unsafe { std::slice::from_raw_parts(s.addr as *const u8, s.len) });
        }
        assert_eq!(v.len(), total);
        v
    }

    #[test]
    fn merges_headers_and_resumes_after_short_sends() {
        let page = vec![7u8; PAGE_SIZE];
        let mut q = TxQueue::new(4);
        q.push(&hdr(MsgType::Ping, 0), TxPayload::None, 1).unwrap();
        q.push(&hdr(MsgType::Pong, 0), TxPayload::None, 2).unwrap();
        let p = TxPayload::Page {
            addr: page.as_ptr() as usize,
            len: PAGE_SIZE as u32,
        };
        q.push(&hdr(MsgType::Data, PAGE_SIZE as u32), p, 3).unwrap();
        q.push(&hdr(MsgType::Ping, 0), TxPayload::None, 4).unwrap();
        assert!(q.is_full());
        assert!(q.push(&hdr(MsgType::Ping, 0), TxPayload::None, 5).is_none());
        let mut segs = [Segment {
            addr: 0,
            len: 0,
            kind: SegKind::Headers,
        }; 8];
        let (n, total) = q.segments(&mut segs);
        assert_eq!(n, 3, "three headers merged, the page, then the last header");
        assert_eq!(segs[0].len, 3 * HEADER_LEN);
        assert_eq!(total, 4 * HEADER_LEN + PAGE_SIZE);
        let full = bytes_of(&q);
        // Send in awkward pieces and check the remaining bytes are always the suffix.
        let mut sent = 0;
        for step in [1, 39, 45, 2000, 2100, 77] {
            q.advance(step);
            sent += step;
            assert_eq!(bytes_of(&q), full[sent.min(full.len())..]);
        }
        q.advance(full.len());
        assert!(!q.has_unsent());
        let tokens: Vec<u64> = std::iter::from_fn(|| q.pop_done())
            .map(|d| d.token)
            .collect();
        assert_eq!(tokens, vec![1, 2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn notifications_hold_the_frame() {
        let page = [1u8; PAGE_SIZE];
        let mut q = TxQueue::new(2);
        let p = TxPayload::Page {
            addr: page.as_ptr() as usize,
            len: PAGE_SIZE as u32,
        };
        let seq = q.push(&hdr(MsgType::Data, PAGE_SIZE as u32), p, 9).unwrap();
        q.advance(HEADER_LEN + PAGE_SIZE);
        q.notif_add(seq);
        assert_eq!(q.pop_done(), None, "kernel still references the page");
        q.notif_done(seq);
        assert_eq!(q.pop_done().map(|d| d.token), Some(9));
    }

    #[test]
    fn teardown_reports_unsent_frames() {
        let mut q = TxQueue::new(4);
        q.push(&hdr(MsgType::Ping, 0), TxPayload::None, 1).unwrap();
        q.push(&hdr(MsgType::Ping, 0), TxPayload::None, 2).unwrap();
        q.advance(HEADER_LEN);
        let a = q.pop_any().unwrap();
        let b = q.pop_any().unwrap();
        assert!(a.sent && !b.sent);
        assert!(q.pop_any().is_none());
    }
}
