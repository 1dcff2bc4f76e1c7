//! A deterministic in-memory network behind the real `wire::Transport` contract, for the
//! engine simulator: the shards under simulation use it exactly as they use io_uring or epoll.
//!
//! Every ordered pair of endpoints that is connected has one FIFO queue (TCP keeps order per
//! connection); each frame gets a delivery time drawn from the seeded generator, never before
//! the previous frame of the same queue, so frames on different connections overtake each other
//! as freely as the seed says. Time is the simulator's: frames are delivered by `poll` once the
//! network's clock reaches them. Breaking a connection loses what it still carries and reports
//! `PeerDown` on both ends, as a reset does.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use wire::counters::TransportStats;
use wire::{
    DownReason, Event, FrameKeys, Header, NodeId, Payload, PeerId, RxBuf, RxSlots, SendOutcome,
    Transport, TransportError, PAGE_SIZE,
};

/// One end of the simulated network: a node's shard.
pub type Endpoint = (u16, u16);

/// A frame on its way.
#[derive(Debug)]
struct InFlight {
    at: u64,
    header: Header,
    payload: Option<Box<[u8]>>,
}

/// The whole network: queues, the clock, the delay generator.
#[derive(Debug)]
pub struct Net {
    now: u64,
    rng: StdRng,
    /// Delivery delay range in ns.
    delay: (u64, u64),
    /// Queue of frames from `.0` to `.1`, while the connection is up.
    queues: BTreeMap<(Endpoint, Endpoint), VecDeque<InFlight>>,
    /// Connections broken since an end last polled: `(end that must hear it, the other end)`.
    broken: Vec<(Endpoint, Endpoint)>,
    /// Frames delivered so far.
    pub delivered: u64,
}

/// A shared handle to the network.
pub type SharedNet = Rc<RefCell<Net>>;

impl Net {
    /// A network whose frames take `delay.0..=delay.1` ns, drawn from `rng`.
    pub fn new(rng: StdRng, delay: (u64, u64)) -> SharedNet {
        Rc::new(RefCell::new(Net {
            now: 0,
            rng,
            delay,
            queues: BTreeMap::new(),
            broken: Vec::new(),
            delivered: 0,
        }))
    }

    /// The network's clock.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Moves the clock forward (never back).
    pub fn advance_to(&mut self, t: u64) {
        self.now = self.now.max(t);
    }

    /// The earliest time a queued frame becomes deliverable, if any frame is queued.
    pub fn next_delivery(&self) -> Option<u64> {
        self.queues
            .values()
            .filter_map(|q| q.front().map(|f| f.at))
            .min()
    }

    /// Connects `a` and `b` (both directions).
    pub fn connect(&mut self, a: Endpoint, b: Endpoint) {
        self.queues.entry((a, b)).or_default();
        self.queues.entry((b, a)).or_default();
    }

    /// Breaks the connection between `a` and `b`: what it carries is lost, both ends hear
    /// `PeerDown` at their next poll.
    pub fn break_link(&mut self, a: Endpoint, b: Endpoint) {
        if self.queues.remove(&(a, b)).is_some() | self.queues.remove(&(b, a)).is_some() {
            self.broken.push((a, b));
            self.broken.push((b, a));
        }
    }

    /// Breaks every connection of node `n` (it crashed).
    pub fn crash(&mut self, n: u16) {
        let links: Vec<_> = self
            .queues
            .keys()
            .filter(|(a, _)| a.0 == n)
            .copied()
            .collect();
        for (a, b) in links {
            self.break_link(a, b);
        }
    }

    fn push(
        &mut self,
        from: Endpoint,
        to: Endpoint,
        header: Header,
        payload: Option<Box<[u8]>>,
    ) -> bool {
        let d = self.rng.gen_range(self.delay.0..=self.delay.1);
        let now = self.now;
        let Some(q) = self.queues.get_mut(&(from, to)) else {
            return false;
        };
        let at = q.back().map_or(now + d, |last| last.at.max(now + d));
        q.push_back(InFlight {
            at,
            header,
            payload,
        });
        true
    }
}

/// One shard's transport on the simulated network.
#[derive(Debug)]
pub struct SimTransport {
    me: Endpoint,
    net: SharedNet,
    /// Peer ids the shard uses: the endpoint each names and its receive-slot owner index.
    peers: BTreeMap<PeerId, (Endpoint, usize)>,
    next_slot: usize,
    /// Receive-slot owner indices of peers that went down, for the next `add_sim_peer`.
    free_slots: Vec<usize>,
    rx: RxSlots,
    /// Page sends whose `SendDone` the next poll reports.
    done: VecDeque<(PeerId, u64)>,
    stats: Arc<TransportStats>,
    max_peers: usize,
    poll_budget: usize,
}

