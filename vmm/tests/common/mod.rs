//! Helpers shared by the KVM tests.
#![allow(dead_code)]

pub mod uffd;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use vmm::{GuestMemory, GuestParams, Plan, TestGuest, VcpuReport, Verdict, Vm, VmConfig};

/// Fails loudly when the host has no usable /dev/kvm (these tests must not pass silently).
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests need /dev/kvm (KVM or PVM) and permission to open it: {e}");
    }
}

/// Parameters small enough for a loaded 2-CPU machine. The ticket lock hands over on every
/// acquisition, so a preempted holder costs the waiter a whole host timeslice: few iterations.
pub fn params_for(guest: TestGuest, vcpus: u32) -> GuestParams {
    let iterations = match guest {
        TestGuest::TicketLock => 5_000,
        _ => 20_000,
    };
    GuestParams {
        iterations,
        ..params(vcpus)
    }
}

/// Parameters small enough for a loaded 2-CPU machine.
pub fn params(vcpus: u32) -> GuestParams {
    GuestParams {
        iterations: 20_000,
        sum_bytes: 6 << 20,
        touch_pages: 64,
        ..GuestParams::new(vcpus)
    }
}

/// Creates the VM over `mem`, loads `plan`, runs all vCPUs with a generous watchdog.
pub fn run(mem: &GuestMemory, plan: &Plan, vcpus: u32, timeout: Duration) -> Vec<VcpuReport> {
    let mut vm = Vm::new(mem, VmConfig::single_node(vcpus)).expect("create VM");
    vm.load(&plan.boot, Some(plan.doorbell_gpa))
        .expect("load vCPU state");
    let (stop, _cancel) = vmm::stop_after(timeout);
    vm.run_vcpus(&[], &stop)
}

/// Sets up, runs and checks `guest` over `mem`.
pub fn run_guest(mem: &GuestMemory, guest: TestGuest, p: &GuestParams) -> Verdict {
    let plan = guest.setup(mem, p).expect("load the test guest");
    let reports = run(mem, &plan, p.vcpus, Duration::from_secs(120));
    match guest.check(p, &reports) {
        Ok(v) => v,
        Err(e) => panic!("{guest} with {} vCPUs: {e}\nreports: {reports:#?}", p.vcpus),
    }
}

/// Never-stopping flag for runs that must end on their own.
pub fn never() -> AtomicBool {
    AtomicBool::new(false)
}

/// Guest TSC frequency in kHz as KVM reports it.
pub fn tsc_khz() -> u32 {
    let mem = GuestMemory::anonymous(4 << 20, 0).unwrap();
    let vm = Vm::new(&mem, VmConfig::single_node(1)).expect("create VM");
    vm.tsc_khz().expect("KVM_GET_TSC_KHZ")
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: every index is below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    assert!(!cpus.is_empty());
    cpus
}
