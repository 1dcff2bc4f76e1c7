//! Opening and the UFFDIO_API handshake: fd flags, feature negotiation on the real kernel,
//! and the privilege error for an unprivileged process.

mod common;

use common::*;
use uffd_poller::{FeatureError, Features, Ioctls, OpenError, OpenedVia, Uffd};

#[test]
fn the_fd_is_nonblocking_close_on_exec_and_from_the_device_when_present() {
    let uffd = open(Features::empty());
    // SAFETY: fcntl queries on an fd the Uffd owns.
    let fl = unsafe { libc::fcntl(uffd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    let fd_flags = unsafe { libc::fcntl(uffd.as_raw_fd(), libc::F_GETFD) };
    assert!(fl & libc::O_NONBLOCK != 0, "flags {fl:#x}");
    assert!(fd_flags & libc::FD_CLOEXEC != 0, "fd flags {fd_flags:#x}");
    let dev = std::path::Path::new("/dev/userfaultfd").exists();
    assert_eq!(uffd.opened_via() == OpenedVia::Device, dev);
    assert!(uffd
        .api_ioctls()
        .contains(Ioctls::API | Ioctls::REGISTER | Ioctls::UNREGISTER));
    assert!(uffd.page_size().is_power_of_two());
}

#[test]
fn required_features_are_granted_exactly_and_optional_ones_when_offered() {
    let (available, _) = Uffd::probe().unwrap_or_else(|e| panic!("{e}"));
    assert!(available.contains(Features::THREAD_ID));

    let uffd = open(Features::THREAD_ID);
    assert_eq!(uffd.features(), Features::THREAD_ID);
    assert_eq!(uffd.available_features(), available);

    // Ask for everything optionally: get what the kernel offers (as root, EVENT_FORK too).
    let all = Uffd::open_with(Features::THREAD_ID, Features::all()).unwrap();
    assert_eq!(all.features(), available.intersection(Features::all()));
}

#[test]
fn a_feature_the_kernel_lacks_is_named_in_the_error() {
    // Bit 40 is not a feature of any kernel: negotiation must fail and name exactly it.
    let phantom = Features::from_bits_retain(1 << 40);
    let err = Uffd::open(Features::THREAD_ID | phantom).unwrap_err();
    match &err {
        OpenError::Features(FeatureError::Missing { missing, available }) => {
            assert_eq!(*missing, phantom);
            assert!(available.contains(Features::THREAD_ID));
        }
        other => panic!("expected missing features, got {other:?}"),
    }
    assert!(err.to_string().contains("0x10000000000"), "{err}");
    // Optional phantom features are simply not granted.
    let uffd = Uffd::open_with(Features::THREAD_ID, phantom).unwrap();
    assert_eq!(uffd.features(), Features::THREAD_ID);
}

#[test]
fn the_privilege_error_says_how_to_get_access() {
    let text = OpenError::PermissionDenied {
        device_errno: libc::EACCES,
    }
    .to_string();
    for needle in [
        "root",
        "/dev/userfaultfd",
        "vm.unprivileged_userfaultfd=1",
        "KVM",
        "Permission denied",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in: {text}");
    }
}

/// What the child reports through its exit status.
const CHILD_DENIED: i32 = 10;
const CHILD_OPENED: i32 = 11;
const CHILD_OTHER_ERROR: i32 = 12;
const CHILD_SETUID_FAILED: i32 = 13;

#[test]
fn an_unprivileged_process_gets_the_privilege_error() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        // Not root: this process itself is the unprivileged one.
        match Uffd::open(Features::empty()) {
            Err(OpenError::PermissionDenied { .. }) | Ok(_) => return,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    // The kernel lets an unprivileged process in through a world-accessible device or the
    // sysctl; otherwise it must be refused.
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    let dev_open = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata("/dev/userfaultfd")
            .map(|m| m.permissions().mode() & 0o006 == 0o006)
            .unwrap_or(false)
    };
    let expected = if sysctl || dev_open {
        CHILD_OPENED
    } else {
        CHILD_DENIED
    };

    // SAFETY: the child drops privileges with raw syscalls and runs Uffd::open, which makes
    // only system calls on the failure path, then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let nobody: libc::c_long = 65534;
        // Raw credential syscalls: they affect only this single-threaded child.
        // SAFETY: no pointers but a null list of zero groups.
        let groups =
            unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) };
        // SAFETY: plain integer arguments.
        let gid = unsafe { libc::syscall(libc::SYS_setresgid, nobody, nobody, nobody) };
        // SAFETY: plain integer arguments.
        let uid = unsafe { libc::syscall(libc::SYS_setresuid, nobody, nobody, nobody) };
        let dropped = groups == 0 && gid == 0 && uid == 0;
        let code = if !dropped {
            CHILD_SETUID_FAILED
        } else {
            match Uffd::open(Features::empty()) {
                Err(OpenError::PermissionDenied { .. }) => CHILD_DENIED,
                Ok(_) => CHILD_OPENED,
                Err(_) => CHILD_OTHER_ERROR,
            }
        };
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: reaps the child created above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), expected);
}
