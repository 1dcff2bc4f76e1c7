//! Per-connection state of the io_uring transport, preallocated per slot and reused.

use std::collections::VecDeque;
use std::io;

use wire::conn::Conn;
use wire::TransportConfig;

use crate::bufring::BufRing;
use crate::sendvec::SendVec;

/// One connection slot (slot number = registered file index = buffer group id).
#[derive(Debug)]
pub struct Peer {
    /// Socket, parser, transmit queue, copy slots, down reason.
    pub conn: Conn,
    /// The header and iovecs of the vectored send in flight (copying sends).
    pub sendvec: Box<SendVec>,
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
    /// Sends of the current chain not completed yet (0: no chain in flight).
    pub chain_ops: u32,
    /// Bytes the current chain's completed sends moved.
    pub chain_bytes: usize,
    /// Operations referencing this connection whose last completion has not arrived.
    pub inflight: u32,
    /// Zero-copy notifications still to come.
    pub notifs: u32,
}

impl Peer {
    /// An unused slot with buffers sized from `cfg`.
    pub fn new(slot: u16, cfg: &TransportConfig) -> io::Result<Peer> {
        Ok(Peer {
            conn: Conn::new(cfg.tx_depth, cfg.tx_copy_slots),
            sendvec: SendVec::new(),
            bufs: BufRing::new(slot, cfg.rx_buf_count, cfg.rx_buf_size)?,
            held: VecDeque::with_capacity(usize::from(cfg.rx_buf_count)),
            held_off: 0,
            recv_armed: false,
            zero_reads: 0,
            chain_ops: 0,
            chain_bytes: 0,
            inflight: 0,
            notifs: 0,
        })
    }

    /// Whether the kernel still references anything of this connection.
    pub fn kernel_busy(&self) -> bool {
        self.inflight > 0 || self.notifs > 0
    }
}
