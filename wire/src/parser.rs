//! Per-connection frame reassembly shared by every transport: turns a byte stream delivered in
//! arbitrary pieces into validated headers, copying page payloads into receive slots.

use crate::header::{FrameError, Header, HEADER_LEN};
use crate::seal::{Opener, TAG_LEN};
use crate::slots::{RxBuf, RxSlots};

/// What [`FrameParser::next`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete frame (header, and the payload's slot if it has one).
    Frame(Header, Option<RxBuf>),
    /// Every input byte was consumed without completing a frame.
    NeedMore,
    /// A header announcing a payload was decoded but the owner has no free receive slot:
    /// stop reading this peer until a slot is released, then call `next` again.
    NoSlot,
}

#[derive(Debug)]
enum State {
    /// Collecting header bytes (`have` of them in `hdr`).
    Header { have: usize },
    /// Header decoded, waiting for a slot.
    NeedSlot(Header),
    /// Copying payload bytes (`have` of them) into `buf`.
    Payload {
        header: Header,
        buf: RxBuf,
        have: usize,
    },
}

/// Reassembles frames for one connection. Bounded: holds at most one header and one slot.
///
/// On a sealed connection ([`FrameParser::sealed`]) each header is followed by its tag, and a
/// frame is returned only after the tag verified (in `Aead` mode the payload is decrypted in
/// its slot first); a frame that does not verify is [`FrameError::Unauthenticated`].
#[derive(Debug)]
pub struct FrameParser {
    /// The header being collected, then its tag.
    hdr: [u8; HEADER_LEN + TAG_LEN],
    /// Header plus tag bytes per frame.
    head_len: usize,
    state: State,
    expected_sender: Option<u16>,
    opener: Option<Opener>,
}

impl FrameParser {
    /// A parser for a connection whose frames must come from `expected_sender` (if given).
    pub fn new(expected_sender: Option<u16>) -> FrameParser {
        FrameParser::sealed(expected_sender, None)
    }

    /// A parser whose frames are checked (and decrypted) by `opener` when given.
    pub fn sealed(expected_sender: Option<u16>, opener: Option<Opener>) -> FrameParser {
        FrameParser {
            hdr: [0; HEADER_LEN + TAG_LEN],
            head_len: HEADER_LEN + opener.as_ref().map_or(0, |o| o.auth().tag_len()),
            state: State::Header { have: 0 },
            expected_sender,
            opener,
        }
    }

