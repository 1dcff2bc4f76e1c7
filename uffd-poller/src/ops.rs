//! Resolving faults: COPY, ZEROPAGE, WRITEPROTECT (set / clear), CONTINUE, MOVE, POISON and
//! WAKE. Expected transient outcomes (already mapped, retry, partial) are [`FillOutcome`] /
//! [`WpOutcome`] values, not errors. No path allocates, errors included.

use std::fmt;

use crate::features::Features;
use crate::flags::named_flags;
use crate::range::{self, RangeError};
use crate::sys;
use crate::uffd::Uffd;

named_flags! {
    /// Modes of [`Uffd::copy`].
    pub struct CopyMode {
        /// Do not wake the waiting threads (wake them later with [`Uffd::wake`], e.g. once per
        /// batch).
        const DONTWAKE = sys::UFFDIO_COPY_MODE_DONTWAKE;
        /// Map the new page write-protected (needs register mode WP): the next write faults
        /// with [`FaultFlags::WP`](crate::FaultFlags::WP).
        const WP = sys::UFFDIO_COPY_MODE_WP;
    }
}

named_flags! {
    /// Modes of [`Uffd::zeropage`].
    pub struct ZeropageMode {
        /// Do not wake the waiting threads.
        const DONTWAKE = sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE;
    }
}

named_flags! {
    /// Modes of [`Uffd::continue_minor`].
    pub struct ContinueMode {
        /// Do not wake the waiting threads.
        const DONTWAKE = sys::UFFDIO_CONTINUE_MODE_DONTWAKE;
        /// Map the page write-protected (needs register mode WP).
        const WP = sys::UFFDIO_CONTINUE_MODE_WP;
    }
}

named_flags! {
    /// Modes of [`Uffd::move_pages`].
    pub struct MoveMode {
        /// Do not wake the waiting threads.
        const DONTWAKE = sys::UFFDIO_MOVE_MODE_DONTWAKE;
        /// Skip unpopulated source pages instead of failing.
        const ALLOW_SRC_HOLES = sys::UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES;
    }
}

named_flags! {
    /// Modes of [`Uffd::poison`].
    pub struct PoisonMode {
        /// Do not wake the waiting threads.
        const DONTWAKE = sys::UFFDIO_POISON_MODE_DONTWAKE;
    }
}

named_flags! {
    /// Modes of [`Uffd::write_unprotect`].
    pub struct UnprotectMode {
        /// Do not wake the threads waiting on a write-protect fault in the range.
        const DONTWAKE = sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
    }
}

/// A userfaultfd operation, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// UFFDIO_COPY.
    Copy,
    /// UFFDIO_ZEROPAGE.
    Zeropage,
    /// UFFDIO_WRITEPROTECT.
    WriteProtect,
    /// UFFDIO_CONTINUE.
    Continue,
    /// UFFDIO_MOVE.
    Move,
    /// UFFDIO_POISON.
    Poison,
    /// UFFDIO_WAKE.
    Wake,
}

impl Op {
    /// What the kernel requires of the range, shown when it says EINVAL.
    fn requirement(self) -> &'static str {
        match self {
            Op::Copy => {
                "the destination must lie inside one mapping registered with this userfaultfd, \
                 and CopyMode::WP also needs register mode WP"
            }
            Op::Zeropage => {
                "the destination must lie inside one private-anonymous or shmem mapping \
                 registered with this userfaultfd (hugetlbfs has no zero page)"
            }
            Op::WriteProtect => "the range must be registered with RegisterMode::WP",
            Op::Continue => {
                "the range must be shmem or hugetlbfs memory registered with \
                 RegisterMode::MINOR, and ContinueMode::WP also needs register mode WP"
            }
            Op::Move => {
                "the destination must be registered with this userfaultfd, source and \
                 destination must be private anonymous mappings with the same protection, and \
                 the two ranges must not overlap"
            }
            Op::Poison => "the range must lie inside one mapping registered with this userfaultfd",
            Op::Wake => "the range must lie in user space",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Copy => "UFFDIO_COPY",
            Op::Zeropage => "UFFDIO_ZEROPAGE",
            Op::WriteProtect => "UFFDIO_WRITEPROTECT",
            Op::Continue => "UFFDIO_CONTINUE",
            Op::Move => "UFFDIO_MOVE",
            Op::Poison => "UFFDIO_POISON",
            Op::Wake => "UFFDIO_WAKE",
        })
    }
}

