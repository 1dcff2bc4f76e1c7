//! The edge between the protocol and the wire: a [`Msg`] becomes a frame [`Header`] when a
//! shard sends it, and a received header becomes a [`Msg`] only if every field is one the
//! message allows. The protocol crate knows nothing of codes and flag bits; the wire crate
//! knows nothing of what a message means; this module is the one place both meet.

use coherence::{FwdOutcome, Msg, NackReason, NodeId, RecallHave};
use thiserror::Error;
use wire::flags::{DATA, DIRTY, EXCL, GONE, HAVE, KEPT, WRITABLE};
use wire::{Header, MsgType};

/// Why a received header is not a protocol message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A frame type the protocol does not use (heartbeats and platform frames go elsewhere).
    #[error("frame type {0:?} is not a coherence-protocol message")]
    NotProtocol(MsgType),
    /// Flags not defined for the type, or an invalid combination.
    #[error("message type {ty:?} does not allow flags {flags:#06x}: the peer is buggy or speaks another protocol version")]
    BadFlags {
        /// Frame type.
        ty: MsgType,
        /// The flags received.
        flags: u16,
    },
    /// `aux` is not a valid node id, or is set where the type has none.
    #[error("message type {ty:?} names node {aux}, which is not a node id the type allows")]
    BadNode {
        /// Frame type.
        ty: MsgType,
        /// The aux field.
        aux: u16,
    },
    /// `arg` out of range for the type.
    #[error("message type {ty:?} has argument {arg}, out of range for the type")]
    BadArg {
        /// Frame type.
        ty: MsgType,
        /// The arg field.
        arg: u64,
    },
}

fn nack_arg(reason: NackReason) -> u64 {
    match reason {
        NackReason::Busy => 1,
        NackReason::Lost => 2,
    }
}

/// The header of `msg` sent by `sender`. The `DATA` flag is set when the message carries a
/// page; the caller sets the payload length (`Header::set_payload_len`) when it attaches one.
pub fn encode(msg: &Msg, sender: NodeId) -> Header {
    let head = |ty: MsgType, txn: u64, page: u64| {
        let mut h = Header::new(ty, sender.get());
        h.txn = txn;
        h.page = page;
        if msg.has_data() {
            h.flags = DATA;
        }
        h
    };
    match *msg {
        Msg::ReadReq { txn, page } => head(MsgType::ReadReq, txn, page),
        Msg::WriteReq { txn, page } => head(MsgType::WriteReq, txn, page),
        Msg::UpgradeReq { txn, page, version } => Header {
            arg: u64::from(version),
            ..head(MsgType::UpgradeReq, txn, page)
        },
        Msg::FwdRead {
            txn,
            page,
            requester,
            version,
        } => Header {
            aux: requester.get(),
            arg: u64::from(version),
            ..head(MsgType::FwdRead, txn, page)
        },
        Msg::FwdWrite {
            txn,
            page,
            requester,
            version,
        } => Header {
            aux: requester.get(),
            arg: u64::from(version),
            ..head(MsgType::FwdWrite, txn, page)
        },
        Msg::Inv {
            txn,
            page,
            requester,
        } => Header {
            aux: requester.get(),
            ..head(MsgType::Inv, txn, page)
        },
        Msg::InvAck { txn, page } => head(MsgType::InvAck, txn, page),
        Msg::Data {
            txn,
            page,
            version,
            writable,
        } => {
            let h = head(MsgType::Data, txn, page);
            Header {
                flags: h.flags | if writable { WRITABLE } else { 0 },
                arg: u64::from(version),
                ..h
            }
        }
        Msg::Grant { txn, page, version } => Header {
            arg: u64::from(version),
            ..head(MsgType::Grant, txn, page)
        },
        Msg::FwdAck { txn, page, outcome } => {
            let h = head(MsgType::FwdAck, txn, page);
            let extra = match outcome {
                FwdOutcome::Shared => KEPT,
                FwdOutcome::HandedOff | FwdOutcome::Surrendered => 0,
                FwdOutcome::RequesterGone => KEPT | GONE,
            };
            Header {
                flags: h.flags | extra,
                ..h
            }
        }
        Msg::Done { txn, page } => head(MsgType::Done, txn, page),
        Msg::EvictReq { txn, page, dirty } => {
            let h = head(MsgType::EvictReq, txn, page);
            Header {
                flags: h.flags | if dirty { DIRTY } else { 0 },
                ..h
            }
        }
        Msg::EvictAck { txn, page } => head(MsgType::EvictAck, txn, page),
        Msg::Nack { txn, page, reason } => Header {
            arg: nack_arg(reason),
            ..head(MsgType::Nack, txn, page)
        },
        Msg::Recall { txn, page } => head(MsgType::Recall, txn, page),
        Msg::RecallAck { txn, page, have } => {
            let h = head(MsgType::RecallAck, txn, page);
            let extra = match have {
                RecallHave::Nothing => 0,
                RecallHave::Copy => HAVE,
                RecallHave::Exclusive => HAVE | EXCL,
            };
            Header {
                flags: h.flags | extra,
                ..h
            }
        }
    }
}

