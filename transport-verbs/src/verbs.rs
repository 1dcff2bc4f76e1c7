//! Safe handles over the verbs objects the transport uses: an open device ([`Context`]), a
//! protection domain ([`Pd`]), registered memory ([`Mr`]), completion queues with an optional
//! event channel ([`Cq`], [`CompChannel`]) and reliable-connected queue pairs ([`Qp`]).
//!
//! Each handle keeps what it was made from alive (an `Arc` of its parent), so objects are
//! destroyed children first whatever order the caller drops them in. Every call's result is
//! checked; a failure carries the call's name and the OS error. Nothing here allocates per
//! work request: posting and polling pass the caller's structures straight to the provider.

use std::ffi::{c_int, CStr};
use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use thiserror::Error;

use crate::ffi::*;

/// Why a verbs operation failed.
#[derive(Debug, Error)]
pub enum VerbsError {
    /// The library could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// No device of that name.
    #[error("no RDMA device {name:?} (devices: {available}); check `rdma link` / `ibv_devices`")]
    NoDevice {
        /// The name asked for.
        name: String,
        /// The devices present, comma-separated (or "none").
        available: String,
    },
    /// A verbs call failed.
    #[error("{call} failed: {source}{hint}")]
    Call {
        /// The call.
        call: &'static str,
        /// The error it returned or left in errno.
        source: io::Error,
        /// What to check, when the error has a usual cause.
        hint: &'static str,
    },
    /// A port is not usable.
    #[error("port {port} of {device} is not active (state {state}); bring its link up")]
    PortDown {
        /// Device name.
        device: String,
        /// Port number.
        port: u8,
        /// `IBV_PORT_*` state.
        state: u32,
    },
}

fn call_err(call: &'static str, source: io::Error) -> VerbsError {
    let hint = match source.raw_os_error() {
        Some(libc::ENOMEM) | Some(libc::EAGAIN) if call == "ibv_reg_mr" => {
            "; memory registration pins pages: raise the locked-memory limit (ulimit -l, LimitMEMLOCK)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; open /dev/infiniband/uverbs* needs permission (root, or the rdma group)"
        }
        _ => "",
    };
    VerbsError::Call { call, source, hint }
}

/// An rc-style return (0 or an errno value, some providers return -1 with errno set).
fn check_rc(call: &'static str, rc: c_int) -> Result<(), VerbsError> {
    match rc {
        0 => Ok(()),
        r if r > 0 => Err(call_err(call, io::Error::from_raw_os_error(r))),
        _ => Err(call_err(call, io::Error::last_os_error())),
    }
}

/// Reports a failed release (the object's kernel resources stay until the process exits;
/// there is nothing else to do in a destructor).
fn report_release(call: &'static str, rc: c_int) {
    if rc != 0 {
        let e = if rc > 0 {
            io::Error::from_raw_os_error(rc)
        } else {
            io::Error::last_os_error()
        };
        eprintln!("transport-verbs: {call} failed while releasing: {e}");
    }
}

fn check_ptr<T>(call: &'static str, p: *mut T) -> Result<NonNull<T>, VerbsError> {
    NonNull::new(p).ok_or_else(|| call_err(call, io::Error::last_os_error()))
}

/// The loaded library.
#[derive(Debug, Clone)]
pub struct Verbs {
    lib: Arc<Lib>,
}

impl Verbs {
    /// Loads `libibverbs.so.1`.
    pub fn load() -> Result<Self, VerbsError> {
        Ok(Self {
            lib: Arc::new(Lib::open()?),
        })
    }