/// The result of an operation that fills missing pages (COPY, ZEROPAGE, CONTINUE, MOVE,
/// POISON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// All of the range was filled (the value is its length in bytes) and, unless DONTWAKE was
    /// given, the threads waiting on it were woken.
    Filled(usize),
    /// Only the first `n` bytes were filled (and woken); the kernel stopped early, for example
    /// because a later page was already mapped or the address space changed. Retry the rest
    /// (`start + n ..`).
    Partial(usize),
    /// The first page of the range is already mapped (`EEXIST`): someone else resolved it.
    /// Nothing was installed and nobody was woken: call [`Uffd::wake`] on the range so that
    /// its waiters retry.
    AlreadyMapped,
    /// Nothing was done because the address space is changing (`EAGAIN`: a fork, mremap or
    /// madvise is in progress): read the pending events, then retry.
    Retry,
}

/// The result of WRITEPROTECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WpOutcome {
    /// The protection was changed (and, when clearing without DONTWAKE, waiters woken).
    Done,
    /// Nothing was done because the address space is changing (`EAGAIN`): read the pending
    /// events, then retry.
    Retry,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The range is malformed.
    #[error("{op}: {source}")]
    Range {
        /// The operation.
        op: Op,
        /// What is wrong with the range.
        #[source]
        source: RangeError,
    },
    /// A mode bit this crate does not know.
    #[error("{op}: unknown mode bits {bits:#x}; use the named mode constants")]
    BadMode {
        /// The operation.
        op: Op,
        /// The unknown bits.
        bits: u64,
    },
    /// The operation needs a feature that was not negotiated.
    #[error(
        "{op} needs userfaultfd feature {feature}, which was not enabled on this fd: request \
         it when opening (Uffd::open)"
    )]
    FeatureNotNegotiated {
        /// The operation.
        op: Op,
        /// The missing feature.
        feature: Features,
    },
    /// MOVE with overlapping source and destination.
    #[error("{op}: source {src:#x} and destination {dst:#x} overlap (length {len:#x}); move between disjoint ranges")]
    Overlap {
        /// The operation.
        op: Op,
        /// Destination start.
        dst: usize,
        /// Source start.
        src: usize,
        /// Length.
        len: usize,
    },
    /// The range is not registered (in the needed mode) with a userfaultfd.
    #[error(
        "{op} on {start:#x}+{len:#x}: the range is not registered for this operation (ENOENT): \
         {}",
        .op.requirement()
    )]
    NotRegistered {
        /// The operation.
        op: Op,
        /// Start of the range.
        start: usize,
        /// Length.
        len: usize,
    },
    /// The kernel refused the arguments.
    #[error("{op} on {start:#x}+{len:#x} was refused (EINVAL): {}", .op.requirement())]
    Rejected {
        /// The operation.
        op: Op,
        /// Start of the range.
        start: usize,
        /// Length.
        len: usize,
    },
    /// MOVE: a source page is missing.
    #[error(
        "{op}: the source range has unpopulated pages (ENOENT): populate them, or pass \
         MoveMode::ALLOW_SRC_HOLES to skip them"
    )]
    SourceHole {
        /// The operation.
        op: Op,
    },
    /// MOVE: a source page cannot be moved.
    #[error(
        "{op}: a source page is shared (after fork or KSM), pinned or being migrated (EBUSY): \
         copy it with UFFDIO_COPY instead"
    )]
    SourceBusy {
        /// The operation.
        op: Op,
    },
    /// The source buffer is not readable.
    #[error("{op}: the source memory is not readable (EFAULT): pass a buffer of mapped memory")]
    BadAddress {
        /// The operation.
        op: Op,
    },
    /// The process owning the memory has exited.
    #[error(
        "{op}: the process whose memory this userfaultfd manages has exited (ESRCH): stop \
         serving this userfaultfd"
    )]
    ProcessGone {
        /// The operation.
        op: Op,
    },
    /// No memory for page tables or pages.
    #[error("{op}: the kernel is out of memory (ENOMEM)")]
    OutOfMemory {
        /// The operation.
        op: Op,
    },
    /// Any other failure.
    #[error("{op} on {start:#x}+{len:#x} failed: {source}")]
    Os {
        /// The operation.
        op: Op,
        /// Start of the range.
        start: usize,
        /// Length.
        len: usize,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
}

