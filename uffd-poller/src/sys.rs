//! Raw userfaultfd ABI: ioctl numbers, kernel structs and constants, mirrored from
//! `include/uapi/linux/userfaultfd.h` (Linux 6.8+, which added `UFFDIO_MOVE`), with
//! compile-time checks of every struct's size and field offsets.
//!
//! Nothing here is safe to use on its own; the rest of the crate wraps it. Names follow the
//! kernel header so that the two can be compared line by line.

#![allow(non_camel_case_types)]

use std::mem::{offset_of, size_of};

// The kernel structs carry 64-bit addresses; this crate converts them to `usize` without loss.
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
compile_error!("uffd-poller supports 64-bit Linux only");

// The `_IOC` encoding below is the asm-generic one (x86, arm64, riscv, ...). Architectures with
// their own encoding would need their own numbers.
#[cfg(any(
    target_arch = "powerpc64",
    target_arch = "mips64",
    target_arch = "sparc64"
))]
compile_error!("uffd-poller computes ioctl numbers with the asm-generic _IOC layout");

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    // Sizes of the structs used here are far below 2^14; checked at compile time.
    assert!(size < (1 << IOC_SIZEBITS));
    (dir << IOC_DIRSHIFT)
        | (ty << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// `_IO(type, nr)`.
const fn io(ty: u32, nr: u32) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

/// `_IOR(type, nr, T)`.
const fn ior<T>(ty: u32, nr: u32) -> u32 {
    ioc(IOC_READ, ty, nr, size_of::<T>())
}

/// `_IOWR(type, nr, T)`.
const fn iowr<T>(ty: u32, nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size_of::<T>())
}

/// ioctl type of `/dev/userfaultfd`.
pub const USERFAULTFD_IOC: u32 = 0xAA;
/// `/dev/userfaultfd` ioctl that creates a new userfaultfd; the argument is the open flags.
pub const USERFAULTFD_IOC_NEW: u32 = io(USERFAULTFD_IOC, 0x00);

/// The only userfaultfd API version.
pub const UFFD_API: u64 = 0xAA;
/// `userfaultfd(2)` flag: handle user-mode faults only. This crate never sets it.
pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// ioctl type of a userfaultfd.
pub const UFFDIO: u32 = 0xAA;

// Command numbers; also the bit positions in the `ioctls` masks the kernel returns.
/// `UFFDIO_REGISTER` command number.
pub const _UFFDIO_REGISTER: u32 = 0x00;
/// `UFFDIO_UNREGISTER` command number.
pub const _UFFDIO_UNREGISTER: u32 = 0x01;
/// `UFFDIO_WAKE` command number.
pub const _UFFDIO_WAKE: u32 = 0x02;
/// `UFFDIO_COPY` command number.
pub const _UFFDIO_COPY: u32 = 0x03;
/// `UFFDIO_ZEROPAGE` command number.
pub const _UFFDIO_ZEROPAGE: u32 = 0x04;
/// `UFFDIO_MOVE` command number (Linux 6.8).
pub const _UFFDIO_MOVE: u32 = 0x05;
/// `UFFDIO_WRITEPROTECT` command number.
pub const _UFFDIO_WRITEPROTECT: u32 = 0x06;
/// `UFFDIO_CONTINUE` command number.
pub const _UFFDIO_CONTINUE: u32 = 0x07;
/// `UFFDIO_POISON` command number (Linux 6.6).
pub const _UFFDIO_POISON: u32 = 0x08;
/// `UFFDIO_API` command number.
pub const _UFFDIO_API: u32 = 0x3F;

