//! Every exit says why, and no node dies by signal: when a home node is killed with SIGKILL
//! while the others run a workload on its pages, each survivor stops in order, prints one
//! line naming the dead node and the pages it homed, and exits with the documented code
//! (docs/operations.md, "Exit codes"). Before this was built, the home that kept running was
//! usually killed by SIGBUS with no line at all (2–3 of 3 trials).

use std::time::Duration;

use ssi_tests::{launch, scratch_dir, secret_file, wait_all, NodeOpts};

/// `ssi-dp`'s exit code when a home node died (docs/operations.md).
const EXIT_HOME_DIED: i32 = 3;

const TRIALS: usize = 3;

fn node(id: u16, secret: &std::path::Path, memory: &str) -> NodeOpts {
    let s = secret.display().to_string();
    NodeOpts::new(
        id,
        &[
            "--cores",
            &(id % 2).to_string(),
            "--idle",
            "block",
            "--cluster-secret-file",
            &s,
            "--workload",
            "seqs",
            "--ops",
            "200000",
            "--participants",
            "0-2",
            "--connect-timeout",
            "60",
        ],
    )
    .memory(memory)
}

#[test]
fn survivors_of_a_dead_home_exit_with_its_name_and_never_by_signal() {
    let dir = scratch_dir("home-death");
    let s = secret_file(&dir, "secret", 7);
    for trial in 0..TRIALS {
        let mut procs = launch(&[node(0, &s, "16M"), node(1, &s, "16M"), node(2, &s, "0")]);
        for p in &procs {
            assert!(
                p.wait_for_output("cluster formed", Duration::from_secs(60)),
                "trial {trial}: node {} never formed:\n{}",
                p.id,
                p.output()
            );
        }
        std::thread::sleep(Duration::from_millis(300 + 200 * trial as u64));
        assert!(
            !procs[0].output().contains("workload seqs"),
            "trial {trial}: the workload finished before the kill; the test needs a longer run"
        );
        procs[1].kill9();
        let victim = procs.remove(1);
        let (status, _) = victim.wait(Duration::from_secs(10));
        assert!(status.is_some_and(|s| !s.success()), "the victim must die");
        for (id, status, out) in wait_all(procs, Duration::from_secs(60)) {
            let status = status.unwrap_or_else(|| panic!("node {id} did not exit:\n{out}"));
            assert_eq!(
                status.code(),
                Some(EXIT_HOME_DIED),
                "trial {trial}: node {id} must exit {EXIT_HOME_DIED}, not {status:?} \
                 (a signal shows as None):\n{out}"
            );
            let line = out
                .lines()
                .find(|l| l.contains("node 1 died"))
                .unwrap_or_else(|| {
                    panic!("trial {trial}: node {id} never named the dead home:\n{out}")
                });
            assert!(
                line.contains("home to guest pages 4096..8192") && line.contains("cannot continue"),
                "trial {trial}: node {id}'s line must say what the dead node homed: {line}"
            );
            assert!(
                !out.contains("panicked"),
                "trial {trial}: node {id} panicked:\n{out}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
