//! The edge between the protocol and the wire: a [`Msg`] becomes a frame [`Header`] when a
//! shard sends it, and a received header becomes a [`Msg`] only if every field is one the
//! message allows. The protocol crate knows nothing of codes and flag bits; the wire crate
//! knows nothing of what a message means; this module is the one place both meet.

use coherence::{FwdOutcome, MovedPage, Msg, NackReason, NodeId, RecallHave};
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

/// A `Nack`'s `aux` and `arg`: the reason in `arg`, and for `Moved` the new home in `aux`.
fn nack_fields(reason: NackReason) -> (u16, u64) {
    match reason {
        NackReason::Busy => (0, 1),
        NackReason::Lost => (0, 2),
        NackReason::Moved(home) => (home.get(), 3),
    }
}

/// The header of `msg` sent by `sender`. The `DATA` flag is set when the message carries a
/// page; the caller sets the payload length (`Header::set_payload_len`) when it attaches one.
pub fn encode(msg: &Msg, sender: NodeId) -> Header {
    let (ty, aux, arg, flags) = fields(msg);
    let mut h = Header::new(ty, sender.get());
    h.txn = msg.txn();
    h.page = msg.page();
    h.aux = aux;
    h.arg = arg;
    h.flags = flags | if msg.has_data() { DATA } else { 0 };
    h
}

/// What `msg` puts in the header besides txn, page and `DATA`: its type, `aux`, `arg` and
/// the type's own flags.
fn fields(msg: &Msg) -> (MsgType, u16, u64, u16) {
    use MsgType as T;
    let set = |on: bool, flag: u16| if on { flag } else { 0 };
    match *msg {
        Msg::ReadReq { .. } => (T::ReadReq, 0, 0, 0),
        Msg::WriteReq { .. } => (T::WriteReq, 0, 0, 0),
        Msg::UpgradeReq { version, .. } => (T::UpgradeReq, 0, version.into(), 0),
        Msg::FwdRead {
            requester, version, ..
        } => (T::FwdRead, requester.get(), version.into(), 0),
        Msg::FwdWrite {
            requester, version, ..
        } => (T::FwdWrite, requester.get(), version.into(), 0),
        Msg::Inv { requester, .. } => (T::Inv, requester.get(), 0, 0),
        Msg::InvAck { .. } => (T::InvAck, 0, 0, 0),
        Msg::Data {
            version, writable, ..
        } => (T::Data, 0, version.into(), set(writable, WRITABLE)),
        Msg::Grant { version, .. } => (T::Grant, 0, version.into(), 0),
        Msg::FwdAck { outcome, .. } => {
            let flags = match outcome {
                FwdOutcome::Shared => KEPT,
                FwdOutcome::HandedOff | FwdOutcome::Surrendered => 0,
                FwdOutcome::RequesterGone => KEPT | GONE,
            };
            (T::FwdAck, 0, 0, flags)
        }
        Msg::Done { .. } => (T::Done, 0, 0, 0),
        Msg::EvictReq { dirty, .. } => (T::EvictReq, 0, 0, set(dirty, DIRTY)),
        Msg::EvictAck { .. } => (T::EvictAck, 0, 0, 0),
        Msg::Nack { reason, .. } => {
            let (aux, arg) = nack_fields(reason);
            (T::Nack, aux, arg, 0)
        }
        Msg::Recall { .. } => (T::Recall, 0, 0, 0),
        Msg::RecallAck { have, .. } => {
            let flags = match have {
                RecallHave::Nothing => 0,
                RecallHave::Copy => HAVE,
                RecallHave::Exclusive => HAVE | EXCL,
            };
            (T::RecallAck, 0, 0, flags)
        }
        Msg::HomeMove {
            version,
            epoch,
            content,
            ..
        } => {
            let flags = match content {
                MovedPage::Zero => 0,
                MovedPage::Page => DATA,
                MovedPage::Lost => GONE,
            };
            let arg = u64::from(version) | (u64::from(epoch) << 32);
            (T::HomeMove, 0, arg, flags)
        }
        Msg::HomePointer { home, epoch, .. } => (T::HomePointer, home.get(), epoch.into(), 0),
    }
}

