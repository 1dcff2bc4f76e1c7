//! The verbs transport: frames between nodes over RDMA reliable-connected queue pairs, with
//! the contract of the TCP transports (`wire::Transport`).
//!
//! * **Setup.** [`VerbsTransport::add_peer`] takes the node's authenticated TCP connection to
//!   the peer, creates an RC queue pair, registers receive and transmit slots, posts every
//!   receive, and exchanges endpoints over that connection with the connection's own sealing
//!   state (`endpoint::exchange_sealed`: the exchange takes the next nonce, the frames go on
//!   from there). The TCP connection stays open for one purpose: its end (EOF, reset) is the
//!   peer's end, seen within [`LIVENESS_CHECK`] or at once by a sleeping shard.
//! * **Frames.** One frame per SEND, `header ‖ tag ‖ payload` as on TCP, sealed the same way;
//!   a page payload is copied into a registered transmit slot at `send`, so its memory is free
//!   at once ([`Event::SendDone`] follows in the next poll). A frame arrives in a registered
//!   receive slot and is handed to the caller in place ([`RxBuf`]); its receive is posted
//!   again when the caller releases it.
//! * **Flow control.** Every SEND carries the sender's count of receives posted for the peer
//!   in its immediate data ([`crate::credits`]); a side sends data only while it holds credits,
//!   so a SEND never meets a missing receive, and the caller holding receive slots is the
//!   backpressure.
//! * **Completions.** One completion queue for every queue pair, polled by `poll` (the shard's
//!   loop); `wait` arms it and sleeps in `poll(2)` on its completion channel, the watched fds
//!   and the peers' TCP connections.
//!
//! Every work request is signaled; its `wr_id` names the peer slot, a generation (completions
//! of a queue pair already torn down are recognised and dropped), the kind and the slot.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::header::{Header, HEADER_LEN, MAX_PAYLOAD};
use wire::region::PageRegion;
use wire::seal::{FrameKeys, Opener, Sealer, TAG_LEN};
use wire::transport::{
    DownReason, Event, NodeId, Payload, PeerId, SendOutcome, Transport, TransportConfig,
    TransportError,
};
use wire::{FrameError, RxBuf, TransportStats};

use crate::credits::{Credits, MIN_WINDOW};
use crate::endpoint::{exchange_sealed, EndpointMsg};
use crate::ffi::{
    IbvPortAttr, IbvQpCap, IbvRecvWr, IbvSendWr, IbvSge, IbvWc, IBV_ACCESS_LOCAL_WRITE,
    IBV_LINK_LAYER_ETHERNET, IBV_SEND_SIGNALED, IBV_WC_RECV, IBV_WC_SUCCESS, IBV_WC_WITH_IMM,
    IBV_WR_SEND_WITH_IMM,
};
use crate::verbs::{CompChannel, Context, Cq, Endpoint, Mr, Pd, Qp, Verbs, VerbsError};

/// Bytes of one slot: a whole frame, rounded up to a cache line.
pub const SLOT_BYTES: usize = (HEADER_LEN + TAG_LEN + MAX_PAYLOAD).div_ceil(64) * 64;
/// How often `poll` looks at the peers' TCP connections for their end.
pub const LIVENESS_CHECK: Duration = Duration::from_millis(10);
/// Longest a send may stay without its completion before the peer is declared down. With
/// credits a SEND always finds a posted receive, and the peer's device acknowledges it
/// whatever its process does, so only a broken path leaves one outstanding: soft-RoCE
/// completes nothing, error included, for a send to a queue pair that does not exist (seen
/// for 240 s).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `add_peer` waits for the peer's half of the endpoint exchange.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most fds `watch_fd` takes.
pub const MAX_WATCHED: usize = 8;
/// Completions taken from the queue per poll call.
const WC_BATCH: usize = 32;
/// The port used on the device.
const PORT: u8 = 1;
/// Most peers (the peer slot is 7 bits of a receive handle).
const MAX_PEERS: usize = 128;
/// Set in the index of every receive handle this transport hands out, so that a transport
/// combining it with a TCP one (whose slot indices stay far below) can tell whose it is.
pub const RXBUF_MARK: u32 = 1 << 31;

const KIND_DATA: u64 = 0;
const KIND_CREDIT: u64 = 1;
const KIND_RECV: u64 = 2;

