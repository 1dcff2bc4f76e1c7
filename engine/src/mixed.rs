//! `--transport auto` on a node with an RDMA device: each connection over RDMA verbs when
//! the peer offered verbs in its handshake too, over TCP otherwise, behind one
//! [`Transport`].
//!
//! * Which peer is where: connections handed to `add_peer_verbs` are the verbs transport's,
//!   the others the TCP one's; a peer leaves the map with its `PeerDown`.
//! * Receive handles: the verbs transport marks its own (`RXBUF_MARK`), so `payload` and
//!   `release` go to the transport that handed the buffer out.
//! * Sleeping: the TCP transport's `wait` sleeps for both. The verbs completion channel is
//!   one of its watched fds; before the sleep the verbs side flushes, arms its completion
//!   queue and looks at it once more (`prepare_sleep`); when the channel fires, its event is
//!   taken here and the completions are polled with the rest. The verbs peers' TCP
//!   connections (their liveness) and outstanding sends are checked by the verbs `poll`, which
//!   runs at every shard wake-up (a sleeping shard wakes at least every 100 ms).
//! * Counters: `stats` are the TCP transport's; the verbs connections' per-connection
//!   counters stay in the verbs transport (not in the node's metrics yet).

use std::net::TcpStream;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use transport_verbs::transport::{VerbsTransport, RXBUF_MARK};
use wire::transport::{Event, NodeId, Payload, PeerId, SendOutcome, Transport, TransportError};
use wire::{FrameKeys, Header, PeerMap, RxBuf, TransportStats};

/// The watch token of the verbs completion channel (above the shard's own tokens).
const TOKEN_VERBS_CHANNEL: u64 = u64::MAX - 1;

/// A TCP transport and a verbs transport as one (see the module documentation).
#[derive(Debug)]
pub struct Mixed<T: Transport> {
    tcp: T,
    verbs: VerbsTransport,
    /// Peers on verbs (the value is unused).
    on_verbs: PeerMap,
}

impl<T: Transport> Mixed<T> {
    /// Combines `tcp` and `verbs`, each built with the node's limits; the verbs completion
    /// channel becomes one of `tcp`'s watched fds.
    pub fn new(
        mut tcp: T,
        verbs: VerbsTransport,
        max_peers: usize,
    ) -> Result<Self, TransportError> {
        tcp.watch_fd(verbs.channel_fd(), TOKEN_VERBS_CHANNEL)?;
        Ok(Mixed {
            tcp,
            verbs,
            on_verbs: PeerMap::new(max_peers),
        })
    }
}

impl<T: Transport> Transport for Mixed<T> {
    fn name(&self) -> &'static str {
        "mixed"
    }

    fn add_peer(
        &mut self,
        peer: PeerId,
        stream: TcpStream,
        node: Option<NodeId>,
        keys: &FrameKeys,
    ) -> Result<(), TransportError> {
        if self.on_verbs.get(peer).is_some() {
            return Err(TransportError::PeerExists(peer));
        }
        self.tcp.add_peer(peer, stream, node, keys)
    }

    fn offers_verbs(&self) -> bool {
        true
    }

    fn add_peer_verbs(
        &mut self,
        peer: PeerId,
        stream: TcpStream,
        node: Option<NodeId>,
        keys: &FrameKeys,
    ) -> Result<(), TransportError> {
        if self.on_verbs.get(peer).is_some() {
            return Err(TransportError::PeerExists(peer));
        }
        self.verbs.add_peer_verbs(peer, stream, node, keys)?;
        if !self.on_verbs.insert(peer, 0) {
            // The map holds as many peers as the verbs transport: it refused first.
            return Err(TransportError::TooManyPeers(self.on_verbs.len()));
        }
        Ok(())
    }

    fn close_peer(&mut self, peer: PeerId) -> Result<(), TransportError> {
        if self.on_verbs.get(peer).is_some() {
            self.verbs.close_peer(peer)
        } else {
            self.tcp.close_peer(peer)
        }
    }

    fn send(
        &mut self,
        peer: PeerId,
        header: &Header,
        payload: Payload<'_>,
        token: u64,
    ) -> Result<SendOutcome, TransportError> {
        if self.on_verbs.get(peer).is_some() {
            self.verbs.send(peer, header, payload, token)
        } else {
            self.tcp.send(peer, header, payload, token)
        }
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        self.verbs.flush()?;
        self.tcp.flush()
    }

    fn poll<F: FnMut(Event)>(&mut self, mut out: F) -> Result<usize, TransportError> {
        let Mixed {
            tcp,
            verbs,
            on_verbs,
        } = self;
        let mut channel = false;
        let mut n = tcp.poll(|e| match e {
            Event::FdReady {
                token: TOKEN_VERBS_CHANNEL,
            } => channel = true,
            e => out(e),
        })?;
        if channel {
            verbs.take_channel_event()?;
        }
        n += verbs.poll(|e| {
            if let Event::PeerDown { peer, .. } = &e {
                on_verbs.remove(*peer);
            }
            out(e)
        })?;
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if !self.verbs.prepare_sleep()? {
            return Ok(());
        }
        self.tcp.wait(timeout)
    }

    fn watch_fd(&mut self, fd: RawFd, token: u64) -> Result<(), TransportError> {
        if token == TOKEN_VERBS_CHANNEL {
            return Err(TransportError::Config(
                "that watch token is the transport's own",
            ));
        }
        self.tcp.watch_fd(fd, token)
    }

    fn payload(&self, buf: &RxBuf) -> &[u8] {
        if buf.index() & RXBUF_MARK != 0 {
            self.verbs.payload(buf)
        } else {
            self.tcp.payload(buf)
        }
    }

    fn release(&mut self, buf: RxBuf) {
        if buf.index() & RXBUF_MARK != 0 {
            self.verbs.release(buf)
        } else {
            self.tcp.release(buf)
        }
    }

    fn stats(&self) -> &Arc<TransportStats> {
        self.tcp.stats()
    }
}
