//! Registering address ranges with a userfaultfd (MISSING, WP and MINOR modes, in any
//! combination) and unregistering them; a refused registration says which mode the memory
//! does not support.

use crate::flags::named_flags;
use crate::ioctls::Ioctls;
use crate::memory_kind::{self, MemoryKind};
use crate::range::{self, RangeError};
use crate::sys;
use crate::uffd::Uffd;

named_flags! {
    /// Which faults a registered range reports (`UFFDIO_REGISTER_MODE_*`).
    pub struct RegisterMode {
        /// Accesses to pages that are not mapped. Private anonymous, shmem and hugetlbfs.
        const MISSING = sys::UFFDIO_REGISTER_MODE_MISSING;
        /// Writes to pages write-protected through the userfaultfd. Private anonymous (and
        /// shmem / hugetlbfs with `WP_HUGETLBFS_SHMEM`).
        const WP = sys::UFFDIO_REGISTER_MODE_WP;
        /// Accesses to pages present in the page cache but not mapped here. shmem and
        /// hugetlbfs only.
        const MINOR = sys::UFFDIO_REGISTER_MODE_MINOR;
    }
}

/// Why registering or unregistering a range failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The range itself is malformed.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// No mode, or a mode bit this crate does not know.
    #[error("invalid register mode {modes}: pass one or more of MISSING, WP, MINOR")]
    BadMode {
        /// The modes passed.
        modes: RegisterMode,
    },
    /// The memory in the range does not support a requested mode.
    #[error(
        "cannot register {start:#x}+{len:#x} for {modes}: the memory at {at:#x} is {kind}, which \
         does not support {unsupported}. MISSING and WP work on private anonymous, shmem \
         (memfd, tmpfs, shared anonymous) and hugetlbfs memory; MINOR only on shmem and \
         hugetlbfs; register mappings that exist and are of those kinds"
    )]
    Unsupported {
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
        /// Modes requested.
        modes: RegisterMode,
        /// Address of the first mapping (or hole) that cannot take them.
        at: usize,
        /// What that memory is.
        kind: MemoryKind,
        /// The requested modes it lacks.
        unsupported: RegisterMode,
    },
    /// The kernel said EINVAL although the memory kind supports the modes.
    #[error(
        "the kernel refused to register {start:#x}+{len:#x} for {modes} on {kind} memory \
         (EINVAL): align start and length to the mapping's page size (2 MiB or 1 GiB on \
         hugetlbfs) and keep the range inside user-space mappings"
    )]
    Rejected {
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
        /// Modes requested.
        modes: RegisterMode,
        /// What the memory at `start` is.
        kind: MemoryKind,
    },
    /// Unregistering hit memory that userfaultfd cannot manage.
    #[error(
        "cannot unregister {start:#x}+{len:#x}: the memory at {at:#x} is {kind}, which no \
         userfaultfd can manage (EINVAL); pass the range that was registered"
    )]
    UnregisterRejected {
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
        /// Address of the offending mapping or hole.
        at: usize,
        /// What the memory there is.
        kind: MemoryKind,
    },
    /// The kernel could not split mappings for the range.
    #[error(
        "the kernel ran out of memory or of mappings (ENOMEM) on {start:#x}+{len:#x}: register \
         fewer, larger ranges, or raise vm.max_map_count (ENOMEM also means the process owning \
         the memory has exited)"
    )]
    NoMemory {
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
    },
    /// Part of the range belongs to another userfaultfd.
    #[error(
        "part of {start:#x}+{len:#x} is registered with another userfaultfd (EBUSY): unregister \
         it there, or close that userfaultfd, first"
    )]
    Busy {
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
    },
    /// The range includes a mapping that may never be written.
    #[error(
        "{start:#x}+{len:#x} includes a mapping that can never be written (EPERM: a read-only \
         shared file mapping or a write-sealed memfd): userfaultfd needs memory that may be \
         written"
    )]
    NotWritable {
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
    },
    /// The process owning the memory has exited.
    #[error(
        "the process whose memory this userfaultfd manages has exited: stop using this \
         userfaultfd"
    )]
    ProcessGone,
    /// Any other failure.
    #[error("{call} on {start:#x}+{len:#x} failed: {source}")]
    Os {
        /// The ioctl.
        call: &'static str,
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
}

