//! MISSING faults served by a handler thread: COPY under contention, one page shared by many
//! faulting threads, ZEROPAGE, DONTWAKE + WAKE, kernel-mode accesses, thread ids and exact
//! addresses.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use common::*;
use uffd_poller::{
    CopyMode, Event, EventBuf, FaultKind, Features, FillOutcome, RegisterMode, Uffd, ZeropageMode,
};

/// What the COPY handler saw.
#[derive(Default)]
struct CopyStats {
    base: usize,
    pages: usize,
    /// Successful COPYs per page.
    filled: Vec<usize>,
    already_mapped: usize,
    faults: usize,
    thread_ids: Vec<u32>,
    other_events: Vec<Event>,
}

fn copy_handler(uffd: &Uffd, s: &mut CopyStats, ev: Event) {
    let Event::PageFault(f) = ev else {
        s.other_events.push(ev);
        return;
    };
    s.faults += 1;
    if let Some(t) = f.thread_id {
        s.thread_ids.push(t);
    }
    assert_eq!(f.kind(), FaultKind::Missing);
    let ps = uffd.page_size();
    let page = f.page(ps);
    assert!(
        page >= s.base && page < s.base + s.pages * ps,
        "fault outside the range"
    );
    let idx = (page - s.base) / ps;
    let data = pattern_page(idx);
    loop {
        match uffd.copy(page, &data, CopyMode::empty()).expect("copy") {
            FillOutcome::Filled(n) => {
                assert_eq!(n, ps);
                s.filled[idx] += 1;
                break;
            }
            FillOutcome::AlreadyMapped => {
                s.already_mapped += 1;
                uffd.wake(page, ps).expect("wake");
                break;
            }
            FillOutcome::Retry => continue,
            FillOutcome::Partial(n) => panic!("partial copy of one page: {n}"),
        }
    }
}

#[test]
fn threads_faulting_on_many_pages_all_get_the_right_bytes() {
    const THREADS: usize = 4;
    const PAGES: usize = 64;
    let ps = page_size();
    let uffd = Arc::new(open(Features::THREAD_ID));
    let mem = Arc::new(Mapping::anon(PAGES));
    // SAFETY: `mem` is a fresh mapping this test owns and accesses only through raw pointers.
    let ioctls = unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    assert!(ioctls.contains(uffd_poller::Ioctls::COPY | uffd_poller::Ioctls::WAKE));

    let stats = CopyStats {
        base: mem.addr,
        pages: PAGES,
        filled: vec![0; PAGES],
        ..Default::default()
    };
    let handler = Handler::spawn(Arc::clone(&uffd), stats, copy_handler);

    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let mem = Arc::clone(&mem);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let tid = gettid();
                barrier.wait();
                // Each thread walks the pages from a different start, so threads collide on
                // some pages and lead on others.
                for k in 0..PAGES {
                    let page = (k + t * PAGES / THREADS) % PAGES;
                    for i in 0..ps {
                        let got = mem.read(page * ps + i);
                        assert_eq!(got, pattern(page, i), "thread {t} page {page} byte {i}");
                    }
                }
                tid
            })
        })
        .collect();
    let tids: HashSet<u32> = run_bounded("faulting threads", move || {
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let s = handler.stop();

    assert!(s.other_events.is_empty(), "{:?}", s.other_events);
    // Every page was installed exactly once, whoever faulted on it first.
    assert_eq!(s.filled, vec![1; PAGES]);
    assert!(s.faults >= PAGES);
    assert_eq!(s.faults, PAGES + s.already_mapped);
    // THREAD_ID reports the faulting threads.
    assert_eq!(s.thread_ids.len(), s.faults);
    for t in &s.thread_ids {
        assert!(tids.contains(t), "fault from unknown thread {t}");
    }
}

#[test]
fn many_threads_waiting_on_one_page_resume_after_one_install() {
    const THREADS: usize = 8;
    let ps = page_size();
    let uffd = Arc::new(open(Features::empty()));
    let mem = Arc::new(Mapping::anon(1));
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, ps, RegisterMode::MISSING) }.unwrap();

    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let mem = Arc::clone(&mem);
            std::thread::spawn(move || (0..ps).all(|i| mem.read(i) == pattern(0, i)))
        })
        .collect();

    // Resolve only once every thread sleeps on the page: the kernel counts them in fdinfo.
    wait_until("all threads to fault", || waiting_faults(&uffd) == THREADS);
    let mut buf = EventBuf::<16>::new();
    let Event::PageFault(f) = uffd.read_events(&mut buf).unwrap()[0] else {
        panic!("expected a page fault");
    };
    assert_eq!(f.page(ps), mem.addr);
    let out = uffd
        .copy(mem.addr, &pattern_page(0), CopyMode::empty())
        .unwrap();
    assert_eq!(out, FillOutcome::Filled(ps));

    let all_correct = run_bounded("woken threads", move || {
        workers.into_iter().all(|w| w.join().expect("worker"))
    });
    assert!(all_correct, "a thread read wrong bytes");
    assert_eq!(waiting_faults(&uffd), 0);
    // A second install of the same page is refused as already mapped.
    let again = uffd
        .copy(mem.addr, &pattern_page(1), CopyMode::empty())
        .unwrap();
    assert_eq!(again, FillOutcome::AlreadyMapped);
    assert_eq!(mem.read(5), pattern(0, 5));
}

