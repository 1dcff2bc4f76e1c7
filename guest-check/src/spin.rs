//! The synchronisation the checker's threads build for themselves out of plain atomics, so
//! that every step is a load, store or read-modify-write on shared memory: a value alone on
//! its page, a sense-reversing barrier that a failing thread can abort, and a spinlock.

use std::cell::UnsafeCell;
use std::hint::spin_loop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::yield_now;

/// Spins before a waiter starts yielding the CPU between looks.
const SPINS_BEFORE_YIELD: u32 = 300;

/// A value alone on its own 4 KiB page, so that each lives in a different page of memory.
#[repr(C, align(4096))]
#[derive(Debug, Default)]
pub struct Paged<T>(pub T);

impl<T> Deref for Paged<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Paged<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// One more look at a condition that has not come true: spin at first, then yield.
fn backoff(spins: &mut u32) {
    *spins = spins.saturating_add(1);
    if *spins < SPINS_BEFORE_YIELD {
        spin_loop();
    } else {
        yield_now();
    }
}

/// The barrier was aborted by a thread that failed: stop without a message of one's own.
#[derive(Debug, PartialEq, Eq)]
pub struct Aborted;

/// A reusable sense-reversing barrier for a fixed number of threads.
#[derive(Debug)]
pub struct Barrier {
    parties: usize,
    arrived: Paged<AtomicUsize>,
    sense: Paged<AtomicBool>,
    aborted: Paged<AtomicBool>,
}

impl Barrier {
    /// A barrier for `parties` threads.
    pub fn new(parties: usize) -> Self {
        Self {
            parties,
            arrived: Paged(AtomicUsize::new(0)),
            sense: Paged(AtomicBool::new(false)),
            aborted: Paged(AtomicBool::new(false)),
        }
    }

    /// Waits until all parties have arrived; `local_sense` is the caller's own flag (start
    /// it at `false`). Everything written before any party's `wait` is visible after it.
    pub fn wait(&self, local_sense: &mut bool) -> Result<(), Aborted> {
        *local_sense = !*local_sense;
        let mine = *local_sense;
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            self.sense.store(mine, Ordering::Release);
            return Ok(());
        }
        let mut spins = 0;
        while self.sense.load(Ordering::Acquire) != mine {
            if self.aborted.load(Ordering::Relaxed) {
                return Err(Aborted);
            }
            backoff(&mut spins);
        }
        Ok(())
    }

    /// Releases every waiter, now and later, with [`Aborted`].
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
    }
}

/// A test-and-test-and-set spinlock around a `T` (the lock word on its own page).
#[derive(Debug)]
pub struct SpinLock<T> {
    locked: Paged<AtomicBool>,
    value: UnsafeCell<T>,
}

// SAFETY: `lock` hands the value to one thread at a time, so sharing the lock only ever moves
// access to the `T` between threads, as with std's Mutex: `T: Send` is enough.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            locked: Paged(AtomicBool::new(false)),
            value: UnsafeCell::new(value),
        }
    }

    /// Spins until this thread holds the lock.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        let mut spins = 0;
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return SpinGuard { lock: self };
            }
            while self.locked.load(Ordering::Relaxed) {
                backoff(&mut spins);
            }
        }
    }
}

/// The lock held; the value is reached through it and the lock released when it drops.
#[derive(Debug)]
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard exists only while its thread holds `locked`, so no other thread
        // reaches the value until it drops.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paged_values_sit_on_separate_pages() {
        let v: Vec<Paged<u64>> = (0..3).map(Paged).collect();
        let a = &v[0] as *const _ as usize;
        let b = &v[1] as *const _ as usize;
        assert_eq!(a % 4096, 0);
        assert_eq!(b - a, 4096);
    }

    #[test]
    fn aborted_barrier_releases_waiters() {
        let barrier = Barrier::new(2);
        barrier.abort();
        assert_eq!(barrier.wait(&mut false), Err(Aborted));
    }
}
