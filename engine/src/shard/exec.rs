//! Carrying out the protocol machine's actions on this node: installs through the
//! userfaultfd, write-protect and drop of local copies, wake-ups, and sends through the
//! peer's session (which keeps every frame until the peer acknowledges it, and frames the
//! transport refuses with backpressure until it has room).

use std::sync::Arc;

use uffd_poller::{CopyMode, FillOutcome, OpError, UnprotectMode, WpOutcome, ZeropageMode};
use wire::ratelimit::LogLimiter;
use wire::{MsgType, RxBuf, Transport};

use super::route::PeerShards;
use super::session::{SendError, Sessions};
use super::trace::Tracer;
use crate::clock::Clock;
use crate::node_state::{NodeState, StopReason};
use crate::region::{Region, ZERO_PAGE};
use crate::stats::{add, bump, FaultKind, Locality, ShardStats};
use coherence::{
    Action, Actions, DataSource, FailReason, InstallSource, Layout, Msg, NodeId, NodeSet,
};

/// How often a transient `EAGAIN` from an ioctl is retried before it is reported.
const IOCTL_RETRIES: u32 = 10_000;
/// Most write-protects (and as many sends) held back at once (see [`Deferred`]).
pub(crate) const DEFER_MAX: usize = 64;

/// Write-protects and sends of local contents held back while the shard executes the steps
/// of one transport poll batch, so that the write-protects of neighbouring pages become one
/// ioctl: a home answering a run of read requests (a prefetch window) write-protects its
/// copies once instead of once per page.
///
/// Order is what makes this safe. A held-back send of a page's local contents copies the
/// page only after every held-back write-protect ran, so it never misses a write the
/// protection would have trapped (a write that lands before the protection is simply
/// ordered before the read it is answered to). Any other action first runs everything held
/// back, in order, so frames leave in the order the protocol produced them and no page is
/// dropped, installed or woken before its earlier actions ran. The shard runs what is held
/// back at the end of every poll batch.
#[derive(Debug)]
pub(crate) struct Deferred {
    /// Whether actions may be held back now (during a poll batch).
    pub(crate) on: bool,
    wp: Vec<u64>,
    sends: Vec<(NodeId, Msg)>,
}

impl Default for Deferred {
    fn default() -> Self {
        Deferred {
            on: false,
            wp: Vec::with_capacity(DEFER_MAX),
            sends: Vec::with_capacity(DEFER_MAX),
        }
    }
}

/// What the actions of one step asked of the shard beyond what `Io` did itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct Aftermath {
    /// Nodes whose session could not take a send: declare them down.
    pub down: NodeSet,
    /// The protocol stopped (a home died, or the instance overflowed).
    pub fatal: Option<coherence::FatalReason>,
}

/// The shard's means of acting on the world.
pub struct Io<T: Transport> {
    pub(crate) me: NodeId,
    /// Declared before `sessions`, so dropped first: page copies the sessions hold may be in
    /// the transport's sends until then.
    pub(crate) transport: T,
    pub(crate) region: Arc<Region>,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) sessions: Sessions,
    pub(crate) peers: PeerShards,
    pub(crate) layout: Layout,
    pub(crate) log: LogLimiter,
    pub(crate) state: Arc<NodeState>,
    pub(crate) tracer: Option<Tracer>,
    /// What is held back during a poll batch.
    pub(crate) deferred: Deferred,
    /// Where the protocol's time comes from.
    pub clock: Clock,
}

impl<T: Transport> std::fmt::Debug for Io<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("me", &self.me)
            .field("transport", &self.transport.name())
            .finish()
    }
}

impl<T: Transport> Io<T> {
    /// Executes `actions` in order. `payload` is the received buffer of the message the step
    /// processed, if it had one; `machine` (after the step) says which pages are homed here.
    pub fn execute(
        &mut self,
        actions: &Actions,
        payload: Option<&RxBuf>,
        machine: &coherence::Machine,
    ) -> Aftermath {
        let mut after = Aftermath::default();
        for a in actions {
            if self.deferred.on && self.defer(a, &mut after) {
                continue;
            }
            match *a {
                Action::Send { to, msg, data } => self.send(to, msg, data, &mut after),
                Action::Install {
                    page,
                    writable,
                    source,
                } => self.install(page, writable, source, payload),
                Action::MakeWritable { page } => self.make_writable(page),
                Action::WriteProtect { page } => self.write_protect(page),
                Action::Drop { page } => {
                    bump(&self.stats.drops);
                    if let Err(e) = self.region.discard(page) {
                        self.log.warn(format_args!("cannot drop page {page}: {e}"));
                        self.memory_op_failed("drop", page);
                    }
                }
                Action::Wake { page } => self.wake(page),
                Action::FaultDone { page, token } => {
                    let kind = FaultKind::from_bits(token);
                    let loc = if machine.is_home(page) {
                        Locality::Home
                    } else {
                        Locality::Remote
                    };
                    let ns = self.clock.now().saturating_sub(token >> 2);
                    self.stats.served(kind, loc, ns);
                    if let Some(t) = &mut self.tracer {
                        t.fault_done(page, token >> 2);
                    }
                }
                Action::FaultFailed { page, reason, .. } => self.fail_page(page, reason),
                Action::PageLost { page } => {
                    bump(&self.stats.pages_lost);
                    self.log.warn(format_args!(
                        "page {page} is lost: its only copy was on a node that died; \
                         a node whose thread touches it stops"
                    ));
                }
                Action::ClusterFatal { reason } => after.fatal = Some(reason),
            }
        }
        after
    }

