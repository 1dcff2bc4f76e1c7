//! The data plane's clock: CLOCK_MONOTONIC in nanoseconds (a vDSO call, no system call).
//! The protocol machine takes time as an input; shards read it here once per loop turn.

/// Nanoseconds since an arbitrary fixed point (boot), never going backwards.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC is always available.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where a shard reads the time: the monotonic clock, or (in the engine simulator) a clock
/// the simulator moves. Only the protocol's time goes through it (steps, timers, service
/// times); the idle policy's spin window always reads the real clock.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// [`now_ns`].
    #[default]
    Monotonic,
    /// A clock set by its owner (nanoseconds).
    Manual(std::sync::Arc<std::sync::atomic::AtomicU64>),
}

impl Clock {
    /// The current time in nanoseconds.
    #[inline]
    pub fn now(&self) -> u64 {
        match self {
            Clock::Monotonic => now_ns(),
            Clock::Manual(t) => t.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_and_in_nanoseconds() {
        let a = super::now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::now_ns();
        assert!(b >= a + 2_000_000, "{a} -> {b}");
        assert!(b - a < 10_000_000_000);
    }
}
