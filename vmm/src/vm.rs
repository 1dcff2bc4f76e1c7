//! The KVM VM of one node: guest RAM as one memory slot, the node's own vCPUs, their initial
//! state, and running them on pinned threads until they finish or are stopped.
//!
//! Each node process creates the same VM (same RAM layout, same vCPU count) and creates and
//! runs only the vCPUs the cluster config assigns to it (`VmConfig::local_vcpus`). Guest
//! memory writes by the VMM (loading a guest) happen on one node only; see docs/vmm.md.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{
    kvm_clock_data, kvm_device_attr, kvm_enable_cap, kvm_userspace_memory_region, KVMIO,
    KVM_CAP_X86_USER_SPACE_MSR, KVM_CLOCK_REALTIME, KVM_MAX_CPUID_ENTRIES,
    KVM_MSR_EXIT_REASON_FILTER, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd,
};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::ioctl_iow_nr;

use crate::platform::vcpu_loop::{self, GuestTsc, VcpuSetup, MSR_TSC_DEADLINE};
use crate::platform::{cpuid, Platform};

use crate::console::{Console, SerialIrq, SerialPort};
use crate::cpu::Boot;
use crate::memory::GuestMemory;
use crate::vcpu::{self, Exits, Outcome, VcpuError, VcpuReport};

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 256;
/// How often the controller re-checks the stop flag and re-kicks vCPUs.
const CONTROL_TICK: Duration = Duration::from_millis(5);

ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);
ioctl_iow_nr!(KVM_HAS_DEVICE_ATTR, KVMIO, 0xe3, kvm_device_attr);

