//! Sessions: what lets the conversation between two shards outlive its TCP connection.
//!
//! A connection reset or a link that is down for a while is not a node's death. Each pair of
//! shards keeps one session across any number of connections. Every protocol frame a shard
//! sends gets the next position of its session, and a copy of it (with the page it carries)
//! stays here until the peer acknowledges it ([`MsgType::Ack`], cumulative). Acknowledgements
//! cost the peer nothing extra where possible: one goes out ahead of a frame the shard sends
//! that peer anyway once [`ACK_PIGGYBACK`] frames wait for it, on its own after
//! [`ACK_EVERY`] frames, and otherwise [`ACK_DELAY_NS`] after the oldest unacknowledged frame
//! arrived (so a sleeping peer is woken for acknowledgements at most that often). When a connection
//! breaks, the session waits for a new one (the lower node id dials again, the higher one's
//! acceptor hands the new connection to its shard); the first frame each side sends on it is
//! [`MsgType::Resume`] with how many frames it received, and each side sends again what the
//! other lacks, in order. Nothing is lost or delivered twice, so the protocol above never
//! sees the break. A session that stays without a working connection for the window
//! (`--dead-ms`) declares its node dead.
//!
//! `Resume` carries the sender's incarnation (random, fixed for its process): a peer that
//! restarted under the same id cannot resume the old one's session.
//!
//! Bounded everywhere: each session keeps at most `window` unacknowledged frames, and every
//! session of a shard draws page copies from one pool; a full session is reported, like a
//! full backlog before it, as the peer being unable to keep up. Frames the transport refused
//! (backpressure) simply stay untransmitted in the session, in order, until it has room.
//!
//! A page is copied once, into the pool; the transport sends it from there in place
//! ([`Payload::Page`], token = the copy's index). A copy is reused only when the peer has
//! acknowledged its frame *and* the transport has reported `SendDone` for every send of it.

use std::collections::VecDeque;

use thiserror::Error;
use wire::{
    Header, MsgType, PageRef, Payload, PeerId, SendOutcome, Transport, TransportError, PAGE_SIZE,
};

use super::route::{peer_id, peer_node};
use super::Conn;
use coherence::{NodeId, MAX_NODES};

/// Frames received before an acknowledgement goes out at once.
pub const ACK_EVERY: u64 = 64;
/// Frames received before an acknowledgement rides ahead of a frame sent to the peer anyway.
pub const ACK_PIGGYBACK: u64 = 8;
/// Longest a received frame waits for its acknowledgement.
pub const ACK_DELAY_NS: u64 = 5_000_000;

/// No page copy.
const NO_PAGE: u32 = u32::MAX;

/// One retained frame.
#[derive(Debug, Clone, Copy)]
struct Entry {
    header: Header,
    page: u32,
}

/// Where a session's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Connected and resumed: frames flow.
    Up,
    /// A new connection: our `Resume` is sent, the peer's is awaited; nothing else goes out.
    Resuming {
        /// When the session lost its previous connection (or was created), in clock ns.
        since: u64,
    },
    /// No connection since `since` (clock ns).
    Down {
        /// When the connection was lost.
        since: u64,
    },
    /// The node is gone (declared dead or left): the session holds nothing.
    Gone,
}

/// A session that cannot go on: the peer broke the rules, or restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SessionError {
    /// A protocol frame or an `Ack` before the peer's `Resume` on a connection.
    #[error("it sent {0:?} before resuming the session")]
    NotResumed(MsgType),
    /// A second `Resume` on one connection.
    #[error("it sent a second Resume on one connection")]
    Unexpected,
    /// The peer's incarnation changed: it restarted and lost the session's state.
    #[error("it restarted (a new incarnation): what the old one held is gone")]
    Restarted,
    /// The peer claims to have received frames that were never sent, or acknowledges ones
    /// already forgotten.
    #[error("it acknowledged {got} frames; {low}..={high} are possible")]
    BadCount {
        /// What it said.
        got: u64,
        /// The least possible.
        low: u64,
        /// The most possible.
        high: u64,
    },
    /// No room to keep the frame until the peer acknowledges it.
    #[error(
        "{frames} frames wait for its acknowledgement and {pages} page copies are in use: \
         it does not keep up"
    )]
    Full {
        /// Frames retained for the session.
        frames: usize,
        /// Page copies in use over all sessions.
        pages: usize,
    },
}

