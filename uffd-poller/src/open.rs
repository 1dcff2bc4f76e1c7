//! Creating a userfaultfd (through `/dev/userfaultfd`, falling back to `userfaultfd(2)`) and the
//! `UFFDIO_API` handshake, with errors that say how to get the needed privilege.
//!
//! Every fd is created `O_NONBLOCK | O_CLOEXEC` and never `UFFD_USER_MODE_ONLY`: KVM reaches
//! guest memory from kernel mode (`copy_to_user`, `get_user_pages`), and those faults must be
//! delivered to the handler like any other.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::features::{negotiate, FeatureError, Features};
use crate::ioctls::Ioctls;
use crate::sys;

/// Flags of every userfaultfd this crate creates.
const UFFD_FLAGS: libc::c_int = libc::O_CLOEXEC | libc::O_NONBLOCK;
// Never user-mode-only (see the module comment).
const _: () = assert!(UFFD_FLAGS & sys::UFFD_USER_MODE_ONLY == 0);

/// How the userfaultfd was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedVia {
    /// `ioctl(USERFAULTFD_IOC_NEW)` on `/dev/userfaultfd` (Linux 6.1+): access is granted by the
    /// device file's permissions.
    Device,
    /// The `userfaultfd(2)` system call: kernel-mode faults need `CAP_SYS_PTRACE` or
    /// `vm.unprivileged_userfaultfd=1`.
    Syscall,
}