    /// The device list, or `None` when the kernel has no RDMA support (`ENOSYS`).
    fn device_list(&self, n: &mut c_int) -> Result<Option<NonNull<*mut IbvDevice>>, VerbsError> {
        // SAFETY: a valid out-pointer; the caller frees the list.
        let list = unsafe { (self.lib.get_device_list)(n) };
        match NonNull::new(list) {
            Some(l) => Ok(Some(l)),
            None => {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOSYS) {
                    Ok(None)
                } else {
                    Err(call_err("ibv_get_device_list", e))
                }
            }
        }
    }

    /// Names of the devices the library sees (none where the kernel has no RDMA support).
    pub fn devices(&self) -> Result<Vec<String>, VerbsError> {
        let mut n: c_int = 0;
        let Some(list) = self.device_list(&mut n)? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::with_capacity(n.max(0) as usize);
        for i in 0..n.max(0) as usize {
            // SAFETY: the list holds `n` device pointers.
            let dev = unsafe { *list.as_ptr().add(i) };
            // SAFETY: a device of the live list; the name is a NUL-terminated string it owns.
            let name = unsafe { CStr::from_ptr((self.lib.get_device_name)(dev)) };
            names.push(name.to_string_lossy().into_owned());
        }
        // SAFETY: the list came from ibv_get_device_list and is not used after this.
        unsafe { (self.lib.free_device_list)(list.as_ptr()) };
        Ok(names)
    }

    /// Opens device `name`.
    pub fn open(&self, name: &str) -> Result<Context, VerbsError> {
        let mut n: c_int = 0;
        let Some(list) = self.device_list(&mut n)? else {
            return Err(VerbsError::NoDevice {
                name: name.into(),
                available: "none: this kernel has no RDMA support".into(),
            });
        };
        let mut found = None;
        let mut names = Vec::new();
        for i in 0..n.max(0) as usize {
            // SAFETY: the list holds `n` device pointers.
            let dev = unsafe { *list.as_ptr().add(i) };
            // SAFETY: as in `devices`.
            let dn = unsafe { CStr::from_ptr((self.lib.get_device_name)(dev)) }
                .to_string_lossy()
                .into_owned();
            if dn == name {
                found = Some(dev);
            }
            names.push(dn);
        }
        // The device must be opened before the list is freed (and errno read before free).
        let ctx = found.map(|dev| {
            // SAFETY: a device of the live list.
            let p = unsafe { (self.lib.open_device)(dev) };
            check_ptr("ibv_open_device", p)
        });
        // SAFETY: the list came from ibv_get_device_list; an opened context holds its own
        // reference to the device.
        unsafe { (self.lib.free_device_list)(list.as_ptr()) };
        let Some(ctx) = ctx else {
            return Err(VerbsError::NoDevice {
                name: name.into(),
                available: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            });
        };
        Ok(Context(Arc::new(ContextHandle {
            lib: self.lib.clone(),
            ctx: ctx?,
            name: name.into(),
        })))
    }
}

#[derive(Debug)]
struct ContextHandle {
    lib: Arc<Lib>,
    ctx: NonNull<IbvContext>,
    name: String,
}

// SAFETY: libibverbs contexts may be used from any thread; the handle only closes it once.
unsafe impl Send for ContextHandle {}
// SAFETY: as above: the verbs calls made through `&self` are thread-safe in rdma-core.
unsafe impl Sync for ContextHandle {}

impl Drop for ContextHandle {
    fn drop(&mut self) {
        // SAFETY: every object made from this context holds an Arc of it, so none is left.
        let rc = unsafe { (self.lib.close_device)(self.ctx.as_ptr()) };
        report_release("ibv_close_device", rc);
    }
}

/// An open RDMA device.
#[derive(Debug, Clone)]
pub struct Context(Arc<ContextHandle>);

impl Context {
    /// The device's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Attributes of port `port` (1-based).
    pub fn query_port(&self, port: u8) -> Result<IbvPortAttr, VerbsError> {
        let mut a = IbvPortAttr::default();
        // SAFETY: a live context and a zeroed, full-size attribute structure.
        let rc = unsafe { (self.0.lib.query_port)(self.0.ctx.as_ptr(), port, &mut a) };
        check_rc("ibv_query_port", rc)?;
        Ok(a)
    }

    /// Attributes of port `port`, which must be active.
    pub fn active_port(&self, port: u8) -> Result<IbvPortAttr, VerbsError> {
        let a = self.query_port(port)?;
        if a.state != IBV_PORT_ACTIVE {
            return Err(VerbsError::PortDown {
                device: self.0.name.clone(),
                port,
                state: a.state,
            });
        }
        Ok(a)
    }

    /// GID `index` of port `port`.
    pub fn query_gid(&self, port: u8, index: u8) -> Result<IbvGid, VerbsError> {
        let mut g = IbvGid::default();
        // SAFETY: a live context and a 16-byte out-parameter.
        let rc = unsafe {
            (self.0.lib.query_gid)(self.0.ctx.as_ptr(), port, c_int::from(index), &mut g)
        };
        check_rc("ibv_query_gid", rc)?;
        Ok(g)
    }

