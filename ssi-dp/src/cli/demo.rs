//! `ssi-dp demo`: the embedded default. Starts a local cluster of node processes on
//! loopback (ports picked by the kernel, a freshly generated secret), runs a workload on all
//! of them, relays their output, and exits 0 only if every node verified its result.

use std::ffi::OsString;
use std::io::Read;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
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

fn demo(a: &DemoArgs) -> Result<bool, String> {
    if a.nodes == 0 || a.nodes > 16 {
        return Err("--nodes must be 1..=16 for a local demo".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ssi-dp binary: {e}"))?;
    let dir = std::env::temp_dir().join(format!("ssi-dp-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let secret_path = dir.join("cluster.secret");
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    std::fs::write(&secret_path, secret).map_err(|e| format!("{}: {e}", secret_path.display()))?;

    // Listeners bound here and inherited by the children: no port can be taken in between.
    let listeners: Vec<TcpListener> = (0..a.nodes)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
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
            Err(e) => {
                for c in children.iter_mut() {
                    let _ = c.child.kill();
                    let _ = c.child.wait();
                }
                return Err(format!("cannot start node {i}: {e}"));
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
