//! Transport round-trip benchmark: a header-only request (40 bytes, the 16-byte-request
//! equivalent) answered by a 4 KiB page response, over loopback TCP between two threads
//! pinned to two CPUs (client on `--client-cpu`, server on `--server-cpu`).
//!
//! Rows, all in one run: io_uring busy-poll, io_uring blocking wait, epoll busy-poll, epoll
//! blocking wait, and the reference: a minimal non-blocking `std::net::TcpStream` spin loop
//! moving the same bytes. Prints p50/p90/p99/p99.9/max, round trips per second, the CPU
//! placement and idle policy, and the ratio io_uring busy-poll p50 / reference p50.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Instant;

use bench::{current_affinity, header, pin_current_thread, Latency};
use clap::Parser;
use transport_epoll::EpollTransport;
use transport_uring::UringTransport;
use wire::{
    Event, FrameKeys, Header, MsgType, PageRef, Payload, SendOutcome, Transport, TransportConfig,
    HEADER_LEN, PAGE_SIZE,
};

#[derive(Parser, Debug)]
#[command(about = "Request → 4 KiB response round-trip latency per transport")]
struct Args {
    /// Measured round trips per row.
    #[arg(long, default_value_t = 20_000)]
    iters: u64,
    /// Unmeasured round trips before each row.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// CPU of the client thread.
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// CPU of the server thread.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// Run only rows whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Idle {
    Spin,
    Block,
}

struct Outcome {
    lat: Latency,
    per_sec: f64,
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    c.set_nodelay(true).expect("nodelay");
    s.set_nodelay(true).expect("nodelay");
    (c, s)
}

fn pin(cpu: usize, who: &str) {
    if let Err(e) = pin_current_thread(cpu) {
        eprintln!("warning: could not pin the {who} thread to CPU {cpu}: {e}");
    }
}

/// The reference: blocking-free spin loops on plain sockets moving the same bytes.
fn reference(args: &Args) -> Outcome {
    let (mut c, mut s) = pair();
    c.set_nonblocking(true).expect("nonblocking");
    s.set_nonblocking(true).expect("nonblocking");
    let total = args.iters + args.warmup;
    let server_cpu = args.server_cpu;
    let server = thread::spawn(move || {
        pin(server_cpu, "server");
        let mut resp = vec![0x5au8; HEADER_LEN + PAGE_SIZE];
        let mut h = Header::new(MsgType::Data, 2);
        h.set_payload_len(PAGE_SIZE as u32);
        let mut hb = [0u8; HEADER_LEN];
        h.encode(&mut hb);
        resp[..HEADER_LEN].copy_from_slice(&hb);
        let mut req = [0u8; HEADER_LEN];
        for _ in 0..total {
            spin_read(&mut s, &mut req);
            spin_write(&mut s, &resp);
        }
    });
    pin(args.client_cpu, "client");
    let mut req = [0u8; HEADER_LEN];
    Header::new(MsgType::ReadReq, 1).encode(&mut req);
    let mut resp = vec![0u8; HEADER_LEN + PAGE_SIZE];
    let mut lat = Latency::new();
    let mut start = Instant::now();
    for i in 0..total {
        if i == args.warmup {
            start = Instant::now();
        }
        let t0 = Instant::now();
        spin_write(&mut c, &req);
        spin_read(&mut c, &mut resp);
        if i >= args.warmup {
            lat.record_since(t0);
        }
    }
    let per_sec = args.iters as f64 / start.elapsed().as_secs_f64();
    server.join().expect("server thread");
    Outcome { lat, per_sec }
}

fn spin_read(s: &mut TcpStream, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!("reference peer closed"),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("reference read: {e}"),
        }
    }
}

fn spin_write(s: &mut TcpStream, buf: &[u8]) {
    let mut put = 0;
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(n) => put += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("reference write: {e}"),
        }
    }
}

/// Polls until `want` returns a value, spinning or sleeping in `wait` when idle.
fn next_event<T: Transport, R>(
    t: &mut T,
    idle: Idle,
    mut want: impl FnMut(&mut T, Event) -> Option<R>,
) -> R {
    let mut found = None;
    loop {
        let mut evs: [Option<Event>; 8] = Default::default();
        let mut k = 0;
        t.poll(|e| {
            if k < evs.len() {
                evs[k] = Some(e);
                k += 1;
            }
        })
        .expect("poll");
        for e in evs.iter_mut().take(k).filter_map(Option::take) {
            if found.is_none() {
                found = want(t, e);
            }
        }
        if let Some(r) = found {
            return r;
        }
        if idle == Idle::Block && k == 0 {
            t.wait(None).expect("wait");
        }
    }
}

