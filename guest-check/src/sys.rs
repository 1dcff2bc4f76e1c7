//! The few C library calls and the one x86 port write the checker needs, declared here so
//! that it builds with plain `rustc` and no crates: CPU affinity, the current CPU, the VMM's
//! status port (I/O port 0x513, reached with `ioperm`), membarrier, and power-off.

use std::ffi::{c_int, c_long, c_ulong};
use std::io;

/// Words in glibc's `cpu_set_t` (1024 CPUs).
const CPU_SET_WORDS: usize = 16;
/// The CPUs an affinity mask can name; CPU numbers at or above this are refused.
pub const MAX_CPUS: usize = CPU_SET_WORDS * 64;
/// The ports asked of `ioperm`: from the VMM's port block at 0x510 through 0x517, because
/// the CPU checks every byte an access touches and a 32-bit `out` to 0x513 touches 0x513–0x516
/// (`ioperm(0x510, 4)` alone makes that `out` fault).
pub const PORT_RANGE: (c_ulong, c_ulong) = (0x510, 8);
/// The port the status is written to, as one 32-bit `out`.
pub const STATUS_PORT: u16 = 0x513;
/// `LINUX_REBOOT_CMD_POWER_OFF`.
const RB_POWER_OFF: c_int = 0x4321_fedc;
/// `SYS_membarrier` on x86_64.
const SYS_MEMBARRIER: c_long = 324;
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`.
const MEMBARRIER_PRIVATE_EXPEDITED: c_int = 1 << 3;
/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`.
const MEMBARRIER_REGISTER_PRIVATE_EXPEDITED: c_int = 1 << 4;

extern "C" {
    fn sched_setaffinity(pid: c_int, size: usize, mask: *const u64) -> c_int;
    fn sched_getaffinity(pid: c_int, size: usize, mask: *mut u64) -> c_int;
    fn sched_getcpu() -> c_int;
    fn ioperm(from: c_ulong, num: c_ulong, turn_on: c_int) -> c_int;
    fn reboot(cmd: c_int) -> c_int;
    fn sync();
    fn syscall(num: c_long, ...) -> c_long;
}

/// `membarrier(cmd, 0, 0)`.
fn membarrier(cmd: c_int) -> io::Result<()> {
    // SAFETY: membarrier takes two integers and a CPU id, no pointers.
    let rc = unsafe { syscall(SYS_MEMBARRIER, cmd, 0 as c_int, 0 as c_int) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Registers this process for expedited private membarriers.
pub fn membarrier_register() -> io::Result<()> {
    membarrier(MEMBARRIER_REGISTER_PRIVATE_EXPEDITED)
}

/// An expedited private membarrier: an IPI to every other CPU running one of our threads,
/// returning once each has handled it.
pub fn membarrier_expedited() -> io::Result<()> {
    membarrier(MEMBARRIER_PRIVATE_EXPEDITED)
}

/// Pins the calling thread to `cpu` alone.
pub fn pin_to(cpu: usize) -> io::Result<()> {
    if cpu >= MAX_CPUS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "CPU number too large",
        ));
    }
    let mut mask = [0u64; CPU_SET_WORDS];
    mask[cpu / 64] |= 1 << (cpu % 64);
    // SAFETY: `mask` is a live, initialised buffer of exactly the size passed; pid 0 is the
    // calling thread.
    let rc = unsafe { sched_setaffinity(0, std::mem::size_of_val(&mask), mask.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The CPUs the calling thread may run on, sorted.
pub fn affinity() -> io::Result<Vec<usize>> {
    let mut mask = [0u64; CPU_SET_WORDS];
    // SAFETY: the kernel writes at most `size` bytes into `mask`, which is that large.
    let rc = unsafe { sched_getaffinity(0, std::mem::size_of_val(&mask), mask.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..MAX_CPUS)
        .filter(|&c| mask[c / 64] & (1 << (c % 64)) != 0)
        .collect())
}

/// The CPU the calling thread is running on now.
pub fn current_cpu() -> io::Result<usize> {
    // SAFETY: no arguments; only reads the calling thread's state.
    let rc = unsafe { sched_getcpu() };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Proof that this process may write the status port: only [`StatusPort::open`] makes one.
/// Threads started after it inherit the permission (Linux shares the I/O bitmap on clone).
#[derive(Clone, Copy, Debug)]
pub struct StatusPort(());

impl StatusPort {
    /// Asks the kernel for [`PORT_RANGE`] (needs CAP_SYS_RAWIO, i.e. root in the guest).
    pub fn open() -> io::Result<Self> {
        if !cfg!(target_arch = "x86_64") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "not an x86_64 machine",
            ));
        }
        // SAFETY: changes only this process's I/O permission bitmap.
        if unsafe { ioperm(PORT_RANGE.0, PORT_RANGE.1, 1) } == 0 {
            Ok(StatusPort(()))
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Writes `status` (0 = pass, 1 = fail) to the status port as one 32-bit `out`.
    pub fn write(self, status: u32) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` proves ioperm granted this port, so `out` cannot fault; it touches no
        // memory of ours and no flags.
        unsafe {
            std::arch::asm!(
                "out dx, eax",
                in("dx") STATUS_PORT,
                in("eax") status,
                options(nomem, nostack, preserves_flags)
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = status;
    }
}

/// Flushes file systems and powers the machine off; returns only if that failed, with why.
pub fn power_off() -> io::Error {
    // SAFETY: sync and reboot take no pointers; reboot either never returns or fails.
    unsafe {
        sync();
        reboot(RB_POWER_OFF);
    }
    io::Error::last_os_error()
}