fn wr_id(peer: usize, gen: u16, kind: u64, slot: usize) -> u64 {
    (u64::from(gen) << 48) | ((peer as u64) << 32) | (kind << 24) | slot as u64
}

fn wr_parts(id: u64) -> (usize, u16, u64, usize) {
    (
        ((id >> 32) & 0xffff) as usize,
        (id >> 48) as u16,
        (id >> 24) & 0xff,
        (id & 0xff_ffff) as usize,
    )
}

/// Which device and port the transport uses.
#[derive(Debug, Clone)]
pub struct VerbsConfig {
    /// The device (`rxe0`, `mlx5_0`, ...).
    pub device: String,
}

/// The device side every peer shares.
#[derive(Debug)]
struct Device {
    // Dropped in this order: queue before channel before domain before context.
    cq: Cq,
    channel: CompChannel,
    pd: Pd,
    ctx: Context,
    port: IbvPortAttr,
    gid_index: u8,
    gid: [u8; 16],
}

/// One connection.
struct Peer {
    id: PeerId,
    node: Option<NodeId>,
    gen: u16,
    // Dropped first: no request of the queue pair touches the slots after it is destroyed.
    qp: Qp,
    rx_mr: Mr,
    tx_mr: Mr,
    rx: PageRegion,
    tx: PageRegion,
    stream: TcpStream,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    credits: Credits,
    /// Transmit slots free for `send`.
    tx_free: Vec<u32>,
    /// Built frames waiting for credits: (slot, length).
    queued: VecDeque<(u32, u32)>,
    /// Send requests posted and not completed.
    sq_used: u32,
    /// When each of them was posted, oldest first (a queue pair completes its sends in
    /// order).
    posted_at: VecDeque<Instant>,
    sq_cap: u32,
    /// Receive slots the caller holds.
    held: u32,
    /// Down (reported, or about to be); the slot is freed once the caller holds nothing.
    down: bool,
}

/// RDMA verbs transport (see the module documentation).
pub struct VerbsTransport {
    cfg: TransportConfig,
    dev: Device,
    peers: Vec<Option<Peer>>,
    gens: Vec<u16>,
    pending: VecDeque<Event>,
    watched: Vec<(RawFd, u64)>,
    pollfds: Vec<libc::pollfd>,
    wc: [IbvWc; WC_BATCH],
    /// Completions taken by `wait` (after arming) and not yet handled.
    stashed: usize,
    checked_at: Instant,
    stats: Arc<TransportStats>,
}

impl std::fmt::Debug for VerbsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsTransport")
            .field("device", &self.dev.ctx.name())
            .field("peers", &self.peers.iter().flatten().count())
            .finish()
    }
}

fn verbs_err(op: &'static str, e: VerbsError) -> TransportError {
    TransportError::io(op, io::Error::other(e.to_string()))
}

impl VerbsTransport {
    /// Opens `vcfg.device` (its port 1 must be active) with `cfg`'s limits: `tx_depth` frames
    /// in flight per peer, `rx_slots` receives posted per peer (at least 2), `max_peers` up to
    /// 128.
    pub fn new(cfg: &TransportConfig, vcfg: &VerbsConfig) -> Result<Self, TransportError> {
        cfg.validate()?;
        if cfg.max_peers > MAX_PEERS {
            return Err(TransportError::Config(
                "the verbs transport has at most 128 peers",
            ));
        }
        if (cfg.rx_slots as u32) < MIN_WINDOW || cfg.rx_slots > 1 << 16 {
            return Err(TransportError::Config(
                "the verbs transport needs rx_slots in 2..=65536",
            ));
        }
        let verbs = Verbs::load().map_err(|e| verbs_err("loading libibverbs", e))?;
        let ctx = verbs
            .open(&vcfg.device)
            .map_err(|e| verbs_err("opening the RDMA device", e))?;
        let port = ctx
            .active_port(PORT)
            .map_err(|e| verbs_err("querying the RDMA port", e))?;
        let (gid_index, gid) = ctx
            .pick_gid(PORT, &port)
            .map_err(|e| verbs_err("choosing a GID", e))?;
        let pd = ctx
            .alloc_pd()
            .map_err(|e| verbs_err("allocating a protection domain", e))?;
        let channel = ctx
            .comp_channel()
            .map_err(|e| verbs_err("creating a completion channel", e))?;
        set_nonblocking(channel.fd())?;
        let per_peer = cfg.tx_depth + cfg.rx_slots + cfg.rx_slots / 2 + 4;
        let entries = u32::try_from(per_peer * cfg.max_peers).unwrap_or(u32::MAX);
        let cq = ctx
            .create_cq(entries, Some(&channel))
            .map_err(|e| verbs_err("creating the completion queue", e))?;
        let peers = (0..cfg.max_peers).map(|_| None).collect();
        Ok(VerbsTransport {
            cfg: cfg.clone(),
            dev: Device {
                cq,
                channel,
                pd,
                ctx,
                port,
                gid_index,
                gid: gid.raw,
            },
            peers,
            gens: vec![0; cfg.max_peers],
            pending: VecDeque::with_capacity(cfg.max_peers * (cfg.tx_depth + 2) + MAX_WATCHED),
            watched: Vec::with_capacity(MAX_WATCHED),
            pollfds: Vec::with_capacity(1 + MAX_WATCHED + cfg.max_peers),
            wc: [IbvWc::default(); WC_BATCH],
            stashed: 0,
            checked_at: Instant::now(),
            stats: Arc::new(TransportStats::new(cfg.max_peers)),
        })
    }

