//! Sealed connections ([`crate::seal`]) through a transport: frames written by hand with the
//! client's keys arrive intact, the transport's own frames open with them (encrypted on the
//! wire in `Aead` mode, and pages sent in place are still reported done), and one flipped bit
//! on the path takes the connection down as unauthenticated.

use std::io::{Read, Write};
use std::time::Duration;

use super::gen::poll_until;
use super::net::auth_pair_sealed;
use crate::seal::TAG_LEN;
use crate::{
    DownReason, Event, FrameAuth, FrameError, Header, MsgType, PageRef, Payload, SendOutcome,
    Transport, TransportConfig, HEADER_LEN, PAGE_SIZE,
};

const LIMIT: Duration = Duration::from_secs(30);
const CLIENT: u16 = 1;
const SERVER: u16 = 2;
const PEER: u32 = 9;

fn page(seed: u8) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn data_header(txn: u64) -> Header {
    let mut h = Header::new(MsgType::Data, CLIENT);
    h.txn = txn;
    h.page = 77;
    h.set_payload_len(PAGE_SIZE as u32);
    h
}

/// The bytes of one sealed `Data` frame carrying `payload`, as the client would send it.
fn sealed_frame(s: &mut crate::seal::Sealer, h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut hdr = [0u8; HEADER_LEN];
    h.encode(&mut hdr);
    let mut body = payload.to_vec();
    let tag = s.seal_owned(&hdr, &mut body).expect("seal");
    let mut v = hdr.to_vec();
    v.extend_from_slice(&tag);
    v.extend_from_slice(&body);
    v
}

/// Runs the scenario in mode `auth`.
pub fn sealed_frames<T: Transport>(make: impl Fn(&TransportConfig) -> T, auth: FrameAuth) {
    let (mut client, server) = auth_pair_sealed(CLIENT, SERVER, auth);
    assert_eq!(client.keys.auth(), auth);
    let mut sealer = client.keys.sealer().expect("keys").expect("sealed");
    let mut opener = client.keys.opener().expect("keys").expect("sealed");
    let mut t = make(&TransportConfig::default());
    t.add_peer(PEER, server.stream, Some(CLIENT), &server.keys)
        .expect("add_peer");

    // 1. A sealed frame from the client arrives with its page intact.
    let sent = page(1);
    let bytes = sealed_frame(&mut sealer, &data_header(1), &sent);
    client.stream.write_all(&bytes).expect("write frame");
    let mut got = None;
    let hit = poll_until(
        &mut t,
        LIMIT,
        |t, e| match e {
            Event::Received {
                header,
                payload: Some(b),
                ..
            } if header.txn == 1 => {
                got = Some(t.payload(b).to_vec());
                true
            }
            _ => false,
        },
        |_, e| panic!("unexpected event: {e:?}"),
    );
    assert!(
        hit && got.as_deref() == Some(&sent[..]),
        "{auth}: page intact"
    );

    // 2. The transport's own page, sent in place, opens with the client's keys; in `Aead`
    //    mode it is not in the clear on the wire; its SendDone still comes.
    let back = page(2);
    // SAFETY: `back` lives, unchanged, until the end of this function, after the SendDone.
    let pref = unsafe { PageRef::new(back.as_ptr(), PAGE_SIZE) };
    let mut h = Header::new(MsgType::Data, SERVER);
    h.txn = 2;
    h.set_payload_len(PAGE_SIZE as u32);
    let q = t.send(PEER, &h, Payload::Page(pref), 42).expect("send");
    assert_eq!(q, SendOutcome::Queued);
    t.flush().expect("flush");
    let done = poll_until(
        &mut t,
        LIMIT,
        |_, e| matches!(e, Event::SendDone { token: 42, .. }),
        |_, e| panic!("unexpected event: {e:?}"),
    );
    assert!(done, "{auth}: SendDone for a page");
    let mut hdr = [0u8; HEADER_LEN];
    let mut tag = [0u8; TAG_LEN];
    let mut body = vec![0u8; PAGE_SIZE];
    client.stream.read_exact(&mut hdr).expect("read header");
    client.stream.read_exact(&mut tag).expect("read tag");
    client.stream.read_exact(&mut body).expect("read payload");
    assert_eq!(
        body == back,
        auth == FrameAuth::Mac,
        "{auth}: the page is in the clear on the wire exactly in MAC mode"
    );
    assert!(
        opener.open(&hdr, &tag, &mut body),
        "{auth}: the frame opens"
    );
    assert_eq!(body, back, "{auth}: and gives the page back");
    // A header-only frame from the transport opens too.
    let pong = Header::new(MsgType::Pong, SERVER);
    let q = t.send(PEER, &pong, Payload::None, 0).expect("send pong");
    assert_eq!(q, SendOutcome::Queued);
    t.flush().expect("flush");
    client.stream.read_exact(&mut hdr).expect("read header");
    client.stream.read_exact(&mut tag).expect("read tag");
    assert!(
        opener.open(&hdr, &tag, &mut []),
        "{auth}: a header-only frame opens"
    );

    // 3. One bit flipped on the path: the connection goes down, unauthenticated.
    let mut bytes = sealed_frame(&mut sealer, &data_header(3), &page(3));
    bytes[HEADER_LEN + TAG_LEN + 1000] ^= 0x10;
    client.stream.write_all(&bytes).expect("write frame");
    let down = poll_until(
        &mut t,
        LIMIT,
        |_, e| {
            matches!(
                e,
                Event::PeerDown {
                    reason: DownReason::Protocol(FrameError::Unauthenticated),
                    ..
                }
            )
        },
        |_, e| panic!("{auth}: an altered frame was not refused: {e:?}"),
    );
    assert!(down, "{auth}: the connection went down");
    let rejected = t
        .stats()
        .rejected
        .get(FrameError::Unauthenticated.reason_index());
    assert_eq!(rejected, 1, "{auth}: counted as unauthenticated");
    drop(t);
    drop(back);
}