impl Uffd {
    /// Registers `start..start + len` so that faults of the given `modes` are reported to this
    /// userfaultfd. Returns the ioctls the kernel guarantees on the range (for example
    /// `WRITEPROTECT` only with mode WP, `CONTINUE` only with mode MINOR).
    ///
    /// Holes inside the range are skipped; only existing mappings are registered. A range
    /// already registered with this userfaultfd keeps its modes if they include `modes`,
    /// otherwise its modes become exactly `modes` (unregister first to drop a mode). Closing
    /// the `Uffd` unregisters everything.
    ///
    /// # Safety
    ///
    /// From now on the contents of missing pages in the range are decided by whoever holds
    /// this userfaultfd (COPY, ZEROPAGE, MOVE, CONTINUE, POISON), and threads touching them
    /// sleep until a handler resolves the fault. The caller must own the range as raw memory
    /// (e.g. guest memory it mmapped and accesses through pointers or volatile accesses): no
    /// Rust reference may exist into it that assumes its contents, and no allocator-owned
    /// memory may be registered.
    pub unsafe fn register(
        &self,
        start: usize,
        len: usize,
        modes: RegisterMode,
    ) -> Result<Ioctls, RegisterError> {
        range::check(start, len, self.page_size())?;
        if modes.is_empty() || modes.unknown_bits() != 0 {
            return Err(RegisterError::BadMode { modes });
        }
        let mut reg = sys::uffdio_register {
            range: sys::uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: modes.bits(),
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `uffdio_register`.
        match unsafe { self.ioctl(sys::UFFDIO_REGISTER, &mut reg) } {
            Ok(()) => Ok(Ioctls::from_bits_retain(reg.ioctls)),
            Err(libc::EINVAL) => Err(self.explain_einval(start, len, modes)),
            Err(e) => Err(map_errno("UFFDIO_REGISTER", e, start, len)),
        }
    }

    /// Unregisters `start..start + len`; pages stay mapped, threads still waiting on faults in
    /// the range are woken (they retry the access without the userfaultfd). Parts of the range
    /// that were not registered are left alone.
    pub fn unregister(&self, start: usize, len: usize) -> Result<(), RegisterError> {
        range::check(start, len, self.page_size())?;
        let mut r = sys::uffdio_range {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER takes a `uffdio_range`.
        match unsafe { self.ioctl(sys::UFFDIO_UNREGISTER, &mut r) } {
            Ok(()) => Ok(()),
            Err(libc::EINVAL) => {
                // Every kind userfaultfd can manage supports MISSING: find the one that cannot.
                let d = memory_kind::diagnose(
                    start,
                    len,
                    RegisterMode::MISSING,
                    self.available_features(),
                );
                Err(RegisterError::UnregisterRejected {
                    start,
                    len,
                    at: d.at,
                    kind: d.kind,
                })
            }
            Err(e) => Err(map_errno("UFFDIO_UNREGISTER", e, start, len)),
        }
    }

    /// Turns the kernel's bare EINVAL into the mode the memory does not support.
    #[cold]
    fn explain_einval(&self, start: usize, len: usize, modes: RegisterMode) -> RegisterError {
        let available = self.available_features();
        let d = memory_kind::diagnose(start, len, modes, available);
        if d.unsupported.is_empty() {
            RegisterError::Rejected {
                start,
                len,
                modes,
                kind: d.kind,
            }
        } else {
            RegisterError::Unsupported {
                start,
                len,
                modes,
                at: d.at,
                kind: d.kind,
                unsupported: d.unsupported,
            }
        }
    }
}

fn map_errno(call: &'static str, errno: i32, start: usize, len: usize) -> RegisterError {
    match errno {
        libc::EBUSY => RegisterError::Busy { start, len },
        libc::EPERM => RegisterError::NotWritable { start, len },
        libc::ESRCH => RegisterError::ProcessGone,
        libc::ENOMEM => RegisterError::NoMemory { start, len },
        _ => RegisterError::Os {
            call,
            start,
            len,
            source: std::io::Error::from_raw_os_error(errno),
        },
    }
}