    fn slot_of(&self, id: PeerId) -> Option<usize> {
        self.peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.id == id && !p.down))
    }

    /// Marks `slot` down with `reason` (once): its queue pair goes to the error state (no more
    /// transfers into its slots), `PeerDown` is queued, and the slot is freed when the caller
    /// holds none of its receive slots.
    fn fail(&mut self, slot: usize, reason: DownReason) {
        let Some(p) = self.peers[slot].as_mut() else {
            return;
        };
        if p.down {
            return;
        }
        p.down = true;
        if let Err(e) = p.qp.to_err() {
            eprintln!(
                "ssi-dp: verbs: moving the queue pair of peer {} to error: {e}",
                p.id
            );
        }
        self.stats.peers_down.fetch_add(1, Relaxed);
        self.pending
            .push_back(Event::PeerDown { peer: p.id, reason });
        self.maybe_free(slot);
    }

    /// Drops a peer that never came up (a failed `add_peer`): completions its queue pair may
    /// have left in the queue carry the old generation.
    fn discard(&mut self, slot: usize) {
        self.peers[slot] = None;
        self.gens[slot] = self.gens[slot].wrapping_add(1);
    }

    fn maybe_free(&mut self, slot: usize) {
        if self.peers[slot]
            .as_ref()
            .is_some_and(|p| p.down && p.held == 0)
        {
            self.peers[slot] = None;
            self.gens[slot] = self.gens[slot].wrapping_add(1);
        }
    }

    fn post_recv(&mut self, slot: usize, rx: usize) -> Result<(), VerbsError> {
        let p = self.peers[slot].as_mut().expect("a live peer");
        let mut sge = IbvSge {
            addr: p.rx.as_ptr() as u64 + (rx * SLOT_BYTES) as u64,
            length: SLOT_BYTES as u32,
            lkey: p.rx_mr.lkey(),
        };
        let mut wr = IbvRecvWr {
            wr_id: wr_id(slot, p.gen, KIND_RECV, rx),
            sg_list: &mut sge,
            num_sge: 1,
            ..Default::default()
        };
        // SAFETY: the slot is inside the registered receive region, which outlives the queue
        // pair (dropped after it), and nothing reads it until its completion.
        unsafe { p.qp.post_recv(&mut wr) }
    }

    /// Handles one completion.
    fn complete<F: FnMut(Event)>(&mut self, wc: IbvWc, out: &mut F) -> usize {
        let (slot, gen, kind, index) = wr_parts(wc.wr_id);
        let live = self
            .peers
            .get(slot)
            .and_then(|p| p.as_ref())
            .is_some_and(|p| p.gen == gen);
        if !live {
            return 0; // a completion of a queue pair already torn down
        }
        if wc.status != IBV_WC_SUCCESS {
            let down = self.peers[slot].as_ref().is_some_and(|p| p.down);
            if !down {
                self.stats.cq_errors.fetch_add(1, Relaxed);
                self.fail(slot, DownReason::Io(libc::EIO));
            }
            if let Some(p) = self.peers[slot].as_mut() {
                if kind != KIND_RECV {
                    p.sq_used -= 1;
                    p.posted_at.pop_front();
                }
                if kind == KIND_DATA {
                    p.tx_free.push(index as u32);
                }
            }
            return 0;
        }
        match kind {
            KIND_DATA | KIND_CREDIT => {
                let p = self.peers[slot].as_mut().expect("live");
                p.sq_used -= 1;
                p.posted_at.pop_front();
                if kind == KIND_DATA {
                    p.tx_free.push(index as u32);
                }
                0
            }
            _ => self.received(slot, index, &wc, out),
        }
    }

    fn received<F: FnMut(Event)>(
        &mut self,
        slot: usize,
        rx: usize,
        wc: &IbvWc,
        out: &mut F,
    ) -> usize {
        if wc.opcode & IBV_WC_RECV == 0 || wc.wc_flags & IBV_WC_WITH_IMM == 0 {
            self.fail(slot, DownReason::Io(libc::EPROTO));
            return 0;
        }
        let p = self.peers[slot].as_mut().expect("live");
        if p.down {
            return 0;
        }
        if !p.credits.on_receive(u32::from_be(wc.imm_data)) {
            self.fail(slot, DownReason::Io(libc::EPROTO));
            return 0;
        }
        let len = wc.byte_len as usize;
        if len == 0 {
            // A credit-only message: its receive goes back at once.
            return match self.post_recv(slot, rx) {
                Ok(()) => {
                    self.peers[slot].as_mut().expect("live").credits.reposted(1);
                    0
                }
                Err(_) => {
                    self.fail(slot, DownReason::Io(libc::EIO));
                    0
                }
            };
        }
        match self.open_frame(slot, rx, len) {
            Ok(header) => {
                let p = self.peers[slot].as_mut().expect("live");
                let (id, plen) = (p.id, header.payload_len);
                self.stats.per_slot[slot].rx_frames.fetch_add(1, Relaxed);
                let payload = if plen == 0 {
                    if self.post_recv(slot, rx).is_err() {
                        self.fail(slot, DownReason::Io(libc::EIO));
                        return 0;
                    }
                    self.peers[slot].as_mut().expect("live").credits.reposted(1);
                    None
                } else {
                    p.held += 1;
                    Some(RxBuf::from_parts(
                        RXBUF_MARK | ((slot as u32) << 24) | rx as u32,
                        plen,
                    ))
                };
                out(Event::Received {
                    peer: id,
                    header,
                    payload,
                });
                1
            }
            Err(e) => {
                self.stats.reject(slot, &e);
                self.fail(slot, DownReason::Protocol(e));
                0
            }
        }
    }

    /// Checks the frame in receive slot `rx` of `slot` (`len` bytes); in `Aead` mode decrypts
    /// its payload in place.
    fn open_frame(&mut self, slot: usize, rx: usize, len: usize) -> Result<Header, FrameError> {
        let p = self.peers[slot].as_mut().expect("live");
        let base = rx * SLOT_BYTES;
        let frame = p.rx.slice_mut(base, SLOT_BYTES).expect("slot in region");
        if len < HEADER_LEN + TAG_LEN {
            return Err(FrameError::Oversized(len as u32));
        }
        let hb: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header bytes");
        let header = Header::decode(&hb)?;
        header.validate()?;
        if header.payload_len as usize != len - HEADER_LEN - TAG_LEN {
            return Err(FrameError::BadPayloadLen {
                ty: header.ty,
                len: header.payload_len,
            });
        }
        if let Some(n) = p.node {
            if header.sender != n {
                return Err(FrameError::WrongSender {
                    expected: n,
                    got: header.sender,
                });
            }
        }
        let tag: [u8; TAG_LEN] = frame[HEADER_LEN..HEADER_LEN + TAG_LEN]
            .try_into()
            .expect("tag bytes");
        let payload = &mut frame[HEADER_LEN + TAG_LEN..len];
        if let Some(o) = p.opener.as_mut() {
            if !o.open(&hb, &tag, payload) {
                return Err(FrameError::Unauthenticated);
            }
        }
        Ok(header)
    }

    /// Looks at every live peer's TCP connection (EOF or an error is the peer's end) and at
    /// its oldest outstanding send ([`SEND_TIMEOUT`]).
    fn check_streams(&mut self) {
        for slot in 0..self.peers.len() {
            let verdict = match self.peers[slot].as_mut() {
                Some(p) if !p.down => stream_state(&mut p.stream).or_else(|| {
                    p.posted_at
                        .front()
                        .filter(|t| t.elapsed() > SEND_TIMEOUT)
                        .map(|_| DownReason::Io(libc::ETIMEDOUT))
                }),
                _ => None,
            };
            if let Some(reason) = verdict {
                self.fail(slot, reason);
            }
        }
        self.checked_at = Instant::now();
    }

    fn post_send(
        &mut self,
        slot: usize,
        kind: u64,
        tx: u32,
        len: u32,
        imm: u32,
    ) -> Result<(), VerbsError> {
        let p = self.peers[slot].as_mut().expect("live");
        let mut sge = IbvSge {
            addr: p.tx.as_ptr() as u64 + (tx as usize * SLOT_BYTES) as u64,
            length: len,
            lkey: p.tx_mr.lkey(),
        };
        let mut wr = IbvSendWr {
            wr_id: wr_id(slot, p.gen, kind, tx as usize),
            sg_list: &mut sge,
            num_sge: if len == 0 { 0 } else { 1 },
            opcode: IBV_WR_SEND_WITH_IMM,
            send_flags: IBV_SEND_SIGNALED,
            imm_data: imm.to_be(),
            ..Default::default()
        };
        // SAFETY: the element is inside the registered transmit region, which outlives the
        // queue pair, and the slot is not reused before the request's completion.
        unsafe { p.qp.post_send(&mut wr) }?;
        p.sq_used += 1;
        p.posted_at.push_back(Instant::now());
        Ok(())
    }

    /// Posts what credits allow for `slot`, and a credit report when one is due.
    fn flush_peer(&mut self, slot: usize) -> Result<(), VerbsError> {
        loop {
            let p = self.peers[slot].as_mut().expect("live");
            let Some(&(tx, len)) = p.queued.front() else {
                break;
            };
            if !p.credits.can_send_data() || p.sq_used >= p.sq_cap {
                break;
            }
            let imm = p.credits.send_data();
            p.queued.pop_front();
            self.post_send(slot, KIND_DATA, tx, len, imm)?;
            self.stats.per_slot[slot].tx_frames.fetch_add(1, Relaxed);
        }
        let p = self.peers[slot].as_mut().expect("live");
        if p.credits.report_due() && p.sq_used < p.sq_cap {
            let imm = p.credits.send_report();
            self.post_send(slot, KIND_CREDIT, 0, 0, imm)?;
        }
        Ok(())
    }
}

