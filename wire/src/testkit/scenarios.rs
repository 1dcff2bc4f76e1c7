//! The scenarios of the suite, generic over the transport under test.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::child::{run_receiver, RECEIVER_NODE, SPAM_NODE};
use super::gen::{self, poll_into, poll_until, release_event, Checker, Sender};
use super::net::{
    accept_within, auth_pair, hs, raw_header, raw_ping, raw_read_header, raw_sees_close,
    spawn_child, tcp_pair, wait_child, VethPair, DIGEST,
};
use crate::handshake::{self, HandshakeConfig, HandshakeError};
use crate::{
    DownReason, Event, FrameError, FrameKeys, Header, MsgType, Payload, PeerId, SendOutcome,
    Transport, TransportConfig, PAGE_SIZE,
};

/// Messages in the stream scenarios.
pub const MILLION: u64 = 1_000_000;
/// Messages across the veth pair.
pub const VETH_COUNT: u64 = 200_000;

const LONG: Duration = Duration::from_secs(30);

/// Ping from raw socket `raw` (node `node`) to `peer` on `t`, and the `Pong` back.
fn ping_pong<T: Transport>(t: &mut T, raw: &mut TcpStream, peer: PeerId, node: u16, txn: u64) {
    raw_ping(raw, node, txn);
    let got = poll_until(
        t,
        LONG,
        |_, e| {
            matches!(e, Event::Received { peer: p, header, .. }
                if *p == peer && header.ty == MsgType::Ping && header.txn == txn)
        },
        |_, e| panic!("unexpected event during ping-pong with peer {peer}: {e:?}"),
    );
    assert!(got, "ping {txn} from healthy peer {peer} not received");
    let mut pong = Header::new(MsgType::Pong, 0);
    pong.txn = txn;
    assert_eq!(
        t.send(peer, &pong, Payload::None, 0).expect("send pong"),
        SendOutcome::Queued
    );
    t.flush().expect("flush");
    let h = raw_read_header(raw);
    assert_eq!(
        (h.ty, h.txn),
        (MsgType::Pong, txn),
        "pong back to healthy peer {peer}"
    );
}

/// 10^6 frames (header-only, copied and in-place pages) between two transports driven by one
/// thread, every header, order and payload checksum verified, every page returned.
pub fn million_in_process<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    stream_in_process(make, MILLION, false);
}

/// A stream through a socket with a small kernel send buffer, so sends are cut short and
/// frames split across receives all the time. (Only the send side is shrunk: a tiny receive
/// window would make TCP wait for delayed window updates, testing TCP rather than us.)
pub fn tiny_socket_buffers<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    // With a send buffer this small, each write fills it with one 64 KiB loopback segment and
    // the sender then waits for the receiver's delayed ACK (up to 40 ms): keep the count
    // modest. Every one of those writes is a short send.
    stream_in_process(make, 4_000, true);
}

