//! [`UringTransport`]: the `Transport` trait over one io_uring.
//!
//! Receive: a multishot `RECV` per connection selecting buffers from that connection's
//! provided-buffer ring; completions queue the buffers on the peer, the shared frame parser
//! copies payloads into page-aligned receive slots, and buffers go back to the ring as soon as
//! they are parsed. A peer out of receive slots keeps its buffers; its ring runs dry, the
//! multishot ends with `ENOBUFS` and is re-armed after the caller releases a slot.
//!
//! Send: per connection at most one send operation (or chain) is in flight, so frames of one
//! peer never overtake each other. It covers the queued bytes from the send cursor, up to 32
//! byte ranges (headers of consecutive frames merged into one range). By default that is one
//! vectored `SENDMSG` (the kernel copies the bytes: one `tcp_sendmsg` per connection and
//! flush, however many frames). With zero-copy configured it is a chain of linked sends
//! instead: headers with `SEND`, page payloads with `SEND_ZC` (copy-slot payloads from the
//! registered fixed buffer). `MSG_WAITALL` makes the kernel finish short sends itself, and any
//! remainder (a short send, a broken chain) is resubmitted from the byte where it stopped. A
//! frame's memory is released after its send completed and, for zero-copy sends, after the
//! kernel's notification (`IORING_CQE_F_NOTIF`).
//!
//! Why copying is the default: for 4 KiB pages a zero-copy send costs more than the copy it
//! saves (a send per payload, a notification per send, and on loopback the kernel copies the
//! pages anyway); see docs/benchmarks.md for the numbers.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use wire::conn::ConnTable;
use wire::counters::bump;
use wire::ratelimit::LogLimiter;
use wire::region::PageRegion;
use wire::slotset::SlotSet;
use wire::sock::prepare_stream;
use wire::txq::{SegKind, Segment, TxPayload};
use wire::{
    DownReason, Event, FrameKeys, Header, NodeId, Parsed, Payload, PeerId, RxBuf, RxSlots,
    SendOutcome, Transport, TransportConfig, TransportError, TransportStats, PAGE_SIZE,
};

use crate::peer::Peer;
use crate::probe::Features;
use crate::sendvec::MAX_IOV;
use crate::userdata::{self, pack, unpack};

/// Most fds `watch_fd` accepts.
pub const MAX_WATCHES: usize = 64;
/// Most operations in one send chain.
const MAX_CHAIN: usize = 32;
const _: () = assert!(
    MAX_CHAIN >= MAX_IOV,
    "the segment buffer holds a vectored send"
);
/// Completions copied out of the ring per batch.
const CQE_BATCH: usize = 64;
/// Index of the registered transmit copy region among the fixed buffers.
const COPY_BUF_INDEX: u16 = 0;

#[derive(Debug)]
struct Watch {
    fd: RawFd,
    token: u64,
    armed: bool,
}

/// The io_uring transport. Owned by one thread.
pub struct UringTransport {
    // Dropped first: closing the ring ends the kernel's use of the memory below.
    ring: IoUring,
    cfg: TransportConfig,
    features: Features,
    zero_copy: bool,
    fixed_copy: bool,
    peers: Box<[Peer]>,
    table: ConnTable,
    rx: RxSlots,
    copy: PageRegion,
    ready: SlotSet,
    dirty: SlotSet,
    done: SlotSet,
    downs: Vec<u16>,
    watches: Vec<Watch>,
    stats: Arc<TransportStats>,
    limiter: LogLimiter,
}

impl std::fmt::Debug for UringTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringTransport")
            .field("features", &self.features)
            .field("zero_copy", &self.zero_copy)
            .field("fixed_copy", &self.fixed_copy)
            .field("peers", &self.table.len())
            .finish_non_exhaustive()
    }
}

