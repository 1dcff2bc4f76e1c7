//! A real Debian kernel booted across a two-node cluster: its memory is the nodes' distributed
//! address space, its ACPI tables describe the cluster from the formation measurements. On
//! hosts with hardware KVM it boots; on these PVM hosts every kernel-mode instruction is
//! emulated and the emulator stops early boot (docs/vmm.md), so the test checks what can be
//! checked here: the kernel runs on distributed memory far enough to print its banner on our
//! serial console and to read our SRAT, whose node ranges match the layout. Its one vCPU runs
//! on node 0; node 1 only serves memory (the vCPUs spread over nodes are observed in the lab,
//! tests/tests/lab_linux.rs).

use std::time::Duration;

use ssi_tests::{launch, scratch_dir, secret_file, wait_all, NodeOpts};

fn debian_kernel() -> Option<String> {
    let mut k: Vec<_> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    k.sort();
    k.pop().map(|p| p.display().to_string())
}

/// Node `id` of a two-node cluster booting `kernel` on one vCPU (node 0's), with `extra`
/// arguments.
fn linux_node(id: u16, kernel: &str, secret: &std::path::Path, extra: &[&str]) -> NodeOpts {
    let s = secret.display().to_string();
    let cores = (id % 2).to_string();
    let vcpu = ((id + 1) % 2).to_string();
    let mut a = vec![
        "--memory",
        "128M",
        "--cores",
        &cores,
        "--idle",
        "block",
        "--cluster-secret-file",
        &s,
        "--kernel",
        kernel,
        "--vcpus",
        "1",
        "--vcpu-cores",
        &vcpu,
    ];
    a.extend_from_slice(extra);
    NodeOpts::new(id, &a)
}

#[test]
fn linux_reads_the_cluster_tables_from_distributed_memory() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing"
    );
    let kernel = debian_kernel()
        .expect("no /boot/vmlinuz-*: install linux-image-cloud-amd64 (scripts/test does)");
    let dir = scratch_dir("linux-cluster");
    let s = secret_file(&dir, "secret", 41);
    let node = |id: u16| linux_node(id, &kernel, &s, &["--guest-timeout", "240"]);
    let r = wait_all(launch(&[node(0), node(1)]), Duration::from_secs(400));
    let out0 = &r[0].2;
    assert!(
        out0.contains("Linux version"),
        "the kernel banner must appear:\n{out0}"
    );
    assert!(
        out0.contains("ACPI: SRAT: Node 0 PXM 0 [mem 0x00000000-0x07ffffff]")
            && out0.contains("ACPI: SRAT: Node 1 PXM 1 [mem 0x08000000-0x0fdfffff]"),
        "Linux must read our SRAT with each node's memory:\n{out0}"
    );
    assert!(
        out0.contains("ACPI: SLIT") && out0.contains("ACPI: HMAT"),
        "{out0}"
    );
    assert!(
        out0.contains("node 0: linux: "),
        "the run's verdict line:\n{out0}"
    );
    // Node 1 only served memory and ended in order.
    assert!(r[1].1.is_some_and(|s| s.success()), "{}", r[1].2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node that stops answering (SIGSTOP) leaves the vCPU that needs one of its pages waiting
/// in the kernel inside KVM_RUN, where no kick reaches it. The vCPU's node must notice (no
/// exit for --vcpu-stall-secs), say which vCPU waits where, end the run and exit: before, it
/// hung past --guest-timeout for good.
#[test]
fn a_vcpu_stuck_on_a_stopped_nodes_page_ends_the_run_with_its_name() {
    let kernel = debian_kernel()
        .expect("no /boot/vmlinuz-*: install linux-image-cloud-amd64 (scripts/test does)");
    let dir = scratch_dir("linux-stall");
    let s = secret_file(&dir, "secret", 42);
    let extra = ["--guest-timeout", "240", "--vcpu-stall-secs", "5"];
    let mut nodes = launch(&[
        linux_node(0, &kernel, &s, &extra),
        linux_node(1, &kernel, &s, &extra),
    ]);
    // The banner comes once the kernel runs; node 1 homes the upper half of its memory.
    assert!(
        nodes[0].wait_for_output("Linux version", Duration::from_secs(120)),
        "the kernel must start:\n{}",
        nodes[0].output()
    );
    let stopped = nodes[1].pid() as i32;
    // SAFETY: a plain syscall on our own child's pid.
    assert_eq!(unsafe { libc::kill(stopped, libc::SIGSTOP) }, 0);
    let node1 = nodes.pop().expect("two nodes");
    let node0 = nodes.pop().expect("two nodes");
    let t0 = std::time::Instant::now();
    let (status, out) = node0.wait(Duration::from_secs(120));
    let took = t0.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(stopped, libc::SIGCONT) }, 0);
    drop(node1);
    assert!(
        status.is_some(),
        "node 0 must exit on its own (it was killed after 120 s):\n{out}"
    );
    assert!(!status.unwrap().success(), "the run failed:\n{out}");
    assert!(
        out.contains("vCPU 0 (")
            && out.contains(
                "inside KVM_RUN, waiting in handle_userfault) made no exit for 5 s, asleep"
            ),
        "node 0 must name the stuck vCPU and its wait:\n{out}"
    );
    assert!(
        out.contains("did not stop within 30 s") || out.contains("node 0: linux: "),
        "node 0 must end the run (with its verdict, or saying the vCPU cannot stop):\n{out}"
    );
    // 5 s of stall (sampled each second), then at most 30 s for the vCPU threads.
    assert!(took < Duration::from_secs(60), "took {took:?}:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
