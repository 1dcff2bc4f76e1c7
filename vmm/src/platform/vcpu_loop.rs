//! The run loop of one Linux vCPU on a VM without an in-kernel irqchip: before each
//! `KVM_RUN` it takes what its mailbox received into its local APIC, fires the APIC timer,
//! and injects the highest deliverable interrupt (`KVM_INTERRUPT` when the guest can take
//! one, else it asks KVM for an interrupt-window exit); after it, it emulates the exit: local
//! APIC registers, device accesses (served here or forwarded to the device node), the
//! TSC-deadline MSR, HLT (the thread sleeps until an interrupt or the timer), INIT and
//! start-up IPIs (an application processor waits for its SIPI before it first runs).
//!
//! Waking: other threads post to the mailbox and kick (unpark; the kick signal when inside
//! `KVM_RUN`). The APIC timer is a POSIX timer that sends the kick signal to this thread, so
//! a vCPU in guest mode returns to the loop when its deadline passes. Nothing here allocates
//! per exit.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_interrupt, kvm_regs, kvm_segment, KVMIO};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use super::lapic::{Effect, Expiry, Lapic, LAPIC_BASE, LAPIC_SIZE};
use super::msg::{Lifecycle, Space};
use super::{devices, Access, Mailbox, Platform, PlatformError, WAIT_SLICE};
use crate::vcpu::{self, ExitCounters, Outcome, VcpuError, VcpuReport};

ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);

/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// APIC base MSR value bits: enabled, bootstrap processor.
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_BSP: u64 = 1 << 8;

/// The guest's TSC as this node sees it: host TSC plus the VM's common offset.
#[derive(Debug, Clone, Copy)]
pub struct GuestTsc {
    /// Added to the host TSC (two's complement).
    pub offset: u64,
    /// Ticks per millisecond.
    pub khz: u32,
}

impl GuestTsc {
    fn now(&self) -> u64 {
        // SAFETY: rdtsc has no preconditions on x86-64.
        let host = unsafe { core::arch::x86_64::_rdtsc() };
        host.wrapping_add(self.offset)
    }

    /// Nanoseconds until the guest TSC reaches `deadline` (0 when passed).
    fn ns_until(&self, deadline: u64) -> u64 {
        let now = self.now();
        if deadline <= now {
            return 0;
        }
        let ticks = u128::from(deadline - now);
        (ticks * 1_000_000 / u128::from(self.khz.max(1))).min(u128::from(u64::MAX)) as u64
    }
}

/// Monotonic nanoseconds (the APIC timer's one-shot and periodic modes count in them).
fn now_ns() -> u64 {
    crate::vm::clock_ns(libc::CLOCK_MONOTONIC)
}

/// A POSIX timer that sends the kick signal to the thread that created it.
struct HostTimer {
    id: libc::timer_t,
    armed_for: Option<Expiry>,
}

