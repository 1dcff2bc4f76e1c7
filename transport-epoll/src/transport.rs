//! [`EpollTransport`]: the `Transport` trait over non-blocking TCP sockets and one
//! edge-triggered epoll instance. Sends go out with `sendmsg` (gathering header and payload,
//! `MSG_NOSIGNAL`), receives are read into a per-peer buffer and fed to the shared frame parser.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use wire::conn::ConnTable;
use wire::counters::bump;
use wire::ratelimit::LogLimiter;
use wire::region::PageRegion;
use wire::slotset::SlotSet;
use wire::sock::{errno_of, prepare_stream};
use wire::txq::{SegKind, Segment};
use wire::{
    DownReason, Event, FrameKeys, Header, NodeId, Parsed, Payload, PeerId, RxBuf, RxSlots,
    SendOutcome, Transport, TransportConfig, TransportError, TransportStats, PAGE_SIZE,
};

use crate::epoll::Epoll;
use crate::peer::Peer;

/// Tag of epoll data words that name a watched fd rather than a peer slot.
const WATCH_TAG: u64 = 1 << 63;
/// Most fds `watch_fd` accepts.
pub const MAX_WATCHES: usize = 64;
/// Most byte ranges gathered into one `sendmsg`.
const MAX_IOV: usize = 64;

const PEER_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
const READ_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const WRITE_EVENTS: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

#[derive(Debug)]
struct Watch {
    token: u64,
    ready: bool,
}

/// The epoll transport. Owned by one thread.
#[derive(Debug)]
pub struct EpollTransport {
    cfg: TransportConfig,
    ep: Epoll,
    peers: Box<[Peer]>,
    table: ConnTable,
    rx: RxSlots,
    copy: PageRegion,
    ready: SlotSet,
    dirty: SlotSet,
    done: SlotSet,
    downs: Vec<u16>,
    watches: Vec<Watch>,
    evbuf: Vec<libc::epoll_event>,
    stats: Arc<TransportStats>,
    limiter: LogLimiter,
}

impl EpollTransport {
    /// A transport with everything preallocated from `cfg`.
    pub fn new(cfg: &TransportConfig) -> Result<EpollTransport, TransportError> {
        cfg.validate()?;
        let n = cfg.max_peers;
        let io = |op| move |e| TransportError::io(op, e);
        Ok(EpollTransport {
            ep: Epoll::new().map_err(io("epoll_create1"))?,
            peers: (0..n)
                .map(|_| Peer::new(cfg.tx_depth, cfg.tx_copy_slots, cfg.rx_buf_size as usize))
                .collect(),
            table: ConnTable::new(n),
            rx: RxSlots::new(n, cfg.rx_slots).map_err(io("allocating receive slots"))?,
            copy: PageRegion::new(n * cfg.tx_copy_slots * PAGE_SIZE)
                .map_err(io("allocating transmit copy slots"))?,
            ready: SlotSet::new(n),
            dirty: SlotSet::new(n),
            done: SlotSet::new(n),
            downs: Vec::with_capacity(n),
            watches: Vec::with_capacity(MAX_WATCHES),
            evbuf: vec![libc::epoll_event { events: 0, u64: 0 }; n + MAX_WATCHES],
            stats: Arc::new(TransportStats::new(n)),
            limiter: LogLimiter::new(10, 1),
            cfg: cfg.clone(),
        })
    }

    fn slot_of(&self, peer: PeerId) -> Result<u16, TransportError> {
        self.table.slot_of(peer)
    }

    /// Applies `n` epoll results to the peer flags and watch list.
    fn absorb(&mut self, n: usize) {
        for i in 0..n {
            let ev = self.evbuf[i];
            let (events, data) = (ev.events, ev.u64);
            if data & WATCH_TAG != 0 {
                if let Some(w) = self.watches.get_mut((data & !WATCH_TAG) as usize) {
                    w.ready = true;
                }
                continue;
            }
            let slot = data as u16;
            let Some(p) = self.peers.get_mut(slot as usize) else {
                continue;
            };
            if p.conn.stream.is_none() {
                continue;
            }
            if events & READ_EVENTS != 0 {
                p.readable = true;
                self.ready.insert(slot);
            }
            if events & WRITE_EVENTS != 0 {
                p.writable = true;
                if p.conn.txq.has_unsent() {
                    self.dirty.insert(slot);
                }
            }
        }
    }

    fn collect(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        let n = self
            .ep
            .wait(&mut self.evbuf, timeout)
            .map_err(|e| TransportError::io("epoll_wait", e))?;
        self.absorb(n);
        Ok(())
    }