impl OpError {
    #[cold]
    fn from_errno(op: Op, errno: i32, start: usize, len: usize) -> Self {
        match errno {
            libc::ENOENT if op == Op::Move => OpError::SourceHole { op },
            libc::ENOENT => OpError::NotRegistered { op, start, len },
            libc::EINVAL => OpError::Rejected { op, start, len },
            libc::EBUSY if op == Op::Move => OpError::SourceBusy { op },
            libc::EFAULT => OpError::BadAddress { op },
            libc::ESRCH => OpError::ProcessGone { op },
            libc::ENOMEM => OpError::OutOfMemory { op },
            _ => OpError::Os {
                op,
                start,
                len,
                source: std::io::Error::from_raw_os_error(errno),
            },
        }
    }
}

/// Maps the ioctl result and the kernel's byte count of a fill operation to its outcome.
#[inline]
fn fill_outcome(
    op: Op,
    rc: Result<(), i32>,
    done: i64,
    start: usize,
    len: usize,
) -> Result<FillOutcome, OpError> {
    match rc {
        Ok(()) => Ok(FillOutcome::Filled(usize::try_from(done).unwrap_or(len))),
        Err(libc::EAGAIN) if done > 0 => Ok(FillOutcome::Partial(done as usize)),
        Err(libc::EAGAIN) => Ok(FillOutcome::Retry),
        Err(libc::EEXIST) => Ok(FillOutcome::AlreadyMapped),
        Err(e) => Err(OpError::from_errno(op, e, start, len)),
    }
}

impl Uffd {
    #[inline]
    fn check(&self, op: Op, start: usize, len: usize, unknown_mode: u64) -> Result<(), OpError> {
        range::check(start, len, self.page_size())
            .map_err(|source| OpError::Range { op, source })?;
        if unknown_mode != 0 {
            return Err(OpError::BadMode {
                op,
                bits: unknown_mode,
            });
        }
        Ok(())
    }

    #[inline]
    fn need(&self, op: Op, feature: Features) -> Result<(), OpError> {
        if self.features().contains(feature) {
            Ok(())
        } else {
            Err(OpError::FeatureNotNegotiated { op, feature })
        }
    }