/// The message a received header carries; every field is checked, nothing panics. The
/// sender and the payload length are the frame's business (checked by the wire decoder).
pub fn decode(h: &Header) -> Result<Msg, DecodeError> {
    use MsgType as T;
    let f = Fields(h);
    let (txn, page) = (h.txn, h.page);
    match h.ty {
        // Types with neither flags, aux nor arg.
        T::ReadReq => f.plain(Msg::ReadReq { txn, page }),
        T::WriteReq => f.plain(Msg::WriteReq { txn, page }),
        T::InvAck => f.plain(Msg::InvAck { txn, page }),
        T::Done => f.plain(Msg::Done { txn, page }),
        T::EvictAck => f.plain(Msg::EvictAck { txn, page }),
        T::Recall => f.plain(Msg::Recall { txn, page }),
        T::UpgradeReq | T::FwdRead | T::FwdWrite | T::Inv | T::Grant | T::Nack | T::HomePointer => {
            f.no_flags()?;
            decode_with_args(&f)
        }
        T::Data | T::FwdAck | T::EvictReq | T::RecallAck | T::HomeMove => {
            f.no_aux()?;
            decode_with_flags(&f)
        }
        other => Err(DecodeError::NotProtocol(other)),
    }
}

/// Types whose meaning is in `aux` and `arg` (their flags are already checked to be zero).
fn decode_with_args(f: &Fields<'_>) -> Result<Msg, DecodeError> {
    let Header { txn, page, arg, .. } = *f.0;
    Ok(match f.0.ty {
        MsgType::UpgradeReq => {
            f.no_aux()?;
            let version = u16::try_from(arg)
                .ok()
                .filter(|v| *v < 1 << 13)
                .ok_or_else(|| f.bad_arg())?;
            Msg::UpgradeReq { txn, page, version }
        }
        MsgType::FwdRead => Msg::FwdRead {
            txn,
            page,
            requester: f.node()?,
            version: f.version()?,
        },
        MsgType::FwdWrite => Msg::FwdWrite {
            txn,
            page,
            requester: f.node()?,
            version: f.version()?,
        },
        MsgType::Inv => {
            f.no_arg()?;
            let requester = f.node()?;
            Msg::Inv {
                txn,
                page,
                requester,
            }
        }
        MsgType::Grant => {
            f.no_aux()?;
            let version = f.version()?;
            Msg::Grant { txn, page, version }
        }
        MsgType::Nack => {
            let reason = match arg {
                1 | 2 => {
                    f.no_aux()?;
                    if arg == 1 {
                        NackReason::Busy
                    } else {
                        NackReason::Lost
                    }
                }
                3 => NackReason::Moved(f.node()?),
                _ => return Err(f.bad_arg()),
            };
            Msg::Nack { txn, page, reason }
        }
        MsgType::HomePointer => {
            let epoch = f.version()?;
            if epoch == 0 {
                // A pointer names a move, and moves are numbered from 1.
                return Err(f.bad_arg());
            }
            Msg::HomePointer {
                txn,
                page,
                home: f.node()?,
                epoch,
            }
        }
        other => return Err(DecodeError::NotProtocol(other)),
    })
}

/// Types whose meaning is in their flags (their `aux` is already checked to be zero).
fn decode_with_flags(f: &Fields<'_>) -> Result<Msg, DecodeError> {
    let Header {
        txn, page, flags, ..
    } = *f.0;
    Ok(match f.0.ty {
        MsgType::Data => {
            if flags & !(DATA | WRITABLE) != 0 || flags & DATA == 0 {
                return Err(f.bad_flags());
            }
            let version = f.version()?;
            let writable = flags & WRITABLE != 0;
            Msg::Data {
                txn,
                page,
                version,
                writable,
            }
        }
        MsgType::FwdAck => {
            f.no_arg()?;
            let outcome = match flags {
                x if x == DATA | KEPT => FwdOutcome::Shared,
                0 => FwdOutcome::HandedOff,
                DATA => FwdOutcome::Surrendered,
                x if x == DATA | KEPT | GONE => FwdOutcome::RequesterGone,
                _ => return Err(f.bad_flags()),
            };
            Msg::FwdAck { txn, page, outcome }
        }
        MsgType::EvictReq => {
            f.no_arg()?;
            let dirty = match flags {
                0 => false,
                x if x == DATA | DIRTY => true,
                _ => return Err(f.bad_flags()),
            };
            Msg::EvictReq { txn, page, dirty }
        }
        MsgType::RecallAck => {
            f.no_arg()?;
            let have = match flags {
                0 => RecallHave::Nothing,
                x if x == DATA | HAVE => RecallHave::Copy,
                x if x == HAVE | EXCL => RecallHave::Exclusive,
                _ => return Err(f.bad_flags()),
            };
            Msg::RecallAck { txn, page, have }
        }
        MsgType::HomeMove => {
            let content = match flags {
                0 => MovedPage::Zero,
                DATA => MovedPage::Page,
                GONE => MovedPage::Lost,
                _ => return Err(f.bad_flags()),
            };
            let version = f.0.arg as u32;
            let epoch = (f.0.arg >> 32) as u32;
            if epoch == 0 {
                // Every move has a number, the first one 1.
                return Err(f.bad_arg());
            }
            Msg::HomeMove {
                txn,
                page,
                version,
                epoch,
                content,
            }
        }
        other => return Err(DecodeError::NotProtocol(other)),
    })
}

