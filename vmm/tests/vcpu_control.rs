//! vCPU control: stopping a vCPU that spins in guest code, running a subset of the vCPUs (as a
//! node of a cluster does), failures surfacing as typed outcomes, and the I/O-port form of the
//! protocol.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm::cpu::{Boot, CpuMode};
use vmm::{GuestMemory, Outcome, TestGuest, VcpuError, Vm, VmConfig};

const RAM: usize = 32 << 20;

#[test]
fn stop_interrupts_a_vcpu_spinning_in_the_guest() {
    common::require_kvm();
    let mem = GuestMemory::anonymous(RAM, 0).unwrap();
    // Two vCPUs in the VM, only vCPU 0 here: it finishes its rounds, then waits at the
    // barrier for vCPU 1 forever, spinning at CPL3 with no exits.
    let p = common::params(2);
    let plan = TestGuest::Atomics.setup(&mem, &p).unwrap();
    let config = VmConfig {
        vcpus: 2,
        local_vcpus: vec![0],
    };
    let mut vm = Vm::new(&mem, config).unwrap();
    vm.load(&plan.boot, Some(plan.doorbell_gpa)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let barrier = plan.layout.gpa(vmm::layout::TEST_SYNC_OFFSET);
    let m = mem.clone();
    let setter = std::thread::spawn(move || {
        // Wait until vCPU 0 has arrived at the barrier, so the stop lands while it spins.
        let deadline = Instant::now() + Duration::from_secs(60);
        while m.read_u64(barrier).unwrap() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        s.store(true, Ordering::Release);
        Instant::now()
    });
    let reports = vm.run_vcpus(&[], &stop);
    let returned = Instant::now();
    let stopped_at = setter.join().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].vcpu, 0);
    assert!(
        matches!(reports[0].outcome, Outcome::Stopped),
        "{:?}",
        reports[0].outcome
    );
    assert_eq!(
        mem.read_u64(barrier).unwrap(),
        1,
        "vCPU 0 arrived, vCPU 1 never ran"
    );
    assert_eq!(
        mem.read_u64(plan.counters).unwrap(),
        p.iterations,
        "only vCPU 0's rounds"
    );
    // Generous bound: the kick is immediate, the controller ticks every few ms.
    assert!(returned.duration_since(stopped_at) < Duration::from_secs(10));
    let l = plan.layout.gpa(vmm::layout::TEST_CODE_OFFSET);
    assert!(
        reports[0].last_rip >= l && reports[0].last_rip < l + 0x1000,
        "stopped inside the payload"
    );
}

#[test]
fn a_guest_without_its_tables_fails_with_a_shutdown() {
    common::require_kvm();
    let mem = GuestMemory::anonymous(RAM, 0).unwrap();
    let p = common::params(1);
    // Plan only: nothing written, so the first instruction fetch finds no page tables.
    let plan = TestGuest::Atomics.plan(0, RAM as u64, &p).unwrap();
    let mut vm = Vm::new(&mem, VmConfig::single_node(1)).unwrap();
    vm.load(&plan.boot, Some(plan.doorbell_gpa)).unwrap();
    let (stop, _cancel) = vmm::stop_after(Duration::from_secs(60));
    let reports = vm.run_vcpus(&[], &stop);
    assert!(
        matches!(
            reports[0].outcome,
            Outcome::Failed(VcpuError::Shutdown { .. })
        ),
        "{:?}",
        reports[0].outcome
    );
    let err = TestGuest::Atomics.check(&p, &reports).unwrap_err();
    assert!(err.to_string().contains("did not finish cleanly"), "{err}");
}