/// KVM_{HAS,GET,SET}_DEVICE_ATTR on a vCPU (kvm-ioctls has them only for other
/// architectures).
fn vcpu_attr(
    fd: &VcpuFd,
    op: libc::c_ulong,
    attr: &mut kvm_device_attr,
) -> Result<(), kvm_ioctls::Error> {
    // SAFETY: the three device-attribute ioctls read one kvm_device_attr from the pointer;
    // GET writes the attribute's value to `attr.addr`, which every caller points at a live u64.
    let rc = unsafe { ioctl_with_mut_ref(fd, op, attr) };
    if rc < 0 {
        return Err(kvm_ioctls::Error::last());
    }
    Ok(())
}

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
    /// The host's KVM lacks something a Linux guest across nodes needs.
    #[error(
        "this host's KVM lacks {0}, which a Linux guest needs here; use a host kernel of 5.16 \
         or later with hardware virtualization (or run it in the lab: scripts/lab)"
    )]
    Missing(&'static str),
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
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("memory", &self.memory)
            .field("config", &self.config)
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

    /// Prepares the VM for a Linux guest whose interrupt controllers are emulated in
    /// userspace ([`crate::platform`]): no in-kernel irqchip (KVM refuses one once vCPUs
    /// exist, and it would drop IPIs to vCPUs of other nodes), TSC-deadline MSR accesses
    /// routed to userspace through an MSR filter, the Linux CPUID, and the APIC base of each
    /// local vCPU (vCPU 0 is the bootstrap processor). Every capability is checked first.
    pub fn prepare_linux(&mut self) -> Result<(), VmError> {
        if !self.kvm.check_extension(Cap::X86UserSpaceMsr) {
            return Err(VmError::Missing("KVM_CAP_X86_USER_SPACE_MSR"));
        }
        if !self.kvm.check_extension(Cap::X86MsrFilter) {
            return Err(VmError::Missing("KVM_CAP_X86_MSR_FILTER"));
        }
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_X86_USER_SPACE_MSR,
            ..Default::default()
        };
        cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER);
        self.fd
            .enable_cap(&cap)
            .map_err(kvm_err("enable userspace MSR exits"))?;
        let bitmap = [1u8];
        let deadline = MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: MSR_TSC_DEADLINE,
            msr_count: 1,
            bitmap: &bitmap,
        };
        // A set bit allows; the range denies IA32_TSC_DEADLINE in KVM, so it exits to us.
        let deny = [0u8];
        let deadline = MsrFilterRange {
            bitmap: &deny,
            ..deadline
        };
        self.fd
            .set_msr_filter(MsrFilterDefaultAction::ALLOW, &[deadline])
            .map_err(kvm_err("set the MSR filter"))?;
        let supported = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        for v in &self.vcpus {
            let mut entries = supported.clone();
            for e in entries.as_mut_slice() {
                cpuid::edit(e, v.id);
            }
            v.fd.set_cpuid2(&entries).map_err(kvm_err("set CPUID"))?;
            vcpu_loop::set_apic_base(&v.fd, v.id == 0).map_err(kvm_err("set the APIC base"))?;
        }
        Ok(())
    }

    /// The guest TSC offset of the local vCPUs (KVM_VCPU_TSC_OFFSET of the first one).
    pub fn tsc_offset(&self) -> Result<u64, VmError> {
        let v = self
            .vcpus
            .first()
            .ok_or_else(|| VmError::Config("no local vCPU".into()))?;
        let mut offset = 0u64;
        let mut attr = kvm_device_attr {
            group: KVM_VCPU_TSC_CTRL,
            attr: u64::from(KVM_VCPU_TSC_OFFSET),
            addr: &mut offset as *mut u64 as u64,
            flags: 0,
        };
        vcpu_attr(&v.fd, KVM_HAS_DEVICE_ATTR(), &mut attr)
            .map_err(|_| VmError::Missing("KVM_VCPU_TSC_OFFSET (vCPU TSC control)"))?;
        vcpu_attr(&v.fd, KVM_GET_DEVICE_ATTR(), &mut attr)
            .map_err(kvm_err("get the TSC offset"))?;
        Ok(offset)
    }

    /// Gives every local vCPU the guest TSC offset `offset` (all nodes of a guest use one, so
    /// the guest TSC is one clock; docs/vmm.md, "Time").
    pub fn set_tsc_offset(&self, offset: u64) -> Result<(), VmError> {
        for v in &self.vcpus {
            let mut value = offset;
            let mut attr = kvm_device_attr {
                group: KVM_VCPU_TSC_CTRL,
                attr: u64::from(KVM_VCPU_TSC_OFFSET),
                addr: &mut value as *mut u64 as u64,
                flags: 0,
            };
            vcpu_attr(&v.fd, KVM_HAS_DEVICE_ATTR(), &mut attr)
                .map_err(|_| VmError::Missing("KVM_VCPU_TSC_OFFSET (vCPU TSC control)"))?;
            vcpu_attr(&v.fd, KVM_SET_DEVICE_ATTR(), &mut attr)
                .map_err(kvm_err("set the TSC offset"))?;
        }
        Ok(())
    }

    /// The VM's kvm-clock (KVM_GET_CLOCK), with the host's realtime of the same instant: KVM
    /// gives both at once (KVM_CLOCK_REALTIME) when the host clocksource is the TSC; otherwise
    /// the realtime is read right after, and the flag stays clear.
    pub fn clock(&self) -> Result<kvm_clock_data, VmError> {
        let mut c = self.fd.get_clock().map_err(kvm_err("get the kvm-clock"))?;
        if c.flags & KVM_CLOCK_REALTIME == 0 {
            c.realtime = realtime_ns();
        }
        Ok(c)
    }

    /// Sets the kvm-clock to what another node's VM read (`data` from [`Vm::clock`]) plus the
    /// realtime that passed since: by KVM itself (KVM_CLOCK_REALTIME) when both sides support
    /// it, else from this host's realtime now. Either way the VMs' clocks agree as far as the
    /// hosts' realtime clocks do (the same host in the lab; NTP/PTP across hosts).
    pub fn set_clock(&self, data: &kvm_clock_data) -> Result<(), VmError> {
        let supported = self.kvm.check_extension_int(Cap::AdjustClock) as u32;
        let mut d = kvm_clock_data {
            clock: data.clock,
            realtime: data.realtime,
            ..Default::default()
        };
        if data.flags & supported & KVM_CLOCK_REALTIME != 0 {
            d.flags = KVM_CLOCK_REALTIME;
        } else {
            d.clock = data
                .clock
                .wrapping_add(realtime_ns().saturating_sub(data.realtime));
            d.realtime = 0;
        }
        self.fd.set_clock(&d).map_err(kvm_err("set the kvm-clock"))
    }

    /// Runs every local vCPU of a Linux guest on its own thread (pinned like
    /// [`Vm::run_vcpus`]) until the platform says the run ended or `stop` is set; vCPU 0 is
    /// the bootstrap processor, the others wait for their start-up IPI. Returns one report per
    /// local vCPU, in local order.
    pub fn run_linux_vcpus(
        &mut self,
        platform: &Platform,
        tsc: GuestTsc,
        pin_cpus: &[usize],
        stop: &AtomicBool,
    ) -> Vec<VcpuReport> {
        let n = self.vcpus.len();
        let finished = AtomicUsize::new(0);
        let controller = std::thread::current();
        let mut reports = Vec::with_capacity(n);
        std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(n);
            for (k, v) in self.vcpus.iter_mut().enumerate() {
                let id = v.id;
                let cpu = (!pin_cpus.is_empty()).then(|| pin_cpus[k % pin_cpus.len()]);
                let (finished, controller) = (&finished, controller.clone());
                let setup = VcpuSetup {
                    id,
                    platform,
                    tsc,
                    bsp: id == 0,
                    stop,
                };
                let handle = std::thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn_scoped(scope, move || {
                        let report = match cpu.map(vcpu::pin_current_thread) {
                            Some(Err(source)) => failed(
                                id,
                                VcpuError::Pin {
                                    vcpu: id,
                                    cpu: cpu.unwrap_or(0),
                                    source,
                                },
                            ),
                            _ => vcpu_loop::run(&setup, &mut v.fd),
                        };
                        finished.fetch_add(1, Ordering::AcqRel);
                        controller.unpark();
                        report
                    });
                match handle {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        platform.end(crate::platform::msg::Lifecycle::Failed, 1);
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
                if stop.load(Ordering::Acquire) || platform.ended().is_some() {
                    platform.kick_all();
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

    /// Attaches a 16550 on COM1 writing to `console`, without an interrupt line (its early
    /// console polls), for guests run by [`Vm::run_vcpus`]; returns the port for inspection.
    /// Linux guests get theirs from [`crate::platform`].
    pub fn attach_serial(&mut self, console: Console) -> SerialPort {
        let port = SerialPort::new(SerialIrq::new(None), console);
        self.exits.serial = Some(port.clone());
        port
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
        counters: Default::default(),
    }
}

/// CLOCK_REALTIME in nanoseconds.
fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// `clock`'s time in nanoseconds. Only for the realtime and monotonic clocks, which every
/// Linux has: `clock_gettime` fails only for an unknown clock or a bad pointer, neither
/// possible here, so a failure is a broken libc and panics rather than yielding a wrong time.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock}) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
