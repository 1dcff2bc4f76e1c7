//! Reading userfaultfd events: batched non-blocking `read(2)` into a caller-owned
//! [`EventBuf`], decoded into the small `Copy` enum [`Event`]. No allocation per read.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::flags::named_flags;
use crate::sys;
use crate::uffd::Uffd;

/// Default number of events one [`EventBuf`] holds.
pub const DEFAULT_EVENT_BATCH: usize = 64;
/// Largest batch an [`EventBuf`] may hold (a bound on one read's work and on the buffer's
/// size: 1024 events are 64 KiB).
pub const MAX_EVENT_BATCH: usize = 1024;

named_flags! {
    /// Flags of a page-fault event.
    pub struct FaultFlags {
        /// The access was a write.
        const WRITE = sys::UFFD_PAGEFAULT_FLAG_WRITE;
        /// A write hit a userfaultfd-write-protected page (register mode WP).
        const WP = sys::UFFD_PAGEFAULT_FLAG_WP;
        /// The page is in the page cache but not mapped here (register mode MINOR).
        const MINOR = sys::UFFD_PAGEFAULT_FLAG_MINOR;
    }
}

/// Why a fault happened, from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No page is mapped (register mode MISSING): install one with COPY, ZEROPAGE, MOVE or
    /// POISON.
    Missing,
    /// A write to a write-protected page (register mode WP): clear the protection.
    WriteProtect,
    /// The page-cache page exists but is not mapped (register mode MINOR): map it with
    /// CONTINUE.
    Minor,
}

/// A page fault waiting to be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address. Page-aligned by the kernel unless
    /// [`Features::EXACT_ADDRESS`](crate::Features::EXACT_ADDRESS) was negotiated, in which
    /// case it keeps the offset inside the page; [`Fault::page`] aligns it either way.
    pub address: usize,
    /// The fault's flags.
    pub flags: FaultFlags,
    /// The faulting thread's id (`gettid()` in its pid namespace). `None` unless
    /// [`Features::THREAD_ID`](crate::Features::THREAD_ID) was negotiated.
    pub thread_id: Option<u32>,
}

impl Fault {
    /// What kind of fault this is.
    pub fn kind(&self) -> FaultKind {
        if self.flags.contains(FaultFlags::WP) {
            FaultKind::WriteProtect
        } else if self.flags.contains(FaultFlags::MINOR) {
            FaultKind::Minor
        } else {
            FaultKind::Missing
        }
    }

    /// True when the access was a write.
    pub fn is_write(&self) -> bool {
        self.flags.contains(FaultFlags::WRITE)
    }

    /// The start of the faulting page, for a `page_size` that is a power of two.
    pub fn page(&self, page_size: usize) -> usize {
        self.address & !(page_size - 1)
    }
}

/// One userfaultfd event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread faulted on a registered page and sleeps until the page is resolved.
    PageFault(Fault),
    /// The process forked (needs `EVENT_FORK`). `uffd` is a new userfaultfd for the child,
    /// already installed in this process's fd table: adopt it with
    /// [`Uffd::from_fork_event`] or close it.
    Fork {
        /// The child's userfaultfd.
        uffd: RawFd,
    },
    /// mremap(2) moved a registered range (needs `EVENT_REMAP`).
    Remap {
        /// Old start address.
        from: usize,
        /// New start address.
        to: usize,
        /// Length of the moved range.
        len: usize,
    },
    /// madvise(MADV_DONTNEED / MADV_REMOVE) dropped registered pages (needs `EVENT_REMOVE`):
    /// the next touch of `start..end` faults again.
    Remove {
        /// Start of the dropped range.
        start: usize,
        /// End (exclusive).
        end: usize,
    },
    /// munmap(2) removed a registered range (needs `EVENT_UNMAP`).
    Unmap {
        /// Start of the unmapped range.
        start: usize,
        /// End (exclusive).
        end: usize,
    },
    /// An event code this crate does not know (from a newer kernel).
    Unknown {
        /// The raw `uffd_msg.event` code.
        code: u8,
    },
}