impl VerbsTransport {
    /// Gets ready for a sleep that ends at the next completion (what `wait` does before it
    /// sleeps, for a caller that sleeps elsewhere with [`VerbsTransport::channel_fd`] watched):
    /// flushes, arms the completion queue, and looks at it once more. Returns false when
    /// there is work already (events or completions for `poll`): do not sleep then.
    pub fn prepare_sleep(&mut self) -> Result<bool, TransportError> {
        self.flush()?;
        if !self.pending.is_empty() || self.stashed > 0 {
            return Ok(false);
        }
        self.dev
            .cq
            .arm()
            .map_err(|e| verbs_err("arming the completion queue", e))?;
        // A completion that came before the arm raises no event: look once more.
        let got = self
            .dev
            .cq
            .poll(&mut self.wc)
            .map_err(|e| verbs_err("polling the completion queue", e))?;
        self.stashed = got;
        Ok(got == 0)
    }

    /// The completion channel's fd: readable once an armed completion queue has an entry.
    pub fn channel_fd(&self) -> RawFd {
        self.dev.channel.fd()
    }

    /// Takes (and acknowledges) the channel's event after `channel_fd` was readable; the
    /// completions themselves are taken by `poll`.
    pub fn take_channel_event(&mut self) -> Result<(), TransportError> {
        self.dev
            .channel
            .take_event(&self.dev.cq)
            .map(|_| ())
            .map_err(|e| verbs_err("taking a completion event", e))
    }
}

