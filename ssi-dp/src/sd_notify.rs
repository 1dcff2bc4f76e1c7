//! Telling a service manager how the node is doing, by systemd's notification protocol
//! (`sd_notify(3)`): datagrams of `KEY=VALUE` lines sent to the Unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! - `READY=1` once the cluster formed and the API (if any) listens: a `Type=notify` unit
//!   counts as started only then, so units ordered after it find a serving node.
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC` (set by `WatchdogSec=`), but only while the
//!   node is healthy — its data plane has not stopped on a failure and no shard is stalled —
//!   and its main loop runs: a node that hangs, or whose shard is stuck, stops pinging and
//!   the manager acts on it (restart, per the unit).
//! - `STATUS=...` with what the node does, with both of those; `STOPPING=1` when it begins
//!   to stop.
//!
//! Without `NOTIFY_SOCKET` nothing is sent. A send that fails is logged (once: the manager
//! went away, or its queue is full) and dropped; it never blocks or stops the node.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Why the notification socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    #[error(
        "NOTIFY_SOCKET={0:?} is neither an absolute path nor @name: the service manager \
         sets it; unset it when not running under one"
    )]
    BadAddress(String),
    /// `WATCHDOG_USEC` is not a positive number.
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds (set by WatchdogSec=)")]
    BadWatchdog(String),
    /// The socket could not be created.
    #[error("cannot create a socket to notify the service manager: {0}")]
    Socket(#[source] io::Error),
}

/// The connection to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Interval between watchdog pings (half the manager's timeout), when it asks for them.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    failed: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(socket.as_deref(), usec.as_deref(), pid.as_deref())
    }

    /// A notifier for the given environment values.
    pub fn new(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Result<Notifier, NotifyError> {
        let Some(name) = socket.filter(|s| !s.is_empty()) else {
            return Ok(Notifier {
                target: None,
                watchdog: None,
                last_ping: None,
                failed: false,
            });
        };
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)
        } else {
            return Err(NotifyError::BadAddress(name.to_string()));
        }
        .map_err(|_| NotifyError::BadAddress(name.to_string()))?;
        let sock = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        // A manager that does not read (its queue holds net.unix.max_dgram_qlen datagrams,
        // 10 by default) must not stop the node: a full queue drops the notification.
        sock.set_nonblocking(true).map_err(NotifyError::Socket)?;
        // The pings are for this process only: a WATCHDOG_PID naming another one (a parent
        // that passed its environment down) means someone else pings.
        let ours = watchdog_pid.is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = match watchdog_usec.filter(|_| ours) {
            None => None,
            Some(u) => match u.trim().parse::<u64>() {
                Ok(us) if us > 0 => Some(Duration::from_micros(us / 2)),
                _ => return Err(NotifyError::BadWatchdog(u.to_string())),
            },
        };
        Ok(Notifier {
            target: Some((sock, addr)),
            watchdog,
            last_ping: None,
            failed: false,
        })
    }

    /// Whether a service manager listens.
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog ping interval, when the manager asked for pings.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (lines `KEY=VALUE`).
    fn send(&mut self, text: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(text.as_bytes(), addr) {
            if !std::mem::replace(&mut self.failed, true) {
                tracing::warn!(
                    "cannot notify the service manager ({e}); readiness and watchdog pings \
                     are not getting through"
                );
            }
        }
    }

    /// The node serves: `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// The node begins to stop.
    pub fn stopping(&mut self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}\n", one_line(status)));
    }

    /// Called from the node's main loop: pings the watchdog when its interval has passed
    /// and the node is `healthy`.
    pub fn tick(&mut self, now: Instant, healthy: bool) {
        let Some(every) = self.watchdog else {
            return;
        };
        if !healthy {
            return;
        }
        if self
            .last_ping
            .is_none_or(|t| now.saturating_duration_since(t) >= every)
        {
            self.last_ping = Some(now);
            self.send("WATCHDOG=1\n");
        }
    }
}

/// A status text on one line (the protocol separates assignments by newlines).
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("ssi-dp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::new(path.to_str(), None, None).unwrap();
        assert!(n.active() && n.watchdog_interval().is_none());
        n.ready("serving\nnow");
        assert_eq!(recv(&server), "READY=1\nSTATUS=serving now\n");
        n.stopping("bye");
        assert_eq!(recv(&server), "STOPPING=1\nSTATUS=bye\n");
        let _ = std::fs::remove_dir_all(&dir);

        let name = format!("ssi-dp-notify-test-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&abs).unwrap();
        let mut n = Notifier::new(Some(&format!("@{name}")), None, None).unwrap();
        n.ready("x");
        assert_eq!(recv(&server), "READY=1\nSTATUS=x\n");
    }

    #[test]
    fn watchdog_pings_at_half_the_timeout_and_only_when_healthy() {
        let name = format!("ssi-dp-notify-wd-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&abs).unwrap();
        server.set_nonblocking(true).unwrap();
        let me = std::process::id().to_string();
        let mut n = Notifier::new(Some(&format!("@{name}")), Some("2000000"), Some(&me)).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        n.tick(t0, true);
        n.tick(t0 + Duration::from_millis(500), true);
        n.tick(t0 + Duration::from_millis(1500), false);
        n.tick(t0 + Duration::from_millis(1600), true);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(k) = server.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..k]).into_owned());
        }
        // At 0 and at 1.6 s: not at 0.5 s (too soon), not at 1.5 s (unhealthy).
        assert_eq!(got, ["WATCHDOG=1\n", "WATCHDOG=1\n"]);
        // Pings meant for another process are not sent.
        let n = Notifier::new(Some(&format!("@{name}")), Some("2000000"), Some("1")).unwrap();
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn a_manager_that_does_not_read_does_not_block_the_node() {
        let name = format!("ssi-dp-notify-full-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let _server = UnixDatagram::bind_addr(&abs).unwrap();
        let mut n = Notifier::new(Some(&format!("@{name}")), Some("2"), None).unwrap();
        let t0 = Instant::now();
        // Far more than the queue holds; each would block on a blocking socket.
        for i in 0..1000u64 {
            n.tick(t0 + Duration::from_millis(i), true);
        }
        assert!(n.failed, "the queue never filled");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn without_a_manager_nothing_happens_and_bad_values_are_errors() {
        let mut n = Notifier::new(None, Some("1000"), None).unwrap();
        assert!(!n.active());
        n.ready("x");
        n.tick(Instant::now(), true);
        assert!(matches!(
            Notifier::new(Some("relative.sock"), None, None),
            Err(NotifyError::BadAddress(_))
        ));
        assert!(matches!(
            Notifier::new(Some("/run/x.sock"), Some("soon"), None),
            Err(NotifyError::BadWatchdog(_))
        ));
    }
}