fn shrink_buffers(s: &TcpStream) {
    let v: libc::c_int = 16 * 1024;
    // SAFETY: setsockopt reads an int from a valid pointer with the matching length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// `count` frames between two transports driven by one thread.
fn stream_in_process<T: Transport>(make: impl Fn(&TransportConfig) -> T, count: u64, tiny: bool) {
    let cfg = TransportConfig::default();
    let (client, server) = auth_pair(1, 2);
    if tiny {
        shrink_buffers(&client.stream);
    }
    let (mut a, mut b) = (make(&cfg), make(&cfg));
    a.add_peer(20, client.stream, Some(2), &client.keys)
        .expect("add_peer a");
    b.add_peer(10, server.stream, Some(1), &server.keys)
        .expect("add_peer b");
    let mut s = Sender::new(1, 64);
    let mut c = Checker::default();
    let mut evs = Vec::with_capacity(cfg.poll_budget);
    let deadline = Instant::now() + Duration::from_secs(600);
    while c.count < count || !s.all_pages_back() {
        assert!(
            Instant::now() < deadline,
            "stuck: sent {} received {}",
            s.next,
            c.count
        );
        let queued = s.pump(&mut a, 20, count);
        a.flush().expect("flush");
        poll_into(&mut a, &mut evs);
        let mut progress = queued > 0 || !evs.is_empty();
        for e in evs.drain(..) {
            assert!(s.on_event(&e), "sender side saw {e:?}");
        }
        poll_into(&mut b, &mut evs);
        progress |= !evs.is_empty();
        for e in evs.drain(..) {
            if let Some(other) = c.on_event(&mut b, 1, e) {
                panic!("receiver side saw {other:?}");
            }
        }
        if !progress {
            if c.count < s.next {
                b.wait(Some(Duration::from_millis(2))).expect("wait");
            } else {
                a.wait(Some(Duration::from_millis(2))).expect("wait");
            }
        }
    }
    assert_eq!(c.count, count);
    assert_eq!(
        c.payload_bytes,
        count / 2 * PAGE_SIZE as u64,
        "every page payload arrived"
    );
    assert_eq!(s.page_sends, count / 4);
    assert_eq!(
        s.send_done,
        count / 4,
        "every in-place page came back exactly once"
    );
    let rx: u64 = b
        .stats()
        .per_slot
        .iter()
        .map(|p| p.rx_frames.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(rx, count, "per-connection receive counter");
    assert_eq!(b.stats().rejected.total(), 0);
}

/// 10^6 frames from a child process (the test binary itself) over loopback.
pub fn million_two_processes<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let mut child = spawn_child("stream", &addr, MILLION, &[]);
    let a = accept_within(&l, &hs(RECEIVER_NODE), Some(&mut child), LONG);
    assert_eq!(a.peer_node, super::child::STREAM_NODE);
    let mut t = make(&TransportConfig::default());
    t.add_peer(5, a.stream, Some(a.peer_node), &a.keys)
        .expect("add_peer");
    let c = run_receiver(&mut t, 5, a.peer_node, MILLION);
    assert_eq!(c.payload_bytes, MILLION / 2 * PAGE_SIZE as u64);
    assert!(
        wait_child(&mut child, LONG),
        "child sender failed (see its output above)"
    );
}

/// Every kind of malformed frame, through a real socket: the right error, that connection
/// closed and counted, and a healthy connection on the same transport unaffected.
pub fn malformed_frames<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    let mut t = make(&TransportConfig::default());
    let (mut healthy, ts) = tcp_pair();
    t.add_peer(1, ts, Some(5), &FrameKeys::none())
        .expect("add healthy");
    ping_pong(&mut t, &mut healthy, 1, 5, 1);

    let ping = raw_header(&Header::new(MsgType::Ping, 5));
    let with = |f: &dyn Fn(&mut Header)| {
        let mut h = Header::new(MsgType::ReadReq, 5);
        f(&mut h);
        raw_header(&h).to_vec()
    };
    let mut bad_magic = ping;
    bad_magic[0] ^= 0xff;
    let mut bad_version = ping;
    bad_version[4] = 9;
    let mut bad_type = ping;
    bad_type[5] = 99;
    let mut split = ping.to_vec();
    split.extend_from_slice(&bad_magic);
    let magic_err = FrameError::BadMagic(u32::from_le_bytes([
        bad_magic[0],
        bad_magic[1],
        bad_magic[2],
        bad_magic[3],
    ]));
    let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
        ("bad magic", bad_magic.to_vec(), magic_err),
        (
            "bad version",
            bad_version.to_vec(),
            FrameError::BadVersion(9),
        ),
        (
            "unknown type",
            bad_type.to_vec(),
            FrameError::UnknownType(99),
        ),
        (
            "payload length not allowed",
            with(&|h| {
                h.ty = MsgType::Data;
                h.payload_len = 100;
            }),
            FrameError::BadPayloadLen {
                ty: MsgType::Data,
                len: 100,
            },
        ),
        (
            "oversized",
            with(&|h| h.payload_len = 1 << 20),
            FrameError::Oversized(1 << 20),
        ),
        (
            "undefined flags",
            with(&|h| h.flags = 0x8000),
            FrameError::BadFlags {
                ty: MsgType::ReadReq,
                flags: 0x8000,
            },
        ),
        (
            "node id out of range",
            with(&|h| h.sender = 300),
            FrameError::BadNodeId(300),
        ),
        (
            "sender is not the authenticated node",
            with(&|h| h.sender = 6),
            FrameError::WrongSender {
                expected: 5,
                got: 6,
            },
        ),
        (
            "garbage after a valid frame, split across writes",
            split,
            magic_err,
        ),
    ];
    for (i, (name, bytes, expected)) in cases.into_iter().enumerate() {
        let (mut bad, ts) = tcp_pair();
        let id = 100 + i as PeerId;
        t.add_peer(id, ts, Some(5), &FrameKeys::none())
            .expect("add bad peer");
        let before = t.stats().rejected.of(&expected);
        let mid = bytes.len() - 13;
        bad.write_all(&bytes[..mid]).expect("write");
        let mut evs = Vec::new();
        poll_into(&mut t, &mut evs);
        let mut valid_frames = evs
            .iter()
            .filter(|e| matches!(e, Event::Received { .. }))
            .count();
        for e in evs.drain(..) {
            release_event(&mut t, e);
        }
        bad.write_all(&bytes[mid..]).expect("write");
        let mut reason = None;
        let down = poll_until(
            &mut t,
            LONG,
            |_, e| match e {
                Event::PeerDown { peer, reason: r } if *peer == id => {
                    reason = Some(*r);
                    true
                }
                _ => false,
            },
            |t, e| {
                match &e {
                    Event::Received { peer, .. } if *peer == id => valid_frames += 1,
                    other => panic!("{name}: unexpected {other:?}"),
                }
                release_event(t, e);
            },
        );
        assert!(down, "{name}: connection not closed");
        assert_eq!(reason, Some(DownReason::Protocol(expected)), "{name}");
        assert_eq!(
            valid_frames,
            usize::from(bytes.len() > ping.len()),
            "{name}: valid prefix"
        );
        assert_eq!(
            t.stats().rejected.of(&expected),
            before + 1,
            "{name}: counted"
        );
        assert!(raw_sees_close(&mut bad, LONG), "{name}: socket closed");
        ping_pong(&mut t, &mut healthy, 1, 5, 10 + i as u64);
    }
    assert_eq!(t.stats().rejected.total(), 9);
}

