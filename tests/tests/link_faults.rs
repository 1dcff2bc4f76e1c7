//! Transient network faults between live nodes are not deaths. Two real node processes run a
//! workload that checks every value it reads (`seqs`: a value that goes backwards is a lost
//! or repeated write); node 0 reaches node 1 through a proxy that breaks every connection it
//! carries, several times, while the workload runs. Each break is a connection lost between
//! live nodes: node 0 dials again (through the proxy), both sessions resume on the new
//! connection and send again what the other lacks. The workload finishes and checks out on
//! both nodes, and neither declares the other dead. Before sessions, the first break was a
//! node's death: the survivor stopped with "node 1, home to guest pages, died".
//!
//! The other side of the rule: when the connection cannot come back (the proxy refuses new
//! connections), the node is declared dead once the failure timeout (`--dead-ms`) has passed,
//! not before, and every node stops saying why. And a node paused for less than the timeout
//! (SIGSTOP) is not declared dead either.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ssi_tests::{assert_all_ok, launch, scratch_dir, secret_file, wait_all, NodeOpts, NodeProc};

const TIMEOUT: Duration = Duration::from_secs(240);

/// A TCP proxy to one port that can break every connection it carries, and refuse new ones.
#[derive(Clone, Default)]
struct Proxy {
    /// Both sockets of every connection carried (for breaking them).
    live: Arc<Mutex<Vec<TcpStream>>>,
    /// Connections accepted and forwarded.
    forwarded: Arc<AtomicUsize>,
    /// New connections are closed at once.
    refuse: Arc<AtomicBool>,
}

impl Proxy {
    /// Serves `listener`, forwarding to the port `target` sends (once the node exists).
    fn serve(&self, listener: TcpListener, target: mpsc::Receiver<u16>) {
        let me = self.clone();
        thread::spawn(move || {
            let mut port = None;
            for c in listener.incoming() {
                let Ok(client) = c else { break };
                let Some(port) = *port.get_or_insert_with(|| target.recv().ok()) else {
                    break;
                };
                if me.refuse.load(Ordering::SeqCst) {
                    continue; // dropped: closed
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                me.live.lock().expect("proxy lock").extend([c3, s3]);
                me.forwarded.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || pump(client, s2));
                thread::spawn(move || pump(server, c2));
            }
        });
    }

    /// Breaks every connection carried (both ends see it close); returns how many sockets.
    fn break_all(&self) -> usize {
        let mut live = self.live.lock().expect("proxy lock");
        let n = live.len();
        for s in live.drain(..) {
            // Already closed by its pump: nothing to break.
            let _ = s.shutdown(Shutdown::Both);
        }
        n
    }
}

