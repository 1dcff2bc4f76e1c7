//! The KVM VM of one node: guest RAM as one memory slot, the node's own vCPUs, their initial
//! state, and running them on pinned threads until they finish or are stopped.
//!
//! Each node process creates the same VM (same RAM layout, same vCPU count) and creates and
//! runs only the vCPUs the cluster config assigns to it (`VmConfig::local_vcpus`). Guest
//! memory writes by the VMM (loading a guest) happen on one node only; see docs/vmm.md.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::console::{Console, SerialIrq, SerialPort};
use crate::cpu::Boot;
use crate::memory::GuestMemory;
use crate::vcpu::{self, Exits, Outcome, VcpuError, VcpuReport};

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 256;
/// GSI of COM1.
pub const COM1_GSI: u32 = 4;
/// How often the controller re-checks the stop flag and re-kicks vCPUs.
const CONTROL_TICK: Duration = Duration::from_millis(5);

/// Errors creating or configuring the VM. Messages say what to change.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm is missing or not accessible.
    #[error(
        "cannot open /dev/kvm: {0}; run on a host with KVM (or PVM) enabled, as root or a member \
         of the kvm group"
    )]
    NoKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// KVM error.
        source: kvm_ioctls::Error,
    },
    /// Bad vCPU configuration.
    #[error("invalid vCPU configuration: {0}")]
    Config(String),
    /// Creating the serial interrupt failed.
    #[error("cannot create the serial interrupt eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Installing the kick signal handler failed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Which vCPUs exist in the whole VM and which run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// vCPUs of the whole VM (ids `0..vcpus`; id = APIC id).
    pub vcpus: u32,
    /// The ids this node creates and runs.
    pub local_vcpus: Vec<u32>,
}

impl VmConfig {
    /// All `vcpus` vCPUs run in this process.
    pub fn single_node(vcpus: u32) -> Self {
        VmConfig {
            vcpus,
            local_vcpus: (0..vcpus).collect(),
        }
    }

    fn validate(&self) -> Result<(), VmError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmError::Config(format!(
                "{} vCPUs: choose 1..={MAX_VCPUS}",
                self.vcpus
            )));
        }
        let mut seen = vec![false; self.vcpus as usize];
        for &id in &self.local_vcpus {
            let slot = seen.get_mut(id as usize).ok_or_else(|| {
                VmError::Config(format!(
                    "local vCPU {id} does not exist in a VM of {} vCPUs",
                    self.vcpus
                ))
            })?;
            if std::mem::replace(slot, true) {
                return Err(VmError::Config(format!("local vCPU {id} listed twice")));
            }
        }
        Ok(())
    }
}

struct LocalVcpu {
    id: u32,
    fd: VcpuFd,
}

/// A KVM VM over caller-supplied guest RAM.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    memory: GuestMemory,
    config: VmConfig,
    vcpus: Vec<LocalVcpu>,
    exits: Exits,
    irqchip: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("memory", &self.memory)
            .field("config", &self.config)
            .field("irqchip", &self.irqchip)
            .finish_non_exhaustive()
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

