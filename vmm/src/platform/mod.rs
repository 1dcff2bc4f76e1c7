//! The platform of a Linux guest whose vCPUs run on several nodes: interrupt controllers in
//! userspace (one local APIC per vCPU, one I/O APIC), devices on one node, and the messages
//! that carry interrupts and device accesses between nodes.
//!
//! Every node builds one [`Platform`] for the guest. It knows which node runs each vCPU and
//! which node has the devices (the *device node*). A vCPU thread owns its [`lapic::Lapic`];
//! what other threads (other vCPUs, the link reader, devices) send it goes through its
//! [`Mailbox`]: atomic request bits, then a kick (unpark, and a signal when it is inside
//! `KVM_RUN`). An interrupt for a vCPU on another node, a device access from a node without
//! the devices, a changed logical APIC id and the end of the run travel as [`msg::Msg`]
//! frames through the caller's [`Uplink`]; the caller hands what arrives to
//! [`Platform::on_message`]. The reasoning (why not KVM's in-kernel irqchip, what each piece
//! costs) is in docs/vmm.md, "Interrupts across nodes".

pub mod cpuid;
pub mod devices;
pub mod ioapic;
pub mod lapic;
pub mod msg;
pub mod vcpu_loop;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::Duration;

use crate::console::Console;
use devices::Devices;
use lapic::{DeliveryMode, Destination, Message};
use msg::{Lifecycle, Msg, Space};

/// Sends platform messages to other nodes. Implemented by the node that embeds the VMM
/// (an authenticated TCP connection per pair of nodes).
pub trait Uplink: Send + Sync + std::fmt::Debug {
    /// Sends `msg` to `node`; an error means the node is unreachable (the run then fails).
    fn send(&self, node: u16, msg: &Msg) -> Result<(), UplinkError>;
}

/// Why an [`Uplink`] could not send a message to a node.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// There is no channel to that node: it runs none of this guest's vCPUs and has none of
    /// its devices, so nothing should be sent to it.
    #[error("no guest platform channel to node {0}")]
    NoChannel(u16),
    /// Writing to the node's channel failed (it closed, or stopped reading past the write
    /// timeout).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why the platform could not do something. Messages say what to look at.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Bad placement of vCPUs.
    #[error("invalid platform configuration: {0}")]
    Config(String),
    /// A message for another node could not be sent.
    #[error("cannot reach node {node}: {reason}; the node is down or the network failed")]
    Unreachable {
        /// The node.
        node: u16,
        /// What the link said.
        #[source]
        reason: UplinkError,
    },
    /// The device node did not answer a forwarded access in time.
    #[error(
        "node {node} (which has the devices) did not answer a device access within {secs} s: \
         it is stopped, overloaded or gone"
    )]
    DeviceNodeSilent {
        /// The device node.
        node: u16,
        /// How long we waited.
        secs: u64,
    },
    /// The run ended while waiting.
    #[error("the guest run ended")]
    Ended,
}

/// One device access: a port or MMIO read or write of 1, 2, 4 or 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Port or MMIO.
    pub space: Space,
    /// Port or guest-physical address.
    pub addr: u64,
    /// Bytes.
    pub len: u8,
    /// Write (with `data`) or read.
    pub write: bool,
    /// Value written.
    pub data: u64,
}

/// How long a vCPU waits for the device node to answer a forwarded access.
const IO_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a waiting vCPU sleeps before looking at the stop flags again.
pub(crate) const WAIT_SLICE: Duration = Duration::from_millis(50);

/// The cross-thread inbox of one local vCPU.
#[derive(Debug, Default)]
pub struct Mailbox {
    edge: [AtomicU32; 8],
    level: [AtomicU32; 8],
    nmi: AtomicBool,
    init: AtomicBool,
    /// 0, or 0x100 | start-up vector.
    sipi: AtomicU32,
    reply_seq: AtomicU32,
    reply_data: AtomicU64,
    in_guest: AtomicBool,
    thread: OnceLock<(Thread, u64)>,
    /// Exits of the vCPU so far (its thread publishes the count after each one).
    exits: AtomicU64,
    /// The vCPU's thread has left its loop.
    left: AtomicBool,
    /// The kernel's id of the vCPU's thread (0 until bound), for `/proc/self/task/TID`.
    os_tid: AtomicI32,
}