#[test]
fn dontwake_copy_leaves_the_thread_asleep_until_wake() {
    let ps = page_size();
    let uffd = Arc::new(open(Features::empty()));
    let mem = Arc::new(Mapping::anon(1));
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, ps, RegisterMode::MISSING) }.unwrap();
    let m = Arc::clone(&mem);
    let worker = std::thread::spawn(move || m.read(9));

    let mut buf = EventBuf::<16>::new();
    assert!(matches!(next_event(&uffd, &mut buf), Event::PageFault(_)));
    let out = uffd
        .copy(mem.addr, &pattern_page(3), CopyMode::DONTWAKE)
        .unwrap();
    assert_eq!(out, FillOutcome::Filled(ps));
    // The page is in place but nobody woke the thread: the kernel still counts it waiting.
    assert_eq!(waiting_faults(&uffd), 1);
    assert!(!worker.is_finished());
    uffd.wake(mem.addr, ps).unwrap();
    let got = run_bounded("woken thread", move || worker.join().expect("worker"));
    assert_eq!(got, pattern(3, 9));
}

#[test]
fn zeropage_resolves_a_read_and_later_writes_need_no_event() {
    let ps = page_size();
    let uffd = Arc::new(open(Features::empty()));
    let mem = Arc::new(Mapping::anon(2));
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    let m = Arc::clone(&mem);
    let worker = std::thread::spawn(move || (0..ps).map(|i| m.read(i) as u64).sum::<u64>());

    let mut buf = EventBuf::<16>::new();
    let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
        panic!("expected a page fault");
    };
    assert!(!f.is_write());
    let out = uffd
        .zeropage(f.page(ps), ps, ZeropageMode::empty())
        .unwrap();
    assert_eq!(out, FillOutcome::Filled(ps));
    let sum = run_bounded("reader", move || worker.join().expect("worker"));
    assert_eq!(sum, 0);
    // Writing to the zero page copies it on write without another uffd event.
    mem.write(10, 0xab);
    assert_eq!(mem.read(10), 0xab);
    assert!(uffd.read_events(&mut buf).unwrap().is_empty());
    assert_eq!(
        uffd.zeropage(mem.addr, ps, ZeropageMode::empty()).unwrap(),
        FillOutcome::AlreadyMapped
    );
}

#[test]
fn kernel_mode_accesses_fault_into_the_uffd() {
    // write(2) from a registered page makes the kernel read it (copy_from_user). A
    // user-mode-only uffd would let that fail with EFAULT; KVM's accesses are of this kind.
    let ps = page_size();
    let uffd = Arc::new(open(Features::empty()));
    let mem = Arc::new(Mapping::anon(1));
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, ps, RegisterMode::MISSING) }.unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let [rfd, wfd] = fds;
    // The pipe buffer holds 64 KiB, so one page fits without a reader.
    let addr = mem.addr;
    let writer = std::thread::spawn(move || {
        // SAFETY: `addr..addr + ps` is the registered mapping, alive until the test ends.
        unsafe { libc::write(wfd, addr as *const _, ps) }
    });

    let mut buf = EventBuf::<16>::new();
    let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
        panic!("expected a page fault");
    };
    assert_eq!(f.page(ps), mem.addr);
    assert!(!f.is_write(), "the kernel read the page");
    assert_eq!(
        uffd.copy(mem.addr, &pattern_page(7), CopyMode::empty())
            .unwrap(),
        FillOutcome::Filled(ps)
    );
    let written = run_bounded("write(2)", move || writer.join().expect("writer"));
    assert_eq!(written, ps as isize);
    let mut out = vec![0u8; ps];
    // SAFETY: `out` is a writable buffer of `ps` bytes.
    let n = unsafe { libc::read(rfd, out.as_mut_ptr().cast(), ps) };
    assert_eq!(n, ps as isize);
    assert_eq!(out, pattern_page(7));
    // SAFETY: closes a pipe fd this test created and no longer uses.
    unsafe { libc::close(rfd) };
    // SAFETY: as above.
    unsafe { libc::close(wfd) };
}

