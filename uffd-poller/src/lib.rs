//! A safe Rust wrapper over Linux userfaultfd through raw ioctls, for a data plane that
//! resolves guest page faults from a pinned, busy-polling thread.
//!
//! * [`Uffd::open`] creates the fd (`/dev/userfaultfd`, else `userfaultfd(2)`; always
//!   `O_NONBLOCK | O_CLOEXEC`, never user-mode-only so that KVM's kernel-mode accesses fault
//!   into it) and negotiates [`Features`]: required ones or a precise error naming the missing
//!   ones, optional ones when offered.
//! * [`Uffd::register`] / [`Uffd::unregister`] manage ranges in [`RegisterMode`] MISSING, WP,
//!   MINOR (any combination) and report the [`Ioctls`] the kernel grants per range.
//! * [`Uffd::read_events`] reads a batch of events into a caller-owned [`EventBuf`] without
//!   blocking or allocating and decodes them into [`Event`].
//! * [`Uffd::copy`], [`Uffd::zeropage`], [`Uffd::write_protect`], [`Uffd::write_unprotect`],
//!   [`Uffd::continue_minor`], [`Uffd::move_pages`], [`Uffd::poison`] and [`Uffd::wake`]
//!   resolve faults. `EEXIST` and `EAGAIN` come back as [`FillOutcome::AlreadyMapped`] (wake
//!   the range) and [`FillOutcome::Retry`] / [`WpOutcome::Retry`], partial work as
//!   [`FillOutcome::Partial`].
//! * Errors are one enum per module and say what to do (e.g. how to get the privilege, or
//!   which register mode the memory does not support).
//!
//! The raw kernel ABI is in [`sys`], with compile-time layout checks.
//!
//! [`Uffd::register`] is `unsafe`: once a range is registered, whoever holds the userfaultfd
//! decides what its missing pages contain, so the caller promises that the range is raw
//! memory it owns (guest memory accessed through pointers), not memory Rust code holds
//! references into. Under that contract the fill operations are safe; [`Uffd::move_pages`]
//! stays `unsafe` because it also empties its source range.
//!
//! # Example: a handler loop
//!
//! ```no_run
//! use uffd_poller::{CopyMode, Event, EventBuf, Features, FillOutcome, RegisterMode, Uffd};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (guest_base, guest_len) = (0x7f00_0000_0000usize, 1usize << 30);
//! # let fetch_page = |_addr: usize| vec![0u8; 4096];
//! let uffd = Uffd::open(Features::THREAD_ID)?;
//! // SAFETY: guest memory is an mmap owned by this VMM and accessed through raw pointers.
//! unsafe { uffd.register(guest_base, guest_len, RegisterMode::MISSING)? };
//! let mut buf = EventBuf::<64>::new();
//! loop {
//!     for event in uffd.read_events(&mut buf)? {
//!         let Event::PageFault(fault) = *event else { continue };
//!         let page = fault.page(uffd.page_size());
//!         match uffd.copy(page, &fetch_page(page), CopyMode::empty())? {
//!             FillOutcome::Filled(_) => {}
//!             // Someone else installed it: wake the waiters.
//!             FillOutcome::AlreadyMapped => uffd.wake(page, uffd.page_size())?,
//!             // The address space is changing or the copy stopped early: try again later.
//!             FillOutcome::Retry | FillOutcome::Partial(_) => { /* requeue `page` */ }
//!         }
//!     }
//!     # break;
//! }
//! # Ok(())
//! # }
//! ```

mod event;
mod features;
mod flags;
mod ioctls;
mod memory_kind;
mod open;
mod ops;
mod range;
mod register;
pub mod sys;
mod uffd;

pub use event::{
    Event, EventBuf, Fault, FaultFlags, FaultKind, ReadError, DEFAULT_EVENT_BATCH, MAX_EVENT_BATCH,
};
pub use features::{negotiate, FeatureError, Features};
pub use ioctls::Ioctls;
pub use memory_kind::MemoryKind;
pub use open::{OpenError, OpenedVia};
pub use ops::{
    ContinueMode, CopyMode, FillOutcome, MoveMode, Op, OpError, PoisonMode, UnprotectMode,
    WpOutcome, ZeropageMode,
};
pub use range::RangeError;
pub use register::{RegisterError, RegisterMode};
pub use uffd::Uffd;
