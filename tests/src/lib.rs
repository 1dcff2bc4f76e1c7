//! Helpers shared by the multi-node integration tests in `tests/tests/`: find the `ssi-dp`
//! binary, start node processes on loopback (listeners bound here and inherited, so no port
//! race), capture their output, wait for them with a deadline, kill them.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `ssi-dp` binary built by the same `cargo test` run (target/<profile>/ssi-dp).
pub fn ssi_dp_bin() -> PathBuf {
    workspace_bin("ssi-dp", "ssi-dp")
}

/// The workspace binary `name` of package `package`, next to the test binary.
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds the \
         workspace's binaries) or build it first with `cargo build -p {package}`",
        bin.display()
    );
    bin
}

/// A loopback port for a node to bind later, outside the kernel's ephemeral range (so that no
/// outgoing connection can take it in between): each call in a process returns a new one, and
/// processes start at different offsets.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 97) as u16 * 100;
    loop {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = base + k % 9_000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A fresh directory for one test's files.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ssi-dp-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// The command of node `id` (0 or 1) of a two-node loopback cluster on `ports`: 16 MiB
/// each, its shard on CPU `id`, idle `block`, the secret in `secret`; the job's arguments
/// are the caller's. (Tests that need the `Command` itself, for its environment; [`launch`]
/// starts nodes with inherited listeners otherwise.)
pub fn pair_node(id: u16, ports: [u16; 2], secret: &std::path::Path) -> Command {
    let (me, other) = (id as usize, 1 - id as usize);
    let mut c = Command::new(ssi_dp_bin());
    c.args(["--node-id", &id.to_string()])
        .args(["--listen", &format!("127.0.0.1:{}", ports[me])])
        .args(["--peer", &format!("{other}@127.0.0.1:{}", ports[other])])
        .args(["--memory", "16M", "--cores", &me.to_string()])
        .args(["--idle", "block", "--cluster-secret-file"])
        .arg(secret);
    c
}

/// Writes a 32-byte secret file and returns its path.
pub fn secret_file(dir: &std::path::Path, name: &str, byte: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, [byte; 32]).expect("write secret");
    p
}

/// The layout digest of a cluster of nodes 0 and 1 with 16 MiB each: what a handshake
/// must present to be taken for one of its members (tests that play a hostile member).
pub fn digest_two_16m() -> [u8; 32] {
    let spec = |id| engine::config::NodeSpec {
        id,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        memory: 16 << 20,
    };
    let c = engine::config::ClusterSpec::new(spec(0), vec![spec(1)]).expect("cluster");
    c.digest().0
}

/// One node to start.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    /// Node id.
    pub id: u16,
    /// Arguments after the generated `--node-id/--listen-fd/--peer` ones.
    pub args: Vec<String>,
    /// Peers to list (ids); `None`: every other node of the launch.
    pub peers: Option<Vec<u16>>,
    /// Extra `--peer` values appended verbatim.
    pub extra_peers: Vec<String>,
    /// Memory this node contributes (`--memory`, and `,mem=` in the other nodes' `--peer`
    /// entries for it); `None` leaves both to the arguments.
    pub memory: Option<String>,
    /// Delay between the launch and the node's start (its listener exists from the launch
    /// on, so peers can connect to it meanwhile: they wait in its backlog).
    pub start_after: Option<Duration>,
}

impl NodeOpts {
    /// Node `id` with `args`.
    pub fn new(id: u16, args: &[&str]) -> Self {
        Self {
            id,
            args: args.iter().map(|s| s.to_string()).collect(),
            peers: None,
            extra_peers: Vec::new(),
            memory: None,
            start_after: None,
        }
    }

    /// Starts this node `d` after the launch.
    pub fn start_after(mut self, d: Duration) -> Self {
        self.start_after = Some(d);
        self
    }

    /// Sets the memory this node contributes, as its peers will see it too.
    pub fn memory(mut self, size: &str) -> Self {
        self.memory = Some(size.to_string());
        self
    }
}

/// A running node process with its output captured.
#[derive(Debug)]
pub struct NodeProc {
    /// Node id.
    pub id: u16,
    /// The loopback port it listens on.
    pub port: u16,
    child: Child,
    output: Arc<Mutex<String>>,
    relays: Vec<JoinHandle<()>>,
}

impl NodeProc {
    /// Everything the node printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit within `timeout` (killing the node if it does not), then returns
    /// its status and complete output.
    pub fn wait(mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        for r in self.relays.drain(..) {
            let _ = r.join();
        }
        let out = self.output();
        (status, out)
    }

