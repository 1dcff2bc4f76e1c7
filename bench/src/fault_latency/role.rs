//! A helper node: the hidden `fault-latency node` process. It binds its listening socket,
//! reports the port, starts an ssi-dp node when told the cluster, then runs set-up commands
//! from node 0 over its stdin/stdout, one line each way:
//!
//! | command | effect | reply |
//! |---|---|---|
//! | `start SECRET_HEX ID=ADDR=BYTES ...` | start the node (waits for the mesh) | `ok TRANSPORT LINE` |
//! | `write FIRST COUNT` | write this node's stamp into word 0 of each page | `ok` |
//! | `read FIRST COUNT WRITER` | read each page; check the stamp of `WRITER` (`-`: no check) | `ok` |
//! | `incr PAGE` | atomically add one to word 0 of `PAGE` | `ok NEW_VALUE` |
//! | `served` | answers (data, grants) sent since the last `served` (needs `--trace`) | `ok COUNT P50_NS P99_NS` |
//! | `bye` | expect the other nodes to leave | `ok` |
//! | `quit` | stop the node and exit | `ok` |
//!
//! A failure replies `err WHAT`. End of input (node 0 went away) ends the process.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::config::{ClusterSpec, NodeSpec};
use engine::node::{Node, NodeConfig};
use engine::shard::trace::ServeTrace;
use thiserror::Error;

use super::cli::RoleArgs;
use super::cluster::TRACE_RECORDS;
use super::stamp;
use crate::Latency;

/// Why a helper node could not do what it was told.
#[derive(Debug, Error)]
pub enum RoleError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A malformed command or cluster description.
    #[error("bad command {0:?}")]
    BadCommand(String),
    /// The node did not start.
    #[error("node start failed: {0}")]
    Node(#[from] engine::node::NodeError),
    /// A cluster description that the data plane refused.
    #[error("bad cluster: {0}")]
    Cluster(#[from] engine::config::ConfigError),
    /// A command came before `start`.
    #[error("the node is not started")]
    NotStarted,
    /// A page outside the address space.
    #[error("page range {first}+{count} is outside the address space ({pages} pages)")]
    Range {
        /// First page.
        first: u64,
        /// Pages.
        count: u64,
        /// Pages in the address space.
        pages: u64,
    },
    /// Reads that did not see the expected writer's stamp.
    #[error(
        "{wrong} pages read wrong values (first: page {page} read {got:#x}, expected {want:#x})"
    )]
    WrongData {
        /// Pages that read wrong.
        wrong: u64,
        /// The first of them.
        page: u64,
        /// What it read.
        got: u64,
        /// What it should have read.
        want: u64,
    },
}