/// One pair of shards' conversation.
#[derive(Debug)]
struct Session {
    peer: PeerId,
    link: Link,
    /// Whether the transport holds a connection for it (until that connection's `PeerDown`).
    attached: bool,
    /// Unacknowledged frames; the first has position `first`.
    ring: VecDeque<Entry>,
    first: u64,
    /// Position of the next frame to hand to the transport.
    next_tx: u64,
    /// Protocol frames received.
    received: u64,
    /// `received` as last told to the peer.
    told: u64,
    /// When the oldest frame not yet acknowledged to the peer arrived (0: none).
    unacked_since: u64,
    /// The peer's incarnation, from its first `Resume`.
    incarnation: Option<u64>,
    /// A new connection waiting for the old one to finish closing.
    pending: Option<Conn>,
    /// Whether the session is in the list of those with frames waiting for the transport.
    waiting: bool,
}

impl Session {
    fn new(peer: PeerId, window: usize, now: u64) -> Self {
        Session {
            peer,
            link: Link::Down { since: now },
            attached: false,
            ring: VecDeque::with_capacity(window),
            first: 0,
            next_tx: 0,
            received: 0,
            told: 0,
            unacked_since: 0,
            incarnation: None,
            pending: None,
            waiting: false,
        }
    }

    fn end(&self) -> u64 {
        self.first + self.ring.len() as u64
    }
}

/// What a resumed session did, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Frames sent again (the peer never got them).
    pub resent: u64,
    /// How long the session was without a working connection (ns); 0 for a first connection.
    pub down_ns: u64,
    /// Whether this was a reconnection (not the session's first connection).
    pub again: bool,
}

/// Counters of one shard's sessions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionCounts {
    /// Connections lost.
    pub lost: u64,
    /// Sessions resumed on a new connection.
    pub restored: u64,
    /// Frames sent again after a resume.
    pub resent: u64,
}

/// Every session of one shard (see the module documentation).
#[derive(Debug)]
pub struct Sessions {
    me: NodeId,
    incarnation: u64,
    window: usize,
    /// Index of each node's first session (`u32::MAX`: none) and its shard count.
    base: [u32; MAX_NODES],
    shards: [u16; MAX_NODES],
    list: Vec<Session>,
    pages: Box<[u8]>,
    free_pages: Vec<u32>,
    /// Per page copy: sends of it the transport has not reported done.
    sending: Box<[u16]>,
    /// Per page copy: its frame is acknowledged (or forgotten); it is free once not sending.
    released: Box<[bool]>,
    /// Sessions with frames the transport has not taken yet.
    waiting: Vec<u32>,
    /// The list `pump` works through (kept to reuse its capacity).
    spare: Vec<u32>,
    /// Sessions whose peer has frames we have not acknowledged.
    unacked: u32,
    /// Sessions without a working connection.
    down: u32,
    counts: SessionCounts,
}

impl Sessions {
    /// Sessions of a shard on node `me` (whose incarnation is `incarnation`): each retains up
    /// to `window` frames, `pages` page copies over all.
    pub fn new(me: NodeId, incarnation: u64, window: usize, pages: usize) -> Self {
        Sessions {
            me,
            incarnation,
            window: window.max(1),
            base: [u32::MAX; MAX_NODES],
            shards: [0; MAX_NODES],
            list: Vec::new(),
            // Zeroed memory is committed only when touched: unused copies cost nothing.
            pages: vec![0u8; pages * PAGE_SIZE].into_boxed_slice(),
            free_pages: (0..pages as u32).rev().collect(),
            sending: vec![0; pages].into_boxed_slice(),
            released: vec![false; pages].into_boxed_slice(),
            waiting: Vec::new(),
            spare: Vec::new(),
            unacked: 0,
            down: 0,
            counts: SessionCounts::default(),
        }
    }

    /// Creates the sessions with `node`'s `shards` shards, unless they exist (control path;
    /// each starts down, waiting for its connection).
    pub fn open(&mut self, node: NodeId, shards: u16, now: u64) {
        let n = node.index();
        if self.base[n] != u32::MAX || shards == 0 {
            return;
        }
        self.base[n] = self.list.len() as u32;
        self.shards[n] = shards;
        for s in 0..shards {
            self.list
                .push(Session::new(peer_id(node, s), self.window, now));
        }
        self.down += u32::from(shards);
        // Neither list ever holds a session twice: with this room, pushes never allocate.
        let room = self.list.len();
        self.waiting
            .reserve(room.saturating_sub(self.waiting.len()));
        self.spare.reserve(room.saturating_sub(self.spare.len()));
    }

    /// The session with `peer`, if it exists and its node is not gone.
    #[inline]
    fn index(&self, peer: PeerId) -> Option<usize> {
        let n = usize::from(peer_node(peer));
        let s = (peer & 0xffff) as u16;
        let base = *self.base.get(n)?;
        (base != u32::MAX && s < self.shards[n]).then(|| base as usize + usize::from(s))
    }