    /// Holds `a` back if it is a write-protect, or a send of local contents behind one;
    /// otherwise runs what is held back (so that `a` runs after it). Returns whether `a` was
    /// held back.
    fn defer(&mut self, a: &Action, after: &mut Aftermath) -> bool {
        let held = match *a {
            Action::WriteProtect { page } => {
                if self.deferred.wp.len() >= DEFER_MAX {
                    self.run_deferred(after);
                }
                self.deferred.wp.push(page);
                true
            }
            Action::Send {
                to,
                msg,
                data: Some(DataSource::Local),
            } if !self.deferred.wp.is_empty() && self.deferred.sends.len() < DEFER_MAX => {
                self.deferred.sends.push((to, msg));
                true
            }
            _ => false,
        };
        if !held {
            self.run_deferred(after);
        }
        held
    }

    /// Runs what is held back: the write-protects, neighbouring pages in one ioctl, then the
    /// sends in the order the protocol produced them.
    pub(crate) fn run_deferred(&mut self, after: &mut Aftermath) {
        if self.deferred.wp.is_empty() && self.deferred.sends.is_empty() {
            return;
        }
        // Taken out and put back: the vectors keep their capacity, nothing is allocated.
        let mut wp = std::mem::take(&mut self.deferred.wp);
        wp.sort_unstable();
        wp.dedup();
        let mut i = 0;
        while i < wp.len() {
            let mut n = 1;
            while i + n < wp.len() && wp[i + n] == wp[i] + n as u64 {
                n += 1;
            }
            self.write_protect_run(wp[i], n as u64);
            i += n;
        }
        wp.clear();
        self.deferred.wp = wp;
        let mut sends = std::mem::take(&mut self.deferred.sends);
        for &(to, msg) in &sends {
            self.send(to, msg, Some(DataSource::Local), after);
        }
        sends.clear();
        self.deferred.sends = sends;
    }

    fn addr(&self, page: u64) -> usize {
        self.region.page_addr(page)
    }

    fn install(
        &mut self,
        page: u64,
        writable: bool,
        source: InstallSource,
        payload: Option<&RxBuf>,
    ) {
        let dst = self.addr(page);
        let uffd = self.region.uffd_of(page);
        let mode = if writable {
            CopyMode::empty()
        } else {
            CopyMode::WP
        };
        let mut tries = 0;
        loop {
            let r = match source {
                InstallSource::Payload => match payload {
                    Some(buf) => {
                        bump(&self.stats.installs_data);
                        uffd.copy(dst, self.transport.payload(buf), mode)
                    }
                    None => {
                        bump(&self.stats.violations);
                        self.log.warn(format_args!(
                            "install of page {page} from a message without a payload: protocol bug"
                        ));
                        return;
                    }
                },
                InstallSource::Zero if writable => {
                    bump(&self.stats.installs_zero);
                    uffd.zeropage(dst, ZERO_PAGE.0.len(), ZeropageMode::empty())
                }
                InstallSource::Zero => {
                    bump(&self.stats.installs_zero);
                    uffd.copy(dst, &ZERO_PAGE.0, mode)
                }
            };
            match r {
                Ok(FillOutcome::Filled(_)) => return,
                Ok(FillOutcome::AlreadyMapped) => {
                    // The protocol unmaps before every install, so this means a thread or the
                    // kernel mapped it behind our back: wake the waiters so they re-check.
                    bump(&self.stats.installs_exist);
                    self.log
                        .warn(format_args!("page {page} was already mapped at install"));
                    self.wake(page);
                    return;
                }
                Ok(FillOutcome::Retry) | Ok(FillOutcome::Partial(_)) if tries < IOCTL_RETRIES => {
                    tries += 1;
                    std::hint::spin_loop();
                }
                Ok(other) => {
                    self.log.warn(format_args!(
                        "install of page {page} did not complete after {tries} retries: \
                         {other:?}"
                    ));
                    self.memory_op_failed("install", page);
                    return;
                }
                Err(e) => {
                    self.ioctl_failed("install", page, &e);
                    return;
                }
            }
        }
    }

    fn make_writable(&mut self, page: u64) {
        bump(&self.stats.make_writable);
        let addr = self.addr(page);
        for _ in 0..IOCTL_RETRIES {
            match self.region.uffd_of(page).write_unprotect(
                addr,
                ZERO_PAGE.0.len(),
                UnprotectMode::empty(),
            ) {
                Ok(WpOutcome::Done) => return,
                Ok(WpOutcome::Retry) => std::hint::spin_loop(),
                Err(e) => return self.ioctl_failed("write-unprotect", page, &e),
            }
        }
        self.still_busy("write-unprotect", page);
    }