/// Handshake: API version and features (once per fd).
pub const UFFDIO_API: u32 = iowr::<uffdio_api>(UFFDIO, _UFFDIO_API);
/// Registers a range for MISSING / WP / MINOR faults.
pub const UFFDIO_REGISTER: u32 = iowr::<uffdio_register>(UFFDIO, _UFFDIO_REGISTER);
// The kernel header defines UNREGISTER and WAKE as _IOR (see the comment there).
/// Unregisters a range.
pub const UFFDIO_UNREGISTER: u32 = ior::<uffdio_range>(UFFDIO, _UFFDIO_UNREGISTER);
/// Wakes the threads waiting on a range.
pub const UFFDIO_WAKE: u32 = ior::<uffdio_range>(UFFDIO, _UFFDIO_WAKE);
/// Atomically fills missing pages with a copy of caller memory.
pub const UFFDIO_COPY: u32 = iowr::<uffdio_copy>(UFFDIO, _UFFDIO_COPY);
/// Maps the zero page into missing pages.
pub const UFFDIO_ZEROPAGE: u32 = iowr::<uffdio_zeropage>(UFFDIO, _UFFDIO_ZEROPAGE);
/// Moves anonymous pages from another range into missing pages.
pub const UFFDIO_MOVE: u32 = iowr::<uffdio_move>(UFFDIO, _UFFDIO_MOVE);
/// Sets or clears userfaultfd write protection on a range.
pub const UFFDIO_WRITEPROTECT: u32 = iowr::<uffdio_writeprotect>(UFFDIO, _UFFDIO_WRITEPROTECT);
/// Maps existing page-cache pages after a MINOR fault.
pub const UFFDIO_CONTINUE: u32 = iowr::<uffdio_continue>(UFFDIO, _UFFDIO_CONTINUE);
/// Installs poison markers: later accesses get SIGBUS.
pub const UFFDIO_POISON: u32 = iowr::<uffdio_poison>(UFFDIO, _UFFDIO_POISON);

// The numbers the kernel headers produce on x86_64 / arm64 (checked against
// <linux/userfaultfd.h> with a C compiler; MOVE and POISON from the 6.8 header).
const _: () = assert!(USERFAULTFD_IOC_NEW == 0xaa00);
const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_aa01);
const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);
const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xc020_aa04);
const _: () = assert!(UFFDIO_MOVE == 0xc028_aa05);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
const _: () = assert!(UFFDIO_CONTINUE == 0xc020_aa07);
const _: () = assert!(UFFDIO_POISON == 0xc020_aa08);

// Event codes of `uffd_msg.event`.
/// Event: a page fault.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// Event: the process forked (`UFFD_FEATURE_EVENT_FORK`).
pub const UFFD_EVENT_FORK: u8 = 0x13;
/// Event: a registered range moved (`UFFD_FEATURE_EVENT_REMAP`).
pub const UFFD_EVENT_REMAP: u8 = 0x14;
/// Event: pages were dropped by madvise (`UFFD_FEATURE_EVENT_REMOVE`).
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
/// Event: a registered range was unmapped (`UFFD_FEATURE_EVENT_UNMAP`).
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

// `uffd_msg.arg.pagefault.flags`.
/// Fault flag: the access was a write.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
/// Fault flag: write-protect fault.
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
/// Fault flag: minor fault.
pub const UFFD_PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

// `uffdio_api.features`.
/// Feature bit `UFFD_FEATURE_PAGEFAULT_FLAG_WP`.
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// Feature bit `UFFD_FEATURE_EVENT_FORK`.
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// Feature bit `UFFD_FEATURE_EVENT_REMAP`.
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// Feature bit `UFFD_FEATURE_EVENT_REMOVE`.
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// Feature bit `UFFD_FEATURE_MISSING_HUGETLBFS`.
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
/// Feature bit `UFFD_FEATURE_MISSING_SHMEM`.
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// Feature bit `UFFD_FEATURE_EVENT_UNMAP`.
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// Feature bit `UFFD_FEATURE_SIGBUS`.
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
/// Feature bit `UFFD_FEATURE_THREAD_ID`.
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// Feature bit `UFFD_FEATURE_MINOR_HUGETLBFS`.
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
/// Feature bit `UFFD_FEATURE_MINOR_SHMEM`.
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// Feature bit `UFFD_FEATURE_EXACT_ADDRESS`.
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
/// Feature bit `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`.
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// Feature bit `UFFD_FEATURE_WP_UNPOPULATED`.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// Feature bit `UFFD_FEATURE_POISON`.
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
/// Feature bit `UFFD_FEATURE_WP_ASYNC`.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// Feature bit `UFFD_FEATURE_MOVE`.
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

// `uffdio_register.mode`.
/// Register mode: faults on missing pages.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// Register mode: writes to write-protected pages.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// Register mode: minor faults (page in page cache, not mapped).
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;