/// The checks a received header's fields pass, each failing with the error that names the
/// field.
struct Fields<'a>(&'a Header);

impl Fields<'_> {
    fn bad_flags(&self) -> DecodeError {
        DecodeError::BadFlags {
            ty: self.0.ty,
            flags: self.0.flags,
        }
    }
    fn bad_arg(&self) -> DecodeError {
        DecodeError::BadArg {
            ty: self.0.ty,
            arg: self.0.arg,
        }
    }
    fn bad_node(&self) -> DecodeError {
        DecodeError::BadNode {
            ty: self.0.ty,
            aux: self.0.aux,
        }
    }
    fn node(&self) -> Result<NodeId, DecodeError> {
        NodeId::new(self.0.aux).map_err(|_| self.bad_node())
    }
    fn version(&self) -> Result<u32, DecodeError> {
        u32::try_from(self.0.arg).map_err(|_| self.bad_arg())
    }
    fn no_flags(&self) -> Result<(), DecodeError> {
        if self.0.flags != 0 {
            return Err(self.bad_flags());
        }
        Ok(())
    }
    fn no_aux(&self) -> Result<(), DecodeError> {
        if self.0.aux != 0 {
            return Err(self.bad_node());
        }
        Ok(())
    }
    fn no_arg(&self) -> Result<(), DecodeError> {
        if self.0.arg != 0 {
            return Err(self.bad_arg());
        }
        Ok(())
    }
    fn plain(&self, msg: Msg) -> Result<Msg, DecodeError> {
        self.no_flags()?;
        self.no_aux()?;
        self.no_arg()?;
        Ok(msg)
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
        // The protocol's 18 messages are the wire's codes 1..=18, in the allocated order.
        assert_eq!(
            types.into_iter().collect::<Vec<_>>(),
            (1..=18).collect::<Vec<u8>>()
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
        // Nack reasons are 1 to 3; only a redirect (3) names a node.
        assert!(matches!(
            decode(&of(MsgType::Nack)),
            Err(DecodeError::BadArg { .. })
        ));
        assert!(matches!(
            with(MsgType::Nack, &|h| {
                h.arg = 1;
                h.aux = 3;
            }),
            Err(DecodeError::BadNode { aux: 3, .. })
        ));
        assert!(matches!(
            with(MsgType::Nack, &|h| {
                h.arg = 3;
                h.aux = 64;
            }),
            Err(DecodeError::BadNode { aux: 64, .. })
        ));
        // A home move carries a page (DATA), none (zero), or none because it is lost (GONE);
        // never both, and always a move number.
        assert!(matches!(
            with(MsgType::HomeMove, &|h| h.flags = DATA | DIRTY),
            Err(DecodeError::BadFlags { .. })
        ));
        assert!(matches!(
            with(MsgType::HomeMove, &|h| {
                h.flags = DATA | GONE;
                h.arg = 1 << 32;
            }),
            Err(DecodeError::BadFlags { .. })
        ));
        assert!(matches!(
            with(MsgType::HomeMove, &|h| h.arg = 7),
            Err(DecodeError::BadArg { .. })
        ));
        // A pointer names a node and a move number.
        assert!(matches!(
            with(MsgType::HomePointer, &|h| {
                h.aux = 64;
                h.arg = 1;
            }),
            Err(DecodeError::BadNode { aux: 64, .. })
        ));
        assert!(matches!(
            with(MsgType::HomePointer, &|h| h.aux = 2),
            Err(DecodeError::BadArg { .. })
        ));
        assert!(matches!(
            with(MsgType::HomePointer, &|h| {
                h.aux = 2;
                h.arg = 1 << 32;
            }),
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