    fn write_protect(&mut self, page: u64) {
        self.write_protect_run(page, 1);
    }

    /// Write-protects `count` pages from `page` with one ioctl.
    fn write_protect_run(&mut self, page: u64, count: u64) {
        add(&self.stats.write_protects, count);
        let addr = self.addr(page);
        let len = ZERO_PAGE.0.len() * count as usize;
        for _ in 0..IOCTL_RETRIES {
            match self.region.uffd_of(page).write_protect(addr, len) {
                Ok(WpOutcome::Done) => return,
                Ok(WpOutcome::Retry) => std::hint::spin_loop(),
                Err(e) => return self.ioctl_failed("write-protect", page, &e),
            }
        }
        self.still_busy("write-protect", page);
    }

    fn wake(&mut self, page: u64) {
        if let Err(e) = self
            .region
            .uffd_of(page)
            .wake(self.addr(page), ZERO_PAGE.0.len())
        {
            self.ioctl_failed("wake", page, &e);
        }
    }

    /// A fault on `page` cannot be served. The faulting thread is left waiting, never woken
    /// into a SIGBUS: the node records why it stopped ([`crate::node_state::StopReason`]) and
    /// the process that runs it reports that and exits, which ends the thread. (A POISONed
    /// page would kill the process by signal before it could say why.)
    fn fail_page(&mut self, page: u64, reason: FailReason) {
        if reason == FailReason::ClusterDown && self.state.departures_expected() {
            // An orderly end: the node is about to exit.
            return;
        }
        bump(&self.stats.faults_failed);
        match reason {
            FailReason::Lost => {
                self.state.set_fatal(StopReason::PageLost { page });
                self.log.warn(format_args!(
                    "fault on page {page} failed: the page is lost (its only copy was on a \
                     node that died); this node stops"
                ));
            }
            FailReason::ClusterDown => self.log.warn(format_args!(
                "fault on page {page} failed: the cluster stopped (a home node died)"
            )),
        }
    }

    #[cold]
    fn ioctl_failed(&mut self, what: &'static str, page: u64, e: &OpError) {
        self.log
            .warn(format_args!("{what} of page {page} failed: {e}"));
        self.memory_op_failed(what, page);
    }

    #[cold]
    fn still_busy(&mut self, what: &'static str, page: u64) {
        self.log.warn(format_args!(
            "{what} of page {page} was still refused as busy (EAGAIN: the address space was \
             changing) after {IOCTL_RETRIES} tries"
        ));
        self.memory_op_failed(what, page);
    }

    /// A memory operation the protocol relies on did not happen: the page's mapping no longer
    /// matches the protocol's record, so the node stops ([`StopReason::MemoryOp`]); whoever
    /// runs it reports the reason and exits. Once per node: the first failure is the cause.
    #[cold]
    fn memory_op_failed(&mut self, op: &'static str, page: u64) {
        if self.state.fatal().is_none() {
            self.log.warn(format_args!(
                "this node stops: its memory no longer matches its protocol state (page {page})"
            ));
        }
        self.state.set_fatal(StopReason::MemoryOp { op, page });
    }

    fn send(&mut self, to: NodeId, msg: Msg, data: Option<DataSource>, after: &mut Aftermath) {
        let page = msg.page();
        if let Msg::HomeMove { .. } = msg {
            let own = self.layout.home_of(page) == Ok(self.me);
            self.stats.heat.home_left(page, own);
        }
        let Some(peer) = self.peers.route(to, page) else {
            // Not connected (never was, or already down): the machine learns of the death
            // through NodeDead; nothing can be sent.
            after.down.insert(to);
            return;
        };
        let mut h = super::codec::encode(&msg, self.me);
        let ty = h.ty;
        let payload: Option<&[u8]> = match data {
            None => None,
            // SAFETY: the machine sends local contents only of pages this node holds mapped,
            // and the step's later actions (drop, install) run after this copy is taken.
            Some(DataSource::Local) => Some(unsafe { self.region.page_bytes(page) }),
            Some(DataSource::Zero) => Some(&ZERO_PAGE.0),
        };
        h.set_payload_len(payload.map_or(0, |p| p.len() as u32));
        if let Some(t) = &mut self.tracer {
            match ty {
                MsgType::ReadReq | MsgType::WriteReq | MsgType::UpgradeReq => {
                    t.request_queued(page)
                }
                MsgType::Data | MsgType::Grant => t.reply_queued(page),
                _ => {}
            }
        }
        bump(&self.stats.msgs_sent);
        add(&self.stats.bytes_sent, u64::from(h.payload_len));
        match self.sessions.send(&mut self.transport, peer, &h, payload) {
            Ok(true) => {}
            Ok(false) => bump(&self.stats.sends_backlogged),
            Err(SendError::NoSession) => {
                after.down.insert(to);
            }
            Err(e) => {
                // Limits are sized so this cannot happen with a healthy peer; one that does not
                // acknowledge for this long is treated as failed rather than queued without
                // bound.
                self.log.warn(format_args!(
                    "send to node {to}: {e}; treating it as failed"
                ));
                after.down.insert(to);
            }
        }
    }
}
