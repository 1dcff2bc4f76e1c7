//! Non-cooperative events: MADV_DONTNEED → REMOVE (and the page faults again), munmap →
//! UNMAP, mremap → REMAP, fork → FORK with a usable child userfaultfd. The kernel holds the
//! calling thread until the event is read, so each call runs on its own thread.

mod common;

use std::sync::Arc;

use common::*;
use uffd_poller::{
    CopyMode, Event, EventBuf, FaultKind, Features, FillOutcome, RegisterMode, Uffd,
};

#[test]
fn dontneed_produces_remove_and_the_next_touch_faults_again() {
    let ps = page_size();
    let uffd = Arc::new(open(Features::EVENT_REMOVE));
    let mem = Arc::new(Mapping::anon(2));
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    uffd.copy(mem.page(1), &pattern_page(1), CopyMode::empty())
        .unwrap();
    assert_eq!(mem.read(ps + 8), pattern(1, 8));

    let m = Arc::clone(&mem);
    let dropper = std::thread::spawn(move || m.dontneed(ps, ps));
    let mut buf = EventBuf::<16>::new();
    let ev = next_event(&uffd, &mut buf);
    assert_eq!(
        ev,
        Event::Remove {
            start: mem.page(1),
            end: mem.page(1) + ps
        }
    );
    run_bounded("madvise", move || dropper.join().unwrap());

    // The page is gone: the next touch is a MISSING fault again, served with new contents.
    let m = Arc::clone(&mem);
    let reader = std::thread::spawn(move || m.read(ps + 8));
    let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
        panic!("expected a page fault");
    };
    assert_eq!((f.kind(), f.page(ps)), (FaultKind::Missing, mem.page(1)));
    assert_eq!(
        uffd.copy(mem.page(1), &pattern_page(9), CopyMode::empty())
            .unwrap(),
        FillOutcome::Filled(ps)
    );
    assert_eq!(
        run_bounded("reader", move || reader.join().unwrap()),
        pattern(9, 8)
    );
}

#[test]
fn without_event_remove_dontneed_is_silent_but_still_refaults() {
    let ps = page_size();
    let uffd = Arc::new(open(Features::empty()));
    let mem = Arc::new(Mapping::anon(1));
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, ps, RegisterMode::MISSING) }.unwrap();
    uffd.copy(mem.addr, &pattern_page(0), CopyMode::empty())
        .unwrap();
    // Without EVENT_REMOVE madvise does not wait for a reader.
    mem.dontneed(0, ps);
    let mut buf = EventBuf::<16>::new();
    assert!(uffd.read_events(&mut buf).unwrap().is_empty());
    let m = Arc::clone(&mem);
    let reader = std::thread::spawn(move || m.read(0));
    assert!(matches!(next_event(&uffd, &mut buf), Event::PageFault(_)));
    uffd.copy(mem.addr, &pattern_page(4), CopyMode::empty())
        .unwrap();
    assert_eq!(
        run_bounded("reader", move || reader.join().unwrap()),
        pattern(4, 0)
    );
}

#[test]
fn munmap_produces_unmap() {
    let ps = page_size();
    // `mem` is declared first so that it is dropped last: with EVENT_UNMAP, munmap of a
    // registered range waits for a reader, so the uffd must be closed before.
    let mem = Mapping::anon(3);
    let uffd = open(Features::EVENT_UNMAP);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    let start = mem.page(1);
    let unmapper = std::thread::spawn(move || {
        // SAFETY: unmaps the middle page of the test's mapping, which nothing references.
        unsafe { libc::munmap(start as *mut _, ps) }
    });
    let mut buf = EventBuf::<16>::new();
    assert_eq!(
        next_event(&uffd, &mut buf),
        Event::Unmap {
            start,
            end: start + ps
        }
    );
    assert_eq!(run_bounded("munmap", move || unmapper.join().unwrap()), 0);
    // Unmap the two remaining pages one by one (after closing the uffd, so that munmap does not
    // wait for a reader), never the hole: another thread may have mapped something there.
    drop(uffd);
    for p in [0, 2] {
        // SAFETY: page `p` of the test's own mapping, which nothing references.
        assert_eq!(unsafe { libc::munmap(mem.page(p) as *mut _, ps) }, 0);
    }
    std::mem::forget(mem);
}

#[test]
fn mremap_produces_remap() {
    let ps = page_size();
    let uffd = open(Features::EVENT_REMAP);
    let mem = Mapping::anon(2);
    let target = Mapping::anon(2);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, mem.len, RegisterMode::MISSING) }.unwrap();
    let (from, to, len) = (mem.addr, target.addr, mem.len);
    let mover = std::thread::spawn(move || {
        // SAFETY: moves the test's registered mapping over the test's `target` mapping; both
        // are raw memory nothing references.
        let p = unsafe {
            libc::mremap(
                from as *mut _,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        p as usize
    });
    let mut buf = EventBuf::<16>::new();
    assert_eq!(next_event(&uffd, &mut buf), Event::Remap { from, to, len });
    assert_eq!(run_bounded("mremap", move || mover.join().unwrap()), to);
    // The old range is no longer ours (another thread may map something there now): do not
    // let `mem` unmap it. `target` owns the moved pages.
    std::mem::forget(mem);
    // The registration moved with the memory: a touch at the new place faults.
    let m = target.addr;
    let reader = std::thread::spawn(move || {
        // SAFETY: `m` is the moved, registered mapping (owned by `target`).
        unsafe { std::ptr::read_volatile((m + ps) as *const u8) }
    });
    let Event::PageFault(f) = next_event(&uffd, &mut buf) else {
        panic!("expected a page fault");
    };
    assert_eq!(f.page(ps), target.addr + ps);
    uffd.copy(target.addr + ps, &pattern_page(1), CopyMode::empty())
        .unwrap();
    assert_eq!(
        run_bounded("reader", move || reader.join().unwrap()),
        pattern(1, 0)
    );
}

#[test]
fn fork_delivers_a_userfaultfd_for_the_child() {
    let ps = page_size();
    let uffd = open(Features::EVENT_FORK);
    let mem = Mapping::anon(1);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(mem.addr, ps, RegisterMode::MISSING) }.unwrap();
    let forker = std::thread::spawn(|| {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(0) };
        }
        pid
    });
    let mut buf = EventBuf::<16>::new();
    let Event::Fork { uffd: child_fd } = next_event(&uffd, &mut buf) else {
        panic!("expected a fork event");
    };
    // SAFETY: `child_fd` came from this fork event and is adopted exactly once.
    let child = unsafe { Uffd::from_fork_event(child_fd, &uffd) };
    assert_eq!(child.features(), uffd.features());
    // SAFETY: F_GETFL on an fd we own.
    let fl = unsafe { libc::fcntl(child.as_raw_fd(), libc::F_GETFL) };
    assert!(
        fl >= 0 && fl & libc::O_NONBLOCK != 0,
        "child uffd flags {fl:#x}"
    );
    let pid = run_bounded("fork", move || forker.join().unwrap());
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: reaps the child created above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
}
