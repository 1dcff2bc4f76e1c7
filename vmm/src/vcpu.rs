//! One vCPU thread: pinning, the KVM_RUN loop, exit handling, and the kick that interrupts a
//! vCPU spinning in guest code.
//!
//! Stopping: the controller sets its stop flag and sends [`kick_signal`] to the thread. The
//! signal handler sets `kvm_run.immediate_exit` of the vCPU running on that thread, so a
//! signal that lands just before `KVM_RUN` is entered still makes it return `EINTR` at once;
//! a signal that lands inside `KVM_RUN` forces an exit the same way. The loop then sees the
//! flag and ends. Per exit nothing is allocated: results go into a vector reserved up front.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::console::{Console, SerialPort};
use crate::protocol::{self, Event};

/// Most results one vCPU records; later ones are counted in `dropped_results`.
pub const MAX_RESULTS: usize = 1 << 16;
/// Most console bytes one vCPU report keeps.
pub const MAX_CONSOLE: usize = 64 << 10;

/// Why a vCPU stopped with an error. Every message says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Pinning failed.
    #[error("cannot pin vCPU {vcpu} to host CPU {cpu}: {source}; pass CPUs from the allowed set")]
    Pin {
        /// vCPU.
        vcpu: u32,
        /// Host CPU.
        cpu: usize,
        /// OS error.
        source: std::io::Error,
    },
    /// KVM_RUN failed.
    #[error("KVM_RUN failed on vCPU {vcpu}: {source}")]
    Run {
        /// vCPU.
        vcpu: u32,
        /// KVM error.
        source: kvm_ioctls::Error,
    },
    /// The guest triple-faulted.
    #[error(
        "vCPU {vcpu} shut down (triple fault) at rip {rip:#x}: the guest took an exception with \
         no handler; check the payload's memory accesses and the page tables"
    )]
    Shutdown {
        /// vCPU.
        vcpu: u32,
        /// Where it stopped.
        rip: u64,
    },
    /// KVM could not enter the guest.
    #[error("vCPU {vcpu} failed VM entry (hardware reason {reason:#x}): the initial CPU state is invalid")]
    FailEntry {
        /// vCPU.
        vcpu: u32,
        /// Hardware reason.
        reason: u64,
    },
    /// KVM reported an internal error (on PVM: usually an instruction its emulator lacks).
    #[error(
        "vCPU {vcpu} hit a KVM internal error at rip {rip:#x} (suberror {suberror}): on PVM \
         hosts this is typically CPL0 code the emulator cannot run"
    )]
    Internal {
        /// vCPU.
        vcpu: u32,
        /// Where it stopped.
        rip: u64,
        /// KVM's suberror code.
        suberror: u32,
    },
    /// A store the VMM does not decode.
    #[error("vCPU {vcpu} wrote {len} bytes to unhandled MMIO address {addr:#x}")]
    UnhandledMmio {
        /// vCPU.
        vcpu: u32,
        /// Address.
        addr: u64,
        /// Bytes.
        len: usize,
    },
    /// An exit the VMM does not handle.
    #[error("vCPU {vcpu} stopped on unexpected exit {exit}")]
    UnexpectedExit {
        /// vCPU.
        vcpu: u32,
        /// Exit description.
        exit: String,
    },
}

/// How a vCPU thread ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest wrote DONE with this status (0 = success).
    Done(u64),
    /// The guest executed HLT (Linux idling or dead).
    Halted,
    /// The stop flag was set (or, for Linux, another node ended the run with a failure).
    Stopped,
    /// The guest powered off (ACPI S5).
    PoweredOff,
    /// The guest asked for a reset (ACPI reset register, port 0xCF9 or the keyboard
    /// controller); this version ends the run instead of restarting it.
    Reset,
    /// An error.
    Failed(VcpuError),
}

/// What one vCPU did.
#[derive(Debug)]
pub struct VcpuReport {
    /// vCPU id.
    pub vcpu: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// (key, value) pairs in the order the guest reported them.
    pub results: Vec<(u64, u64)>,
    /// Results beyond [`MAX_RESULTS`], not stored.
    pub dropped_results: u64,
    /// Console bytes the guest wrote through the doorbell (bounded by [`MAX_CONSOLE`]).
    pub console: Vec<u8>,
    /// Exits to the VMM.
    pub exits: u64,
    /// I/O port accesses to ports nobody emulates (ignored; reads return all ones).
    pub unhandled_pio: u64,
    /// Guest RIP when the thread ended (where a stopped guest was).
    pub last_rip: u64,
    /// Wall time in the run loop.
    pub elapsed: Duration,
    /// What the exits were (Linux guests).
    pub counters: ExitCounters,
}

