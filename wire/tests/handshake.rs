//! Handshake refusals over real loopback sockets: each gives the right error on both sides
//! and is counted by reason; a good handshake still succeeds afterwards.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::Duration;

use wire::handshake::{self, HandshakeConfig, HandshakeError, RejectReason};

const SECRET: &[u8] = b"the ssi-dp handshake test secret";

fn cfg(node: u16) -> HandshakeConfig {
    let mut c = HandshakeConfig::new(node, SECRET, [7; 32]).expect("config");
    c.timeout = Duration::from_secs(10);
    c
}

/// Runs one handshake: server `s` accepts, client `c` dials expecting `expect`.
fn run(
    s: &HandshakeConfig,
    c: HandshakeConfig,
    expect: u16,
) -> (
    Result<handshake::Authenticated, HandshakeError>,
    Result<handshake::Authenticated, HandshakeError>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let client = thread::spawn(move || handshake::connect(addr, &c, expect, 0));
    let server = handshake::accept(&l, s);
    (server, client.join().unwrap())
}

#[test]
fn good_handshake_reports_the_peer() {
    let s = cfg(1);
    let mut c = cfg(2);
    c.shard = 3;
    c.shard_count = 4;
    let (srv, cli) = run(&s, c, 1);
    let srv = srv.expect("server");
    let cli = cli.expect("client");
    assert_eq!(
        (srv.peer_node, srv.peer_shard, srv.peer_shard_count),
        (2, 3, 4)
    );
    assert_eq!(
        (cli.peer_node, cli.peer_shard, cli.peer_shard_count),
        (1, 0, 1)
    );
    assert_eq!(s.stats.ok.load(Relaxed), 1);
    assert_eq!(s.stats.failures(), 0);
}

/// Each side learns whether the other offered RDMA verbs (the hello flag, under both MACs);
/// a side that does not offer sees the other's offer but sets none itself.
#[test]
fn each_side_learns_the_others_verbs_offer() {
    for (server_offers, client_offers) in
        [(false, false), (true, false), (false, true), (true, true)]
    {
        let mut s = cfg(1);
        s.offer_verbs = server_offers;
        let mut c = cfg(2);
        c.offer_verbs = client_offers;
        let (srv, cli) = run(&s, c, 1);
        let (srv, cli) = (srv.expect("server"), cli.expect("client"));
        assert_eq!(
            (srv.peer_offers_verbs, cli.peer_offers_verbs),
            (client_offers, server_offers),
            "server offers {server_offers}, client offers {client_offers}"
        );
    }
}

/// A client names the server shard it wants; the server serves it from that shard and the
/// client learns it was answered by that shard.
#[test]
fn connection_is_served_by_the_target_shard() {
    let mut s = cfg(1);
    s.shard_count = 3;
    let mut c = cfg(2);
    c.shard = 1;
    c.shard_count = 2;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let client = thread::spawn(move || handshake::connect(addr, &c, 1, 2));
    let srv = handshake::accept(&l, &s).expect("server");
    let cli = client.join().unwrap().expect("client");
    assert_eq!((srv.local_shard, srv.peer_shard), (2, 1));
    assert_eq!(
        (cli.local_shard, cli.peer_shard, cli.peer_shard_count),
        (1, 2, 3)
    );
}

#[test]
fn a_shard_the_server_lacks_is_refused() {
    let mut s = cfg(1);
    s.shard_count = 2;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let c = cfg(2);
    let client = thread::spawn(move || handshake::connect(addr, &c, 1, 2));
    let srv = handshake::accept(&l, &s);
    assert!(
        matches!(srv, Err(HandshakeError::NoSuchShard { asked: 2, count: 2 })),
        "{srv:?}"
    );
    let cli = client.join().unwrap();
    assert!(
        matches!(
            cli,
            Err(HandshakeError::Rejected(RejectReason::NoSuchShard))
        ),
        "{cli:?}"
    );
    assert_eq!(s.stats.failures(), 1);
}

