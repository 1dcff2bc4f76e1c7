//! Protocol messages and their mapping onto the wire header's plain fields
//! (`type, flags, aux, txn, page, arg` + an optional one-page payload).

use super::node::{NodeError, NodeId};
use thiserror::Error;

/// Wire type codes (`MsgFields::ty`): the wire crate's [`wire::MsgType`] codes, which own the
/// numbering and each type's payload and flag rules.
pub mod code {
    use wire::MsgType;

    /// Read miss: requester → home.
    pub const READ_REQ: u8 = MsgType::ReadReq as u8;
    /// Write miss: requester → home.
    pub const WRITE_REQ: u8 = MsgType::WriteReq as u8;
    /// Upgrade of a read-only copy: requester → home.
    pub const UPGRADE_REQ: u8 = MsgType::UpgradeReq as u8;
    /// Home asks the owner to serve a reader.
    pub const FWD_READ: u8 = MsgType::FwdRead as u8;
    /// Home asks the owner to hand the page to a writer.
    pub const FWD_WRITE: u8 = MsgType::FwdWrite as u8;
    /// Home invalidates a sharer.
    pub const INV: u8 = MsgType::Inv as u8;
    /// Sharer acknowledges an invalidation.
    pub const INV_ACK: u8 = MsgType::InvAck as u8;
    /// A page grant with data.
    pub const DATA: u8 = MsgType::Data as u8;
    /// An upgrade grant without data.
    pub const GRANT: u8 = MsgType::Grant as u8;
    /// The owner's answer to a forward.
    pub const FWD_ACK: u8 = MsgType::FwdAck as u8;
    /// Requester confirms it installed data sent by a non-home node.
    pub const DONE: u8 = MsgType::Done as u8;
    /// Requester drops (clean) or writes back (dirty) a replica.
    pub const EVICT_REQ: u8 = MsgType::EvictReq as u8;
    /// Home accepted an eviction.
    pub const EVICT_ACK: u8 = MsgType::EvictAck as u8;
    /// Home refuses a request (busy: retry; lost).
    pub const NACK: u8 = MsgType::Nack as u8;
    /// Home asks a requester what it holds after the data source died.
    pub const RECALL: u8 = MsgType::Recall as u8;
    /// Requester's answer to a recall.
    pub const RECALL_ACK: u8 = MsgType::RecallAck as u8;
}

/// Flag bits (`MsgFields::flags`), defined by the wire format.
pub use wire::flags as flag;

/// Why the home refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    /// No room right now (transaction pool full, or an eviction met a busy
    /// page): retry later.
    Busy,
    /// The page's only copy died with its owner.
    Lost,
}

impl NackReason {
    fn to_arg(self) -> u64 {
        match self {
            Self::Busy => 1,
            Self::Lost => 2,
        }
    }

    fn from_arg(arg: u64) -> Option<Self> {
        match arg {
            1 => Some(Self::Busy),
            2 => Some(Self::Lost),
            _ => None,
        }
    }
}

/// What an owner did with a forwarded request (`FwdAck` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdOutcome {
    /// Read forward: the owner sent the data to the reader (unless the reader
    /// is the home) and the payload to the home, and kept a read-only copy.
    Shared,
    /// Write forward: data handed to the writer, owner dropped. No payload.
    HandedOff,
    /// Write forward on behalf of the home: the payload is for the home and
    /// the owner dropped its copy.
    Surrendered,
    /// The requester was known dead: nothing sent to it; the payload is for
    /// the home and the owner kept a read-only copy.
    RequesterGone,
}

/// What a requester holds when it answers a `Recall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallHave {
    /// No copy: the request is still outstanding; the home decides.
    Nothing,
    /// A clean read-only copy; the payload carries it.
    Copy,
    /// A writable (or dirty, being written back) copy: it is the owner.
    Exclusive,
}

