//! Process signals the node reacts to, turned into flags its control loop polls:
//! SIGUSR1 (dump the histograms), SIGTERM / SIGINT (stop).

use std::sync::atomic::{AtomicBool, Ordering};

static DUMP: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work: set a flag.
    match sig {
        libc::SIGUSR1 => DUMP.store(true, Ordering::SeqCst),
        _ => STOP.store(true, Ordering::SeqCst),
    }
}

/// Installs the handlers (once per process).
pub fn install() -> std::io::Result<()> {
    for sig in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; we set the handler and an empty mask.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa.sa_mask` is a valid sigset to initialise.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: installs a handler that only stores to atomics.
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a histogram dump was asked for since the last call.
pub fn take_dump_request() -> bool {
    DUMP.swap(false, Ordering::SeqCst)
}

/// Whether the process was asked to stop.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
