//! The `Transport` trait the data plane sees, with its configuration, events, payload kinds
//! and error type. Implemented by `transport-uring` and `transport-epoll`.

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::counters::TransportStats;
use crate::header::{FrameError, Header, MAX_PAYLOAD};
use crate::seal::FrameKeys;
use crate::slots::RxBuf;

/// Caller-chosen peer handle (the data plane uses node × shard).
pub type PeerId = u32;

/// Cluster node id (below [`crate::MAX_NODES`]).
pub type NodeId = u16;

/// Memory sent in place, without a copy.
///
/// The contract (see [`PageRef::new`]): the bytes stay valid and unchanged until the transport
/// reports [`Event::SendDone`] with the token given to `send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    addr: usize,
    len: usize,
}

impl PageRef {
    /// Describes `len` bytes at `ptr` for a zero-copy send.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be readable memory that stays mapped and is not modified from the
    /// moment this `PageRef` is passed to `Transport::send` (when it returns
    /// [`SendOutcome::Queued`]) until the transport emits [`Event::SendDone`] for that send's
    /// token; the kernel may read it at any time in between, from any thread.
    pub unsafe fn new(ptr: *const u8, len: usize) -> PageRef {
        PageRef {
            addr: ptr as usize,
            len,
        }
    }

    /// Address of the first byte.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The payload of a frame to send.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Header-only frame.
    None,
    /// Bytes copied into a transport buffer before `send` returns.
    Copy(&'a [u8]),
    /// Memory sent in place (zero-copy where the transport can); see [`PageRef`].
    Page(PageRef),
}

impl Payload<'_> {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::None => 0,
            Payload::Copy(b) => b.len(),
            Payload::Page(p) => p.len(),
        }
    }

    /// Whether there is no payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What `send` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum SendOutcome {
    /// Queued; it goes out in order at the next `flush` (or `wait`).
    Queued,
    /// The peer's transmit queue (or copy buffers) is full: nothing was queued. Poll
    /// completions and retry.
    Backpressure,
}

/// Why a peer went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// The peer closed the connection (EOF).
    Closed,
    /// A socket error (errno), e.g. `ECONNRESET`.
    Io(i32),
    /// The peer sent a malformed frame.
    Protocol(FrameError),
    /// `close_peer` was called.
    Local,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::Closed => write!(f, "connection closed by peer"),
            DownReason::Io(e) => write!(f, "socket error: {}", io::Error::from_raw_os_error(*e)),
            DownReason::Protocol(e) => write!(f, "protocol violation: {e}"),
            DownReason::Local => write!(f, "closed locally"),
        }
    }
}

/// Something that happened on the transport.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A frame arrived; frames of one peer arrive in the order they were sent.
    Received {
        /// The sender.
        peer: PeerId,
        /// The validated header.
        header: Header,
        /// The payload's receive slot; give it back with `Transport::release`.
        payload: Option<RxBuf>,
    },
    /// A frame sent with [`Payload::Page`] no longer needs its memory.
    SendDone {
        /// The destination.
        peer: PeerId,
        /// The token given to `send`.
        token: u64,
    },
    /// The connection is gone. Every `SendDone` of this peer came before; the id may be
    /// reused with `add_peer` from now on.
    PeerDown {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: DownReason,
    },
    /// An fd registered with `watch_fd` became readable (edge: read it until `EAGAIN`).
    FdReady {
        /// The token given to `watch_fd`.
        token: u64,
    },
}

