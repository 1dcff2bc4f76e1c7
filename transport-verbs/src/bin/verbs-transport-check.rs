//! `verbs-transport-check [DEVICE [CHECK]]`: the verbs transport's own suite on a real device
//! (soft-RoCE `rxe0` in the lab VM by default). Two transports, each owned by its own thread
//! as a shard owns one, connect over TCP on loopback the way two nodes do and then:
//!
//! 1. `frames`: a header-only frame, a copied payload and a page payload arrive in order with
//!    their bytes, and an answer comes back;
//! 2. `window`: 5000 page frames through a receiver that holds up to 48 of its receive slots
//!    at a time and releases them late: every frame arrives once, in order, with its
//!    contents; the sender meets backpressure and every page send is reported done;
//! 3. `peer-death`: one side drops its transport and connection; the other reports the peer
//!    down;
//! 4. `wrong-keys`: sides with different frame keys refuse each other at the exchange;
//! 5. `bogus-qpn`: a peer that announces a queue pair that does not exist is reported down
//!    when the first send is not completed within `SEND_TIMEOUT` (soft-RoCE completes it
//!    with no error at all);
//! 6. `wrong-sender`: a frame whose sender is not the node authenticated on the connection
//!    takes the connection down.
//!
//! Prints one `ok ...` line per check and exits 0, or says what failed and exits 1.
//! Run in the lab by `tests/tests/lab_rdma.rs`.

use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use transport_verbs::endpoint::{exchange_sealed, EndpointMsg};
use transport_verbs::transport::{VerbsConfig, VerbsTransport, SLOT_BYTES};
use wire::header::{Header, MsgType, PAGE_SIZE};
use wire::seal::{FrameAuth, FrameKeys};
use wire::transport::{
    DownReason, Event, PageRef, Payload, SendOutcome, Transport, TransportConfig,
};
use wire::FrameError;

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(60);

type Check = Result<String, String>;
type CheckFn = fn(&str) -> Check;

fn keys(a: u8, b: u8) -> FrameKeys {
    FrameKeys::new(FrameAuth::Mac, [a; 32], [b; 32])
}

fn config() -> TransportConfig {
    TransportConfig {
        max_peers: 4,
        tx_depth: 32,
        rx_slots: 64,
        ..Default::default()
    }
}

/// Polls `t` (sleeping in `wait` between polls) until `f` has seen what it wants (returns
/// true) or `STEP` passes.
fn pump(
    t: &mut VerbsTransport,
    what: &str,
    mut f: impl FnMut(&mut VerbsTransport, &mut Vec<Event>) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + STEP;
    let mut got = Vec::new();
    loop {
        t.poll(|e| got.push(e))
            .map_err(|e| format!("{what}: poll: {e}"))?;
        if f(t, &mut got) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: not done after {STEP:?} (last events {got:?})"
            ));
        }
        t.wait(Some(Duration::from_millis(20)))
            .map_err(|e| format!("{what}: wait: {e}"))?;
    }
}

