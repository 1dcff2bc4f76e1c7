//! Property tests of the header codec and the frame parser: round trips, decode never panics
//! on arbitrary bytes, and any split of a valid stream parses to the same frames.

use proptest::prelude::*;
use wire::{FrameParser, Header, MsgType, Parsed, RxSlots, HEADER_LEN, PAGE_SIZE};

fn any_valid_header() -> impl Strategy<Value = Header> {
    (
        prop::sample::select(MsgType::ALL.to_vec()),
        any::<bool>(),
        any::<bool>(),
        0u16..64,
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(ty, flag, page, sender, aux, txn, pg, arg)| {
            let len = match ty.payload_rule() {
                wire::PayloadRule::Empty => 0,
                wire::PayloadRule::Page => PAGE_SIZE as u32,
                wire::PayloadRule::EmptyOrPage => {
                    if page {
                        PAGE_SIZE as u32
                    } else {
                        0
                    }
                }
            };
            let flags = if flag {
                ty.allowed_flags() & !wire::flags::DATA
            } else {
                0
            };
            let mut h = Header {
                ty,
                flags,
                sender,
                aux,
                payload_len: 0,
                txn,
                page: pg,
                arg,
            };
            h.set_payload_len(len);
            h
        })
}

proptest! {
    #[test]
    fn valid_headers_round_trip(h in any_valid_header()) {
        let mut b = [0u8; HEADER_LEN];
        h.encode(&mut b);
        prop_assert_eq!(Header::decode(&b), Ok(h));
    }

    #[test]
    fn decode_never_panics(mut b in prop::array::uniform32(any::<u8>()).prop_flat_map(|a| (Just(a), prop::array::uniform8(any::<u8>())))
        .prop_map(|(a, t)| { let mut b = [0u8; HEADER_LEN]; b[..32].copy_from_slice(&a); b[32..].copy_from_slice(&t); b }),
        framed in any::<bool>())
    {
        if framed {
            // Mostly-plausible headers reach the deeper checks.
            b[..4].copy_from_slice(b"SSID");
            b[4] = 1;
            b[5] %= 40;
            b[8] %= 80;
            b[9] = 0;
        }
        if let Ok(h) = Header::decode(&b) {
            // Anything accepted re-encodes to the same bytes.
            let mut again = [0u8; HEADER_LEN];
            h.encode(&mut again);
            prop_assert_eq!(again, b);
        }
    }

    #[test]
    fn parser_never_panics_on_garbage(
        blocks in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 1..5000)), 0..12),
        chunk in 1usize..5000,
    ) {
        // Garbage built from plausible headers (right magic and version, random rest) and
        // random runs, so the parser gets past the magic check often.
        let mut data = Vec::new();
        for (framed, mut bytes) in blocks {
            if framed && bytes.len() >= 6 {
                bytes[..4].copy_from_slice(b"SSID");
                bytes[4] = 1;
                bytes[5] %= 40;
            }
            data.extend_from_slice(&bytes);
        }
        let mut p = FrameParser::new(None);
        let mut slots = RxSlots::new(1, 2).unwrap();
        'outer: for piece in data.chunks(chunk) {
            let mut pos = 0;
            loop {
                match p.next(piece, &mut pos, &mut slots, 0) {
                    Ok(Parsed::Frame(_, Some(b))) => { slots.release(b); }
                    Ok(Parsed::Frame(_, None)) => {}
                    Ok(Parsed::NeedMore) => { prop_assert_eq!(pos, piece.len()); break }
                    Ok(Parsed::NoSlot) => prop_assert!(false, "slots are released at once"),
                    Err(_) => break 'outer,
                }
            }
        }
    }

    #[test]
    fn any_split_parses_the_same_frames(hs in prop::collection::vec(any_valid_header(), 1..12), cuts in prop::collection::vec(1usize..9000, 1..8)) {
        let mut stream = Vec::new();
        for (i, h) in hs.iter().enumerate() {
            let mut b = [0u8; HEADER_LEN];
            h.encode(&mut b);
            stream.extend_from_slice(&b);
            stream.extend(std::iter::repeat_n(i as u8, h.payload_len as usize));
        }
        let mut p = FrameParser::new(None);
        let mut slots = RxSlots::new(1, 1).unwrap();
        let mut got = Vec::new();
        let mut at = 0;
        let mut ci = 0;
        while at < stream.len() {
            let end = (at + cuts[ci % cuts.len()]).min(stream.len());
            ci += 1;
            let piece = &stream[at..end];
            let mut pos = 0;
            loop {
                match p.next(piece, &mut pos, &mut slots, 0).unwrap() {
                    Parsed::Frame(h, b) => {
                        if let Some(b) = b {
                            let i = got.len() as u8;
                            prop_assert!(slots.bytes(&b).iter().all(|&x| x == i));
                            slots.release(b);
                        }
                        got.push(h);
                    }
                    Parsed::NeedMore => break,
                    Parsed::NoSlot => prop_assert!(false, "slot released after each frame"),
                }
            }
            at = end;
        }
        prop_assert_eq!(got, hs);
    }
}