/// What a peer's TCP connection says: `None` while it is open and quiet.
fn stream_state(s: &mut TcpStream) -> Option<DownReason> {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => Some(DownReason::Closed),
        // Nothing is sent on it after the exchange: bytes are a broken peer.
        Ok(_) => Some(DownReason::Io(libc::EPROTO)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
        Err(e) => Some(DownReason::Io(e.raw_os_error().unwrap_or(libc::EIO))),
    }
}

fn set_nonblocking(fd: RawFd) -> Result<(), TransportError> {
    // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(TransportError::last_os("fcntl(F_GETFL)"));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(TransportError::last_os("fcntl(F_SETFL, O_NONBLOCK)"));
    }
    Ok(())
}

impl Transport for VerbsTransport {
    fn name(&self) -> &'static str {
        "verbs"
    }

    fn add_peer(
        &mut self,
        _peer: PeerId,
        _stream: TcpStream,
        _node: Option<NodeId>,
        _keys: &FrameKeys,
    ) -> Result<(), TransportError> {
        Err(TransportError::Config(
            "the peer did not offer RDMA verbs in its handshake: with --transport verbs, every \
             node must use verbs",
        ))
    }

    fn offers_verbs(&self) -> bool {
        true
    }

    fn add_peer_verbs(
        &mut self,
        peer: PeerId,
        mut stream: TcpStream,
        node: Option<NodeId>,
        keys: &FrameKeys,
    ) -> Result<(), TransportError> {
        if self.slot_of(peer).is_some() || self.peers.iter().flatten().any(|p| p.id == peer) {
            return Err(TransportError::PeerExists(peer));
        }
        let slot = self
            .peers
            .iter()
            .position(Option::is_none)
            .ok_or(TransportError::TooManyPeers(self.cfg.max_peers))?;
        let (rx_n, tx_n) = (self.cfg.rx_slots, self.cfg.tx_depth);
        let rx = PageRegion::new(rx_n * SLOT_BYTES)
            .map_err(|e| TransportError::io("mapping receive slots", e))?;
        let tx = PageRegion::new(tx_n * SLOT_BYTES)
            .map_err(|e| TransportError::io("mapping transmit slots", e))?;
        // SAFETY: the regions outlive the registrations (a `Peer` drops its queue pair, then
        // its registrations, then its regions).
        let rx_mr = unsafe {
            self.dev
                .pd
                .reg_mr(rx.as_ptr(), rx.len(), IBV_ACCESS_LOCAL_WRITE)
        }
        .map_err(|e| verbs_err("registering receive slots", e))?;
        // SAFETY: as above.
        let tx_mr = unsafe {
            self.dev
                .pd
                .reg_mr(tx.as_ptr(), tx.len(), IBV_ACCESS_LOCAL_WRITE)
        }
        .map_err(|e| verbs_err("registering transmit slots", e))?;
        let sq_cap = (tx_n + rx_n / 2 + 2) as u32;
        let cap = IbvQpCap {
            max_send_wr: sq_cap,
            max_recv_wr: rx_n as u32,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let mut qp = self
            .dev
            .pd
            .create_rc_qp(&self.dev.cq, &self.dev.cq, cap)
            .map_err(|e| verbs_err("creating a queue pair", e))?;
        qp.to_init(PORT, IBV_ACCESS_LOCAL_WRITE)
            .map_err(|e| verbs_err("initialising the queue pair", e))?;
        let seal = |e: wire::seal::SealError| TransportError::Seal(e);
        let mut sealer = keys.sealer().map_err(seal)?;
        let mut opener = keys.opener().map_err(seal)?;
        let psn = (peer.wrapping_mul(0x9e37_79b9) ^ std::process::id()) & 0xff_ffff;
        let ours = EndpointMsg {
            mtu: self.dev.port.active_mtu as u8,
            qpn: qp.qpn(),
            psn,
            lid: self.dev.port.lid,
            gid: self.dev.gid,
            rx_slots: rx_n as u32,
            rx_slot_size: SLOT_BYTES as u32,
            rkey: 0,
            addr: 0,
            len: 0,
        };
        let gen = self.gens[slot];
        self.peers[slot] = Some(Peer {
            id: peer,
            node,
            gen,
            qp,
            rx_mr,
            tx_mr,
            rx,
            tx,
            stream: stream
                .try_clone()
                .map_err(|e| TransportError::io("dup", e))?,
            sealer: None,
            opener: None,
            credits: Credits::new(rx_n as u32, MIN_WINDOW),
            tx_free: (0..tx_n as u32).rev().collect(),
            queued: VecDeque::with_capacity(tx_n),
            sq_used: 0,
            posted_at: VecDeque::with_capacity(sq_cap as usize),
            sq_cap,
            held: 0,
            down: false,
        });
        // Receives are posted before the peer learns of the queue pair.
        for i in 0..rx_n {
            if let Err(e) = self.post_recv(slot, i) {
                self.discard(slot);
                return Err(verbs_err("posting receives", e));
            }
        }
        let theirs = match exchange_sealed(
            &mut stream,
            sealer.as_mut(),
            opener.as_mut(),
            &ours,
            EXCHANGE_TIMEOUT,
        ) {
            Ok(t) if t.rx_slot_size as usize >= SLOT_BYTES => t,
            Ok(t) => {
                self.discard(slot);
                return Err(TransportError::io(
                    "the endpoint exchange",
                    io::Error::other(format!(
                        "the peer's receive slots hold {} bytes, a frame needs {SLOT_BYTES}",
                        t.rx_slot_size
                    )),
                ));
            }
            Err(e) => {
                self.discard(slot);
                return Err(TransportError::io(
                    "the endpoint exchange",
                    io::Error::other(e.to_string()),
                ));
            }
        };
        let roce = self.dev.port.link_layer == IBV_LINK_LAYER_ETHERNET;
        let ep = Endpoint {
            qpn: theirs.qpn,
            psn: theirs.psn,
            gid: theirs.gid,
            lid: theirs.lid,
        };
        let mtu = u32::from(theirs.mtu).min(self.dev.port.active_mtu);
        let p = self.peers[slot].as_mut().expect("just set");
        let connected =
            p.qp.to_rtr(&ep, PORT, mtu, self.dev.gid_index, roce)
                .and_then(|()| p.qp.to_rts(psn));
        if let Err(e) = connected {
            self.discard(slot);
            return Err(verbs_err("connecting the queue pair", e));
        }
        p.credits = Credits::new(rx_n as u32, theirs.rx_slots);
        p.sealer = sealer;
        p.opener = opener;
        p.stream
            .set_nonblocking(true)
            .map_err(|e| TransportError::io("making the peer connection non-blocking", e))?;
        self.stats.open_slot(slot, peer);
        Ok(())
    }

    fn close_peer(&mut self, peer: PeerId) -> Result<(), TransportError> {
        let Some(slot) = self.slot_of(peer) else {
            let going = self.peers.iter().flatten().any(|p| p.id == peer);
            return Err(if going {
                TransportError::PeerClosing(peer)
            } else {
                TransportError::UnknownPeer(peer)
            });
        };
        self.fail(slot, DownReason::Local);
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
        let slot = self
            .slot_of(peer)
            .ok_or(TransportError::UnknownPeer(peer))?;
        let p = self.peers[slot].as_mut().expect("live");
        let Some(tx) = p.tx_free.pop() else {
            self.stats.backpressure.fetch_add(1, Relaxed);
            return Ok(SendOutcome::Backpressure);
        };
        let frame =
            p.tx.slice_mut(tx as usize * SLOT_BYTES, SLOT_BYTES)
                .expect("slot in region");
        let mut hb = [0u8; HEADER_LEN];
        header.encode(&mut hb);
        frame[..HEADER_LEN].copy_from_slice(&hb);
        let body = &mut frame[HEADER_LEN + TAG_LEN..HEADER_LEN + TAG_LEN + payload.len()];
        match payload {
            Payload::None => {}
            Payload::Copy(b) => body.copy_from_slice(b),
            Payload::Page(r) => {
                // SAFETY: `PageRef`'s contract: readable and unchanged until this returns
                // (the copy is the send's only read of it).
                body.copy_from_slice(unsafe {
                    std::slice::from_raw_parts(r.addr() as *const u8, r.len())
                });
            }
        }
        if let Some(s) = p.sealer.as_mut() {
            match s.seal_owned(&hb, body) {
                Ok(tag) => frame[HEADER_LEN..HEADER_LEN + TAG_LEN].copy_from_slice(&tag),
                Err(e) => {
                    p.tx_free.push(tx);
                    return Err(TransportError::Seal(e));
                }
            }
        }
        let len = (HEADER_LEN + TAG_LEN + payload.len()) as u32;
        p.queued.push_back((tx, len));
        if matches!(payload, Payload::Page(_)) {
            self.pending.push_back(Event::SendDone { peer, token });
        }
        Ok(SendOutcome::Queued)
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        for slot in 0..self.peers.len() {
            if self.peers[slot].as_ref().is_some_and(|p| !p.down) && self.flush_peer(slot).is_err()
            {
                self.fail(slot, DownReason::Io(libc::EIO));
            }
        }
        Ok(())
    }

    fn poll<F: FnMut(Event)>(&mut self, mut out: F) -> Result<usize, TransportError> {
        let budget = self.cfg.poll_budget;
        let mut n = 0;
        if self.checked_at.elapsed() >= LIVENESS_CHECK {
            self.check_streams();
        }
        while n < budget {
            let Some(e) = self.pending.pop_front() else {
                break;
            };
            out(e);
            n += 1;
        }
        while n < budget {
            let got = if self.stashed > 0 {
                std::mem::take(&mut self.stashed)
            } else {
                let want = (budget - n).min(WC_BATCH);
                self.dev
                    .cq
                    .poll(&mut self.wc[..want])
                    .map_err(|e| verbs_err("polling the completion queue", e))?
            };
            if got == 0 {
                break;
            }
            for i in 0..got {
                let wc = self.wc[i];
                n += self.complete(wc, &mut out);
            }
            // Peers that went down meanwhile.
            while let Some(e) = self.pending.pop_front() {
                out(e);
                n += 1;
            }
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if !self.prepare_sleep()? {
            return Ok(());
        }
        self.pollfds.clear();
        let ev = libc::POLLIN;
        self.pollfds.push(libc::pollfd {
            fd: self.dev.channel.fd(),
            events: ev,
            revents: 0,
        });
        for &(fd, _) in &self.watched {
            self.pollfds.push(libc::pollfd {
                fd,
                events: ev,
                revents: 0,
            });
        }
        for p in self.peers.iter().flatten().filter(|p| !p.down) {
            self.pollfds.push(libc::pollfd {
                fd: p.stream.as_raw_fd(),
                events: ev | libc::POLLRDHUP,
                revents: 0,
            });
        }
        // Outstanding sends are timed by `check_streams`: wake for it.
        let outstanding = self.peers.iter().flatten().any(|p| !p.posted_at.is_empty());
        let timeout = match timeout {
            Some(t) if outstanding => Some(t.min(Duration::from_secs(1))),
            None if outstanding => Some(Duration::from_secs(1)),
            t => t,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: `pollfds` holds `len` initialised entries for the call's duration.
        let rc = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                ms,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(TransportError::io("poll", e));
        }
        if self.pollfds[0].revents != 0 {
            self.take_channel_event()?;
        }
        for i in 0..self.watched.len() {
            if self.pollfds[1 + i].revents != 0 {
                let token = self.watched[i].1;
                self.pending.push_back(Event::FdReady { token });
            }
        }
        if outstanding
            || self.pollfds[1 + self.watched.len()..]
                .iter()
                .any(|p| p.revents != 0)
        {
            self.check_streams();
        }
        Ok(())
    }

    fn watch_fd(&mut self, fd: RawFd, token: u64) -> Result<(), TransportError> {
        if self.watched.len() >= MAX_WATCHED {
            return Err(TransportError::Config(
                "the verbs transport watches at most 8 fds",
            ));
        }
        self.watched.push((fd, token));
        Ok(())
    }

    fn payload(&self, buf: &RxBuf) -> &[u8] {
        let (slot, rx) = (
            ((buf.index() & !RXBUF_MARK) >> 24) as usize,
            (buf.index() & 0xff_ffff) as usize,
        );
        match self.peers.get(slot).and_then(|p| p.as_ref()) {
            Some(p) => {
                p.rx.slice(rx * SLOT_BYTES + HEADER_LEN + TAG_LEN, buf.len())
                    .unwrap_or(&[])
            }
            None => &[],
        }
    }

    fn release(&mut self, buf: RxBuf) {
        let (slot, rx) = (
            ((buf.index() & !RXBUF_MARK) >> 24) as usize,
            (buf.index() & 0xff_ffff) as usize,
        );
        let Some(p) = self.peers.get_mut(slot).and_then(|p| p.as_mut()) else {
            return;
        };
        if p.held == 0 {
            return;
        }
        p.held -= 1;
        if p.down {
            self.maybe_free(slot);
            return;
        }
        match self.post_recv(slot, rx) {
            Ok(()) => self.peers[slot].as_mut().expect("live").credits.reposted(1),
            Err(_) => self.fail(slot, DownReason::Io(libc::EIO)),
        }
    }

    fn stats(&self) -> &Arc<TransportStats> {
        &self.stats
    }
}