    /// `node`'s shard count as its sessions know it (0: none).
    pub fn shard_count(&self, node: NodeId) -> u16 {
        self.shards[node.index()]
    }

    /// Where `peer`'s session stands (`None`: no such session).
    pub fn link(&self, peer: PeerId) -> Option<Link> {
        self.index(peer).map(|i| self.list[i].link)
    }

    /// What this shard's sessions did so far.
    pub fn counts(&self) -> SessionCounts {
        self.counts
    }

    /// Whether some session has no working connection.
    #[inline]
    pub fn any_down(&self) -> bool {
        self.down > 0
    }

    /// Whether some session owes its peer an acknowledgement.
    #[inline]
    pub fn any_unacked(&self) -> bool {
        self.unacked > 0
    }

    /// Keeps a protocol frame for `peer` and hands it to the transport when the session is
    /// up and nothing is queued before it. `Ok(false)`: kept, not yet sent (the connection is
    /// down or resuming, or the transport is full).
    pub fn send<T: Transport>(
        &mut self,
        t: &mut T,
        peer: PeerId,
        header: &Header,
        payload: Option<&[u8]>,
    ) -> Result<bool, SendError> {
        let i = self.index(peer).ok_or(SendError::NoSession)?;
        if self.list[i].link == Link::Gone {
            return Err(SendError::NoSession);
        }
        if self.list[i].ring.len() >= self.window {
            return Err(SendError::Session(self.full(i)));
        }
        let page = match payload {
            None => NO_PAGE,
            Some(bytes) => {
                let Some(p) = self.free_pages.pop() else {
                    return Err(SendError::Session(self.full(i)));
                };
                let off = p as usize * PAGE_SIZE;
                self.pages[off..off + bytes.len()].copy_from_slice(bytes);
                p
            }
        };
        let s = &mut self.list[i];
        s.ring.push_back(Entry {
            header: *header,
            page,
        });
        if s.link != Link::Up || s.waiting {
            return Ok(false);
        }
        if s.received - s.told >= ACK_PIGGYBACK {
            self.ack_index(t, i)?;
        }
        self.transmit(t, i)?;
        Ok(!self.list[i].waiting)
    }

    fn full(&self, i: usize) -> SessionError {
        SessionError::Full {
            frames: self.list[i].ring.len(),
            pages: self.pages.len() / PAGE_SIZE - self.free_pages.len(),
        }
    }

    /// Hands session `i`'s untransmitted frames to the transport until it refuses one; a
    /// session left with frames joins the waiting list. Returns how many it took.
    fn transmit<T: Transport>(&mut self, t: &mut T, i: usize) -> Result<usize, TransportError> {
        let s = &mut self.list[i];
        let peer = s.peer;
        let from = s.next_tx;
        while s.link == Link::Up && s.next_tx < s.first + s.ring.len() as u64 {
            let e = s.ring[(s.next_tx - s.first) as usize];
            let payload = if e.page == NO_PAGE {
                Payload::None
            } else {
                let off = e.page as usize * PAGE_SIZE;
                let bytes = &self.pages[off..off + e.header.payload_len as usize];
                // SAFETY: the copy is not written or reused while a send of it is not done
                // (`sending`, decremented at its `SendDone`), and the pool lives as long as
                // the shard, whose transport reports every `SendDone` before it is dropped.
                Payload::Page(unsafe { PageRef::new(bytes.as_ptr(), bytes.len()) })
            };
            match t.send(peer, &e.header, payload, u64::from(e.page)) {
                Ok(SendOutcome::Queued) => {
                    if e.page != NO_PAGE {
                        self.sending[e.page as usize] += 1;
                    }
                    s.next_tx += 1;
                }
                // The connection is going away: its `PeerDown` follows, and the frame is sent
                // again on the next one.
                Err(TransportError::PeerClosing(_)) => break,
                Err(e) => return Err(e),
                Ok(SendOutcome::Backpressure) => {
                    if !s.waiting {
                        s.waiting = true;
                        self.waiting.push(i as u32);
                    }
                    break;
                }
            }
        }
        Ok((s.next_tx - from) as usize)
    }

    /// Offers every waiting session's frames to the transport again; returns how many frames
    /// it took. A failed send is returned with its peer (the caller closes it).
    pub fn pump<T: Transport>(&mut self, t: &mut T) -> (usize, Option<(PeerId, TransportError)>) {
        if self.waiting.is_empty() {
            return (0, None);
        }
        // Sessions still refused go back on the (now empty) waiting list.
        std::mem::swap(&mut self.waiting, &mut self.spare);
        let mut failed = None;
        let mut sent = 0;
        for k in 0..self.spare.len() {
            let i = self.spare[k] as usize;
            self.list[i].waiting = false;
            match self.transmit(t, i) {
                Ok(n) => sent += n,
                Err(e) => {
                    failed.get_or_insert((self.list[i].peer, e));
                }
            }
        }
        self.spare.clear();
        (sent, failed)
    }

