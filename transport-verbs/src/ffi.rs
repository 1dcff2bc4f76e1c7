//! The part of rdma-core's `libibverbs` ABI the data plane uses, loaded at run time.
//!
//! Why not a binding crate: `rdma-sys` runs bindgen against the installed headers (no build
//! without rdma-core's `-dev` package), `ibverbs` builds a vendored rdma-core with CMake, and
//! `sideway` needs CMake and Clang for its `rdma-mummy-sys` stub library. The project must
//! build on any host and use verbs only where a device exists, and it needs about twenty
//! entry points, so it declares them here and opens `libibverbs.so.1` with `dlopen` when a
//! verbs transport is asked for. A host without rdma-core builds and runs everything else;
//! asking it for verbs gets [`LoadError`], which says which package to install.
//!
//! The structures are rdma-core's public, ABI-stable ones (the library keeps them binary
//! compatible across releases: applications compiled against old headers keep running). The
//! fast-path calls `ibv_post_send`, `ibv_post_recv`, `ibv_poll_cq` and `ibv_req_notify_cq` are
//! `static inline` in `verbs.h`: they call through the context's `ops` table, and so do the
//! wrappers here. `tests/abi.rs` compiles a C program against the real header and compares
//! every size, offset and constant below with it.

// The C structures that hold pthread types or the provider's function table have no useful
// `Debug`: they are only ever behind raw pointers owned by the safe wrappers.
#![allow(missing_debug_implementations)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::ptr::NonNull;

use thiserror::Error;

/// The shared object opened (`libibverbs1` on Debian).
pub const LIBRARY: &str = "libibverbs.so.1";

/// Why `libibverbs` could not be used.
#[derive(Debug, Error)]
pub enum LoadError {
    /// `dlopen` failed.
    #[error("cannot load {library}: {reason}; install rdma-core's verbs library (Debian: apt-get install libibverbs1 ibverbs-providers) or choose --transport uring")]
    Open {
        /// The library name.
        library: String,
        /// What `dlerror` said.
        reason: String,
    },
    /// The library lacks an entry point.
    #[error("{library} has no symbol {symbol}: it is not rdma-core's libibverbs 1.x; install rdma-core ≥ 17 or choose --transport uring")]
    Symbol {
        /// The library name.
        library: String,
        /// The symbol missing.
        symbol: &'static str,
    },
}

/// `struct ibv_device` (opaque: only its name is read, through `ibv_get_device_name`).
#[repr(C)]
pub struct IbvDevice {
    _opaque: [u8; 0],
}

/// `struct ibv_pd` (opaque).
#[repr(C)]
pub struct IbvPd {
    _opaque: [u8; 0],
}

/// `struct ibv_context_ops`: the provider's function table. Only the entries the data plane
/// calls are typed; the others are placeholders of pointer size, in the header's order.
#[repr(C)]
pub struct IbvContextOps {
    _compat_query_device: *const c_void,
    _compat_query_port: *const c_void,
    _compat_alloc_pd: *const c_void,
    _compat_dealloc_pd: *const c_void,
    _compat_reg_mr: *const c_void,
    _compat_rereg_mr: *const c_void,
    _compat_dereg_mr: *const c_void,
    _alloc_mw: *const c_void,
    _bind_mw: *const c_void,
    _dealloc_mw: *const c_void,
    _compat_create_cq: *const c_void,
    /// `int (*poll_cq)(struct ibv_cq *, int, struct ibv_wc *)`.
    pub poll_cq: Option<unsafe extern "C" fn(*mut IbvCq, c_int, *mut IbvWc) -> c_int>,
    /// `int (*req_notify_cq)(struct ibv_cq *, int solicited_only)`.
    pub req_notify_cq: Option<unsafe extern "C" fn(*mut IbvCq, c_int) -> c_int>,
    _compat_cq_event: *const c_void,
    _compat_resize_cq: *const c_void,
    _compat_destroy_cq: *const c_void,
    _compat_create_srq: *const c_void,
    _compat_modify_srq: *const c_void,
    _compat_query_srq: *const c_void,
    _compat_destroy_srq: *const c_void,
    _post_srq_recv: *const c_void,
    _compat_create_qp: *const c_void,
    _compat_query_qp: *const c_void,
    _compat_modify_qp: *const c_void,
    _compat_destroy_qp: *const c_void,
    /// `int (*post_send)(struct ibv_qp *, struct ibv_send_wr *, struct ibv_send_wr **)`.
    pub post_send:
        Option<unsafe extern "C" fn(*mut IbvQp, *mut IbvSendWr, *mut *mut IbvSendWr) -> c_int>,
    /// `int (*post_recv)(struct ibv_qp *, struct ibv_recv_wr *, struct ibv_recv_wr **)`.
    pub post_recv:
        Option<unsafe extern "C" fn(*mut IbvQp, *mut IbvRecvWr, *mut *mut IbvRecvWr) -> c_int>,
    _compat_create_ah: *const c_void,
    _compat_destroy_ah: *const c_void,
    _compat_attach_mcast: *const c_void,
    _compat_detach_mcast: *const c_void,
    _compat_async_event: *const c_void,
}