/// A send into an idle connection must be queued.
fn queued(r: Result<SendOutcome, wire::transport::TransportError>) -> Result<(), String> {
    match r {
        Ok(SendOutcome::Queued) => Ok(()),
        Ok(SendOutcome::Backpressure) => {
            Err("a send into an idle connection met backpressure".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn frame(ty: MsgType, sender: u16, txn: u64, payload: usize) -> Header {
    let mut h = Header::new(ty, sender);
    h.txn = txn;
    if payload > 0 {
        h.flags = wire::header::flags::DATA;
    }
    h.set_payload_len(payload as u32);
    h
}

fn page_of(i: u64) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|k| (i.wrapping_mul(131).wrapping_add(k as u64 * 7) % 251) as u8)
        .collect()
}

/// Connects a transport of this thread (peer id `1`, node 1) to one built by `other` on a
/// thread of its own (which sees us as peer `0`, node 0), then runs `ours` and `other`'s role.
fn pair<A, B>(ka: FrameKeys, kb: FrameKeys, dev: &str, ours: A, other: B) -> Result<String, String>
where
    A: FnOnce(&mut VerbsTransport) -> Check,
    B: FnOnce(&mut VerbsTransport) -> Check + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let vcfg = VerbsConfig {
        device: dev.to_string(),
    };
    let v2 = vcfg.clone();
    let peer = std::thread::spawn(move || -> Check {
        let mut t = VerbsTransport::new(&config(), &v2).map_err(|e| format!("peer: {e}"))?;
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        t.add_peer_verbs(0, s, Some(0), &kb)
            .map_err(|e| format!("peer add_peer: {e}"))?;
        other(&mut t)
    });
    let mut t = VerbsTransport::new(&config(), &vcfg).map_err(|e| e.to_string())?;
    let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let mine = t
        .add_peer_verbs(1, s, Some(1), &ka)
        .map_err(|e| format!("add_peer: {e}"))
        .and_then(|()| ours(&mut t));
    drop(t);
    let theirs = peer
        .join()
        .map_err(|_| "the peer thread panicked".to_string())?;
    let (m, th) = (mine?, theirs?);
    Ok(format!("{m}; {th}"))
}

fn frames(dev: &str) -> Check {
    let page = page_of(7);
    pair(
        keys(1, 2),
        keys(2, 1),
        dev,
        move |t| {
            let bytes = page_of(3);
            // SAFETY: `page` lives and is unchanged until the transport's SendDone.
            let page_ref = unsafe { PageRef::new(page.as_ptr(), page.len()) };
            let sends = [
                (frame(MsgType::Ping, 0, 1, 0), Payload::None),
                (
                    frame(MsgType::FwdAck, 0, 2, bytes.len()),
                    Payload::Copy(&bytes),
                ),
                (
                    frame(MsgType::Data, 0, 3, PAGE_SIZE),
                    Payload::Page(page_ref),
                ),
            ];
            for (h, p) in sends {
                if t.send(1, &h, p, h.txn).map_err(|e| e.to_string())? != SendOutcome::Queued {
                    return Err("a send into an empty queue met backpressure".into());
                }
            }
            t.flush().map_err(|e| e.to_string())?;
            let (mut done, mut pong) = (false, false);
            pump(t, "the answer", |_, evs| {
                for e in evs.drain(..) {
                    match e {
                        Event::SendDone { token: 3, .. } => done = true,
                        Event::Received { header, .. } if header.ty == MsgType::Pong => pong = true,
                        _ => {}
                    }
                }
                done && pong
            })?;
            Ok("3 frames sent, page send done, answer received".into())
        },
        |t| {
            let mut seen: Vec<(Header, Vec<u8>)> = Vec::new();
            let mut bufs = Vec::new();
            pump(t, "three frames", |_, evs| {
                for e in evs.drain(..) {
                    if let Event::Received {
                        header, payload, ..
                    } = e
                    {
                        seen.push((header, Vec::new()));
                        if let Some(b) = payload {
                            bufs.push((seen.len() - 1, b));
                        }
                    }
                }
                seen.len() >= 3
            })?;
            for (i, b) in bufs {
                seen[i].1 = t.payload(&b).to_vec();
                t.release(b);
            }
            let txns: Vec<u64> = seen.iter().map(|s| s.0.txn).collect();
            if txns != [1, 2, 3] || seen[1].1 != page_of(3) || seen[2].1 != page_of(7) {
                return Err(format!("frames arrived as {txns:?} or with wrong bytes"));
            }
            let h = frame(MsgType::Pong, 1, 9, 0);
            queued(t.send(0, &h, Payload::None, 0))?;
            t.flush().map_err(|e| e.to_string())?;
            // Stay until the answer left (its completion) and the other side hung up.
            pump(t, "the other side's end", |_, evs| {
                evs.drain(..).any(|e| matches!(e, Event::PeerDown { .. }))
            })?;
            Ok("in order with their bytes".into())
        },
    )
}

fn window(dev: &str) -> Check {
    const N: u64 = 5000;
    const HOLD: usize = 48;
    pair(
        keys(3, 4),
        keys(4, 3),
        dev,
        |t| {
            let pages: Vec<Vec<u8>> = (0..64).map(page_of).collect();
            let (mut next, mut done, mut pressure) = (0u64, 0u64, 0u64);
            let deadline = Instant::now() + STEP;
            while done < N {
                while next < N {
                    let p = &pages[(next % 64) as usize];
                    let mut h = frame(MsgType::Data, 0, next, PAGE_SIZE);
                    h.page = next;
                    // SAFETY: `pages` outlives the loop and is never written.
                    let r = unsafe { PageRef::new(p.as_ptr(), p.len()) };
                    match t
                        .send(1, &h, Payload::Page(r), next)
                        .map_err(|e| e.to_string())?
                    {
                        SendOutcome::Queued => next += 1,
                        SendOutcome::Backpressure => {
                            pressure += 1;
                            break;
                        }
                    }
                }
                t.flush().map_err(|e| e.to_string())?;
                let mut down = None;
                t.poll(|e| match e {
                    Event::SendDone { .. } => done += 1,
                    Event::PeerDown { reason, .. } => down = Some(reason),
                    _ => {}
                })
                .map_err(|e| e.to_string())?;
                if let Some(r) = down {
                    return Err(format!("the receiver went down: {r}"));
                }
                if Instant::now() > deadline {
                    return Err(format!("{done} of {N} sends done after {STEP:?}"));
                }
                if next >= N || pressure > 0 {
                    t.wait(Some(Duration::from_millis(5)))
                        .map_err(|e| e.to_string())?;
                }
            }
            if pressure == 0 {
                return Err("5000 frames through 64 receive slots met no backpressure".into());
            }
            // Until the receiver has everything (it hangs up then).
            pump(t, "the receiver's end", |_, evs| {
                evs.drain(..).any(|e| matches!(e, Event::PeerDown { .. }))
            })?;
            Ok(format!(
                "{N} page sends done, backpressure {pressure} times"
            ))
        },
        |t| {
            let mut held = std::collections::VecDeque::new();
            let mut want = 0u64;
            let mut bad = None;
            pump(t, "5000 frames", |t, evs| {
                let arrived = evs.len();
                for e in evs.drain(..) {
                    if let Event::Received {
                        header,
                        payload: Some(b),
                        ..
                    } = e
                    {
                        if header.txn != want || t.payload(&b) != page_of(want % 64).as_slice() {
                            bad.get_or_insert(format!(
                                "frame {} arrived where {want} was due, or with other bytes",
                                header.txn
                            ));
                        }
                        want += 1;
                        held.push_back(b);
                    }
                }
                // Hold up to HOLD slots: release the oldest half once that many are held, and
                // everything when nothing new came (the sender waits for credits then).
                let keep = if held.len() >= HOLD {
                    HOLD / 2
                } else if arrived == 0 {
                    0
                } else {
                    held.len()
                };
                while held.len() > keep {
                    let b = held.pop_front().expect("held");
                    t.release(b);
                }
                want >= N || bad.is_some()
            })?;
            for b in held.drain(..) {
                t.release(b);
            }
            if let Some(b) = bad {
                return Err(b);
            }
            Ok(format!("{want} frames in order, at most {HOLD} held"))
        },
    )
}

fn peer_death(dev: &str) -> Check {
    pair(
        keys(5, 6),
        keys(6, 5),
        dev,
        |t| {
            let t0 = Instant::now();
            let mut reason = None;
            pump(t, "the peer's end", |_, evs| {
                for e in evs.drain(..) {
                    if let Event::PeerDown { peer: 1, reason: r } = e {
                        reason = Some(r);
                    }
                }
                reason.is_some()
            })?;
            Ok(format!(
                "peer down ({}) {} ms after it left",
                reason.expect("seen"),
                t0.elapsed().as_millis()
            ))
        },
        |_t| Ok("left at once".into()),
    )
}

fn wrong_keys(dev: &str) -> Check {
    match pair(
        keys(7, 8),
        keys(9, 7),
        dev,
        |_| Ok(String::new()),
        |_| Ok(String::new()),
    ) {
        Err(e) if e.contains("endpoint exchange") => Ok(format!("refused: {e}")),
        Err(e) => Err(format!("failed, but not at the exchange: {e}")),
        Ok(_) => Err("sides with different keys connected".into()),
    }
}

/// A peer that does the exchange itself, announcing queue pair `qpn` that does not exist.
fn bogus_qpn(dev: &str) -> Check {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let fake = std::thread::spawn(move || -> Result<TcpStream, String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        let k = keys(2, 1);
        let (mut se, mut op) = (
            k.sealer().map_err(|e| e.to_string())?,
            k.opener().map_err(|e| e.to_string())?,
        );
        let theirs = exchange_sealed(
            &mut s,
            se.as_mut(),
            op.as_mut(),
            &EndpointMsg {
                mtu: 3,
                qpn: 0xff_fff0,
                psn: 1,
                lid: 0,
                gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
                rx_slots: 64,
                rx_slot_size: SLOT_BYTES as u32,
                rkey: 0,
                addr: 0,
                len: 0,
            },
            Duration::from_secs(10),
        )
        .map_err(|e| e.to_string())?;
        // What the transport announced: receive slots that hold a whole frame.
        if (theirs.rx_slot_size as usize) < SLOT_BYTES {
            return Err(format!(
                "the transport announced {}-byte slots",
                theirs.rx_slot_size
            ));
        }
        Ok(s)
    });
    let mut t = VerbsTransport::new(&config(), &VerbsConfig { device: dev.into() })
        .map_err(|e| e.to_string())?;
    let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    t.add_peer_verbs(1, s, Some(1), &keys(1, 2))
        .map_err(|e| format!("add_peer: {e}"))?;
    let _keep = fake
        .join()
        .map_err(|_| "fake peer panicked".to_string())??;
    let h = frame(MsgType::Ping, 0, 1, 0);
    queued(t.send(1, &h, Payload::None, 0))?;
    t.flush().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut reason = None;
    let r = pump(&mut t, "the send's failure", |_, evs| {
        for e in evs.drain(..) {
            if let Event::PeerDown { reason: r, .. } = e {
                reason = Some(r);
            }
        }
        reason.is_some()
    });
    if let Err(e) = r {
        let st = t.stats();
        return Err(format!(
            "{e} (completion errors {}, frames sent {})",
            st.cq_errors.load(std::sync::atomic::Ordering::Relaxed),
            st.per_slot[0]
                .tx_frames
                .load(std::sync::atomic::Ordering::Relaxed)
        ));
    }
    match reason {
        Some(DownReason::Io(libc::ETIMEDOUT)) => Ok(format!(
            "peer down ({}) {} ms after the send",
            reason.expect("seen"),
            t0.elapsed().as_millis()
        )),
        other => Err(format!("expected the send to time out, got {other:?}")),
    }
}

