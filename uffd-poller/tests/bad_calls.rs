//! Bad calls come back as typed errors that say what to fix; none panics.

mod common;

use std::os::fd::AsRawFd;

use common::*;
use uffd_poller::{
    ContinueMode, CopyMode, Features, MemoryKind, MoveMode, Op, OpError, PoisonMode, RangeError,
    RegisterError, RegisterMode, ZeropageMode,
};

#[test]
fn unaligned_empty_and_wrapping_ranges_are_refused_before_the_kernel() {
    let ps = page_size();
    let uffd = open(Features::MOVE | Features::POISON);
    let mem = Mapping::anon(2);
    // SAFETY: fails validation before reaching the kernel.
    let r = unsafe { uffd.register(mem.addr + 1, ps, RegisterMode::MISSING) };
    assert!(
        matches!(r, Err(RegisterError::Range(RangeError::Unaligned { .. }))),
        "{r:?}"
    );
    // SAFETY: as above.
    let r = unsafe { uffd.register(mem.addr, 0, RegisterMode::MISSING) };
    assert!(
        matches!(r, Err(RegisterError::Range(RangeError::Empty { .. }))),
        "{r:?}"
    );
    // SAFETY: as above.
    let r = unsafe { uffd.register(usize::MAX - ps + 1, 2 * ps, RegisterMode::MISSING) };
    assert!(
        matches!(r, Err(RegisterError::Range(RangeError::Overflow { .. }))),
        "{r:?}"
    );

    let page = pattern_page(0);
    let unaligned = |r: Option<OpError>, op: Op| match r {
        Some(OpError::Range {
            op: o,
            source: RangeError::Unaligned { .. },
        }) => assert_eq!(o, op),
        other => panic!("{op}: expected Unaligned, got {other:?}"),
    };
    unaligned(
        uffd.copy(mem.addr + 8, &page, CopyMode::empty()).err(),
        Op::Copy,
    );
    unaligned(
        uffd.copy(mem.addr, &page[..100], CopyMode::empty()).err(),
        Op::Copy,
    );
    unaligned(
        uffd.zeropage(mem.addr, ps + 1, ZeropageMode::empty()).err(),
        Op::Zeropage,
    );
    unaligned(uffd.write_protect(mem.addr + 1, ps).err(), Op::WriteProtect);
    unaligned(
        uffd.continue_minor(mem.addr + 1, ps, ContinueMode::empty())
            .err(),
        Op::Continue,
    );
    unaligned(
        uffd.poison(mem.addr, 7, PoisonMode::empty()).err(),
        Op::Poison,
    );
    unaligned(uffd.wake(mem.addr + 3, ps).err(), Op::Wake);
    // SAFETY: fails validation before reaching the kernel.
    unaligned(
        unsafe { uffd.move_pages(mem.addr, mem.addr + ps + 1, ps, MoveMode::empty()) }.err(),
        Op::Move,
    );
    let empty = uffd.copy(mem.addr, &[], CopyMode::empty());
    assert!(matches!(
        empty,
        Err(OpError::Range {
            source: RangeError::Empty { .. },
            ..
        })
    ));
    let e = uffd.wake(mem.addr, 0).unwrap_err();
    assert!(e.to_string().contains("at least one page"), "{e}");
}

#[test]
fn operations_outside_any_registration_are_refused() {
    let ps = page_size();
    let uffd = open(Features::POISON);
    let registered = Mapping::anon(1);
    let plain = Mapping::anon(1);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(registered.addr, ps, RegisterMode::MISSING) }.unwrap();
    let r = uffd.copy(plain.addr, &pattern_page(0), CopyMode::empty());
    assert!(
        matches!(r, Err(OpError::NotRegistered { op: Op::Copy, .. })),
        "{r:?}"
    );
    let r = uffd.zeropage(plain.addr, ps, ZeropageMode::empty());
    assert!(
        matches!(
            r,
            Err(OpError::NotRegistered {
                op: Op::Zeropage,
                ..
            })
        ),
        "{r:?}"
    );
    let r = uffd.poison(plain.addr, ps, PoisonMode::empty());
    assert!(
        matches!(r, Err(OpError::NotRegistered { op: Op::Poison, .. })),
        "{r:?}"
    );
    // Straddling the end of the registration.
    let r = uffd.copy(registered.addr, &vec![0u8; 2 * ps], CopyMode::empty());
    assert!(r.is_err(), "{r:?}");
    // Nothing was installed in the registered page either.
    assert!(matches!(
        uffd.copy(registered.addr, &pattern_page(0), CopyMode::empty()),
        Ok(uffd_poller::FillOutcome::Filled(_))
    ));
}