/// `struct ibv_context`: an open device.
#[repr(C)]
pub struct IbvContext {
    /// The device.
    pub device: *mut IbvDevice,
    /// The provider's functions.
    pub ops: IbvContextOps,
    /// The command file descriptor.
    pub cmd_fd: c_int,
    /// The asynchronous-event file descriptor.
    pub async_fd: c_int,
    /// Completion vectors.
    pub num_comp_vectors: c_int,
    _mutex: libc::pthread_mutex_t,
    _abi_compat: *mut c_void,
}

/// `struct ibv_comp_channel`: a completion event channel (a file descriptor to wait on).
#[repr(C)]
pub struct IbvCompChannel {
    /// The context.
    pub context: *mut IbvContext,
    /// Readable when a completion event is pending.
    pub fd: c_int,
    _refcnt: c_int,
}

/// `struct ibv_cq`: a completion queue.
#[repr(C)]
pub struct IbvCq {
    /// The context (its `ops` poll this queue).
    pub context: *mut IbvContext,
    /// The completion channel, if any.
    pub channel: *mut IbvCompChannel,
    _cq_context: *mut c_void,
    _handle: u32,
    /// Entries.
    pub cqe: c_int,
    _mutex: libc::pthread_mutex_t,
    _cond: libc::pthread_cond_t,
    _comp_events_completed: u32,
    _async_events_completed: u32,
}

/// `struct ibv_mr`: a registered memory region.
#[repr(C)]
pub struct IbvMr {
    /// The context.
    pub context: *mut IbvContext,
    /// The protection domain.
    pub pd: *mut IbvPd,
    /// Start of the region.
    pub addr: *mut c_void,
    /// Length in bytes.
    pub length: usize,
    _handle: u32,
    /// The key local work requests name it by.
    pub lkey: u32,
    /// The key a peer names it by in one-sided operations.
    pub rkey: u32,
}

/// `struct ibv_qp`: a queue pair.
#[repr(C)]
pub struct IbvQp {
    /// The context (its `ops` post to this queue pair).
    pub context: *mut IbvContext,
    _qp_context: *mut c_void,
    _pd: *mut IbvPd,
    _send_cq: *mut IbvCq,
    _recv_cq: *mut IbvCq,
    _srq: *mut c_void,
    _handle: u32,
    /// The queue pair number a peer addresses.
    pub qp_num: u32,
    /// State (`IBV_QPS_*`).
    pub state: c_uint,
    /// Type (`IBV_QPT_*`).
    pub qp_type: c_uint,
    _mutex: libc::pthread_mutex_t,
    _cond: libc::pthread_cond_t,
    _events_completed: u32,
}