impl Mailbox {
    /// Binds the mailbox to the calling thread (the vCPU's), so posts wake and kick it.
    pub(crate) fn bind_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let tid = unsafe { libc::pthread_self() } as u64;
        // A mailbox is bound once, by its vCPU's thread; a second bind changes nothing.
        let _ = self.thread.set((std::thread::current(), tid));
        // SAFETY: gettid has no preconditions.
        self.os_tid
            .store(unsafe { libc::gettid() }, Ordering::Relaxed);
    }

    fn post(&self, m: &Message) {
        match m.delivery {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                let (w, bit) = (usize::from(m.vector >> 5), 1u32 << (m.vector & 31));
                let bits = if m.level_triggered {
                    &self.level
                } else {
                    &self.edge
                };
                bits[w].fetch_or(bit, Ordering::SeqCst);
            }
            DeliveryMode::Nmi => self.nmi.store(true, Ordering::SeqCst),
            DeliveryMode::Init => self.init.store(true, Ordering::SeqCst),
            DeliveryMode::StartUp => self
                .sipi
                .store(0x100 | u32::from(m.vector), Ordering::SeqCst),
            DeliveryMode::Smi | DeliveryMode::ExtInt => return,
        }
        self.kick();
    }

    /// Wakes the vCPU thread: unpark (it may be halted or waiting) and, when it is inside
    /// `KVM_RUN`, the kick signal (which makes `KVM_RUN` return).
    pub(crate) fn kick(&self) {
        if let Some((thread, tid)) = self.thread.get() {
            if self.in_guest.load(Ordering::SeqCst) {
                // SAFETY: `tid` is the pthread of the vCPU thread, which stays alive while the
                // platform runs (run_vcpus joins it before the platform is dropped); the
                // signal's handler only sets `immediate_exit`.
                unsafe { libc::pthread_kill(*tid as libc::pthread_t, crate::vcpu::kick_signal()) };
            }
            thread.unpark();
        }
    }

    /// Takes the pending fixed interrupts: (edge, level) bitmaps.
    pub(crate) fn take_interrupts(&self) -> ([u32; 8], [u32; 8]) {
        let mut e = [0u32; 8];
        let mut l = [0u32; 8];
        for w in 0..8 {
            if self.edge[w].load(Ordering::Relaxed) != 0 {
                e[w] = self.edge[w].swap(0, Ordering::SeqCst);
            }
            if self.level[w].load(Ordering::Relaxed) != 0 {
                l[w] = self.level[w].swap(0, Ordering::SeqCst);
            }
        }
        (e, l)
    }

    /// Whether anything is waiting (checked after announcing `in_guest`).
    pub(crate) fn pending(&self) -> bool {
        self.nmi.load(Ordering::SeqCst)
            || self.init.load(Ordering::SeqCst)
            || self.sipi.load(Ordering::SeqCst) != 0
            || self
                .edge
                .iter()
                .chain(self.level.iter())
                .any(|w| w.load(Ordering::SeqCst) != 0)
    }

    pub(crate) fn take_nmi(&self) -> bool {
        self.nmi.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn take_init(&self) -> bool {
        self.init.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn take_sipi(&self) -> Option<u8> {
        let v = self.sipi.swap(0, Ordering::SeqCst);
        (v != 0).then_some(v as u8)
    }

    pub(crate) fn set_in_guest(&self, yes: bool) {
        self.in_guest.store(yes, Ordering::SeqCst);
    }

    /// Publishes the vCPU's exit count (for [`Platform::vcpu_activity`]).
    pub(crate) fn note_exits(&self, exits: u64) {
        self.exits.store(exits, Ordering::Relaxed);
    }

    /// Records that the vCPU's thread left its loop.
    pub(crate) fn note_left(&self) {
        self.left.store(true, Ordering::Release);
    }

    fn reply(&self, seq: u32, data: u64) {
        self.reply_data.store(data, Ordering::Release);
        self.reply_seq.store(seq, Ordering::Release);
        if let Some((t, _)) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Counters a node's platform keeps (plain atomics, read at the end of a run).
#[derive(Debug, Default)]
pub struct PlatformStats {
    /// Interrupt messages delivered to a vCPU of this node by a sender on this node.
    pub ipis_local: AtomicU64,
    /// Interrupt messages sent to a vCPU on another node.
    pub ipis_sent_remote: AtomicU64,
    /// Interrupt messages received from another node.
    pub ipis_received_remote: AtomicU64,
    /// Device accesses this node forwarded to the device node.
    pub io_forwarded: AtomicU64,
    /// Device accesses this node served for other nodes.
    pub io_served: AtomicU64,
    /// Interrupts with a delivery mode we do not emulate (SMI, ExtINT), dropped.
    pub unsupported: AtomicU64,
    /// Malformed or misaddressed messages received (the sender is broken or hostile).
    pub bad_messages: AtomicU64,
}

/// What a local vCPU's thread was last seen doing: for the report on a run whose vCPUs do
/// not stop when told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuActivity {
    /// The vCPU.
    pub vcpu: u32,
    /// Its exits so far.
    pub exits: u64,
    /// Inside `KVM_RUN` (or about to enter it).
    pub in_guest: bool,
    /// Its thread left the loop.
    pub left: bool,
    /// The kernel's id of its thread (0 before it started).
    pub os_tid: i32,
}

/// How the run ended, once it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// What happened.
    pub event: Lifecycle,
    /// The status that came with it.
    pub status: u32,
}

/// Which node runs each vCPU and which node has the devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// This node.
    pub me: u16,
    /// The node of each vCPU, by vCPU id (= APIC id).
    pub owner: Vec<u16>,
    /// The node with the devices (COM1, I/O APIC, ACPI registers, status port).
    pub device_node: u16,
}