impl Vm {
    /// Creates the VM, maps `memory` as slot 0, and creates the local vCPUs with the host's
    /// supported CPUID.
    pub fn new(memory: &GuestMemory, config: VmConfig) -> Result<Vm, VmError> {
        config.validate()?;
        vcpu::install_kick_handler().map_err(VmError::Signal)?;
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        let fd = kvm.create_vm().map_err(kvm_err("create VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: memory.gpa_base(),
            memory_size: memory.size() as u64,
            userspace_addr: memory.host_addr() as u64,
        };
        // SAFETY: `memory` is a live read/write mapping of `size` bytes that the GuestMemory
        // contract keeps mapped for as long as the VM (which holds a clone) exists.
        unsafe { fd.set_user_memory_region(region) }.map_err(kvm_err("set memory region"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let mut vcpus = Vec::with_capacity(config.local_vcpus.len());
        for &id in &config.local_vcpus {
            let vfd = fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create vCPU"))?;
            let mut entries = cpuid.clone();
            for e in entries.as_mut_slice() {
                match e.function {
                    // Initial APIC id in EBX[31:24] and the logical count in EBX[23:16].
                    1 => e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (config.vcpus.min(255) << 16),
                    0xb | 0x1f => e.edx = id,
                    _ => {}
                }
            }
            vfd.set_cpuid2(&entries).map_err(kvm_err("set CPUID"))?;
            vcpus.push(LocalVcpu { id, fd: vfd });
        }
        Ok(Vm {
            kvm,
            fd,
            memory: memory.clone(),
            config,
            vcpus,
            exits: Exits {
                doorbell_gpa: None,
                serial: None,
                console: None,
            },
            irqchip: false,
        })
    }

    /// Rewrites the CPUID table of every local vCPU with `edit` applied (before the first
    /// run), e.g. to hide a feature the host cannot emulate at CPL0.
    pub fn edit_cpuid(
        &mut self,
        mut edit: impl FnMut(&mut kvm_bindings::kvm_cpuid_entry2),
    ) -> Result<(), VmError> {
        for v in &self.vcpus {
            let mut entries =
                v.fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                    .map_err(kvm_err("get CPUID"))?;
            for e in entries.as_mut_slice() {
                edit(e);
            }
            v.fd.set_cpuid2(&entries).map_err(kvm_err("set CPUID"))?;
        }
        Ok(())
    }

    /// The guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The configuration.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The KVM VM fd (for devices added by the caller).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The host's /dev/kvm handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Guest TSC frequency in kHz (KVM_GET_TSC_KHZ on the first local vCPU): converts the
    /// `rdtsc` deltas test guests report into time.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.vcpus.first().and_then(|v| v.fd.get_tsc_khz().ok())
    }

    /// Sets every local vCPU's registers for `boot` (vCPU `i` gets its index in RDI and its
    /// own stack) and decodes stores to `doorbell_gpa` as the test-guest protocol.
    pub fn load(&mut self, boot: &Boot, doorbell_gpa: Option<u64>) -> Result<(), VmError> {
        for k in 0..self.vcpus.len() {
            self.load_vcpu(self.vcpus[k].id, boot)?;
        }
        self.exits.doorbell_gpa = doorbell_gpa;
        Ok(())
    }

    /// Sets the registers of local vCPU `id` alone (e.g. an application processor that starts
    /// elsewhere than the others).
    pub fn load_vcpu(&mut self, id: u32, boot: &Boot) -> Result<(), VmError> {
        let v = self
            .vcpus
            .iter()
            .find(|v| v.id == id)
            .ok_or_else(|| VmError::Config(format!("vCPU {id} is not local to this VM")))?;
        let sregs = v.fd.get_sregs().map_err(kvm_err("get sregs"))?;
        v.fd.set_sregs(&boot.sregs(sregs))
            .map_err(kvm_err("set sregs"))?;
        v.fd.set_regs(&boot.regs(v.id)).map_err(kvm_err("set regs"))
    }

    /// Copies doorbell console bytes into `console` as well as into each report.
    pub fn set_console(&mut self, console: Console) {
        self.exits.console = Some(console);
    }

    /// Creates the in-kernel interrupt controller (for Linux guests). Returns false where
    /// the host refuses it; the serial port then runs without an interrupt line.
    pub fn try_create_irqchip(&mut self) -> bool {
        self.irqchip = self.fd.create_irq_chip().is_ok();
        self.irqchip
    }

    /// Attaches a 16550 on COM1 writing to `console`; returns the port for inspection.
    pub fn attach_serial(&mut self, console: Console) -> Result<SerialPort, VmError> {
        let irq = if self.irqchip {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
            self.fd
                .register_irqfd(&evt, COM1_GSI)
                .map_err(kvm_err("register serial irqfd"))?;
            Some(evt)
        } else {
            None
        };
        let port = SerialPort::new(SerialIrq::new(irq), console);
        self.exits.serial = Some(port.clone());
        Ok(port)
    }

    /// Runs every local vCPU on its own thread (vCPU `k` of the local list pinned to
    /// `pin_cpus[k % len]`; no pinning when empty) until each guest signals DONE, halts, fails,
    /// or `stop` is set. A failure of one vCPU stops the others (their guests would wait for
    /// it forever). Returns one report per local vCPU, in local order.
    pub fn run_vcpus(&mut self, pin_cpus: &[usize], stop: &AtomicBool) -> Vec<VcpuReport> {
        let n = self.vcpus.len();
        let internal_stop = AtomicBool::new(false);
        let finished = AtomicUsize::new(0);
        let threads: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
        let controller = std::thread::current();
        let exits = &self.exits;
        let mut reports = Vec::with_capacity(n);
        std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(n);
            for (k, v) in self.vcpus.iter_mut().enumerate() {
                let id = v.id;
                let cpu = (!pin_cpus.is_empty()).then(|| pin_cpus[k % pin_cpus.len()]);
                let (internal_stop, finished, slot, controller) =
                    (&internal_stop, &finished, &threads[k], controller.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("vcpu{}", v.id))
                    .spawn_scoped(scope, move || {
                        // SAFETY: pthread_self has no preconditions.
                        slot.store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
                        let report = match cpu.map(vcpu::pin_current_thread) {
                            Some(Err(source)) => failed(
                                v.id,
                                VcpuError::Pin {
                                    vcpu: v.id,
                                    cpu: cpu.unwrap_or(0),
                                    source,
                                },
                            ),
                            _ => vcpu::run(v.id, &mut v.fd, exits, internal_stop),
                        };
                        if matches!(report.outcome, Outcome::Failed(_)) {
                            internal_stop.store(true, Ordering::Release);
                        }
                        slot.store(0, Ordering::Release);
                        finished.fetch_add(1, Ordering::AcqRel);
                        controller.unpark();
                        report
                    });
                match handle {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        internal_stop.store(true, Ordering::Release);
                        finished.fetch_add(1, Ordering::AcqRel);
                        reports.push(failed(
                            id,
                            VcpuError::UnexpectedExit {
                                vcpu: id,
                                exit: format!("could not spawn the vCPU thread: {e}"),
                            },
                        ));
                    }
                }
            }
            while finished.load(Ordering::Acquire) < n {
                if stop.load(Ordering::Acquire) {
                    internal_stop.store(true, Ordering::Release);
                }
                if internal_stop.load(Ordering::Acquire) {
                    for t in &threads {
                        let tid = t.load(Ordering::Acquire);
                        if tid != 0 {
                            // SAFETY: `tid` was stored by a live scoped thread which clears it
                            // before exiting; the scope keeps threads joinable (their pthread_t
                            // valid) until joined below. The signal only sets immediate_exit.
                            unsafe {
                                libc::pthread_kill(tid as libc::pthread_t, vcpu::kick_signal())
                            };
                        }
                    }
                }
                std::thread::park_timeout(CONTROL_TICK);
            }
            for h in handles {
                match h.join() {
                    Ok(r) => reports.push(r),
                    Err(_) => reports.push(failed(
                        u32::MAX,
                        VcpuError::UnexpectedExit {
                            vcpu: u32::MAX,
                            exit: "vCPU thread panicked".into(),
                        },
                    )),
                }
            }
        });
        reports.sort_by_key(|r| {
            self.config
                .local_vcpus
                .iter()
                .position(|&id| id == r.vcpu)
                .unwrap_or(usize::MAX)
        });
        reports
    }
}

fn failed(vcpu: u32, error: VcpuError) -> VcpuReport {
    VcpuReport {
        vcpu,
        outcome: Outcome::Failed(error),
        results: Vec::new(),
        dropped_results: 0,
        console: Vec::new(),
        exits: 0,
        unhandled_pio: 0,
        last_rip: 0,
        elapsed: Duration::ZERO,
    }
}

/// A stop flag that a watchdog sets after `timeout` unless the returned guard is dropped
/// first: bounds how long a run may take.
pub fn stop_after(timeout: Duration) -> (Arc<AtomicBool>, impl Drop) {
    struct Cancel(Arc<AtomicBool>);
    impl Drop for Cancel {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cancelled = Arc::new(AtomicBool::new(false));
    let (s, c) = (stop.clone(), cancelled.clone());
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if c.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        s.store(true, Ordering::Release);
    });
    (stop, Cancel(cancelled))
}