#[test]
fn wrong_secret_is_refused_on_both_sides() {
    let s = cfg(1);
    let c = HandshakeConfig::new(2, b"some other secret value", [7; 32]).unwrap();
    let cstats = c.stats.clone();
    let (srv, cli) = run(&s, c, 1);
    assert!(matches!(srv, Err(HandshakeError::WrongSecret)), "{srv:?}");
    assert!(matches!(cli, Err(HandshakeError::WrongSecret)), "{cli:?}");
    assert_eq!(s.stats.wrong_secret.load(Relaxed), 1);
    assert_eq!(cstats.wrong_secret.load(Relaxed), 1);
}

#[test]
fn unexpected_node_is_refused_by_the_client() {
    let s = cfg(1);
    let c = cfg(2);
    let cstats = c.stats.clone();
    let (srv, cli) = run(&s, c, 5);
    assert!(
        matches!(
            cli,
            Err(HandshakeError::UnexpectedNode {
                expected: 5,
                got: 1
            })
        ),
        "{cli:?}"
    );
    assert!(
        matches!(
            srv,
            Err(HandshakeError::Aborted(RejectReason::UnexpectedNode))
        ),
        "{srv:?}"
    );
    assert_eq!(cstats.unexpected_node.load(Relaxed), 1);
    assert_eq!(s.stats.aborted.load(Relaxed), 1);
}

#[test]
fn node_outside_the_allowed_set_is_refused() {
    let mut s = cfg(1);
    s.allowed = 1 << 3;
    let (srv, cli) = run(&s, cfg(2), 1);
    assert!(
        matches!(srv, Err(HandshakeError::UnknownNode(2))),
        "{srv:?}"
    );
    assert!(
        matches!(
            cli,
            Err(HandshakeError::Rejected(RejectReason::UnknownNode))
        ),
        "{cli:?}"
    );
    assert_eq!(s.stats.unknown_node.load(Relaxed), 1);
    let msg = cli.unwrap_err().to_string();
    assert!(msg.contains("allowed set"), "{msg}");
}

#[test]
fn layout_mismatch_names_both_digests() {
    let s = cfg(1);
    let c = HandshakeConfig::new(2, SECRET, [9; 32]).unwrap();
    let (srv, cli) = run(&s, c, 1);
    let e = cli.expect_err("client refuses");
    let msg = e.to_string();
    assert!(matches!(e, HandshakeError::LayoutMismatch { .. }));
    assert!(
        msg.contains(&"09".repeat(32)) && msg.contains(&"07".repeat(32)),
        "{msg}"
    );
    let e = srv.expect_err("server refuses");
    assert!(matches!(e, HandshakeError::LayoutMismatch { .. }), "{e:?}");
    assert_eq!(s.stats.layout.load(Relaxed), 1);
}

