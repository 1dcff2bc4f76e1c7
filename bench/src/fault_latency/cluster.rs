//! The cluster of one run: node 0 in this process (with the faulting threads), the helper
//! nodes as child processes of this binary (`fault-latency node`), driven over their
//! stdin/stdout (see [`super::role`]).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use engine::config::{ClusterSpec, NodeSpec};
use engine::idle::IdlePolicy;
use engine::node::{Node, NodeConfig, NodeError, TransportKind};
use thiserror::Error;
use wire::FrameAuth;

use super::netns::{NetNs, NetnsError};
use super::role::{encode_cluster, hex};

/// Records per shard kept for `--breakdown` (more than any scenario's samples).
pub const TRACE_RECORDS: usize = 1 << 17;

/// Why the cluster could not be run.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// A helper process could not be started.
    #[error("cannot start helper node {id}: {source}")]
    Spawn {
        /// The node id.
        id: u16,
        /// The OS error.
        source: std::io::Error,
    },
    /// A helper answered something unexpected, or went away.
    #[error("helper node {id}: {what}")]
    Helper {
        /// The node id.
        id: u16,
        /// What went wrong.
        what: String,
    },
    /// Node 0 could not start.
    #[error("node 0: {0}")]
    Node(#[from] NodeError),
    /// Node 0's listening socket.
    #[error("node 0 cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster description was refused.
    #[error("bad cluster: {0}")]
    Config(#[from] engine::config::ConfigError),
    /// Network namespaces.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Bytes each node contributes, by node id.
    pub memory: Vec<u64>,
    /// Transport of every node.
    pub transport: TransportKind,
    /// Frame protection of every node.
    pub auth: FrameAuth,
    /// Idle policy of node 0's shard.
    pub idle: IdlePolicy,
    /// Idle policy of the helpers' shards.
    pub helper_idle: IdlePolicy,
    /// Node 0's shard CPUs (one shard on each).
    pub shard_cpus: Vec<usize>,
    /// The helpers' shard CPU.
    pub helper_cpu: usize,
    /// Seconds to wait for the mesh.
    pub connect_timeout: u64,
    /// Keep per-fault timestamps on node 0.
    pub trace: bool,
}

/// A helper node process and its control pipe.
#[derive(Debug)]
pub struct Helper {
    id: u16,
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Helper {
    fn spawn(
        id: u16,
        bind: &str,
        o: &ClusterOpts,
        netns: Option<&NetNs>,
    ) -> Result<Helper, ClusterError> {
        let exe = std::env::current_exe().map_err(|source| ClusterError::Spawn { id, source })?;
        let mut cmd = match netns {
            Some(n) => {
                let p = n.exec_prefix(usize::from(id));
                let mut c = Command::new(&p[0]);
                c.args(&p[1..]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args([
            "node",
            "--id",
            &id.to_string(),
            "--bind",
            bind,
            "--cpu",
            &o.helper_cpu.to_string(),
            "--idle",
            &idle_arg(o.helper_idle),
            "--transport",
            o.transport.as_arg(),
            "--auth",
            o.auth.name(),
            "--connect-timeout",
            &o.connect_timeout.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if o.trace {
            cmd.arg("--trace");
        }
        let mut child = cmd
            .spawn()
            .map_err(|source| ClusterError::Spawn { id, source })?;
        let stdin = child.stdin.take().expect("piped");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Helper {
            id,
            child,
            stdin,
            out,
        })
    }

    fn read_reply(&mut self) -> Result<String, ClusterError> {
        let mut line = String::new();
        let err = |what: String| ClusterError::Helper { id: self.id, what };
        match self.out.read_line(&mut line) {
            Ok(0) => Err(err("exited (see its messages above)".into())),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e) => Err(err(format!("reading its reply: {e}"))),
        }
    }

    /// Sends a command and waits for its `ok` reply; returns what follows `ok`.
    pub fn call(&mut self, cmd: &str) -> Result<String, ClusterError> {
        self.send(cmd)?;
        self.reply()
    }

    fn send(&mut self, cmd: &str) -> Result<(), ClusterError> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| ClusterError::Helper {
                id: self.id,
                what: format!("sending {cmd:?}: {e}"),
            })
    }

    fn reply(&mut self) -> Result<String, ClusterError> {
        let line = self.read_reply()?;
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("ok", rest) => Ok(rest.to_string()),
            ("err", why) => Err(ClusterError::Helper {
                id: self.id,
                what: why.to_string(),
            }),
            _ => Err(ClusterError::Helper {
                id: self.id,
                what: format!("unexpected reply {line:?}"),
            }),
        }
    }
}

/// An idle policy as the command line spells it.
pub fn idle_arg(p: IdlePolicy) -> String {
    match p {
        IdlePolicy::Hybrid { spin } => format!("hybrid:{}", spin.as_micros()),
        p => p.to_string(),
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Node 0.
    pub node: Arc<Node>,
    helpers: Vec<Helper>,
    /// Which transport node 0 runs, and why.
    pub transport_line: String,
}

impl Cluster {
    /// Starts the helpers and node 0 and waits until the mesh is formed.
    pub fn start(o: &ClusterOpts, netns: Option<&NetNs>) -> Result<Cluster, ClusterError> {
        let nodes = o.memory.len();
        let addr_of = |i: usize| match netns {
            Some(n) => n.addr(i),
            None => "127.0.0.1".to_string(),
        };
        let mut helpers = Vec::with_capacity(nodes.saturating_sub(1));
        let mut specs = Vec::with_capacity(nodes);
        for i in 1..nodes {
            let id = i as u16;
            let mut h = Helper::spawn(id, &format!("{}:0", addr_of(i)), o, netns)?;
            let line = h.read_reply()?;
            let port: u16 = line
                .strip_prefix("port ")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| ClusterError::Helper {
                    id,
                    what: format!("expected its port, got {line:?}"),
                })?;
            let addr: SocketAddr =
                format!("{}:{port}", addr_of(i))
                    .parse()
                    .map_err(|e| ClusterError::Helper {
                        id,
                        what: format!("its address does not parse: {e}"),
                    })?;
            specs.push(NodeSpec {
                id,
                addr,
                memory: o.memory[i],
            });
            helpers.push(h);
        }
        let secret = cluster_secret();
        let bind0 = format!("{}:0", addr_of(0));
        // Node 0's sockets live in its namespace: bind (and later dial) from a thread in it.
        let node = match netns {
            None => start_node0(o, specs, &mut helpers, secret, &bind0)?,
            Some(n) => std::thread::scope(|s| {
                s.spawn(|| {
                    n.enter(0)?;
                    start_node0(o, specs, &mut helpers, secret, &bind0)
                })
                .join()
                .expect("node 0's start thread does not panic")
            })?,
        };
        let mut transport_line = node.transport_line().to_string();
        for h in helpers.iter_mut() {
            let line = h.reply()?;
            if h.id == 1 {
                transport_line = format!("{transport_line} (node 1: {line})");
            }
        }
        Ok(Cluster {
            node: Arc::new(node),
            helpers,
            transport_line,
        })
    }

    /// The helper node `id` (1 ..).
    pub fn helper(&mut self, id: u16) -> &mut Helper {
        &mut self.helpers[usize::from(id) - 1]
    }

    /// Each helper node's id and process id.
    pub fn helper_pids(&self) -> Vec<(u16, u32)> {
        self.helpers.iter().map(|h| (h.id, h.child.id())).collect()
    }

    /// Helper nodes.
    pub fn helpers(&self) -> usize {
        self.helpers.len()
    }

    /// Per helper node (id, count, p50, p99): answers it sent since the last call, timed
    /// from the message that let it answer to the flush that sent the answer. Needs
    /// [`ClusterOpts::trace`].
    pub fn served(&mut self) -> Result<Vec<(u16, u64, u64, u64)>, ClusterError> {
        let mut out = Vec::with_capacity(self.helpers.len());
        for h in self.helpers.iter_mut() {
            let reply = h.call("served")?;
            let v: Vec<u64> = reply
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            match v.as_slice() {
                [count, p50, p99] => out.push((h.id, *count, *p50, *p99)),
                _ => {
                    return Err(ClusterError::Helper {
                        id: h.id,
                        what: format!("unexpected `served` reply {reply:?}"),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Stops every node: all of them first accept that the others leave, then stop.
    pub fn stop(mut self) {
        self.node.state().expect_departures();
        for h in self.helpers.iter_mut() {
            if let Err(e) = h.call("bye") {
                eprintln!("fault-latency: {e}");
            }
        }
        for h in self.helpers.iter_mut() {
            if let Err(e) = h.call("quit") {
                eprintln!("fault-latency: {e}");
            }
        }
        for h in self.helpers.iter_mut() {
            match h.child.wait() {
                Ok(st) if st.success() => {}
                Ok(st) => eprintln!("fault-latency: helper node {} ended with {st}", h.id),
                Err(e) => eprintln!("fault-latency: helper node {}: {e}", h.id),
            }
        }
        match Arc::try_unwrap(self.node) {
            Ok(n) => n.shutdown(),
            Err(_) => eprintln!("fault-latency: node 0 is still in use; it stops at exit"),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // A helper that did not quit (an error path) must not outlive the run.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Binds node 0's listener, tells every helper the whole cluster, then starts node 0 (which
/// returns once the mesh is formed).
fn start_node0(
    o: &ClusterOpts,
    peers: Vec<NodeSpec>,
    helpers: &mut [Helper],
    secret: Vec<u8>,
    bind: &str,
) -> Result<Node, ClusterError> {
    let listen_err = |source| ClusterError::Listen {
        addr: bind.to_string(),
        source,
    };
    let listener = TcpListener::bind(bind).map_err(listen_err)?;
    let me = NodeSpec {
        id: 0,
        addr: listener.local_addr().map_err(listen_err)?,
        memory: o.memory[0],
    };
    let mut all = peers.clone();
    all.push(me.clone());
    let line = format!("start {} {}", hex(&secret), encode_cluster(&all));
    for h in helpers.iter_mut() {
        h.send(&line)?;
    }
    let mut cfg = NodeConfig::new(ClusterSpec::new(me, peers)?, listener, secret);
    cfg.cores = o.shard_cpus.clone();
    cfg.pin = true;
    cfg.idle = o.idle;
    cfg.transport = o.transport;
    cfg.frame_auth = o.auth;
    cfg.connect_timeout = Duration::from_secs(o.connect_timeout);
    cfg.fault_trace = if o.trace { TRACE_RECORDS } else { 0 };
    Ok(Node::start(cfg)?)
}

/// A fresh cluster secret for one run (the helpers get it over their stdin).
fn cluster_secret() -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // Loopback-only benchmark clusters: a time-derived secret still keeps stray nodes out.
        let t = engine::clock::now_ns() ^ u64::from(std::process::id());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t.rotate_left(i as u32 * 5) as u8) ^ (i as u8);
        }
    }
    b
}