/// Encodes the cluster for the `start` command: `ID=ADDR=BYTES` per node.
pub fn encode_cluster(nodes: &[NodeSpec]) -> String {
    nodes
        .iter()
        .map(|n| format!("{}={}={}", n.id, n.addr, n.memory))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decodes one `ID=ADDR=BYTES` entry.
pub fn decode_node(s: &str) -> Result<NodeSpec, RoleError> {
    let bad = || RoleError::BadCommand(s.to_string());
    let mut it = s.splitn(3, '=');
    let id: u16 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let addr: SocketAddr = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let memory: u64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    Ok(NodeSpec { id, addr, memory })
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

struct Helper {
    args: RoleArgs,
    listener: Option<TcpListener>,
    node: Option<Node>,
    served_cursors: Vec<u64>,
    served: Vec<ServeTrace>,
}

impl Helper {
    fn word(&self, page: u64) -> Result<&AtomicU64, RoleError> {
        let node = self.node.as_ref().ok_or(RoleError::NotStarted)?;
        let pages = node.layout().end_page();
        if page >= pages {
            return Err(RoleError::Range {
                first: page,
                count: 1,
                pages,
            });
        }
        // SAFETY: the page lies inside the node's region, which lives as long as the node
        // (owned by `self`); word 0 is 8-byte aligned and only accessed atomically.
        Ok(unsafe { AtomicU64::from_ptr(node.page_ptr(page).cast()) })
    }

    fn range(&self, first: &str, count: &str) -> Result<(u64, u64), RoleError> {
        let bad = || RoleError::BadCommand(format!("{first} {count}"));
        let first: u64 = first.parse().map_err(|_| bad())?;
        let count: u64 = count.parse().map_err(|_| bad())?;
        let node = self.node.as_ref().ok_or(RoleError::NotStarted)?;
        let pages = node.layout().end_page();
        if first.checked_add(count).is_none_or(|end| end > pages) {
            return Err(RoleError::Range {
                first,
                count,
                pages,
            });
        }
        Ok((first, count))
    }

    fn start(&mut self, secret: &str, nodes: &[&str]) -> Result<String, RoleError> {
        let secret = unhex(secret).ok_or_else(|| RoleError::BadCommand(secret.into()))?;
        let mut me = None;
        let mut peers = Vec::new();
        for n in nodes {
            let spec = decode_node(n)?;
            if spec.id == self.args.id {
                me = Some(spec);
            } else {
                peers.push(spec);
            }
        }
        let me = me.ok_or_else(|| RoleError::BadCommand("this node is not listed".into()))?;
        let listener = self.listener.take().ok_or(RoleError::NotStarted)?;
        let mut cfg = NodeConfig::new(ClusterSpec::new(me, peers)?, listener, secret);
        cfg.cores = vec![self.args.cpu];
        cfg.pin = true;
        cfg.idle = self.args.idle;
        cfg.transport = self.args.transport;
        cfg.frame_auth = self.args.auth;
        cfg.connect_timeout = Duration::from_secs(self.args.connect_timeout);
        if self.args.trace {
            cfg.fault_trace = TRACE_RECORDS;
        }
        let node = Node::start(cfg)?;
        let line = node.transport_line().to_string();
        self.node = Some(node);
        Ok(line)
    }

    fn command(&mut self, line: &str) -> Result<(String, bool), RoleError> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let bad = || RoleError::BadCommand(line.to_string());
        let me = self.args.id;
        match w.as_slice() {
            ["start", secret, nodes @ ..] => Ok((self.start(secret, nodes)?, false)),
            ["write", first, count] => {
                let (first, count) = self.range(first, count)?;
                for p in first..first + count {
                    self.word(p)?.store(stamp(me, p), Ordering::Release);
                }
                Ok((String::new(), false))
            }
            ["read", first, count, writer] => {
                let (first, count) = self.range(first, count)?;
                let writer: Option<u16> = match *writer {
                    "-" => None,
                    w => Some(w.parse().map_err(|_| bad())?),
                };
                let mut wrong = 0;
                let mut first_wrong = None;
                for p in first..first + count {
                    let got = self.word(p)?.load(Ordering::Acquire);
                    if let Some(w) = writer {
                        if got != stamp(w, p) {
                            wrong += 1;
                            first_wrong.get_or_insert((p, got, stamp(w, p)));
                        }
                    }
                }
                match first_wrong {
                    None => Ok((String::new(), false)),
                    Some((page, got, want)) => Err(RoleError::WrongData {
                        wrong,
                        page,
                        got,
                        want,
                    }),
                }
            }
            ["incr", page] => {
                let page: u64 = page.parse().map_err(|_| bad())?;
                let new = self.word(page)?.fetch_add(1, Ordering::AcqRel) + 1;
                Ok((new.to_string(), false))
            }
            ["served"] => {
                let node = self.node.as_ref().ok_or(RoleError::NotStarted)?;
                let rings = node.traces();
                self.served_cursors.resize(rings.len(), 0);
                let mut lat = Latency::new();
                for (r, cursor) in rings.iter().zip(self.served_cursors.iter_mut()) {
                    self.served.clear();
                    r.served.read_since(cursor, &mut self.served);
                    for t in &self.served {
                        lat.record(t.sent_ns.saturating_sub(t.received_ns));
                    }
                }
                Ok((
                    format!(
                        "{} {} {}",
                        lat.count(),
                        lat.percentile(50.0),
                        lat.percentile(99.0)
                    ),
                    false,
                ))
            }
            ["bye"] => {
                if let Some(n) = &self.node {
                    n.state().expect_departures();
                }
                Ok((String::new(), false))
            }
            ["quit"] => Ok((String::new(), true)),
            _ => Err(bad()),
        }
    }
}

/// Runs a helper node until `quit` or end of input; returns the exit code.
pub fn run(args: RoleArgs) -> i32 {
    // The node must not outlive the benchmark that drives it.
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // Every thread of the node (set-up touches included) stays on its CPU, so that the
    // node's memory map is never live on node 0's CPUs: write-protecting or dropping one of
    // its pages then needs no TLB shoot-down IPI to them.
    if let Err(e) = crate::pin_current_thread(args.cpu) {
        eprintln!("fault-latency node {}: {e}", args.id);
    }
    let listener = match TcpListener::bind(&args.bind) {
        Ok(l) => l,
        Err(source) => {
            let e = RoleError::Bind {
                addr: args.bind.clone(),
                source,
            };
            println!("err {e}");
            return 1;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut out = std::io::stdout().lock();
    if writeln!(out, "port {port}")
        .and_then(|_| out.flush())
        .is_err()
    {
        return 1;
    }
    let mut h = Helper {
        args,
        listener: Some(listener),
        node: None,
        served_cursors: Vec::new(),
        served: Vec::with_capacity(TRACE_RECORDS),
    };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let (reply, quit) = match h.command(&line) {
            Ok((r, q)) => (format!("ok {r}"), q),
            Err(e) => (format!("err {e}"), false),
        };
        if writeln!(out, "{}", reply.trim_end())
            .and_then(|_| out.flush())
            .is_err()
        {
            break;
        }
        if quit {
            break;
        }
    }
    if let Some(n) = h.node.take() {
        n.state().expect_departures();
        n.shutdown();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_lines_round_trip() {
        let nodes = vec![
            NodeSpec {
                id: 0,
                addr: "127.0.0.1:7000".parse().unwrap(),
                memory: 4096,
            },
            NodeSpec {
                id: 3,
                addr: "10.1.2.3:9".parse().unwrap(),
                memory: 0,
            },
        ];
        let line = encode_cluster(&nodes);
        let back: Vec<NodeSpec> = line
            .split_whitespace()
            .map(|s| decode_node(s).unwrap())
            .collect();
        assert_eq!(back, nodes);
        assert!(decode_node("1=nowhere=5").is_err());
        assert!(decode_node("1=127.0.0.1:1").is_err());
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&b)).unwrap(), b);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