/// Marks a connection down and shuts its socket down.
fn mark_down(p: &mut Peer, downs: &mut Vec<u16>, slot: u16, reason: DownReason) {
    if p.conn.down.is_none() {
        p.conn.mark_down(downs, slot, reason);
        if let Some(s) = &p.conn.stream {
            // Ends the multishot receive (EOF) and fails pending sends, so the kernel lets go
            // of every buffer of this connection soon. Already-dead sockets may refuse.
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl UringTransport {
    /// A transport with everything preallocated and registered from `cfg`.
    pub fn new(cfg: &TransportConfig) -> Result<UringTransport, TransportError> {
        cfg.validate()?;
        let features = crate::probe::probe()
            .map_err(|e| TransportError::io("probing io_uring", io::Error::other(e.to_string())))?;
        let n = cfg.max_peers;
        let io = |op| move |e| TransportError::io(op, e);
        // COOP_TASKRUN + TASKRUN_FLAG: the kernel does not interrupt this thread (an IPI)
        // to finish receives and sends; it raises IORING_SQ_TASKRUN and `poll` runs the
        // pending work with one enter, only when the completion queue is empty and work is
        // pending. A busy-polling core is never interrupted; a waiting one runs it in `wait`.
        let ring = IoUring::builder()
            .setup_cqsize(cfg.ring_entries * 4)
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(cfg.ring_entries)
            .map_err(io("io_uring_setup"))?;
        ring.submitter()
            .register_files_sparse(n as u32)
            .map_err(io("registering files"))?;
        let copy = PageRegion::new(n * cfg.tx_copy_slots * PAGE_SIZE)
            .map_err(io("allocating transmit copy slots"))?;
        let iov = [libc::iovec {
            iov_base: copy.as_ptr().cast(),
            iov_len: copy.len(),
        }];
        // SAFETY: the iovec describes `copy`, which lives as long as the ring (fields drop
        // after `ring`). Failure (e.g. memory lock limits) just disables fixed-buffer sends.
        let fixed_copy = unsafe { ring.submitter().register_buffers(&iov) }.is_ok();
        let peers = (0..n as u16)
            .map(|slot| Peer::new(slot, cfg))
            .collect::<io::Result<Box<[Peer]>>>()
            .map_err(io("allocating receive buffer rings"))?;
        Ok(UringTransport {
            ring,
            features,
            zero_copy: cfg.zero_copy && features.send_zc,
            fixed_copy,
            peers,
            table: ConnTable::new(n),
            rx: RxSlots::new(n, cfg.rx_slots).map_err(io("allocating receive slots"))?,
            copy,
            ready: SlotSet::new(n),
            dirty: SlotSet::new(n),
            done: SlotSet::new(n),
            downs: Vec::with_capacity(n),
            watches: Vec::with_capacity(MAX_WATCHES),
            stats: Arc::new(TransportStats::new(n)),
            limiter: LogLimiter::new(10, 1),
            cfg: cfg.clone(),
        })
    }

    /// The io_uring features found at construction.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Whether page payloads are sent with `SEND_ZC`.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    fn slot_of(&self, peer: PeerId) -> Result<u16, TransportError> {
        self.table.slot_of(peer)
    }

    fn sq_room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    /// Pushes one entry; the caller checked there is room.
    ///
    /// # Safety
    ///
    /// Every buffer the entry references must stay valid until its completion (and, for
    /// zero-copy sends, its notification) has been reaped.
    unsafe fn push(&mut self, e: &squeue::Entry) {
        // SAFETY: forwarded to the caller; a full queue returns an error, which cannot happen
        // because callers check `sq_room` first.
        let r = unsafe { self.ring.submission().push(e) };
        debug_assert!(
            r.is_ok(),
            "submission queue overflow despite the room check"
        );
    }

    /// Arms the multishot receive of `slot` if it should run and is not running.
    fn arm_recv(&mut self, slot: u16) {
        let p = &self.peers[slot as usize];
        if p.recv_armed || p.conn.down.is_some() || p.conn.stalled || p.conn.stream.is_none() {
            return;
        }
        if p.held.len() >= usize::from(p.bufs.count()) {
            return;
        }
        let bgid = p.bufs.bgid();
        if self.sq_room() == 0 {
            // Retried by the next `stage` (the peer stays in the ready list).
            self.ready.insert(slot);
            return;
        }
        let e = opcode::RecvMulti::new(types::Fixed(u32::from(slot)), bgid)
            .build()
            .user_data(pack(userdata::RECV, slot, 0));
        // SAFETY: the receive writes only into this connection's registered buffer ring,
        // which stays registered until the receive has ended (teardown waits for it).
        unsafe { self.push(&e) };
        let p = &mut self.peers[slot as usize];
        p.recv_armed = true;
        p.inflight += 1;
    }

    /// Queues the next send chain of `slot` if none is in flight.
    fn stage_sends(&mut self, slot: u16) -> bool {
        let room = self.sq_room().min(MAX_CHAIN);
        let zc = self.zero_copy;
        let fixed = self.fixed_copy;
        let p = &self.peers[slot as usize];
        if p.conn.down.is_some() || p.chain_ops > 0 || !p.conn.txq.has_unsent() {
            return true;
        }
        if room == 0 {
            return false;
        }
        let mut segs = [Segment {
            addr: 0,
            len: 0,
            kind: SegKind::Headers,
        }; MAX_CHAIN];
        let flags = libc::MSG_WAITALL | libc::MSG_NOSIGNAL;
        let fd = types::Fixed(u32::from(slot));
        if !zc {
            let (n, _) = p.conn.txq.segments(&mut segs[..MAX_IOV]);
            let p = &mut self.peers[slot as usize];
            let hdr = p.sendvec.fill(&segs[..n]);
            let e = opcode::SendMsg::new(fd, hdr)
                .flags(flags as u32)
                .build()
                .user_data(pack(userdata::SEND, slot, 0));
            // SAFETY: the header and iovecs live in the slot's boxed `SendVec`, and the bytes
            // they describe are queued frames (headers in the peer's queue, copy slots we own,
            // caller pages under the `PageRef` contract); neither is reused or released before
            // this send completes (`chain_ops` blocks the next one).
            unsafe { self.push(&e) };
            let p = &mut self.peers[slot as usize];
            p.chain_ops = 1;
            p.chain_bytes = 0;
            p.inflight += 1;
            return true;
        }
        let (n, _) = p.conn.txq.segments(&mut segs[..room]);
        for (i, s) in segs[..n].iter().enumerate() {
            let len = s.len as u32;
            let ptr = s.addr as *const u8;
            let e = match s.kind {
                SegKind::Payload { seq, payload } if zc => {
                    let mut op = opcode::SendZc::new(fd, ptr, len).flags(flags);
                    if fixed && matches!(payload, TxPayload::Copy { .. }) {
                        op = op.buf_index(Some(COPY_BUF_INDEX));
                    }
                    op.build().user_data(pack(userdata::SEND_ZC, slot, seq))
                }
                _ => opcode::Send::new(fd, ptr, len)
                    .flags(flags)
                    .build()
                    .user_data(pack(userdata::SEND, slot, 0)),
            };
            let e = if i + 1 < n {
                e.flags(squeue::Flags::IO_LINK)
            } else {
                e
            };
            // SAFETY: the bytes are queued frames: headers in the peer's queue, copy slots we
            // own, or caller pages under the `PageRef` contract. None is released before the
            // chain completes and, for zero-copy sends, the notification arrives.
            unsafe { self.push(&e) };
        }
        let p = &mut self.peers[slot as usize];
        p.chain_ops = n as u32;
        p.chain_bytes = 0;
        p.inflight += n as u32;
        true
    }

    /// Queues submissions: pending receive re-arms and send chains. No system call.
    fn stage(&mut self) {
        let mut i = 0;
        while let Some(slot) = self.dirty.get(i) {
            if self.stage_sends(slot) {
                self.dirty.remove_at(i);
            } else {
                i += 1;
            }
        }
    }

    /// Copies completions out of the ring (shared memory: no system call) and applies them.
    fn reap<F: FnMut(Event)>(&mut self, out: &mut F) -> usize {
        let mut n = 0;
        loop {
            let mut batch = [(0u64, 0i32, 0u32); CQE_BATCH];
            let mut k = 0;
            for c in self.ring.completion().take(CQE_BATCH) {
                batch[k] = (c.user_data(), c.result(), c.flags());
                k += 1;
            }
            for &(ud, res, flags) in &batch[..k] {
                n += self.on_cqe(ud, res, flags, out);
            }
            if k < CQE_BATCH {
                return n;
            }
        }
    }

    fn on_cqe<F: FnMut(Event)>(&mut self, ud: u64, res: i32, flags: u32, out: &mut F) -> usize {
        let (kind, slot, arg) = unpack(ud);
        if kind == userdata::POLL {
            let Some(w) = self.watches.get_mut(arg as usize) else {
                return 0;
            };
            if !cqueue::more(flags) {
                w.armed = false;
            }
            if res < 0 {
                if res != -libc::ECANCELED {
                    bump(&self.stats.cq_errors);
                }
                return 0;
            }
            out(Event::FdReady { token: w.token });
            return 1;
        }
        let Some(p) = self.peers.get_mut(slot as usize) else {
            return 0;
        };
        match kind {
            userdata::RECV => {
                if !cqueue::more(flags) {
                    p.recv_armed = false;
                    p.inflight = p.inflight.saturating_sub(1);
                }
                if res > 0 {
                    p.zero_reads = 0;
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        p.held.push_back((bid, res as u32));
                    }
                    self.ready.insert(slot);
                } else if res == 0 && p.zero_reads == 0 {
                    // A multishot receive can end with 0 on an open connection (seen under
                    // load on 6.18, with IORING_CQE_F_SOCK_NONEMPTY). Re-arm once: at a real
                    // EOF the new receive ends with 0 again at once.
                    p.zero_reads = 1;
                    self.ready.insert(slot);
                } else if res == 0 {
                    mark_down(p, &mut self.downs, slot, DownReason::Closed);
                } else if res == -libc::ENOBUFS {
                    // Every buffer is held (stalled peer or slow parsing): re-armed after
                    // buffers are recycled.
                    self.ready.insert(slot);
                } else if res != -libc::ECANCELED {
                    bump(&self.stats.cq_errors);
                    mark_down(p, &mut self.downs, slot, DownReason::Io(-res));
                }
            }
            userdata::SEND | userdata::SEND_ZC => {
                if kind == userdata::SEND_ZC && cqueue::notif(flags) {
                    p.notifs = p.notifs.saturating_sub(1);
                    p.conn.txq.notif_done(arg);
                    self.done.insert(slot);
                    return 0;
                }
                if kind == userdata::SEND_ZC && cqueue::more(flags) {
                    p.notifs += 1;
                    p.conn.txq.notif_add(arg);
                }
                p.inflight = p.inflight.saturating_sub(1);
                p.chain_ops = p.chain_ops.saturating_sub(1);
                if res > 0 {
                    p.chain_bytes += res as usize;
                } else if res < 0 && res != -libc::ECANCELED {
                    bump(&self.stats.cq_errors);
                    mark_down(p, &mut self.downs, slot, DownReason::Io(-res));
                }
                if p.chain_ops == 0 && p.conn.down.is_none() {
                    p.conn.txq.advance(p.chain_bytes);
                    self.done.insert(slot);
                    if p.conn.txq.has_unsent() {
                        self.dirty.insert(slot);
                    }
                }
            }
            _ => {}
        }
        0
    }

    /// Parses held buffers of one peer; returns true when it has nothing more to parse now.
    fn parse_peer<F: FnMut(Event)>(&mut self, slot: u16, out: &mut F, n: &mut usize) -> bool {
        let budget = self.cfg.poll_budget;
        let p = &mut self.peers[slot as usize];
        while let Some(&(bid, len)) = p.held.front() {
            if p.conn.down.is_some() || p.conn.stalled {
                return true;
            }
            if *n >= budget {
                return false;
            }
            let data = p.bufs.data(bid, len as usize);
            let mut pos = p.held_off;
            let r = p
                .conn
                .parser
                .next(data, &mut pos, &mut self.rx, slot as usize);
            p.held_off = pos;
            if pos >= data.len() {
                p.held.pop_front();
                p.held_off = 0;
                p.bufs.recycle(bid);
            }
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
                Ok(Parsed::NoSlot) => p.conn.stalled = true,
                Err(e) => {
                    self.stats.reject(slot as usize, &e);
                    self.limiter.warn(format_args!(
                        "io_uring transport: rejected frame from peer {} ({:?}): {e}; closing the connection",
                        p.conn.id, p.conn.addr
                    ));
                    mark_down(p, &mut self.downs, slot, DownReason::Protocol(e));
                }
            }
        }
        true
    }

    fn retire_sent<F: FnMut(Event)>(&mut self, out: &mut F) -> usize {
        let mut n = 0;
        while let Some(slot) = self.done.pop() {
            let p = &mut self.peers[slot as usize];
            while let Some(event) = p.conn.retire_one(out) {
                bump(&self.stats.per_slot[slot as usize].tx_frames);
                n += usize::from(event);
            }
        }
        n
    }

    /// Tears down peers that went down once the kernel let go of their buffers.
    fn reap_downs<F: FnMut(Event)>(&mut self, out: &mut F) -> usize {
        let mut n = 0;
        let mut i = 0;
        while i < self.downs.len() {
            let slot = self.downs[i];
            if self.peers[slot as usize].kernel_busy() {
                i += 1;
                continue;
            }
            self.downs.swap_remove(i);
            n += self.teardown(slot, out);
        }
        n
    }

    fn teardown<F: FnMut(Event)>(&mut self, slot: u16, out: &mut F) -> usize {
        let sub = self.ring.submitter();
        // Free the registered file slot and the buffer ring; failures leave a stale
        // registration that the next add_peer on this slot replaces.
        let _ = sub.register_files_update(u32::from(slot), &[-1]);
        let p = &mut self.peers[slot as usize];
        let _ = p.bufs.unregister(&sub);
        p.held.clear();
        p.held_off = 0;
        p.chain_ops = 0;
        p.recv_armed = false;
        self.ready.remove(slot);
        self.dirty.remove(slot);
        self.done.remove(slot);
        self.table.release(p.conn.id, slot);
        bump(&self.stats.peers_down);
        p.conn.close(&mut self.rx, out)
    }

    fn rearm_watches(&mut self) {
        for i in 0..self.watches.len() {
            if self.watches[i].armed || self.sq_room() == 0 {
                continue;
            }
            let e = opcode::PollAdd::new(types::Fd(self.watches[i].fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(pack(userdata::POLL, 0, i as u32));
            // SAFETY: a poll references no memory; the fd is the caller's, kept open while
            // the transport lives (watch_fd's contract).
            unsafe { self.push(&e) };
            self.watches[i].armed = true;
        }
    }

    fn has_work(&mut self) -> bool {
        if !self.ring.completion().is_empty()
            || !self.done.is_empty()
            || self.ring.submission().taskrun()
        {
            return true;
        }
        if self
            .downs
            .iter()
            .any(|&s| !self.peers[s as usize].kernel_busy())
        {
            return true;
        }
        self.ready.iter().any(|s| {
            let p = &self.peers[s as usize];
            !p.conn.stalled && p.conn.down.is_none() && !p.held.is_empty()
        })
    }

    fn enter_for_taskrun(&mut self) -> Result<(), TransportError> {
        // `submit` enters with GETEVENTS when IORING_SQ_TASKRUN is set, running task work.
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(TransportError::io("io_uring_enter (task work)", e)),
        }
    }

    fn submit(&mut self) -> Result<(), TransportError> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(TransportError::io("io_uring_enter", e)),
        }
    }
}