impl HostTimer {
    fn for_current_thread() -> io::Result<Self> {
        // SAFETY: a zeroed sigevent is valid; the fields used are set below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = vcpu::kick_signal();
        // SAFETY: gettid has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `sev` and `id` are valid for the call; the timer targets this thread.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(HostTimer {
            id,
            armed_for: None,
        })
    }

    /// Arms the timer to go off in `ns` (0: disarm).
    fn arm_in(&mut self, ns: u64) -> io::Result<()> {
        let its = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `self.id` is a live timer of this process; `its` is valid.
        if unsafe { libc::timer_settime(self.id, 0, &its, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for HostTimer {
    fn drop(&mut self) {
        // SAFETY: deletes the timer this value owns, once.
        unsafe { libc::timer_delete(self.id) };
    }
}

/// What one vCPU needs to run.
#[derive(Debug)]
pub struct VcpuSetup<'a> {
    /// vCPU id (= APIC id).
    pub id: u32,
    /// The node's platform.
    pub platform: &'a Platform,
    /// The guest TSC.
    pub tsc: GuestTsc,
    /// The bootstrap processor starts at its loaded entry; the others wait for a SIPI.
    pub bsp: bool,
    /// Stop from outside (the run's watchdog).
    pub stop: &'a AtomicBool,
}

/// Whether the vCPU runs or waits for a start-up IPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    WaitForSipi,
}

fn kvm_err(vcpu: u32, source: kvm_ioctls::Error) -> VcpuError {
    VcpuError::Run { vcpu, source }
}

fn platform_err(vcpu: u32, e: &PlatformError) -> VcpuError {
    VcpuError::UnexpectedExit {
        vcpu,
        exit: e.to_string(),
    }
}

/// Sets the APIC base in the vCPU's segment registers (the MSR value KVM keeps for a VM
/// without an in-kernel LAPIC).
pub fn set_apic_base(vcpu: &VcpuFd, bsp: bool) -> Result<(), kvm_ioctls::Error> {
    let mut s = vcpu.get_sregs()?;
    s.apic_base = LAPIC_BASE | APIC_BASE_ENABLE | if bsp { APIC_BASE_BSP } else { 0 };
    vcpu.set_sregs(&s)
}

/// The state a start-up IPI with `vector` leaves: real mode at `vector << 12`.
fn start_up(vcpu: &VcpuFd, vector: u8) -> Result<(), kvm_ioctls::Error> {
    let mut s = vcpu.get_sregs()?;
    let seg = |selector: u16, base: u64, type_: u8, s: u8| kvm_segment {
        base,
        limit: 0xffff,
        selector,
        type_,
        present: 1,
        s,
        ..Default::default()
    };
    s.cs = seg(u16::from(vector) << 8, u64::from(vector) << 12, 0xb, 1);
    let data = seg(0, 0, 3, 1);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.tr = seg(0, 0, 0xb, 0);
    s.ldt = seg(0, 0, 2, 0);
    s.gdt.base = 0;
    s.gdt.limit = 0xffff;
    s.idt.base = 0;
    s.idt.limit = 0xffff;
    s.cr0 = 0x6000_0010;
    s.cr2 = 0;
    s.cr3 = 0;
    s.cr4 = 0;
    s.cr8 = 0;
    s.efer = 0;
    s.apic_base = LAPIC_BASE | APIC_BASE_ENABLE;
    vcpu.set_sregs(&s)?;
    vcpu.set_regs(&kvm_regs {
        rip: 0,
        rflags: 2,
        rdx: 0x600,
        ..Default::default()
    })
}

fn inject(vcpu: &VcpuFd, vector: u8) -> io::Result<()> {
    let irq = kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer we pass, for a vCPU fd
    // we own; the VM has no in-kernel irqchip, where this ioctl is defined.
    let rc = unsafe { ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Everything the loop keeps between exits.
struct Loop<'a> {
    id: u32,
    platform: &'a Platform,
    mailbox: &'a Mailbox,
    lapic: Lapic,
    timer: HostTimer,
    tsc: GuestTsc,
    io_seq: u32,
    counters: ExitCounters,
    halted: bool,
    /// An interrupt was handed to KVM_INTERRUPT since the last KVM_RUN: KVM holds it until
    /// the guest takes it, and a second one would overwrite it (the `kvm_run` flags that
    /// say the guest can take one are stale until KVM_RUN returns).
    queued: bool,
    state: State,
}

impl Loop<'_> {
    /// Moves mailbox interrupts into the APIC and fires a due timer.
    fn absorb(&mut self) {
        let (edge, level) = self.mailbox.take_interrupts();
        for (w, (e, l)) in edge.iter().zip(level.iter()).enumerate() {
            for (bits, level_triggered) in [(*e, false), (*l, true)] {
                let mut b = bits;
                while b != 0 {
                    let v = (w as u32 * 32 + b.trailing_zeros()) as u8;
                    self.lapic.accept(v, level_triggered);
                    b &= b - 1;
                }
            }
        }
        if self.lapic.poll_timer(now_ns(), self.tsc.now()) {
            self.counters.timer_fires += 1;
        }
    }

    /// Re-arms the host timer when the APIC's expiry changed.
    fn rearm(&mut self) -> io::Result<()> {
        let want = self.lapic.expiry();
        if want == self.timer.armed_for {
            return Ok(());
        }
        let ns = match want {
            None => 0,
            Some(Expiry::GuestTsc(t)) => self.tsc.ns_until(t).max(1),
            Some(Expiry::HostNs(t)) => t.saturating_sub(now_ns()).max(1),
        };
        self.timer.arm_in(ns)?;
        self.timer.armed_for = want;
        Ok(())
    }

    /// Time until the APIC timer is due, for a halted vCPU's sleep.
    fn sleep_slice(&self) -> Duration {
        let ns = match self.lapic.expiry() {
            None => return WAIT_SLICE,
            Some(Expiry::GuestTsc(t)) => self.tsc.ns_until(t),
            Some(Expiry::HostNs(t)) => t.saturating_sub(now_ns()),
        };
        Duration::from_nanos(ns).min(WAIT_SLICE)
    }

    fn effect(&mut self, e: Effect) -> Result<(), PlatformError> {
        match e {
            Effect::None => Ok(()),
            Effect::Send(m) => {
                self.counters.ipis_sent += 1;
                self.platform.route(self.lapic.id(), m)
            }
            Effect::LevelEoi(v) => self.platform.level_eoi(v),
            Effect::TimerChanged => Ok(()),
            Effect::LogicalIdChanged => {
                self.platform
                    .set_logical(self.id, self.lapic.ldr(), self.lapic.dfr())
            }
        }
    }

    fn device(
        &mut self,
        space: Space,
        addr: u64,
        len: u8,
        write: bool,
        data: u64,
    ) -> Result<u64, PlatformError> {
        self.counters.device += 1;
        if !self.platform.has_devices() {
            self.counters.forwarded += 1;
        }
        self.io_seq = self.io_seq.wrapping_add(1).max(1);
        let access = Access {
            space,
            addr,
            len,
            write,
            data,
        };
        self.platform.io(self.id, self.io_seq, access)
    }
}

fn value_of(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn fill(data: &mut [u8], v: u64) {
    let n = data.len().min(8);
    data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
}

/// Runs one Linux vCPU until the run ends (power-off, reset, a failure anywhere, or `stop`).
/// Call on the vCPU's own thread after [`vcpu::install_kick_handler`].
pub fn run(setup: &VcpuSetup<'_>, vcpu: &mut VcpuFd) -> VcpuReport {
    let start = Instant::now();
    let id = setup.id;
    let mut report = VcpuReport {
        vcpu: id,
        outcome: Outcome::Stopped,
        results: Vec::new(),
        dropped_results: 0,
        console: Vec::new(),
        exits: 0,
        unhandled_pio: 0,
        last_rip: 0,
        elapsed: Duration::ZERO,
        counters: ExitCounters::default(),
    };
    let outcome = match run_inner(setup, vcpu, &mut report) {
        Ok(o) => o,
        Err(e) => {
            // This vCPU's failure ends the guest on every node.
            setup.platform.end(Lifecycle::Failed, 1);
            Outcome::Failed(e)
        }
    };
    if let Some(m) = setup.platform.mailbox(id) {
        m.note_left();
    }
    vcpu.set_kvm_immediate_exit(0);
    report.last_rip = vcpu.get_regs().map_or(0, |r| r.rip);
    report.outcome = outcome;
    report.elapsed = start.elapsed();
    report
}

fn run_inner(
    setup: &VcpuSetup<'_>,
    vcpu: &mut VcpuFd,
    report: &mut VcpuReport,
) -> Result<Outcome, VcpuError> {
    let id = setup.id;
    let platform = setup.platform;
    let mailbox = platform
        .mailbox(id)
        .ok_or_else(|| VcpuError::UnexpectedExit {
            vcpu: id,
            exit: "vCPU is not placed on this node".into(),
        })?;
    mailbox.bind_current_thread();
    let timer = HostTimer::for_current_thread().map_err(|e| VcpuError::UnexpectedExit {
        vcpu: id,
        exit: format!("cannot create the APIC timer: {e}"),
    })?;
    let _guard = vcpu::bind_immediate_exit(vcpu);
    let lp = Loop {
        id,
        platform,
        mailbox,
        lapic: Lapic::new(id as u8),
        timer,
        tsc: setup.tsc,
        io_seq: 0,
        counters: ExitCounters::default(),
        halted: false,
        queued: false,
        state: if setup.bsp {
            State::Running
        } else {
            State::WaitForSipi
        },
    };
    drive(lp, setup, vcpu, report)
}

/// The loop proper; leaves its counters in `report` however it ends.
fn drive(
    mut lp: Loop<'_>,
    setup: &VcpuSetup<'_>,
    vcpu: &mut VcpuFd,
    report: &mut VcpuReport,
) -> Result<Outcome, VcpuError> {
    let result = drive_inner(&mut lp, setup, vcpu, report);
    report.counters = lp.counters;
    // Disarming can only fail for a timer that no longer exists; the run is over anyway.
    let _ = lp.timer.arm_in(0);
    result
}

fn drive_inner(
    lp: &mut Loop<'_>,
    setup: &VcpuSetup<'_>,
    vcpu: &mut VcpuFd,
    report: &mut VcpuReport,
) -> Result<Outcome, VcpuError> {
    let (id, platform, mailbox) = (lp.id, lp.platform, lp.mailbox);
    let outcome = loop {
        if let Some(end) = platform.ended() {
            break match end.event {
                Lifecycle::PowerOff => Outcome::PoweredOff,
                Lifecycle::Reset => Outcome::Reset,
                Lifecycle::Failed => Outcome::Stopped,
            };
        }
        if setup.stop.load(Ordering::Acquire) {
            break Outcome::Stopped;
        }
        if mailbox.take_init() {
            lp.lapic.init_reset();
            lp.state = State::WaitForSipi;
            lp.halted = false;
            mailbox.take_interrupts();
            lp.rearm().map_err(|e| timer_err(id, &e))?;
        }
        if lp.state == State::Running {
            // A start-up IPI to a running CPU is ignored (Linux sends two; the second finds
            // the CPU running). Taking it keeps `pending` from seeing it forever.
            mailbox.take_sipi();
        } else {
            match mailbox.take_sipi() {
                Some(v) => {
                    start_up(vcpu, v).map_err(|e| kvm_err(id, e))?;
                    lp.state = State::Running;
                }
                None => {
                    std::thread::park_timeout(WAIT_SLICE);
                    continue;
                }
            }
        }
        lp.absorb();
        lp.rearm().map_err(|e| timer_err(id, &e))?;
        if mailbox.take_nmi() {
            vcpu.nmi().map_err(|e| kvm_err(id, e))?;
            lp.counters.nmis += 1;
            lp.halted = false;
        }
        let deliverable = lp.lapic.deliverable();
        {
            let run = vcpu.get_kvm_run();
            match deliverable {
                Some(_) if lp.queued => run.request_interrupt_window = 1,
                Some(v) if run.ready_for_interrupt_injection != 0 && run.if_flag != 0 => {
                    lp.lapic.ack(v);
                    inject(vcpu, v).map_err(|e| VcpuError::UnexpectedExit {
                        vcpu: id,
                        exit: format!("KVM_INTERRUPT of vector {v:#x} failed: {e}"),
                    })?;
                    lp.counters.injected += 1;
                    lp.halted = false;
                    lp.queued = true;
                    vcpu.get_kvm_run().request_interrupt_window =
                        u8::from(lp.lapic.deliverable().is_some());
                }
                Some(_) => {
                    run.request_interrupt_window = 1;
                    // A halted vCPU that can take interrupts (IF set) but not this instant
                    // (KVM said its window is shut) must enter the guest to reach the window:
                    // parking would wait for an interrupt that is already here.
                    if run.if_flag != 0 {
                        lp.halted = false;
                    }
                }
                None => run.request_interrupt_window = 0,
            }
        }
        if lp.halted {
            std::thread::park_timeout(lp.sleep_slice());
            continue;
        }
        vcpu.get_kvm_run().cr8 = u64::from(lp.lapic.read(super::lapic::reg::TPR, 0) >> 4);
        mailbox.set_in_guest(true);
        if mailbox.pending() {
            mailbox.set_in_guest(false);
            continue;
        }
        let exit = vcpu.run();
        mailbox.set_in_guest(false);
        lp.queued = false;
        report.exits += 1;
        mailbox.note_exits(report.exits);
        match exit {
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if (LAPIC_BASE..LAPIC_BASE + LAPIC_SIZE).contains(&addr) {
                    lp.counters.lapic += 1;
                    let v = lp.lapic.read((addr - LAPIC_BASE) as u32 & !3, now_ns());
                    fill(data, u64::from(v >> (8 * (addr & 3))));
                } else if devices::is_device_mmio(addr) {
                    let len = data.len() as u8;
                    let v = lp
                        .device(Space::Mmio, addr, len, false, 0)
                        .map_err(|e| platform_err(id, &e))?;
                    fill(data, v);
                } else {
                    lp.counters.unclaimed += 1;
                    lp.counters.unclaimed_at.note(true, addr);
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if (LAPIC_BASE..LAPIC_BASE + LAPIC_SIZE).contains(&addr) {
                    lp.counters.lapic += 1;
                    if data.len() == 4 && addr % 4 == 0 {
                        let e = lp.lapic.write(
                            (addr - LAPIC_BASE) as u32,
                            value_of(data) as u32,
                            now_ns(),
                        );
                        lp.effect(e).map_err(|e| platform_err(id, &e))?;
                    }
                } else if devices::is_device_mmio(addr) {
                    let (len, v) = (data.len() as u8, value_of(data));
                    lp.device(Space::Mmio, addr, len, true, v)
                        .map_err(|e| platform_err(id, &e))?;
                } else {
                    lp.counters.unclaimed += 1;
                    lp.counters.unclaimed_at.note(true, addr);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if devices::is_device_port(port) {
                    let (len, v) = (data.len() as u8, value_of(data));
                    lp.device(Space::Pio, u64::from(port), len, true, v)
                        .map_err(|e| platform_err(id, &e))?;
                } else {
                    lp.counters.unclaimed += 1;
                    lp.counters.unclaimed_at.note(false, u64::from(port));
                    report.unhandled_pio += 1;
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if devices::is_device_port(port) {
                    let len = data.len() as u8;
                    let v = lp
                        .device(Space::Pio, u64::from(port), len, false, 0)
                        .map_err(|e| platform_err(id, &e))?;
                    fill(data, v);
                } else {
                    lp.counters.unclaimed += 1;
                    lp.counters.unclaimed_at.note(false, u64::from(port));
                    report.unhandled_pio += 1;
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::X86Rdmsr(msr)) => {
                lp.counters.msr += 1;
                if msr.index == MSR_TSC_DEADLINE {
                    *msr.data = lp.lapic.tsc_deadline();
                    *msr.error = 0;
                } else {
                    *msr.error = 1;
                }
            }
            Ok(VcpuExit::X86Wrmsr(msr)) => {
                lp.counters.msr += 1;
                if msr.index == MSR_TSC_DEADLINE {
                    let data = msr.data;
                    *msr.error = 0;
                    lp.lapic.set_tsc_deadline(data);
                    // A deadline already passed fires before the next entry.
                    lp.absorb();
                    lp.rearm().map_err(|e| timer_err(id, &e))?;
                } else {
                    *msr.error = 1;
                }
            }
            Ok(VcpuExit::Hlt) => {
                lp.counters.hlt += 1;
                lp.halted = true;
            }
            Ok(VcpuExit::IrqWindowOpen) => lp.counters.irq_window += 1,
            Ok(VcpuExit::SetTpr) => {
                let cr8 = vcpu.get_kvm_run().cr8;
                let e = lp
                    .lapic
                    .write(super::lapic::reg::TPR, (cr8 as u32 & 0xF) << 4, now_ns());
                lp.effect(e).map_err(|e| platform_err(id, &e))?;
            }
            Ok(VcpuExit::Shutdown) => {
                let rip = vcpu.get_regs().map_or(0, |r| r.rip);
                return Err(VcpuError::Shutdown { vcpu: id, rip });
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                return Err(VcpuError::FailEntry { vcpu: id, reason })
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: on KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member.
                let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let rip = vcpu.get_regs().map_or(0, |r| r.rip);
                return Err(VcpuError::Internal {
                    vcpu: id,
                    rip,
                    suberror,
                });
            }
            Ok(other) => {
                let exit = format!("{other:?}");
                return Err(VcpuError::UnexpectedExit { vcpu: id, exit });
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                report.exits -= 1;
                lp.counters.kicks += 1;
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(source) => return Err(VcpuError::Run { vcpu: id, source }),
        }
    };
    Ok(outcome)
}

fn timer_err(vcpu: u32, e: &io::Error) -> VcpuError {
    VcpuError::UnexpectedExit {
        vcpu,
        exit: format!("cannot arm the APIC timer: {e}"),
    }
}
