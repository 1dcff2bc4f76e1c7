//! A byte altered on the path between two real node processes: a proxy between node 0 and
//! node 1 flips one bit of the frame stream from node 1. With frames authenticated (the
//! default, `--frame-auth mac`), node 0 refuses the altered frame and names the reason;
//! nothing altered reaches guest memory. The connection is then treated like any broken
//! connection between live nodes: node 0 dials again, the session resumes and node 1 sends
//! the frame again, intact (the proxy alters only the first connection), and the workload,
//! which checks every value it reads, finishes on both nodes. Before frames carried a tag, a
//! flipped bit in a page payload was installed silently; before sessions, the refusal
//! stopped both nodes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ssi_tests::{assert_all_ok, launch, scratch_dir, secret_file, wait_all, NodeOpts};

const TIMEOUT: Duration = Duration::from_secs(240);
/// Bytes of node 1's stream passed unchanged: the handshake (server hello, MAC, accept: 156
/// bytes) and the first frames.
const FLIP_AT: usize = 20_000;

/// Copies `from` to `to`, flipping one bit at byte `flip` when given.
fn pump(mut from: TcpStream, mut to: TcpStream, flip: Option<usize>) {
    let mut buf = [0u8; 8192];
    let mut seen = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(f) = flip {
            if (seen..seen + n).contains(&f) {
                buf[f - seen] ^= 0x04;
            }
        }
        seen += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // The other direction learns the end; errors mean it is already gone.
    let _ = to.shutdown(Shutdown::Write);
}

/// Forwards every connection to `listener` to the port `target` sends, tampering with the
/// first connection's replies.
fn proxy(listener: TcpListener, target: mpsc::Receiver<u16>) {
    let mut first = true;
    let mut port = None;
    for c in listener.incoming() {
        let Ok(client) = c else { break };
        let Some(port) = *port.get_or_insert_with(|| target.recv().ok()) else {
            break;
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let (c2, s2) = match (client.try_clone(), server.try_clone()) {
            (Ok(c2), Ok(s2)) => (c2, s2),
            _ => continue,
        };
        let flip = first.then_some(FLIP_AT);
        first = false;
        thread::spawn(move || pump(client, s2, None));
        thread::spawn(move || pump(server, c2, flip));
    }
}

#[test]
fn a_flipped_bit_on_the_path_is_refused_not_installed_and_sent_again() {
    let dir = scratch_dir("tamper");
    let secret = secret_file(&dir, "secret", 5);
    let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let proxy_port = l.local_addr().expect("addr").port();
    let (target, port_rx) = mpsc::channel();
    thread::spawn(move || proxy(l, port_rx));
    let args = |id: u16| {
        vec![
            "--cores".to_string(),
            (id % 2).to_string(),
            "--idle".into(),
            "block".into(),
            "--cluster-secret-file".into(),
            secret.display().to_string(),
            "--memory".into(),
            "16M".into(),
            "--workload".into(),
            "seqs".into(),
            "--ops".into(),
            "50000".into(),
            "--connect-timeout".into(),
            "60".into(),
        ]
    };
    let a0 = args(0);
    let mut n0 = NodeOpts::new(0, &a0.iter().map(String::as_str).collect::<Vec<_>>());
    // Node 0 dials node 1 (the lower id dials), through the proxy.
    n0.peers = Some(Vec::new());
    n0.extra_peers = vec![format!("1@127.0.0.1:{proxy_port}")];
    let a1 = args(1);
    let n1 = NodeOpts::new(1, &a1.iter().map(String::as_str).collect::<Vec<_>>());
    let procs = launch(&[n0, n1]);
    target
        .send(procs[1].port)
        .expect("the proxy waits for the port");
    let r = wait_all(procs, TIMEOUT);
    for (id, status, out) in &r {
        eprintln!("node {id} ({status:?}):\n{out}");
    }
    let out0 = &r[0].2;
    assert!(
        out0.contains("a frame failed authentication"),
        "node 0 must refuse the altered frame and say why:\n{out0}"
    );
    assert!(
        out0.contains("restored after"),
        "node 0 must resume the session on a new connection:\n{out0}"
    );
    // Both finish with their checks passed: nothing altered reached the workload.
    assert_all_ok(&r);
    // Best effort: a scratch directory left behind is harmless.
    let _ = std::fs::remove_dir_all(&dir);
}