/// The message a received header carries; every field is checked, nothing panics. The
/// sender and the payload length are the frame's business (checked by the wire decoder).
pub fn decode(h: &Header) -> Result<Msg, DecodeError> {
    let Header {
        ty,
        flags,
        aux,
        txn,
        page,
        arg,
        ..
    } = *h;
    let bad_flags = || DecodeError::BadFlags { ty, flags };
    let bad_arg = || DecodeError::BadArg { ty, arg };
    let bad_node = || DecodeError::BadNode { ty, aux };
    let node = || NodeId::new(aux).map_err(|_| bad_node());
    let version = || u32::try_from(arg).map_err(|_| bad_arg());
    let no_flags = || if flags != 0 { Err(bad_flags()) } else { Ok(()) };
    let no_aux = || if aux != 0 { Err(bad_node()) } else { Ok(()) };
    let no_arg = || if arg != 0 { Err(bad_arg()) } else { Ok(()) };
    // Types with neither flags, aux nor arg.
    let plain = |msg: Msg| {
        no_flags()?;
        no_aux()?;
        no_arg()?;
        Ok(msg)
    };
    match ty {
        MsgType::ReadReq => plain(Msg::ReadReq { txn, page }),
        MsgType::WriteReq => plain(Msg::WriteReq { txn, page }),
        MsgType::UpgradeReq => {
            no_flags()?;
            no_aux()?;
            let version = u16::try_from(arg)
                .ok()
                .filter(|v| *v < 1 << 13)
                .ok_or_else(bad_arg)?;
            Ok(Msg::UpgradeReq { txn, page, version })
        }
        MsgType::FwdRead => {
            no_flags()?;
            Ok(Msg::FwdRead {
                txn,
                page,
                requester: node()?,
                version: version()?,
            })
        }
        MsgType::FwdWrite => {
            no_flags()?;
            Ok(Msg::FwdWrite {
                txn,
                page,
                requester: node()?,
                version: version()?,
            })
        }
        MsgType::Inv => {
            no_flags()?;
            no_arg()?;
            Ok(Msg::Inv {
                txn,
                page,
                requester: node()?,
            })
        }
        MsgType::InvAck => plain(Msg::InvAck { txn, page }),
        MsgType::Data => {
            if flags & !(DATA | WRITABLE) != 0 || flags & DATA == 0 {
                return Err(bad_flags());
            }
            no_aux()?;
            Ok(Msg::Data {
                txn,
                page,
                version: version()?,
                writable: flags & WRITABLE != 0,
            })
        }
        MsgType::Grant => {
            no_flags()?;
            no_aux()?;
            Ok(Msg::Grant {
                txn,
                page,
                version: version()?,
            })
        }
        MsgType::FwdAck => {
            no_aux()?;
            no_arg()?;
            let outcome = match flags {
                f if f == DATA | KEPT => FwdOutcome::Shared,
                0 => FwdOutcome::HandedOff,
                DATA => FwdOutcome::Surrendered,
                f if f == DATA | KEPT | GONE => FwdOutcome::RequesterGone,
                _ => return Err(bad_flags()),
            };
            Ok(Msg::FwdAck { txn, page, outcome })
        }
        MsgType::Done => plain(Msg::Done { txn, page }),
        MsgType::EvictReq => {
            no_aux()?;
            no_arg()?;
            let dirty = match flags {
                0 => false,
                f if f == DATA | DIRTY => true,
                _ => return Err(bad_flags()),
            };
            Ok(Msg::EvictReq { txn, page, dirty })
        }
        MsgType::EvictAck => plain(Msg::EvictAck { txn, page }),
        MsgType::Nack => {
            no_flags()?;
            no_aux()?;
            let reason = match arg {
                1 => NackReason::Busy,
                2 => NackReason::Lost,
                _ => return Err(bad_arg()),
            };
            Ok(Msg::Nack { txn, page, reason })
        }
        MsgType::Recall => plain(Msg::Recall { txn, page }),
        MsgType::RecallAck => {
            no_aux()?;
            no_arg()?;
            let have = match flags {
                0 => RecallHave::Nothing,
                f if f == DATA | HAVE => RecallHave::Copy,
                f if f == HAVE | EXCL => RecallHave::Exclusive,
                _ => return Err(bad_flags()),
            };
            Ok(Msg::RecallAck { txn, page, have })
        }
        other => Err(DecodeError::NotProtocol(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> NodeId {
        NodeId::new(5).unwrap()
    }

    /// The header of `m` as a shard puts it on the wire (payload attached when it has data).
    fn framed(m: &Msg) -> Header {
        let mut h = encode(m, sender());
        h.set_payload_len(if m.has_data() {
            wire::PAGE_SIZE as u32
        } else {
            0
        });
        h
    }

    #[test]
    fn every_message_round_trips_and_is_a_valid_frame() {
        let mut types = std::collections::BTreeSet::new();
        for m in Msg::examples() {
            let h = framed(&m);
            types.insert(h.ty as u8);
            assert_eq!(h.validate(), Ok(()), "{m:?}");
            assert_eq!(h.flags & DATA != 0, m.has_data(), "{m:?}");
            assert_eq!(h.sender, 5);
            assert_eq!(decode(&h), Ok(m), "{m:?} -> {h:?}");
        }
        // The protocol's 16 messages are the wire's codes 1..=16, in the allocated order.
        assert_eq!(
            types.into_iter().collect::<Vec<_>>(),
            (1..=16).collect::<Vec<u8>>()
        );
        let (txn, page) = (1, 2);
        assert_eq!(encode(&Msg::ReadReq { txn, page }, sender()).ty as u8, 1);
        assert_eq!(encode(&Msg::Done { txn, page }, sender()).ty as u8, 11);
        let nack = Msg::Nack {
            txn,
            page,
            reason: NackReason::Busy,
        };
        assert_eq!(encode(&nack, sender()).ty as u8, 14);
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let of = |ty| Header::new(ty, 5);
        let with = |ty, f: &dyn Fn(&mut Header)| {
            let mut h = of(ty);
            f(&mut h);
            decode(&h)
        };
        assert_eq!(
            decode(&of(MsgType::Ping)),
            Err(DecodeError::NotProtocol(MsgType::Ping))
        );
        assert!(matches!(
            with(MsgType::ReadReq, &|h| h.flags = 1),
            Err(DecodeError::BadFlags { .. })
        ));
        assert!(matches!(
            with(MsgType::Done, &|h| h.arg = 5),
            Err(DecodeError::BadArg { .. })
        ));
        assert!(matches!(
            with(MsgType::FwdRead, &|h| h.aux = 64),
            Err(DecodeError::BadNode { aux: 64, .. })
        ));
        assert!(matches!(
            with(MsgType::FwdWrite, &|h| h.arg = 1 << 32),
            Err(DecodeError::BadArg { .. })
        ));
        assert!(matches!(
            with(MsgType::UpgradeReq, &|h| h.arg = 1 << 13),
            Err(DecodeError::BadArg { .. })
        ));
        // Data without its payload flag.
        assert!(matches!(
            decode(&of(MsgType::Data)),
            Err(DecodeError::BadFlags { .. })
        ));
        // A dirty eviction must carry data; a clean one must not.
        assert!(matches!(
            with(MsgType::EvictReq, &|h| h.flags = DIRTY),
            Err(DecodeError::BadFlags { .. })
        ));
        assert!(matches!(
            with(MsgType::EvictReq, &|h| h.flags = DATA),
            Err(DecodeError::BadFlags { .. })
        ));
        // Nack reasons are 1 and 2.
        assert!(matches!(
            decode(&of(MsgType::Nack)),
            Err(DecodeError::BadArg { .. })
        ));
        // A hand-off FwdAck carries no data; GONE without KEPT is meaningless.
        assert!(matches!(
            with(MsgType::FwdAck, &|h| h.flags = DATA | GONE),
            Err(DecodeError::BadFlags { .. })
        ));
        // RecallAck: EXCL without HAVE.
        assert!(matches!(
            with(MsgType::RecallAck, &|h| h.flags = EXCL),
            Err(DecodeError::BadFlags { .. })
        ));
    }

    #[test]
    fn mutated_headers_never_panic_and_decode_canonically() {
        // A small deterministic generator.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut accepted, mut rejected) = (0, 0);
        for m in Msg::examples() {
            for _ in 0..5_000 {
                let mut h = encode(&m, sender());
                let r = next();
                let v = match r % 4 {
                    0 => 0,
                    1 => 1 << ((r >> 8) % 64),
                    2 => (r >> 8) % 80,
                    _ => next(),
                };
                match (r >> 2) % 5 {
                    0 => {
                        if let Some(ty) = MsgType::from_code(v as u8) {
                            h.ty = ty;
                        }
                    }
                    1 => h.flags = v as u16,
                    2 => h.aux = v as u16,
                    3 => h.arg = v,
                    _ => h.flags ^= 1 << (v % 16),
                }
                match decode(&h) {
                    Ok(d) => {
                        accepted += 1;
                        assert_eq!(encode(&d, sender()), h, "{d:?} does not re-encode to {h:?}");
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