/// The first [`Unclaimed::SLOTS`] distinct port or MMIO addresses nothing emulates, with how
/// often each was touched: what an operator needs to see which device a guest looks for.
/// Fixed size, no allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unclaimed {
    /// `(is_mmio, address, count)`; count 0 = free slot.
    slots: [(bool, u64, u64); Unclaimed::SLOTS],
}

impl Unclaimed {
    /// Addresses kept.
    pub const SLOTS: usize = 4;

    /// Counts one access (addresses beyond the first few are only in the total).
    pub fn note(&mut self, mmio: bool, addr: u64) {
        for s in &mut self.slots {
            if s.2 == 0 {
                *s = (mmio, addr, 1);
                return;
            }
            if s.0 == mmio && s.1 == addr {
                s.2 += 1;
                return;
            }
        }
    }

    /// Adds another vCPU's table (slots beyond the first few are dropped).
    pub fn merge(&mut self, other: &Unclaimed) {
        for &(mmio, addr, n) in other.slots.iter().filter(|s| s.2 > 0) {
            if let Some(s) = self
                .slots
                .iter_mut()
                .find(|s| s.2 == 0 || (s.0 == mmio && s.1 == addr))
            {
                if s.2 == 0 {
                    *s = (mmio, addr, 0);
                }
                s.2 += n;
            }
        }
    }
}

impl std::fmt::Display for Unclaimed {
    /// `port 0x70 ×12, mmio 0xfed00000 ×1` (empty when none).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, &(mmio, addr, n)) in self.slots.iter().filter(|s| s.2 > 0).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let space = if mmio { "mmio" } else { "port" };
            write!(f, "{sep}{space} {addr:#x} ×{n}")?;
        }
        Ok(())
    }
}

/// Exits of a Linux vCPU by what caused them, and what its loop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounters {
    /// Local APIC register accesses (MMIO).
    pub lapic: u64,
    /// Device accesses (COM1, I/O APIC, ACPI registers, status port), served here or forwarded.
    pub device: u64,
    /// Of those, forwarded to the device node on another node.
    pub forwarded: u64,
    /// Port or MMIO accesses nobody emulates (reads all ones, writes ignored).
    pub unclaimed: u64,
    /// The first few addresses of those, with their counts.
    pub unclaimed_at: Unclaimed,
    /// TSC-deadline MSR accesses.
    pub msr: u64,
    /// HLT exits.
    pub hlt: u64,
    /// Interrupt-window exits.
    pub irq_window: u64,
    /// Interrupts injected (KVM_INTERRUPT).
    pub injected: u64,
    /// NMIs injected.
    pub nmis: u64,
    /// IPIs this vCPU sent (ICR writes).
    pub ipis_sent: u64,
    /// LAPIC timer expiries.
    pub timer_fires: u64,
    /// Times KVM_RUN returned early for a kick (an interrupt, a timer, a stop).
    pub kicks: u64,
}

