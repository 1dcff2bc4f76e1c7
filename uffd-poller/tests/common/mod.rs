//! Helpers shared by the integration tests: opening a uffd with the crate's own error message,
//! anonymous and memfd mappings that unmap on drop, page patterns, a handler thread, and a
//! bounded wait so that a broken handler fails a test instead of hanging it.

#![allow(dead_code)] // Each test file uses a different subset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use uffd_poller::{Event, EventBuf, Features, Uffd};

/// How long a test waits for something that should happen at once before declaring failure.
/// Generous: the machine may be loaded by parallel builds.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Opens a uffd or fails with the crate's message (which says how to get the privilege).
pub fn open(required: Features) -> Uffd {
    Uffd::open(required).unwrap_or_else(|e| panic!("{e}"))
}

/// The base page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).expect("page size")
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    u32::try_from(tid).expect("tid")
}

/// Byte `i` of the test pattern for page `page`.
pub fn pattern(page: usize, i: usize) -> u8 {
    (page.wrapping_mul(131) ^ i.wrapping_mul(7)).wrapping_add(1) as u8
}

/// A full page of the pattern for page `page`.
pub fn pattern_page(page: usize) -> Vec<u8> {
    (0..page_size()).map(|i| pattern(page, i)).collect()
}

/// A memory mapping owned by a test, accessed only through raw pointers; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    pub addr: usize,
    pub len: usize,
}

impl Mapping {
    /// `pages` pages of private anonymous memory.
    pub fn anon(pages: usize) -> Self {
        Self::map(
            pages * page_size(),
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        )
    }

    /// A shared mapping of `fd` (e.g. a memfd).
    pub fn shared(fd: libc::c_int, len: usize) -> Self {
        Self::map(len, libc::MAP_SHARED, fd)
    }

    fn map(len: usize, flags: libc::c_int, fd: libc::c_int) -> Self {
        // SAFETY: a new mapping at an address the kernel picks; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Self {
            addr: p as usize,
            len,
        }
    }

    /// Address of page `i`.
    pub fn page(&self, i: usize) -> usize {
        assert!(i * page_size() < self.len);
        self.addr + i * page_size()
    }

    /// Reads byte `off` (may fault into the uffd).
    pub fn read(&self, off: usize) -> u8 {
        assert!(off < self.len);
        // SAFETY: `off` is inside the mapping, which lives as long as `self`; volatile because
        // the contents change outside Rust's view (uffd installs pages).
        unsafe { std::ptr::read_volatile((self.addr + off) as *const u8) }
    }

    /// Writes byte `off` (may fault into the uffd).
    pub fn write(&self, off: usize, v: u8) {
        assert!(off < self.len);
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_volatile((self.addr + off) as *mut u8, v) }
    }

    /// madvise(MADV_DONTNEED) on `len` bytes at `off`.
    pub fn dontneed(&self, off: usize, len: usize) {
        assert!(off + len <= self.len);
        // SAFETY: the range is inside the mapping, which the test owns as raw memory.
        let rc = unsafe { libc::madvise((self.addr + off) as *mut _, len, libc::MADV_DONTNEED) };
        assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`, which nothing else owns. (A test
        // that unmaps or moves part of it must forget the Mapping instead: another thread may
        // have mapped something into the freed range.)
        unsafe { libc::munmap(self.addr as *mut _, self.len) };
    }
}

/// A memfd of `len` bytes.
pub fn memfd(len: usize) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated literal.
    let fd = unsafe { libc::memfd_create(c"uffd-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
    assert_eq!(rc, 0, "ftruncate: {}", std::io::Error::last_os_error());
    fd
}

/// A handler thread: polls the uffd (blocking in poll(2) with a short timeout, so that it
/// works on 2 CPUs next to busy threads) and passes every event to `on_event`.
pub struct Handler<S> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<S>,
}

impl<S: Send + 'static> Handler<S> {
    pub fn spawn(uffd: Arc<Uffd>, mut state: S, on_event: fn(&Uffd, &mut S, Event)) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = EventBuf::<16>::new();
            while !stop2.load(Ordering::Acquire) {
                if !uffd
                    .wait_readable(Some(Duration::from_millis(5)))
                    .expect("poll")
                {
                    continue;
                }
                for &ev in uffd.read_events(&mut buf).expect("read_events") {
                    on_event(&uffd, &mut state, ev);
                }
            }
            state
        });
        Self { stop, thread }
    }

    /// Stops the handler and returns its state.
    pub fn stop(self) -> S {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("handler thread panicked")
    }
}

/// Runs `f` on a new thread and returns its result, failing the test if it does not finish
/// within [`DEADLINE`] (a thread stuck in an unresolved fault would otherwise hang the test).
pub fn run_bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

/// Waits until `cond` holds, failing the test after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Faults currently waiting on the uffd (read or not), from /proc/self/fdinfo.
pub fn waiting_faults(uffd: &Uffd) -> usize {
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", uffd.as_raw_fd())).expect("fdinfo");
    info.lines()
        .find_map(|l| l.strip_prefix("total:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("fdinfo has a total: line")
}

/// Reads events until one arrives (or [`DEADLINE`]).
pub fn next_event(uffd: &Uffd, buf: &mut EventBuf<16>) -> Event {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "no event within {DEADLINE:?}");
        if uffd
            .wait_readable(Some(Duration::from_millis(10)))
            .expect("poll")
        {
            let evs = uffd.read_events(buf).expect("read_events");
            if let Some(&ev) = evs.first() {
                assert_eq!(evs.len(), 1, "expected one event, got {evs:?}");
                return ev;
            }
        }
    }
}