impl Event {
    /// Decodes one kernel message.
    pub fn decode(msg: &sys::uffd_msg) -> Self {
        // SAFETY (for every union read below): each view of `arg` is plain integers, so any
        // bit pattern is a valid value; the event code picks the meaningful one.
        match msg.event {
            sys::UFFD_EVENT_PAGEFAULT => {
                // SAFETY: see above.
                let pf = unsafe { msg.arg.pagefault };
                Event::PageFault(Fault {
                    address: pf.address as usize,
                    flags: FaultFlags::from_bits_retain(pf.flags),
                    thread_id: (pf.ptid != 0).then_some(pf.ptid),
                })
            }
            sys::UFFD_EVENT_FORK => {
                // SAFETY: see above.
                let fork = unsafe { msg.arg.fork };
                Event::Fork {
                    uffd: fork.ufd as RawFd,
                }
            }
            sys::UFFD_EVENT_REMAP => {
                // SAFETY: see above.
                let r = unsafe { msg.arg.remap };
                Event::Remap {
                    from: r.from as usize,
                    to: r.to as usize,
                    len: r.len as usize,
                }
            }
            sys::UFFD_EVENT_REMOVE => {
                // SAFETY: see above.
                let r = unsafe { msg.arg.remove };
                Event::Remove {
                    start: r.start as usize,
                    end: r.end as usize,
                }
            }
            sys::UFFD_EVENT_UNMAP => {
                // SAFETY: see above.
                let r = unsafe { msg.arg.remove };
                Event::Unmap {
                    start: r.start as usize,
                    end: r.end as usize,
                }
            }
            code => Event::Unknown { code },
        }
    }
}

/// A caller-owned buffer for one batch of up to `N` events (`1 <= N <= MAX_EVENT_BATCH`).
///
/// Allocate it once per polling thread and reuse it for every read. It holds `N` raw
/// messages and `N` decoded events (at most 64 bytes per slot); box it for large `N`.
pub struct EventBuf<const N: usize = DEFAULT_EVENT_BATCH> {
    raw: [sys::uffd_msg; N],
    events: [Event; N],
}

impl<const N: usize> EventBuf<N> {
    /// An empty buffer.
    pub fn new() -> Self {
        const {
            assert!(
                N >= 1 && N <= MAX_EVENT_BATCH,
                "EventBuf size must be 1..=1024"
            );
        }
        Self {
            raw: [sys::uffd_msg::ZERO; N],
            events: [Event::Unknown { code: 0 }; N],
        }
    }

    /// How many events one read can return.
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize> Default for EventBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> std::fmt::Debug for EventBuf<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBuf").field("capacity", &N).finish()
    }
}