/// `struct ibv_sge`: one scatter/gather element.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvSge {
    /// Address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// The local key of the region holding it.
    pub lkey: u32,
}

/// `struct ibv_send_wr`. The unions are kept as raw words; [`IbvSendWr::set_rdma`] fills the
/// `wr.rdma` member.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IbvSendWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// The next request of a chain.
    pub next: *mut IbvSendWr,
    /// Scatter/gather list.
    pub sg_list: *mut IbvSge,
    /// Its length.
    pub num_sge: c_int,
    /// `IBV_WR_*`.
    pub opcode: c_uint,
    /// `IBV_SEND_*`.
    pub send_flags: c_uint,
    /// Immediate data (network order) or the rkey to invalidate.
    pub imm_data: u32,
    /// `union wr` (rdma: remote_addr u64, rkey u32; atomic; ud).
    pub wr: [u64; 4],
    /// `union qp_type` (xrc: remote_srqn).
    pub qp_type: u32,
    /// Padding before the 8-byte aligned union (always 0).
    pub pad: u32,
    /// The bind_mw / tso union.
    pub bind_or_tso: [u64; 6],
}

impl Default for IbvSendWr {
    fn default() -> Self {
        Self {
            wr_id: 0,
            next: std::ptr::null_mut(),
            sg_list: std::ptr::null_mut(),
            num_sge: 0,
            opcode: 0,
            send_flags: 0,
            imm_data: 0,
            wr: [0; 4],
            qp_type: 0,
            pad: 0,
            bind_or_tso: [0; 6],
        }
    }
}

impl IbvSendWr {
    /// Sets `wr.rdma`: the peer's address and the rkey of its region.
    pub fn set_rdma(&mut self, remote_addr: u64, rkey: u32) {
        self.wr[0] = remote_addr;
        self.wr[1] = u64::from(rkey);
    }
}

/// `struct ibv_recv_wr`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IbvRecvWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// The next request of a chain.
    pub next: *mut IbvRecvWr,
    /// Scatter/gather list.
    pub sg_list: *mut IbvSge,
    /// Its length.
    pub num_sge: c_int,
}

impl Default for IbvRecvWr {
    fn default() -> Self {
        Self {
            wr_id: 0,
            next: std::ptr::null_mut(),
            sg_list: std::ptr::null_mut(),
            num_sge: 0,
        }
    }
}

/// `struct ibv_wc`: a work completion.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvWc {
    /// The request's `wr_id`.
    pub wr_id: u64,
    /// `IBV_WC_SUCCESS` or why not.
    pub status: c_uint,
    /// `IBV_WC_*` opcode.
    pub opcode: c_uint,
    /// Vendor error.
    pub vendor_err: u32,
    /// Bytes received.
    pub byte_len: u32,
    /// Immediate data (network order) or the invalidated rkey.
    pub imm_data: u32,
    /// The local queue pair.
    pub qp_num: u32,
    /// The remote queue pair (UD).
    pub src_qp: u32,
    /// `IBV_WC_WITH_IMM`, ...
    pub wc_flags: c_uint,
    /// P_Key index.
    pub pkey_index: u16,
    /// Source LID.
    pub slid: u16,
    /// Service level.
    pub sl: u8,
    /// DLID path bits.
    pub dlid_path_bits: u8,
}

/// `union ibv_gid`: a 16-byte global identifier (8-byte aligned, as the union is).
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IbvGid {
    /// The bytes, network order.
    pub raw: [u8; 16],
}

/// `struct ibv_global_route`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvGlobalRoute {
    /// Destination GID.
    pub dgid: IbvGid,
    /// Flow label.
    pub flow_label: u32,
    /// Index of our GID to send from.
    pub sgid_index: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
}

/// `struct ibv_ah_attr`: an address vector.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvAhAttr {
    /// Global route (RoCE always uses one).
    pub grh: IbvGlobalRoute,
    /// Destination LID (InfiniBand).
    pub dlid: u16,
    /// Service level.
    pub sl: u8,
    /// Source path bits.
    pub src_path_bits: u8,
    /// Static rate.
    pub static_rate: u8,
    /// Whether `grh` is used.
    pub is_global: u8,
    /// Local port.
    pub port_num: u8,
}

