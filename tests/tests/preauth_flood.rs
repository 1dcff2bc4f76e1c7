//! Unauthenticated sockets cannot starve members: 64 hostile connections to a node's data
//! port — silent, trickling one byte at a time, or sending a well-formed hello and then
//! nothing — each reopened as soon as the node closes it, delay the cluster's formation by
//! less than a second. (Before the bounded handshake pool, 16 silent sockets took every
//! handshake slot for 5 s each and further connections were accepted and closed: formation
//! took 15–20 s longer, or never happened within --connect-timeout.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ssi_tests::{launch, scratch_dir, secret_file, NodeOpts};

const HOSTILE: usize = 64;

/// How a hostile socket behaves until the node closes it.
#[derive(Clone, Copy)]
enum Hostile {
    /// Connects and sends nothing.
    Silent,
    /// Sends a plausible handshake one byte every 200 ms.
    Trickle,
    /// Sends a complete, well-formed client hello (no secret needed), then nothing.
    HelloThenStall,
}

fn client_hello() -> Vec<u8> {
    let mut b = Vec::with_capacity(80);
    b.extend_from_slice(b"SSHK");
    b.extend_from_slice(&[1, 1, 0, 0]); // version 1, client hello
    b.extend_from_slice(&0u16.to_le_bytes()); // node 0
    b.extend_from_slice(&0u16.to_le_bytes()); // shard
    b.extend_from_slice(&1u16.to_le_bytes()); // shard count
    b.extend_from_slice(&0u16.to_le_bytes()); // target
    let nonce: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
    b.extend_from_slice(&nonce);
    b.extend_from_slice(&[0u8; 32]); // digest
    b
}

/// Keeps one hostile socket open against `port` until `stop`, reopening it whenever the node
/// closes it; counts the connections made.
fn hostile(port: u16, kind: Hostile, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let hello = client_hello();
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        opened.fetch_add(1, Ordering::SeqCst);
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut sent = 0;
        if let Hostile::HelloThenStall = kind {
            let _ = s.write_all(&hello);
        }
        // Until the node closes the socket (EOF or an error) or the test ends.
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::SeqCst) {
            if let Hostile::Trickle = kind {
                if s.write_all(&hello[sent % hello.len()..][..1]).is_err() {
                    break;
                }
                sent += 1;
            }
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    }
}

/// Node 0 starts this long after node 1, so that the flood is in its steady state (sockets
/// expiring and reopening) when node 0 dials.
const NODE0_DELAY: Duration = Duration::from_millis(2500);

/// Starts a two-node cluster; while `flood` is set, 64 hostile sockets hammer node 1's data
/// port (the one node 0 dials) from the launch on. Returns the time from node 0's start
/// until both nodes formed, and the hostile connections made.
fn formation(flood: bool, tag: &str) -> (Duration, u64) {
    let dir = scratch_dir(tag);
    let s = secret_file(&dir, "secret", 61);
    let node = |id: u16| {
        let s = s.display().to_string();
        let cores = (id % 2).to_string();
        NodeOpts::new(
            id,
            &[
                "--memory",
                "16M",
                "--cores",
                &cores,
                "--idle",
                "block",
                "--cluster-secret-file",
                &s,
                "--connect-timeout",
                "60",
            ],
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let nodes = launch(&[node(0).start_after(NODE0_DELAY), node(1)]);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    if flood {
        let kinds = [Hostile::Silent, Hostile::Trickle, Hostile::HelloThenStall];
        for i in 0..HOSTILE {
            let (stop, opened, port) = (stop.clone(), opened.clone(), nodes[1].port);
            let kind = kinds[i % kinds.len()];
            threads.push(std::thread::spawn(move || {
                hostile(port, kind, stop, opened)
            }));
        }
    }
    for n in &nodes {
        assert!(
            n.wait_for_output("cluster formed", Duration::from_secs(90)),
            "node {} never formed (flood: {flood}):\n{}",
            n.id,
            n.output()
        );
    }
    let took = t0.elapsed().saturating_sub(NODE0_DELAY);
    // Keep the flood on a moment longer: the formed cluster keeps serving.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("hostile thread");
    }
    for n in &nodes {
        let out = n.output();
        assert!(!out.contains("panicked"), "{out}");
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    (took, opened.load(Ordering::SeqCst))
}

#[test]
fn hostile_sockets_delay_formation_by_less_than_a_second() {
    let (quiet, _) = formation(false, "flood-off");
    let (flooded, opened) = formation(true, "flood-on");
    eprintln!(
        "formation: {:.0} ms quiet, {:.0} ms with {HOSTILE} hostile sockets ({opened} connections)",
        quiet.as_secs_f64() * 1e3,
        flooded.as_secs_f64() * 1e3
    );
    assert!(
        opened >= 2 * HOSTILE as u64,
        "the flood never cycled (the node closes each socket, the attacker reopens it): \
         {opened} connections"
    );
    assert!(
        flooded <= quiet + Duration::from_secs(1),
        "formation took {flooded:?} under the flood, {quiet:?} without"
    );
}