/// Transport errors (setup and caller mistakes; peer failures are [`Event::PeerDown`]).
#[derive(Debug, Error)]
pub enum TransportError {
    /// The configuration is unusable.
    #[error("invalid transport configuration: {0}")]
    Config(&'static str),
    /// No peer with this id.
    #[error("no peer {0}: add it with add_peer first (or it already went down)")]
    UnknownPeer(PeerId),
    /// The id is in use.
    #[error("peer {0} already exists: wait for its PeerDown before reusing the id")]
    PeerExists(PeerId),
    /// All peer slots are used.
    #[error("too many peers (limit {0}): raise TransportConfig::max_peers")]
    TooManyPeers(usize),
    /// The peer is going down; sends are refused until its `PeerDown`.
    #[error("peer {0} is shutting down")]
    PeerClosing(PeerId),
    /// The header is not valid for the payload given.
    #[error("refusing to send an invalid frame: {0}")]
    InvalidFrame(#[from] FrameError),
    /// The payload length differs from the header's `payload_len`.
    #[error(
        "payload of {payload} bytes does not match header payload_len {header} (max {MAX_PAYLOAD})"
    )]
    PayloadMismatch {
        /// The header's length.
        header: u32,
        /// The payload's length.
        payload: usize,
    },
    /// A frame could not be sealed (authenticated or encrypted) for its connection.
    #[error("cannot seal a frame: {0}")]
    Seal(#[from] crate::seal::SealError),
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl TransportError {
    /// Wraps the last OS error for operation `op`.
    pub fn last_os(op: &'static str) -> TransportError {
        TransportError::Io {
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// Wraps `source` for operation `op`.
    pub fn io(op: &'static str, source: io::Error) -> TransportError {
        TransportError::Io { op, source }
    }
}

/// Limits of a transport instance. Everything is preallocated from these at construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Connections at once (default 16).
    pub max_peers: usize,
    /// Frames queued or in flight per peer before `send` answers backpressure (default 128).
    pub tx_depth: usize,
    /// 4 KiB buffers per peer for [`Payload::Copy`] payloads (default 32).
    pub tx_copy_slots: usize,
    /// Page-aligned 4 KiB receive slots per peer; a peer whose slots are all held by the
    /// caller is not read until one is released (default 64).
    pub rx_slots: usize,
    /// Submission queue entries (io_uring; default 512; completion queue is 4×).
    pub ring_entries: u32,
    /// Receive buffers per peer (io_uring provided-buffer ring, a power of two; default 16).
    pub rx_buf_count: u16,
    /// Size of one receive buffer in bytes (default 16 KiB).
    pub rx_buf_size: u32,
    /// Send page payloads with zero-copy where supported (default false: for 4 KiB pages a
    /// copying vectored send is cheaper; see docs/benchmarks.md).
    pub zero_copy: bool,
    /// Most events one `poll` call delivers (default 256).
    pub poll_budget: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_peers: 16,
            tx_depth: 128,
            tx_copy_slots: 32,
            rx_slots: 64,
            ring_entries: 512,
            rx_buf_count: 16,
            rx_buf_size: 16 * 1024,
            zero_copy: false,
            poll_budget: 256,
        }
    }
}

impl TransportConfig {
    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |m| Err(TransportError::Config(m));
        if self.max_peers == 0 || self.max_peers > 4096 {
            return bad("max_peers must be in 1..=4096");
        }
        if self.tx_depth == 0 || self.tx_depth > 1 << 15 {
            return bad("tx_depth must be in 1..=32768");
        }
        if self.tx_copy_slots == 0 || self.rx_slots == 0 {
            return bad("tx_copy_slots and rx_slots must be at least 1");
        }
        if !self.ring_entries.is_power_of_two() || !(8..=32768).contains(&self.ring_entries) {
            return bad("ring_entries must be a power of two in 8..=32768");
        }
        if !self.rx_buf_count.is_power_of_two() || self.rx_buf_count > 32768 {
            return bad("rx_buf_count must be a power of two up to 32768");
        }
        if self.rx_buf_size < 64 || self.rx_buf_size > 1 << 20 {
            return bad("rx_buf_size must be in 64..=1048576");
        }
        if self.poll_budget == 0 {
            return bad("poll_budget must be at least 1");
        }
        Ok(())
    }
}

/// A message transport between data-plane nodes: bounded, non-blocking, in-order per peer.
///
/// One instance belongs to one thread (a data-plane core); nothing in it is shared except
/// [`Transport::stats`].
pub trait Transport {
    /// Short name for logs ("io_uring", "epoll").
    fn name(&self) -> &'static str;

    /// Takes over an authenticated connection. `node`, when given, is the node id every frame
    /// on it must carry as sender; `keys` (from the handshake) seal its frames. The socket is
    /// made non-blocking with `TCP_NODELAY`.
    fn add_peer(
        &mut self,
        peer: PeerId,
        stream: TcpStream,
        node: Option<NodeId>,
        keys: &FrameKeys,
    ) -> Result<(), TransportError>;

    /// Whether this transport carries a connection over RDMA verbs when the peer offers it
    /// too (the handshake's offer, `Authenticated::peer_offers_verbs`); such connections are
    /// handed to [`Transport::add_peer_verbs`].
    fn offers_verbs(&self) -> bool {
        false
    }

    /// Takes over a connection both sides agreed to carry over RDMA verbs: the transport sets
    /// up a queue pair through it and keeps it only to see the peer's end. Transports
    /// without verbs refuse it.
    fn add_peer_verbs(
        &mut self,
        _peer: PeerId,
        _stream: TcpStream,
        _node: Option<NodeId>,
        _keys: &FrameKeys,
    ) -> Result<(), TransportError> {
        Err(TransportError::Config("this transport has no RDMA verbs"))
    }

    /// Starts closing a connection; [`Event::PeerDown`] with [`DownReason::Local`] follows.
    fn close_peer(&mut self, peer: PeerId) -> Result<(), TransportError>;

    /// Queues one frame for `peer`. Never blocks and never queues beyond the configured
    /// limits: a full queue gives [`SendOutcome::Backpressure`]. `header.payload_len` must equal
    /// the payload's length. `token` comes back in [`Event::SendDone`] for page payloads.
    fn send(
        &mut self,
        peer: PeerId,
        header: &Header,
        payload: Payload<'_>,
        token: u64,
    ) -> Result<SendOutcome, TransportError>;

    /// Hands queued frames to the kernel (at most one system call).
    fn flush(&mut self) -> Result<(), TransportError>;

    /// Delivers what happened, without blocking; returns the number of events delivered (at
    /// most `poll_budget`).
    fn poll<F: FnMut(Event)>(&mut self, out: F) -> Result<usize, TransportError>;

    /// Flushes, then sleeps until there is something to poll, `timeout` passes, or a signal
    /// arrives. Returns at once when work is already pending.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError>;

    /// Watches `fd` for readability: [`Event::FdReady`] with `token` whenever it becomes
    /// readable, so a caller sleeping in `wait` also wakes for it (e.g. a userfaultfd). The fd
    /// must stay open while the transport lives.
    fn watch_fd(&mut self, fd: RawFd, token: u64) -> Result<(), TransportError>;

    /// The payload bytes of a received buffer.
    fn payload(&self, buf: &RxBuf) -> &[u8];

    /// Gives a receive buffer back (resuming a peer stalled on receive slots).
    fn release(&mut self, buf: RxBuf);

    /// Counters readable from other threads.
    fn stats(&self) -> &Arc<TransportStats>;
}