/// `struct ibv_qp_cap`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvQpCap {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// Scatter/gather elements per send.
    pub max_send_sge: u32,
    /// Scatter/gather elements per receive.
    pub max_recv_sge: u32,
    /// Largest inline send.
    pub max_inline_data: u32,
}

/// `struct ibv_qp_init_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IbvQpInitAttr {
    /// Returned in async events.
    pub qp_context: *mut c_void,
    /// Send completions.
    pub send_cq: *mut IbvCq,
    /// Receive completions.
    pub recv_cq: *mut IbvCq,
    /// Shared receive queue (none).
    pub srq: *mut c_void,
    /// Queue sizes.
    pub cap: IbvQpCap,
    /// `IBV_QPT_*`.
    pub qp_type: c_uint,
    /// Whether every send completes with an entry.
    pub sq_sig_all: c_int,
}

/// `struct ibv_qp_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvQpAttr {
    /// Target state (`IBV_QPS_*`).
    pub qp_state: c_uint,
    /// Current state.
    pub cur_qp_state: c_uint,
    /// Path MTU (`IBV_MTU_*`).
    pub path_mtu: c_uint,
    /// Migration state.
    pub path_mig_state: c_uint,
    /// Q_Key (UD).
    pub qkey: u32,
    /// Receive PSN.
    pub rq_psn: u32,
    /// Send PSN.
    pub sq_psn: u32,
    /// The peer's queue pair number.
    pub dest_qp_num: u32,
    /// `IBV_ACCESS_*` granted to the peer.
    pub qp_access_flags: c_uint,
    /// Queue sizes.
    pub cap: IbvQpCap,
    /// The path to the peer.
    pub ah_attr: IbvAhAttr,
    /// Alternate path.
    pub alt_ah_attr: IbvAhAttr,
    /// P_Key index.
    pub pkey_index: u16,
    /// Alternate P_Key index.
    pub alt_pkey_index: u16,
    /// SQD event.
    pub en_sqd_async_notify: u8,
    /// Draining.
    pub sq_draining: u8,
    /// Outstanding RDMA reads we may issue.
    pub max_rd_atomic: u8,
    /// Outstanding RDMA reads the peer may issue to us.
    pub max_dest_rd_atomic: u8,
    /// RNR NAK timer.
    pub min_rnr_timer: u8,
    /// Local port.
    pub port_num: u8,
    /// Local ACK timeout (4.096 µs × 2^timeout).
    pub timeout: u8,
    /// Retries on timeout.
    pub retry_cnt: u8,
    /// Retries on RNR NAK (7: infinite).
    pub rnr_retry: u8,
    /// Alternate port.
    pub alt_port_num: u8,
    /// Alternate timeout.
    pub alt_timeout: u8,
    /// Rate limit.
    pub rate_limit: u32,
}

/// `struct ibv_port_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IbvPortAttr {
    /// `IBV_PORT_*`.
    pub state: c_uint,
    /// Largest MTU.
    pub max_mtu: c_uint,
    /// Active MTU (`IBV_MTU_*`).
    pub active_mtu: c_uint,
    /// GID table length.
    pub gid_tbl_len: c_int,
    /// Capabilities.
    pub port_cap_flags: u32,
    /// Largest message.
    pub max_msg_sz: u32,
    /// Bad P_Key counter.
    pub bad_pkey_cntr: u32,
    /// Q_Key violations.
    pub qkey_viol_cntr: u32,
    /// P_Key table length.
    pub pkey_tbl_len: u16,
    /// LID (InfiniBand).
    pub lid: u16,
    /// Subnet manager LID.
    pub sm_lid: u16,
    /// LMC.
    pub lmc: u8,
    /// VLs.
    pub max_vl_num: u8,
    /// SM service level.
    pub sm_sl: u8,
    /// Subnet timeout.
    pub subnet_timeout: u8,
    /// Init type reply.
    pub init_type_reply: u8,
    /// Width.
    pub active_width: u8,
    /// Speed.
    pub active_speed: u8,
    /// Physical state.
    pub phys_state: u8,
    /// `IBV_LINK_LAYER_*`.
    pub link_layer: u8,
    /// Flags.
    pub flags: u8,
    /// More capabilities.
    pub port_cap_flags2: u16,
}

