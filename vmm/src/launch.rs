//! What the `ssi-dp` CLI calls: `--guest test:<name>` runs a test guest, `--kernel/--initrd/
//! --cmdline` boots Linux. Both run over guest memory the caller supplies (the node region).
//!
//! On a cluster, the node that homes low memory loads the guest (`Loader::ThisNode`), signals
//! readiness through the data plane, and only then do the other nodes (`Loader::OtherNode`)
//! start their vCPUs; every node passes its own reports to the node that checks them.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::console::Console;
use crate::guests::{GuestError, GuestParams, Plan, TestGuest};
use crate::linux::{self, LinuxBoot, LinuxConfig, LinuxError, Protocol};
use crate::memory::GuestMemory;
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
    /// SMP Linux without an in-kernel irqchip.
    #[error(
        "Linux with {0} vCPUs needs an in-kernel interrupt controller, which this host's KVM \
         refuses (PVM): boot with 1 vCPU here, or on a host with hardware KVM"
    )]
    NoIrqchip(u32),
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
    /// Whether the host gave us an in-kernel irqchip.
    pub irqchip: bool,
    /// One report per vCPU.
    pub reports: Vec<VcpuReport>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, LaunchError> {
    std::fs::read(path).map_err(|source| LaunchError::Read {
        path: path.clone(),
        source,
    })
}

/// Boots Linux with `vcpus` vCPUs (the boot vCPU starts at the kernel entry; the others wait
/// for the kernel's INIT/SIPI in the in-kernel irqchip, so more than one needs hardware KVM),
/// its console on `console`, until it halts, fails, or `stop` is set.
pub fn run_linux(
    mem: &GuestMemory,
    args: &LinuxArgs,
    acpi: Option<&control::acpi::AcpiImage>,
    vcpus: u32,
    pin_cpus: &[usize],
    stop: &AtomicBool,
    console: Console,
) -> Result<LinuxRun, LaunchError> {
    let kernel = read(&args.kernel)?;
    let initrd = args.initrd.as_ref().map(read).transpose()?;
    let boot = linux::load(
        mem,
        &LinuxConfig {
            kernel: &kernel,
            initrd: initrd.as_deref(),
            cmdline: &args.cmdline,
            acpi,
            protocol: args.protocol,
        },
    )?;
    let mut vm = Vm::new(mem, VmConfig::single_node(vcpus))?;
    let irqchip = vm.try_create_irqchip();
    if !irqchip && vcpus > 1 {
        return Err(LaunchError::NoIrqchip(vcpus));
    }
    vm.attach_serial(console)?;
    vm.load_vcpu(0, &boot.boot)?;
    let reports = vm.run_vcpus(pin_cpus, stop);
    Ok(LinuxRun {
        boot,
        irqchip,
        reports,
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