    /// A new connection for `peer` was added to the transport: say where this side stands
    /// (our `Resume` goes first on it) and wait for the peer's.
    pub fn attach<T: Transport>(
        &mut self,
        t: &mut T,
        peer: PeerId,
        now: u64,
    ) -> Result<(), TransportError> {
        let Some(i) = self.index(peer) else {
            return Err(TransportError::UnknownPeer(peer));
        };
        let s = &mut self.list[i];
        let since = match s.link {
            Link::Down { since } | Link::Resuming { since } => since,
            Link::Up => now,
            Link::Gone => return Err(TransportError::UnknownPeer(peer)),
        };
        if matches!(s.link, Link::Up) {
            self.down += 1;
        }
        s.link = Link::Resuming { since };
        s.attached = true;
        s.next_tx = s.first;
        let mut h = Header::new(MsgType::Resume, self.me.get());
        h.txn = self.incarnation;
        h.arg = s.received;
        match t.send(peer, &h, Payload::None, 0)? {
            SendOutcome::Queued => {
                s.told = s.received;
                if s.unacked_since != 0 {
                    s.unacked_since = 0;
                    self.unacked -= 1;
                }
                Ok(())
            }
            SendOutcome::Backpressure => Err(TransportError::Config(
                "a new connection refused its first frame",
            )),
        }
    }

    /// The peer's `Resume` arrived: forget what it has, send again what it lacks.
    pub fn on_resume<T: Transport>(
        &mut self,
        t: &mut T,
        peer: PeerId,
        incarnation: u64,
        received: u64,
        now: u64,
    ) -> Result<Resumed, ResumeError> {
        let i = self.index(peer).ok_or(ResumeError::NoSession)?;
        let s = &mut self.list[i];
        let since = match s.link {
            Link::Resuming { since } => since,
            Link::Up | Link::Down { .. } => return Err(SessionError::Unexpected.into()),
            Link::Gone => return Err(ResumeError::NoSession),
        };
        match s.incarnation {
            Some(known) if known != incarnation => return Err(SessionError::Restarted.into()),
            _ => {}
        }
        let again = s.incarnation.is_some();
        if received < s.first || received > s.end() {
            return Err(SessionError::BadCount {
                got: received,
                low: s.first,
                high: s.end(),
            }
            .into());
        }
        s.incarnation = Some(incarnation);
        self.release(i, received);
        let s = &mut self.list[i];
        let resent = s.end() - received;
        s.next_tx = received;
        s.link = Link::Up;
        self.down -= 1;
        if again {
            self.counts.restored += 1;
            self.counts.resent += resent;
        }
        self.transmit(t, i).map_err(ResumeError::Transport)?;
        Ok(Resumed {
            resent,
            down_ns: if again { now.saturating_sub(since) } else { 0 },
            again,
        })
    }

    /// The peer acknowledged `received` frames.
    pub fn on_ack(&mut self, peer: PeerId, received: u64) -> Result<(), SessionError> {
        let Some(i) = self.index(peer) else {
            return Ok(());
        };
        let s = &self.list[i];
        if s.link != Link::Up {
            return Err(SessionError::NotResumed(MsgType::Ack));
        }
        if received < s.first || received > s.next_tx {
            return Err(SessionError::BadCount {
                got: received,
                low: s.first,
                high: s.next_tx,
            });
        }
        self.release(i, received);
        Ok(())
    }

    /// Forgets session `i`'s frames before position `upto`.
    fn release(&mut self, i: usize, upto: u64) {
        let s = &mut self.list[i];
        while s.first < upto {
            let Some(e) = s.ring.pop_front() else { break };
            if e.page != NO_PAGE {
                let p = e.page as usize;
                if self.sending[p] == 0 {
                    self.free_pages.push(e.page);
                } else {
                    self.released[p] = true;
                }
            }
            s.first += 1;
        }
    }

    /// The transport is done with a send of page copy `token` (its `SendDone`).
    pub fn send_done(&mut self, token: u64) {
        let Some(n) = self.sending.get_mut(token as usize) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 && self.released[token as usize] {
            self.released[token as usize] = false;
            self.free_pages.push(token as u32);
        }
    }

