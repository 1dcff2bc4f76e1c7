//! Waiting for a file descriptor the way an idle policy says: `spin` retries at once,
//! `block` sleeps in poll(2), `hybrid` spins for its bound and then sleeps. The floor's
//! handler uses it so that the floor idles exactly like the node it is compared with.

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
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1.
    let rc = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0)
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
}