fn wrong_sender(dev: &str) -> Check {
    pair(
        keys(1, 2),
        keys(2, 1),
        dev,
        |t| {
            let mut reason = None;
            pump(t, "the bad frame", |_, evs| {
                for e in evs.drain(..) {
                    if let Event::PeerDown { reason: r, .. } = e {
                        reason = Some(r);
                    }
                }
                reason.is_some()
            })?;
            match reason {
                Some(DownReason::Protocol(FrameError::WrongSender {
                    expected: 1,
                    got: 5,
                })) => Ok("refused a frame from node 5 on node 1's connection".into()),
                other => Err(format!("expected WrongSender, got {other:?}")),
            }
        },
        |t| {
            let h = frame(MsgType::Ping, 5, 1, 0);
            queued(t.send(0, &h, Payload::None, 0))?;
            t.flush().map_err(|e| e.to_string())?;
            pump(t, "the other side's end", |_, evs| {
                evs.drain(..).any(|e| matches!(e, Event::PeerDown { .. }))
            })?;
            Ok("sent as node 5".into())
        },
    )
}

fn main() -> ExitCode {
    let dev = std::env::args().nth(1).unwrap_or_else(|| "rxe0".into());
    let only = std::env::args().nth(2);
    let checks: [(&str, CheckFn); 6] = [
        ("frames", frames),
        ("window", window),
        ("peer-death", peer_death),
        ("wrong-keys", wrong_keys),
        ("bogus-qpn", bogus_qpn),
        ("wrong-sender", wrong_sender),
    ];
    let mut failed = 0;
    for (name, f) in checks {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let t = Instant::now();
        match f(&dev) {
            Ok(what) => println!("ok {name} ({} ms): {what}", t.elapsed().as_millis()),
            Err(e) => {
                println!("FAILED {name}: {e}");
                failed += 1;
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