/// A protocol message. `txn` is always the requester's transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// Read miss.
    ReadReq {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Write miss.
    WriteReq {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Upgrade a read-only copy of `version` (low 13 bits) to writable.
    UpgradeReq {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Low 13 bits of the requester's copy's version.
        version: u16,
    },
    /// Serve `requester` a read-only copy (and the home one).
    FwdRead {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Who asked.
        requester: NodeId,
        /// Version to put in the data.
        version: u32,
    },
    /// Hand the page to `requester` (writable) and drop it.
    FwdWrite {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Who asked.
        requester: NodeId,
        /// The new version to put in the data.
        version: u32,
    },
    /// Drop your read-only copy and acknowledge.
    Inv {
        /// Requester's transaction (echoed in the ack).
        txn: u64,
        /// Page number.
        page: u64,
        /// The writer on whose behalf (informational).
        requester: NodeId,
    },
    /// Invalidation done.
    InvAck {
        /// Transaction from the `Inv`.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// A copy of the page (payload always present).
    Data {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Version of the copy.
        version: u32,
        /// Exclusive (writable) grant.
        writable: bool,
    },
    /// Upgrade granted; no data.
    Grant {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// The new version.
        version: u32,
    },
    /// The owner's answer to a forward.
    FwdAck {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// What the owner did.
        outcome: FwdOutcome,
    },
    /// Requester installed data that did not come from the home.
    Done {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Drop (clean) or write back (dirty, payload) a replica.
    EvictReq {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Write-back with payload.
        dirty: bool,
    },
    /// Eviction accepted: drop the copy.
    EvictAck {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Request refused.
    Nack {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// Why.
        reason: NackReason,
    },
    /// The data source of your request died: what do you hold?
    Recall {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
    },
    /// Answer to a recall.
    RecallAck {
        /// Requester's transaction.
        txn: u64,
        /// Page number.
        page: u64,
        /// What the requester holds.
        have: RecallHave,
    },
}

/// The plain header fields a message maps onto (the sender travels separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsgFields {
    /// Type code, `1..=16` (see [`code`]).
    pub ty: u8,
    /// Flag bits (see [`flag`]); `flag::DATA` iff a payload follows.
    pub flags: u16,
    /// Auxiliary node id (the requester, for forwards and invalidations).
    pub aux: u16,
    /// Requester's transaction id.
    pub txn: u64,
    /// Page number.
    pub page: u64,
    /// Type-specific argument (version, nack reason).
    pub arg: u64,
}

/// Errors decoding [`MsgFields`] into a [`Msg`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MsgError {
    /// Unknown type code.
    #[error("unknown message type {0}: the peer speaks another protocol version")]
    UnknownType(u8),
    /// Flags not defined for the type, or an invalid combination.
    #[error("message type {ty} does not allow flags {flags:#06x}: the peer is buggy or speaks another protocol version")]
    BadFlags {
        /// Type code.
        ty: u8,
        /// The flags received.
        flags: u16,
    },
    /// `aux` is not a valid node id.
    #[error("message type {ty} names node {aux} which is not a valid node id")]
    BadNode {
        /// Type code.
        ty: u8,
        /// The aux field.
        aux: u16,
    },
    /// `arg` out of range for the type.
    #[error("message type {ty} has argument {arg} out of range")]
    BadArg {
        /// Type code.
        ty: u8,
        /// The arg field.
        arg: u64,
    },
}

impl Msg {
    /// The page the message is about.
    pub fn page(&self) -> u64 {
        match *self {
            Self::ReadReq { page, .. }
            | Self::WriteReq { page, .. }
            | Self::UpgradeReq { page, .. }
            | Self::FwdRead { page, .. }
            | Self::FwdWrite { page, .. }
            | Self::Inv { page, .. }
            | Self::InvAck { page, .. }
            | Self::Data { page, .. }
            | Self::Grant { page, .. }
            | Self::FwdAck { page, .. }
            | Self::Done { page, .. }
            | Self::EvictReq { page, .. }
            | Self::EvictAck { page, .. }
            | Self::Nack { page, .. }
            | Self::Recall { page, .. }
            | Self::RecallAck { page, .. } => page,
        }
    }

    /// The requester's transaction id carried by the message.
    pub fn txn(&self) -> u64 {
        self.to_fields().txn
    }

    /// Whether a one-page payload travels with the message.
    pub fn has_data(&self) -> bool {
        match *self {
            Self::Data { .. } => true,
            Self::FwdAck { outcome, .. } => outcome != FwdOutcome::HandedOff,
            Self::EvictReq { dirty, .. } => dirty,
            Self::RecallAck { have, .. } => have == RecallHave::Copy,
            _ => false,
        }
    }

    /// The wire type code.
    pub fn code(&self) -> u8 {
        self.to_fields().ty
    }

    /// The plain header fields.
    pub fn to_fields(&self) -> MsgFields {
        let data = if self.has_data() { flag::DATA } else { 0 };
        let f = |ty: u8, txn: u64, page: u64| MsgFields {
            ty,
            flags: data,
            aux: 0,
            txn,
            page,
            arg: 0,
        };
        match *self {
            Self::ReadReq { txn, page } => f(code::READ_REQ, txn, page),
            Self::WriteReq { txn, page } => f(code::WRITE_REQ, txn, page),
            Self::UpgradeReq { txn, page, version } => MsgFields {
                arg: u64::from(version),
                ..f(code::UPGRADE_REQ, txn, page)
            },
            Self::FwdRead {
                txn,
                page,
                requester,
                version,
            } => MsgFields {
                aux: requester.get(),
                arg: u64::from(version),
                ..f(code::FWD_READ, txn, page)
            },
            Self::FwdWrite {
                txn,
                page,
                requester,
                version,
            } => MsgFields {
                aux: requester.get(),
                arg: u64::from(version),
                ..f(code::FWD_WRITE, txn, page)
            },
            Self::Inv {
                txn,
                page,
                requester,
            } => MsgFields {
                aux: requester.get(),
                ..f(code::INV, txn, page)
            },
            Self::InvAck { txn, page } => f(code::INV_ACK, txn, page),
            Self::Data {
                txn,
                page,
                version,
                writable,
            } => MsgFields {
                flags: data | if writable { flag::WRITABLE } else { 0 },
                arg: u64::from(version),
                ..f(code::DATA, txn, page)
            },
            Self::Grant { txn, page, version } => MsgFields {
                arg: u64::from(version),
                ..f(code::GRANT, txn, page)
            },
            Self::FwdAck { txn, page, outcome } => MsgFields {
                flags: data
                    | match outcome {
                        FwdOutcome::Shared => flag::KEPT,
                        FwdOutcome::HandedOff | FwdOutcome::Surrendered => 0,
                        FwdOutcome::RequesterGone => flag::KEPT | flag::GONE,
                    },
                ..f(code::FWD_ACK, txn, page)
            },
            Self::Done { txn, page } => f(code::DONE, txn, page),
            Self::EvictReq { txn, page, dirty } => MsgFields {
                flags: data | if dirty { flag::DIRTY } else { 0 },
                ..f(code::EVICT_REQ, txn, page)
            },
            Self::EvictAck { txn, page } => f(code::EVICT_ACK, txn, page),
            Self::Nack { txn, page, reason } => MsgFields {
                arg: reason.to_arg(),
                ..f(code::NACK, txn, page)
            },
            Self::Recall { txn, page } => f(code::RECALL, txn, page),
            Self::RecallAck { txn, page, have } => MsgFields {
                flags: data
                    | match have {
                        RecallHave::Nothing => 0,
                        RecallHave::Copy => flag::HAVE,
                        RecallHave::Exclusive => flag::HAVE | flag::EXCL,
                    },
                ..f(code::RECALL_ACK, txn, page)
            },
        }
    }

    /// Decodes plain header fields; every field is validated, nothing panics.
    pub fn from_fields(m: MsgFields) -> Result<Self, MsgError> {
        let MsgFields {
            ty,
            flags,
            aux,
            txn,
            page,
            arg,
        } = m;
        let bad_flags = || MsgError::BadFlags { ty, flags };
        let bad_arg = || MsgError::BadArg { ty, arg };
        let node = |aux: u16| {
            NodeId::new(aux).map_err(|NodeError::OutOfRange(aux)| MsgError::BadNode { ty, aux })
        };
        let version = || u32::try_from(arg).map_err(|_| bad_arg());
        // Types with neither flags, aux nor arg.
        let plain = |msg: Msg| {
            if flags != 0 {
                Err(bad_flags())
            } else if aux != 0 {
                Err(MsgError::BadNode { ty, aux })
            } else if arg != 0 {
                Err(bad_arg())
            } else {
                Ok(msg)
            }
        };
        let no_aux = || {
            if aux != 0 {
                Err(MsgError::BadNode { ty, aux })
            } else {
                Ok(())
            }
        };
        let no_arg = || if arg != 0 { Err(bad_arg()) } else { Ok(()) };
        match ty {
            code::READ_REQ => plain(Self::ReadReq { txn, page }),
            code::WRITE_REQ => plain(Self::WriteReq { txn, page }),
            code::UPGRADE_REQ => {
                if flags != 0 {
                    return Err(bad_flags());
                }
                no_aux()?;
                if arg >= 1 << 13 {
                    return Err(bad_arg());
                }
                Ok(Self::UpgradeReq {
                    txn,
                    page,
                    // < 2^13 checked above.
                    version: arg as u16,
                })
            }
            code::FWD_READ | code::FWD_WRITE => {
                if flags != 0 {
                    return Err(bad_flags());
                }
                let requester = node(aux)?;
                let version = version()?;
                Ok(if ty == code::FWD_READ {
                    Self::FwdRead {
                        txn,
                        page,
                        requester,
                        version,
                    }
                } else {
                    Self::FwdWrite {
                        txn,
                        page,
                        requester,
                        version,
                    }
                })
            }
            code::INV => {
                if flags != 0 {
                    return Err(bad_flags());
                }
                no_arg()?;
                Ok(Self::Inv {
                    txn,
                    page,
                    requester: node(aux)?,
                })
            }
            code::INV_ACK => plain(Self::InvAck { txn, page }),
            code::DATA => {
                if flags & !(flag::DATA | flag::WRITABLE) != 0 || flags & flag::DATA == 0 {
                    return Err(bad_flags());
                }
                no_aux()?;
                Ok(Self::Data {
                    txn,
                    page,
                    version: version()?,
                    writable: flags & flag::WRITABLE != 0,
                })
            }
            code::GRANT => {
                if flags != 0 {
                    return Err(bad_flags());
                }
                no_aux()?;
                Ok(Self::Grant {
                    txn,
                    page,
                    version: version()?,
                })
            }
            code::FWD_ACK => {
                no_aux()?;
                no_arg()?;
                let outcome = match flags {
                    f if f == flag::DATA | flag::KEPT => FwdOutcome::Shared,
                    0 => FwdOutcome::HandedOff,
                    flag::DATA => FwdOutcome::Surrendered,
                    f if f == flag::DATA | flag::KEPT | flag::GONE => FwdOutcome::RequesterGone,
                    _ => return Err(bad_flags()),
                };
                Ok(Self::FwdAck { txn, page, outcome })
            }
            code::DONE => plain(Self::Done { txn, page }),
            code::EVICT_REQ => {
                no_aux()?;
                no_arg()?;
                let dirty = match flags {
                    0 => false,
                    f if f == flag::DATA | flag::DIRTY => true,
                    _ => return Err(bad_flags()),
                };
                Ok(Self::EvictReq { txn, page, dirty })
            }
            code::EVICT_ACK => plain(Self::EvictAck { txn, page }),
            code::NACK => {
                if flags != 0 {
                    return Err(bad_flags());
                }
                no_aux()?;
                Ok(Self::Nack {
                    txn,
                    page,
                    reason: NackReason::from_arg(arg).ok_or_else(bad_arg)?,
                })
            }
            code::RECALL => plain(Self::Recall { txn, page }),
            code::RECALL_ACK => {
                no_aux()?;
                no_arg()?;
                let have = match flags {
                    0 => RecallHave::Nothing,
                    f if f == flag::DATA | flag::HAVE => RecallHave::Copy,
                    f if f == flag::HAVE | flag::EXCL => RecallHave::Exclusive,
                    _ => return Err(bad_flags()),
                };
                Ok(Self::RecallAck { txn, page, have })
            }
            _ => Err(MsgError::UnknownType(ty)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u16) -> NodeId {
        NodeId::new(i).unwrap()
    }

    /// One message of every variant and flag combination.
    pub(crate) fn every_message() -> Vec<Msg> {
        let (txn, page) = (0x1234_5678_9abc, 0xfeed_0000_0001);
        let mut v = vec![
            Msg::ReadReq { txn, page },
            Msg::WriteReq { txn, page },
            Msg::UpgradeReq {
                txn,
                page,
                version: 0x1fff,
            },
            Msg::FwdRead {
                txn,
                page,
                requester: n(63),
                version: u32::MAX,
            },
            Msg::FwdWrite {
                txn,
                page,
                requester: n(0),
                version: 7,
            },
            Msg::Inv {
                txn,
                page,
                requester: n(9),
            },
            Msg::InvAck { txn, page },
            Msg::Grant {
                txn,
                page,
                version: 3,
            },
            Msg::Done { txn, page },
            Msg::EvictAck { txn, page },
            Msg::Recall { txn, page },
        ];
        for writable in [false, true] {
            v.push(Msg::Data {
                txn,
                page,
                version: 11,
                writable,
            });
        }
        for outcome in [
            FwdOutcome::Shared,
            FwdOutcome::HandedOff,
            FwdOutcome::Surrendered,
            FwdOutcome::RequesterGone,
        ] {
            v.push(Msg::FwdAck { txn, page, outcome });
        }
        for dirty in [false, true] {
            v.push(Msg::EvictReq { txn, page, dirty });
        }
        for reason in [NackReason::Busy, NackReason::Lost] {
            v.push(Msg::Nack { txn, page, reason });
        }
        for have in [RecallHave::Nothing, RecallHave::Copy, RecallHave::Exclusive] {
            v.push(Msg::RecallAck { txn, page, have });
        }
        v
    }

    #[test]
    fn every_message_round_trips_through_fields() {
        let all = every_message();
        assert_eq!(all.len(), 24);
        let mut codes = std::collections::BTreeSet::new();
        for m in all {
            let f = m.to_fields();
            codes.insert(f.ty);
            assert_eq!(Msg::from_fields(f), Ok(m), "{m:?} -> {f:?}");
            assert_eq!(f.flags & flag::DATA != 0, m.has_data(), "{m:?}");
            assert_eq!(m.page(), 0xfeed_0000_0001);
            assert_eq!(m.txn(), 0x1234_5678_9abc);
            assert_eq!(m.code(), f.ty);
        }
        assert_eq!(
            codes.into_iter().collect::<Vec<_>>(),
            (1..=16).collect::<Vec<u8>>()
        );
    }

    /// Every protocol message is a frame the wire format accepts: its type exists there, and
    /// its flags and payload follow the type's rules (the wire crate owns both).
    #[test]
    fn every_message_is_a_valid_wire_frame() {
        for m in every_message() {
            let f = m.to_fields();
            let ty = wire::MsgType::from_code(f.ty).expect("protocol code known to the wire");
            let mut h = wire::Header::new(ty, 5);
            h.flags = f.flags;
            h.aux = f.aux;
            h.txn = f.txn;
            h.page = f.page;
            h.arg = f.arg;
            h.payload_len = if m.has_data() {
                wire::PAGE_SIZE as u32
            } else {
                0
            };
            assert_eq!(h.validate(), Ok(()), "{m:?}");
        }
    }

    #[test]
    fn type_codes_follow_the_allocated_order() {
        let (txn, page) = (1, 2);
        assert_eq!(Msg::ReadReq { txn, page }.code(), 1);
        assert_eq!(Msg::Done { txn, page }.code(), 11);
        assert_eq!(
            Msg::Nack {
                txn,
                page,
                reason: NackReason::Busy
            }
            .code(),
            14
        );
        assert!(Msg::Data {
            txn,
            page,
            version: 0,
            writable: false
        }
        .has_data());
        assert!(!Msg::Grant {
            txn,
            page,
            version: 0
        }
        .has_data());
    }

    #[test]
    fn malformed_fields_are_typed_errors() {
        let ok = |ty| MsgFields {
            ty,
            ..MsgFields::default()
        };
        assert_eq!(Msg::from_fields(ok(0)), Err(MsgError::UnknownType(0)));
        assert_eq!(Msg::from_fields(ok(17)), Err(MsgError::UnknownType(17)));
        assert!(matches!(
            Msg::from_fields(MsgFields {
                flags: 1,
                ..ok(code::READ_REQ)
            }),
            Err(MsgError::BadFlags { .. })
        ));
        assert!(matches!(
            Msg::from_fields(MsgFields {
                arg: 5,
                ..ok(code::DONE)
            }),
            Err(MsgError::BadArg { .. })
        ));
        assert!(matches!(
            Msg::from_fields(MsgFields {
                aux: 64,
                ..ok(code::FWD_READ)
            }),
            Err(MsgError::BadNode { aux: 64, .. })
        ));
        assert!(matches!(
            Msg::from_fields(MsgFields {
                arg: 1 << 32,
                ..ok(code::FWD_WRITE)
            }),
            Err(MsgError::BadArg { .. })
        ));
        assert!(matches!(
            Msg::from_fields(MsgFields {
                arg: 1 << 13,
                ..ok(code::UPGRADE_REQ)
            }),
            Err(MsgError::BadArg { .. })
        ));
        // Data without its payload flag.
        assert!(matches!(
            Msg::from_fields(ok(code::DATA)),
            Err(MsgError::BadFlags { .. })
        ));
        // A dirty eviction must carry data; a clean one must not.
        assert!(matches!(
            Msg::from_fields(MsgFields {
                flags: flag::DIRTY,
                ..ok(code::EVICT_REQ)
            }),
            Err(MsgError::BadFlags { .. })
        ));
        assert!(matches!(
            Msg::from_fields(MsgFields {
                flags: flag::DATA,
                ..ok(code::EVICT_REQ)
            }),
            Err(MsgError::BadFlags { .. })
        ));
        // Nack reasons are 1 and 2.
        assert!(matches!(
            Msg::from_fields(ok(code::NACK)),
            Err(MsgError::BadArg { .. })
        ));
        // A hand-off FwdAck carries no data; GONE without KEPT is meaningless.
        assert!(matches!(
            Msg::from_fields(MsgFields {
                flags: flag::DATA | flag::GONE,
                ..ok(code::FWD_ACK)
            }),
            Err(MsgError::BadFlags { .. })
        ));
        // RecallAck: EXCL without HAVE.
        assert!(matches!(
            Msg::from_fields(MsgFields {
                flags: flag::EXCL,
                ..ok(code::RECALL_ACK)
            }),
            Err(MsgError::BadFlags { .. })
        ));
    }

    #[test]
    fn mutated_fields_never_panic_and_decode_canonically() {
        // A small deterministic generator.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut accepted, mut rejected) = (0, 0);
        for m in every_message() {
            for _ in 0..5_000 {
                let mut f = m.to_fields();
                let r = next();
                let v = match r % 4 {
                    0 => 0,
                    1 => 1 << ((r >> 8) % 64),
                    2 => (r >> 8) % 80,
                    _ => next(),
                };
                match (r >> 2) % 5 {
                    0 => f.ty = v as u8,
                    1 => f.flags = v as u16,
                    2 => f.aux = v as u16,
                    3 => f.arg = v,
                    _ => f.flags ^= 1 << (v % 16),
                }
                match Msg::from_fields(f) {
                    Ok(d) => {
                        accepted += 1;
                        assert_eq!(d.to_fields(), f, "{d:?} does not re-encode to {f:?}");
                    }
                    Err(_) => rejected += 1,
                }
            }
        }
        assert!(
            accepted > 10_000 && rejected > 10_000,
            "accepted {accepted}, rejected {rejected}"
        );
    }
}
