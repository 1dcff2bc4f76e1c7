//! UFFDIO_MOVE: faults resolved by moving pages from a staging area instead of copying them;
//! the source is emptied, occupied destinations and missing sources are reported.

mod common;

use std::sync::Arc;

use common::*;
use uffd_poller::{Event, Features, FillOutcome, MoveMode, OpError, RegisterMode, Uffd};

struct MoveState {
    dst: usize,
    src: usize,
    moved: Vec<usize>,
}

fn move_handler(uffd: &Uffd, s: &mut MoveState, ev: Event) {
    let Event::PageFault(f) = ev else {
        panic!("unexpected event {ev:?}");
    };
    let ps = uffd.page_size();
    let idx = (f.page(ps) - s.dst) / ps;
    // SAFETY: the staging page belongs to the test's raw `src` mapping, which nothing else
    // references; the destination is registered.
    let out = unsafe { uffd.move_pages(f.page(ps), s.src + idx * ps, ps, MoveMode::empty()) };
    match out.unwrap() {
        FillOutcome::Filled(n) => {
            assert_eq!(n, ps);
            s.moved[idx] += 1;
        }
        FillOutcome::AlreadyMapped => uffd.wake(f.page(ps), ps).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn faults_are_served_by_moving_staged_pages() {
    const PAGES: usize = 16;
    let ps = page_size();
    let uffd = Arc::new(open(Features::MOVE));
    let dst = Arc::new(Mapping::anon(PAGES));
    let src = Mapping::anon(PAGES);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    let ioctls = unsafe { uffd.register(dst.addr, dst.len, RegisterMode::MISSING) }.unwrap();
    assert!(ioctls.contains(uffd_poller::Ioctls::MOVE));
    for p in 0..PAGES {
        for i in 0..ps {
            src.write(p * ps + i, pattern(p, i));
        }
    }
    let state = MoveState {
        dst: dst.addr,
        src: src.addr,
        moved: vec![0; PAGES],
    };
    let handler = Handler::spawn(Arc::clone(&uffd), state, move_handler);
    let d = Arc::clone(&dst);
    let ok = run_bounded("reader", move || {
        (0..PAGES)
            .rev()
            .all(|p| (0..ps).all(|i| d.read(p * ps + i) == pattern(p, i)))
    });
    let s = handler.stop();
    assert!(ok, "moved pages differ from the staged ones");
    assert_eq!(s.moved, vec![1; PAGES]);
    // The pages left the source: it reads as fresh anonymous memory.
    assert!((0..PAGES).all(|p| src.read(p * ps + 1) == 0));
}

#[test]
fn move_reports_occupied_destination_and_missing_source() {
    let ps = page_size();
    let uffd = open(Features::MOVE);
    let dst = Mapping::anon(4);
    let src = Mapping::anon(4);
    // SAFETY: fresh mapping owned by the test, accessed through raw pointers only.
    unsafe { uffd.register(dst.addr, dst.len, RegisterMode::MISSING) }.unwrap();
    src.write(0, 1);
    src.write(ps, 2);
    // SAFETY: `src` is the test's raw mapping; `dst` is registered.
    let first = unsafe { uffd.move_pages(dst.page(0), src.page(0), ps, MoveMode::empty()) };
    assert_eq!(first.unwrap(), FillOutcome::Filled(ps));
    assert_eq!(dst.read(0), 1);
    // SAFETY: as above.
    let occupied = unsafe { uffd.move_pages(dst.page(0), src.page(1), ps, MoveMode::empty()) };
    assert_eq!(occupied.unwrap(), FillOutcome::AlreadyMapped);
    assert_eq!(src.read(ps), 2, "a refused move leaves the source alone");
    // Source page 0 is gone now: moving it again finds a hole.
    // SAFETY: as above.
    let hole = unsafe { uffd.move_pages(dst.page(1), src.page(0), ps, MoveMode::empty()) };
    assert!(matches!(hole, Err(OpError::SourceHole { .. })), "{hole:?}");
    // Two pages whose second source page is a hole: the first moves, the rest is reported.
    // SAFETY: as above.
    let partial = unsafe { uffd.move_pages(dst.page(2), src.page(1), 2 * ps, MoveMode::empty()) };
    assert_eq!(partial.unwrap(), FillOutcome::Partial(ps));
    assert_eq!(dst.read(2 * ps), 2);
}
