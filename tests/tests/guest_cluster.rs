//! One KVM guest whose vCPUs run on different node processes: the four test guests give
//! exact results with one vCPU on each of two nodes, and with both vCPUs on one node of a
//! two-node cluster (the other node only serves its memory). `--idle block` throughout.

use std::time::Duration;

use ssi_tests::{assert_all_ok, launch, scratch_dir, secret_file, wait_all, NodeOpts};

const TIMEOUT: Duration = Duration::from_secs(240);

fn kvm_or_fail() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the guest tests need KVM (CI machines have it)"
    );
}

/// Runs `guest` on two nodes; `vcpus[i]` is node i's `--local-vcpus`.
fn run(guest: &str, vcpus: [&str; 2]) -> Vec<(u16, Option<std::process::ExitStatus>, String)> {
    kvm_or_fail();
    let dir = scratch_dir(&format!("guest-{guest}-{}", vcpus[0]));
    let s = secret_file(&dir, "secret", 21);
    let node = |id: u16| {
        let s = s.display().to_string();
        let cores = (id % 2).to_string();
        let vcpu_core = ((id + 1) % 2).to_string();
        let a = [
            "--memory",
            "16M",
            "--cores",
            &cores,
            "--idle",
            "block",
            "--cluster-secret-file",
            &s,
            "--guest",
            guest,
            "--vcpus",
            "2",
            "--local-vcpus",
            vcpus[id as usize],
            "--vcpu-cores",
            &vcpu_core,
            "--guest-iterations",
            "3000",
            "--guest-timeout",
            "120",
        ];
        NodeOpts::new(id, &a)
    };
    let r = wait_all(launch(&[node(0), node(1)]), TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn check(guest: &str, want: &str) {
    for vcpus in [["0", "1"], ["0-1", "none"]] {
        let r = run(guest, vcpus);
        assert_all_ok(&r);
        for (_, _, out) in &r {
            assert!(out.contains(want), "{guest} with vCPUs {vcpus:?}:\n{out}");
        }
    }
}

#[test]
fn atomics_guest_is_exact_across_nodes() {
    // 2 vCPUs x 3000 rounds on each counter.
    check("test:atomics", "8 counters, each 6000 (exact)");
}

#[test]
fn ticket_lock_guest_is_exact_across_nodes() {
    check("test:ticket-lock", "protected counter 6000 (exact)");
}

#[test]
fn parallel_sum_guest_is_exact_across_nodes() {
    check("test:parallel-sum", "array sum 0x");
}

#[test]
fn fault_latency_guest_reports_every_touch() {
    // 2 vCPUs x 256 pages, each a first touch measured in the guest with rdtsc.
    check("test:fault-latency", "512 first touches");
}

/// The layout `guest-vcpus` (bench) measures: node 0 homes no memory and runs every vCPU, node
/// 1 homes all of it (and so loads the guest), so every first touch is a remote read served
/// by node 1. `--guest-touch-pages` sizes the slices.
#[test]
fn fault_latency_guest_on_a_memoryless_node_faults_every_touch_remotely() {
    kvm_or_fail();
    let dir = scratch_dir("guest-touch-remote");
    let s = secret_file(&dir, "secret", 22);
    let s = s.display().to_string();
    let node = |id: u16, local: &str, cores: &str, mem: &str| {
        let a = ssi_tests::fault_latency_guest_args(&s, 3, local, cores, 1500, 120);
        NodeOpts::new(id, &a.iter().map(String::as_str).collect::<Vec<_>>()).memory(mem)
    };
    let r = wait_all(
        launch(&[node(0, "0-2", "1", "0"), node(1, "none", "0", "48M")]),
        TIMEOUT,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_all_ok(&r);
    let out0 = &r[0].2;
    assert!(out0.contains("4500 first touches"), "{out0}");
    assert!(
        out0.contains(" mean "),
        "the guest line gives the mean:\n{out0}"
    );
    // Every touch is a remote read on node 0 (page-table walks and the loader's writes
    // add a few more).
    let reads: u64 = out0
        .lines()
        .find(|l| l.trim_start().starts_with("read-remote"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no read-remote row:\n{out0}"));
    assert!(
        reads >= 4500,
        "{reads} remote reads for 4500 touches:\n{out0}"
    );
}

#[test]
fn a_touch_count_beyond_the_report_slot_is_refused() {
    let out = std::process::Command::new(ssi_tests::ssi_dp_bin())
        .args([
            "--guest",
            "test:fault-latency",
            "--guest-touch-pages",
            "3837",
        ])
        .output()
        .expect("run ssi-dp");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--guest-touch-pages"), "{err}");
    assert!(err.contains("3836"), "{err}");
}