impl Placement {
    /// Every vCPU on this node, which also has the devices.
    pub fn single_node(vcpus: u32) -> Self {
        Placement {
            me: 0,
            owner: vec![0; vcpus as usize],
            device_node: 0,
        }
    }

    /// The vCPUs this node runs.
    pub fn local_vcpus(&self) -> Vec<u32> {
        (0..self.owner.len() as u32)
            .filter(|&v| self.owner[v as usize] == self.me)
            .collect()
    }

    /// Every node that runs a vCPU or has the devices, except this one.
    pub fn peers(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.owner.clone();
        p.push(self.device_node);
        p.sort_unstable();
        p.dedup();
        p.retain(|&n| n != self.me);
        p
    }
}

/// One node's part of the guest platform.
#[derive(Debug)]
pub struct Platform {
    placement: Placement,
    /// LDR and DFR of every vCPU (local ones written by their threads, remote ones from
    /// [`Msg::LogicalId`]).
    logical: Box<[(AtomicU32, AtomicU32)]>,
    mailboxes: Box<[Option<Mailbox>]>,
    devices: Option<Mutex<Devices>>,
    uplink: Option<Arc<dyn Uplink>>,
    /// 0: running; else 1 + Lifecycle code.
    end: AtomicU32,
    end_status: AtomicU32,
    /// The guest's reported verdict (u64::MAX: none yet).
    guest_status: AtomicU64,
    /// Counters.
    pub stats: PlatformStats,
}

fn lifecycle_code(l: Lifecycle) -> u32 {
    match l {
        Lifecycle::PowerOff => 1,
        Lifecycle::Reset => 2,
        Lifecycle::Failed => 3,
    }
}

impl Platform {
    /// The platform for `placement`; `console` receives COM1 when this node has the devices;
    /// `uplink` reaches the other nodes (None when there are none).
    pub fn new(
        placement: Placement,
        console: Console,
        uplink: Option<Arc<dyn Uplink>>,
    ) -> Result<Platform, PlatformError> {
        let n = placement.owner.len();
        if n == 0 || n > 255 {
            return Err(PlatformError::Config(format!(
                "{n} vCPUs: a guest with xAPIC ids has 1 to 255"
            )));
        }
        if uplink.is_none() && !placement.peers().is_empty() {
            return Err(PlatformError::Config(
                "vCPUs or devices on other nodes need a link to them".into(),
            ));
        }
        let me = placement.me;
        let mailboxes = placement
            .owner
            .iter()
            .map(|&o| (o == me).then(Mailbox::default))
            .collect();
        let logical = (0..n)
            .map(|_| (AtomicU32::new(0), AtomicU32::new(u32::MAX)))
            .collect();
        let devices = (placement.device_node == me).then(|| Mutex::new(Devices::new(console)));
        Ok(Platform {
            placement,
            logical,
            mailboxes,
            devices,
            uplink,
            end: AtomicU32::new(0),
            end_status: AtomicU32::new(0),
            guest_status: AtomicU64::new(u64::MAX),
            stats: PlatformStats::default(),
        })
    }

