//! The bounded handshake pool over real loopback sockets: silent and trickling sockets expire,
//! a full pool makes room for a new dialler by closing its oldest connection, and a member's
//! handshake completes while the pool is busy with strangers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

use wire::handshake::{
    self, AcceptPool, Authenticated, HandshakeConfig, HandshakeError, PoolLimits,
};

const SECRET: &[u8] = b"the ssi-dp accept pool test secret";

fn cfg(node: u16) -> HandshakeConfig {
    HandshakeConfig::new(node, SECRET, [9; 32]).expect("config")
}

fn limits() -> PoolLimits {
    PoolLimits {
        max_pending: 4,
        max_per_source: 4,
        first_message: Duration::from_millis(300),
        deadline: Duration::from_millis(600),
        accepts_per_turn: 16,
    }
}

/// Runs the pool until `until` says stop or `limit` passes; returns what left it.
fn drive(
    pool: &mut AcceptPool,
    cfg: &HandshakeConfig,
    limit: Duration,
    mut until: impl FnMut(&[(SocketAddr, Result<Authenticated, HandshakeError>)]) -> bool,
) -> Vec<(SocketAddr, Result<Authenticated, HandshakeError>)> {
    let mut out = Vec::new();
    let end = Instant::now() + limit;
    while Instant::now() < end && !until(&out) {
        pool.turn(cfg, Duration::from_millis(20), |f| out.push(f))
            .expect("turn");
    }
    out
}

/// Whether the server closed `s` (EOF or reset) within a second.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn silent_and_trickling_sockets_expire() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let s = cfg(1);
    let mut pool = AcceptPool::new(l, limits(), Vec::new()).unwrap();
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut trickle = TcpStream::connect(addr).unwrap();
    let t0 = Instant::now();
    // A valid hello prefix, then zeros: one byte per turn of ours, never a whole hello.
    let mut hello = b"SSHK".to_vec();
    hello.extend([wire::handshake::HS_VERSION, 1, 0, 0]);
    hello.resize(
        wire::handshake::PREFIX_LEN + wire::handshake::HELLO_BODY_LEN,
        0,
    );
    let mut sent = 0;
    let gone = drive(&mut pool, &s, Duration::from_secs(3), |out| {
        if sent < 40 {
            let _ = trickle.write_all(&hello[sent..sent + 1]);
            sent += 1;
        }
        out.len() == 2
    });
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    for (_, r) in &gone {
        let e = r.as_ref().expect_err("expired");
        assert!(e.to_string().contains("no complete hello in time"), "{e}");
    }
    assert_eq!(pool.stats.expired.load(Relaxed), 2);
    assert_eq!(pool.pending(), 0);
    assert!(closed(&mut silent));
}

#[test]
fn a_full_pool_makes_room_and_a_member_still_gets_in() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let s = cfg(1);
    let mut lim = limits();
    lim.first_message = Duration::from_secs(5);
    lim.deadline = Duration::from_secs(5);
    let mut pool = AcceptPool::new(l, lim, Vec::new()).unwrap();
    // Fill the pool with strangers that say nothing.
    let mut strangers: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    drive(&mut pool, &s, Duration::from_millis(300), |_| false);
    assert_eq!(pool.pending(), 4);
    // A member dials: it is taken, the oldest stranger makes room, the handshake completes.
    let client = thread::spawn(move || handshake::connect(addr, &cfg(2), 1, 0));
    let out = drive(&mut pool, &s, Duration::from_secs(3), |out| {
        out.iter().any(|(_, r)| r.is_ok())
    });
    let member = client.join().unwrap().expect("the member's handshake");
    assert_eq!(member.peer_node, 1);
    let ok: Vec<_> = out.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].peer_node, 2);
    assert_eq!(pool.stats.evicted.load(Relaxed), 1);
    assert!(closed(&mut strangers[0]), "the oldest stranger was closed");
    assert_eq!(pool.pending(), 3);
}
