//! Per-connection state of the epoll transport: the shared connection state ([`Conn`]), the
//! read buffer holding bytes not parsed yet, and readiness flags.

use wire::conn::Conn;

/// One connection slot, preallocated and reused across connections.
#[derive(Debug)]
pub struct Peer {
    /// Socket, parser, transmit queue, copy slots, down reason.
    pub conn: Conn,
    /// Bytes read but not parsed: `rbuf[rstart..rend]`.
    pub rbuf: Box<[u8]>,
    /// Start of unparsed bytes.
    pub rstart: usize,
    /// End of unparsed bytes.
    pub rend: usize,
    /// The socket may have bytes to read (edge seen, no `EAGAIN` since).
    pub readable: bool,
    /// The socket may accept bytes (no `EAGAIN` since the last `EPOLLOUT`).
    pub writable: bool,
}

impl Peer {
    /// An unused slot with buffers sized from the configuration.
    pub fn new(tx_depth: usize, copy_slots: usize, rbuf: usize) -> Peer {
        Peer {
            conn: Conn::new(tx_depth, copy_slots),
            rbuf: vec![0u8; rbuf].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            readable: false,
            writable: false,
        }
    }
}