    /// Kills the node with SIGKILL (no clean-up, like a crash).
    pub fn kill9(&mut self) {
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
    }

    /// Waits until its output contains `needle`, up to `timeout`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay(stream: impl Read + Send + 'static, out: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut o = out.lock().expect("output lock");
            o.push_str(&line);
            o.push('\n');
        }
    })
}

/// Starts the nodes, each with its own inherited loopback listener and `--peer` entries for
/// the others.
pub fn launch(nodes: &[NodeOpts]) -> Vec<NodeProc> {
    let bin = ssi_dp_bin();
    let listeners: Vec<TcpListener> = nodes
        .iter()
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let mut procs = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        let fd = listeners[k].as_raw_fd();
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            n.id.to_string(),
            "--listen-fd".into(),
            fd.to_string(),
        ];
        for (j, m) in nodes.iter().enumerate() {
            let listed = match &n.peers {
                None => j != k,
                Some(p) => p.contains(&m.id) && j != k,
            };
            if listed {
                let mem = m
                    .memory
                    .as_ref()
                    .map(|x| format!(",mem={x}"))
                    .unwrap_or_default();
                args.push("--peer".into());
                args.push(format!("{}@127.0.0.1:{}{mem}", m.id, ports[j]));
            }
        }
        if let Some(m) = &n.memory {
            args.push("--memory".into());
            args.push(m.clone());
        }
        for p in &n.extra_peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        args.extend(n.args.iter().cloned());
        let mut cmd = match n.start_after {
            None => Command::new(&bin),
            // A shell waits, then becomes the node (same pid, same inherited listener), so
            // that the launch itself does not wait.
            Some(d) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!("sleep {:.3}; exec \"$0\" \"$@\"", d.as_secs_f64()))
                    .arg(&bin);
                c
            }
        };
        cmd.args(&args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: runs between fork and exec; fcntl is async-signal-safe and only clears
        // close-on-exec on this child's own listener.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = cmd.spawn().expect("start ssi-dp");
        let output = Arc::new(Mutex::new(String::new()));
        let relays = vec![
            relay(child.stdout.take().expect("stdout"), output.clone()),
            relay(child.stderr.take().expect("stderr"), output.clone()),
        ];
        procs.push(NodeProc {
            id: n.id,
            port: ports[k],
            child,
            output,
            relays,
        });
    }
    procs
}

/// Waits for every node; returns `(id, status, output)` per node.
pub fn wait_all(procs: Vec<NodeProc>, timeout: Duration) -> Vec<(u16, Option<ExitStatus>, String)> {
    let deadline = Instant::now() + timeout;
    procs
        .into_iter()
        .map(|p| {
            let id = p.id;
            let left = deadline.saturating_duration_since(Instant::now());
            let (s, o) = p.wait(left);
            (id, s, o)
        })
        .collect()
}

/// Asserts every node exited 0 and reported its workload OK.
pub fn assert_all_ok(results: &[(u16, Option<ExitStatus>, String)]) {
    for (id, status, out) in results {
        assert!(
            status.is_some_and(|s| s.success()),
            "node {id} exited with {status:?}; output:\n{out}"
        );
        assert!(
            out.contains(": OK: "),
            "node {id} did not report OK; output:\n{out}"
        );
    }
}

/// Hostile clients that hold a node's ports without authenticating.
pub mod flood;

pub mod lab;

/// A real Prometheus server scraping the nodes, and its HTTP API.
pub mod prom;

/// The guest-side checker (`ssi-guest-check`) packed into a Linux initramfs.
pub mod initramfs;

/// Arguments of a node in a fault-latency test guest run of `vcpus` vCPUs, each touching
/// `touches` pages once: `local` are its vCPUs (`none` to only serve memory), its shard on
/// `cores`, vCPU threads on CPU 0, `block` idle.
pub fn fault_latency_guest_args(
    secret: &str,
    vcpus: u32,
    local: &str,
    cores: &str,
    touches: u32,
    timeout_s: u32,
) -> Vec<String> {
    [
        "--cores",
        cores,
        "--idle",
        "block",
        "--cluster-secret-file",
        secret,
        "--guest",
        "test:fault-latency",
        "--vcpus",
        &vcpus.to_string(),
        "--local-vcpus",
        local,
        "--vcpu-cores",
        "0",
        "--guest-touch-pages",
        &touches.to_string(),
        "--guest-timeout",
        &timeout_s.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
