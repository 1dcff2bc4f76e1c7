//! Sockets and processes for the suite: loopback pairs, handshake configurations, raw peers
//! speaking the wire format by hand, child processes of the test binary, and network
//! namespaces joined by a veth pair that are removed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::handshake::{self, Authenticated, HandshakeConfig};
use crate::{Header, MsgType, HEADER_LEN};

/// The cluster secret of test clusters.
pub const SECRET: &[u8] = b"ssi-dp testkit cluster secret";
/// The layout digest of test clusters.
pub const DIGEST: [u8; 32] = [0x5a; 32];

/// A handshake configuration for test node `node`.
pub fn hs(node: u16) -> HandshakeConfig {
    let mut c = HandshakeConfig::new(node, SECRET, DIGEST).expect("test handshake config");
    c.timeout = Duration::from_secs(20);
    c
}

/// A connected loopback pair (client, server), blocking.
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let c = TcpStream::connect(l.local_addr().expect("local addr")).expect("connect loopback");
    let (s, _) = l.accept().expect("accept loopback");
    (c, s)
}

/// An authenticated loopback pair: (client as node `c` having dialled node `s`, server).
pub fn auth_pair(c: u16, s: u16) -> (Authenticated, Authenticated) {
    auth_pair_sealed(c, s, crate::FrameAuth::default())
}

/// [`auth_pair`] whose frames are protected in mode `auth`.
pub fn auth_pair_sealed(c: u16, s: u16, auth: crate::FrameAuth) -> (Authenticated, Authenticated) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("local addr");
    let with = move |node| {
        let mut cfg = hs(node);
        cfg.frame_auth = auth;
        cfg
    };
    let server = std::thread::spawn(move || handshake::accept(&l, &with(s)));
    let client = handshake::connect(addr, &with(c), s, 0).expect("client handshake");
    let server = server
        .join()
        .expect("server thread")
        .expect("server handshake");
    (client, server)
}

/// Accepts one authenticated connection, giving up after `limit` or when `child` (if any)
/// exits first.
pub fn accept_within(
    l: &TcpListener,
    cfg: &HandshakeConfig,
    mut child: Option<&mut Child>,
    limit: Duration,
) -> Authenticated {
    l.set_nonblocking(true).expect("nonblocking listener");
    let deadline = Instant::now() + limit;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                return handshake::accept_stream(s, cfg).expect("server handshake");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(Ok(Some(st))) = child.as_mut().map(|c| c.try_wait()) {
                    panic!("child exited before connecting: {st}");
                }
                assert!(
                    Instant::now() < deadline,
                    "nobody connected within {limit:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Dials `addr` with handshake as `node`, retrying refused connections for up to `limit`.
pub fn connect_retry(addr: SocketAddr, node: u16, server: u16, limit: Duration) -> Authenticated {
    let deadline = Instant::now() + limit;
    loop {
        match handshake::connect(addr, &hs(node), server, 0) {
            Ok(a) => return a,
            Err(e) if Instant::now() < deadline => {
                eprintln!("testkit: connect to {addr} failed ({e}); retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect to {addr}: {e}"),
        }
    }
}

/// Encodes `h` (without validating it: malformed frames are built this way).
pub fn raw_header(h: &Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    h.encode(&mut b);
    b
}

/// Writes a `Ping` from node `sender` with `txn` on a blocking raw socket.
pub fn raw_ping(s: &mut TcpStream, sender: u16, txn: u64) {
    let mut h = Header::new(MsgType::Ping, sender);
    h.txn = txn;
    s.write_all(&raw_header(&h)).expect("raw ping");
}

/// Reads one header-only frame from a blocking raw socket.
pub fn raw_read_header(s: &mut TcpStream) -> Header {
    let mut b = [0u8; HEADER_LEN];
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.read_exact(&mut b).expect("raw read");
    Header::decode(&b).expect("valid header from the transport")
}

/// Whether the peer closed `s` (EOF or reset) within `limit`.
pub fn raw_sees_close(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Environment variable naming a child's role.
pub const ROLE: &str = "SSI_TESTKIT_ROLE";
/// Environment variable with the address a child connects to or binds.
pub const ADDR: &str = "SSI_TESTKIT_ADDR";
/// Environment variable with the number of messages a child sends.
pub const COUNT: &str = "SSI_TESTKIT_COUNT";

/// Runs this test binary's `testkit_child` test as a child process with `role`, optionally
/// prefixed by a wrapper command (e.g. `ip netns exec NAME`).
pub fn spawn_child(role: &str, addr: &str, count: u64, wrapper: &[&str]) -> Child {
    let exe = std::env::current_exe().expect("current test binary");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args([
        "--exact",
        "testkit_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .env(ADDR, addr)
    .env(COUNT, count.to_string())
    .stdin(Stdio::null());
    cmd.spawn().expect("spawning the test binary as a child")
}

/// Waits for `child` up to `limit`, killing it if it runs longer; returns whether it
/// succeeded.
pub fn wait_child(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(st) => return st.success(),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Two network namespaces joined by a veth pair, removed on drop.
#[derive(Debug)]
pub struct VethPair {
    /// Namespace of side A.
    pub ns_a: String,
    /// Namespace of side B.
    pub ns_b: String,
    /// Address of side A.
    pub addr_a: String,
    /// Address of side B.
    pub addr_b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl VethPair {
    /// Creates the namespaces and the link; `Err` says why it could not (the caller skips).
    pub fn create(tag: &str) -> Result<VethPair, String> {
        let id = std::process::id();
        let sub = (id % 200) + 20;
        let v = VethPair {
            ns_a: format!("ssitk-{tag}-{id}-a"),
            ns_b: format!("ssitk-{tag}-{id}-b"),
            addr_a: format!("10.213.{sub}.1"),
            addr_b: format!("10.213.{sub}.2"),
        };
        let (va, vb) = (format!("stka{id}"), format!("stkb{id}"));
        ip(&["netns", "add", &v.ns_a])?;
        // From here on, Drop removes whatever was created.
        ip(&["netns", "add", &v.ns_b])?;
        ip(&[
            "link", "add", &va, "netns", &v.ns_a, "type", "veth", "peer", "name", &vb, "netns",
            &v.ns_b,
        ])?;
        for (ns, dev, addr) in [(&v.ns_a, &va, &v.addr_a), (&v.ns_b, &vb, &v.addr_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(v)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        for ns in [&self.ns_a, &self.ns_b] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                if !e.contains("No such file") {
                    eprintln!("testkit: cleanup: {e}");
                }
            }
        }
    }
}
