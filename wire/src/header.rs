//! The fixed 40-byte frame header: constants, message types with their payload and flag rules,
//! and the allocation-free little-endian codec with strict validation.

use thiserror::Error;

/// Size of an encoded header in bytes.
pub const HEADER_LEN: usize = 40;

/// Page size carried by page payloads (4 KiB; 2 MiB pages will get their own constant).
pub const PAGE_SIZE: usize = 4096;

/// Largest payload any frame may carry. A header announcing more is [`FrameError::Oversized`].
pub const MAX_PAYLOAD: usize = PAGE_SIZE;

/// Frame magic: the bytes `S S I D` on the wire (the little-endian encoding of this value).
pub const MAGIC: u32 = u32::from_le_bytes(*b"SSID");

/// Wire format version understood by this build.
pub const VERSION: u8 = 1;

/// Node ids are below this bound (one bit per node in 64-bit masks).
pub const MAX_NODES: u16 = 64;

/// Flag bits (header bytes 6..8). Which bits a type may carry is in the type table below.
pub mod flags {
    /// A one-page payload follows the header. Set exactly when `payload_len` is non-zero.
    pub const DATA: u16 = 1 << 0;
    /// `Data`: the grant is writable (exclusive ownership).
    pub const WRITABLE: u16 = 1 << 1;
    /// `FwdAck`: the owner kept a read-only copy.
    pub const KEPT: u16 = 1 << 2;
    /// `FwdAck`: the owner knew the requester was dead and sent it nothing.
    pub const GONE: u16 = 1 << 3;
    /// `EvictReq`: dirty write-back (a payload follows).
    pub const DIRTY: u16 = 1 << 4;
    /// `RecallAck`: the requester holds a copy.
    pub const HAVE: u16 = 1 << 5;
    /// `RecallAck`: that copy is exclusive (writable, or being written back).
    pub const EXCL: u16 = 1 << 6;
}

use flags::{DATA, DIRTY, EXCL, GONE, HAVE, KEPT, WRITABLE};

/// Payload lengths a message type allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadRule {
    /// Header only.
    Empty,
    /// Exactly one page.
    Page,
    /// Header only or exactly one page.
    EmptyOrPage,
}

impl PayloadRule {
    /// Whether `len` is allowed by this rule.
    pub const fn allows(self, len: u32) -> bool {
        match self {
            PayloadRule::Empty => len == 0,
            PayloadRule::Page => len as usize == PAGE_SIZE,
            PayloadRule::EmptyOrPage => len == 0 || len as usize == PAGE_SIZE,
        }
    }
}

