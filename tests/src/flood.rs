//! Hostile clients for tests: sockets that connect to a node's ports and hold them without
//! authenticating — silent, trickling one byte at a time, or sending a well-formed data-plane
//! hello and then nothing — each reopened as soon as the node closes it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How a hostile socket behaves until the node closes it.
#[derive(Debug, Clone, Copy)]
pub enum Hostile {
    /// Connects and sends nothing.
    Silent,
    /// Sends a plausible handshake one byte every 200 ms.
    Trickle,
    /// Sends a complete, well-formed client hello (no secret needed), then nothing.
    HelloThenStall,
}

fn client_hello() -> Vec<u8> {
    let mut b = Vec::with_capacity(wire::handshake::PREFIX_LEN + wire::handshake::HELLO_BODY_LEN);
    b.extend_from_slice(b"SSHK");
    b.extend_from_slice(&[wire::handshake::HS_VERSION, 1, 0, 0]); // client hello
    b.extend_from_slice(&0u16.to_le_bytes()); // node 0
    b.extend_from_slice(&0u16.to_le_bytes()); // shard
    b.extend_from_slice(&1u16.to_le_bytes()); // shard count
    b.extend_from_slice(&0u16.to_le_bytes()); // target
    let nonce: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
    b.extend_from_slice(&nonce);
    b.extend_from_slice(&[0u8; 32]); // digest
    let share: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(91) ^ 0x33);
    b.extend_from_slice(&share); // X25519 key share
    b.extend_from_slice(&[1, 0, 0, 0]); // frame protection: mac
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
        // A hostile client need not check its own socket options: the node's behaviour is
        // what is tested.
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

/// A running flood; [`Flood::stop`] ends it.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Flood {
    /// `sockets` hostile sockets spread over `ports` (127.0.0.1), cycling through the
    /// three behaviours.
    pub fn start(ports: &[u16], sockets: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let kinds = [Hostile::Silent, Hostile::Trickle, Hostile::HelloThenStall];
        let threads = (0..sockets)
            .map(|i| {
                let (stop, opened) = (stop.clone(), opened.clone());
                let port = ports[i % ports.len()];
                let kind = kinds[i % kinds.len()];
                std::thread::spawn(move || hostile(port, kind, stop, opened))
            })
            .collect();
        Flood {
            stop,
            opened,
            threads,
        }
    }

    /// Connections made so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    /// Stops every socket; returns the connections made.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("hostile thread");
        }
        self.opened.load(Ordering::SeqCst)
    }
}