impl SimTransport {
    /// The transport of endpoint `me` with room for `max_peers` peers.
    pub fn new(me: Endpoint, net: SharedNet, max_peers: usize) -> SimTransport {
        SimTransport {
            me,
            net,
            peers: BTreeMap::new(),
            next_slot: 0,
            free_slots: Vec::new(),
            rx: RxSlots::new(max_peers, 64).expect("receive slots for the simulator"),
            done: VecDeque::new(),
            stats: Arc::new(TransportStats::new(max_peers)),
            max_peers,
            poll_budget: 256,
        }
    }

    /// Names endpoint `to` as peer `peer` (the simulator's stand-in for `add_peer`, which
    /// takes a socket). The network must connect the two ends.
    pub fn add_sim_peer(&mut self, peer: PeerId, to: Endpoint) -> Result<(), TransportError> {
        if self.peers.contains_key(&peer) {
            return Err(TransportError::PeerExists(peer));
        }
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None if self.next_slot < self.max_peers => {
                self.next_slot += 1;
                self.next_slot - 1
            }
            None => return Err(TransportError::TooManyPeers(self.max_peers)),
        };
        self.peers.insert(peer, (to, slot));
        Ok(())
    }

    fn peer_of(&self, ep: Endpoint) -> Option<PeerId> {
        self.peers.iter().find(|(_, e)| e.0 == ep).map(|(p, _)| *p)
    }
}

impl Transport for SimTransport {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn add_peer(
        &mut self,
        _peer: PeerId,
        _stream: TcpStream,
        _node: Option<NodeId>,
        _keys: &FrameKeys,
    ) -> Result<(), TransportError> {
        Err(TransportError::Config(
            "the simulated transport takes peers with add_sim_peer, not sockets",
        ))
    }

    fn close_peer(&mut self, peer: PeerId) -> Result<(), TransportError> {
        let (to, _) = *self
            .peers
            .get(&peer)
            .ok_or(TransportError::UnknownPeer(peer))?;
        self.net.borrow_mut().break_link(self.me, to);
        Ok(())
    }

    fn send(
        &mut self,
        peer: PeerId,
        header: &Header,
        payload: Payload<'_>,
        token: u64,
    ) -> Result<SendOutcome, TransportError> {
        wire::txq::check_frame(header, &payload)?;
        let (to, _) = *self
            .peers
            .get(&peer)
            .ok_or(TransportError::UnknownPeer(peer))?;
        let bytes: Option<Box<[u8]>> = match payload {
            Payload::None => None,
            Payload::Copy(b) => Some(b.into()),
            Payload::Page(p) => {
                // SAFETY: the caller keeps the page readable until `SendDone`; it is copied
                // here, at once, and `SendDone` follows at the next poll.
                let b = unsafe { std::slice::from_raw_parts(p.addr() as *const u8, p.len()) };
                self.done.push_back((peer, token));
                Some(b.into())
            }
        };
        if !self.net.borrow_mut().push(self.me, to, *header, bytes) {
            return Err(TransportError::PeerClosing(peer));
        }
        Ok(SendOutcome::Queued)
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        Ok(())
    }

    fn poll<F: FnMut(Event)>(&mut self, mut out: F) -> Result<usize, TransportError> {
        let mut n = 0;
        while let Some((peer, token)) = self.done.pop_front() {
            out(Event::SendDone { peer, token });
            n += 1;
        }
        let mut net = self.net.borrow_mut();
        let mut i = 0;
        while i < net.broken.len() {
            let (end, other) = net.broken[i];
            if end != self.me {
                i += 1;
                continue;
            }
            net.broken.swap_remove(i);
            if let Some(peer) = self.peer_of(other) {
                if let Some((_, slot)) = self.peers.remove(&peer) {
                    self.free_slots.push(slot);
                }
                out(Event::PeerDown {
                    peer,
                    reason: DownReason::Closed,
                });
                n += 1;
            }
        }
        let now = net.now;
        let peers: Vec<(PeerId, (Endpoint, usize))> =
            self.peers.iter().map(|(p, e)| (*p, *e)).collect();
        for (peer, (from, slot)) in peers {
            loop {
                if n >= self.poll_budget || !self.rx.has_room(slot) {
                    break;
                }
                let Some(q) = net.queues.get_mut(&(from, self.me)) else {
                    break;
                };
                if q.front().is_none_or(|f| f.at > now) {
                    break;
                }
                let f = q.pop_front().expect("front exists");
                let payload = match f.payload {
                    None => None,
                    Some(b) => {
                        let buf = self.rx.alloc(slot, b.len()).expect("room checked above");
                        self.rx.bytes_mut(&buf).copy_from_slice(&b);
                        Some(buf)
                    }
                };
                net.delivered += 1;
                out(Event::Received {
                    peer,
                    header: f.header,
                    payload,
                });
                n += 1;
            }
        }
        Ok(n)
    }

    fn wait(&mut self, _timeout: Option<Duration>) -> Result<(), TransportError> {
        // The simulator never lets a shard sleep: it decides when each shard turns.
        Ok(())
    }

    fn watch_fd(&mut self, _fd: RawFd, _token: u64) -> Result<(), TransportError> {
        Ok(())
    }