macro_rules! msg_types {
    ($($(#[$doc:meta])* $name:ident = $code:expr, $rule:ident, $flags:expr;)*) => {
        /// Message type (byte 5 of the header). Codes are fixed by the wire format version.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum MsgType {
            $($(#[$doc])* $name = $code,)*
        }

        impl MsgType {
            /// Every message type, in code order.
            pub const ALL: &'static [MsgType] = &[$(MsgType::$name,)*];

            /// The type with wire code `code`, if any.
            pub const fn from_code(code: u8) -> Option<MsgType> {
                match code {
                    $($code => Some(MsgType::$name),)*
                    _ => None,
                }
            }

            /// Payload lengths this type allows.
            pub const fn payload_rule(self) -> PayloadRule {
                match self {
                    $(MsgType::$name => PayloadRule::$rule,)*
                }
            }

            /// Flag bits defined for this type; any other bit set is [`FrameError::BadFlags`].
            pub const fn allowed_flags(self) -> u16 {
                match self {
                    $(MsgType::$name => $flags,)*
                }
            }
        }
    };
}

msg_types! {
    /// Read fault: ask the home for a read-only copy.
    ReadReq = 1, Empty, 0;
    /// Write fault on an invalid page: ask the home for exclusive ownership.
    WriteReq = 2, Empty, 0;
    /// Write fault on a read-only copy: ask the home to upgrade it to exclusive.
    UpgradeReq = 3, Empty, 0;
    /// Home → owner: send a read-only copy to the requester named in `aux`.
    FwdRead = 4, Empty, 0;
    /// Home → owner: hand ownership to the requester named in `aux`.
    FwdWrite = 5, Empty, 0;
    /// Home → sharer: drop your copy.
    Inv = 6, Empty, 0;
    /// Sharer → home: copy dropped.
    InvAck = 7, Empty, 0;
    /// A page's contents, read-only or writable.
    Data = 8, Page, DATA | WRITABLE;
    /// Upgrade granted without data (the requester's copy is current).
    Grant = 9, Empty, 0;
    /// Owner → home: forward done, with the page when the home gets a copy.
    FwdAck = 10, EmptyOrPage, DATA | KEPT | GONE;
    /// Requester → home: data from a non-home node installed; the transaction completed.
    Done = 11, Empty, 0;
    /// Drop a replica (clean) or write it back home (dirty, with the page).
    EvictReq = 12, EmptyOrPage, DATA | DIRTY;
    /// Home → evicter: eviction recorded.
    EvictAck = 13, Empty, 0;
    /// Request refused (busy: retry; or the page is lost).
    Nack = 14, Empty, 0;
    /// Home → requester: what do you hold? (after the data source died).
    Recall = 15, Empty, 0;
    /// Requester → home: answer to a recall, with the page when it holds a clean copy.
    RecallAck = 16, EmptyOrPage, DATA | HAVE | EXCL;
    /// Old home → new home (home migration): the page's directory entry (`arg` = version in
    /// the low 32 bits, the move's number in the high 32) and its only copy (none for a page
    /// never materialised; `GONE`: none because the page is lost).
    HomeMove = 17, EmptyOrPage, DATA | GONE;
    /// Leaving home → its successor: the page's home moved from the sender to node `aux` at
    /// move number `arg`.
    HomePointer = 18, Empty, 0;
    /// Transport liveness / RTT probe.
    Ping = 32, Empty, 0;
    /// Answer to [`MsgType::Ping`].
    Pong = 33, Empty, 0;
    /// Session: `arg` = how many protocol frames (codes 1–18) the sender has received on
    /// this session so far; the receiver may forget its copies of them.
    Ack = 34, Empty, 0;
    /// Session: the first frame on every connection. `txn` = the sender's incarnation (fixed
    /// for the life of its process), `arg` = protocol frames it received on this session so
    /// far; the receiver resends from there.
    Resume = 35, Empty, 0;
}

/// Why a header (or frame) was rejected. Any of these closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The first four bytes are not the frame magic.
    #[error("bad frame magic {0:#010x} (expected {MAGIC:#010x}): the peer is not speaking the ssi-dp wire protocol or the stream lost sync")]
    BadMagic(u32),
    /// Unsupported wire version.
    #[error("unsupported wire version {0} (this node speaks {VERSION}): run the same ssi-dp version on every node")]
    BadVersion(u8),
    /// Unknown message type code.
    #[error("unknown message type code {0}: the peer runs an incompatible ssi-dp build")]
    UnknownType(u8),
    /// Payload length not allowed for the type.
    #[error("payload length {len} is not allowed for {ty:?}: the peer violates the wire format")]
    BadPayloadLen {
        /// The message type.
        ty: MsgType,
        /// The announced payload length.
        len: u32,
    },
    /// Payload length larger than any frame may carry.
    #[error("payload length {0} exceeds the {MAX_PAYLOAD}-byte frame limit: the peer violates the wire format")]
    Oversized(u32),
    /// Flag bits not defined for the type, or the `DATA` flag disagreeing with the payload.
    #[error("flags {flags:#06x} have bits not defined for {ty:?}: the peer runs an incompatible ssi-dp build")]
    BadFlags {
        /// The message type.
        ty: MsgType,
        /// The received flags.
        flags: u16,
    },
    /// Sender node id out of range.
    #[error("sender node id {0} is out of range (node ids are below {MAX_NODES})")]
    BadNodeId(u16),
    /// Sender node id differs from the node authenticated on this connection.
    #[error(
        "sender node id {got} differs from the node {expected} authenticated on this connection"
    )]
    WrongSender {
        /// The authenticated node.
        expected: u16,
        /// The node id in the frame.
        got: u16,
    },
    /// The frame's tag did not verify: it was altered, injected, dropped or replayed on the
    /// path (or the peer's keys differ).
    #[error("a frame failed authentication: something on the path altered, injected, dropped or replayed it")]
    Unauthenticated,
}