// Per-operation modes.
/// COPY mode: do not wake the waiters.
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
/// COPY mode: map the page write-protected.
pub const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;
/// ZEROPAGE mode: do not wake the waiters.
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;
/// WRITEPROTECT mode: set protection (clear it without this bit).
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// WRITEPROTECT mode: do not wake the waiters when clearing.
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
/// CONTINUE mode: do not wake the waiters.
pub const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1 << 0;
/// CONTINUE mode: map the page write-protected.
pub const UFFDIO_CONTINUE_MODE_WP: u64 = 1 << 1;
/// POISON mode: do not wake the waiters.
pub const UFFDIO_POISON_MODE_DONTWAKE: u64 = 1 << 0;
/// MOVE mode: do not wake the waiters.
pub const UFFDIO_MOVE_MODE_DONTWAKE: u64 = 1 << 0;
/// MOVE mode: skip holes in the source instead of failing.
pub const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_api {
    /// API version requested (`UFFD_API`).
    pub api: u64,
    /// In: features to enable. Out: every feature the kernel offers.
    pub features: u64,
    /// Out: the ioctls available.
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_range {
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_register {
    /// The range.
    pub range: uffdio_range,
    /// `*_MODE_*` bits.
    pub mode: u64,
    /// Written by the kernel: the ioctls available on the range.
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_copy {
    /// Destination address.
    pub dst: u64,
    /// Source address.
    pub src: u64,
    /// Length in bytes.
    pub len: u64,
    /// `*_MODE_*` bits.
    pub mode: u64,
    /// Written by the kernel: bytes copied, or a negated errno.
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_zeropage {
    /// The range.
    pub range: uffdio_range,
    /// `*_MODE_*` bits.
    pub mode: u64,
    /// Written by the kernel: bytes zero-mapped, or a negated errno.
    pub zeropage: i64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_writeprotect {
    /// The range.
    pub range: uffdio_range,
    /// `*_MODE_*` bits.
    pub mode: u64,
}

/// `struct uffdio_continue`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_continue {
    /// The range.
    pub range: uffdio_range,
    /// `*_MODE_*` bits.
    pub mode: u64,
    /// Written by the kernel: bytes mapped, or a negated errno.
    pub mapped: i64,
}

/// `struct uffdio_poison`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_poison {
    /// The range.
    pub range: uffdio_range,
    /// `*_MODE_*` bits.
    pub mode: u64,
    /// Written by the kernel: bytes poisoned, or a negated errno.
    pub updated: i64,
}

/// `struct uffdio_move`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffdio_move {
    /// Destination address.
    pub dst: u64,
    /// Source address.
    pub src: u64,
    /// Length in bytes.
    pub len: u64,
    /// `*_MODE_*` bits.
    pub mode: u64,
    /// Written by the kernel: bytes moved, or a negated errno.
    pub move_: i64,
}

/// `uffd_msg.arg.pagefault`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffd_msg_pagefault {
    /// `UFFD_PAGEFAULT_FLAG_*`.
    pub flags: u64,
    /// Faulting address.
    pub address: u64,
    /// `feat.ptid`: the faulting thread's id with `UFFD_FEATURE_THREAD_ID`, else 0.
    pub ptid: u32,
}

/// `uffd_msg.arg.fork`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffd_msg_fork {
    /// The child's new userfaultfd.
    pub ufd: u32,
}

/// `uffd_msg.arg.remap`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffd_msg_remap {
    /// Old start address.
    pub from: u64,
    /// New start address.
    pub to: u64,
    /// Length in bytes.
    pub len: u64,
}

/// `uffd_msg.arg.remove` (also used by UNMAP).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct uffd_msg_remove {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
}

/// `uffd_msg.arg`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union uffd_msg_arg {
    /// `UFFD_EVENT_PAGEFAULT` payload.
    pub pagefault: uffd_msg_pagefault,
    /// `UFFD_EVENT_FORK` payload.
    pub fork: uffd_msg_fork,
    /// `UFFD_EVENT_REMAP` payload.
    pub remap: uffd_msg_remap,
    /// `UFFD_EVENT_REMOVE` / `UFFD_EVENT_UNMAP` payload.
    pub remove: uffd_msg_remove,
    /// Raw view of the payload.
    pub reserved: [u64; 3],
}

/// `struct uffd_msg`: what `read(2)` on a userfaultfd returns, 32 bytes per event.
///
/// The kernel declares it `__packed`; every field is naturally aligned, so `repr(C)` gives the
/// same layout with 8-byte alignment (checked below).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct uffd_msg {
    /// `UFFD_EVENT_*` code.
    pub event: u8,
    /// Reserved.
    pub reserved1: u8,
    /// Reserved.
    pub reserved2: u16,
    /// Reserved.
    pub reserved3: u32,
    /// Event payload, selected by `event`.
    pub arg: uffd_msg_arg,
}