/// `IBV_QPT_RC`: reliable connected.
pub const IBV_QPT_RC: c_uint = 2;
/// `IBV_QPS_RESET`.
pub const IBV_QPS_RESET: c_uint = 0;
/// `IBV_QPS_INIT`.
pub const IBV_QPS_INIT: c_uint = 1;
/// `IBV_QPS_RTR`: ready to receive.
pub const IBV_QPS_RTR: c_uint = 2;
/// `IBV_QPS_RTS`: ready to send.
pub const IBV_QPS_RTS: c_uint = 3;
/// `IBV_QPS_ERR`.
pub const IBV_QPS_ERR: c_uint = 6;
/// `ibv_modify_qp` mask: state.
pub const IBV_QP_STATE: c_int = 1 << 0;
/// Mask: access flags.
pub const IBV_QP_ACCESS_FLAGS: c_int = 1 << 3;
/// Mask: P_Key index.
pub const IBV_QP_PKEY_INDEX: c_int = 1 << 4;
/// Mask: port.
pub const IBV_QP_PORT: c_int = 1 << 5;
/// Mask: address vector.
pub const IBV_QP_AV: c_int = 1 << 7;
/// Mask: path MTU.
pub const IBV_QP_PATH_MTU: c_int = 1 << 8;
/// Mask: timeout.
pub const IBV_QP_TIMEOUT: c_int = 1 << 9;
/// Mask: retry count.
pub const IBV_QP_RETRY_CNT: c_int = 1 << 10;
/// Mask: RNR retry.
pub const IBV_QP_RNR_RETRY: c_int = 1 << 11;
/// Mask: receive PSN.
pub const IBV_QP_RQ_PSN: c_int = 1 << 12;
/// Mask: outstanding reads we issue.
pub const IBV_QP_MAX_QP_RD_ATOMIC: c_int = 1 << 13;
/// Mask: RNR timer.
pub const IBV_QP_MIN_RNR_TIMER: c_int = 1 << 15;
/// Mask: send PSN.
pub const IBV_QP_SQ_PSN: c_int = 1 << 16;
/// Mask: outstanding reads the peer issues.
pub const IBV_QP_MAX_DEST_RD_ATOMIC: c_int = 1 << 17;
/// Mask: destination QP number.
pub const IBV_QP_DEST_QPN: c_int = 1 << 20;
/// Access: local write.
pub const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
/// Access: remote write.
pub const IBV_ACCESS_REMOTE_WRITE: c_int = 1 << 1;
/// Access: remote read.
pub const IBV_ACCESS_REMOTE_READ: c_int = 1 << 2;
/// Opcode: RDMA write.
pub const IBV_WR_RDMA_WRITE: c_uint = 0;
/// Opcode: RDMA write with immediate.
pub const IBV_WR_RDMA_WRITE_WITH_IMM: c_uint = 1;
/// Opcode: send.
pub const IBV_WR_SEND: c_uint = 2;
/// Opcode: send with immediate data.
pub const IBV_WR_SEND_WITH_IMM: c_uint = 3;
/// Opcode: RDMA read.
pub const IBV_WR_RDMA_READ: c_uint = 4;
/// Send flag: complete with an entry.
pub const IBV_SEND_SIGNALED: c_uint = 1 << 1;
/// Send flag: data copied into the request.
pub const IBV_SEND_INLINE: c_uint = 1 << 3;
/// Completion status: success.
pub const IBV_WC_SUCCESS: c_uint = 0;
/// Completion opcode: send.
pub const IBV_WC_SEND: c_uint = 0;
/// Completion opcode: RDMA write.
pub const IBV_WC_RDMA_WRITE: c_uint = 1;
/// Completion opcode: RDMA read.
pub const IBV_WC_RDMA_READ: c_uint = 2;
/// Completion flag: the entry carries immediate data (`imm_data`, network byte order).
pub const IBV_WC_WITH_IMM: c_uint = 1 << 1;
/// Completion opcode: receive (a bit: `opcode & IBV_WC_RECV`).
pub const IBV_WC_RECV: c_uint = 1 << 7;
/// Completion opcode: receive of an RDMA write with immediate.
pub const IBV_WC_RECV_RDMA_WITH_IMM: c_uint = IBV_WC_RECV + 1;
/// MTU 1024.
pub const IBV_MTU_1024: c_uint = 3;
/// MTU 4096.
pub const IBV_MTU_4096: c_uint = 5;
/// Port state: active.
pub const IBV_PORT_ACTIVE: c_uint = 4;
/// Link layer: InfiniBand.
pub const IBV_LINK_LAYER_INFINIBAND: u8 = 1;
/// Link layer: Ethernet (RoCE).
pub const IBV_LINK_LAYER_ETHERNET: u8 = 2;

