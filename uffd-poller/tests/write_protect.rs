//! Write-protect round trips: a page installed read-only with COPY_MODE_WP (or protected
//! later with WRITEPROTECT) makes the next write fault with the WP flag; clearing the
//! protection wakes the writer and the write lands.

mod common;

use std::sync::Arc;

use common::*;
use uffd_poller::{
    CopyMode, Event, EventBuf, FaultKind, Features, FillOutcome, Ioctls, RegisterMode,
    UnprotectMode, WpOutcome,
};

#[test]
fn copy_mode_wp_then_write_faults_with_wp_flag_and_lands_after_clear() {
    let ps = page_size();
    let uffd = Arc::new(open(Features::PAGEFAULT_FLAG_WP | Features::THREAD_ID));
    let mem = Arc::new(Mapping::anon(1));
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    let ioctls =
        unsafe { uffd.register(mem.addr, ps, RegisterMode::MISSING | RegisterMode::WP) }.unwrap();
    assert!(ioctls.contains(Ioctls::WRITEPROTECT | Ioctls::COPY));
    assert!(
        !ioctls.contains(Ioctls::CONTINUE),
        "CONTINUE needs MINOR mode"
    );

    // A reader faults on the missing page; the handler installs it read-only.
    let m = Arc::clone(&mem);
    let reader = std::thread::spawn(move || (m.read(0), m.read(ps - 1)));
    let mut buf = EventBuf::<16>::new();
    let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
        panic!("expected a page fault");
    };
    assert_eq!(f.kind(), FaultKind::Missing);
    assert_eq!(
        uffd.copy(mem.addr, &pattern_page(2), CopyMode::WP).unwrap(),
        FillOutcome::Filled(ps)
    );
    let read = run_bounded("reader", move || reader.join().unwrap());
    assert_eq!(read, (pattern(2, 0), pattern(2, ps - 1)));

    // A write now faults with WRITE | WP, from the writer thread.
    let m = Arc::clone(&mem);
    let writer = std::thread::spawn(move || {
        let tid = gettid();
        m.write(100, 0x5a);
        tid
    });
    let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
        panic!("expected a page fault");
    };
    assert_eq!(f.kind(), FaultKind::WriteProtect);
    assert!(f.is_write());
    assert_eq!(f.page(ps), mem.addr);
    // The write has not landed while the writer sleeps.
    assert_eq!(waiting_faults(&uffd), 1);
    assert_eq!(mem.read(100), pattern(2, 100));
    assert_eq!(
        uffd.write_unprotect(mem.addr, ps, UnprotectMode::empty())
            .unwrap(),
        WpOutcome::Done
    );
    let tid = run_bounded("writer", move || writer.join().unwrap());
    assert_eq!(f.thread_id, Some(tid));
    assert_eq!(mem.read(100), 0x5a);
    assert_eq!(mem.read(99), pattern(2, 99));
    assert_eq!(mem.read(101), pattern(2, 101));
}

#[test]
fn writeprotect_on_a_mapped_page_traps_the_next_write() {
    let ps = page_size();
    let uffd = Arc::new(open(Features::PAGEFAULT_FLAG_WP));
    let mem = Arc::new(Mapping::anon(2));
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING | RegisterMode::WP) }.unwrap();
    for p in 0..2 {
        assert_eq!(
            uffd.copy(mem.page(p), &pattern_page(p), CopyMode::empty())
                .unwrap(),
            FillOutcome::Filled(ps)
        );
    }
    // Writable until protected: no event.
    mem.write(ps + 1, 1);
    let mut buf = EventBuf::<16>::new();
    assert!(uffd.read_events(&mut buf).unwrap().is_empty());

    assert_eq!(
        uffd.write_protect(mem.page(1), ps).unwrap(),
        WpOutcome::Done
    );
    // Page 0 is still writable; page 1 traps.
    mem.write(2, 2);
    let m = Arc::clone(&mem);
    let writer = std::thread::spawn(move || m.write(ps + 3, 3));
    let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
        panic!("expected a page fault");
    };
    assert_eq!(
        (f.kind(), f.page(ps)),
        (FaultKind::WriteProtect, mem.page(1))
    );
    // Clear without waking: the writer stays asleep until WAKE.
    uffd.write_unprotect(mem.page(1), ps, UnprotectMode::DONTWAKE)
        .unwrap();
    assert_eq!(waiting_faults(&uffd), 1);
    uffd.wake(mem.page(1), ps).unwrap();
    run_bounded("writer", move || writer.join().unwrap());
    assert_eq!((mem.read(2), mem.read(ps + 1), mem.read(ps + 3)), (2, 1, 3));
}
