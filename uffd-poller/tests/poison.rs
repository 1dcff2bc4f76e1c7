//! UFFDIO_POISON: a poisoned page raises SIGBUS in whoever touches it. The touch happens in a
//! forked child, and the parent checks how the child ended.

mod common;

use common::*;
use uffd_poller::{CopyMode, Features, FillOutcome, PoisonMode, RegisterMode};

/// Forks a child that reads byte `off` of `mem`, then exits with status 0 if it read
/// `expected`, 1 otherwise. Returns the child's wait status.
fn touch_in_child(mem: &Mapping, off: usize, expected: u8) -> libc::c_int {
    let addr = mem.addr + off;
    // SAFETY: the child only makes async-signal-safe calls (signal, setrlimit, a volatile
    // read, _exit) before exiting, so forking from a multithreaded test process is sound.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // Die by the signal itself, without a core dump. Only async-signal-safe calls here.
        // SAFETY: resets one signal disposition in this single-threaded child.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `no_core` is a valid rlimit for the call.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        // SAFETY: `addr` is mapped in the child's copy of the address space.
        let v = unsafe { std::ptr::read_volatile(addr as *const u8) };
        // SAFETY: leaves the child without running the parent's destructors.
        unsafe { libc::_exit(if v == expected { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child created above; `status` is a valid out-pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

#[test]
fn a_poisoned_page_kills_its_toucher_with_sigbus() {
    let ps = page_size();
    let uffd = open(Features::POISON);
    let mem = Mapping::anon(2);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    let ioctls = unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    assert!(ioctls.contains(uffd_poller::Ioctls::POISON));
    assert_eq!(
        uffd.poison(mem.page(0), ps, PoisonMode::empty()).unwrap(),
        FillOutcome::Filled(ps)
    );
    assert_eq!(
        uffd.copy(mem.page(1), &pattern_page(1), CopyMode::empty())
            .unwrap(),
        FillOutcome::Filled(ps)
    );
    // Poisoning a page that is already there is refused like any other fill.
    assert_eq!(
        uffd.poison(mem.page(1), ps, PoisonMode::empty()).unwrap(),
        FillOutcome::AlreadyMapped
    );

    let status = touch_in_child(&mem, 17, 0);
    assert!(
        libc::WIFSIGNALED(status),
        "child was not killed: status {status:#x}"
    );
    assert_eq!(libc::WTERMSIG(status), libc::SIGBUS);

    // Control: the healthy neighbour page reads fine in a child.
    let status = touch_in_child(&mem, ps + 17, pattern(1, 17));
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
}
