//! What the `ssi-dp` CLI calls: `--guest test:<name>` runs a test guest, `--kernel/--initrd/
//! --cmdline` boots Linux. Both run over guest memory the caller supplies (the node region).
//!
//! On a cluster, the node that homes low memory loads the guest (`Loader::ThisNode`), signals
//! readiness through the data plane, and only then do the other nodes (`Loader::OtherNode`)
//! start their vCPUs; every node passes its own reports to the node that checks them.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::console::Console;
use crate::cpu::Boot;
use crate::guests::{GuestError, GuestParams, Plan, TestGuest};
use crate::linux::{self, LinuxBoot, LinuxConfig, LinuxError, Protocol};
use crate::memory::GuestMemory;
use crate::platform::vcpu_loop::GuestTsc;
use crate::platform::{End, Placement, Platform, PlatformError};
use crate::vcpu::VcpuReport;
use crate::vm::{Vm, VmConfig, VmError};

/// Command line used when `--cmdline` is not given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1";

/// Errors of the launch helpers. Messages say what to change.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// `--guest` value not understood.
    #[error("unknown guest {0:?}: use test:atomics, test:ticket-lock, test:parallel-sum or test:fault-latency")]
    UnknownGuest(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Loading a test guest failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// Loading Linux failed.
    #[error(transparent)]
    Linux(#[from] LinuxError),
    /// Creating or configuring the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The guest platform could not be set up.
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// Parses `test:<name>`.
pub fn parse_guest_arg(arg: &str) -> Result<TestGuest, LaunchError> {
    arg.strip_prefix("test:")
        .and_then(TestGuest::from_name)
        .ok_or_else(|| LaunchError::UnknownGuest(arg.to_string()))
}

/// Whether this node writes the guest into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// This node loads the guest (the node that homes low memory).
    ThisNode,
    /// Another node loads it and has signalled readiness before this call.
    OtherNode,
}

/// The local result of a test-guest run.
#[derive(Debug)]
pub struct TestRun {
    /// Addresses and boot state used.
    pub plan: Plan,
    /// One report per local vCPU.
    pub reports: Vec<VcpuReport>,
    /// Guest TSC frequency (for the fault-latency histogram).
    pub tsc_khz: Option<u32>,
}

/// Runs the local vCPUs of `guest` until they finish or `stop` is set. Check the merged
/// reports of all nodes with [`TestGuest::check`].
pub fn run_test_guest(
    mem: &GuestMemory,
    guest: TestGuest,
    params: &GuestParams,
    config: VmConfig,
    loader: Loader,
    pin_cpus: &[usize],
    stop: &AtomicBool,
) -> Result<TestRun, LaunchError> {
    let plan = match loader {
        Loader::ThisNode => guest.setup(mem, params)?,
        Loader::OtherNode => guest.plan(mem.gpa_base(), mem.size() as u64, params)?,
    };
    let mut vm = Vm::new(mem, config)?;
    vm.load(&plan.boot, Some(plan.doorbell_gpa))?;
    let tsc_khz = vm.tsc_khz();
    let reports = vm.run_vcpus(pin_cpus, stop);
    Ok(TestRun {
        plan,
        reports,
        tsc_khz,
    })
}

/// `--kernel/--initrd/--cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxArgs {
    /// bzImage or vmlinux.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Command line ([`DEFAULT_CMDLINE`] if not given).
    pub cmdline: String,
    /// Entry protocol.
    pub protocol: Protocol,
}

