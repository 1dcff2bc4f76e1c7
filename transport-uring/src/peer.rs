//! Per-connection state of the io_uring transport, preallocated per slot and reused.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};

use wire::txq::TxQueue;
use wire::{DownReason, FrameParser, PeerId, TransportConfig};

use crate::bufring::BufRing;
use crate::sendvec::SendVec;

/// One connection slot (slot number = registered file index = buffer group id).
#[derive(Debug)]
pub struct Peer {
    /// The caller's id.
    pub id: PeerId,
    /// The socket; `None` while the slot is free.
    pub stream: Option<TcpStream>,
    /// Remote address, for logs.
    pub addr: Option<SocketAddr>,
    /// Frame reassembly.
    pub parser: FrameParser,
    /// Frames to send.
    pub txq: TxQueue,
    /// The header and iovecs of the vectored send in flight (copying sends).
    pub sendvec: Box<SendVec>,
    /// Free copy-slot indices (global, into the registered copy region).
    pub copy_free: Vec<u32>,
    /// Provided buffers for multishot receive.
    pub bufs: BufRing,
    /// Received buffers not fully parsed yet, in arrival order: (buffer id, length).
    pub held: VecDeque<(u16, u32)>,
    /// Bytes of the first held buffer already parsed.
    pub held_off: usize,
    /// A multishot receive is armed.
    pub recv_armed: bool,
    /// Receives in a row that ended with 0 bytes (two mean EOF).
    pub zero_reads: u8,
    /// The parser waits for a receive slot.
    pub stalled: bool,
    /// Sends of the current chain not completed yet (0: no chain in flight).
    pub chain_ops: u32,
    /// Bytes the current chain's completed sends moved.
    pub chain_bytes: usize,
    /// Operations referencing this connection whose last completion has not arrived.
    pub inflight: u32,
    /// Zero-copy notifications still to come.
    pub notifs: u32,
    /// Set when the connection failed or is being closed.
    pub down: Option<DownReason>,
}

impl Peer {
    /// An unused slot with buffers sized from `cfg`.
    pub fn new(slot: u16, cfg: &TransportConfig) -> io::Result<Peer> {
        Ok(Peer {
            id: 0,
            stream: None,
            addr: None,
            parser: FrameParser::new(None),
            txq: TxQueue::new(cfg.tx_depth),
            sendvec: SendVec::new(),
            copy_free: Vec::with_capacity(cfg.tx_copy_slots),
            bufs: BufRing::new(slot, cfg.rx_buf_count, cfg.rx_buf_size)?,
            held: VecDeque::with_capacity(usize::from(cfg.rx_buf_count)),
            held_off: 0,
            recv_armed: false,
            zero_reads: 0,
            stalled: false,
            chain_ops: 0,
            chain_bytes: 0,
            inflight: 0,
            notifs: 0,
            down: None,
        })
    }

    /// Whether the kernel still references anything of this connection.
    pub fn kernel_busy(&self) -> bool {
        self.inflight > 0 || self.notifs > 0
    }
}
