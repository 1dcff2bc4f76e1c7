//! Waiting for file descriptors the way an idle policy says: `spin` retries at once,
//! `block` sleeps in poll(2), `hybrid` spins for its bound and then sleeps. The floors'
//! handlers use it so that they idle exactly like the node they are compared with.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use engine::clock::now_ns;
use engine::idle::IdlePolicy;

/// Longest single sleep, so that a stop flag is seen.
const MAX_POLL: Duration = Duration::from_millis(100);

/// Runs `op` until it returns `Some`, waiting for `fd` to become ready for `events`
/// (`libc::POLLIN` / `POLLOUT`) between attempts as `policy` says. Returns `None` when
/// `stop()` turns true while waiting.
pub fn until_ready<T>(
    fd: RawFd,
    events: i16,
    policy: IdlePolicy,
    mut stop: impl FnMut() -> bool,
    mut op: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let start = now_ns();
    loop {
        if let Some(v) = op()? {
            return Ok(Some(v));
        }
        if stop() {
            return Ok(None);
        }
        let sleep = match policy {
            IdlePolicy::Spin => false,
            IdlePolicy::Block => true,
            IdlePolicy::Hybrid { spin } => now_ns() - start >= spin.as_nanos() as u64,
        };
        if sleep {
            poll_one(fd, events, MAX_POLL)?;
        } else {
            std::hint::spin_loop();
        }
    }
}

/// poll(2) on one descriptor; returns whether it is ready.
pub fn poll_one(fd: RawFd, events: i16, timeout: Duration) -> io::Result<bool> {
    let mut p = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    Ok(poll_fds(&mut p, timeout.as_millis() as i32)? > 0)
}

/// poll(2) on `fds` (a negative fd is skipped) for up to `timeout_ms` (0: just look);
/// returns how many are ready, 0 when interrupted by a signal.
pub fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(rc as usize)
}

/// The timeout of each poll(2) of a loop that idles as `policy` says: `spin` only looks
/// (0), `block` sleeps (up to [`MAX_POLL`], so that a stop flag is seen), `hybrid` looks
/// until it has gone its bound without progress, then sleeps.
#[derive(Debug, Clone, Copy)]
pub struct PollIdle {
    policy: IdlePolicy,
    idle_since: u64,
}

impl PollIdle {
    /// A loop that starts idling at `now` (ns, `clock::now_ns`).
    pub fn new(policy: IdlePolicy, now: u64) -> Self {
        Self {
            policy,
            idle_since: now,
        }
    }

    /// The loop did some work at `now`: a hybrid loop spins again.
    pub fn progress(&mut self, now: u64) {
        self.idle_since = now;
    }

    /// The poll(2) timeout (ms) for a turn at `now`.
    pub fn timeout_ms(&self, now: u64) -> i32 {
        let sleep = MAX_POLL.as_millis() as i32;
        match self.policy {
            IdlePolicy::Spin => 0,
            IdlePolicy::Block => sleep,
            IdlePolicy::Hybrid { spin } => {
                if now.saturating_sub(self.idle_since) >= spin.as_nanos() as u64 {
                    sleep
                } else {
                    0
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn every_policy_retries_until_the_operation_succeeds() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        for policy in [
            IdlePolicy::Spin,
            IdlePolicy::Block,
            IdlePolicy::Hybrid {
                spin: Duration::from_micros(10),
            },
        ] {
            let mut tries = 0;
            // The socket is writable, so poll returns at once and the loop retries.
            let got = until_ready(
                a.as_raw_fd(),
                libc::POLLOUT,
                policy,
                || false,
                || {
                    tries += 1;
                    Ok((tries == 3).then_some(tries))
                },
            )
            .unwrap();
            assert_eq!(got, Some(3), "{policy}");
        }
        // A stop request ends the wait without a value.
        let got: Option<()> = until_ready(
            a.as_raw_fd(),
            libc::POLLIN,
            IdlePolicy::Block,
            || true,
            || Ok(None),
        )
        .unwrap();
        assert_eq!(got, None);
    }

    #[test]
    fn poll_timeouts_follow_the_policy() {
        let ms = MAX_POLL.as_millis() as i32;
        assert_eq!(
            PollIdle::new(IdlePolicy::Spin, 0).timeout_ms(10_000_000_000),
            0
        );
        assert_eq!(PollIdle::new(IdlePolicy::Block, 0).timeout_ms(0), ms);
        let mut h = PollIdle::new(
            IdlePolicy::Hybrid {
                spin: Duration::from_micros(50),
            },
            1_000,
        );
        assert_eq!(h.timeout_ms(1_000 + 49_999), 0);
        assert_eq!(h.timeout_ms(1_000 + 50_000), ms);
        h.progress(60_000);
        assert_eq!(h.timeout_ms(60_001), 0);
        // A clock that seems to go back (another CPU's reading) does not sleep.
        assert_eq!(h.timeout_ms(0), 0);
    }

    #[test]
    fn poll_fds_reports_ready_descriptors_and_skips_negative_ones() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: -1,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        assert_eq!(poll_fds(&mut fds, 0).unwrap(), 0);
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        assert_eq!(poll_fds(&mut fds, 0).unwrap(), 1);
        assert_ne!(fds[0].revents & libc::POLLIN, 0);
        assert_eq!(fds[1].revents, 0);
    }
}