fn transport_row<T: Transport + 'static>(
    args: &Args,
    idle: Idle,
    make: fn(&TransportConfig) -> T,
) -> Outcome {
    let (c, s) = pair();
    let cfg = TransportConfig {
        poll_budget: 8,
        ..TransportConfig::default()
    };
    let total = args.iters + args.warmup;
    let server_cpu = args.server_cpu;
    let scfg = cfg.clone();
    let server = thread::spawn(move || {
        pin(server_cpu, "server");
        let mut t = make(&scfg);
        t.add_peer(1, s, Some(1), &FrameKeys::none())
            .expect("add_peer");
        let page = vec![0x5au8; PAGE_SIZE];
        // SAFETY: `page` is never written, and it is dropped only after the transport (explicit
        // drops at the end of this closure), which waits for its zero-copy sends on drop.
        let pref = unsafe { PageRef::new(page.as_ptr(), PAGE_SIZE) };
        let mut resp = Header::new(MsgType::Data, 2);
        resp.set_payload_len(PAGE_SIZE as u32);
        for expected in 0..total {
            let txn = next_event(&mut t, idle, |t, e| match e {
                Event::Received {
                    header, payload, ..
                } => {
                    if let Some(b) = payload {
                        t.release(b);
                    }
                    Some(header.txn)
                }
                Event::PeerDown { reason, .. } => panic!("client went down: {reason}"),
                _ => None,
            });
            assert_eq!(txn, expected, "requests arrive once each, in order");
            resp.txn = txn;
            loop {
                match t.send(1, &resp, Payload::Page(pref), txn).expect("send") {
                    SendOutcome::Queued => break,
                    SendOutcome::Backpressure => {
                        t.poll(|_| {}).expect("poll");
                    }
                }
            }
            t.flush().expect("flush");
        }
        // Let the last zero-copy sends complete before the page goes away.
        drop(t);
        drop(page);
    });
    pin(args.client_cpu, "client");
    let mut t = make(&cfg);
    t.add_peer(1, c, Some(2), &FrameKeys::none())
        .expect("add_peer");
    let mut req = Header::new(MsgType::ReadReq, 1);
    let mut lat = Latency::new();
    let mut start = Instant::now();
    for i in 0..total {
        if i == args.warmup {
            start = Instant::now();
        }
        let t0 = Instant::now();
        req.txn = i;
        assert_eq!(
            t.send(1, &req, Payload::None, 0).expect("send"),
            SendOutcome::Queued
        );
        t.flush().expect("flush");
        next_event(&mut t, idle, |t, e| match e {
            Event::Received {
                header, payload, ..
            } if header.txn == i => {
                if let Some(b) = payload {
                    assert_eq!(t.payload(&b).len(), PAGE_SIZE);
                    t.release(b);
                }
                Some(())
            }
            Event::PeerDown { reason, .. } => panic!("server went down: {reason}"),
            _ => None,
        });
        if i >= args.warmup {
            lat.record_since(t0);
        }
    }
    let per_sec = args.iters as f64 / start.elapsed().as_secs_f64();
    server.join().expect("server thread");
    Outcome { lat, per_sec }
}

fn uring(cfg: &TransportConfig) -> UringTransport {
    UringTransport::new(cfg).expect("io_uring transport")
}

fn uring_zc(cfg: &TransportConfig) -> UringTransport {
    let cfg = TransportConfig {
        zero_copy: true,
        ..cfg.clone()
    };
    UringTransport::new(&cfg).expect("io_uring transport")
}

fn epoll(cfg: &TransportConfig) -> EpollTransport {
    EpollTransport::new(cfg).expect("epoll transport")
}

fn main() {
    let args = Args::parse();
    println!(
        "transport_rtt: 40-byte request -> 40-byte header + 4096-byte page response, loopback TCP"
    );
    println!(
        "placement: client thread pinned to CPU {}, server thread pinned to CPU {} (process affinity {}, {} CPUs online); two threads of one process",
        args.client_cpu,
        args.server_cpu,
        current_affinity(),
        bench::online_cpus()
    );
    println!("{}", transport_uring::choose());
    println!(
        "iterations: {} measured + {} warm-up per row; idle policy per row in its name (spin: busy poll, block: sleep in wait())",
        args.iters, args.warmup
    );
    type Row = (&'static str, Box<dyn Fn(&Args) -> Outcome>);
    let rows: Vec<Row> = vec![
        ("reference (std spin)", Box::new(reference)),
        (
            "uring-spin",
            Box::new(|a| transport_row(a, Idle::Spin, uring)),
        ),
        (
            "uring-block",
            Box::new(|a| transport_row(a, Idle::Block, uring)),
        ),
        (
            "uring-spin (zero-copy send)",
            Box::new(|a| transport_row(a, Idle::Spin, uring_zc)),
        ),
        (
            "epoll-spin",
            Box::new(|a| transport_row(a, Idle::Spin, epoll)),
        ),
        (
            "epoll-block",
            Box::new(|a| transport_row(a, Idle::Block, epoll)),
        ),
    ];
    println!("{}  {:>12}", header(), "round trips/s");
    let mut p50 = std::collections::HashMap::new();
    for (name, run) in rows {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let o = run(&args);
        p50.insert(name, o.lat.percentile(50.0));
        println!("{}  {:>12.0}", o.lat.row(name), o.per_sec);
    }
    if let (Some(&u), Some(&r)) = (p50.get("uring-spin"), p50.get("reference (std spin)")) {
        println!(
            "ratio uring-spin p50 / reference p50 = {:.2} (target <= 1.20)",
            u as f64 / r.max(1) as f64
        );
    }
}