    /// Whether the parser is between frames (no partial header or payload pending).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header { have: 0 })
    }

    /// Gives the slot of a partially received payload back (call when dropping the connection).
    pub fn reset(&mut self, slots: &mut RxSlots) {
        if let State::Payload { buf, .. } =
            std::mem::replace(&mut self.state, State::Header { have: 0 })
        {
            slots.release(buf);
        }
    }

    fn check(&self, h: Header) -> Result<Header, FrameError> {
        match self.expected_sender {
            Some(e) if e != h.sender => Err(FrameError::WrongSender {
                expected: e,
                got: h.sender,
            }),
            _ => Ok(h),
        }
    }

    /// Verifies the tag of the frame whose header is in `self.hdr` and whose payload is
    /// `payload` (decrypting it in `Aead` mode). Nothing to do on an unsealed connection.
    fn open(&mut self, payload: &mut [u8]) -> Result<(), FrameError> {
        let Some(o) = self.opener.as_mut() else {
            return Ok(());
        };
        let mut h = [0u8; HEADER_LEN];
        let mut t = [0u8; TAG_LEN];
        h.copy_from_slice(&self.hdr[..HEADER_LEN]);
        t.copy_from_slice(&self.hdr[HEADER_LEN..HEADER_LEN + TAG_LEN]);
        if o.open(&h, &t, payload) {
            Ok(())
        } else {
            Err(FrameError::Unauthenticated)
        }
    }

    /// Parses from `input[*pos..]`, advancing `*pos` past the bytes used, until one frame is
    /// complete, the input runs out, or a payload needs a slot that `owner` cannot get. A
    /// returned error is final for the connection.
    pub fn next(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        slots: &mut RxSlots,
        owner: usize,
    ) -> Result<Parsed, FrameError> {
        loop {
            let rest = input.get(*pos..).unwrap_or(&[]);
            match &mut self.state {
                State::Header { have } => {
                    let n = rest.len().min(self.head_len - *have);
                    self.hdr[*have..*have + n].copy_from_slice(&rest[..n]);
                    *have += n;
                    *pos += n;
                    if *have < self.head_len {
                        return Ok(Parsed::NeedMore);
                    }
                    *have = 0;
                    let mut b = [0u8; HEADER_LEN];
                    b.copy_from_slice(&self.hdr[..HEADER_LEN]);
                    let header = self.check(Header::decode(&b)?)?;
                    if header.payload_len == 0 {
                        self.open(&mut [])?;
                        return Ok(Parsed::Frame(header, None));
                    }
                    self.state = State::NeedSlot(header);
                }
                State::NeedSlot(header) => {
                    let header = *header;
                    match slots.alloc(owner, header.payload_len as usize) {
                        Some(buf) => {
                            self.state = State::Payload {
                                header,
                                buf,
                                have: 0,
                            }
                        }
                        None => return Ok(Parsed::NoSlot),
                    }
                }
                State::Payload { header, buf, have } => {
                    let want = header.payload_len as usize - *have;
                    let n = rest.len().min(want);
                    slots.bytes_mut(buf)[*have..*have + n].copy_from_slice(&rest[..n]);
                    *have += n;
                    *pos += n;
                    if n < want {
                        return Ok(Parsed::NeedMore);
                    }
                    // The state is `Payload` (matched above); take it by value.
                    if let State::Payload { header, buf, .. } =
                        std::mem::replace(&mut self.state, State::Header { have: 0 })
                    {
                        if let Err(e) = self.open(slots.bytes_mut(&buf)) {
                            slots.release(buf);
                            return Err(e);
                        }
                        return Ok(Parsed::Frame(header, Some(buf)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{MsgType, PAGE_SIZE};

    fn frames() -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..5u64 {
            let mut h = Header::new(
                if i % 2 == 0 {
                    MsgType::Data
                } else {
                    MsgType::Ping
                },
                3,
            );
            h.txn = i;
            if h.ty == MsgType::Data {
                h.set_payload_len(PAGE_SIZE as u32);
            }
            let mut b = [0u8; HEADER_LEN];
            h.encode(&mut b);
            v.extend_from_slice(&b);
            if h.payload_len > 0 {
                v.extend((0..PAGE_SIZE).map(|j| (j as u64 ^ i) as u8));
            }
        }
        v
    }

    #[test]
    fn reassembles_across_every_split_size() {
        let stream = frames();
        for chunk in [1, 7, 39, 40, 41, 4095, 4136, 100_000] {
            let mut p = FrameParser::new(Some(3));
            let mut slots = RxSlots::new(1, 4).unwrap();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                let mut pos = 0;
                loop {
                    match p.next(piece, &mut pos, &mut slots, 0).unwrap() {
                        Parsed::Frame(h, buf) => {
                            if let Some(b) = buf {
                                let ok = slots
                                    .bytes(&b)
                                    .iter()
                                    .enumerate()
                                    .all(|(j, &x)| x == (j as u64 ^ h.txn) as u8);
                                assert!(ok, "payload of txn {} intact (chunk {chunk})", h.txn);
                                slots.release(b);
                            }
                            got.push(h.txn);
                        }
                        Parsed::NeedMore => break,
                        Parsed::NoSlot => panic!("slots are released as frames complete"),
                    }
                }
                assert_eq!(pos, piece.len());
            }
            assert_eq!(got, vec![0, 1, 2, 3, 4], "chunk {chunk}");
            assert!(p.is_idle());
        }
    }

    #[test]
    fn no_slot_stalls_then_resumes() {
        let stream = frames();
        let mut p = FrameParser::new(None);
        let mut slots = RxSlots::new(1, 1).unwrap();
        let mut pos = 0;
        let Parsed::Frame(_, Some(first)) = p.next(&stream, &mut pos, &mut slots, 0).unwrap()
        else {
            panic!("first frame carries a page")
        };
        assert!(matches!(
            p.next(&stream, &mut pos, &mut slots, 0),
            Ok(Parsed::Frame(_, None))
        ));
        let before = pos;
        assert_eq!(p.next(&stream, &mut pos, &mut slots, 0), Ok(Parsed::NoSlot));
        assert_eq!(p.next(&stream, &mut pos, &mut slots, 0), Ok(Parsed::NoSlot));
        assert_eq!(
            pos,
            before + HEADER_LEN,
            "only the header was consumed while stalled"
        );
        slots.release(first);
        assert!(matches!(
            p.next(&stream, &mut pos, &mut slots, 0),
            Ok(Parsed::Frame(_, Some(_)))
        ));
    }

    #[test]
    fn wrong_sender_is_rejected() {
        let stream = frames();
        let mut p = FrameParser::new(Some(4));
        let mut slots = RxSlots::new(1, 1).unwrap();
        let mut pos = 0;
        assert_eq!(
            p.next(&stream, &mut pos, &mut slots, 0),
            Err(FrameError::WrongSender {
                expected: 4,
                got: 3
            })
        );
    }
}