/// The result of a Linux run.
#[derive(Debug)]
pub struct LinuxRun {
    /// Where the kernel went and how it started.
    pub boot: LinuxBoot,
    /// One report per vCPU.
    pub reports: Vec<VcpuReport>,
    /// How the guest ended (power-off, reset, a failure), if it did before the stop.
    pub end: Option<End>,
    /// The verdict the guest wrote to the status port, if any.
    pub guest_status: Option<u32>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, LaunchError> {
    std::fs::read(path).map_err(|source| LaunchError::Read {
        path: path.clone(),
        source,
    })
}

/// Reads the kernel and initrd named in `args` and writes them, the boot structures and the
/// ACPI tables into `mem` (on a cluster: only the node that loads the guest).
pub fn load_linux(
    mem: &GuestMemory,
    args: &LinuxArgs,
    acpi: Option<&acpi::AcpiImage>,
) -> Result<LinuxBoot, LaunchError> {
    let kernel = read(&args.kernel)?;
    let initrd = args.initrd.as_ref().map(read).transpose()?;
    Ok(linux::load(
        mem,
        &LinuxConfig {
            kernel: &kernel,
            initrd: initrd.as_deref(),
            cmdline: &args.cmdline,
            acpi,
            protocol: args.protocol,
        },
    )?)
}

/// The KVM VM for a Linux guest: `config`'s local vCPUs prepared for the userspace interrupt
/// controllers ([`Vm::prepare_linux`]); vCPU 0, which must be local exactly when `boot` is
/// given, starts at `boot`.
pub fn linux_vm(
    mem: &GuestMemory,
    config: VmConfig,
    boot: Option<&Boot>,
) -> Result<Vm, LaunchError> {
    let bsp_local = config.local_vcpus.contains(&0);
    let mut vm = Vm::new(mem, config)?;
    vm.prepare_linux()?;
    match (bsp_local, boot) {
        (true, Some(b)) => vm.load_vcpu(0, b)?,
        (false, None) => {}
        (true, None) => {
            return Err(VmError::Config("vCPU 0 is local but has no boot state".into()).into())
        }
        (false, Some(_)) => {
            return Err(
                VmError::Config("a boot state for vCPU 0, which runs elsewhere".into()).into(),
            )
        }
    }
    Ok(vm)
}

/// Whether this host's KVM is PVM (its module is loaded), where a stock Linux gets only as far
/// as early boot (docs/vmm.md, "Linux on PVM hosts").
pub fn host_kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// What to tell a user who boots Linux on a PVM host.
pub const PVM_NOTE: &str = "this host's /dev/kvm is PVM, which emulates every guest kernel \
    instruction and stops a stock Linux in early boot; a full boot needs hardware KVM \
    (Intel VT-x or AMD-V), for example the lab VM: scripts/lab run --bin target/release/ssi-dp \
    -- 'ssi-dp ... --kernel ...' (docs/vmm.md, \"The lab\")";

/// Boots Linux on one node with `vcpus` vCPUs (vCPU 0 starts at the kernel entry, the others
/// wait for the kernel's INIT/SIPI), its console on `console`, until it powers off, resets,
/// fails, or `stop` is set.
pub fn run_linux(
    mem: &GuestMemory,
    args: &LinuxArgs,
    acpi: Option<&acpi::AcpiImage>,
    vcpus: u32,
    pin_cpus: &[usize],
    stop: &AtomicBool,
    console: Console,
) -> Result<LinuxRun, LaunchError> {
    let boot = load_linux(mem, args, acpi)?;
    let mut vm = linux_vm(mem, VmConfig::single_node(vcpus), Some(&boot.boot))?;
    let platform = Platform::new(Placement::single_node(vcpus), console, None)?;
    // One guest TSC for every vCPU: KVM matches the offsets of vCPUs created close together,
    // but the APIC timers convert deadlines with one offset, so make it so.
    let offset = vm.tsc_offset()?;
    vm.set_tsc_offset(offset)?;
    let tsc = GuestTsc {
        offset,
        khz: vm.tsc_khz().unwrap_or(0),
    };
    let reports = vm.run_linux_vcpus(&platform, tsc, pin_cpus, stop);
    Ok(LinuxRun {
        boot,
        reports,
        end: platform.ended(),
        guest_status: platform.guest_status(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_args_parse() {
        assert_eq!(parse_guest_arg("test:atomics").unwrap(), TestGuest::Atomics);
        assert_eq!(
            parse_guest_arg("test:fault-latency").unwrap(),
            TestGuest::FaultLatency
        );
        for bad in ["atomics", "test:", "test:nope", "linux"] {
            assert!(
                matches!(parse_guest_arg(bad), Err(LaunchError::UnknownGuest(_))),
                "{bad}"
            );
        }
        for g in TestGuest::ALL {
            assert_eq!(parse_guest_arg(&format!("test:{g}")).unwrap(), g);
        }
    }
}
