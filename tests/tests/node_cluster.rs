//! Multi-process tests of the ssi-dp node: three node processes on loopback, `--idle block`,
//! worker threads on each operating on shared guest memory with exact expected results.

use std::time::Duration;

use ssi_tests::{assert_all_ok, launch, scratch_dir, secret_file, wait_all, NodeOpts};

const TIMEOUT: Duration = Duration::from_secs(240);

/// Arguments every node of a test cluster gets.
fn common(id: u16, secret: &std::path::Path, workload: &str, ops: u64) -> Vec<String> {
    vec![
        "--memory".into(),
        "16M".into(),
        "--cores".into(),
        (id % 2).to_string(),
        "--idle".into(),
        "block".into(),
        "--cluster-secret-file".into(),
        secret.display().to_string(),
        "--connect-timeout".into(),
        "60".into(),
        "--workload".into(),
        workload.into(),
        "--ops".into(),
        ops.to_string(),
        "--workers".into(),
        "2".into(),
    ]
}

fn node(id: u16, secret: &std::path::Path, workload: &str, ops: u64) -> NodeOpts {
    let args = common(id, secret, workload, ops);
    NodeOpts::new(id, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Remote faults a node reported in its summary (`read-remote N ...` lines and friends).
fn remote_faults(out: &str) -> u64 {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            name.ends_with("-remote")
                .then(|| w.next()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

fn run_three(
    name: &str,
    workload: &str,
    ops: u64,
) -> Vec<(u16, Option<std::process::ExitStatus>, String)> {
    let dir = scratch_dir(name);
    let s = secret_file(&dir, "secret", 7);
    let procs = launch(&[
        node(0, &s, workload, ops),
        node(1, &s, workload, ops),
        node(2, &s, workload, ops),
    ]);
    let r = wait_all(procs, TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// (a) Lock-prefixed increments on shared counters homed on every node: exact totals on
/// every node.
#[test]
fn atomic_counters_are_exact() {
    let r = run_three("counters", "counters", 3000);
    assert_all_ok(&r);
    for (_, _, out) in &r {
        assert!(
            out.contains("total 18000 = 3 nodes x 2 workers x 3000 ops"),
            "{out}"
        );
        // Contended increments must have moved pages between nodes.
        assert!(remote_faults(out) > 0, "{out}");
    }
}

/// (b) A spinlock in guest memory protecting a plain counter and checksummed page-sized
/// records: exact total, and no torn or stale record ever seen under the lock.
#[test]
fn spinlock_protects_plain_data_across_nodes() {
    let r = run_three("lock", "lock", 1500);
    assert_all_ok(&r);
    for (_, _, out) in &r {
        assert!(out.contains("counter 9000 (expected 9000"), "{out}");
        assert!(out.contains("records whole, 0 torn or stale"), "{out}");
    }
}

/// (c) Random reads and writes of per-writer sequence numbers that share pages: no reader
/// sees a value go backwards, every writer's final value is exact.
#[test]
fn sequence_numbers_never_go_backwards() {
    // Ping-pong damping off: it holds contended pages longer (fewer transfers), and this
    // test wants as many transfers as it can get.
    let dir = scratch_dir("seqs");
    let s = secret_file(&dir, "secret", 7);
    let mk = |id: u16| {
        let mut a = common(id, &s, "seqs", 20_000);
        a.extend(["--ping-pong-hold-us".into(), "0".into()]);
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let r = wait_all(launch(&[mk(0), mk(1), mk(2)]), TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    assert_all_ok(&r);
    let mut moved = 0;
    for (_, _, out) in &r {
        assert!(out.contains("0 went backwards, own slots exact"), "{out}");
        // `--transport auto` says why it is TCP and not RDMA (these machines have none).
        assert!(out.contains("; TCP, not RDMA: "), "{out}");
        moved += remote_faults(out);
    }
    // The slots share pages, so the run must have moved them between nodes many times.
    assert!(
        moved > 1000,
        "only {moved} remote faults: the workload did not contend"
    );
}

/// Two shards per node (pages partitioned in 16 MiB granules, each shard reading its own
/// userfaultfd registered over its granules, one connection per shard pair) and the epoll
/// fallback transport: the same exact results, and no fault handed between shards.
#[test]
fn two_shards_per_node_over_the_fallback_transport() {
    let dir = scratch_dir("shards");
    let s = secret_file(&dir, "secret", 11);
    let mk = |id: u16| {
        let mut a = common(id, &s, "seqs", 20_000);
        let i = a.iter().position(|x| x == "--cores").expect("cores arg");
        a[i + 1] = "0-1".into();
        a.extend(["--transport".into(), "fallback".into()]);
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let r = wait_all(launch(&[mk(0), mk(1)]), TIMEOUT);
    assert_all_ok(&r);
    for (_, _, out) in &r {
        assert!(
            out.contains("transport: epoll fallback (asked for)"),
            "{out}"
        );
        assert!(out.contains("0 went backwards, own slots exact"), "{out}");
        // Every fault arrived on its owner's userfaultfd: none went over the ring.
        let forwarded: u64 = out
            .split("faults forwarded between shards ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .expect("summary line");
        assert_eq!(forwarded, 0, "{out}");
        // Node 0's 16 MiB is granule 0 (shard 0), node 1's granule 1 (shard 1): both
        // shards read faults of their own.
        let per: Vec<u64> = out
            .split("userfaultfd events per shard ")
            .nth(1)
            .and_then(|t| t.lines().next())
            .map(|l| {
                l.split(" / ")
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            })
            .expect("per-shard line");
        assert_eq!(per.len(), 2, "{out}");
        assert!(per.iter().all(|&n| n > 0), "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--hist-dump` writes an HDR interval log at exit whose series hold exactly the faults the
/// node reported, and SIGUSR1 writes it while the node runs.
#[test]
fn histogram_dump_matches_the_served_faults() {
    let dir = scratch_dir("hist");
    let s = secret_file(&dir, "secret", 12);
    let logs: Vec<_> = (0..2).map(|i| dir.join(format!("node{i}.hlog"))).collect();
    let mk = |id: u16| {
        let mut a = common(id, &s, "seqs", 20_000);
        a.extend([
            "--hist-dump".into(),
            logs[id as usize].display().to_string(),
        ]);
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let procs = launch(&[mk(0), mk(1)]);
    assert!(procs[0].wait_for_output("cluster formed", Duration::from_secs(60)));
    // SAFETY: plain syscall to our own child.
    unsafe { libc::kill(procs[0].pid() as i32, libc::SIGUSR1) };
    assert!(
        procs[0].wait_for_output("histograms written", Duration::from_secs(20)),
        "SIGUSR1 must dump:\n{}",
        procs[0].output()
    );
    let r = wait_all(procs, TIMEOUT);
    assert_all_ok(&r);
    for (id, _, out) in &r {
        let series = engine::histlog::read_log(&logs[*id as usize]).expect("readable log");
        let logged: u64 = series.iter().map(|(_, h)| h.len()).sum();
        let reported: u64 = out
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next()?;
                (name.contains("-home") || name.contains("-remote"))
                    .then(|| w.next()?.parse::<u64>().ok())
                    .flatten()
            })
            .sum();
        assert!(reported > 0, "{out}");
        assert_eq!(
            logged, reported,
            "node {id}: the log must hold every served fault"
        );
        let text = std::fs::read_to_string(&logs[*id as usize]).expect("log text");
        assert!(
            text.contains("Tag=read-remote,") || text.contains("Tag=write-remote,"),
            "{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sequential prefetch (`--prefetch 16`): rounds of writing a table spread over every home
/// and scanning it front to back on every worker. The scans must prefetch, and no page may
/// ever show an earlier round's contents (a prefetched replica that missed its
/// invalidation would). Node 2 runs two shards, so prefetch also runs per partition; node 1
/// sends its pages zero-copy (`--zero-copy`), the others with vectored copying sends.
#[test]
fn sequential_scans_with_prefetch_never_read_stale_pages() {
    let dir = scratch_dir("scan");
    let s = secret_file(&dir, "secret", 13);
    let mk = |id: u16| {
        let mut a = common(id, &s, "scan", 3);
        a.extend(["--prefetch".into(), "16".into()]);
        if id == 2 {
            let i = a.iter().position(|x| x == "--cores").expect("cores arg");
            a[i + 1] = "0-1".into();
        }
        if id == 1 {
            a.push("--zero-copy".into());
        }
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let r = wait_all(launch(&[mk(0), mk(1), mk(2)]), TIMEOUT);
    assert_all_ok(&r);
    let mut prefetched = 0;
    for (_, _, out) in &r {
        assert!(
            out.contains("3 rounds x 768 pages read by 2 workers, 0 stale or torn"),
            "{out}"
        );
        prefetched += out
            .split("prefetch requests ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.trim_end_matches(',').parse::<u64>().ok())
            .expect("summary line");
    }
    assert!(prefetched > 100, "only {prefetched} prefetch requests");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--hist-interval 1` writes the HDR log on a timer while the node runs (here while it
/// lingers after its workload), one interval per tick, next to the dump at exit.
#[test]
fn histogram_log_is_also_written_on_a_timer() {
    let dir = scratch_dir("hist-timer");
    let s = secret_file(&dir, "secret", 14);
    let log = dir.join("node0.hlog");
    let mk = |id: u16| {
        let mut a = common(id, &s, "seqs", 5_000);
        if id == 0 {
            a.extend([
                "--hist-dump".into(),
                log.display().to_string(),
                "--hist-interval".into(),
                "1".into(),
                "--linger-secs".into(),
                "4".into(),
            ]);
        }
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let procs = launch(&[mk(0), mk(1)]);
    assert!(
        procs[0].wait_for_output("serving for 4 more seconds", Duration::from_secs(120)),
        "{}",
        procs[0].output()
    );
    // Written by the timer while the node still runs (no signal, no exit yet).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !log.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(log.exists(), "no log written by the timer");
    assert!(
        !procs[0].output().contains("histograms written"),
        "the node already exited:\n{}",
        procs[0].output()
    );
    let r = wait_all(procs, TIMEOUT);
    assert_all_ok(&r);
    let text = std::fs::read_to_string(&log).expect("log text");
    // Interval lines start with a timestamp; the run plus four seconds of lingering give
    // several intervals of the same series.
    let intervals = text
        .lines()
        .filter(|l| l.starts_with("Tag=read-remote,"))
        .count();
    assert!(
        intervals >= 3,
        "only {intervals} read-remote intervals:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bounded replica cache (`--replica-cache 256K`: 64 pages of other homes per node, split
/// over node 2's two shards) under the scan workload, whose every worker reads 512 pages of
/// other homes per round: the nodes evict the pages they acquired least recently (clean
/// replicas and dirty pages written back), no scan ever reads a stale or torn page, and no
/// shard's holding goes far past its share of the bound.
#[test]
fn a_bounded_replica_cache_evicts_and_reads_stay_exact() {
    let dir = scratch_dir("replica-cache");
    let s = secret_file(&dir, "secret", 17);
    let mk = |id: u16| {
        let mut a = common(id, &s, "scan", 3);
        a.extend(["--replica-cache".into(), "256K".into()]);
        if id == 2 {
            let i = a.iter().position(|x| x == "--cores").expect("cores arg");
            a[i + 1] = "0-1".into();
        }
        if id == 1 {
            a.extend(["--prefetch".into(), "8".into()]);
        }
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let r = wait_all(launch(&[mk(0), mk(1), mk(2)]), TIMEOUT);
    assert_all_ok(&r);
    for (id, _, out) in &r {
        assert!(
            out.contains("3 rounds x 768 pages read by 2 workers, 0 stale or torn"),
            "{out}"
        );
        let line = out
            .lines()
            .find(|l| l.contains("replica cache: pages of other homes held"))
            .unwrap_or_else(|| panic!("node {id} printed no replica cache line:\n{out}"));
        eprintln!("node {id}: {}", line.trim());
        let field = |key: &str| -> String {
            line.split(key)
                .nth(1)
                .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
                .split([')', ','])
                .next()
                .expect("split yields one part")
                .trim()
                .to_string()
        };
        let evictions: u64 = field("evictions ").parse().expect("evictions");
        assert!(evictions > 100, "node {id}: {line}");
        assert_eq!(
            field("acquisitions not recorded "),
            "0",
            "node {id}: {line}"
        );
        // The workload hands every page back home before it ends (each shard walks its own
        // granules); only the barrier page is fetched again after that.
        let held: u64 = field("held ")
            .split_whitespace()
            .next()
            .and_then(|h| h.parse().ok())
            .expect("held");
        assert!(held <= 1, "node {id}: {line}");
        let share = if *id == 2 { 32 } else { 64 };
        for peak in field("peak per shard ").split(" / ") {
            let peak: u64 = peak.parse().expect("peak");
            // The share, plus pages whose eviction is on its way and the acquisitions of one
            // loop turn; without the bound a node holds all 512.
            assert!(peak <= 2 * share + 64, "node {id}: {line}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