/// A child streaming to us is SIGKILLed: its peer goes down, frames up to then were intact,
/// and another connection keeps working.
pub fn peer_killed<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let mut child = spawn_child("spam", &addr, 0, &[]);
    let a = accept_within(&l, &hs(RECEIVER_NODE), Some(&mut child), LONG);
    let mut t = make(&TransportConfig::default());
    t.add_peer(7, a.stream, Some(SPAM_NODE), &a.keys)
        .expect("add_peer");
    let (mut healthy, ts) = tcp_pair();
    t.add_peer(1, ts, Some(4), &FrameKeys::none())
        .expect("add healthy");
    let mut c = Checker::default();
    let mut evs = Vec::new();
    let deadline = Instant::now() + LONG;
    while c.count < 5000 {
        assert!(
            Instant::now() < deadline,
            "child stream too slow ({} frames)",
            c.count
        );
        poll_into(&mut t, &mut evs);
        if evs.is_empty() {
            t.wait(Some(Duration::from_millis(10))).expect("wait");
        }
        for e in evs.drain(..) {
            if let Some(o) = c.on_event(&mut t, SPAM_NODE, e) {
                panic!("unexpected {o:?}");
            }
        }
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    let mut reason = None;
    let down = poll_until(
        &mut t,
        LONG,
        |_, e| match e {
            Event::PeerDown { peer: 7, reason: r } => {
                reason = Some(*r);
                true
            }
            _ => false,
        },
        |t, e| {
            if let Some(o) = c.on_event(t, SPAM_NODE, e) {
                panic!("unexpected {o:?}");
            }
        },
    );
    assert!(down, "killed peer not reported");
    assert!(
        matches!(
            reason,
            Some(DownReason::Closed | DownReason::Io(libc::ECONNRESET))
        ),
        "reason {reason:?}"
    );
    assert_eq!(
        t.stats()
            .peers_down
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(matches!(
        t.send(7, &Header::new(MsgType::Ping, 0), Payload::None, 0),
        Err(crate::TransportError::UnknownPeer(7))
    ));
    ping_pong(&mut t, &mut healthy, 1, 4, 99);
}

/// A peer with the wrong secret is refused on both sides and counted; an authenticated
/// connection on the transport keeps working.
pub fn wrong_secret<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    let (mut client, server) = auth_pair(1, 2);
    let mut t = make(&TransportConfig::default());
    // The test's side writes raw frames on its socket, so this connection is not sealed.
    t.add_peer(1, server.stream, Some(1), &FrameKeys::none())
        .expect("add_peer");
    ping_pong(&mut t, &mut client.stream, 1, 1, 1);

    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let scfg = hs(2);
    let attacker = std::thread::spawn(move || {
        let bad = HandshakeConfig::new(3, b"not the cluster secret at all", DIGEST).expect("cfg");
        handshake::connect(addr, &bad, 2, 0)
    });
    let r = handshake::accept(&l, &scfg);
    assert!(
        matches!(r, Err(HandshakeError::WrongSecret)),
        "server side: {r:?}"
    );
    let r = attacker.join().expect("attacker thread");
    assert!(
        matches!(r, Err(HandshakeError::WrongSecret)),
        "client side: {r:?}"
    );
    assert_eq!(
        scfg.stats
            .wrong_secret
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    ping_pong(&mut t, &mut client.stream, 1, 1, 2);
}

/// `send` answers backpressure at the configured limits (queue depth, copy buffers), queues
/// nothing then, and accepts again once the queue drains.
pub fn send_backpressure<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    let cfg = TransportConfig {
        tx_depth: 8,
        tx_copy_slots: 2,
        ..TransportConfig::default()
    };
    let (a, b) = tcp_pair();
    let mut t = make(&cfg);
    let mut r = make(&TransportConfig::default());
    t.add_peer(1, a, None, &FrameKeys::none()).expect("add");
    r.add_peer(1, b, None, &FrameKeys::none()).expect("add");
    let page = vec![0xabu8; PAGE_SIZE];
    let mut data = Header::new(MsgType::Data, 1);
    data.set_payload_len(PAGE_SIZE as u32);
    let send = |t: &mut T, h: &Header, p: Payload<'_>| t.send(1, h, p, 0).expect("send");
    assert_eq!(
        send(&mut t, &data, Payload::Copy(&page)),
        SendOutcome::Queued
    );
    assert_eq!(
        send(&mut t, &data, Payload::Copy(&page)),
        SendOutcome::Queued
    );
    assert_eq!(
        send(&mut t, &data, Payload::Copy(&page)),
        SendOutcome::Backpressure,
        "copy slots"
    );
    let mut ping = Header::new(MsgType::Ping, 1);
    for i in 0..6 {
        ping.txn = i;
        assert_eq!(send(&mut t, &ping, Payload::None), SendOutcome::Queued);
    }
    assert_eq!(
        send(&mut t, &ping, Payload::None),
        SendOutcome::Backpressure,
        "queue depth"
    );
    assert_eq!(
        t.stats()
            .backpressure
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert!(matches!(
        t.send(1, &data, Payload::Copy(&page[..10]), 0),
        Err(crate::TransportError::PayloadMismatch { .. })
    ));
    t.flush().expect("flush");
    let mut got = 0;
    let mut evs = Vec::new();
    let deadline = Instant::now() + LONG;
    while got < 8 {
        assert!(Instant::now() < deadline, "only {got} of 8 frames arrived");
        poll_into(&mut t, &mut evs);
        evs.clear();
        poll_into(&mut r, &mut evs);
        if evs.is_empty() {
            r.wait(Some(Duration::from_millis(10))).expect("wait");
        }
        for e in evs.drain(..) {
            if let Event::Received {
                header, payload, ..
            } = &e
            {
                if let Some(b) = payload {
                    assert!(r.payload(b).iter().all(|&x| x == 0xab));
                }
                assert_eq!(
                    header.ty,
                    if got < 2 {
                        MsgType::Data
                    } else {
                        MsgType::Ping
                    }
                );
                got += 1;
            }
            release_event(&mut r, e);
        }
    }
    // The queue drained: sends are accepted again (copy slots come back after a poll).
    let ok = (0..1000).any(|_| {
        poll_into(&mut t, &mut evs);
        t.send(1, &data, Payload::Copy(&page), 0).expect("send") == SendOutcome::Queued
    });
    assert!(ok, "sends accepted again after the queue drained");
}

/// A receiver holding all its receive slots gets no further payload frames from that peer
/// until it releases one; nothing is lost or reordered.
pub fn receive_backpressure<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    let (a, b) = tcp_pair();
    let mut t = make(&TransportConfig::default());
    let mut r = make(&TransportConfig {
        rx_slots: 2,
        ..TransportConfig::default()
    });
    t.add_peer(1, a, None, &FrameKeys::none()).expect("add");
    r.add_peer(1, b, None, &FrameKeys::none()).expect("add");
    let mut buf = vec![0u8; PAGE_SIZE];
    for seq in 0..6u64 {
        let mut h = Header::new(MsgType::Data, 1);
        h.set_payload_len(PAGE_SIZE as u32);
        h.txn = seq;
        gen::fill(seq, &mut buf);
        h.arg = gen::checksum(&buf);
        assert_eq!(
            t.send(1, &h, Payload::Copy(&buf), seq).expect("send"),
            SendOutcome::Queued
        );
    }
    t.flush().expect("flush");
    let mut held = Vec::new();
    let mut next = 0u64;
    let take = |r: &mut T, held: &mut Vec<_>, next: &mut u64, until: usize, limit: Duration| {
        let deadline = Instant::now() + limit;
        let mut evs = Vec::new();
        while held.len() < until && Instant::now() < deadline {
            poll_into(r, &mut evs);
            if evs.is_empty() {
                r.wait(Some(Duration::from_millis(10))).expect("wait");
            }
            for e in evs.drain(..) {
                let Event::Received {
                    header,
                    payload: Some(b),
                    ..
                } = e
                else {
                    panic!("unexpected {e:?}")
                };
                assert_eq!(header.txn, *next, "in order");
                assert_eq!(gen::checksum(r.payload(&b)), header.arg, "payload intact");
                *next += 1;
                held.push(b);
            }
        }
    };
    take(&mut r, &mut held, &mut next, 2, LONG);
    assert_eq!(held.len(), 2);
    // Both slots are held: more polling delivers nothing more from this peer.
    take(&mut r, &mut held, &mut next, 3, Duration::from_millis(200));
    assert_eq!(
        held.len(),
        2,
        "frames delivered beyond the receive slot limit"
    );
    r.release(held.remove(0));
    take(&mut r, &mut held, &mut next, 2, LONG);
    assert_eq!((held.len(), next), (2, 3), "release resumes the peer");
    while next < 6 {
        for b in held.drain(..) {
            r.release(b);
        }
        let want = (6 - next).min(2) as usize;
        take(&mut r, &mut held, &mut next, want, LONG);
        assert_eq!(held.len(), want, "frames after releasing");
    }
    assert_eq!(next, 6);
}