    /// The placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// vCPUs of the VM.
    pub fn vcpus(&self) -> u32 {
        self.placement.owner.len() as u32
    }

    /// The mailbox of local vCPU `vcpu`.
    pub(crate) fn mailbox(&self, vcpu: u32) -> Option<&Mailbox> {
        self.mailboxes.get(vcpu as usize)?.as_ref()
    }

    /// What each local vCPU's thread is doing now, by vCPU id.
    pub fn vcpu_activity(&self) -> Vec<VcpuActivity> {
        self.mailboxes
            .iter()
            .enumerate()
            .filter_map(|(id, m)| {
                m.as_ref().map(|m| VcpuActivity {
                    vcpu: id as u32,
                    exits: m.exits.load(Ordering::Relaxed),
                    in_guest: m.in_guest.load(Ordering::SeqCst),
                    left: m.left.load(Ordering::Acquire),
                    os_tid: m.os_tid.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// How the run ended, if it has.
    pub fn ended(&self) -> Option<End> {
        let event = match self.end.load(Ordering::Acquire) {
            0 => return None,
            1 => Lifecycle::PowerOff,
            2 => Lifecycle::Reset,
            _ => Lifecycle::Failed,
        };
        Some(End {
            event,
            status: self.end_status.load(Ordering::Acquire),
        })
    }

    /// The verdict the guest reported on the status port, if it did.
    pub fn guest_status(&self) -> Option<u32> {
        let s = self.guest_status.load(Ordering::Acquire);
        (s != u64::MAX).then_some(s as u32)
    }

    /// Ends the run here and on every other node (first end wins).
    pub fn end(&self, event: Lifecycle, status: u32) {
        if !self.end_locally(event, status) {
            return;
        }
        if let Some(up) = &self.uplink {
            for node in self.placement.peers() {
                // A node that cannot be told is gone already; its own failure ends it.
                let _ = up.send(node, &Msg::Lifecycle { event, status });
            }
        }
    }

    fn end_locally(&self, event: Lifecycle, status: u32) -> bool {
        self.end_status.store(status, Ordering::Release);
        let won = self
            .end
            .compare_exchange(
                0,
                lifecycle_code(event),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        self.kick_all();
        won
    }

    /// Wakes every local vCPU (after a stop).
    pub fn kick_all(&self) {
        for m in self.mailboxes.iter().flatten() {
            m.kick();
        }
    }

    /// Publishes the logical destination of local vCPU `vcpu` to every node.
    pub(crate) fn set_logical(&self, vcpu: u32, ldr: u32, dfr: u32) -> Result<(), PlatformError> {
        let (l, d) = &self.logical[vcpu as usize];
        l.store(ldr, Ordering::SeqCst);
        d.store(dfr, Ordering::SeqCst);
        if let Some(up) = &self.uplink {
            let m = Msg::LogicalId {
                vcpu: vcpu as u16,
                ldr,
                dfr,
            };
            for node in self.placement.peers() {
                up.send(node, &m)
                    .map_err(|reason| PlatformError::Unreachable { node, reason })?;
            }
        }
        Ok(())
    }

    fn is_destination(&self, m: &Message, sender: u8, v: u32) -> bool {
        let (l, d) = &self.logical[v as usize];
        lapic::matches(
            m.destination,
            sender,
            v as u8,
            l.load(Ordering::Relaxed),
            d.load(Ordering::Relaxed),
        )
    }

    /// Delivers an interrupt message from APIC `sender` (0xFF for the I/O APIC, which has no
    /// "self") to every destination, on whichever node it runs. Lowest-priority delivery picks
    /// the lowest-numbered destination (no priority arbitration).
    pub fn route(&self, sender: u8, m: Message) -> Result<(), PlatformError> {
        if matches!(m.delivery, DeliveryMode::Smi | DeliveryMode::ExtInt) {
            self.stats.unsupported.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if let Destination::Physical(d) = m.destination {
            if d != 0xFF {
                return match u32::from(d) < self.vcpus() {
                    true => self.deliver(u32::from(d), &m),
                    // No such APIC: the message goes nowhere, as on a real bus.
                    false => Ok(()),
                };
            }
        }
        for v in 0..self.vcpus() {
            if self.is_destination(&m, sender, v) {
                self.deliver(v, &m)?;
                if m.delivery == DeliveryMode::LowestPriority {
                    break;
                }
            }
        }
        Ok(())
    }

    fn deliver(&self, v: u32, m: &Message) -> Result<(), PlatformError> {
        let node = self.placement.owner[v as usize];
        if let Some(mb) = self.mailbox(v) {
            self.stats.ipis_local.fetch_add(1, Ordering::Relaxed);
            mb.post(m);
            return Ok(());
        }
        self.stats.ipis_sent_remote.fetch_add(1, Ordering::Relaxed);
        let msg = Msg::Interrupt {
            vcpu: v as u16,
            vector: m.vector,
            delivery: m.delivery,
            level_triggered: m.level_triggered,
        };
        self.send(node, &msg)
    }

    fn send(&self, node: u16, msg: &Msg) -> Result<(), PlatformError> {
        let Some(up) = &self.uplink else {
            return Err(PlatformError::Config(format!(
                "node {node} is needed but there is no link to other nodes"
            )));
        };
        up.send(node, msg)
            .map_err(|reason| PlatformError::Unreachable { node, reason })
    }

    /// A level-triggered EOI for the I/O APIC.
    pub(crate) fn level_eoi(&self, vector: u8) -> Result<(), PlatformError> {
        match &self.devices {
            Some(dev) => {
                let msgs = dev
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .level_eoi(vector);
                for m in msgs {
                    self.route(0xFF, m)?;
                }
                Ok(())
            }
            None => self.send(self.placement.device_node, &Msg::LevelEoi { vector }),
        }
    }

    /// Whether this node has the devices.
    pub fn has_devices(&self) -> bool {
        self.devices.is_some()
    }

    /// A device access on this node's devices; routes the interrupts it raises and acts on
    /// power events. Returns the value read.
    fn device_access(&self, a: Access) -> Result<u64, PlatformError> {
        let Access {
            space,
            addr,
            len,
            write,
            data,
        } = a;
        let dev = self
            .devices
            .as_ref()
            .ok_or_else(|| PlatformError::Config("this node has no devices".into()))?;
        let out = {
            let mut d = dev.lock().unwrap_or_else(PoisonError::into_inner);
            match space {
                Space::Pio => d.pio(addr as u16, len, write, data),
                Space::Mmio => d.mmio(addr, len, write, data),
            }
        };
        for m in out.interrupts.into_iter().flatten() {
            self.route(0xFF, m)?;
        }
        if let Some(s) = out.status {
            self.guest_status.store(u64::from(s), Ordering::Release);
        }
        if let Some(event) = out.lifecycle {
            let status = self.guest_status().unwrap_or(0);
            self.end(event, status);
        }
        Ok(out.value)
    }

    /// A device access by local vCPU `vcpu`: served here when this node has the devices,
    /// else forwarded to the device node and waited for (`seq` numbers the vCPU's requests).
    pub(crate) fn io(&self, vcpu: u32, seq: u32, a: Access) -> Result<u64, PlatformError> {
        if self.devices.is_some() {
            return self.device_access(a);
        }
        let mb = self
            .mailbox(vcpu)
            .ok_or_else(|| PlatformError::Config(format!("vCPU {vcpu} is not local")))?;
        self.stats.io_forwarded.fetch_add(1, Ordering::Relaxed);
        let node = self.placement.device_node;
        self.send(
            node,
            &Msg::IoRequest {
                vcpu: vcpu as u16,
                seq,
                space: a.space,
                addr: a.addr,
                len: a.len,
                write: a.write,
                data: a.data,
            },
        )?;
        let start = std::time::Instant::now();
        loop {
            if mb.reply_seq.load(Ordering::Acquire) == seq {
                return Ok(mb.reply_data.load(Ordering::Acquire));
            }
            if self.ended().is_some() {
                return Err(PlatformError::Ended);
            }
            if start.elapsed() > IO_REPLY_TIMEOUT {
                return Err(PlatformError::DeviceNodeSilent {
                    node,
                    secs: IO_REPLY_TIMEOUT.as_secs(),
                });
            }
            std::thread::park_timeout(WAIT_SLICE);
        }
    }

    /// A message from node `from`. Errors mean the sender is broken (malformed for this
    /// guest) or a reply could not be sent; the caller drops the link and fails the run.
    pub fn on_message(&self, from: u16, msg: Msg) -> Result<(), PlatformError> {
        let bad = |what: &str| {
            self.stats.bad_messages.fetch_add(1, Ordering::Relaxed);
            Err(PlatformError::Config(format!("node {from} sent {what}")))
        };
        match msg {
            Msg::Interrupt {
                vcpu,
                vector,
                delivery,
                level_triggered,
            } => {
                let Some(mb) = self.mailbox(u32::from(vcpu)) else {
                    return bad("an interrupt for a vCPU this node does not run");
                };
                self.stats
                    .ipis_received_remote
                    .fetch_add(1, Ordering::Relaxed);
                mb.post(&Message {
                    vector,
                    delivery,
                    level_triggered,
                    assert: true,
                    destination: Destination::Physical(vcpu as u8),
                });
                Ok(())
            }
            Msg::LogicalId { vcpu, ldr, dfr } => {
                match self.placement.owner.get(usize::from(vcpu)) {
                    Some(&o) if o == from => {}
                    _ => return bad("a logical APIC id for a vCPU it does not run"),
                }
                let (l, d) = &self.logical[usize::from(vcpu)];
                l.store(ldr, Ordering::SeqCst);
                d.store(dfr, Ordering::SeqCst);
                Ok(())
            }
            Msg::IoRequest {
                vcpu,
                seq,
                space,
                addr,
                len,
                write,
                data,
            } => {
                if self.devices.is_none() {
                    return bad("a device access to a node without devices");
                }
                match self.placement.owner.get(usize::from(vcpu)) {
                    Some(&o) if o == from => {}
                    _ => return bad("a device access for a vCPU it does not run"),
                }
                let allowed = match space {
                    Space::Pio => devices::is_device_port(addr as u16),
                    Space::Mmio => devices::is_device_mmio(addr),
                };
                if !allowed {
                    return bad("an access to an address that is no device");
                }
                self.stats.io_served.fetch_add(1, Ordering::Relaxed);
                let value = self.device_access(Access {
                    space,
                    addr,
                    len,
                    write,
                    data,
                })?;
                self.send(
                    from,
                    &Msg::IoReply {
                        vcpu,
                        seq,
                        data: value,
                    },
                )
            }
            Msg::IoReply { vcpu, seq, data } => match self.mailbox(u32::from(vcpu)) {
                Some(mb) if from == self.placement.device_node => {
                    mb.reply(seq, data);
                    Ok(())
                }
                _ => bad("a device reply it had no reason to send"),
            },
            Msg::LevelEoi { vector } => {
                if self.devices.is_none() {
                    return bad("an EOI to a node without an I/O APIC");
                }
                self.level_eoi(vector)
            }
            Msg::Lifecycle { event, status } => {
                self.end_locally(event, status);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(u16, Msg)>>);

    impl Uplink for Recorder {
        fn send(&self, node: u16, msg: &Msg) -> Result<(), UplinkError> {
            self.0.lock().unwrap().push((node, *msg));
            Ok(())
        }
    }

    fn two_nodes(me: u16) -> (Platform, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let placement = Placement {
            me,
            owner: vec![0, 1, 0, 1],
            device_node: 0,
        };
        let up: Arc<dyn Uplink> = rec.clone();
        (
            Platform::new(placement, Console::new(false), Some(up)).unwrap(),
            rec,
        )
    }

    #[test]
    fn activity_lists_local_vcpus_with_what_their_threads_published() {
        let (p, _) = two_nodes(1);
        let seen = p.vcpu_activity();
        assert_eq!(seen.iter().map(|a| a.vcpu).collect::<Vec<_>>(), vec![1, 3]);
        assert!(seen.iter().all(|a| a.exits == 0 && !a.in_guest && !a.left));
        let m = p.mailbox(3).unwrap();
        m.note_exits(17);
        m.set_in_guest(true);
        p.mailbox(1).unwrap().note_left();
        let seen = p.vcpu_activity();
        assert_eq!(
            seen[1],
            VcpuActivity {
                vcpu: 3,
                exits: 17,
                in_guest: true,
                left: false,
                os_tid: 0
            }
        );
        assert!(seen[0].left && seen[0].exits == 0);
    }

    fn fixed(vector: u8, destination: Destination) -> Message {
        Message {
            vector,
            delivery: DeliveryMode::Fixed,
            level_triggered: false,
            assert: true,
            destination,
        }
    }

    #[test]
    fn interrupts_go_to_local_mailboxes_or_over_the_link() {
        let (p, rec) = two_nodes(0);
        p.route(0, fixed(0x40, Destination::Physical(2))).unwrap();
        assert_eq!(p.mailbox(2).unwrap().take_interrupts().0[2], 1);
        p.route(0, fixed(0x41, Destination::Physical(3))).unwrap();
        p.route(0, fixed(0x42, Destination::AllExcludingSelf))
            .unwrap();
        let sent = rec.0.lock().unwrap().clone();
        let to: Vec<(u16, u16, u8)> = sent
            .iter()
            .map(|(n, m)| match m {
                Msg::Interrupt { vcpu, vector, .. } => (*n, *vcpu, *vector),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(to, vec![(1, 3, 0x41), (1, 1, 0x42), (1, 3, 0x42)]);
        assert_eq!(p.mailbox(2).unwrap().take_interrupts().0[2], 1 << 2);
        assert!(p
            .mailbox(0)
            .unwrap()
            .take_interrupts()
            .0
            .iter()
            .all(|&w| w == 0));
        // An APIC id beyond the VM reaches nobody.
        p.route(0, fixed(0x43, Destination::Physical(9))).unwrap();
        assert_eq!(rec.0.lock().unwrap().len(), 3);
    }

    #[test]
    fn misaddressed_messages_are_refused_and_counted() {
        // Node 0 (devices, vCPUs 0 and 2) hears from node 1 (vCPUs 1 and 3).
        let (p0, _) = two_nodes(0);
        let from_1 = [
            Msg::Interrupt {
                vcpu: 1,
                vector: 0x40,
                delivery: DeliveryMode::Fixed,
                level_triggered: false,
            },
            Msg::LogicalId {
                vcpu: 2,
                ldr: 1 << 24,
                dfr: u32::MAX,
            },
            Msg::IoRequest {
                vcpu: 0,
                seq: 1,
                space: Space::Pio,
                addr: 0x3F8,
                len: 1,
                write: true,
                data: 0,
            },
            Msg::IoRequest {
                vcpu: 1,
                seq: 1,
                space: Space::Pio,
                addr: 0x1234,
                len: 1,
                write: false,
                data: 0,
            },
            Msg::IoReply {
                vcpu: 0,
                seq: 1,
                data: 0,
            },
        ];
        for m in from_1 {
            assert!(p0.on_message(1, m).is_err(), "{m:?} was accepted");
        }
        assert_eq!(p0.stats.bad_messages.load(Ordering::Relaxed), 5);
        // Node 1 has no devices: device requests and EOIs addressed to it are refused too.
        let (p1, _) = two_nodes(1);
        let io = Msg::IoRequest {
            vcpu: 0,
            seq: 1,
            space: Space::Pio,
            addr: 0x3F8,
            len: 1,
            write: true,
            data: 0,
        };
        assert!(p1.on_message(0, io).is_err());
        assert!(p1.on_message(0, Msg::LevelEoi { vector: 0x30 }).is_err());
        assert_eq!(p1.stats.bad_messages.load(Ordering::Relaxed), 2);
        assert!(p0.ended().is_none() && p1.ended().is_none());
    }

    #[test]
    fn logical_destinations_use_published_ids() {
        let (p, rec) = two_nodes(0);
        // vCPU 1 (node 1) publishes flat logical id bit 1; vCPU 2 (local) bit 2.
        p.on_message(
            1,
            Msg::LogicalId {
                vcpu: 1,
                ldr: 0x02 << 24,
                dfr: u32::MAX,
            },
        )
        .unwrap();
        p.set_logical(2, 0x04 << 24, u32::MAX).unwrap();
        rec.0.lock().unwrap().clear();
        p.route(0, fixed(0x50, Destination::Logical(0x06))).unwrap();
        assert_eq!(p.mailbox(2).unwrap().take_interrupts().0[2], 1 << 16);
        assert!(matches!(
            rec.0.lock().unwrap()[..],
            [(
                1,
                Msg::Interrupt {
                    vcpu: 1,
                    vector: 0x50,
                    ..
                }
            )]
        ));
        // A node may only publish ids of its own vCPUs.
        assert!(p
            .on_message(
                1,
                Msg::LogicalId {
                    vcpu: 2,
                    ldr: 0,
                    dfr: 0
                }
            )
            .is_err());
    }

    #[test]
    fn forwarded_device_accesses_are_served_and_answered() {
        let (p, rec) = two_nodes(0);
        // Node 1's vCPU 1 writes the guest's verdict, then powers off.
        p.on_message(
            1,
            Msg::IoRequest {
                vcpu: 1,
                seq: 1,
                space: Space::Pio,
                addr: u64::from(devices::STATUS_PORT),
                len: 4,
                write: true,
                data: 0,
            },
        )
        .unwrap();
        assert_eq!(p.guest_status(), Some(0));
        p.on_message(
            1,
            Msg::IoRequest {
                vcpu: 1,
                seq: 2,
                space: Space::Pio,
                addr: u64::from(devices::SLEEP_CONTROL_PORT),
                len: 1,
                write: true,
                data: 0x34,
            },
        )
        .unwrap();
        assert_eq!(
            p.ended(),
            Some(End {
                event: Lifecycle::PowerOff,
                status: 0
            })
        );
        let sent = rec.0.lock().unwrap().clone();
        assert!(sent.contains(&(
            1,
            Msg::IoReply {
                vcpu: 1,
                seq: 1,
                data: 0
            }
        )));
        assert!(sent.contains(&(
            1,
            Msg::Lifecycle {
                event: Lifecycle::PowerOff,
                status: 0
            }
        )));
        // Hostile or broken requests are refused: a vCPU the sender does not run, a port
        // that is no device, a request to a node without devices.
        let req = |vcpu, addr| Msg::IoRequest {
            vcpu,
            seq: 3,
            space: Space::Pio,
            addr,
            len: 1,
            write: false,
            data: 0,
        };
        assert!(p.on_message(1, req(0, 0x3F8)).is_err());
        assert!(p.on_message(1, req(1, 0x70)).is_err());
        let (q, _) = two_nodes(1);
        assert!(q.on_message(0, req(0, 0x3F8)).is_err());
        assert_eq!(p.stats.bad_messages.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_vcpu_on_a_node_without_devices_waits_for_the_reply() {
        let (p, rec) = two_nodes(1);
        let p = Arc::new(p);
        let q = p.clone();
        let waiter = std::thread::spawn(move || {
            q.mailbox(1).unwrap().bind_current_thread();
            q.io(
                1,
                7,
                Access {
                    space: Space::Pio,
                    addr: 0x3FD,
                    len: 1,
                    write: false,
                    data: 0,
                },
            )
        });
        // Answer once the request shows up.
        loop {
            if rec
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|(_, m)| matches!(m, Msg::IoRequest { seq: 7, .. }))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        p.on_message(
            0,
            Msg::IoReply {
                vcpu: 1,
                seq: 7,
                data: 0x60,
            },
        )
        .unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), 0x60);
        // Replies from a node that is not the device node are refused.
        assert!(p
            .on_message(
                1,
                Msg::IoReply {
                    vcpu: 1,
                    seq: 8,
                    data: 0
                }
            )
            .is_err());
    }

    #[test]
    fn placement_lists_peers_and_local_vcpus() {
        let pl = Placement {
            me: 1,
            owner: vec![0, 1, 2, 1],
            device_node: 3,
        };
        assert_eq!(pl.local_vcpus(), vec![1, 3]);
        assert_eq!(pl.peers(), vec![0, 2, 3]);
        assert!(Platform::new(pl, Console::new(false), None).is_err());
        assert!(Platform::new(Placement::single_node(0), Console::new(false), None).is_err());
    }
}
