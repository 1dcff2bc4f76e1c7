//! A shard's doorbell: one cache line that producers set a bit in after pushing into one of
//! the shard's inbound rings, plus an eventfd that wakes the shard when it sleeps.
//!
//! A consumer that waits on many rings watches only `pending` while it runs. Before it sleeps
//! it announces `sleeping` and looks at `pending` once more; a producer sets its bit and then
//! looks at `sleeping`. Both sides use sequentially consistent operations, so at least one of
//! them sees the other: either the consumer finds the bit and does not sleep, or the producer
//! finds the consumer asleep and writes the eventfd (which the consumer's wait watches).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::spsc::CachePadded;

/// Most inbound rings one doorbell can track (one bit each).
pub const MAX_SOURCES: usize = 64;

/// See the module documentation.
#[derive(Debug)]
pub struct Doorbell {
    pending: CachePadded<AtomicU64>,
    sleeping: CachePadded<AtomicBool>,
    eventfd: OwnedFd,
}

impl Doorbell {
    /// Creates a doorbell with its own non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the flags are valid for eventfd(2).
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            pending: CachePadded(AtomicU64::new(0)),
            sleeping: CachePadded(AtomicBool::new(false)),
            // SAFETY: `fd` was just returned by eventfd(2) and is owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Producer side: marks source `source` (< [`MAX_SOURCES`]) as having work and wakes the
    /// consumer if it sleeps.
    #[inline]
    pub fn ring(&self, source: usize) {
        debug_assert!(source < MAX_SOURCES);
        let bit = 1u64 << (source % MAX_SOURCES);
        let before = self.pending.0.fetch_or(bit, Ordering::SeqCst);
        if before & bit == 0 && self.sleeping.0.load(Ordering::SeqCst) {
            self.kick();
        }
    }

    /// Consumer side: takes the set of sources with work (clears it).
    #[inline]
    pub fn take(&self) -> u64 {
        if self.pending.0.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.pending.0.swap(0, Ordering::SeqCst)
    }

    /// Consumer side: puts bits back (work left over after a bounded drain).
    pub fn restore(&self, bits: u64) {
        self.pending.0.fetch_or(bits, Ordering::SeqCst);
    }

    /// Consumer side, before sleeping: announces the sleep and reports whether it may sleep
    /// (no source has work). If it returns `false` the consumer must not sleep; in either case
    /// it calls [`Doorbell::awake`] when it runs again.
    pub fn prepare_sleep(&self) -> bool {
        self.sleeping.0.store(true, Ordering::SeqCst);
        self.pending.0.load(Ordering::SeqCst) == 0
    }

    /// Whether the consumer announced a sleep and has not woken since (for the watchdog).
    pub fn is_sleeping(&self) -> bool {
        self.sleeping.0.load(Ordering::Relaxed)
    }

    /// Consumer side, after waking: clears the sleep flag. It does not drain the eventfd (a
    /// system call, wasted on every wake-up the doorbell did not cause): the consumer does
    /// that with [`Doorbell::drain`] when its wait reports the eventfd readable. Wake-ups are
    /// never lost either way — they are decided by `pending` and `sleeping`, the eventfd only
    /// ends a sleep.
    #[inline]
    pub fn awake(&self) {
        self.sleeping.0.store(false, Ordering::SeqCst);
    }

    /// Consumer side: empties the eventfd, once its wait reported it readable.
    pub fn drain(&self) {
        let mut buf = 0u64;
        // SAFETY: reads 8 bytes into `buf` from our own non-blocking eventfd; EAGAIN (nothing
        // to drain) is the expected common case and is ignored.
        unsafe {
            libc::read(self.eventfd.as_raw_fd(), (&mut buf as *mut u64).cast(), 8);
        }
    }

    /// Wakes the consumer unconditionally (shutdown, or a doorbell rung from outside).
    pub fn kick(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one` to our own eventfd; the only failure (counter
        // overflow, EAGAIN) means a wake-up is already pending, which is what we want.
        unsafe {
            libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// The eventfd to watch while sleeping (readable after a kick).
    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spsc;
    use std::sync::Arc;

    fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        n == 1 && p.revents & libc::POLLIN != 0
    }

    #[test]
    fn ring_sets_bits_and_take_clears() {
        let d = Doorbell::new().unwrap();
        assert_eq!(d.take(), 0);
        d.ring(3);
        d.ring(5);
        assert_eq!(d.take(), (1 << 3) | (1 << 5));
        assert_eq!(d.take(), 0);
        assert!(!readable(d.fd(), 0), "an awake consumer is not kicked");
    }

    #[test]
    fn sleeping_consumer_is_woken() {
        let d = Doorbell::new().unwrap();
        assert!(d.prepare_sleep());
        d.ring(0);
        assert!(
            readable(d.fd(), 1000),
            "a sleeping consumer must get the eventfd"
        );
        d.awake();
        assert!(readable(d.fd(), 0), "awake() leaves the eventfd alone");
        d.drain();
        assert!(!readable(d.fd(), 0), "drain() empties the eventfd");
        assert!(!d.prepare_sleep(), "pending work forbids sleeping");
        d.awake();
    }

    /// A producer and a consumer that really sleeps (poll on the eventfd) never lose a
    /// wake-up: every value arrives although the consumer blocks whenever it sees no work.
    #[test]
    fn no_lost_wakeups_under_blocking_consumer() {
        const N: u32 = 200_000;
        let d = Arc::new(Doorbell::new().unwrap());
        let (mut tx, mut rx) = spsc::ring::<u32>(16);
        let pd = d.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                let mut v = i;
                while let Err(back) = tx.push(v) {
                    v = back;
                    std::thread::yield_now();
                }
                pd.ring(7);
            }
        });
        let mut next = 0;
        while next < N {
            if d.take() != 0 {
                while let Some(v) = rx.pop() {
                    assert_eq!(v, next);
                    next += 1;
                }
                continue;
            }
            if d.prepare_sleep() {
                // A lost wake-up would hang here; the 10 s bound turns it into a failure.
                assert!(readable(d.fd(), 10_000), "lost wake-up at value {next}");
                d.drain();
            }
            d.awake();
            // Values pushed before the bit was observed are drained on the next take().
            while let Some(v) = rx.pop() {
                assert_eq!(v, next);
                next += 1;
            }
        }
        producer.join().unwrap();
    }
}