/// `wait` wakes for a watched fd becoming readable and for network traffic.
pub fn wait_wakes<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    let mut t = make(&TransportConfig::default());
    let (mut w, rd) = UnixStream::pair().expect("socketpair");
    rd.set_nonblocking(true).expect("nonblocking");
    t.watch_fd(rd.as_raw_fd(), 77).expect("watch_fd");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        w.write_all(b"x").expect("write");
        w
    });
    let mut evs = Vec::new();
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "FdReady never delivered");
        t.wait(Some(Duration::from_secs(5))).expect("wait");
        poll_into(&mut t, &mut evs);
        if evs.contains(&Event::FdReady { token: 77 }) {
            break;
        }
        assert!(evs.is_empty(), "unexpected {evs:?}");
    }
    let _w = writer.join().expect("writer");

    let (mut raw, ts) = tcp_pair();
    t.add_peer(3, ts, None, &FrameKeys::none()).expect("add");
    let pinger = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        raw_ping(&mut raw, 9, 5);
        raw
    });
    loop {
        assert!(Instant::now() < deadline, "traffic never delivered");
        t.wait(Some(Duration::from_secs(5))).expect("wait");
        poll_into(&mut t, &mut evs);
        if evs
            .iter()
            .any(|e| matches!(e, Event::Received { peer: 3, header, .. } if header.txn == 5))
        {
            break;
        }
    }
    drop(pinger.join().expect("pinger"));
}

