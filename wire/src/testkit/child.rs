//! Child-process roles of the suite, selected by `SSI_TESTKIT_ROLE`: `stream` (dial, send a
//! checked stream, wait for the receiver's acknowledgement), `spam` (dial and send until
//! killed), `serve` (bind, accept, receive and verify a stream, acknowledge).

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use super::gen::{poll_into, poll_until, Checker, Sender};
use super::net::{accept_within, connect_retry, hs, ADDR, COUNT, ROLE};
use crate::{
    DownReason, Event, Header, MsgType, Payload, PeerId, SendOutcome, Transport, TransportConfig,
};

/// Node id of the receiving side in multi-process scenarios.
pub const RECEIVER_NODE: u16 = 1;
/// Node id of the streaming side.
pub const STREAM_NODE: u16 = 2;
/// Node id of the spamming side (killed mid-stream).
pub const SPAM_NODE: u16 = 3;

/// Entry point of `testkit_child`: runs the role named in the environment, or nothing.
pub fn child_main<T: Transport>(make: impl Fn(&TransportConfig) -> T) {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let addr: SocketAddr = std::env::var(ADDR)
        .expect(ADDR)
        .parse()
        .expect("child address");
    let count: u64 = std::env::var(COUNT)
        .expect(COUNT)
        .parse()
        .expect("child count");
    let mut t = make(&TransportConfig::default());
    match role.as_str() {
        "stream" => {
            let a = connect_retry(addr, STREAM_NODE, RECEIVER_NODE, Duration::from_secs(30));
            t.add_peer(1, a.stream, Some(a.peer_node), &a.keys)
                .expect("add_peer");
            run_sender(&mut t, 1, STREAM_NODE, count);
        }
        "spam" => {
            let a = connect_retry(addr, SPAM_NODE, RECEIVER_NODE, Duration::from_secs(30));
            t.add_peer(1, a.stream, Some(a.peer_node), &a.keys)
                .expect("add_peer");
            spam(&mut t, 1);
        }
        "serve" => {
            let l = TcpListener::bind(addr).expect("bind in namespace");
            let a = accept_within(&l, &hs(RECEIVER_NODE), None, Duration::from_secs(60));
            t.add_peer(1, a.stream, Some(a.peer_node), &a.keys)
                .expect("add_peer");
            run_receiver(&mut t, 1, STREAM_NODE, count);
        }
        other => panic!("unknown testkit role {other:?}"),
    }
}

/// Sends `count` frames of the test stream to `peer`, then waits for the receiver's `Pong`
/// acknowledging them all and for every page to come back.
pub fn run_sender<T: Transport>(t: &mut T, peer: PeerId, node: u16, count: u64) {
    let mut s = Sender::new(node, 64);
    let mut evs = Vec::new();
    let mut acked = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(acked && s.all_pages_back()) {
        assert!(
            Instant::now() < deadline,
            "sender stuck at {} of {count}",
            s.next
        );
        let queued = s.pump(t, peer, count);
        t.flush().expect("flush");
        poll_into(t, &mut evs);
        let progress = queued > 0 || !evs.is_empty();
        for e in evs.drain(..) {
            if s.on_event(&e) {
                continue;
            }
            match e {
                Event::Received {
                    header, payload, ..
                } => {
                    assert_eq!(
                        header.ty,
                        MsgType::Pong,
                        "only the acknowledgement comes back"
                    );
                    assert_eq!(header.arg, count, "receiver verified every frame");
                    assert!(payload.is_none());
                    acked = true;
                }
                Event::PeerDown { reason, .. } => panic!("receiver went down: {reason}"),
                other => panic!("unexpected event {other:?}"),
            }
        }
        if !progress {
            t.wait(Some(Duration::from_millis(20))).expect("wait");
        }
    }
    assert_eq!(s.next, count);
}

/// Receives and verifies `count` frames from `peer` (node `sender`), acknowledges them with a
/// `Pong` carrying the count, then waits for the sender to close.
pub fn run_receiver<T: Transport>(t: &mut T, peer: PeerId, sender: u16, count: u64) -> Checker {
    let mut c = Checker::default();
    let mut evs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while c.count < count {
        assert!(
            Instant::now() < deadline,
            "receiver stuck at {} of {count}",
            c.count
        );
        poll_into(t, &mut evs);
        let idle = evs.is_empty();
        for e in evs.drain(..) {
            if let Some(other) = c.on_event(t, sender, e) {
                panic!("unexpected event while receiving: {other:?}");
            }
        }
        if idle {
            t.wait(Some(Duration::from_millis(20))).expect("wait");
        }
    }
    let mut ack = Header::new(MsgType::Pong, RECEIVER_NODE);
    ack.arg = count;
    loop {
        match t.send(peer, &ack, Payload::None, 0).expect("send ack") {
            SendOutcome::Queued => break,
            SendOutcome::Backpressure => {
                t.flush().expect("flush");
                poll_into(t, &mut evs);
            }
        }
    }
    t.flush().expect("flush");
    let closed = poll_until(
        t,
        Duration::from_secs(60),
        |_, e| {
            matches!(
                e,
                Event::PeerDown {
                    reason: DownReason::Closed | DownReason::Io(_),
                    ..
                }
            )
        },
        |_, e| panic!("unexpected event after the stream: {e:?}"),
    );
    assert!(closed, "sender did not close after the acknowledgement");
    c
}

fn spam<T: Transport>(t: &mut T, peer: PeerId) {
    let mut s = Sender::new(SPAM_NODE, 64);
    let mut evs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let queued = s.pump(t, peer, u64::MAX);
        t.flush().expect("flush");
        poll_into(t, &mut evs);
        let progress = queued > 0 || !evs.is_empty();
        for e in evs.drain(..) {
            if !s.on_event(&e) {
                if let Event::PeerDown { .. } = e {
                    return;
                }
            }
        }
        if !progress {
            t.wait(Some(Duration::from_millis(20))).expect("wait");
        }
    }
}