    /// UFFDIO_COPY: atomically installs a copy of `src` at `dst` (both whole pages; `src` need
    /// not be aligned) where no page is mapped yet, and wakes the waiters.
    #[inline]
    pub fn copy(&self, dst: usize, src: &[u8], mode: CopyMode) -> Result<FillOutcome, OpError> {
        let len = src.len();
        self.check(Op::Copy, dst, len, mode.unknown_bits())?;
        let mut arg = sys::uffdio_copy {
            dst: dst as u64,
            src: src.as_ptr() as u64,
            len: len as u64,
            mode: mode.bits(),
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY takes a `uffdio_copy`. The kernel reads `len` bytes at `src`,
        // which the slice keeps alive and readable, and writes only missing pages of a range
        // registered with this uffd (the `register` contract allows that).
        let rc = unsafe { self.ioctl(sys::UFFDIO_COPY, &mut arg) };
        fill_outcome(Op::Copy, rc, arg.copy, dst, len)
    }

    /// UFFDIO_ZEROPAGE: maps the shared zero page at `dst..dst + len` where no page is mapped
    /// yet, and wakes the waiters. A later write allocates a private page without a fault
    /// event (unless the range is registered WP).
    #[inline]
    pub fn zeropage(
        &self,
        dst: usize,
        len: usize,
        mode: ZeropageMode,
    ) -> Result<FillOutcome, OpError> {
        self.check(Op::Zeropage, dst, len, mode.unknown_bits())?;
        let mut arg = sys::uffdio_zeropage {
            range: sys::uffdio_range {
                start: dst as u64,
                len: len as u64,
            },
            mode: mode.bits(),
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE takes a `uffdio_zeropage`; it maps zero pages only into
        // missing pages of a registered range.
        let rc = unsafe { self.ioctl(sys::UFFDIO_ZEROPAGE, &mut arg) };
        fill_outcome(Op::Zeropage, rc, arg.zeropage, dst, len)
    }

    /// UFFDIO_WRITEPROTECT with MODE_WP: write-protects `start..start + len` (registered with
    /// mode WP). Later writes fault with [`FaultFlags::WP`](crate::FaultFlags::WP).
    #[inline]
    pub fn write_protect(&self, start: usize, len: usize) -> Result<WpOutcome, OpError> {
        self.writeprotect(start, len, sys::UFFDIO_WRITEPROTECT_MODE_WP)
    }

    /// UFFDIO_WRITEPROTECT without MODE_WP: removes the protection and, unless DONTWAKE,
    /// wakes the threads whose writes faulted on the range.
    #[inline]
    pub fn write_unprotect(
        &self,
        start: usize,
        len: usize,
        mode: UnprotectMode,
    ) -> Result<WpOutcome, OpError> {
        if mode.unknown_bits() != 0 {
            return Err(OpError::BadMode {
                op: Op::WriteProtect,
                bits: mode.unknown_bits(),
            });
        }
        self.writeprotect(start, len, mode.bits())
    }

    #[inline]
    fn writeprotect(&self, start: usize, len: usize, mode: u64) -> Result<WpOutcome, OpError> {
        self.check(Op::WriteProtect, start, len, 0)?;
        let mut arg = sys::uffdio_writeprotect {
            range: sys::uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode,
        };
        // SAFETY: UFFDIO_WRITEPROTECT takes a `uffdio_writeprotect`; it changes page
        // protection only, never contents.
        match unsafe { self.ioctl(sys::UFFDIO_WRITEPROTECT, &mut arg) } {
            Ok(()) => Ok(WpOutcome::Done),
            Err(libc::EAGAIN) => Ok(WpOutcome::Retry),
            Err(e) => Err(OpError::from_errno(Op::WriteProtect, e, start, len)),
        }
    }

    /// UFFDIO_CONTINUE: after a MINOR fault, maps the page-cache pages already present for
    /// `start..start + len` (registered with mode MINOR on shmem or hugetlbfs), and wakes the
    /// waiters.
    #[inline]
    pub fn continue_minor(
        &self,
        start: usize,
        len: usize,
        mode: ContinueMode,
    ) -> Result<FillOutcome, OpError> {
        self.check(Op::Continue, start, len, mode.unknown_bits())?;
        let mut arg = sys::uffdio_continue {
            range: sys::uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: mode.bits(),
            mapped: 0,
        };
        // SAFETY: UFFDIO_CONTINUE takes a `uffdio_continue`; it maps existing page-cache pages
        // into unmapped pages of a registered range.
        let rc = unsafe { self.ioctl(sys::UFFDIO_CONTINUE, &mut arg) };
        fill_outcome(Op::Continue, rc, arg.mapped, start, len)
    }

    /// UFFDIO_MOVE (needs [`Features::MOVE`]): moves the pages at `src..src + len` to the
    /// missing pages at `dst` without copying, and wakes the waiters. Afterwards `src` is
    /// unpopulated (reads as zero, or faults if registered). A source page shared with
    /// another process (after fork) gives [`OpError::SourceBusy`]; an unpopulated one
    /// [`OpError::SourceHole`], or with [`MoveMode::ALLOW_SRC_HOLES`] is skipped and still
    /// counted in the returned length (its destination stays missing).
    ///
    /// # Safety
    ///
    /// The caller must own `src..src + len` as raw memory (no Rust reference into it): its
    /// contents disappear from under any such reference. `dst` is covered by the
    /// [`Uffd::register`] contract.
    #[inline]
    pub unsafe fn move_pages(
        &self,
        dst: usize,
        src: usize,
        len: usize,
        mode: MoveMode,
    ) -> Result<FillOutcome, OpError> {
        self.need(Op::Move, Features::MOVE)?;
        self.check(Op::Move, dst, len, mode.unknown_bits())?;
        self.check(Op::Move, src, len, 0)?;
        if dst < src + len && src < dst + len {
            return Err(OpError::Overlap {
                op: Op::Move,
                dst,
                src,
                len,
            });
        }
        let mut arg = sys::uffdio_move {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: mode.bits(),
            move_: 0,
        };
        // SAFETY: UFFDIO_MOVE takes a `uffdio_move`; the caller owns `src` as raw memory and
        // `dst` is registered with this uffd.
        let rc = unsafe { self.ioctl(sys::UFFDIO_MOVE, &mut arg) };
        fill_outcome(Op::Move, rc, arg.move_, dst, len)
    }

    /// UFFDIO_POISON (needs [`Features::POISON`]): marks the missing pages at
    /// `start..start + len` as poisoned, and wakes the waiters; any access then raises SIGBUS
    /// in the accessing thread (for pages that cannot be served at all).
    #[inline]
    pub fn poison(
        &self,
        start: usize,
        len: usize,
        mode: PoisonMode,
    ) -> Result<FillOutcome, OpError> {
        self.need(Op::Poison, Features::POISON)?;
        self.check(Op::Poison, start, len, mode.unknown_bits())?;
        let mut arg = sys::uffdio_poison {
            range: sys::uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: mode.bits(),
            updated: 0,
        };
        // SAFETY: UFFDIO_POISON takes a `uffdio_poison`; it installs markers only into missing
        // pages of a registered range.
        let rc = unsafe { self.ioctl(sys::UFFDIO_POISON, &mut arg) };
        fill_outcome(Op::Poison, rc, arg.updated, start, len)
    }

    /// UFFDIO_WAKE: wakes the threads waiting on faults in `start..start + len` (after
    /// DONTWAKE operations, or after [`FillOutcome::AlreadyMapped`]). Waking a range nobody
    /// waits on is harmless.
    #[inline]
    pub fn wake(&self, start: usize, len: usize) -> Result<(), OpError> {
        self.check(Op::Wake, start, len, 0)?;
        let mut arg = sys::uffdio_range {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_WAKE takes a `uffdio_range`; it only wakes threads.
        unsafe { self.ioctl(sys::UFFDIO_WAKE, &mut arg) }
            .map_err(|e| OpError::from_errno(Op::Wake, e, start, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_outcomes_follow_the_kernel_protocol() {
        let ok = fill_outcome(Op::Copy, Ok(()), 8192, 0x1000, 8192).unwrap();
        assert_eq!(ok, FillOutcome::Filled(8192));
        let partial = fill_outcome(Op::Copy, Err(libc::EAGAIN), 4096, 0x1000, 8192).unwrap();
        assert_eq!(partial, FillOutcome::Partial(4096));
        let retry = fill_outcome(Op::Copy, Err(libc::EAGAIN), -(libc::EAGAIN as i64), 0, 4096);
        assert_eq!(retry.unwrap(), FillOutcome::Retry);
        let early = fill_outcome(Op::Copy, Err(libc::EAGAIN), 0, 0, 4096);
        assert_eq!(early.unwrap(), FillOutcome::Retry);
        let exists = fill_outcome(Op::Copy, Err(libc::EEXIST), -(libc::EEXIST as i64), 0, 4096);
        assert_eq!(exists.unwrap(), FillOutcome::AlreadyMapped);
    }

    #[test]
    fn errnos_become_typed_errors() {
        let e = fill_outcome(Op::Copy, Err(libc::ENOENT), 0, 0x5000, 4096).unwrap_err();
        assert!(matches!(
            e,
            OpError::NotRegistered {
                op: Op::Copy,
                start: 0x5000,
                ..
            }
        ));
        let e = fill_outcome(Op::Move, Err(libc::ENOENT), 0, 0x5000, 4096).unwrap_err();
        assert!(matches!(e, OpError::SourceHole { op: Op::Move }));
        let e = fill_outcome(Op::Move, Err(libc::EBUSY), 0, 0x5000, 4096).unwrap_err();
        assert!(matches!(e, OpError::SourceBusy { .. }));
        let e = fill_outcome(Op::Continue, Err(libc::EINVAL), 0, 0x5000, 4096).unwrap_err();
        assert!(e.to_string().contains("RegisterMode::MINOR"), "{e}");
        let e = fill_outcome(Op::Copy, Err(libc::EIO), 0, 0x5000, 4096).unwrap_err();
        assert!(matches!(e, OpError::Os { .. }));
    }
}
