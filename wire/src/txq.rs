//! The per-peer transmit queue shared by every transport: a bounded FIFO of frames (encoded
//! headers in one contiguous array, payload references), the send cursor with its byte offset
//! for short sends, and completion tracking (zero-copy notifications) before entries are freed.

use crate::counters::{bump, TransportStats};
use crate::header::{Header, HEADER_LEN, PAGE_SIZE};
use crate::region::PageRegion;
use crate::seal::{SealError, Sealer, TAG_LEN};
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
        /// The caller sent a [`Payload::Page`], copied because the connection encrypts:
        /// it still expects `SendDone` for it.
        page: bool,
    },
}

impl TxPayload {
    /// Whether the caller is owed `Event::SendDone` for this payload (it sent a page).
    pub fn owes_send_done(&self) -> bool {
        matches!(
            self,
            TxPayload::Page { .. } | TxPayload::Copy { page: true, .. }
        )
    }
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
///
/// On a sealed connection each frame's header is followed by its tag ([`crate::seal`]);
/// header and tag sit together in the header array, so consecutive headers still merge.
#[derive(Debug)]
pub struct TxQueue {
    /// `cap` slots of `stride` bytes: the encoded header, then the tag when sealed.
    hdrs: Box<[u8]>,
    stride: usize,
    sealer: Option<Sealer>,
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
            hdrs: vec![0u8; cap * (HEADER_LEN + TAG_LEN)].into_boxed_slice(),
            stride: HEADER_LEN,
            sealer: None,
            entries: vec![EMPTY; cap].into_boxed_slice(),
            cap: cap as u32,
            head: 0,
            cursor: 0,
            cursor_off: 0,
            tail: 0,
        }
    }

    /// Empties the queue for a new connection (entries must have been popped or abandoned);
    /// its frames are sealed by `sealer` when given.
    pub fn reset(&mut self, sealer: Option<Sealer>) {
        self.stride = HEADER_LEN + sealer.as_ref().map_or(0, |s| s.auth().tag_len());
        self.sealer = sealer;
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

    /// Whether payloads must be in a transmit slot of ours (they are encrypted in place).
    pub fn encrypts(&self) -> bool {
        self.sealer
            .as_ref()
            .is_some_and(|s| s.auth() == crate::seal::FrameAuth::Aead)
    }

    fn hdr(&self, i: usize) -> &[u8] {
        &self.hdrs[i * self.stride..(i + 1) * self.stride]
    }

    /// Queues a frame; returns its sequence number, or `None` when full. The header is
    /// encoded as given (callers validate it first) and sealed when the connection is: then
    /// a `Copy` payload is encrypted in place in `Aead` mode, and a `Page` payload is refused
    /// in that mode ([`TxQueue::encrypts`]).
    ///
    /// # Safety
    ///
    /// The payload's bytes must be readable (and, for `Copy`, writable and not otherwise
    /// referenced) for the duration of the call, as the `PageRef` contract and the copy
    /// slots guarantee.
    pub unsafe fn push(
        &mut self,
        header: &Header,
        payload: TxPayload,
        token: u64,
    ) -> Result<Option<u32>, SealError> {
        if self.is_full() {
            return Ok(None);
        }
        let seq = self.tail;
        let i = self.idx(seq);
        let mut enc = [0u8; HEADER_LEN];
        header.encode(&mut enc);
        if let Some(s) = self.sealer.as_mut() {
            let (addr, len) = (payload.addr() as *mut u8, payload.len());
            let tag = match payload {
                TxPayload::None => s.seal_clear(&enc, &[])?,
                TxPayload::Page { .. } => {
                    // SAFETY: the caller guarantees a readable page for the call (PageRef).
                    let page = unsafe { std::slice::from_raw_parts(addr, len) };
                    s.seal_clear(&enc, page)?
                }
                TxPayload::Copy { .. } => {
                    // SAFETY: a copy slot of this connection, writable and referenced by
                    // nothing else until the frame is queued (caller's contract).
                    let slot = unsafe { std::slice::from_raw_parts_mut(addr, len) };
                    s.seal_owned(&enc, slot)?
                }
            };
            let at = i * self.stride + HEADER_LEN;
            self.hdrs[at..at + TAG_LEN].copy_from_slice(&tag);
        }
        self.hdrs[i * self.stride..i * self.stride + HEADER_LEN].copy_from_slice(&enc);
        self.entries[i] = Entry {
            payload,
            token,
            notifs: 0,
        };
        self.tail = self.tail.wrapping_add(1);
        Ok(Some(seq))
    }

    fn frame_len(&self, seq: u32) -> usize {
        self.stride + self.entries[self.idx(seq)].payload.len()
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
            let stride = self.stride;
            if off < stride {
                let addr = self.hdr(i).as_ptr() as usize + off;
                let len = stride - off;
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
                off = stride;
            }
            let plen = e.payload.len();
            if plen > 0 {
                if n == out.len() {
                    break;
                }
                let skip = off - stride;
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
    let (payload, page) = match payload {
        Payload::Page(r) if txq.encrypts() => {
            // SAFETY: the PageRef contract: readable and unchanged while queued, so also
            // for the copy made here.
            let bytes = unsafe { std::slice::from_raw_parts(r.addr() as *const u8, r.len()) };
            (Payload::Copy(bytes), true)
        }
        p => (p, false),
    };
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
                page,
            }
        }
    };
    // SAFETY: a `Page` payload is covered by the caller's PageRef contract; a `Copy` payload
    // is the slot just filled, owned by this connection and referenced by nothing else.
    let pushed = unsafe { txq.push(header, tp, token) };
    let give_back = |free: &mut Vec<u32>| {
        if let TxPayload::Copy { slot, .. } = tp {
            free.push(slot);
        }
    };
    match pushed {
        Ok(Some(_)) => Ok(SendOutcome::Queued),
        Ok(None) => {
            give_back(copy.free);
            bump(&stats.backpressure);
            Ok(SendOutcome::Backpressure)
        }
        Err(e) => {
            give_back(copy.free);
            Err(TransportError::Seal(e))
        }
    }
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

    /// Pushes with the queue's contract met: every test payload is a live buffer of the test.
    fn push(q: &mut TxQueue, h: &Header, p: TxPayload, token: u64) -> Option<u32> {
        // SAFETY: the payloads the tests push point at buffers alive for the whole test.
        unsafe { q.push(h, p, token) }.expect("unsealed queues cannot fail to seal")
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
        push(&mut q, &hdr(MsgType::Ping, 0), TxPayload::None, 1).unwrap();
        push(&mut q, &hdr(MsgType::Pong, 0), TxPayload::None, 2).unwrap();
        let p = TxPayload::Page {
            addr: page.as_ptr() as usize,
            len: PAGE_SIZE as u32,
        };
        push(&mut q, &hdr(MsgType::Data, PAGE_SIZE as u32), p, 3).unwrap();
        push(&mut q, &hdr(MsgType::Ping, 0), TxPayload::None, 4).unwrap();
        assert!(q.is_full());
        assert!(push(&mut q, &hdr(MsgType::Ping, 0), TxPayload::None, 5).is_none());
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
        let seq = push(&mut q, &hdr(MsgType::Data, PAGE_SIZE as u32), p, 9).unwrap();
        q.advance(HEADER_LEN + PAGE_SIZE);
        q.notif_add(seq);
        assert_eq!(q.pop_done(), None, "kernel still references the page");
        q.notif_done(seq);
        assert_eq!(q.pop_done().map(|d| d.token), Some(9));
    }

    #[test]
    fn teardown_reports_unsent_frames() {
        let mut q = TxQueue::new(4);
        push(&mut q, &hdr(MsgType::Ping, 0), TxPayload::None, 1).unwrap();
        push(&mut q, &hdr(MsgType::Ping, 0), TxPayload::None, 2).unwrap();
        q.advance(HEADER_LEN);
        let a = q.pop_any().unwrap();
        let b = q.pop_any().unwrap();
        assert!(a.sent && !b.sent);
        assert!(q.pop_any().is_none());
    }
}
