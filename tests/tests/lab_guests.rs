//! The four CPL3 test guests across two node processes on a hardware-style KVM (the lab VM:
//! kvm_amd with nested paging under QEMU TCG), one vCPU on each node, `--idle block`: each
//! node must verify the whole run exactly, as on the host's PVM.
//!
//! L1's KVM uses nested paging, as real hosts do; the guests' page tables are read-replicated
//! on the node that did not write them (with the lab's QEMU, whose page walker reads guest
//! page tables as hardware does: scripts/lab).
//!
//! A residency window of 2 ms: in TCG a vCPU resumes long after its page arrives, and without
//! the window a spinning reader on the other node takes the lock page back first, again and
//! again (the livelock the window exists for).

use std::time::Duration;

use ssi_tests::lab::Lab;

const GUESTS: [(&str, &str); 4] = [
    ("atomics", "counters, each 4000 (exact)"),
    ("ticket-lock", "protected counter 4000 (exact)"),
    ("parallel-sum", "array sum 0x"),
    ("fault-latency", "first touches"),
];

#[test]
fn cpl3_guests_are_exact_across_nodes_on_hardware_style_kvm() {
    let mut command = String::new();
    for (g, _) in GUESTS {
        command.push_str(&format!(
            "echo @@GUEST {g}; lab-cluster --nodes 2 -- --memory 16M --cores {{cpu}} --idle block \
             --residency-us 2000 --guest test:{g} --vcpus 2 --vcpu-cores {{other}} \
             --guest-iterations 2000 --guest-timeout 120; "
        ));
    }
    let run = Lab::new().timeout(Duration::from_secs(600)).run(&command);
    assert!(
        run.status.is_some(),
        "the lab run timed out:\n{}",
        run.describe()
    );
    // One section per guest, each ending in its nodes' @@NODE lines.
    let sections: Vec<&str> = run.output.split("@@GUEST ").skip(1).collect();
    assert_eq!(sections.len(), GUESTS.len(), "{}", run.describe());
    for ((g, want), section) in GUESTS.iter().zip(&sections) {
        assert!(section.starts_with(g), "{}", run.describe());
        for id in 0..2 {
            assert!(
                section.contains(&format!("@@NODE {id} 0")),
                "guest {g}: node {id} did not exit 0:\n{}",
                run.describe()
            );
            let ok = format!("[n{id}] node {id}: guest {g}: OK: 2 vCPUs (this node ran [{id}])");
            assert!(
                section.contains(&ok) && section.contains(want),
                "guest {g}: node {id} did not verify the run ({want}):\n{}",
                run.describe()
            );
        }
    }
}