#[test]
fn fault_addresses_are_page_aligned_unless_exact_address_is_negotiated() {
    let ps = page_size();
    for exact in [false, true] {
        let features = if exact {
            Features::EXACT_ADDRESS
        } else {
            Features::empty()
        };
        let uffd = Arc::new(open(features));
        let mem = Arc::new(Mapping::anon(1));
        // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
        unsafe { uffd.register(mem.addr, ps, RegisterMode::MISSING) }.unwrap();
        let m = Arc::clone(&mem);
        let worker = std::thread::spawn(move || m.read(123));
        let mut buf = EventBuf::<16>::new();
        let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
            panic!("expected a page fault");
        };
        let expected = if exact { mem.addr + 123 } else { mem.addr };
        assert_eq!(f.address, expected, "exact = {exact}");
        assert_eq!(f.page(ps), mem.addr);
        assert_eq!(f.thread_id, None, "THREAD_ID was not negotiated");
        uffd.copy(mem.addr, &pattern_page(0), CopyMode::empty())
            .unwrap();
        assert_eq!(
            run_bounded("reader", move || worker.join().unwrap()),
            pattern(0, 123)
        );
    }
}

#[test]
fn one_read_returns_a_batch_bounded_by_the_buffer() {
    const THREADS: usize = 5;
    let ps = page_size();
    let uffd = Arc::new(open(Features::empty()));
    let mem = Arc::new(Mapping::anon(THREADS));
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|p| {
            let m = Arc::clone(&mem);
            std::thread::spawn(move || m.read(p * ps + 1) == pattern(p, 1))
        })
        .collect();
    wait_until("all threads to fault", || waiting_faults(&uffd) == THREADS);

    // A 2-slot buffer takes the pending events two at a time; nothing is lost.
    let mut small = EventBuf::<2>::new();
    let mut pages = Vec::new();
    loop {
        let evs = uffd.read_events(&mut small).unwrap();
        assert!(evs.len() <= 2);
        if evs.is_empty() {
            break;
        }
        for ev in evs {
            let Event::PageFault(f) = ev else {
                panic!("unexpected {ev:?}");
            };
            pages.push((f.page(ps) - mem.addr) / ps);
        }
    }
    pages.sort_unstable();
    assert_eq!(pages, (0..THREADS).collect::<Vec<_>>());
    for p in 0..THREADS {
        uffd.copy(mem.page(p), &pattern_page(p), CopyMode::empty())
            .unwrap();
    }
    assert!(run_bounded("woken threads", move || {
        workers.into_iter().all(|w| w.join().unwrap())
    }));
}

#[test]
fn unregister_returns_the_range_to_ordinary_faults() {
    let ps = page_size();
    let uffd = open(Features::empty());
    let mem = Mapping::anon(2);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    uffd.copy(mem.page(0), &pattern_page(0), CopyMode::empty())
        .unwrap();
    uffd.unregister(mem.addr, mem.len).unwrap();
    // Installed pages stay; missing ones are now plain zero-fill faults, with no event.
    assert_eq!(mem.read(3), pattern(0, 3));
    assert_eq!(mem.read(ps + 3), 0);
    let mut buf = EventBuf::<16>::new();
    assert!(uffd.read_events(&mut buf).unwrap().is_empty());
    let r = uffd.copy(mem.page(1), &pattern_page(1), CopyMode::empty());
    assert!(
        matches!(r, Err(uffd_poller::OpError::NotRegistered { .. })),
        "{r:?}"
    );
}
