//! Per-connection state of the epoll transport: the socket, the frame parser, the transmit
//! queue with its copy slots, the read buffer holding bytes not parsed yet, and flags.

use std::net::{SocketAddr, TcpStream};

use wire::txq::TxQueue;
use wire::{DownReason, FrameParser, PeerId};

/// One connection slot, preallocated and reused across connections.
#[derive(Debug)]
pub struct Peer {
    /// The caller's id.
    pub id: PeerId,
    /// The socket (non-blocking); `None` while the slot is free.
    pub stream: Option<TcpStream>,
    /// Remote address, for logs.
    pub addr: Option<SocketAddr>,
    /// Frame reassembly.
    pub parser: FrameParser,
    /// Frames to send.
    pub txq: TxQueue,
    /// Free copy-slot indices (global indices into the transport's copy region).
    pub copy_free: Vec<u32>,
    /// Bytes read but not parsed: `rbuf[rstart..rend]`.
    pub rbuf: Box<[u8]>,
    /// Start of unparsed bytes.
    pub rstart: usize,
    /// End of unparsed bytes.
    pub rend: usize,
    /// The socket may have bytes to read (edge seen, no `EAGAIN` since).
    pub readable: bool,
    /// The parser waits for a receive slot.
    pub stalled: bool,
    /// The socket may accept bytes (no `EAGAIN` since the last `EPOLLOUT`).
    pub writable: bool,
    /// Set when the connection failed; the peer is torn down at the next poll.
    pub down: Option<DownReason>,
}

impl Peer {
    /// An unused slot with buffers sized from the configuration.
    pub fn new(tx_depth: usize, copy_slots: usize, rbuf: usize) -> Peer {
        Peer {
            id: 0,
            stream: None,
            addr: None,
            parser: FrameParser::new(None),
            txq: TxQueue::new(tx_depth),
            copy_free: Vec::with_capacity(copy_slots),
            rbuf: vec![0u8; rbuf].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            readable: false,
            stalled: false,
            writable: false,
            down: None,
        }
    }
}
