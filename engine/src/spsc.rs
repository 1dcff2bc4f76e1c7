//! Bounded single-producer / single-consumer rings between shards.
//!
//! A ring has a fixed power-of-two capacity chosen at creation; a full ring refuses the push
//! (backpressure) instead of growing. The producer's index (`tail`) and the consumer's index
//! (`head`) live on separate cache lines, and each side keeps a private copy of the other's
//! index so that it touches the shared line only when its copy says the ring looks full
//! (producer) or empty (consumer). Elements are `Copy` so no destructor ever runs on a slot.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Pads a value to its own 128-byte block (two cache lines: adjacent-line prefetch on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CachePadded<T>(pub T);

struct Shared<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
    /// Next slot the consumer reads. Written by the consumer only.
    head: CachePadded<AtomicUsize>,
    /// Next slot the producer writes. Written by the producer only.
    tail: CachePadded<AtomicUsize>,
}

// SAFETY: slots are only written by the single producer before it publishes them with a
// release store of `tail`, and only read by the single consumer after an acquire load of
// `tail`; a slot is reused by the producer only after the consumer's release store of `head`
// has passed it. `T: Send` lets values cross to the consumer's thread.
unsafe impl<T: Copy + Send> Sync for Shared<T> {}
// SAFETY: see above; the buffer owns plain `Copy` values.
unsafe impl<T: Copy + Send> Send for Shared<T> {}

/// The sending end of a ring. Not `Clone`: there is exactly one producer.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    tail: usize,
    cached_head: usize,
}

/// The receiving end of a ring. Not `Clone`: there is exactly one consumer.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    head: usize,
    cached_tail: usize,
}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &(self.shared.mask + 1))
            .finish()
    }
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &(self.shared.mask + 1))
            .finish()
    }
}

/// Creates a ring holding up to `capacity` elements (rounded up to a power of two, at least 2).
pub fn ring<T: Copy + Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let cap = capacity.max(2).next_power_of_two();
    let slots = (0..cap)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let shared = Arc::new(Shared {
        slots,
        mask: cap - 1,
        head: CachePadded(AtomicUsize::new(0)),
        tail: CachePadded(AtomicUsize::new(0)),
    });
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            cached_head: 0,
        },
        Consumer {
            shared,
            head: 0,
            cached_tail: 0,
        },
    )
}

impl<T: Copy + Send> Producer<T> {
    /// Appends `value`, or gives it back when the ring is full.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), T> {
        let cap = self.shared.mask + 1;
        if self.tail.wrapping_sub(self.cached_head) == cap {
            self.cached_head = self.shared.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.cached_head) == cap {
                return Err(value);
            }
        }
        let slot = &self.shared.slots[self.tail & self.shared.mask];
        // SAFETY: the slot at `tail` is not visible to the consumer (it reads only below the
        // published tail) and the consumer has released it (tail - head < capacity), so this
        // thread, the only producer, has exclusive access to it.
        unsafe { (*slot.get()).write(value) };
        self.tail = self.tail.wrapping_add(1);
        self.shared.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Free slots as last seen by the producer (may under-count; never over-counts).
    pub fn free(&self) -> usize {
        let head = self.shared.head.0.load(Ordering::Acquire);
        self.shared.mask + 1 - self.tail.wrapping_sub(head)
    }
}

impl<T: Copy + Send> Consumer<T> {
    /// Removes the oldest element, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.cached_tail {
            self.cached_tail = self.shared.tail.0.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        let slot = &self.shared.slots[self.head & self.shared.mask];
        // SAFETY: head < published tail, so the producer wrote this slot and released it with
        // its store of `tail` (acquired above); it won't touch it again until `head` passes it.
        let value = unsafe { (*slot.get()).assume_init_read() };
        self.head = self.head.wrapping_add(1);
        self.shared.head.0.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Whether the ring is empty right now.
    pub fn is_empty(&self) -> bool {
        self.head == self.shared.tail.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ring_refuses_and_order_is_fifo() {
        let (mut tx, mut rx) = ring::<u32>(4);
        for i in 0..4 {
            tx.push(i).unwrap();
        }
        assert_eq!(tx.push(99), Err(99), "a full ring must refuse, not grow");
        assert_eq!(tx.free(), 0);
        assert_eq!(rx.pop(), Some(0));
        tx.push(4).unwrap();
        assert_eq!(
            (1..=4).map(|_| rx.pop().unwrap()).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(rx.pop(), None);
        assert!(rx.is_empty());
    }

    #[test]
    fn capacity_rounds_up_to_power_of_two() {
        let (tx, _rx) = ring::<u8>(5);
        assert_eq!(tx.free(), 8);
        let (tx, _rx) = ring::<u8>(0);
        assert_eq!(tx.free(), 2);
    }

    #[test]
    fn two_threads_transfer_every_value_in_order() {
        const N: u64 = 2_000_000;
        let (mut tx, mut rx) = ring::<u64>(64);
        let producer = std::thread::spawn(move || {
            let mut full = 0u64;
            for i in 0..N {
                let mut v = i;
                while let Err(back) = tx.push(v) {
                    v = back;
                    full += 1;
                    std::thread::yield_now();
                }
            }
            full
        });
        let mut expect = 0;
        while expect < N {
            match rx.pop() {
                Some(v) => {
                    assert_eq!(v, expect, "values must arrive once each, in order");
                    expect += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.pop(), None);
    }
}
