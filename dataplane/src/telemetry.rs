//! A minimal Prometheus endpoint (`--metrics-addr`): `GET /metrics` returns the node's
//! counters and fault service-time summaries in the text exposition format. It runs on its
//! own low-priority thread, reads only the atomics the shards publish, and serves one
//! request at a time with short timeouts.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::node::Node;
use crate::stats::{sum, FaultKind, Locality};
use crate::summary;

/// A running metrics endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: std::net::SocketAddr,
}

impl MetricsServer {
    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `/metrics` for `node` on `addr`.
pub fn serve(addr: &str, node: Arc<Node>) -> Result<MetricsServer, String> {
    let l = TcpListener::bind(addr).map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let bound = l.local_addr().map_err(|e| e.to_string())?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ssi-dp-metrics".into())
        .spawn(move || {
            // Low priority: never compete with the data plane.
            // SAFETY: plain syscall on the calling thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            while !s2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(stream, &node);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(MetricsServer {
        stop,
        thread: Some(thread),
        addr: bound,
    })
}

fn answer(mut s: TcpStream, node: &Node) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = [0u8; 2048];
    let n = s.read(&mut req)?;
    let line = std::str::from_utf8(&req[..n])
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let (status, body) = if line.starts_with("GET /metrics ") || line == "GET /metrics" {
        ("200 OK", render(node))
    } else {
        (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
        )
    };
    write!(
        s,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The exposition text.
pub fn render(node: &Node) -> String {
    let st = node.stats();
    let mut o = String::new();
    let id = node.id();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP ssi_dp_{name} {help}\n# TYPE ssi_dp_{name} counter\nssi_dp_{name}{{node=\"{id}\"}} {v}");
    };
    counter(
        "messages_sent_total",
        "Protocol messages sent.",
        sum(st, |x| &x.msgs_sent),
    );
    counter(
        "messages_received_total",
        "Protocol messages received.",
        sum(st, |x| &x.msgs_received),
    );
    counter(
        "page_bytes_sent_total",
        "Page payload bytes sent.",
        sum(st, |x| &x.bytes_sent),
    );
    counter(
        "page_bytes_received_total",
        "Page payload bytes received.",
        sum(st, |x| &x.bytes_received),
    );
    counter(
        "faults_failed_total",
        "Faults that could not be served.",
        sum(st, |x| &x.faults_failed),
    );
    counter(
        "pages_lost_total",
        "Pages lost with a dead exclusive owner.",
        sum(st, |x| &x.pages_lost),
    );
    counter(
        "protocol_violations_total",
        "Protocol violations by peers.",
        sum(st, |x| &x.violations),
    );
    let _ = writeln!(o, "# HELP ssi_dp_faults_total Faults served, by kind and home locality.\n# TYPE ssi_dp_faults_total counter");
    for kind in FaultKind::ALL {
        for loc in [Locality::Home, Locality::Remote] {
            let _ = writeln!(
                o,
                "ssi_dp_faults_total{{node=\"{id}\",kind=\"{}\",home=\"{}\"}} {}",
                kind.name(),
                loc.name(),
                summary::served(st, kind, loc)
            );
        }
    }
    let _ = writeln!(o, "# HELP ssi_dp_fault_service_seconds Fault service time (userfaultfd read to install).\n# TYPE ssi_dp_fault_service_seconds summary");
    for (name, h) in summary::series(st) {
        for q in [0.5, 0.99, 0.999] {
            let _ = writeln!(
                o,
                "ssi_dp_fault_service_seconds{{node=\"{id}\",series=\"{name}\",quantile=\"{q}\"}} {}",
                h.value_at_quantile(q) as f64 / 1e9
            );
        }
        let _ = writeln!(
            o,
            "ssi_dp_fault_service_seconds_count{{node=\"{id}\",series=\"{name}\"}} {}",
            h.len()
        );
    }
    o
}
