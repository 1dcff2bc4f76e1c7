//! What every TCP transport keeps per connection, and its table of connections: the part of
//! a transport that does not depend on how bytes move (io_uring or epoll).
//!
//! A transport preallocates `max_peers` slots. [`ConnTable`] maps the caller's peer ids to
//! slots and keeps the free ones; each slot holds a [`Conn`] (socket, frame parser, transmit
//! queue, copy slots, down reason) beside the transport's own per-slot state.

use std::net::{SocketAddr, TcpStream};

use crate::counters::TransportStats;
use crate::region::PageRegion;
use crate::slots::RxSlots;
use crate::txq::{queue_frame, CopySlots, TxPayload, TxQueue};
use crate::{
    DownReason, Event, FrameKeys, FrameParser, Header, NodeId, Payload, PeerId, PeerMap,
    SendOutcome, TransportError,
};

/// The transport-independent state of one connection slot, reused across connections.
#[derive(Debug)]
pub struct Conn {
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
    /// Free copy-slot indices (global indices into the transport's copy region).
    pub copy_free: Vec<u32>,
    /// The parser waits for a receive slot.
    pub stalled: bool,
    /// Set when the connection failed or is being closed; torn down when the transport can.
    pub down: Option<DownReason>,
}

impl Conn {
    /// A free slot with a transmit queue of `tx_depth` frames and room for `copy_slots` copy
    /// slots.
    pub fn new(tx_depth: usize, copy_slots: usize) -> Conn {
        Conn {
            id: 0,
            stream: None,
            addr: None,
            parser: FrameParser::new(None),
            txq: TxQueue::new(tx_depth),
            copy_free: Vec::with_capacity(copy_slots),
            stalled: false,
            down: None,
        }
    }

    /// Binds slot `slot` to a new connection: `stream` for `peer`, whose frames must come
    /// from `node` when given and are sealed with `keys`. The slot's copy slots are
    /// `slot * copy_slots ..` in the transport's copy region. Fails (leaving the slot free)
    /// only when the keys are unusable.
    pub fn open(
        &mut self,
        slot: u16,
        peer: PeerId,
        stream: TcpStream,
        node: Option<NodeId>,
        keys: &FrameKeys,
        copy_slots: usize,
    ) -> Result<(), TransportError> {
        let (sealer, opener) = (keys.sealer()?, keys.opener()?);
        let per = copy_slots as u32;
        self.id = peer;
        self.addr = stream.peer_addr().ok();
        self.stream = Some(stream);
        self.parser = FrameParser::sealed(node, opener);
        self.txq.reset(sealer);
        self.copy_free.clear();
        self.copy_free
            .extend((0..per).map(|i| u32::from(slot) * per + i));
        self.stalled = false;
        self.down = None;
        Ok(())
    }

    /// Marks the connection down (first reason wins) and lists its slot in `downs` for the
    /// transport to tear down.
    pub fn mark_down(&mut self, downs: &mut Vec<u16>, slot: u16, reason: DownReason) {
        if self.down.is_none() {
            self.down = Some(reason);
            downs.push(slot);
        }
    }

    /// Queues one frame (the shared part of `Transport::send` after the peer lookup).
    pub fn queue(
        &mut self,
        region: &mut PageRegion,
        stats: &TransportStats,
        header: &Header,
        payload: Payload<'_>,
        token: u64,
    ) -> Result<SendOutcome, TransportError> {
        if self.down.is_some() {
            return Err(TransportError::PeerClosing(self.id));
        }
        let copy = CopySlots {
            free: &mut self.copy_free,
            region,
        };
        queue_frame(&mut self.txq, copy, stats, header, payload, token)
    }

    /// Retires the oldest frame if the kernel is done with it: its copy slot goes back to the
    /// connection, and a page's sender gets `SendDone`. Returns `None` when no frame is done,
    /// else whether an event was emitted.
    pub fn retire_one<F: FnMut(Event)>(&mut self, out: &mut F) -> Option<bool> {
        let d = self.txq.pop_done()?;
        if let TxPayload::Copy { slot, .. } = d.payload {
            self.copy_free.push(slot);
        }
        if !d.payload.owes_send_done() {
            return Some(false);
        }
        out(Event::SendDone {
            peer: self.id,
            token: d.token,
        });
        Some(true)
    }

    /// Frees the slot's connection state once the transport has let go of the socket: the
    /// parser's receive slots go back to `rx`, every page send still queued is reported
    /// done (its page may be reused), and `PeerDown` is reported last. Returns the number of
    /// events emitted.
    pub fn close<F: FnMut(Event)>(&mut self, rx: &mut RxSlots, out: &mut F) -> usize {
        let reason = self.down.take().unwrap_or(DownReason::Local);
        self.stream = None;
        self.parser.reset(rx);
        let mut n = 1;
        while let Some(d) = self.txq.pop_any() {
            if d.payload.owes_send_done() {
                out(Event::SendDone {
                    peer: self.id,
                    token: d.token,
                });
                n += 1;
            }
        }
        self.copy_free.clear();
        self.stalled = false;
        out(Event::PeerDown {
            peer: self.id,
            reason,
        });
        n
    }
}

/// Peer ids to connection slots, and the free slots.
#[derive(Debug)]
pub struct ConnTable {
    map: PeerMap,
    free: Vec<u16>,
    max: usize,
}

impl ConnTable {
    /// A table of `max` slots, all free.
    pub fn new(max: usize) -> ConnTable {
        ConnTable {
            map: PeerMap::new(max),
            free: (0..max as u16).rev().collect(),
            max,
        }
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.max - self.free.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.free.len() == self.max
    }

    /// The slot of `peer`.
    pub fn slot_of(&self, peer: PeerId) -> Result<u16, TransportError> {
        self.map.get(peer).ok_or(TransportError::UnknownPeer(peer))
    }

    /// The slot a new connection for `peer` would take; nothing is taken until
    /// [`ConnTable::take`]. Refuses a peer already connected, or a full table.
    pub fn vacant(&self, peer: PeerId) -> Result<u16, TransportError> {
        if self.map.get(peer).is_some() {
            return Err(TransportError::PeerExists(peer));
        }
        self.free
            .last()
            .copied()
            .ok_or(TransportError::TooManyPeers(self.max))
    }

    /// Takes the slot [`ConnTable::vacant`] returned, for `peer`.
    pub fn take(&mut self, peer: PeerId, slot: u16) {
        debug_assert_eq!(self.free.last(), Some(&slot), "take what vacant returned");
        self.free.pop();
        self.map.insert(peer, slot);
    }

    /// Returns `peer`'s slot to the free list.
    pub fn release(&mut self, peer: PeerId, slot: u16) {
        self.map.remove(peer);
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_once_per_peer_and_come_back() {
        let mut t = ConnTable::new(2);
        let a = t.vacant(10).unwrap();
        t.take(10, a);
        assert_eq!(t.slot_of(10).unwrap(), a);
        assert!(matches!(t.vacant(10), Err(TransportError::PeerExists(10))));
        let b = t.vacant(11).unwrap();
        assert_ne!(a, b);
        t.take(11, b);
        assert!(matches!(t.vacant(12), Err(TransportError::TooManyPeers(2))));
        t.release(10, a);
        assert!(matches!(
            t.slot_of(10),
            Err(TransportError::UnknownPeer(10))
        ));
        assert_eq!(t.vacant(12).unwrap(), a);
    }
}