/// The exported entry points, resolved once.
#[derive(Debug)]
pub struct Lib {
    handle: NonNull<c_void>,
    /// `struct ibv_device **ibv_get_device_list(int *num_devices)`.
    pub get_device_list: unsafe extern "C" fn(*mut c_int) -> *mut *mut IbvDevice,
    /// `void ibv_free_device_list(struct ibv_device **list)`.
    pub free_device_list: unsafe extern "C" fn(*mut *mut IbvDevice),
    /// `const char *ibv_get_device_name(struct ibv_device *)`.
    pub get_device_name: unsafe extern "C" fn(*mut IbvDevice) -> *const c_char,
    /// `struct ibv_context *ibv_open_device(struct ibv_device *)`.
    pub open_device: unsafe extern "C" fn(*mut IbvDevice) -> *mut IbvContext,
    /// `int ibv_close_device(struct ibv_context *)`.
    pub close_device: unsafe extern "C" fn(*mut IbvContext) -> c_int,
    /// `int ibv_query_port(struct ibv_context *, uint8_t, struct ibv_port_attr *)` (the
    /// exported, compatible entry: it fills the fields every rdma-core has).
    pub query_port: unsafe extern "C" fn(*mut IbvContext, u8, *mut IbvPortAttr) -> c_int,
    /// `int ibv_query_gid(struct ibv_context *, uint8_t, int, union ibv_gid *)`.
    pub query_gid: unsafe extern "C" fn(*mut IbvContext, u8, c_int, *mut IbvGid) -> c_int,
    /// `struct ibv_pd *ibv_alloc_pd(struct ibv_context *)`.
    pub alloc_pd: unsafe extern "C" fn(*mut IbvContext) -> *mut IbvPd,
    /// `int ibv_dealloc_pd(struct ibv_pd *)`.
    pub dealloc_pd: unsafe extern "C" fn(*mut IbvPd) -> c_int,
    /// `struct ibv_mr *ibv_reg_mr(struct ibv_pd *, void *, size_t, int access)`.
    pub reg_mr: unsafe extern "C" fn(*mut IbvPd, *mut c_void, usize, c_int) -> *mut IbvMr,
    /// `int ibv_dereg_mr(struct ibv_mr *)`.
    pub dereg_mr: unsafe extern "C" fn(*mut IbvMr) -> c_int,
    /// `struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *)`.
    pub create_comp_channel: unsafe extern "C" fn(*mut IbvContext) -> *mut IbvCompChannel,
    /// `int ibv_destroy_comp_channel(struct ibv_comp_channel *)`.
    pub destroy_comp_channel: unsafe extern "C" fn(*mut IbvCompChannel) -> c_int,
    /// `struct ibv_cq *ibv_create_cq(ctx, int cqe, void *cq_context, channel, int vector)`.
    pub create_cq: unsafe extern "C" fn(
        *mut IbvContext,
        c_int,
        *mut c_void,
        *mut IbvCompChannel,
        c_int,
    ) -> *mut IbvCq,
    /// `int ibv_destroy_cq(struct ibv_cq *)`.
    pub destroy_cq: unsafe extern "C" fn(*mut IbvCq) -> c_int,
    /// `int ibv_get_cq_event(channel, struct ibv_cq **cq, void **cq_context)`.
    pub get_cq_event:
        unsafe extern "C" fn(*mut IbvCompChannel, *mut *mut IbvCq, *mut *mut c_void) -> c_int,
    /// `void ibv_ack_cq_events(struct ibv_cq *, unsigned int nevents)`.
    pub ack_cq_events: unsafe extern "C" fn(*mut IbvCq, c_uint),
    /// `struct ibv_qp *ibv_create_qp(struct ibv_pd *, struct ibv_qp_init_attr *)`.
    pub create_qp: unsafe extern "C" fn(*mut IbvPd, *mut IbvQpInitAttr) -> *mut IbvQp,
    /// `int ibv_modify_qp(struct ibv_qp *, struct ibv_qp_attr *, int attr_mask)`.
    pub modify_qp: unsafe extern "C" fn(*mut IbvQp, *mut IbvQpAttr, c_int) -> c_int,
    /// `int ibv_destroy_qp(struct ibv_qp *)`.
    pub destroy_qp: unsafe extern "C" fn(*mut IbvQp) -> c_int,
}