/// Copies `from` to `to` until either end closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // The other direction learns the end; an error means it is already gone.
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Two nodes running `seqs`, node 0 dialling node 1 through `proxy`; `extra` goes to both.
fn start_pair(name: &str, ops: &str, extra: &[&str]) -> (Vec<NodeProc>, Proxy, mpsc::Sender<u16>) {
    let dir = scratch_dir(name);
    let secret = secret_file(&dir, "secret", 6);
    let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let proxy_port = l.local_addr().expect("addr").port();
    let proxy = Proxy::default();
    let (target, port_rx) = mpsc::channel();
    proxy.serve(l, port_rx);
    let args = |id: u16| {
        let mut v: Vec<String> = [
            "--cores",
            if id == 0 { "0" } else { "1" },
            "--idle",
            "block",
            "--cluster-secret-file",
            &secret.display().to_string(),
            "--memory",
            "16M",
            "--workload",
            "seqs",
            "--ops",
            ops,
            "--connect-timeout",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a0 = args(0);
    let mut n0 = NodeOpts::new(0, &a0.iter().map(String::as_str).collect::<Vec<_>>());
    // Node 0 dials node 1 (the lower id dials), through the proxy.
    n0.peers = Some(Vec::new());
    n0.extra_peers = vec![format!("1@127.0.0.1:{proxy_port}")];
    let a1 = args(1);
    let n1 = NodeOpts::new(1, &a1.iter().map(String::as_str).collect::<Vec<_>>());
    let procs = launch(&[n0, n1]);
    target
        .send(procs[1].port)
        .expect("the proxy waits for the port");
    (procs, proxy, target)
}

/// Waits until the cluster formed (the measurements and the workload follow).
fn wait_running(procs: &[NodeProc]) {
    for p in procs {
        assert!(
            p.wait_for_output("cluster formed", Duration::from_secs(120)),
            "node {} did not form the cluster:\n{}",
            p.id,
            p.output()
        );
    }
}

#[test]
fn broken_connections_between_live_nodes_are_restored_and_lose_nothing() {
    let (procs, proxy, _target) = start_pair("link-resets", "600000", &[]);
    wait_running(&procs);
    let mut breaks = 0;
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(400));
        if procs.iter().any(|p| p.output().contains("workload seqs: ")) {
            break; // a node already finished
        }
        if proxy.break_all() > 0 {
            breaks += 1;
        }
    }
    let r = wait_all(procs, TIMEOUT);
    for (id, _, out) in &r {
        eprintln!("node {id}:\n{out}");
    }
    assert!(
        breaks >= 2,
        "the workload ended before two breaks ({breaks})"
    );
    assert_all_ok(&r);
    for (id, _, out) in &r {
        assert!(
            !out.contains("is down") && !out.contains("died"),
            "node {id} declared its live peer dead:\n{out}"
        );
    }
    let restored = r
        .iter()
        .filter(|(_, _, out)| out.contains("restored after"))
        .count();
    assert_eq!(restored, 2, "both nodes must say their sessions resumed");
    assert!(
        proxy.forwarded.load(Ordering::SeqCst) > 1,
        "node 0 must have dialled again through the proxy"
    );
}

#[test]
fn a_connection_that_cannot_come_back_is_a_death_after_the_failure_timeout() {
    let (procs, proxy, _target) = start_pair("link-gone", "2000000", &["--dead-ms", "2000"]);
    wait_running(&procs);
    thread::sleep(Duration::from_millis(300));
    proxy.refuse.store(true, Ordering::SeqCst);
    let broke = Instant::now();
    assert!(proxy.break_all() > 0, "the proxy carried no connection");
    let r = wait_all(procs, TIMEOUT);
    let took = broke.elapsed();
    for (id, status, out) in &r {
        eprintln!("node {id} ({status:?}):\n{out}");
        let status = status.unwrap_or_else(|| panic!("node {id} did not exit:\n{out}"));
        assert!(
            status.code().is_some_and(|c| c != 0),
            "node {id} must stop with an error code ({status}):\n{out}"
        );
        assert!(
            out.contains("not restored within 2000 ms"),
            "node {id} must say the connection did not come back in time:\n{out}"
        );
    }
    assert!(
        took >= Duration::from_millis(2000),
        "a node was declared dead {took:?} after the break, before the 2000 ms timeout"
    );
}

#[test]
fn a_node_paused_for_less_than_the_failure_timeout_is_not_declared_dead() {
    let (mut procs, _proxy, _target) = start_pair("link-pause", "300000", &["--dead-ms", "3000"]);
    wait_running(&procs);
    thread::sleep(Duration::from_millis(300));
    let pid = procs[1].pid() as i32;
    // SAFETY: plain signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    thread::sleep(Duration::from_millis(1000));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let r = wait_all(std::mem::take(&mut procs), TIMEOUT);
    for (id, _, out) in &r {
        eprintln!("node {id}:\n{out}");
        assert!(
            !out.contains("is down") && !out.contains("died"),
            "node {id} declared its paused peer dead:\n{out}"
        );
    }
    assert_all_ok(&r);
}
