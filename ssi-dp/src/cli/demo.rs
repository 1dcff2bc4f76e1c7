//! `ssi-dp demo`: the embedded default. Starts a local cluster of node processes on
//! loopback (ports picked by the kernel, a freshly generated secret), runs a workload on all
//! of them, relays their output, and exits 0 only if every node verified its result.

use std::ffi::OsString;
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use super::child::{self, NodeChild};
use crate::workload::Kind;
use engine::idle::IdlePolicy;
use engine::node::TransportKind;

/// `ssi-dp demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Operations per worker thread.
    #[arg(long, default_value_t = 2000)]
    ops: u64,
    /// Worker threads per node.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Guest memory each node contributes.
    #[arg(long, default_value = "16M")]
    memory: String,
    /// Idle policy of the shards (block suits a small machine: it never spins).
    #[arg(long, default_value = "block")]
    idle: IdlePolicy,
    /// Transport: auto, uring or fallback.
    #[arg(long, default_value = "auto")]
    transport: TransportKind,
    /// The workload every node runs.
    #[arg(long, default_value = "demo")]
    workload: Kind,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// Why the demo could not run (a node that fails its check is a verdict, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// `--nodes` out of range.
    #[error("--nodes must be 1..=16 for a local demo")]
    Nodes,
    /// The running binary cannot be found to start the nodes.
    #[error("cannot find the ssi-dp binary: {0}")]
    NoBinary(#[source] io::Error),
    /// The demo's directory or secret file could not be written.
    #[error("{}: {source}", .path.display())]
    File {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No random bytes for the secret.
    #[error("cannot read /dev/urandom: {0}")]
    Urandom(#[source] io::Error),
    /// No loopback port.
    #[error("cannot bind a loopback port: {0}")]
    Bind(#[source] io::Error),
    /// A node process could not be started.
    #[error("cannot start node {node}: {source}")]
    Spawn {
        /// The node.
        node: u16,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Runs the demo; returns the exit code.
pub fn run(a: DemoArgs) -> i32 {
    match demo(&a) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("ssi-dp demo: error: {e}");
            2
        }
    }
}

fn demo(a: &DemoArgs) -> Result<bool, DemoError> {
    if a.nodes == 0 || a.nodes > 16 {
        return Err(DemoError::Nodes);
    }
    let exe = std::env::current_exe().map_err(DemoError::NoBinary)?;
    let dir = std::env::temp_dir().join(format!("ssi-dp-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::File {
        path: dir.clone(),
        source,
    })?;
    let secret_path = dir.join("cluster.secret");
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .map_err(DemoError::Urandom)?;
    std::fs::write(&secret_path, secret).map_err(|source| DemoError::File {
        path: secret_path.clone(),
        source,
    })?;

    // Listeners bound here and inherited by the children: no port can be taken in between.
    let listeners: Vec<TcpListener> = (0..a.nodes)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(DemoError::Bind)?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|x| x.port()).unwrap_or(0))
        .collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "ssi-dp demo: {} nodes on 127.0.0.1 ports {:?}, {} each, workload {} ({} workers x {} ops per node), idle {}, transport {}",
        a.nodes,
        ports,
        a.memory,
        a.workload.name(),
        a.workers,
        a.ops,
        a.idle,
        a.transport.as_arg()
    );

    let mut children: Vec<NodeChild> = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let i = i as u16;
        let fd = l.as_raw_fd();
        let mut args: Vec<OsString> = vec![
            "--node-id".into(),
            i.to_string().into(),
            "--listen-fd".into(),
            fd.to_string().into(),
        ];
        for (j, p) in ports.iter().enumerate() {
            if j as u16 != i {
                args.push("--peer".into());
                args.push(format!("{j}@127.0.0.1:{p}").into());
            }
        }
        let idle = a.idle.to_string();
        for (k, v) in [
            ("--memory", a.memory.clone()),
            ("--cores", (usize::from(i) % cpus).to_string()),
            (
                "--idle",
                idle.split('(').next().unwrap_or("block").to_string(),
            ),
            ("--transport", a.transport.as_arg().to_string()),
            ("--workload", a.workload.name().to_string()),
            ("--ops", a.ops.to_string()),
            ("--workers", a.workers.to_string()),
        ] {
            args.push(k.into());
            args.push(v.into());
        }
        args.push("--cluster-secret-file".into());
        args.push(secret_path.clone().into());
        match child::spawn(&exe, i, &args, Some(fd)) {
            Ok(c) => children.push(c),
            Err(source) => {
                for c in children.iter_mut() {
                    let _ = c.child.kill();
                    let _ = c.child.wait();
                }
                return Err(DemoError::Spawn { node: i, source });
            }
        }
    }
    drop(listeners);

    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut codes: Vec<Option<i32>> = vec![None; children.len()];
    let mut failed = false;
    while codes.iter().any(Option::is_none) {
        for (
            k,
            NodeChild {
                id: i, child: c, ..
            },
        ) in children.iter_mut().enumerate()
        {
            if codes[k].is_some() {
                continue;
            }
            if let Ok(Some(st)) = c.try_wait() {
                let code = st.code().unwrap_or(128);
                if code != 0 {
                    eprintln!("ssi-dp demo: node {i} exited with {st}");
                    failed = true;
                }
                codes[k] = Some(code);
            }
        }
        if failed || Instant::now() > deadline {
            if !failed {
                eprintln!("ssi-dp demo: timed out after {} s", a.timeout);
            }
            for (k, c) in children.iter_mut().enumerate() {
                if codes[k].is_none() {
                    let _ = c.child.kill();
                    let _ = c.child.wait();
                    codes[k] = Some(-1);
                }
            }
            failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let oks = children
        .into_iter()
        .map(NodeChild::verified)
        .filter(|&ok| ok)
        .count();
    let _ = std::fs::remove_dir_all(&dir);
    let all_ok = !failed && oks == usize::from(a.nodes);
    println!(
        "ssi-dp demo: {}: {} of {} nodes verified their results",
        if all_ok { "OK" } else { "FAILED" },
        oks,
        a.nodes
    );
    Ok(all_ok)
}