// SAFETY: the handle is only used to resolve symbols and to close the library, and the
// entry points are plain C functions that rdma-core documents as thread-safe.
unsafe impl Send for Lib {}
// SAFETY: as above; nothing in `Lib` is mutated after `open`.
unsafe impl Sync for Lib {}

fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local string or null.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated, valid until the next dl* call on this thread.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

impl Lib {
    /// Opens [`LIBRARY`] and resolves every entry point.
    pub fn open() -> Result<Self, LoadError> {
        Self::open_named(LIBRARY)
    }

    /// Opens the named shared object (a test names one that does not exist).
    pub fn open_named(library: &str) -> Result<Self, LoadError> {
        let name = std::ffi::CString::new(library).map_err(|_| LoadError::Open {
            library: library.into(),
            reason: "the name holds a NUL byte".into(),
        })?;
        // SAFETY: a NUL-terminated name; RTLD_NOW resolves everything now, so a broken
        // library fails here rather than at a later call.
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        let Some(handle) = NonNull::new(h) else {
            return Err(LoadError::Open {
                library: library.into(),
                reason: dl_error(),
            });
        };
        let sym = |symbol: &'static str| -> Result<*mut c_void, LoadError> {
            let c = std::ffi::CString::new(symbol).expect("symbol names have no NUL");
            // SAFETY: a live handle and a NUL-terminated name.
            let p = unsafe { libc::dlsym(handle.as_ptr(), c.as_ptr()) };
            if p.is_null() {
                Err(LoadError::Symbol {
                    library: library.into(),
                    symbol,
                })
            } else {
                Ok(p)
            }
        };
        macro_rules! f {
            ($name:literal, $t:ty) => {
                // SAFETY: the symbol is libibverbs' exported function of that name, whose C
                // prototype the field's type declares (checked by tests/abi.rs).
                unsafe { std::mem::transmute::<*mut c_void, $t>(sym($name)?) }
            };
        }
        let lib = (|| {
            Ok(Lib {
                handle,
                get_device_list: f!(
                    "ibv_get_device_list",
                    unsafe extern "C" fn(*mut c_int) -> *mut *mut IbvDevice
                ),
                free_device_list: f!(
                    "ibv_free_device_list",
                    unsafe extern "C" fn(*mut *mut IbvDevice)
                ),
                get_device_name: f!(
                    "ibv_get_device_name",
                    unsafe extern "C" fn(*mut IbvDevice) -> *const c_char
                ),
                open_device: f!(
                    "ibv_open_device",
                    unsafe extern "C" fn(*mut IbvDevice) -> *mut IbvContext
                ),
                close_device: f!(
                    "ibv_close_device",
                    unsafe extern "C" fn(*mut IbvContext) -> c_int
                ),
                query_port: f!(
                    "ibv_query_port",
                    unsafe extern "C" fn(*mut IbvContext, u8, *mut IbvPortAttr) -> c_int
                ),
                query_gid: f!(
                    "ibv_query_gid",
                    unsafe extern "C" fn(*mut IbvContext, u8, c_int, *mut IbvGid) -> c_int
                ),
                alloc_pd: f!(
                    "ibv_alloc_pd",
                    unsafe extern "C" fn(*mut IbvContext) -> *mut IbvPd
                ),
                dealloc_pd: f!("ibv_dealloc_pd", unsafe extern "C" fn(*mut IbvPd) -> c_int),
                reg_mr: f!(
                    "ibv_reg_mr",
                    unsafe extern "C" fn(*mut IbvPd, *mut c_void, usize, c_int) -> *mut IbvMr
                ),
                dereg_mr: f!("ibv_dereg_mr", unsafe extern "C" fn(*mut IbvMr) -> c_int),
                create_comp_channel: f!(
                    "ibv_create_comp_channel",
                    unsafe extern "C" fn(*mut IbvContext) -> *mut IbvCompChannel
                ),
                destroy_comp_channel: f!(
                    "ibv_destroy_comp_channel",
                    unsafe extern "C" fn(*mut IbvCompChannel) -> c_int
                ),
                create_cq: f!(
                    "ibv_create_cq",
                    unsafe extern "C" fn(
                        *mut IbvContext,
                        c_int,
                        *mut c_void,
                        *mut IbvCompChannel,
                        c_int,
                    ) -> *mut IbvCq
                ),
                destroy_cq: f!("ibv_destroy_cq", unsafe extern "C" fn(*mut IbvCq) -> c_int),
                get_cq_event: f!(
                    "ibv_get_cq_event",
                    unsafe extern "C" fn(
                        *mut IbvCompChannel,
                        *mut *mut IbvCq,
                        *mut *mut c_void,
                    ) -> c_int
                ),
                ack_cq_events: f!(
                    "ibv_ack_cq_events",
                    unsafe extern "C" fn(*mut IbvCq, c_uint)
                ),
                create_qp: f!(
                    "ibv_create_qp",
                    unsafe extern "C" fn(*mut IbvPd, *mut IbvQpInitAttr) -> *mut IbvQp
                ),
                modify_qp: f!(
                    "ibv_modify_qp",
                    unsafe extern "C" fn(*mut IbvQp, *mut IbvQpAttr, c_int) -> c_int
                ),
                destroy_qp: f!("ibv_destroy_qp", unsafe extern "C" fn(*mut IbvQp) -> c_int),
            })
        })();
        if lib.is_err() {
            // SAFETY: the handle came from dlopen above and nothing resolved from it is kept.
            // A failed dlclose only leaves the library mapped; the symbol error is the news.
            if unsafe { libc::dlclose(handle.as_ptr()) } != 0 {
                eprintln!("transport-verbs: dlclose({library}) failed: {}", dl_error());
            }
        }
        lib
    }
}

impl Drop for Lib {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen; every object made through the library holds
        // an `Arc<Lib>`, so none is left when this runs.
        if unsafe { libc::dlclose(self.handle.as_ptr()) } != 0 {
            // The library stays mapped: harmless, but said.
            eprintln!("transport-verbs: dlclose({LIBRARY}) failed: {}", dl_error());
        }
    }
}