    /// The GID to address this port by: on RoCE the first IPv4-mapped entry of the table
    /// (`::ffff:a.b.c.d`, routable over IP; the link-local `fe80::` entries are not), else
    /// entry 0. Returns its index and value.
    pub fn pick_gid(&self, port: u8, attr: &IbvPortAttr) -> Result<(u8, IbvGid), VerbsError> {
        let first = self.query_gid(port, 0)?;
        if attr.link_layer != IBV_LINK_LAYER_ETHERNET {
            return Ok((0, first));
        }
        let len = attr.gid_tbl_len.clamp(0, 256) as usize;
        for i in 0..len.min(usize::from(u8::MAX)) {
            // An unpopulated entry may fail or read as zero: skip it either way.
            let Ok(g) = self.query_gid(port, i as u8) else {
                continue;
            };
            if g.raw[..10].iter().all(|&b| b == 0) && g.raw[10..12] == [0xff, 0xff] {
                return Ok((i as u8, g));
            }
        }
        Ok((0, first))
    }

    /// A new protection domain.
    pub fn alloc_pd(&self) -> Result<Pd, VerbsError> {
        // SAFETY: a live context.
        let pd = check_ptr("ibv_alloc_pd", unsafe {
            (self.0.lib.alloc_pd)(self.0.ctx.as_ptr())
        })?;
        Ok(Pd(Arc::new(PdHandle {
            ctx: self.0.clone(),
            pd,
        })))
    }

    /// A new completion event channel (its fd becomes readable when an armed queue has a
    /// completion).
    pub fn comp_channel(&self) -> Result<CompChannel, VerbsError> {
        // SAFETY: a live context.
        let ch = check_ptr("ibv_create_comp_channel", unsafe {
            (self.0.lib.create_comp_channel)(self.0.ctx.as_ptr())
        })?;
        Ok(CompChannel(Arc::new(ChannelHandle {
            ctx: self.0.clone(),
            ch,
        })))
    }

    /// A completion queue of at least `entries` entries, reporting to `channel` when armed.
    pub fn create_cq(&self, entries: u32, channel: Option<&CompChannel>) -> Result<Cq, VerbsError> {
        let ch = channel.map_or(ptr::null_mut(), |c| c.0.ch.as_ptr());
        let entries = c_int::try_from(entries).unwrap_or(c_int::MAX);
        // SAFETY: a live context and channel (or none).
        let cq = check_ptr("ibv_create_cq", unsafe {
            (self.0.lib.create_cq)(self.0.ctx.as_ptr(), entries, ptr::null_mut(), ch, 0)
        })?;
        Ok(Cq(Arc::new(CqHandle {
            ctx: self.0.clone(),
            _channel: channel.map(|c| c.0.clone()),
            cq,
        })))
    }
}

#[derive(Debug)]
struct PdHandle {
    ctx: Arc<ContextHandle>,
    pd: NonNull<IbvPd>,
}

// SAFETY: as for the context.
unsafe impl Send for PdHandle {}
// SAFETY: as for the context.
unsafe impl Sync for PdHandle {}

impl Drop for PdHandle {
    fn drop(&mut self) {
        // SAFETY: the regions and queue pairs of this domain hold an Arc of it.
        let rc = unsafe { (self.ctx.lib.dealloc_pd)(self.pd.as_ptr()) };
        report_release("ibv_dealloc_pd", rc);
    }
}

/// A protection domain.
#[derive(Debug, Clone)]
pub struct Pd(Arc<PdHandle>);

impl Pd {
    /// Registers `len` bytes at `addr` with `access` (`IBV_ACCESS_*`).
    ///
    /// # Safety
    ///
    /// The memory must stay mapped, and not be reused for anything the device may not see or
    /// change, until the returned region is dropped.
    pub unsafe fn reg_mr(
        &self,
        addr: *mut u8,
        len: usize,
        access: c_int,
    ) -> Result<Mr, VerbsError> {
        // SAFETY: the caller guarantees the range; the domain is live.
        let mr = check_ptr("ibv_reg_mr", unsafe {
            (self.0.ctx.lib.reg_mr)(self.0.pd.as_ptr(), addr.cast(), len, access)
        })?;
        Ok(Mr {
            pd: self.0.clone(),
            mr,
        })
    }

