//! Deterministic test traffic: which frame a sequence number maps to, its payload bytes and
//! checksum, a sender that respects backpressure and the zero-copy contract, and a checker
//! that verifies order, types and every payload byte sum.

use std::time::{Duration, Instant};

use crate::region::PageRegion;
use crate::{
    Event, Header, MsgType, PageRef, Payload, PeerId, RxBuf, SendOutcome, Transport, PAGE_SIZE,
};

/// Payload kinds a sequence number selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Header only (`ReadReq`).
    Empty,
    /// Page copied by the transport (`Data`).
    Copy,
    /// Page sent in place (`EvictReq` with the dirty flag).
    Page,
}

/// The kind of frame `seq`: half header-only, a quarter copied pages, a quarter in-place pages.
pub fn kind(seq: u64) -> Kind {
    match seq % 4 {
        1 => Kind::Copy,
        3 => Kind::Page,
        _ => Kind::Empty,
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fills `buf` with the payload pattern of frame `seq`.
pub fn fill(seq: u64, buf: &mut [u8]) {
    for (i, w) in buf.chunks_mut(8).enumerate() {
        let v = splitmix(seq.wrapping_mul(512).wrapping_add(i as u64)).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
}

/// A 64-bit checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in bytes.chunks(8) {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The header of frame `seq` from node `sender` carrying a payload with checksum `sum`.
pub fn header(seq: u64, sender: u16, sum: u64) -> Header {
    let (ty, len, flags) = match kind(seq) {
        Kind::Empty => (MsgType::ReadReq, 0, 0),
        Kind::Copy => (MsgType::Data, PAGE_SIZE as u32, crate::flags::DATA),
        Kind::Page => (
            MsgType::EvictReq,
            PAGE_SIZE as u32,
            crate::flags::DATA | crate::flags::DIRTY,
        ),
    };
    Header {
        ty,
        flags,
        sender,
        aux: seq as u16,
        payload_len: len,
        txn: seq,
        page: seq.wrapping_mul(0x9E37_79B9),
        arg: if len == 0 { !seq } else { sum },
    }
}

/// Sends the test stream to one peer, holding in-place pages until their `SendDone`.
#[derive(Debug)]
pub struct Sender {
    /// Our node id (the frames' sender field).
    pub node: u16,
    /// Next sequence number to send.
    pub next: u64,
    /// In-place page sends.
    pub page_sends: u64,
    /// `SendDone` events received.
    pub send_done: u64,
    pages: PageRegion,
    free: Vec<u32>,
    scratch: Vec<u8>,
}

impl Sender {
    /// A sender for node `node` with `pages` in-place page buffers.
    pub fn new(node: u16, pages: usize) -> Sender {
        Sender {
            node,
            next: 0,
            page_sends: 0,
            send_done: 0,
            pages: PageRegion::new(pages * PAGE_SIZE).expect("mapping test pages"),
            free: (0..pages as u32).collect(),
            scratch: vec![0; PAGE_SIZE],
        }
    }

    /// Whether every in-place page came back.
    pub fn all_pages_back(&self) -> bool {
        self.send_done == self.page_sends
    }

    /// Sends frames up to (excluding) `upto` until backpressure; returns how many were queued.
    pub fn pump<T: Transport>(&mut self, t: &mut T, peer: PeerId, upto: u64) -> u64 {
        let start = self.next;
        while self.next < upto {
            let seq = self.next;
            let outcome = match kind(seq) {
                Kind::Empty => t.send(peer, &header(seq, self.node, 0), Payload::None, seq),
                Kind::Copy => {
                    fill(seq, &mut self.scratch);
                    let h = header(seq, self.node, checksum(&self.scratch));
                    t.send(peer, &h, Payload::Copy(&self.scratch), seq)
                }
                Kind::Page => {
                    let Some(&idx) = self.free.last() else { break };
                    let off = idx as usize * PAGE_SIZE;
                    let page = self
                        .pages
                        .slice_mut(off, PAGE_SIZE)
                        .expect("page in region");
                    fill(seq, page);
                    let h = header(seq, self.node, checksum(page));
                    // SAFETY: the page belongs to this sender and is not written again until
                    // the transport returns its token (`idx`) in SendDone (see `on_event`).
                    let r = unsafe { PageRef::new(page.as_ptr(), PAGE_SIZE) };
                    let o = t.send(peer, &h, Payload::Page(r), u64::from(idx));
                    if o.as_ref().is_ok_and(|o| *o == SendOutcome::Queued) {
                        self.free.pop();
                        self.page_sends += 1;
                    }
                    o
                }
            };
            match outcome.expect("send to a live peer") {
                SendOutcome::Queued => self.next += 1,
                SendOutcome::Backpressure => break,
            }
        }
        self.next - start
    }

    /// Takes a `SendDone` back; returns false for other events.
    pub fn on_event(&mut self, ev: &Event) -> bool {
        if let Event::SendDone { token, .. } = ev {
            assert!(
                !self.free.contains(&(*token as u32)),
                "token {token} returned twice"
            );
            self.free.push(*token as u32);
            self.send_done += 1;
            true
        } else {
            false
        }
    }
}

/// Verifies an incoming test stream.
#[derive(Debug, Default)]
pub struct Checker {
    /// Frames verified.
    pub count: u64,
    /// Payload bytes verified.
    pub payload_bytes: u64,
    scratch: Vec<u8>,
}

impl Checker {
    /// Checks the next frame; panics with a description on any mismatch.
    pub fn check(&mut self, expected_sender: u16, h: &Header, payload: Option<&[u8]>) {
        let seq = self.count;
        assert_eq!(h.txn, seq, "frames out of order or lost");
        if self.scratch.is_empty() {
            self.scratch = vec![0; PAGE_SIZE];
        }
        let sum = match kind(seq) {
            Kind::Empty => 0,
            _ => {
                fill(seq, &mut self.scratch);
                checksum(&self.scratch)
            }
        };
        assert_eq!(
            *h,
            header(seq, expected_sender, sum),
            "header of frame {seq}"
        );
        match payload {
            None => assert_eq!(kind(seq), Kind::Empty, "frame {seq} lost its payload"),
            Some(p) => {
                assert_eq!(checksum(p), h.arg, "payload checksum of frame {seq}");
                self.payload_bytes += p.len() as u64;
            }
        }
        self.count += 1;
    }

    /// Checks a received event (releasing its buffer); returns false for other events.
    pub fn on_event<T: Transport>(&mut self, t: &mut T, sender: u16, ev: Event) -> Option<Event> {
        match ev {
            Event::Received {
                header, payload, ..
            } => {
                self.check(sender, &header, payload.as_ref().map(|b| t.payload(b)));
                if let Some(b) = payload {
                    t.release(b);
                }
                None
            }
            other => Some(other),
        }
    }
}

/// Polls `t` into `evs` (cleared first).
pub fn poll_into<T: Transport>(t: &mut T, evs: &mut Vec<Event>) {
    evs.clear();
    t.poll(|e| evs.push(e)).expect("poll");
}

/// Polls (waiting up to 10 ms at a time) until `pred` accepts an event or `limit` passes;
/// every other event goes to `other`.
pub fn poll_until<T: Transport>(
    t: &mut T,
    limit: Duration,
    mut pred: impl FnMut(&mut T, &Event) -> bool,
    mut other: impl FnMut(&mut T, Event),
) -> bool {
    let deadline = Instant::now() + limit;
    let mut evs = Vec::new();
    while Instant::now() < deadline {
        poll_into(t, &mut evs);
        let mut hit = false;
        for e in evs.drain(..) {
            if !hit && pred(t, &e) {
                hit = true;
            } else {
                other(t, e);
            }
        }
        if hit {
            return true;
        }
        t.wait(Some(Duration::from_millis(10))).expect("wait");
    }
    false
}

/// Releases the buffer of a received event; other events are ignored.
pub fn release_event<T: Transport>(t: &mut T, e: Event) {
    if let Event::Received {
        payload: Some(b), ..
    } = e
    {
        t.release(b);
    }
}

/// Drops a receive buffer handle back into `t`.
pub fn release_opt<T: Transport>(t: &mut T, b: Option<RxBuf>) {
    if let Some(b) = b {
        t.release(b);
    }
}
