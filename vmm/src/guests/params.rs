//! The parameter block (one page at [`crate::layout::TEST_PARAMS_OFFSET`]): byte offsets of
//! its little-endian u64 fields, shared by the host writer and the assembly payloads.

/// "SSIDPTG1": marks a block written by this VMM.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SSIDPTG1");
/// Offset of the magic.
pub const MAGIC_OFF: u64 = 0;
/// vCPU count of the whole VM.
pub const VCPUS: u64 = 8;
/// Doorbell GPA.
pub const DOORBELL: u64 = 16;
/// Iterations per vCPU (atomics rounds, ticket-lock acquisitions).
pub const ITERATIONS: u64 = 24;
/// Sync page GPA (barrier counters every 64 bytes).
pub const SYNC: u64 = 32;
/// First counter GPA (atomics).
pub const COUNTERS: u64 = 40;
/// Number of counters.
pub const COUNTER_COUNT: u64 = 48;
/// Bytes between counters.
pub const COUNTER_STRIDE: u64 = 56;
/// Ticket lock GPA: next ticket at +0, now serving at +64.
pub const LOCK: u64 = 64;
/// The counter the ticket lock protects.
pub const LOCKED_COUNTER: u64 = 72;
/// Array GPA (parallel sum).
pub const ARRAY: u64 = 80;
/// Array elements (u64).
pub const ARRAY_LEN: u64 = 88;
/// Partials GPA: vCPU i stores at +i * 4096.
pub const PARTIALS: u64 = 96;
/// First page of the latency slices (vCPU i touches slice (i + 1) mod n).
pub const TOUCH_BASE: u64 = 104;
/// Bytes between the slices of consecutive vCPUs.
pub const TOUCH_STRIDE: u64 = 112;
/// Pages each vCPU touches.
pub const TOUCH_PAGES: u64 = 120;
/// Bytes of the block in use.
pub const LEN: u64 = 128;
