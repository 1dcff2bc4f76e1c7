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