/// Why reading events failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `read(2)` returned a length that is not a whole number of messages.
    #[error(
        "read(2) on the userfaultfd returned {bytes} bytes, not a multiple of the 32-byte \
         uffd_msg: a kernel ABI mismatch; report it with the kernel version"
    )]
    Truncated {
        /// Bytes returned.
        bytes: usize,
    },
    /// `poll(2)` reported an error condition on the fd.
    #[error(
        "poll(2) reported POLLERR on the userfaultfd: the fd is not usable for polling \
         (userfaultfd reports POLLERR for blocking fds; this crate opens them O_NONBLOCK)"
    )]
    PollError,
    /// Another `read(2)` / `poll(2)` failure.
    #[error("{call} on the userfaultfd failed: {source}")]
    Os {
        /// The failing call.
        call: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

impl Uffd {
    /// Reads every pending event, up to the buffer's capacity, without blocking.
    ///
    /// Returns an empty slice when nothing is pending (or a signal interrupted the read). Fork
    /// events create an fd in this process at read time: adopt or close it.
    #[inline]
    pub fn read_events<'b, const N: usize>(
        &self,
        buf: &'b mut EventBuf<N>,
    ) -> Result<&'b [Event], ReadError> {
        const MSG: usize = std::mem::size_of::<sys::uffd_msg>();
        // SAFETY: `buf.raw` is `N` messages of writable memory, exclusively borrowed for the
        // call; `read` writes at most `N * MSG` bytes into it, and any bytes are a valid
        // `uffd_msg` (integers and a union of integers).
        let rc = unsafe { libc::read(self.as_raw_fd(), buf.raw.as_mut_ptr().cast(), N * MSG) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(&[]),
                _ => Err(ReadError::Os {
                    call: "read(2)",
                    source: err,
                }),
            };
        }
        let bytes = rc as usize;
        if bytes % MSG != 0 {
            return Err(ReadError::Truncated { bytes });
        }
        let count = bytes / MSG;
        for (raw, ev) in buf.raw[..count].iter().zip(buf.events.iter_mut()) {
            *ev = Event::decode(raw);
        }
        Ok(&buf.events[..count])
    }

    /// Sleeps in `poll(2)` until events are pending or `timeout` passes (`None`: no limit).
    /// Returns whether events are pending; `false` on timeout or signal.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, ReadError> {
        let timeout_ms: libc::c_int = match timeout {
            None => -1,
            // Round up so that a short timeout does not become a busy poll.
            Some(t) => {
                libc::c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, exclusively borrowed for the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Ok(false);
            }
            return Err(ReadError::Os {
                call: "poll(2)",
                source: err,
            });
        }
        if pfd.revents & libc::POLLERR != 0 {
            return Err(ReadError::PollError);
        }
        Ok(pfd.revents & libc::POLLIN != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: u8, arg: sys::uffd_msg_arg) -> sys::uffd_msg {
        sys::uffd_msg {
            event,
            arg,
            ..sys::uffd_msg::ZERO
        }
    }

    #[test]
    fn decodes_page_faults() {
        let m = msg(
            sys::UFFD_EVENT_PAGEFAULT,
            sys::uffd_msg_arg {
                pagefault: sys::uffd_msg_pagefault {
                    flags: sys::UFFD_PAGEFAULT_FLAG_WRITE | sys::UFFD_PAGEFAULT_FLAG_WP,
                    address: 0x7f00_1234_5000,
                    ptid: 4242,
                },
            },
        );
        let Event::PageFault(f) = Event::decode(&m) else {
            panic!("not a page fault: {:?}", Event::decode(&m));
        };
        assert_eq!(f.address, 0x7f00_1234_5000);
        assert!(f.is_write());
        assert_eq!(f.kind(), FaultKind::WriteProtect);
        assert_eq!(f.thread_id, Some(4242));
    }

    #[test]
    fn fault_without_thread_id_and_exact_address() {
        let m = msg(
            sys::UFFD_EVENT_PAGEFAULT,
            sys::uffd_msg_arg {
                pagefault: sys::uffd_msg_pagefault {
                    flags: sys::UFFD_PAGEFAULT_FLAG_MINOR,
                    address: 0x1234_5678,
                    ptid: 0,
                },
            },
        );
        let Event::PageFault(f) = Event::decode(&m) else {
            panic!("not a page fault");
        };
        assert_eq!(f.thread_id, None);
        assert_eq!(f.kind(), FaultKind::Minor);
        assert!(!f.is_write());
        assert_eq!(f.page(4096), 0x1234_5000);
    }

    #[test]
    fn decodes_non_cooperative_events() {
        let remap = msg(
            sys::UFFD_EVENT_REMAP,
            sys::uffd_msg_arg {
                remap: sys::uffd_msg_remap {
                    from: 0x1000,
                    to: 0x9000,
                    len: 0x2000,
                },
            },
        );
        assert_eq!(
            Event::decode(&remap),
            Event::Remap {
                from: 0x1000,
                to: 0x9000,
                len: 0x2000
            }
        );
        let range = sys::uffd_msg_arg {
            remove: sys::uffd_msg_remove {
                start: 0x4000,
                end: 0x6000,
            },
        };
        assert_eq!(
            Event::decode(&msg(sys::UFFD_EVENT_REMOVE, range)),
            Event::Remove {
                start: 0x4000,
                end: 0x6000
            }
        );
        assert_eq!(
            Event::decode(&msg(sys::UFFD_EVENT_UNMAP, range)),
            Event::Unmap {
                start: 0x4000,
                end: 0x6000
            }
        );
        let fork = msg(
            sys::UFFD_EVENT_FORK,
            sys::uffd_msg_arg {
                fork: sys::uffd_msg_fork { ufd: 17 },
            },
        );
        assert_eq!(Event::decode(&fork), Event::Fork { uffd: 17 });
    }

    #[test]
    fn events_are_small() {
        // One decoded event is no larger than the kernel message it comes from.
        assert!(std::mem::size_of::<Event>() <= std::mem::size_of::<sys::uffd_msg>());
    }

    #[test]
    fn unknown_events_are_typed_not_panics() {
        for code in [0u8, 0x11, 0x17, 0xff] {
            assert_eq!(
                Event::decode(&msg(code, sys::uffd_msg_arg { reserved: [7; 3] })),
                Event::Unknown { code }
            );
        }
    }
}
