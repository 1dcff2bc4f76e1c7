//! MINOR faults on a shared memfd mapping: the page cache already holds the data (written
//! through a second, unregistered mapping); the handler maps it with CONTINUE.

mod common;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use common::*;
use uffd_poller::{
    ContinueMode, Event, FaultKind, Features, FillOutcome, Ioctls, RegisterMode, Uffd,
};

#[derive(Default)]
struct MinorStats {
    backing: usize,
    base: usize,
    faults_per_page: Vec<usize>,
    others: Vec<Event>,
}

fn continue_handler(uffd: &Uffd, s: &mut MinorStats, ev: Event) {
    let Event::PageFault(f) = ev else {
        s.others.push(ev);
        return;
    };
    assert_eq!(f.kind(), FaultKind::Minor);
    let ps = uffd.page_size();
    let page = f.page(ps);
    let idx = (page - s.base) / ps;
    s.faults_per_page[idx] += 1;
    // The handler may fix the contents in the page cache before mapping them.
    // SAFETY: `backing + idx * ps` is inside the unregistered backing mapping, alive for the
    // test; nothing reads this byte concurrently.
    unsafe { std::ptr::write_volatile((s.backing + idx * ps) as *mut u8, 0xee) };
    match uffd
        .continue_minor(page, ps, ContinueMode::empty())
        .unwrap()
    {
        FillOutcome::Filled(n) => assert_eq!(n, ps),
        FillOutcome::AlreadyMapped => uffd.wake(page, ps).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn minor_faults_on_memfd_are_resolved_with_continue() {
    const PAGES: usize = 8;
    let ps = page_size();
    let uffd = Arc::new(open(Features::MINOR_SHMEM));
    let fd = memfd(PAGES * ps);
    let guest = Arc::new(Mapping::shared(fd.as_raw_fd(), PAGES * ps));
    let backing = Mapping::shared(fd.as_raw_fd(), PAGES * ps);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    let ioctls = unsafe { uffd.register(guest.addr, guest.len, RegisterMode::MINOR) }.unwrap();
    assert!(ioctls.contains(Ioctls::CONTINUE));
    assert!(!ioctls.contains(Ioctls::WRITEPROTECT));

    // Populate the page cache through the unregistered mapping: no events.
    for p in 0..PAGES {
        for i in 0..ps {
            backing.write(p * ps + i, pattern(p, i));
        }
    }
    let stats = MinorStats {
        backing: backing.addr,
        base: guest.addr,
        faults_per_page: vec![0; PAGES],
        others: Vec::new(),
    };
    let handler = Handler::spawn(Arc::clone(&uffd), stats, continue_handler);

    let g = Arc::clone(&guest);
    let ok = run_bounded("reader", move || {
        (0..PAGES)
            .all(|p| g.read(p * ps) == 0xee && (1..ps).all(|i| g.read(p * ps + i) == pattern(p, i)))
    });
    let s = handler.stop();
    assert!(ok, "guest view differs from the page cache");
    assert!(s.others.is_empty(), "{:?}", s.others);
    // Every page faulted (once per page: fault-around is off for MINOR ranges).
    assert_eq!(s.faults_per_page, vec![1; PAGES]);
    // The mapping is shared: guest writes reach the page cache.
    guest.write(3 * ps + 5, 0x42);
    assert_eq!(backing.read(3 * ps + 5), 0x42);
}

#[test]
fn minor_and_wp_combine_on_shmem() {
    let ps = page_size();
    let uffd = Arc::new(open(
        Features::MINOR_SHMEM | Features::WP_HUGETLBFS_SHMEM | Features::PAGEFAULT_FLAG_WP,
    ));
    let fd = memfd(ps);
    let guest = Arc::new(Mapping::shared(fd.as_raw_fd(), ps));
    let backing = Mapping::shared(fd.as_raw_fd(), ps);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    let ioctls =
        unsafe { uffd.register(guest.addr, ps, RegisterMode::MINOR | RegisterMode::WP) }.unwrap();
    assert!(ioctls.contains(Ioctls::CONTINUE | Ioctls::WRITEPROTECT));
    backing.write(0, 0x11);

    let mut buf = uffd_poller::EventBuf::<16>::new();
    let g = Arc::clone(&guest);
    let reader = std::thread::spawn(move || g.read(0));
    let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
        panic!("expected a page fault");
    };
    assert_eq!(f.kind(), FaultKind::Minor);
    // Map it write-protected: reads proceed, the next write traps.
    assert_eq!(
        uffd.continue_minor(guest.addr, ps, ContinueMode::WP)
            .unwrap(),
        FillOutcome::Filled(ps)
    );
    assert_eq!(run_bounded("reader", move || reader.join().unwrap()), 0x11);
    let g = Arc::clone(&guest);
    let writer = std::thread::spawn(move || g.write(1, 0x22));
    let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
        panic!("expected a page fault");
    };
    assert_eq!(f.kind(), FaultKind::WriteProtect);
    assert!(f.is_write());
    assert_eq!(backing.read(1), 0, "the write must wait for the handler");
    uffd.write_unprotect(guest.addr, ps, uffd_poller::UnprotectMode::empty())
        .unwrap();
    run_bounded("writer", move || writer.join().unwrap());
    assert_eq!(backing.read(1), 0x22);
}
