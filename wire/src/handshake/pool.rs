//! Unauthenticated connections, many at once on one thread, within fixed bounds: the server
//! side of a node's listening port. Anyone can connect before proving anything, so what they
//! can hold is bounded and short-lived:
//!
//! - at most [`PoolLimits::max_pending`] connections in handshake at once; when full, a new
//!   connection is still taken, and the oldest pending one makes room (first from sources that
//!   are not expected peers): a dialler that connects is never turned away unseen;
//! - at most [`PoolLimits::max_per_source`] from one address that is not an expected peer's
//!   (its oldest makes room for its newest);
//! - the client hello must be complete [`PoolLimits::first_message`] after the accept, the
//!   whole handshake within [`PoolLimits::deadline`]: silent and trickling sockets expire.
//!
//! A member's handshake takes one round trip, so with the pool far from full it completes in
//! that round trip whatever the other sockets do. Nothing is allocated per connection beyond
//! its [`ServerConn`].

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Authenticated, HandshakeConfig, HandshakeError, ServerConn, ServerProgress};

/// The bounds of an [`AcceptPool`].
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Connections in handshake at once.
    pub max_pending: usize,
    /// Connections in handshake at once from one address that is not an expected peer's.
    pub max_per_source: usize,
    /// Time from accept to a complete client hello.
    pub first_message: Duration,
    /// Time from accept to the end of the handshake.
    pub deadline: Duration,
    /// Connections accepted per turn (the rest wait in the listen backlog for the next turn,
    /// so that a flood of connects cannot starve the handshakes in progress).
    pub accepts_per_turn: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_pending: 256,
            max_per_source: 32,
            first_message: Duration::from_secs(1),
            deadline: Duration::from_secs(3),
            accepts_per_turn: 64,
        }
    }
}

/// What the pool did to connections that did not finish, readable from any thread.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Pending connections closed to make room for newer ones.
    pub evicted: AtomicU64,
    /// Pending connections closed at a deadline.
    pub expired: AtomicU64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct AcceptPool {
    listener: TcpListener,
    limits: PoolLimits,
    expected: Vec<IpAddr>,
    pending: Vec<(ServerConn, bool)>,
    fds: Vec<libc::pollfd>,
    /// Counters.
    pub stats: Arc<PoolStats>,
}

/// How a connection left the pool.
pub type Finished = (SocketAddr, Result<Authenticated, HandshakeError>);

impl AcceptPool {
    /// A pool serving `listener` (made non-blocking); connections from `expected` addresses
    /// (the peers') are exempt from the per-source bound and evicted last.
    pub fn new(
        listener: TcpListener,
        limits: PoolLimits,
        expected: Vec<IpAddr>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let cap = limits.max_pending.max(1);
        Ok(Self {
            listener,
            limits,
            expected,
            pending: Vec::with_capacity(cap),
            fds: Vec::with_capacity(cap + 1),
            stats: Arc::new(PoolStats::default()),
        })
    }