/// Relays client→server bytes, recording them, so a transcript can be replayed.
#[test]
fn replayed_transcript_is_refused() {
    let s = cfg(1);
    let server_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server_l.local_addr().unwrap();
    let proxy_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy_l.local_addr().unwrap();
    let proxy = thread::spawn(move || {
        let (mut from_client, _) = proxy_l.accept().unwrap();
        let mut to_server = TcpStream::connect(server_addr).unwrap();
        let mut back = to_server.try_clone().unwrap();
        let mut client_w = from_client.try_clone().unwrap();
        let down = thread::spawn(move || {
            let mut b = [0u8; 512];
            while let Ok(n) = back.read(&mut b) {
                if n == 0 || client_w.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        });
        let mut recorded = Vec::new();
        let mut b = [0u8; 512];
        // The client sends hello (80 bytes) then auth (40 bytes).
        while recorded.len() < 120 {
            let n = from_client.read(&mut b).unwrap();
            assert!(n > 0, "client closed early");
            recorded.extend_from_slice(&b[..n]);
            to_server.write_all(&b[..n]).unwrap();
        }
        down.join().unwrap();
        recorded
    });
    let c = cfg(2);
    let client = thread::spawn(move || handshake::connect(proxy_addr, &c, 1, 0));
    let first = handshake::accept(&server_l, &s).expect("original handshake");
    client.join().unwrap().expect("original client");
    drop(first);
    let recorded = proxy.join().unwrap();

    // Replay the recorded client bytes on a fresh connection.
    let mut attacker = TcpStream::connect(server_addr).unwrap();
    attacker.write_all(&recorded).unwrap();
    let r = handshake::accept(&server_l, &s);
    assert!(matches!(r, Err(HandshakeError::Replayed)), "{r:?}");
    assert_eq!(s.stats.replayed.load(Relaxed), 1);
    let mut reply = [0u8; 8];
    attacker.read_exact(&mut reply).unwrap();
    assert_eq!(reply[5], 6, "a Reject message");
    assert_eq!(reply[6], 5, "with reason Replayed");
}

#[test]
fn version_mismatch_and_garbage_are_refused() {
    let s = cfg(1);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    let mut hello = [0u8; 80];
    hello[..4].copy_from_slice(b"SSHK");
    hello[4] = 9;
    hello[5] = 1;
    c.write_all(&hello).unwrap();
    let r = handshake::accept(&l, &s);
    assert!(
        matches!(
            r,
            Err(HandshakeError::VersionMismatch {
                ours: handshake::HS_VERSION,
                theirs: 9
            })
        ),
        "{r:?}"
    );
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let r = handshake::accept(&l, &s);
    assert!(matches!(r, Err(HandshakeError::Malformed(_))), "{r:?}");
    assert_eq!(s.stats.version.load(Relaxed), 1);
    assert_eq!(s.stats.malformed.load(Relaxed), 1);
}

#[test]
fn silent_peer_times_out() {
    let mut s = cfg(1);
    s.timeout = Duration::from_millis(200);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let r = handshake::accept(&l, &s);
    assert!(matches!(r, Err(HandshakeError::Io(_))), "{r:?}");
    assert_eq!(s.stats.io.load(Relaxed), 1);
}

#[test]
fn weak_configuration_is_rejected() {
    assert!(matches!(
        HandshakeConfig::new(1, b"short", [0; 32]),
        Err(HandshakeError::Config(_))
    ));
    assert!(matches!(
        HandshakeConfig::new(64, SECRET, [0; 32]),
        Err(HandshakeError::Config(_))
    ));
    let dbg = format!("{:?}", cfg(1));
    assert!(
        !dbg.contains("handshake test secret"),
        "secret must not be printed: {dbg}"
    );
}

/// Both ends derive matching frame keys (what one seals the other opens), fresh for every
/// connection (a frame sealed on one connection does not open on another).
#[test]
fn frame_keys_match_across_the_connection_and_differ_between_connections() {
    let s = cfg(1);
    let (srv1, cli1) = run(&s, cfg(2), 1);
    let (srv1, cli1) = (srv1.expect("server"), cli1.expect("client"));
    let (srv2, _) = run(&s, cfg(2), 1);
    let srv2 = srv2.expect("server");
    assert_eq!(cli1.keys.auth(), wire::FrameAuth::Mac, "MAC is the default");
    let hdr = [3u8; wire::HEADER_LEN];
    let tag = {
        let mut sealer = cli1.keys.sealer().unwrap().unwrap();
        sealer.seal_clear(&hdr, b"payload").unwrap()
    };
    let mut other = srv2.keys.opener().unwrap().unwrap();
    assert!(
        !other.open(&hdr, &tag, &mut b"payload".to_vec()),
        "another connection's keys do not open it"
    );
    let mut opener = srv1.keys.opener().unwrap().unwrap();
    assert!(opener.open(&hdr, &tag, &mut b"payload".to_vec()));
    // And the other direction.
    let tag = {
        let mut sealer = srv1.keys.sealer().unwrap().unwrap();
        sealer.seal_clear(&hdr, b"reply").unwrap()
    };
    let mut opener = cli1.keys.opener().unwrap().unwrap();
    assert!(opener.open(&hdr, &tag, &mut b"reply".to_vec()));
}

/// Nodes that protect frames differently refuse each other, each saying so.
#[test]
fn frame_protection_modes_must_match() {
    let mut s = cfg(1);
    s.frame_auth = wire::FrameAuth::None;
    let (srv, cli) = run(&s, cfg(2), 1);
    let srv = srv.expect_err("server must refuse");
    assert!(
        matches!(
            srv,
            HandshakeError::AuthMismatch {
                ours: wire::FrameAuth::None,
                theirs: Some(wire::FrameAuth::Mac)
            }
        ),
        "{srv}"
    );
    assert!(srv.to_string().contains("--frame-auth"), "{srv}");
    let cli = cli.expect_err("client must be refused");
    assert!(
        matches!(cli, HandshakeError::Rejected(RejectReason::AuthMismatch)),
        "{cli}"
    );
    assert_eq!(s.stats.auth_mode.load(Relaxed), 1);
}

/// A stand-in identity (a seam: real nodes use their CA-signed certificates, tested against
/// node processes in tests/tests/node_identity.rs): the credential names one node id, and a
/// "signature" is a checksum of that id and the message. It exercises the handshake's
/// carrying and checking of identities, not cryptography.
#[derive(Debug)]
struct ToyIdentity(u16);

fn toy_sig(node: u16, msg: &[u8]) -> Vec<u8> {
    let mut acc = u64::from(node) ^ 0x9e37_79b9_7f4a_7c15;
    for &b in msg {
        acc = acc.rotate_left(5) ^ u64::from(b);
    }
    acc.to_le_bytes().to_vec()
}

impl handshake::NodeIdentity for ToyIdentity {
    fn credential(&self) -> &[u8] {
        if self.0 == 1 {
            &[1]
        } else {
            &[2]
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, handshake::IdentityError> {
        Ok(toy_sig(self.0, msg))
    }

    fn verify(
        &self,
        node: u16,
        cred: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), handshake::IdentityError> {
        if cred != [node as u8] {
            return Err(format!("credential is not for node {node}").into());
        }
        if sig != toy_sig(node, msg) {
            return Err("bad signature".into());
        }
        Ok(())
    }
}

fn with_id(node: u16, holds: u16) -> HandshakeConfig {
    let mut c = cfg(node);
    c.identity = Some(std::sync::Arc::new(ToyIdentity(holds)));
    c
}

/// Identities travel both ways and are checked against the claimed ids: the right ones pass;
/// a client holding node 2's credential but claiming node 3 is refused; a server answering
/// as node 1 with node 2's credential is refused by the client; and a node without an
/// identity is refused by one with (each side says why).
#[test]
fn identities_are_checked_against_the_claimed_node() {
    let s = with_id(1, 1);
    let (srv, cli) = run(&s, with_id(2, 2), 1);
    srv.expect("server accepts node 2 with its own credential");
    cli.expect("client accepts node 1 with its own credential");

    let (srv, cli) = run(&s, with_id(3, 2), 1);
    let e = srv.expect_err("node 3 with node 2's credential");
    assert!(matches!(e, HandshakeError::Identity { node: 3, .. }), "{e}");
    assert!(e.to_string().contains("node-3.ssi-dp"), "{e}");
    let e = cli.expect_err("client refused");
    assert!(
        matches!(e, HandshakeError::Rejected(RejectReason::IdentityRefused)),
        "{e}"
    );

    let impostor = with_id(1, 2);
    let (srv, cli) = run(&impostor, with_id(2, 2), 1);
    let e = cli.expect_err("a server with another node's credential");
    assert!(matches!(e, HandshakeError::Identity { node: 1, .. }), "{e}");
    assert!(srv.is_err(), "the server learns it was refused");

    let (srv, cli) = run(&s, cfg(2), 1);
    let e = srv.expect_err("a client without identity");
    assert!(
        matches!(e, HandshakeError::IdentityMismatch { ours: true }),
        "{e}"
    );
    let e = cli.expect_err("refused");
    assert!(
        matches!(e, HandshakeError::Rejected(RejectReason::IdentityMismatch)),
        "{e}"
    );
    assert_eq!(s.stats.identity.load(Relaxed), 2);
}
