//! A node that runs out of memory while it installs pages stops with the reason and exit code
//! 1: it does not hang, panic, or go on with a page it could not install. The memory limit is
//! real: node 0 runs in a cgroup-v1 memory cgroup whose OOM killer is off, so the kernel
//! refuses its `UFFDIO_COPY` with ENOMEM once the limit is reached (with the killer on, the
//! kernel would kill the process instead, and nothing could report anything).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ssi_tests::{launch, scratch_dir, secret_file, NodeOpts};

/// The cgroup-v1 memory hierarchy of these machines (`mount | grep cgroup`).
const MEMCG: &str = "/sys/fs/cgroup/memory";

/// A memory cgroup that is removed again when dropped (once its processes are gone).
struct Memcg(PathBuf);

impl Memcg {
    fn new(name: &str, limit: u64) -> Self {
        assert!(
            Path::new(MEMCG).join("memory.limit_in_bytes").exists(),
            "{MEMCG} is not a cgroup-v1 memory hierarchy: this test needs one (run as root on \
             the CI machine kind)"
        );
        let dir = Path::new(MEMCG).join(name);
        std::fs::create_dir_all(&dir).expect("create the memory cgroup (root needed)");
        let cg = Memcg(dir);
        cg.set("memory.limit_in_bytes", &limit.to_string());
        cg.set("memory.oom_control", "1");
        cg
    }

    fn set(&self, file: &str, value: &str) {
        std::fs::write(self.0.join(file), value)
            .unwrap_or_else(|e| panic!("writing {value} to {}: {e}", self.0.join(file).display()));
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        // Fails while a process is still in it; the next run's create_dir_all reuses it.
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_node_out_of_memory_stops_with_the_reason() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: this test runs a KVM test guest (CI machines have it)"
    );
    let dir = scratch_dir("oom");
    let s = secret_file(&dir, "secret", 31);
    let s = s.display().to_string();
    // Node 0 homes nothing and runs four vCPUs that each read 3 800 pages of node 1's memory:
    // 59 MiB of installs against a 32 MiB limit. Memory it had before it joined the cgroup
    // stays charged where it was (cgroup v1 does not move charges), so the installs meet the
    // limit, not the process's start-up.
    let node = |id: u16, local: &str, cores: &str, mem: &str| {
        let a = ssi_tests::fault_latency_guest_args(&s, 4, local, cores, 3800, 60);
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>()).memory(mem)
    };
    let cg = Memcg::new(&format!("ssi-tests-oom-{}", std::process::id()), 32 << 20);
    let mut nodes = launch(&[node(0, "0-3", "1", "0"), node(1, "none", "0", "256M")]);
    // Moving the process moves all its threads; those it starts later are born in the cgroup.
    cg.set("cgroup.procs", &nodes[0].pid().to_string());
    let stopped = nodes[0].wait_for_output(
        "failed (the kernel's error is logged above)",
        Duration::from_secs(120),
    );
    // Lift the limit so that nothing in node 0 stays blocked on it while it exits.
    cg.set("memory.limit_in_bytes", "-1");
    let n1 = nodes.pop().expect("node 1");
    let n0 = nodes.pop().expect("node 0");
    let (status, out) = n0.wait(Duration::from_secs(60));
    drop(n1);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        stopped,
        "node 0 did not report a failed memory operation:\n{out}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(
        out.contains("the kernel is out of memory (ENOMEM)"),
        "the kernel's error is not in the log:\n{out}"
    );
    assert!(
        out.contains("this node's memory no longer matches its protocol state"),
        "{out}"
    );
    assert!(
        !out.contains("has not finished a loop turn"),
        "the watchdog reported a stall while the node stopped on its failure:\n{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
}