    /// Connections in handshake now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Waits up to `wait` for activity, then accepts, advances and expires; `done` gets every
    /// connection that left the pool (authenticated, or failed with why).
    pub fn turn(
        &mut self,
        cfg: &HandshakeConfig,
        wait: Duration,
        mut done: impl FnMut(Finished),
    ) -> io::Result<()> {
        self.fds.clear();
        self.fds.push(libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for (c, write) in &self.pending {
            self.fds.push(libc::pollfd {
                fd: c.fd().unwrap_or(-1),
                events: if *write { libc::POLLOUT } else { libc::POLLIN },
                revents: 0,
            });
        }
        // At most a second, so that deadlines are enforced even when nothing happens.
        let ms = wait.as_millis().min(1000) as i32;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds on sockets this pool owns.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // Advance the ready ones (indices shift as finished ones leave: walk backwards).
        for i in (0..self.pending.len()).rev() {
            if self.fds.get(i + 1).is_some_and(|p| p.revents != 0) {
                self.advance(i, cfg, &mut done);
            }
        }
        if self.fds[0].revents != 0 {
            self.accept(cfg, &mut done)?;
        }
        self.expire(cfg, &mut done);
        Ok(())
    }

    fn advance(&mut self, i: usize, cfg: &HandshakeConfig, done: &mut impl FnMut(Finished)) {
        let (c, write) = &mut self.pending[i];
        match c.advance(cfg) {
            ServerProgress::Pending { write: w } => *write = w,
            ServerProgress::Accepted(a) => {
                let (c, _) = self.pending.swap_remove(i);
                done((c.peer, Ok(a)));
            }
            ServerProgress::Failed(e) => {
                let (c, _) = self.pending.swap_remove(i);
                done((c.peer, Err(e)));
            }
        }
    }

    fn accept(&mut self, cfg: &HandshakeConfig, done: &mut impl FnMut(Finished)) -> io::Result<()> {
        for _ in 0..self.limits.accepts_per_turn {
            let (stream, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors or buffers, a connection reset before accept: the
                // listener itself is fine; try again next turn.
                Err(e) => return Err(e),
            };
            self.stats.accepted.fetch_add(1, Relaxed);
            self.make_room(peer.ip(), cfg, done);
            let c = match ServerConn::new(stream, peer) {
                Ok(c) => c,
                Err(e) => {
                    done((peer, Err(HandshakeError::Io(e))));
                    continue;
                }
            };
            self.pending.push((c, false));
            // The hello is often already there.
            self.advance(self.pending.len() - 1, cfg, done);
        }
        Ok(())
    }

    /// Evicts one pending connection if `ip` is at its per-source bound (its own oldest) or
    /// the pool is full (the oldest from an unexpected source, else the oldest).
    fn make_room(&mut self, ip: IpAddr, cfg: &HandshakeConfig, done: &mut impl FnMut(Finished)) {
        let expected = |ip: &IpAddr| self.expected.contains(ip);
        let oldest = |pred: &dyn Fn(&ServerConn) -> bool| {
            self.pending
                .iter()
                .enumerate()
                .filter(|(_, (c, _))| pred(c))
                .min_by_key(|(_, (c, _))| c.accepted)
                .map(|(i, _)| i)
        };
        let victim = if !expected(&ip)
            && self
                .pending
                .iter()
                .filter(|(c, _)| c.peer.ip() == ip)
                .count()
                >= self.limits.max_per_source
        {
            oldest(&|c| c.peer.ip() == ip)
        } else if self.pending.len() >= self.limits.max_pending.max(1) {
            oldest(&|c| !expected(&c.peer.ip())).or_else(|| oldest(&|_| true))
        } else {
            None
        };
        if let Some(i) = victim {
            let (mut c, _) = self.pending.swap_remove(i);
            self.stats.evicted.fetch_add(1, Relaxed);
            let e = c.abandon(cfg, "closed to make room for newer connections");
            done((c.peer, Err(e)));
        }
    }

    /// Closes connections past their deadlines.
    fn expire(&mut self, cfg: &HandshakeConfig, done: &mut impl FnMut(Finished)) {
        let now = Instant::now();
        let limits = self.limits;
        let mut i = 0;
        while i < self.pending.len() {
            let c = &self.pending[i].0;
            let age = now.saturating_duration_since(c.accepted);
            let why = if !c.hello_received() && age > limits.first_message {
                Some("no complete hello in time (silent or trickling peer)")
            } else if age > limits.deadline {
                Some("handshake not finished in time")
            } else {
                None
            };
            match why {
                Some(why) => {
                    let (mut c, _) = self.pending.swap_remove(i);
                    self.stats.expired.fetch_add(1, Relaxed);
                    let e = c.abandon(cfg, why);
                    done((c.peer, Err(e)));
                }
                None => i += 1,
            }
        }
    }
}