    /// A protocol frame arrived from `peer`; `Ok(true)` when an acknowledgement is due now.
    #[inline]
    pub fn on_frame(&mut self, peer: PeerId, ty: MsgType, now: u64) -> Result<bool, SessionError> {
        let Some(i) = self.index(peer) else {
            return Ok(false);
        };
        let s = &mut self.list[i];
        if s.link != Link::Up {
            return Err(SessionError::NotResumed(ty));
        }
        s.received += 1;
        if s.unacked_since == 0 {
            s.unacked_since = now.max(1);
            self.unacked += 1;
        }
        Ok(s.received - s.told >= ACK_EVERY)
    }

    /// Acknowledges to `peer` what arrived from it (if the transport has room).
    pub fn ack<T: Transport>(&mut self, t: &mut T, peer: PeerId) -> Result<(), TransportError> {
        match self.index(peer) {
            Some(i) => self.ack_index(t, i),
            None => Ok(()),
        }
    }

    fn ack_index<T: Transport>(&mut self, t: &mut T, i: usize) -> Result<(), TransportError> {
        let s = &mut self.list[i];
        let peer = s.peer;
        if s.link != Link::Up || s.unacked_since == 0 {
            return Ok(());
        }
        let mut h = Header::new(MsgType::Ack, self.me.get());
        h.arg = s.received;
        match t.send(peer, &h, Payload::None, 0) {
            Ok(SendOutcome::Queued) => {
                s.told = s.received;
                s.unacked_since = 0;
                self.unacked -= 1;
                Ok(())
            }
            // No room now, or the connection is going away (its `PeerDown` follows, and the
            // next connection's `Resume` says what an acknowledgement would have).
            Ok(SendOutcome::Backpressure) | Err(TransportError::PeerClosing(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// When the next acknowledgement falls due by time, if one waits.
    pub fn next_ack_due(&self) -> Option<u64> {
        if self.unacked == 0 {
            return None;
        }
        self.list
            .iter()
            .filter(|s| s.unacked_since != 0)
            .map(|s| s.unacked_since + ACK_DELAY_NS)
            .min()
    }

    /// Acknowledges every session whose oldest unacknowledged frame arrived at least
    /// `delay` ns ago; returns how many acknowledgements went out.
    pub fn ack_due<T: Transport>(&mut self, t: &mut T, now: u64, delay: u64) -> usize {
        let mut n = 0;
        for i in 0..self.list.len() {
            if self.unacked == 0 {
                break;
            }
            let since = self.list[i].unacked_since;
            if since != 0 && now.saturating_sub(since) >= delay {
                // A failed send shows up as the connection's PeerDown; nothing to do here.
                if self.ack_index(t, i).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// `peer`'s connection is gone (reset, closed, refused a frame). Returns a new connection
    /// that waited for it to close, if one did.
    pub fn detach(&mut self, peer: PeerId, now: u64) -> Option<Conn> {
        let i = self.index(peer)?;
        self.lose(i, now);
        let s = &mut self.list[i];
        s.attached = false;
        s.pending.take()
    }

    /// Whether the transport holds a connection for `peer`'s session.
    pub fn is_attached(&self, peer: PeerId) -> bool {
        self.index(peer).is_some_and(|i| self.list[i].attached)
    }

    /// Takes `peer`'s session off its connection, which the caller closes, and keeps `conn`
    /// to attach once that connection's `PeerDown` arrives (a newer connection replaces one
    /// that was waiting). Frames wait meanwhile.
    pub fn replace(&mut self, peer: PeerId, conn: Conn, now: u64) {
        let Some(i) = self.index(peer) else { return };
        self.lose(i, now);
        self.list[i].pending = Some(conn);
    }

    /// Session `i` has no working connection from `now` on: whatever its connection carried
    /// is sent again after the next resume, and the next `Resume` acknowledges for it.
    fn lose(&mut self, i: usize, now: u64) {
        let s = &mut self.list[i];
        match s.link {
            Link::Up => {
                self.down += 1;
                s.link = Link::Down { since: now };
                self.counts.lost += 1;
            }
            // A session never resumed counts its time down from its first connection's loss.
            Link::Resuming { since } if s.incarnation.is_some() => s.link = Link::Down { since },
            Link::Resuming { .. } => s.link = Link::Down { since: now },
            Link::Down { .. } | Link::Gone => {}
        }
        s.next_tx = s.first;
        if s.unacked_since != 0 {
            s.unacked_since = 0;
            self.unacked -= 1;
        }
    }

    /// The first node with a session down for at least `window` ns, if any.
    pub fn expired(&self, now: u64, window: u64) -> Option<NodeId> {
        if self.down == 0 {
            return None;
        }
        (0..MAX_NODES).find_map(|n| {
            let base = self.base[n];
            if base == u32::MAX {
                return None;
            }
            let range = base as usize..base as usize + usize::from(self.shards[n]);
            self.list[range]
                .iter()
                .any(|s| match s.link {
                    // A first connection waits for the peer's shard to start; its loss counts.
                    Link::Resuming { .. } if s.incarnation.is_none() => false,
                    Link::Down { since } | Link::Resuming { since } => {
                        now.saturating_sub(since) >= window
                    }
                    Link::Up | Link::Gone => false,
                })
                .then(|| NodeId::new(n as u16).expect("below MAX_NODES"))
        })
    }

    /// A fence on `node`: for each of its sessions, the position after the last frame kept
    /// so far. [`Sessions::passed`] says when the node has acknowledged all of them (and so
    /// processed them: a frame is acknowledged after the protocol took it in).
    pub fn fence(&self, node: NodeId) -> Vec<(u32, u64)> {
        let n = node.index();
        let base = self.base[n];
        if base == u32::MAX {
            return Vec::new();
        }
        (base..base + u32::from(self.shards[n]))
            .map(|i| (i, self.list[i as usize].end()))
            .collect()
    }

    /// Whether every frame before `fence` was acknowledged (or its node is gone).
    pub fn passed(&self, fence: &[(u32, u64)]) -> bool {
        fence.iter().all(|&(i, at)| {
            let s = &self.list[i as usize];
            s.link == Link::Gone || s.first >= at
        })
    }

    /// How many more frames (each with a page) bulk traffic to `node` may add now (a leaving
    /// node's drain): what its sessions hold beyond half of the window, and page copies beyond
    /// half of the pool. The other half is the protocol's own frames' to use, so a drain that
    /// runs ahead of the successor's acknowledgements stalls instead of filling the window
    /// (which treats the successor as failed).
    pub fn bulk_room(&self, node: NodeId) -> usize {
        let n = node.index();
        let base = self.base[n];
        if base == u32::MAX {
            return 0;
        }
        let half = self.window / 2;
        let pool_half = self.pages.len() / PAGE_SIZE / 2;
        (base..base + u32::from(self.shards[n]))
            .map(|i| half.saturating_sub(self.list[i as usize].ring.len()))
            .min()
            .unwrap_or(0)
            .min(self.free_pages.len().saturating_sub(pool_half))
    }

    /// Whether every frame kept for any live session has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.list
            .iter()
            .all(|s| s.link == Link::Gone || s.ring.is_empty())
    }

    /// `node` is gone: its sessions drop everything they held.
    pub fn forget(&mut self, node: NodeId) {
        let n = node.index();
        let base = self.base[n];
        if base == u32::MAX {
            return;
        }
        for i in base as usize..base as usize + usize::from(self.shards[n]) {
            let s = &mut self.list[i];
            match s.link {
                Link::Down { .. } | Link::Resuming { .. } => self.down -= 1,
                Link::Up | Link::Gone => {}
            }
            if s.unacked_since != 0 {
                self.unacked -= 1;
            }
            s.link = Link::Gone;
            s.attached = false;
            s.unacked_since = 0;
            s.pending = None;
            let upto = s.end();
            self.release(i, upto);
        }
        self.waiting.retain(|&i| {
            let i = i as usize;
            !(base as usize..base as usize + usize::from(self.shards[n])).contains(&i)
        });
    }
}

/// Why a frame could not be kept for its session.
#[derive(Debug, Error)]
pub enum SendError {
    /// No session with the peer (never connected, or its node is gone).
    #[error("no session with the peer")]
    NoSession,
    /// The session cannot keep the frame.
    #[error(transparent)]
    Session(SessionError),
    /// The transport refused the frame outright (the connection is closing).
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Why a `Resume` could not be taken.
#[derive(Debug, Error)]
pub enum ResumeError {
    /// No session with the peer.
    #[error("no session with the peer")]
    NoSession,
    /// The session cannot go on.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Resending failed (the new connection is closing).
    #[error(transparent)]
    Transport(TransportError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::net::{Net, SharedNet, SimTransport};
    use rand::SeedableRng;
    use wire::Event;

    const WINDOW_NS: u64 = 1_000_000;

    fn n(i: u16) -> NodeId {
        NodeId::new(i).unwrap()
    }

    /// One end: node `id`'s sessions and transport, connected to the other node.
    struct End {
        id: u16,
        s: Sessions,
        t: SimTransport,
    }

    impl End {
        fn new(id: u16, incarnation: u64, window: usize, net: &SharedNet) -> End {
            let mut s = Sessions::new(n(id), incarnation, window, 4);
            s.open(n(1 - id), 1, 0);
            End {
                id,
                s,
                t: SimTransport::new((id, 0), net.clone(), 2),
            }
        }

        fn peer(&self) -> PeerId {
            peer_id(n(1 - self.id), 0)
        }

        /// A new connection to the other end (the network connects both ends).
        fn connect(&mut self, now: u64) {
            let p = self.peer();
            self.t.add_sim_peer(p, (1 - self.id, 0)).unwrap();
            self.s.attach(&mut self.t, p, now).unwrap();
        }

        /// Sends a protocol frame with `txn` (and a page of `fill` bytes when given).
        fn send(&mut self, txn: u64, fill: Option<u8>) -> Result<bool, SendError> {
            let mut h = Header::new(MsgType::Inv, self.id);
            h.txn = txn;
            let page = fill.map(|b| [b; PAGE_SIZE]);
            if page.is_some() {
                h = Header::new(MsgType::Data, self.id);
                h.txn = txn;
                h.set_payload_len(PAGE_SIZE as u32);
            }
            let p = self.peer();
            self.s
                .send(&mut self.t, p, &h, page.as_ref().map(|b| &b[..]))
        }

        /// Polls and feeds the session; returns the protocol frames `(txn, first byte)`.
        fn poll(&mut self, now: u64) -> Result<Vec<(u64, Option<u8>)>, String> {
            let mut evs = Vec::new();
            self.t.poll(|e| evs.push(e)).unwrap();
            let mut got = Vec::new();
            for e in evs {
                match e {
                    Event::Received {
                        peer,
                        header,
                        payload,
                    } => {
                        let first = payload.as_ref().map(|b| self.t.payload(b)[0]);
                        if let Some(b) = payload {
                            self.t.release(b);
                        }
                        match header.ty {
                            MsgType::Resume => {
                                self.s
                                    .on_resume(&mut self.t, peer, header.txn, header.arg, now)
                                    .map_err(|e| e.to_string())?;
                            }
                            MsgType::Ack => {
                                self.s.on_ack(peer, header.arg).map_err(|e| e.to_string())?
                            }
                            ty => {
                                if self.s.on_frame(peer, ty, now).map_err(|e| e.to_string())? {
                                    self.s.ack(&mut self.t, peer).unwrap();
                                }
                                got.push((header.txn, first));
                            }
                        }
                    }
                    Event::PeerDown { peer, .. } => {
                        assert!(self.s.detach(peer, now).is_none());
                    }
                    Event::SendDone { token, .. } => self.s.send_done(token),
                    Event::FdReady { .. } => {}
                }
            }
            Ok(got)
        }
    }

    fn world() -> (SharedNet, End, End) {
        let net = Net::new(rand::rngs::StdRng::seed_from_u64(1), (10, 10));
        net.borrow_mut().connect((0, 0), (1, 0));
        let mut a = End::new(0, 111, 8, &net);
        let mut b = End::new(1, 222, 8, &net);
        a.connect(0);
        b.connect(0);
        (net, a, b)
    }

    fn at(net: &SharedNet, t: u64) {
        net.borrow_mut().advance_to(t);
    }

    #[test]
    fn frames_lost_with_a_connection_are_sent_again_once_and_in_order() {
        let (net, mut a, mut b) = world();
        at(&net, 100);
        a.poll(100).unwrap();
        b.poll(100).unwrap();
        assert_eq!(a.s.link(a.peer()), Some(Link::Up));
        // Two frames arrive; the third is on the wire when the connection breaks.
        assert!(a.send(1, None).unwrap());
        assert!(a.send(2, Some(7)).unwrap());
        at(&net, 200);
        assert_eq!(b.poll(200).unwrap(), vec![(1, None), (2, Some(7))]);
        assert!(a.send(3, Some(9)).unwrap());
        net.borrow_mut().break_link((0, 0), (1, 0));
        a.poll(300).unwrap();
        b.poll(300).unwrap();
        assert_eq!(a.s.link(a.peer()), Some(Link::Down { since: 300 }));
        // Frames decided while the connection is down wait in the session.
        assert!(!a.send(4, None).unwrap());
        assert_eq!(a.s.expired(300 + WINDOW_NS - 1, WINDOW_NS), None);
        // A new connection: each side says what it got, and only what is missing comes.
        net.borrow_mut().connect((0, 0), (1, 0));
        a.connect(400);
        b.connect(400);
        at(&net, 500);
        b.poll(500).unwrap();
        a.poll(500).unwrap();
        at(&net, 600);
        assert_eq!(b.poll(600).unwrap(), vec![(3, Some(9)), (4, None)]);
        let c = a.s.counts();
        assert_eq!((c.lost, c.restored, c.resent), (1, 1, 2));
        // B has not acknowledged anything yet (fewer than ACK_EVERY frames, no delay
        // passed): after it does, A keeps nothing.
        assert_eq!(b.s.ack_due(&mut b.t, 600 + ACK_DELAY_NS, ACK_DELAY_NS), 1);
        at(&net, 700);
        a.poll(700).unwrap();
        assert_eq!(a.s.list[0].ring.len(), 0);
        assert_eq!(a.s.free_pages.len(), 4, "every page copy came back");
    }

    #[test]
    fn a_restarted_peer_and_impossible_counts_are_refused() {
        let (net, mut a, mut b) = world();
        at(&net, 100);
        a.poll(100).unwrap();
        b.poll(100).unwrap();
        assert!(a.send(1, None).unwrap());
        net.borrow_mut().break_link((0, 0), (1, 0));
        a.poll(200).unwrap();
        b.poll(200).unwrap();
        // Node 1 restarts: a new incarnation, nothing received.
        let mut b2 = End::new(1, 333, 8, &net);
        net.borrow_mut().connect((0, 0), (1, 0));
        a.connect(300);
        b2.connect(300);
        at(&net, 400);
        let e = a.poll(400).unwrap_err();
        assert_eq!(e, SessionError::Restarted.to_string());
        // An acknowledgement of frames never sent.
        assert_eq!(
            a.s.on_ack(a.peer(), 5),
            Err(SessionError::NotResumed(MsgType::Ack))
        );
        let (net, mut a, mut b) = world();
        at(&net, 100);
        a.poll(100).unwrap();
        b.poll(100).unwrap();
        assert!(a.send(1, None).unwrap());
        assert_eq!(
            a.s.on_ack(a.peer(), 2),
            Err(SessionError::BadCount {
                got: 2,
                low: 0,
                high: 1
            })
        );
    }

    #[test]
    fn a_session_never_keeps_more_than_its_window_or_the_page_pool() {
        let (net, mut a, mut b) = world();
        at(&net, 100);
        a.poll(100).unwrap();
        b.poll(100).unwrap();
        for txn in 0..4 {
            assert!(a.send(txn, Some(1)).unwrap());
        }
        // Four page copies are all there are.
        assert!(matches!(
            a.send(4, Some(1)),
            Err(SendError::Session(SessionError::Full {
                frames: 4,
                pages: 4
            }))
        ));
        for txn in 4..8 {
            assert!(a.send(txn, None).unwrap());
        }
        assert!(matches!(
            a.send(8, None),
            Err(SendError::Session(SessionError::Full { frames: 8, .. }))
        ));
    }

    #[test]
    fn bulk_traffic_leaves_half_of_the_window_and_the_pool_to_the_rest() {
        let (net, mut a, mut b) = world();
        at(&net, 100);
        a.poll(100).unwrap();
        b.poll(100).unwrap();
        // Window 8 frames, pool 4 page copies: bulk may use 4 frames and 2 copies.
        assert_eq!(a.s.bulk_room(n(1)), 2);
        assert!(a.send(1, Some(1)).unwrap());
        assert_eq!(a.s.bulk_room(n(1)), 1);
        assert!(a.send(2, Some(1)).unwrap());
        assert_eq!(a.s.bulk_room(n(1)), 0, "half of the pool is in use");
        // The protocol's own frames still find room, page copies included.
        assert!(a.send(3, Some(1)).unwrap());
        assert!(a.send(4, None).unwrap());
        assert!(a.send(5, None).unwrap());
        assert_eq!(a.s.bulk_room(n(1)), 0);
        assert_eq!(a.s.bulk_room(n(7)), 0, "no session with node 7");
        // Acknowledged frames make room again.
        at(&net, 200);
        b.poll(200).unwrap();
        assert_eq!(b.s.ack_due(&mut b.t, 200 + ACK_DELAY_NS, ACK_DELAY_NS), 1);
        at(&net, 300);
        a.poll(300).unwrap();
        assert_eq!(a.s.bulk_room(n(1)), 2);
    }

    #[test]
    fn a_session_down_past_its_window_names_its_node() {
        let (net, mut a, mut b) = world();
        at(&net, 100);
        a.poll(100).unwrap();
        b.poll(100).unwrap();
        net.borrow_mut().break_link((0, 0), (1, 0));
        a.poll(1_000).unwrap();
        assert!(a.s.any_down());
        assert_eq!(a.s.expired(1_000 + WINDOW_NS - 1, WINDOW_NS), None);
        assert_eq!(a.s.expired(1_000 + WINDOW_NS, WINDOW_NS), Some(n(1)));
        a.s.forget(n(1));
        assert!(!a.s.any_down());
        assert!(matches!(a.send(1, None), Err(SendError::NoSession)));
    }
}
