//! The wire format shared by every transport, and the `Transport` trait the data plane sees.
//!
//! - [`header`]: the 40-byte frame header and its validation.
//! - [`parser`]: per-connection frame reassembly into page-aligned receive slots.
//! - [`txq`]: the bounded per-peer transmit queue with short-send and zero-copy tracking.
//! - [`handshake`]: peer authentication and session keys at connection setup.
//! - [`seal`]: per-frame authentication (and optional encryption) with those keys.
//! - [`transport`]: the `Transport` trait, its events, configuration and errors.
//! - [`counters`], [`ratelimit`]: lock-free counters and rate-limited logging.
//!
//! The format and handshake are described in `docs/wire.md`.

pub mod conn;
pub mod counters;
pub mod handshake;
pub mod header;
pub mod parser;
pub mod peermap;
pub mod ratelimit;
pub mod region;
pub mod seal;
pub mod slots;
pub mod slotset;
pub mod sock;
pub mod transport;
pub mod txq;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use counters::TransportStats;
pub use header::{
    flags, FrameError, Header, MsgType, PayloadRule, HEADER_LEN, MAGIC, MAX_NODES, MAX_PAYLOAD,
    PAGE_SIZE, VERSION,
};
pub use parser::{FrameParser, Parsed};
pub use peermap::PeerMap;
pub use seal::{FrameAuth, FrameKeys};
pub use slots::{RxBuf, RxSlots};
pub use transport::{
    DownReason, Event, NodeId, PageRef, Payload, PeerId, SendOutcome, Transport, TransportConfig,
    TransportError,
};