    /// Reads and parses one peer; returns true when it has nothing more to offer now.
    fn service_rx<F: FnMut(Event)>(&mut self, slot: u16, out: &mut F, n: &mut usize) -> bool {
        let budget = self.cfg.poll_budget;
        let p = &mut self.peers[slot as usize];
        loop {
            if p.conn.down.is_some() || p.conn.stalled {
                return true;
            }
            if *n >= budget {
                return false;
            }
            if p.rstart == p.rend {
                if !p.readable {
                    return true;
                }
                let Some(stream) = p.conn.stream.as_mut() else {
                    return true;
                };
                match stream.read(&mut p.rbuf) {
                    Ok(0) => {
                        p.conn.mark_down(&mut self.downs, slot, DownReason::Closed);
                        return true;
                    }
                    Ok(k) => {
                        p.rstart = 0;
                        p.rend = k;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        p.readable = false;
                        return true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        p.conn
                            .mark_down(&mut self.downs, slot, DownReason::Io(errno_of(&e)));
                        return true;
                    }
                }
            }
            let mut pos = p.rstart;
            let r = p
                .conn
                .parser
                .next(&p.rbuf[..p.rend], &mut pos, &mut self.rx, slot as usize);
            p.rstart = pos;
            match r {
                Ok(Parsed::Frame(header, payload)) => {
                    bump(&self.stats.per_slot[slot as usize].rx_frames);
                    out(Event::Received {
                        peer: p.conn.id,
                        header,
                        payload,
                    });
                    *n += 1;
                }
                Ok(Parsed::NeedMore) => {}
                Ok(Parsed::NoSlot) => {
                    p.conn.stalled = true;
                    return true;
                }
                Err(e) => {
                    self.stats.reject(slot as usize, &e);
                    self.limiter.warn(format_args!(
                        "epoll transport: rejected frame from peer {} ({:?}): {e}; closing the connection",
                        p.conn.id, p.conn.addr
                    ));
                    p.conn
                        .mark_down(&mut self.downs, slot, DownReason::Protocol(e));
                    return true;
                }
            }
        }
    }

    /// Writes as much of one peer's queue as the socket takes.
    fn write_peer(&mut self, slot: u16) {
        let p = &mut self.peers[slot as usize];
        let Some(fd) = p.conn.stream.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        let mut segs = [Segment {
            addr: 0,
            len: 0,
            kind: SegKind::Headers,
        }; MAX_IOV];
        while p.writable && p.conn.down.is_none() {
            let (nseg, _) = p.conn.txq.segments(&mut segs);
            if nseg == 0 {
                break;
            }
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV];
            for (v, s) in iov.iter_mut().zip(&segs[..nseg]) {
                *v = libc::iovec {
                    iov_base: s.addr as *mut libc::c_void,
                    iov_len: s.len,
                };
            }
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = nseg;
            // SAFETY: every iovec points at queued bytes that stay valid until `advance` moves
            // past them (headers in the queue, copy slots we own, or caller pages under the
            // `PageRef` contract); `msg` and `iov` outlive the call.
            let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if r >= 0 {
                p.conn.txq.advance(r as usize);
                self.done.insert(slot);
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => p.writable = false,
                io::ErrorKind::Interrupted => {}
                _ => p
                    .conn
                    .mark_down(&mut self.downs, slot, DownReason::Io(errno_of(&e))),
            }
        }
    }

    fn retire_sent<F: FnMut(Event)>(&mut self, out: &mut F) {
        while let Some(slot) = self.done.pop() {
            let p = &mut self.peers[slot as usize];
            while p.conn.retire_one(out).is_some() {
                bump(&self.stats.per_slot[slot as usize].tx_frames);
            }
        }
    }

    fn teardown<F: FnMut(Event)>(&mut self, slot: u16, out: &mut F) {
        let p = &mut self.peers[slot as usize];
        if let Some(s) = p.conn.stream.as_ref() {
            // Closing the socket removes it from the epoll set; delete first to be explicit.
            let _ = self.ep.delete(s.as_raw_fd());
        }
        p.rstart = 0;
        p.rend = 0;
        p.readable = false;
        p.writable = false;
        self.ready.remove(slot);
        self.dirty.remove(slot);
        self.done.remove(slot);
        self.table.release(p.conn.id, slot);
        bump(&self.stats.peers_down);
        p.conn.close(&mut self.rx, out);
    }

    fn has_work(&self) -> bool {
        !self.downs.is_empty()
            || !self.done.is_empty()
            || self.watches.iter().any(|w| w.ready)
            || self.ready.iter().any(|s| {
                let p = &self.peers[s as usize];
                !p.conn.stalled && (p.readable || p.rstart < p.rend)
            })
    }
}