#[test]
fn operations_needing_another_mode_say_which() {
    let ps = page_size();
    let uffd = open(Features::PAGEFAULT_FLAG_WP);
    let mem = Mapping::anon(2);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    // WRITEPROTECT on a range registered without WP.
    let e = uffd.write_protect(mem.addr, ps).unwrap_err();
    assert!(
        matches!(
            e,
            OpError::NotRegistered {
                op: Op::WriteProtect,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("RegisterMode::WP"), "{e}");
    // COPY_MODE_WP likewise.
    let e = uffd
        .copy(mem.addr, &pattern_page(0), CopyMode::WP)
        .unwrap_err();
    assert!(matches!(e, OpError::Rejected { op: Op::Copy, .. }), "{e:?}");
    assert!(e.to_string().contains("register mode WP"), "{e}");
    // CONTINUE on anonymous memory.
    let e = uffd
        .continue_minor(mem.addr, ps, ContinueMode::empty())
        .unwrap_err();
    assert!(
        matches!(
            e,
            OpError::Rejected {
                op: Op::Continue,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("MINOR"), "{e}");
}

#[test]
fn unsupported_register_modes_name_the_mode_and_the_memory() {
    let ps = page_size();
    let uffd = open(Features::empty());
    let mem = Mapping::anon(2);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    let e = unsafe {
        uffd.register(
            mem.addr,
            mem.len,
            RegisterMode::MISSING | RegisterMode::MINOR,
        )
    }
    .unwrap_err();
    match &e {
        RegisterError::Unsupported {
            kind, unsupported, ..
        } => {
            assert_eq!(*kind, MemoryKind::PrivateAnonymous);
            assert_eq!(*unsupported, RegisterMode::MINOR);
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("private anonymous") && text.contains("does not support MINOR"),
        "{text}"
    );

    // Nothing mapped at all (the first pages of the address space never are): named as such.
    // SAFETY: nothing is mapped there, so no memory changes hands.
    let e = unsafe { uffd.register(ps, ps, RegisterMode::MISSING) }.unwrap_err();
    assert!(
        matches!(
            e,
            RegisterError::Unsupported {
                kind: MemoryKind::Unmapped,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("unmapped"), "{e}");
}

#[test]
fn regular_file_mappings_cannot_be_registered() {
    let ps = page_size();
    let uffd = open(Features::empty());
    // A private, writable mapping of this test's own executable: file-backed memory.
    let exe = std::fs::File::open("/proc/self/exe").unwrap();
    // SAFETY: a new private mapping of a file; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            exe.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let addr = p as usize;
    // SAFETY: the mapping is the test's own raw memory.
    let r = unsafe { uffd.register(addr, ps, RegisterMode::MISSING) };
    // SAFETY: statfs is plain data; all-zero is a valid value to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer and the fd is open.
    assert_eq!(unsafe { libc::fstatfs(exe.as_raw_fd(), &mut st) }, 0);
    if st.f_type == libc::TMPFS_MAGIC {
        // Built on tmpfs: the file is shmem, which MISSING supports.
        r.unwrap();
    } else {
        match r {
            Err(RegisterError::Unsupported {
                kind: MemoryKind::File,
                unsupported,
                ..
            }) => assert_eq!(unsupported, RegisterMode::MISSING),
            other => panic!("expected Unsupported on a regular file, got {other:?}"),
        }
    }
    // SAFETY: unmaps the mapping created above.
    assert_eq!(unsafe { libc::munmap(p, ps) }, 0);
}

#[test]
fn bad_modes_busy_ranges_and_missing_features_are_typed() {
    let ps = page_size();
    let uffd = open(Features::empty());
    let mem = Mapping::anon(2);
    // SAFETY: the mapping is the test's own raw memory.
    let r = unsafe { uffd.register(mem.addr, ps, RegisterMode::empty()) };
    assert!(matches!(r, Err(RegisterError::BadMode { .. })), "{r:?}");
    // SAFETY: as above.
    let r = unsafe { uffd.register(mem.addr, ps, RegisterMode::from_bits_retain(1 << 5)) };
    assert!(matches!(r, Err(RegisterError::BadMode { .. })), "{r:?}");
    let r = uffd.copy(
        mem.addr,
        &pattern_page(0),
        CopyMode::from_bits_retain(1 << 9),
    );
    assert!(
        matches!(r, Err(OpError::BadMode { bits: 0x200, .. })),
        "{r:?}"
    );

    // One range, two userfaultfds.
    // SAFETY: as above.
    unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    let other = open(Features::empty());
    // SAFETY: as above.
    let r = unsafe { other.register(mem.addr, ps, RegisterMode::MISSING) };
    assert!(matches!(r, Err(RegisterError::Busy { .. })), "{r:?}");

    // MOVE and POISON need their features on this fd.
    let src = Mapping::anon(1);
    // SAFETY: `src` is the test's raw memory (and the call fails before the kernel).
    let r = unsafe { uffd.move_pages(mem.addr, src.addr, ps, MoveMode::empty()) };
    match r {
        Err(OpError::FeatureNotNegotiated {
            op: Op::Move,
            feature,
        }) => {
            assert_eq!(feature, Features::MOVE)
        }
        other => panic!("expected FeatureNotNegotiated, got {other:?}"),
    }
    let e = uffd.poison(mem.addr, ps, PoisonMode::empty()).unwrap_err();
    assert!(
        e.to_string().contains("POISON") && e.to_string().contains("Uffd::open"),
        "{e}"
    );

    // Overlapping MOVE ranges.
    let mover = open(Features::MOVE);
    // SAFETY: fails validation before the kernel.
    let r = unsafe { mover.move_pages(mem.addr, mem.addr + ps, 2 * ps, MoveMode::empty()) };
    assert!(matches!(r, Err(OpError::Overlap { .. })), "{r:?}");

    // Unregistering is fine; unregistering a hole is not.
    uffd.unregister(mem.addr, mem.len).unwrap();
    let r = uffd.unregister(0x1000_0000, ps);
    assert!(
        matches!(r, Err(RegisterError::UnregisterRejected { .. })),
        "{r:?}"
    );
}
