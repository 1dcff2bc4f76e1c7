//! A node's REST API keeps answering while slow clients hold connections: with 64 clients
//! that each send a request head one byte per second (and reconnect when closed), `GET
//! /metrics` answers in under a second every time. (Before the API read requests without
//! blocking, 4 such clients held all 4 worker threads and `/metrics` took 8.7 s.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ssi_tests::{launch, scratch_dir, secret_file, NodeOpts};

const SLOW_CLIENTS: usize = 64;

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out))
}

/// Sends a request head one byte per second until the server closes the connection, then
/// does it again, until `stop`.
fn slowloris(port: u16, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        opened.fetch_add(1, Ordering::SeqCst);
        // A slow client need not check its own socket options: the server is under test.
        let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
        let mut buf = [0u8; 512];
        for b in head.iter().cycle() {
            if stop.load(Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                break;
            }
            // Waits a second for the next byte; an answer (a 408) or a close ends this one.
            match s.read(&mut buf) {
                Ok(_) => break,
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

#[test]
fn metrics_answer_within_a_second_while_64_slow_clients_are_connected() {
    let dir = scratch_dir("slowloris");
    let s = secret_file(&dir, "secret", 71);
    let api = ssi_tests::free_port();
    let node = |id: u16| {
        let s = s.display().to_string();
        let cores = (id % 2).to_string();
        let mut a = vec![
            "--memory".to_string(),
            "16M".into(),
            "--cores".into(),
            cores,
            "--idle".into(),
            "block".into(),
            "--cluster-secret-file".into(),
            s,
        ];
        if id == 0 {
            a.extend(["--api-addr".into(), format!("127.0.0.1:{api}")]);
        }
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let nodes = launch(&[node(0), node(1)]);
    assert!(
        nodes[0].wait_for_output("REST API on", Duration::from_secs(60)),
        "{}",
        nodes[0].output()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || slowloris(api, stop, opened))
        })
        .collect();
    // Let every slow client connect and start trickling.
    let deadline = Instant::now() + Duration::from_secs(10);
    while opened.load(Ordering::SeqCst) < SLOW_CLIENTS as u64 {
        assert!(
            Instant::now() < deadline,
            "the slow clients never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Scrapes through 8 s: past the server's 5 s request deadline, so slow clients are cut
    // off and reconnect meanwhile.
    let mut worst = Duration::ZERO;
    for _ in 0..16 {
        let t0 = Instant::now();
        let r = get(api, "/metrics");
        let took = t0.elapsed();
        let (status, body) = r.expect("GET /metrics got no answer");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("ssi_dp_faults_total"), "{body}");
        worst = worst.max(took);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("slow client");
    }
    let opened = opened.load(Ordering::SeqCst);
    eprintln!(
        "GET /metrics: slowest of 16 took {:.1} ms with {SLOW_CLIENTS} slow clients ({opened} connections)",
        worst.as_secs_f64() * 1e3
    );
    assert!(
        worst < Duration::from_secs(1),
        "/metrics took {worst:?} with {SLOW_CLIENTS} slow clients"
    );
    assert!(
        opened > SLOW_CLIENTS as u64,
        "the server never cut a slow client off: {opened} connections"
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