impl FrameError {
    /// Number of distinct reasons (for per-reason counters).
    pub const REASONS: usize = 9;

    /// A dense index in `0..REASONS` for per-reason counters.
    pub const fn reason_index(&self) -> usize {
        match self {
            FrameError::BadMagic(_) => 0,
            FrameError::BadVersion(_) => 1,
            FrameError::UnknownType(_) => 2,
            FrameError::BadPayloadLen { .. } => 3,
            FrameError::Oversized(_) => 4,
            FrameError::BadFlags { .. } => 5,
            FrameError::BadNodeId(_) => 6,
            FrameError::WrongSender { .. } => 7,
            FrameError::Unauthenticated => 8,
        }
    }

    /// Short stable name of the reason at `index` (metric label).
    pub const fn reason_name(index: usize) -> &'static str {
        match index {
            0 => "bad_magic",
            1 => "bad_version",
            2 => "unknown_type",
            3 => "bad_payload_len",
            4 => "oversized",
            5 => "bad_flags",
            6 => "bad_node_id",
            7 => "wrong_sender",
            8 => "unauthenticated",
            _ => "unknown",
        }
    }
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub ty: MsgType,
    /// Type-specific flag bits (see [`MsgType::allowed_flags`]).
    pub flags: u16,
    /// Node id of the sender (below [`MAX_NODES`]).
    pub sender: u16,
    /// Type-specific u16 (the requester node for forwarded requests).
    pub aux: u16,
    /// Payload length in bytes (see [`MsgType::payload_rule`]).
    pub payload_len: u32,
    /// Sequence / transaction id.
    pub txn: u64,
    /// Page number in the global address space.
    pub page: u64,
    /// Type-specific u64 (e.g. the page's version).
    pub arg: u64,
}

impl Header {
    /// A header of type `ty` from `sender` with every other field zero.
    pub const fn new(ty: MsgType, sender: u16) -> Header {
        Header {
            ty,
            flags: 0,
            sender,
            aux: 0,
            payload_len: 0,
            txn: 0,
            page: 0,
            arg: 0,
        }
    }

    /// Sets `payload_len` and the [`flags::DATA`] bit together (a decoder refuses a frame
    /// where they disagree).
    pub fn set_payload_len(&mut self, len: u32) {
        self.payload_len = len;
        if len == 0 {
            self.flags &= !DATA;
        } else {
            self.flags |= DATA;
        }
    }

    /// Checks the fields a decoder checks (payload rule, flags, sender). Senders call it
    /// before encoding so that they never put a frame on the wire that the peer would reject.
    pub fn validate(&self) -> Result<(), FrameError> {
        if self.payload_len as usize > MAX_PAYLOAD {
            return Err(FrameError::Oversized(self.payload_len));
        }
        if !self.ty.payload_rule().allows(self.payload_len) {
            return Err(FrameError::BadPayloadLen {
                ty: self.ty,
                len: self.payload_len,
            });
        }
        let data_flag_wrong = (self.flags & DATA != 0) != (self.payload_len != 0)
            && self.ty.payload_rule() != PayloadRule::Empty;
        if self.flags & !self.ty.allowed_flags() != 0 || data_flag_wrong {
            return Err(FrameError::BadFlags {
                ty: self.ty,
                flags: self.flags,
            });
        }
        if self.sender >= MAX_NODES {
            return Err(FrameError::BadNodeId(self.sender));
        }
        Ok(())
    }

