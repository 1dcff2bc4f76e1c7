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
    let node = |id: u16| {
        let s = s.display().to_string();
        let cores = (id % 2).to_string();
        let vcpu = ((id + 1) % 2).to_string();
        let a = [
            "--memory",
            "128M",
            "--cores",
            &cores,
            "--idle",
            "block",
            "--cluster-secret-file",
            &s,
            "--kernel",
            &kernel,
            "--vcpus",
            "1",
            "--vcpu-cores",
            &vcpu,
            "--guest-timeout",
            "240",
        ];
        NodeOpts::new(id, &a)
    };
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