    fn payload(&self, buf: &RxBuf) -> &[u8] {
        self.rx.bytes(buf)
    }

    fn release(&mut self, buf: RxBuf) {
        // A handle this pool did not hand out, or one released twice, is a bug in the code
        // under simulation: the simulator stops on it.
        assert!(
            self.rx.release(buf).is_some(),
            "the shard released a receive buffer the transport does not hold"
        );
    }

    fn stats(&self) -> &Arc<TransportStats> {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use wire::MsgType;

    fn frame(txn: u64) -> Header {
        let mut h = Header::new(MsgType::ReadReq, 0);
        h.txn = txn;
        h
    }

    fn pair(seed: u64) -> (SharedNet, SimTransport, SimTransport) {
        let net = Net::new(StdRng::seed_from_u64(seed), (1_000, 50_000));
        net.borrow_mut().connect((0, 0), (1, 0));
        let mut a = SimTransport::new((0, 0), net.clone(), 4);
        let mut b = SimTransport::new((1, 0), net.clone(), 4);
        a.add_sim_peer(10, (1, 0)).unwrap();
        b.add_sim_peer(20, (0, 0)).unwrap();
        (net, a, b)
    }

    fn received(t: &mut SimTransport) -> Vec<(PeerId, u64, Option<u8>)> {
        let mut got = Vec::new();
        let mut bufs = Vec::new();
        t.poll(|e| {
            if let Event::Received {
                peer,
                header,
                payload,
            } = e
            {
                got.push((peer, header.txn, payload.is_some()));
                bufs.extend(payload);
            }
        })
        .unwrap();
        let firsts: Vec<u8> = bufs.iter().map(|b| t.payload(b)[0]).collect();
        for b in bufs {
            t.release(b);
        }
        let mut k = 0;
        got.into_iter()
            .map(|(p, txn, has)| {
                let byte = has.then(|| {
                    k += 1;
                    firsts[k - 1]
                });
                (p, txn, byte)
            })
            .collect()
    }

    #[test]
    fn frames_arrive_in_order_when_their_time_comes_with_their_payload() {
        let (net, mut a, mut b) = pair(7);
        for txn in 0..20 {
            assert_eq!(
                a.send(10, &frame(txn), Payload::None, 0).unwrap(),
                SendOutcome::Queued
            );
        }
        let mut data = Header::new(MsgType::Data, 0);
        data.flags = wire::flags::DATA;
        data.set_payload_len(PAGE_SIZE as u32);
        data.txn = 99;
        let page = vec![0xab; PAGE_SIZE];
        assert_eq!(
            a.send(10, &data, Payload::Copy(&page), 0).unwrap(),
            SendOutcome::Queued
        );
        // Nothing is deliverable before time passes.
        assert!(received(&mut b).is_empty());
        let mut got = Vec::new();
        loop {
            let next = net.borrow().next_delivery();
            let Some(t) = next else { break };
            net.borrow_mut().advance_to(t);
            assert_eq!(net.borrow().now(), t);
            got.extend(received(&mut b));
        }
        let txns: Vec<u64> = got.iter().map(|g| g.1).collect();
        assert_eq!(
            txns,
            (0..20).chain([99]).collect::<Vec<_>>(),
            "FIFO per connection"
        );
        assert!(
            got.iter().all(|g| g.0 == 20),
            "peer id as the receiver named it"
        );
        assert_eq!(got.last().unwrap().2, Some(0xab));
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let schedule = |seed| {
            let (net, mut a, _b) = pair(seed);
            for txn in 0..50 {
                assert_eq!(
                    a.send(10, &frame(txn), Payload::None, 0).unwrap(),
                    SendOutcome::Queued
                );
            }
            let q = &net.borrow().queues[&((0, 0), (1, 0))];
            q.iter().map(|f| f.at).collect::<Vec<_>>()
        };
        assert_eq!(schedule(1), schedule(1));
        assert_ne!(schedule(1), schedule(2));
    }

    #[test]
    fn a_broken_link_loses_its_frames_and_both_ends_hear_of_it() {
        let (net, mut a, mut b) = pair(3);
        assert_eq!(
            a.send(10, &frame(1), Payload::None, 0).unwrap(),
            SendOutcome::Queued
        );
        net.borrow_mut().crash(0);
        net.borrow_mut().advance_to(u64::MAX / 2);
        let mut downs = Vec::new();
        b.poll(|e| downs.push(e)).unwrap();
        assert_eq!(
            downs,
            vec![Event::PeerDown {
                peer: 20,
                reason: DownReason::Closed
            }]
        );
        let mut downs = Vec::new();
        a.poll(|e| downs.push(e)).unwrap();
        assert!(matches!(downs[..], [Event::PeerDown { peer: 10, .. }]));
        assert!(matches!(
            a.send(10, &frame(2), Payload::None, 0),
            Err(TransportError::UnknownPeer(10))
        ));
    }
}