    /// Encodes the header into `out` (little-endian). Does not validate: see [`Header::validate`].
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = VERSION;
        out[5] = self.ty as u8;
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..10].copy_from_slice(&self.sender.to_le_bytes());
        out[10..12].copy_from_slice(&self.aux.to_le_bytes());
        out[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.txn.to_le_bytes());
        out[24..32].copy_from_slice(&self.page.to_le_bytes());
        out[32..40].copy_from_slice(&self.arg.to_le_bytes());
    }

    /// Decodes and validates a header. Never panics; every malformed input is a [`FrameError`].
    pub fn decode(buf: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let magic = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if buf[4] != VERSION {
            return Err(FrameError::BadVersion(buf[4]));
        }
        let ty = MsgType::from_code(buf[5]).ok_or(FrameError::UnknownType(buf[5]))?;
        let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let h = Header {
            ty,
            flags: u16_at(6),
            sender: u16_at(8),
            aux: u16_at(10),
            payload_len: u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]),
            txn: u64_at(16),
            page: u64_at(24),
            arg: u64_at(32),
        };
        h.validate()?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            ty: MsgType::Data,
            flags: DATA | WRITABLE,
            sender: 7,
            aux: 3,
            payload_len: PAGE_SIZE as u32,
            txn: 0x0102_0304_0506_0708,
            page: 0xdead_beef,
            arg: 42,
        }
    }

    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        let mut b = [0u8; HEADER_LEN];
        sample().encode(&mut b);
        assert_eq!(&b[0..4], b"SSID");
        assert_eq!(b[4], 1);
        assert_eq!(b[5], 8);
        assert_eq!(&b[6..8], &[3, 0]);
        assert_eq!(&b[8..10], &[7, 0]);
        assert_eq!(&b[10..12], &[3, 0]);
        assert_eq!(&b[12..16], &[0, 0x10, 0, 0]);
        assert_eq!(&b[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[24..28], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(b[32], 42);
        assert_eq!(Header::decode(&b), Ok(sample()));
    }

    #[test]
    fn each_malformation_has_its_error() {
        let mut good = [0u8; HEADER_LEN];
        sample().encode(&mut good);
        let mut b = good;
        b[0] ^= 1;
        assert!(matches!(Header::decode(&b), Err(FrameError::BadMagic(_))));
        let mut b = good;
        b[4] = 2;
        assert_eq!(Header::decode(&b), Err(FrameError::BadVersion(2)));
        let mut b = good;
        b[5] = 19;
        assert_eq!(Header::decode(&b), Err(FrameError::UnknownType(19)));
        let mut b = good;
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            Header::decode(&b),
            Err(FrameError::BadPayloadLen {
                ty: MsgType::Data,
                len: 0
            })
        );
        let mut b = good;
        b[12..16].copy_from_slice(&(1u32 << 20).to_le_bytes());
        assert_eq!(Header::decode(&b), Err(FrameError::Oversized(1 << 20)));
        let mut b = good;
        b[6] = 0x82;
        assert_eq!(
            Header::decode(&b),
            Err(FrameError::BadFlags {
                ty: MsgType::Data,
                flags: 0x82
            })
        );
        let mut b = good;
        b[6] = 0x02; // WRITABLE without DATA although a page follows
        assert_eq!(
            Header::decode(&b),
            Err(FrameError::BadFlags {
                ty: MsgType::Data,
                flags: 0x02
            })
        );
        let mut b = good;
        b[5] = MsgType::FwdAck as u8;
        b[6] = 0; // a page follows but DATA is clear
        assert_eq!(
            Header::decode(&b),
            Err(FrameError::BadFlags {
                ty: MsgType::FwdAck,
                flags: 0
            })
        );
        let mut b = good;
        b[8] = 64;
        assert_eq!(Header::decode(&b), Err(FrameError::BadNodeId(64)));
    }

    #[test]
    fn payload_rules_follow_the_table() {
        assert!(MsgType::ReadReq.payload_rule().allows(0));
        assert!(!MsgType::ReadReq.payload_rule().allows(4096));
        assert!(!MsgType::Data.payload_rule().allows(0));
        assert!(MsgType::FwdAck.payload_rule().allows(0));
        assert!(MsgType::FwdAck.payload_rule().allows(4096));
        assert!(!MsgType::EvictReq.payload_rule().allows(4095));
        for &t in MsgType::ALL {
            assert_eq!(MsgType::from_code(t as u8), Some(t));
        }
        assert_eq!(MsgType::from_code(0), None);
        assert_eq!(MsgType::from_code(36), None);
    }
}