impl std::fmt::Debug for uffd_msg_arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: every variant of the union is plain integers, so reading the reserved view
        // is valid for any bit pattern.
        let words = unsafe { self.reserved };
        f.debug_tuple("uffd_msg_arg").field(&words).finish()
    }
}

impl uffd_msg {
    /// An all-zero message (event 0, which the kernel never sends).
    pub const ZERO: Self = Self {
        event: 0,
        reserved1: 0,
        reserved2: 0,
        reserved3: 0,
        arg: uffd_msg_arg { reserved: [0; 3] },
    };
}

impl std::fmt::Debug for uffd_msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uffd_msg")
            .field("event", &self.event)
            .field("arg", &self.arg)
            .finish()
    }
}

// Layout checks against the kernel ABI.
const _: () = assert!(size_of::<uffdio_api>() == 24);
const _: () = assert!(offset_of!(uffdio_api, features) == 8);
const _: () = assert!(offset_of!(uffdio_api, ioctls) == 16);
const _: () = assert!(size_of::<uffdio_range>() == 16);
const _: () = assert!(offset_of!(uffdio_range, len) == 8);
const _: () = assert!(size_of::<uffdio_register>() == 32);
const _: () = assert!(offset_of!(uffdio_register, mode) == 16);
const _: () = assert!(offset_of!(uffdio_register, ioctls) == 24);
const _: () = assert!(size_of::<uffdio_copy>() == 40);
const _: () = assert!(offset_of!(uffdio_copy, src) == 8);
const _: () = assert!(offset_of!(uffdio_copy, len) == 16);
const _: () = assert!(offset_of!(uffdio_copy, mode) == 24);
const _: () = assert!(offset_of!(uffdio_copy, copy) == 32);
const _: () = assert!(size_of::<uffdio_zeropage>() == 32);
const _: () = assert!(offset_of!(uffdio_zeropage, mode) == 16);
const _: () = assert!(offset_of!(uffdio_zeropage, zeropage) == 24);
const _: () = assert!(size_of::<uffdio_writeprotect>() == 24);
const _: () = assert!(offset_of!(uffdio_writeprotect, mode) == 16);
const _: () = assert!(size_of::<uffdio_continue>() == 32);
const _: () = assert!(offset_of!(uffdio_continue, mode) == 16);
const _: () = assert!(offset_of!(uffdio_continue, mapped) == 24);
const _: () = assert!(size_of::<uffdio_poison>() == 32);
const _: () = assert!(offset_of!(uffdio_poison, mode) == 16);
const _: () = assert!(offset_of!(uffdio_poison, updated) == 24);
const _: () = assert!(size_of::<uffdio_move>() == 40);
const _: () = assert!(offset_of!(uffdio_move, src) == 8);
const _: () = assert!(offset_of!(uffdio_move, len) == 16);
const _: () = assert!(offset_of!(uffdio_move, mode) == 24);
const _: () = assert!(offset_of!(uffdio_move, move_) == 32);
const _: () = assert!(size_of::<uffd_msg>() == 32);
const _: () = assert!(offset_of!(uffd_msg, event) == 0);
const _: () = assert!(offset_of!(uffd_msg, reserved1) == 1);
const _: () = assert!(offset_of!(uffd_msg, reserved2) == 2);
const _: () = assert!(offset_of!(uffd_msg, reserved3) == 4);
const _: () = assert!(offset_of!(uffd_msg, arg) == 8);
const _: () = assert!(size_of::<uffd_msg_arg>() == 24);
// Offsets inside `arg` (add 8 for the offset in `uffd_msg`).
const _: () = assert!(offset_of!(uffd_msg_pagefault, flags) == 0);
const _: () = assert!(offset_of!(uffd_msg_pagefault, address) == 8);
const _: () = assert!(offset_of!(uffd_msg_pagefault, ptid) == 16);
const _: () = assert!(size_of::<uffd_msg_pagefault>() == 24);
const _: () = assert!(offset_of!(uffd_msg_fork, ufd) == 0);
const _: () = assert!(offset_of!(uffd_msg_remap, from) == 0);
const _: () = assert!(offset_of!(uffd_msg_remap, to) == 8);
const _: () = assert!(offset_of!(uffd_msg_remap, len) == 16);
const _: () = assert!(offset_of!(uffd_msg_remove, start) == 0);
const _: () = assert!(offset_of!(uffd_msg_remove, end) == 8);