/// Why a userfaultfd could not be opened and initialised.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Neither `/dev/userfaultfd` nor `userfaultfd(2)` is allowed for this process.
    #[error(
        "userfaultfd is not permitted for this process (/dev/userfaultfd: {}; userfaultfd(2): \
         EPERM). Run as root (or with CAP_SYS_PTRACE), or give this user read/write access to \
         /dev/userfaultfd (for example `chgrp kvm /dev/userfaultfd && chmod 0660 \
         /dev/userfaultfd`), or set `sysctl vm.unprivileged_userfaultfd=1`. A user-mode-only \
         userfaultfd is not an option: KVM touches guest memory from kernel mode and those \
         faults must reach the handler",
        io::Error::from_raw_os_error(*.device_errno)
    )]
    PermissionDenied {
        /// The errno of the `/dev/userfaultfd` attempt (`ENOENT` when the device is absent).
        device_errno: i32,
    },
    /// The kernel has no userfaultfd.
    #[error(
        "this kernel has no userfaultfd (userfaultfd(2) returned ENOSYS and /dev/userfaultfd \
         is unusable): run on a kernel built with CONFIG_USERFAULTFD=y, and check that no \
         seccomp filter blocks userfaultfd(2)"
    )]
    Unsupported,
    /// The process or system is out of file descriptors.
    #[error("no file descriptor left for a userfaultfd ({0}): raise the limit (ulimit -n) or close unused fds")]
    TooManyFiles(#[source] io::Error),
    /// `EVENT_FORK` was required but the process lacks `CAP_SYS_PTRACE`.
    #[error(
        "the kernel refused UFFD_FEATURE_EVENT_FORK: it needs CAP_SYS_PTRACE; run as root or \
         stop requiring Features::EVENT_FORK"
    )]
    ForkNeedsPtrace,
    /// The `UFFDIO_API` handshake failed.
    #[error(
        "the kernel rejected the UFFDIO_API handshake (API {api:#x}, features {requested}): \
         {source}; this kernel does not speak that userfaultfd API"
    )]
    ApiRejected {
        /// API version asked for.
        api: u64,
        /// Features asked for.
        requested: Features,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A required feature is missing.
    #[error(transparent)]
    Features(#[from] FeatureError),
    /// Any other failure of a system call.
    #[error("{step} failed: {source}")]
    Os {
        /// What was being done.
        step: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// The outcome of opening and initialising a userfaultfd.
#[derive(Debug)]
pub(crate) struct Initialised {
    pub fd: OwnedFd,
    pub via: OpenedVia,
    /// Features enabled on `fd`.
    pub features: Features,
    /// Features the kernel offers.
    pub available: Features,
    /// ioctls the fd accepts outside registered ranges.
    pub ioctls: Ioctls,
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Creates an uninitialised userfaultfd.
pub(crate) fn create_fd() -> Result<(OwnedFd, OpenedVia), OpenError> {
    let device_errno = match create_via_device() {
        Ok(fd) => return Ok((fd, OpenedVia::Device)),
        Err(e) if e == libc::EMFILE || e == libc::ENFILE => {
            return Err(OpenError::TooManyFiles(io::Error::from_raw_os_error(e)))
        }
        Err(e) => e,
    };
    // SAFETY: userfaultfd(2) takes one int of flags and returns a new fd or -1; no memory is
    // passed.
    let rc = unsafe { libc::syscall(libc::SYS_userfaultfd, UFFD_FLAGS) };
    if rc < 0 {
        let e = last_errno();
        return Err(match e {
            libc::EPERM => OpenError::PermissionDenied { device_errno },
            libc::ENOSYS => OpenError::Unsupported,
            libc::EMFILE | libc::ENFILE => OpenError::TooManyFiles(io::Error::from_raw_os_error(e)),
            _ => OpenError::Os {
                step: "userfaultfd(2)",
                source: io::Error::from_raw_os_error(e),
            },
        });
    }
    let raw = libc::c_int::try_from(rc).map_err(|_| OpenError::Os {
        step: "userfaultfd(2)",
        source: io::Error::from_raw_os_error(libc::EBADF),
    })?;
    // SAFETY: the syscall succeeded, so `raw` is a new fd that nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(raw) }, OpenedVia::Syscall))
}

/// `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW`; returns the errno on failure.
fn create_via_device() -> Result<OwnedFd, i32> {
    // SAFETY: the path is a NUL-terminated literal; open(2) returns a new fd or -1.
    let dev = unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev < 0 {
        return Err(last_errno());
    }
    // SAFETY: open succeeded, so `dev` is a new fd that nothing else owns.
    let dev = unsafe { OwnedFd::from_raw_fd(dev) };
    // The argument is the new fd's flags, passed by value as an unsigned long.
    let flags = UFFD_FLAGS as libc::c_ulong;
    // SAFETY: USERFAULTFD_IOC_NEW takes its argument by value (no pointer) and returns a new
    // fd or -1.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), sys::USERFAULTFD_IOC_NEW as _, flags) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: the ioctl succeeded, so `fd` is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `UFFDIO_API` on a fresh fd; returns the kernel's answer or its errno.
pub(crate) fn handshake(fd: BorrowedFd<'_>, features: Features) -> Result<sys::uffdio_api, i32> {
    let mut api = sys::uffdio_api {
        api: sys::UFFD_API,
        features: features.bits(),
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `uffdio_api`, which `api` is, and it lives for
    // the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), sys::UFFDIO_API as _, &mut api) };
    if rc < 0 {
        return Err(last_errno());
    }
    Ok(api)
}

/// Asks the kernel what it offers, on a throwaway fd (`UFFDIO_API` works once per fd).
pub(crate) fn probe() -> Result<(Features, Ioctls), OpenError> {
    let (fd, _) = create_fd()?;
    let api =
        handshake(fd.as_fd(), Features::empty()).map_err(|e| api_error(e, Features::empty()))?;
    Ok((
        Features::from_bits_retain(api.features),
        Ioctls::from_bits_retain(api.ioctls),
    ))
}

fn api_error(errno: i32, requested: Features) -> OpenError {
    match errno {
        libc::EPERM if requested.contains(Features::EVENT_FORK) => OpenError::ForkNeedsPtrace,
        _ => OpenError::ApiRejected {
            api: sys::UFFD_API,
            requested,
            source: io::Error::from_raw_os_error(errno),
        },
    }
}

/// Opens a userfaultfd and enables `required` plus whichever `optional` features the kernel
/// offers.
pub(crate) fn open(required: Features, optional: Features) -> Result<Initialised, OpenError> {
    let (available, _) = probe()?;
    let mut request = negotiate(available, required, optional)?;
    loop {
        let (fd, via) = create_fd()?;
        match handshake(fd.as_fd(), request) {
            Ok(api) => {
                return Ok(Initialised {
                    fd,
                    via,
                    features: request,
                    available,
                    ioctls: Ioctls::from_bits_retain(api.ioctls),
                })
            }
            // EVENT_FORK needs CAP_SYS_PTRACE; when it was only wished for, go on without it.
            Err(libc::EPERM)
                if request.contains(Features::EVENT_FORK)
                    && !required.contains(Features::EVENT_FORK) =>
            {
                request = request.difference(Features::EVENT_FORK);
            }
            Err(e) => return Err(api_error(e, request)),
        }
    }
}