    /// A reliable-connected queue pair on `send` and `recv` completion queues, in RESET.
    pub fn create_rc_qp(&self, send: &Cq, recv: &Cq, cap: IbvQpCap) -> Result<Qp, VerbsError> {
        let mut attr = IbvQpInitAttr {
            qp_context: ptr::null_mut(),
            send_cq: send.0.cq.as_ptr(),
            recv_cq: recv.0.cq.as_ptr(),
            srq: ptr::null_mut(),
            cap,
            qp_type: IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: a live domain and queues; the attributes are read during the call (the
        // provider writes back the capacities it granted).
        let qp = check_ptr("ibv_create_qp", unsafe {
            (self.0.ctx.lib.create_qp)(self.0.pd.as_ptr(), &mut attr)
        })?;
        Ok(Qp {
            pd: self.0.clone(),
            _cqs: [send.0.clone(), recv.0.clone()],
            qp,
            cap: attr.cap,
        })
    }
}

/// A registered memory region.
#[derive(Debug)]
pub struct Mr {
    pd: Arc<PdHandle>,
    mr: NonNull<IbvMr>,
}

// SAFETY: as for the context; the region's keys are plain values.
unsafe impl Send for Mr {}
// SAFETY: as above.
unsafe impl Sync for Mr {}

impl Mr {
    /// The key local work requests use.
    pub fn lkey(&self) -> u32 {
        // SAFETY: a live region; the field is set at registration and never changes.
        unsafe { self.mr.as_ref().lkey }
    }

    /// The key a peer uses for one-sided access.
    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { self.mr.as_ref().rkey }
    }

    /// Start of the region.
    pub fn addr(&self) -> u64 {
        // SAFETY: as above.
        unsafe { self.mr.as_ref().addr as u64 }
    }

    /// Length of the region.
    pub fn len(&self) -> usize {
        // SAFETY: as above.
        unsafe { self.mr.as_ref().length }
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered by `reg_mr`, deregistered once.
        let rc = unsafe { (self.pd.ctx.lib.dereg_mr)(self.mr.as_ptr()) };
        report_release("ibv_dereg_mr", rc);
    }
}

#[derive(Debug)]
struct ChannelHandle {
    ctx: Arc<ContextHandle>,
    ch: NonNull<IbvCompChannel>,
}

// SAFETY: as for the context.
unsafe impl Send for ChannelHandle {}
// SAFETY: as for the context.
unsafe impl Sync for ChannelHandle {}

impl Drop for ChannelHandle {
    fn drop(&mut self) {
        // SAFETY: the queues reporting to this channel hold an Arc of it.
        let rc = unsafe { (self.ctx.lib.destroy_comp_channel)(self.ch.as_ptr()) };
        report_release("ibv_destroy_comp_channel", rc);
    }
}

/// A completion event channel.
#[derive(Debug, Clone)]
pub struct CompChannel(Arc<ChannelHandle>);

impl CompChannel {
    /// The file descriptor to wait on (readable when an armed queue has a completion).
    pub fn fd(&self) -> c_int {
        // SAFETY: a live channel; the fd is set at creation.
        unsafe { self.0.ch.as_ref().fd }
    }

    /// Takes one pending event (blocks unless the fd was made non-blocking) and acknowledges
    /// it; returns whether one was there.
    pub fn take_event(&self, cq: &Cq) -> Result<bool, VerbsError> {
        let mut got: *mut IbvCq = ptr::null_mut();
        let mut cq_ctx: *mut std::ffi::c_void = ptr::null_mut();
        // SAFETY: a live channel and out-pointers.
        let rc =
            unsafe { (self.0.ctx.lib.get_cq_event)(self.0.ch.as_ptr(), &mut got, &mut cq_ctx) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(false);
            }
            return Err(call_err("ibv_get_cq_event", e));
        }
        // Events must be acknowledged on the queue they name before it is destroyed.
        // SAFETY: `got` is a queue of this channel (ours: only `cq` reports here).
        unsafe { (self.0.ctx.lib.ack_cq_events)(got, 1) };
        debug_assert_eq!(got, cq.0.cq.as_ptr());
        Ok(true)
    }
}

#[derive(Debug)]
struct CqHandle {
    ctx: Arc<ContextHandle>,
    /// Kept alive while the queue reports to it (a channel must outlive its queues).
    _channel: Option<Arc<ChannelHandle>>,
    cq: NonNull<IbvCq>,
}