/// `close_peer` reports `PeerDown(Local)`, closes the socket, and frees the id for reuse.
pub fn close_and_reuse<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    let mut t = make(&TransportConfig::default());
    let (mut raw, ts) = tcp_pair();
    t.add_peer(1, ts, None, &FrameKeys::none()).expect("add");
    let (_raw2, ts2) = tcp_pair();
    assert!(matches!(
        t.add_peer(1, ts2, None, &FrameKeys::none()),
        Err(crate::TransportError::PeerExists(1))
    ));
    t.close_peer(1).expect("close");
    assert!(matches!(
        t.send(1, &Header::new(MsgType::Ping, 0), Payload::None, 0),
        Err(crate::TransportError::PeerClosing(1))
    ));
    let down = poll_until(
        &mut t,
        LONG,
        |_, e| {
            *e == Event::PeerDown {
                peer: 1,
                reason: DownReason::Local,
            }
        },
        |_, e| panic!("unexpected {e:?}"),
    );
    assert!(down);
    assert!(raw_sees_close(&mut raw, LONG));
    let (mut raw, ts) = tcp_pair();
    t.add_peer(1, ts, None, &FrameKeys::none())
        .expect("id reusable after PeerDown");
    ping_pong(&mut t, &mut raw, 1, 2, 3);
}

/// A stream across a veth pair between two network namespaces created for the test, one
/// process in each. Skips (saying so) when namespaces cannot be created.
pub fn veth<T: Transport>(_make: impl Fn(&TransportConfig) -> T) {
    let v = match VethPair::create("v") {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "SKIPPED veth_between_network_namespaces: cannot create network namespaces: {e}"
            );
            return;
        }
    };
    let addr = format!("{}:7411", v.addr_a);
    let mut server = spawn_child(
        "serve",
        &addr,
        VETH_COUNT,
        &["ip", "netns", "exec", &v.ns_a],
    );
    let mut client = spawn_child(
        "stream",
        &addr,
        VETH_COUNT,
        &["ip", "netns", "exec", &v.ns_b],
    );
    let limit = Duration::from_secs(300);
    let client_ok = wait_child(&mut client, limit);
    let server_ok = wait_child(&mut server, limit);
    drop(v);
    assert!(
        client_ok && server_ok,
        "veth stream failed: client ok {client_ok}, server ok {server_ok}"
    );
}
