//! An unmodified Linux (Debian's cloud kernel) across node processes on a hardware-style KVM
//! (the lab VM: kvm_amd with nested paging), its vCPUs spread over the nodes. The guest's init
//! is `ssi-guest-check`: it checks the CPUs and NUMA nodes it sees, runs exact cross-CPU work
//! pinned on every CPU, writes its verdict to the status port and powers off; every node must
//! then exit 0 with the guest's verdict.
//!
//! Slow by nature (QEMU emulates every instruction, and every page a vCPU on another node
//! touches crosses the network): minutes per test. Correctness, not speed.

use std::path::PathBuf;
use std::time::Duration;

use ssi_tests::initramfs::write_linux_initramfs;
use ssi_tests::lab::{guest_kernel, Lab, LabRun};

/// Wall-clock limit of one lab VM. With frame MACs the 4-vCPU run took 882 s once, timed
/// out at its 1200 s guest limit another time (boot alone 430 s, then 795 s: the page moves
/// of a boot vary a lot under TCG), about 1640 s in a clean-clone rehearsal and more than
/// 2700 s in CI; without them (below) it took 675 s. The guest may take 2400 s, the VM 2700 s.
const LAB_TIMEOUT: Duration = Duration::from_secs(2700);

/// Runs `lab-cluster CLUSTER_OPTS -- NODE_ARGS` (plus the guest's arguments) with the guest
/// kernel and an initramfs whose checker expects `checker_args`, and returns the run.
///
/// The nodes run with `--frame-auth none`: they talk over L1's loopback, and under TCG the
/// default MAC (AES-256-GCM over every frame, page included) doubles what a remote fault
/// costs. Measured in the lab with `fault-latency` (200 samples, idle block, one L1 CPU):
/// remote read p50 2.0 ms with `none`, 4.1 ms with `mac`, 4.0 ms with `aead`, the home's
/// answer 0.38 ms against 1.39 ms; boot moves some 100 000 pages, one at a time. Frame
/// protection is tested by `frame_tamper.rs`, `lab_guests.rs` and the host's cluster tests.
fn run_linux(cluster_opts: &str, node_args: &str, vcpus: u32, checker_args: &str) -> LabRun {
    let initrd: PathBuf = write_linux_initramfs(&format!(
        "{checker_args} --rounds 100 --measure 10 --timeout 1800"
    ));
    let command = format!(
        "lab-cluster {cluster_opts} -- {node_args} --cores 0 --idle block --residency-us 2000 \
         --frame-auth none --kernel /vmlinuz --initrd /initrd \
         --cmdline 'console=ttyS0 panic=-1 loglevel=4' \
         --init-marker ssi-guest-init: \
         --vcpus {vcpus} --guest-timeout 2400"
    );
    Lab::new()
        .timeout(LAB_TIMEOUT)
        .file(guest_kernel(), "/vmlinuz")
        .file(initrd, "/initrd")
        .run(&command)
}

fn assert_guest_passed(run: &LabRun, nodes: &[u16], cpus: u32) {
    assert!(
        run.status.is_some(),
        "the lab run timed out:\n{}",
        run.describe()
    );
    // The figures docs/vmm.md quotes, shown with --nocapture.
    eprintln!("lab run: {:.0} s in all", run.elapsed.as_secs_f64());
    for line in run.output.lines().filter(|l| {
        l.contains(": linux: ") || l.contains("SSI-GUEST-MEASURE") || l.contains("SSI-GUEST-CHECK")
    }) {
        eprintln!("{line}");
    }
    let console = run.node_output(0);
    assert!(
        console.contains(&format!("SSI-GUEST-CHECK PASS cpus={cpus} nodes=2")),
        "the guest's checker must pass on every CPU:\n{}",
        run.describe()
    );
    // The checker's measurements, from the first CPU to every other and on every CPU.
    let ipis = console.matches("SSI-GUEST-MEASURE ipi ").count();
    let timers = console.matches("SSI-GUEST-MEASURE timer ").count();
    assert!(
        ipis == cpus as usize - 1 && timers == cpus as usize,
        "the checker must measure IPIs to {} CPUs and timers on {cpus}:\n{}",
        cpus - 1,
        run.describe()
    );
    for &id in nodes {
        assert_eq!(
            run.node_status(id),
            Some(0),
            "node {id} must exit 0:\n{}",
            run.describe()
        );
        let out = run.node_output(id);
        assert!(
            out.contains(&format!("node {id}: linux: OK: "))
                && out.contains("the guest powered off, verdict 0 (success)"),
            "node {id} must report the guest's power-off and verdict:\n{}",
            run.describe()
        );
    }
}

#[test]
fn linux_runs_across_two_nodes_with_one_vcpu_each_and_survives_a_killed_node() {
    // Nodes 0 and 1 home the memory and run one vCPU each; node 2 is a compute-only member
    // that takes no part in the guest and is killed once Linux runs its init.
    let run = run_linux(
        "--nodes 3 --mem 0=128M --mem 1=128M --mem 2=0 --kill 2@ssi-guest-init:",
        "--participants 0,1",
        2,
        "--expect-cpus 2 --expect-node 0=0 --expect-node 1=1",
    );
    assert_guest_passed(&run, &[0, 1], 2);
    assert_eq!(
        run.node_status(2),
        Some(137),
        "node 2 was killed:\n{}",
        run.describe()
    );
    assert!(
        run.node_output(0).contains("node n2 is down"),
        "node 0 must notice node 2's death:\n{}",
        run.describe()
    );
}

/// Not in the default run (`cargo test -p ssi-tests --test lab_linux -- --ignored` runs it):
/// under TCG its length varies more than CI's 90 minutes allow. Without frame MACs it took
/// 675 s once and more than its 2 700 s limit in the next clean-clone rehearsal (2026-12-05);
/// with them 882 s, 1 640 s and more than 2 700 s (CI). The two-node test above keeps an SMP
/// Linux across nodes in every CI run.
#[test]
#[ignore = "longer than CI allows under TCG (675 s to over 2 700 s); run with --ignored"]
fn linux_runs_across_two_nodes_with_two_vcpus_each() {
    let run = run_linux(
        "--nodes 2 --mem 0=128M --mem 1=128M",
        "",
        4,
        "--expect-cpus 4 --expect-node 0=0,2 --expect-node 1=1,3",
    );
    assert_guest_passed(&run, &[0, 1], 4);
}