// SAFETY: as for the context.
unsafe impl Send for CqHandle {}
// SAFETY: as for the context.
unsafe impl Sync for CqHandle {}

impl Drop for CqHandle {
    fn drop(&mut self) {
        // SAFETY: the queue pairs on this queue hold an Arc of it; every event taken was
        // acknowledged in `take_event`.
        let rc = unsafe { (self.ctx.lib.destroy_cq)(self.cq.as_ptr()) };
        report_release("ibv_destroy_cq", rc);
    }
}

/// A completion queue.
#[derive(Debug, Clone)]
pub struct Cq(Arc<CqHandle>);

impl Cq {
    /// Polls up to `out.len()` completions into `out`; returns how many.
    pub fn poll(&self, out: &mut [IbvWc]) -> Result<usize, VerbsError> {
        let n = c_int::try_from(out.len()).unwrap_or(c_int::MAX);
        // SAFETY: a live queue; its context's ops table is the provider's, set at open.
        let poll = unsafe { (*self.0.ctx.ctx.as_ptr()).ops.poll_cq };
        let Some(poll) = poll else {
            return Err(call_err(
                "ibv_poll_cq",
                io::Error::from_raw_os_error(libc::ENOSYS),
            ));
        };
        // SAFETY: `out` holds `n` writable completions.
        let got = unsafe { poll(self.0.cq.as_ptr(), n, out.as_mut_ptr()) };
        if got < 0 {
            return Err(call_err("ibv_poll_cq", io::Error::last_os_error()));
        }
        Ok(got as usize)
    }

    /// Arms the queue: its channel's fd becomes readable at the next completion.
    pub fn arm(&self) -> Result<(), VerbsError> {
        // SAFETY: as in `poll`.
        let notify = unsafe { (*self.0.ctx.ctx.as_ptr()).ops.req_notify_cq };
        let Some(notify) = notify else {
            return Err(call_err(
                "ibv_req_notify_cq",
                io::Error::from_raw_os_error(libc::ENOSYS),
            ));
        };
        // SAFETY: a live queue.
        check_rc("ibv_req_notify_cq", unsafe {
            notify(self.0.cq.as_ptr(), 0)
        })
    }
}

/// Where a queue pair's peer is: what two nodes exchange to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number the peer sends with.
    pub psn: u32,
    /// The peer's GID (RoCE) .
    pub gid: [u8; 16],
    /// The peer's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
}

/// A reliable-connected queue pair.
#[derive(Debug)]
pub struct Qp {
    pd: Arc<PdHandle>,
    _cqs: [Arc<CqHandle>; 2],
    qp: NonNull<IbvQp>,
    cap: IbvQpCap,
}

// SAFETY: as for the context; posting from one thread at a time is the caller's (the
// shard's) discipline, enforced by `&mut self` on the posting methods.
unsafe impl Send for Qp {}

impl Qp {
    /// Queue pair number.
    pub fn qpn(&self) -> u32 {
        // SAFETY: a live queue pair; the number is set at creation.
        unsafe { self.qp.as_ref().qp_num }
    }

    /// The capacities the provider granted.
    pub fn cap(&self) -> IbvQpCap {
        self.cap
    }

    fn modify(
        &mut self,
        attr: &mut IbvQpAttr,
        mask: c_int,
        call: &'static str,
    ) -> Result<(), VerbsError> {
        // SAFETY: a live queue pair and attributes valid for `mask`.
        let rc = unsafe { (self.pd.ctx.lib.modify_qp)(self.qp.as_ptr(), attr, mask) };
        check_rc(call, rc)
    }

    /// RESET → INIT on `port`, granting the peer `access` (`IBV_ACCESS_*`).
    pub fn to_init(&mut self, port: u8, access: c_int) -> Result<(), VerbsError> {
        let mut a = IbvQpAttr {
            qp_state: IBV_QPS_INIT,
            port_num: port,
            pkey_index: 0,
            qp_access_flags: access as u32,
            ..Default::default()
        };
        self.modify(
            &mut a,
            IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS,
            "ibv_modify_qp(INIT)",
        )
    }