#[test]
fn one_failing_vcpu_stops_the_others() {
    common::require_kvm();
    let mem = GuestMemory::anonymous(RAM, 0).unwrap();
    let p = common::params(2);
    let plan = TestGuest::Atomics.setup(&mem, &p).unwrap();
    let mut vm = Vm::new(&mem, VmConfig::single_node(2)).unwrap();
    vm.load(&plan.boot, Some(plan.doorbell_gpa)).unwrap();
    // vCPU 1 starts at an unmapped address: its first instruction fetch faults.
    let bad = Boot {
        entry: plan.layout.ram_end() + (64 << 20),
        ..plan.boot
    };
    vm.load_vcpu(1, &bad).unwrap();
    let (stop, _cancel) = vmm::stop_after(Duration::from_secs(60));
    let reports = vm.run_vcpus(&[], &stop);
    assert!(
        matches!(
            reports[1].outcome,
            Outcome::Failed(VcpuError::Shutdown { .. })
        ),
        "{:?}",
        reports[1].outcome
    );
    assert!(
        matches!(reports[0].outcome, Outcome::Stopped),
        "vCPU 0 waits at the barrier until stopped: {:?}",
        reports[0].outcome
    );
    assert!(
        !stop.load(Ordering::Acquire),
        "stopped by the failure, not the watchdog"
    );
}

std::arch::global_asm!(
    ".pushsection .text.vmm_test_port_guest, \"ax\", @progbits",
    ".globl vmm_test_port_guest_start",
    ".globl vmm_test_port_guest_end",
    "vmm_test_port_guest_start:",
    "mov dx, 0x510",
    "mov al, 0x6b",
    "out dx, al",
    "mov dx, 0x511",
    "mov eax, 7",
    "out dx, eax",
    "mov dx, 0x512",
    "mov eax, 42",
    "out dx, eax",
    "mov dx, 0x513",
    "xor eax, eax",
    "out dx, eax",
    "ud2",
    "vmm_test_port_guest_end:",
    ".popsection",
);

extern "C" {
    static vmm_test_port_guest_start: u8;
    static vmm_test_port_guest_end: u8;
}

fn port_guest() -> &'static [u8] {
    // SAFETY: the two symbols bound the immutable code above, start before end.
    unsafe {
        let s = &raw const vmm_test_port_guest_start;
        let e = &raw const vmm_test_port_guest_end;
        std::slice::from_raw_parts(s, e.offset_from(s) as usize)
    }
}

/// Loads the payload's page tables and GDT, then runs `code` in `mode`.
fn run_code(code: &[u8], mode: CpuMode) -> vmm::VcpuReport {
    let mem = GuestMemory::anonymous(RAM, 0).unwrap();
    let plan = TestGuest::Atomics.setup(&mem, &common::params(1)).unwrap();
    let entry = plan.layout.gpa(vmm::layout::TEST_CODE_OFFSET);
    mem.write(entry, code).unwrap();
    let boot = Boot {
        mode,
        entry,
        ..plan.boot
    };
    let mut vm = Vm::new(&mem, VmConfig::single_node(1)).unwrap();
    vm.load(&boot, Some(plan.doorbell_gpa)).unwrap();
    let (stop, _cancel) = vmm::stop_after(Duration::from_secs(60));
    vm.run_vcpus(&[], &stop).remove(0)
}

#[test]
fn protocol_ports_work_from_cpl0() {
    common::require_kvm();
    let r = run_code(port_guest(), CpuMode::LongKernel);
    assert!(matches!(r.outcome, Outcome::Done(0)), "{:?}", r.outcome);
    assert_eq!(r.console, b"k");
    assert_eq!(r.results, vec![(7, 42)]);
}

#[test]
fn port_io_at_cpl3_faults() {
    // IOPL is 0 and there is no I/O bitmap, so `out` at CPL3 raises #GP on any host; with no
    // IDT that is a triple fault. (PVM refuses CPL3 port I/O even with IOPL 3, which is why the
    // test guests use the MMIO doorbell.)
    common::require_kvm();
    let r = run_code(port_guest(), CpuMode::LongUser);
    assert!(
        matches!(r.outcome, Outcome::Failed(VcpuError::Shutdown { .. })),
        "{:?}",
        r.outcome
    );
    assert!(r.console.is_empty());
}
