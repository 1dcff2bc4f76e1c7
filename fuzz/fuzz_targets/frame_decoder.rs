//! Fuzzes the frame header decoder, the frame parser and the protocol codec behind them:
//! arbitrary bytes, split at input-chosen points, must only ever produce frames or a typed
//! error, never a panic; every accepted header must re-encode to the bytes it came from, and
//! every header the codec accepts as a protocol message must re-encode to the same header.

#![no_main]

use engine::shard::codec;
use libfuzzer_sys::fuzz_target;
use wire::{FrameParser, Header, Parsed, RxSlots, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some(first) = data.get(..HEADER_LEN) {
        let mut b = [0u8; HEADER_LEN];
        b.copy_from_slice(first);
        if let Ok(h) = Header::decode(&b) {
            let mut again = [0u8; HEADER_LEN];
            h.encode(&mut again);
            assert_eq!(again, b, "decode/encode round trip");
            if let Ok(msg) = codec::decode(&h) {
                let sender = coherence::NodeId::new(h.sender).expect("decoded sender is valid");
                let mut back = codec::encode(&msg, sender);
                back.payload_len = h.payload_len;
                assert_eq!(back, h, "codec round trip of {msg:?}");
            }
        }
    }
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let chunk = 1 + usize::from(ctl) * 17;
    let expected = if ctl & 1 == 0 {
        None
    } else {
        Some(u16::from(ctl >> 1) % 64)
    };
    let mut parser = FrameParser::new(expected);
    let Ok(mut slots) = RxSlots::new(1, 2) else {
        return;
    };
    for piece in stream.chunks(chunk) {
        let mut pos = 0;
        loop {
            match parser.next(piece, &mut pos, &mut slots, 0) {
                Ok(Parsed::Frame(h, buf)) => {
                    assert!(h.validate().is_ok(), "parser delivered an invalid header");
                    if let Some(b) = buf {
                        assert_eq!(b.len(), h.payload_len as usize);
                        slots.release(b);
                    }
                }
                Ok(Parsed::NeedMore) => {
                    assert_eq!(pos, piece.len());
                    break;
                }
                Ok(Parsed::NoSlot) => panic!("slots are released after every frame"),
                Err(_) => return,
            }
        }
    }
});