    /// INIT → RTR towards `peer`, over `port` with MTU `mtu` (`IBV_MTU_*`), sending from GID
    /// index `sgid_index` (RoCE: always global).
    pub fn to_rtr(
        &mut self,
        peer: &Endpoint,
        port: u8,
        mtu: u32,
        sgid_index: u8,
        global: bool,
    ) -> Result<(), VerbsError> {
        let mut a = IbvQpAttr {
            qp_state: IBV_QPS_RTR,
            path_mtu: mtu,
            dest_qp_num: peer.qpn,
            rq_psn: peer.psn,
            max_dest_rd_atomic: 16,
            min_rnr_timer: 12,
            ..Default::default()
        };
        a.ah_attr.dlid = peer.lid;
        a.ah_attr.port_num = port;
        if global {
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid.raw = peer.gid;
            a.ah_attr.grh.sgid_index = sgid_index;
            a.ah_attr.grh.hop_limit = 1;
        }
        self.modify(
            &mut a,
            IBV_QP_STATE
                | IBV_QP_AV
                | IBV_QP_PATH_MTU
                | IBV_QP_DEST_QPN
                | IBV_QP_RQ_PSN
                | IBV_QP_MAX_DEST_RD_ATOMIC
                | IBV_QP_MIN_RNR_TIMER,
            "ibv_modify_qp(RTR)",
        )
    }

    /// RTR → RTS, sending from PSN `psn`.
    pub fn to_rts(&mut self, psn: u32) -> Result<(), VerbsError> {
        let mut a = IbvQpAttr {
            qp_state: IBV_QPS_RTS,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            sq_psn: psn,
            max_rd_atomic: 16,
            ..Default::default()
        };
        self.modify(
            &mut a,
            IBV_QP_STATE
                | IBV_QP_TIMEOUT
                | IBV_QP_RETRY_CNT
                | IBV_QP_RNR_RETRY
                | IBV_QP_SQ_PSN
                | IBV_QP_MAX_QP_RD_ATOMIC,
            "ibv_modify_qp(RTS)",
        )
    }

    /// Moves the queue pair to ERR: outstanding requests complete with an error status.
    pub fn to_err(&mut self) -> Result<(), VerbsError> {
        let mut a = IbvQpAttr {
            qp_state: IBV_QPS_ERR,
            ..Default::default()
        };
        self.modify(&mut a, IBV_QP_STATE, "ibv_modify_qp(ERR)")
    }

    /// Posts a chain of send requests.
    ///
    /// # Safety
    ///
    /// Every scatter/gather element must name registered memory (its lkey) that stays valid
    /// until the request completes, and remote addresses and rkeys must be what the peer
    /// granted.
    pub unsafe fn post_send(&mut self, wr: &mut IbvSendWr) -> Result<(), VerbsError> {
        // SAFETY: a live queue pair; its context's ops table is the provider's.
        let post = unsafe { (*self.pd.ctx.ctx.as_ptr()).ops.post_send };
        let Some(post) = post else {
            return Err(call_err(
                "ibv_post_send",
                io::Error::from_raw_os_error(libc::ENOSYS),
            ));
        };
        let mut bad: *mut IbvSendWr = ptr::null_mut();
        // SAFETY: the caller guarantees the request's memory.
        check_rc("ibv_post_send", unsafe {
            post(self.qp.as_ptr(), wr, &mut bad)
        })
    }

    /// Posts a chain of receive requests.
    ///
    /// # Safety
    ///
    /// Every scatter/gather element must name registered memory that stays valid, and is not
    /// read, until the request completes.
    pub unsafe fn post_recv(&mut self, wr: &mut IbvRecvWr) -> Result<(), VerbsError> {
        // SAFETY: as in `post_send`.
        let post = unsafe { (*self.pd.ctx.ctx.as_ptr()).ops.post_recv };
        let Some(post) = post else {
            return Err(call_err(
                "ibv_post_recv",
                io::Error::from_raw_os_error(libc::ENOSYS),
            ));
        };
        let mut bad: *mut IbvRecvWr = ptr::null_mut();
        // SAFETY: the caller guarantees the request's memory.
        check_rc("ibv_post_recv", unsafe {
            post(self.qp.as_ptr(), wr, &mut bad)
        })
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: created by `create_rc_qp`, destroyed once, before its queues and domain
        // (it holds Arcs of them).
        let rc = unsafe { (self.pd.ctx.lib.destroy_qp)(self.qp.as_ptr()) };
        report_release("ibv_destroy_qp", rc);
    }
}