impl Transport for EpollTransport {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn add_peer(
        &mut self,
        peer: PeerId,
        stream: TcpStream,
        node: Option<NodeId>,
        keys: &FrameKeys,
    ) -> Result<(), TransportError> {
        let slot = self.table.vacant(peer)?;
        prepare_stream(&stream).map_err(|e| TransportError::io("configuring the socket", e))?;
        let fd = stream.as_raw_fd();
        let p = &mut self.peers[slot as usize];
        p.conn
            .open(slot, peer, stream, node, keys, self.cfg.tx_copy_slots)?;
        if let Err(e) = self.ep.add(fd, PEER_EVENTS, u64::from(slot)) {
            p.conn.stream = None;
            return Err(TransportError::io("epoll_ctl(ADD)", e));
        }
        self.table.take(peer, slot);
        self.stats.open_slot(slot as usize, peer);
        p.readable = true;
        p.writable = true;
        self.ready.insert(slot);
        Ok(())
    }

    fn close_peer(&mut self, peer: PeerId) -> Result<(), TransportError> {
        let slot = self.slot_of(peer)?;
        self.peers[slot as usize]
            .conn
            .mark_down(&mut self.downs, slot, DownReason::Local);
        Ok(())
    }

    fn send(
        &mut self,
        peer: PeerId,
        header: &Header,
        payload: Payload<'_>,
        token: u64,
    ) -> Result<SendOutcome, TransportError> {
        let slot = self.slot_of(peer)?;
        let p = &mut self.peers[slot as usize];
        let out = p
            .conn
            .queue(&mut self.copy, &self.stats, header, payload, token)?;
        if out == SendOutcome::Queued {
            self.dirty.insert(slot);
        }
        Ok(out)
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        let mut i = 0;
        while let Some(slot) = self.dirty.get(i) {
            self.write_peer(slot);
            let p = &mut self.peers[slot as usize];
            if p.conn.down.is_some() || !p.conn.txq.has_unsent() {
                self.dirty.remove_at(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    fn poll<F: FnMut(Event)>(&mut self, mut out: F) -> Result<usize, TransportError> {
        self.collect(Some(Duration::ZERO))?;
        let mut n = 0;
        for w in &mut self.watches {
            if w.ready {
                w.ready = false;
                out(Event::FdReady { token: w.token });
                n += 1;
            }
        }
        let mut i = 0;
        while n < self.cfg.poll_budget {
            let Some(slot) = self.ready.get(i) else {
                break;
            };
            if self.service_rx(slot, &mut out, &mut n) {
                let p = &mut self.peers[slot as usize];
                // Keep a stalled peer listed only if it still has bytes or readability.
                if p.conn.stalled || !(p.readable || p.rstart < p.rend) || p.conn.down.is_some() {
                    self.ready.remove_at(i);
                    continue;
                }
            }
            i += 1;
        }
        // Continue sends that waited for socket space, then retire what went out.
        self.flush()?;
        self.retire_sent(&mut out);
        while let Some(slot) = self.downs.pop() {
            self.teardown(slot, &mut out);
            n += 1;
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        self.flush()?;
        if self.has_work() {
            return Ok(());
        }
        self.collect(timeout)
    }

    fn watch_fd(&mut self, fd: RawFd, token: u64) -> Result<(), TransportError> {
        if self.watches.len() >= MAX_WATCHES {
            return Err(TransportError::Config("too many watched fds (limit 64)"));
        }
        let idx = self.watches.len() as u64;
        let events = (libc::EPOLLIN | libc::EPOLLET) as u32;
        self.ep
            .add(fd, events, WATCH_TAG | idx)
            .map_err(|e| TransportError::io("epoll_ctl(ADD) for a watched fd", e))?;
        self.watches.push(Watch {
            token,
            ready: false,
        });
        Ok(())
    }

    fn payload(&self, buf: &RxBuf) -> &[u8] {
        self.rx.bytes(buf)
    }

    fn release(&mut self, buf: RxBuf) {
        if let Some(owner) = self.rx.release(buf) {
            let p = &mut self.peers[owner];
            if p.conn.stalled && p.conn.stream.is_some() {
                p.conn.stalled = false;
                self.ready.insert(owner as u16);
            }
        }
    }

    fn stats(&self) -> &Arc<TransportStats> {
        &self.stats
    }
}