impl VcpuReport {
    /// The values reported under `key`.
    pub fn values(&self, key: u64) -> impl Iterator<Item = u64> + '_ {
        self.results
            .iter()
            .filter(move |(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// The first value reported under `key`.
    pub fn value(&self, key: u64) -> Option<u64> {
        self.values(key).next()
    }
}

/// Devices the run loop routes exits to.
#[derive(Debug, Clone)]
pub struct Exits {
    /// GPA of the protocol doorbell page, if the guest uses one.
    pub doorbell_gpa: Option<u64>,
    /// COM1, if attached.
    pub serial: Option<SerialPort>,
    /// Where doorbell console bytes are also copied.
    pub console: Option<Console>,
}

thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: `p` points at `kvm_run.immediate_exit` of the vCPU owned by this thread,
        // set by `run` for exactly the time that vCPU's mapping is alive on this thread; a
        // volatile byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Installs the kick handler (once per process). No SA_RESTART: KVM_RUN must return EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we fill handler, flags and an empty mask.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_kick as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `sa.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: installs a handler that only performs an async-signal-safe store.
        if unsafe { libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) } != 0 {
            result = Err(std::io::Error::last_os_error());
        }
    });
    result
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu` < CPU_SETSIZE was checked, so the bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// While alive, the kick signal sets `vcpu`'s `immediate_exit` when it hits this thread.
pub(crate) struct ImmediateExitGuard;

impl Drop for ImmediateExitGuard {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }
}

/// Points this thread's kick handler at `vcpu`'s `kvm_run.immediate_exit` (call on the vCPU's
/// own thread, after [`install_kick_handler`]).
pub(crate) fn bind_immediate_exit(vcpu: &mut VcpuFd) -> ImmediateExitGuard {
    let flag: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    IMMEDIATE_EXIT.with(|p| p.set(flag));
    ImmediateExitGuard
}

/// Runs `vcpu` until the guest is done, `stop` is set, or an error. Call on the vCPU's own
/// (pinned) thread after [`install_kick_handler`].
pub fn run(id: u32, vcpu: &mut VcpuFd, exits: &Exits, stop: &AtomicBool) -> VcpuReport {
    let start = Instant::now();
    let mut report = VcpuReport {
        vcpu: id,
        outcome: Outcome::Stopped,
        results: Vec::with_capacity(MAX_RESULTS),
        dropped_results: 0,
        console: Vec::with_capacity(1024),
        exits: 0,
        unhandled_pio: 0,
        last_rip: 0,
        elapsed: Duration::ZERO,
        counters: ExitCounters::default(),
    };
    let _guard = bind_immediate_exit(vcpu);
    let mut key = 0u64;
    let outcome = loop {
        if stop.load(Ordering::Acquire) {
            break Outcome::Stopped;
        }
        let exit = vcpu.run();
        report.exits += 1;
        match exit {
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let event = exits
                    .doorbell_gpa
                    .and_then(|bell| protocol::decode_mmio(bell, addr, data));
                match event {
                    Some(ev) => {
                        if let Some(o) = handle_event(ev, &mut key, &mut report, exits) {
                            break o;
                        }
                    }
                    None if exits.doorbell_gpa.is_some() => {
                        break Outcome::Failed(VcpuError::UnhandledMmio {
                            vcpu: id,
                            addr,
                            len: data.len(),
                        })
                    }
                    None => {}
                }
            }
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(VcpuExit::IoOut(port, data)) => {
                if let Some(ev) = protocol::decode_port(port, data) {
                    if let Some(o) = handle_event(ev, &mut key, &mut report, exits) {
                        break o;
                    }
                } else if let (Some(serial), Some(off)) = (&exits.serial, SerialPort::offset(port))
                {
                    // A UART write error only means its interrupt could not be raised.
                    let _ = serial.write(off, data.first().copied().unwrap_or(0));
                } else {
                    report.unhandled_pio += 1;
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => match (&exits.serial, SerialPort::offset(port)) {
                (Some(serial), Some(off)) => data.fill(serial.read(off)),
                _ => {
                    report.unhandled_pio += 1;
                    data.fill(0xff);
                }
            },
            Ok(VcpuExit::Hlt) => break Outcome::Halted,
            Ok(VcpuExit::Shutdown) => {
                break Outcome::Failed(VcpuError::Shutdown {
                    vcpu: id,
                    rip: rip(vcpu),
                })
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                break Outcome::Failed(VcpuError::FailEntry { vcpu: id, reason })
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: on KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member
                // of the exit union.
                let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                break Outcome::Failed(VcpuError::Internal {
                    vcpu: id,
                    rip: rip(vcpu),
                    suberror,
                });
            }
            Ok(other) => {
                let exit = format!("{other:?}");
                break Outcome::Failed(VcpuError::UnexpectedExit { vcpu: id, exit });
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                report.exits -= 1;
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(source) => break Outcome::Failed(VcpuError::Run { vcpu: id, source }),
        }
    };
    vcpu.set_kvm_immediate_exit(0);
    report.last_rip = rip(vcpu);
    report.outcome = outcome;
    report.elapsed = start.elapsed();
    report
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map_or(0, |r| r.rip)
}

fn handle_event(
    event: Event,
    key: &mut u64,
    report: &mut VcpuReport,
    exits: &Exits,
) -> Option<Outcome> {
    match event {
        Event::Console(b) => {
            if report.console.len() < MAX_CONSOLE {
                report.console.push(b);
            }
            if let Some(c) = &exits.console {
                c.push(&[b]);
            }
        }
        Event::Key(k) => *key = k,
        Event::Value(v) => {
            if report.results.len() < MAX_RESULTS {
                report.results.push((*key, v));
            } else {
                report.dropped_results += 1;
            }
        }
        Event::Done(status) => return Some(Outcome::Done(status)),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::Unclaimed;

    #[test]
    fn unclaimed_keeps_the_first_addresses_with_counts() {
        let mut a = Unclaimed::default();
        assert_eq!(a.to_string(), "");
        for _ in 0..3 {
            a.note(false, 0x70);
        }
        a.note(true, 0xFED0_0000);
        for p in [0x61, 0x80, 0x3FD] {
            a.note(false, p);
        }
        assert_eq!(
            a.to_string(),
            "port 0x70 ×3, mmio 0xfed00000 ×1, port 0x61 ×1, port 0x80 ×1"
        );
        let mut b = Unclaimed::default();
        b.note(false, 0x80);
        b.note(false, 0x71);
        b.merge(&a);
        assert_eq!(
            b.to_string(),
            "port 0x80 ×2, port 0x71 ×1, port 0x70 ×3, mmio 0xfed00000 ×1"
        );
    }
}