impl Transport for UringTransport {
    fn name(&self) -> &'static str {
        "io_uring"
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
        let sub = self.ring.submitter();
        sub.register_files_update(u32::from(slot), &[stream.as_raw_fd()])
            .map_err(|e| TransportError::io("registering the socket", e))?;
        let p = &mut self.peers[slot as usize];
        if let Err(e) = p.bufs.register(&sub) {
            // Best effort: the caller gets the registration's error.
            let _ = sub.register_files_update(u32::from(slot), &[-1]);
            return Err(TransportError::io("registering the receive buffer ring", e));
        }
        if let Err(e) = p
            .conn
            .open(slot, peer, stream, node, keys, self.cfg.tx_copy_slots)
        {
            // Undoing the registrations is best effort: the caller gets the open's error.
            let _ = p.bufs.unregister(&sub);
            let _ = sub.register_files_update(u32::from(slot), &[-1]);
            return Err(e);
        }
        self.table.take(peer, slot);
        self.stats.open_slot(slot as usize, peer);
        p.inflight = 0;
        p.notifs = 0;
        p.zero_reads = 0;
        self.arm_recv(slot);
        self.submit()
    }

    fn close_peer(&mut self, peer: PeerId) -> Result<(), TransportError> {
        let slot = self.slot_of(peer)?;
        mark_down(
            &mut self.peers[slot as usize],
            &mut self.downs,
            slot,
            DownReason::Local,
        );
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
        self.stage();
        self.submit()
    }

    fn poll<F: FnMut(Event)>(&mut self, mut out: F) -> Result<usize, TransportError> {
        if self.ring.completion().is_empty() && self.ring.submission().taskrun() {
            // Completions are pending in kernel task work: one enter runs it (with any
            // queued submissions). Nothing pending, or completions already visible: no call.
            self.enter_for_taskrun()?;
        }
        let mut n = self.reap(&mut out);
        let mut i = 0;
        while n < self.cfg.poll_budget {
            let Some(slot) = self.ready.get(i) else {
                break;
            };
            if self.parse_peer(slot, &mut out, &mut n) {
                self.ready.remove_at(i);
                self.arm_recv(slot);
            } else {
                i += 1;
            }
        }
        n += self.retire_sent(&mut out);
        n += self.reap_downs(&mut out);
        self.rearm_watches();
        // Send chains are staged by `flush`; what may be queued here are re-armed receives
        // and polls (after a stall, ENOBUFS or a multishot ending), which must reach the
        // kernel even if the caller only polls. The steady state queues nothing: no syscall.
        self.submit()?;
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        self.stage();
        self.rearm_watches();
        if self.has_work() {
            return self.submit();
        }
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(TransportError::io("io_uring_enter (wait)", e)),
        }
    }

    fn watch_fd(&mut self, fd: RawFd, token: u64) -> Result<(), TransportError> {
        if self.watches.len() >= MAX_WATCHES {
            return Err(TransportError::Config("too many watched fds (limit 64)"));
        }
        self.watches.push(Watch {
            fd,
            token,
            armed: false,
        });
        self.rearm_watches();
        self.submit()
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

impl Drop for UringTransport {
    fn drop(&mut self) {
        // Make every connection's operations finish so the kernel stops using our buffers
        // before they are unmapped; bounded, in case a completion never comes.
        for p in self.peers.iter() {
            if let Some(s) = &p.conn.stream {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        let mut sink = |_e: Event| {};
        for _ in 0..200 {
            self.reap(&mut sink);
            if !self.peers.iter().any(Peer::kernel_busy) {
                break;
            }
            let ts = types::Timespec::from(Duration::from_millis(5));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
        }
    }
}
