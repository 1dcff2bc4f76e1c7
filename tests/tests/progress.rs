//! Long operations say they go on: a formation whose link measurement waits for a peer logs
//! what it is doing every 2 s (on a terminal and in the logs alike), and finishes once the
//! peer runs again (within the link probe's 5 s bound on each read: a peer stopped longer
//! than that fails the formation).

use std::time::Duration;

use ssi_tests::{launch, scratch_dir, secret_file, wait_all, NodeOpts};

#[test]
fn a_formation_that_waits_says_what_it_measures_until_it_finishes() {
    let dir = scratch_dir("progress");
    let s = secret_file(&dir, "secret", 73);
    let sf = s.to_str().unwrap();
    let args = [
        "--memory",
        "16M",
        "--idle",
        "block",
        "--cluster-secret-file",
        sf,
        "--workload",
        "counters",
        "--ops",
        "100",
    ];
    // Stopping node 1 once node 0 begins to measure leaves node 0 waiting on it, unless the
    // measurement (tens of milliseconds on loopback) finished first: then try again.
    for attempt in 0..5 {
        let procs = launch(&[NodeOpts::new(0, &args), NodeOpts::new(1, &args)]);
        assert!(
            procs[0].wait_for_output("measuring the links to nodes", Duration::from_secs(60)),
            "{}",
            procs[0].output()
        );
        let pid = procs[1].pid() as i32;
        // SAFETY: kill(2) on a child process of this test; no memory is involved.
        let stopped = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(stopped, 0, "SIGSTOP: {}", std::io::Error::last_os_error());
        let waited =
            procs[0].wait_for_output("measuring the links at formation: ", Duration::from_secs(4));
        // SAFETY: as above.
        let resumed = unsafe { libc::kill(pid, libc::SIGCONT) };
        assert_eq!(resumed, 0, "SIGCONT: {}", std::io::Error::last_os_error());
        let formed_first = procs[0].output().contains("cluster formed");
        let results = wait_all(procs, Duration::from_secs(60));
        ssi_tests::assert_all_ok(&results);
        if formed_first && !waited {
            eprintln!("attempt {attempt}: the measurement finished before node 1 stopped");
            continue;
        }
        let out = &results[0].2;
        assert!(waited, "no progress line while waiting:\n{out}");
        // The line names the step, and the formation then completes.
        assert!(
            out.contains("measuring the links at formation: waiting for every node's latencies")
                || out.contains("measuring the links at formation: latency to node 1")
                || out.contains("measuring the links at formation: bandwidth"),
            "{out}"
        );
        assert!(out.contains("cluster formed"), "{out}");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    panic!("in 5 attempts node 1 was never stopped before node 0 finished measuring");
}
