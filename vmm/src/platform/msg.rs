//! The messages nodes exchange about one guest's platform (interrupts, forwarded device
//! accesses, logical APIC ids, power events), as fixed 32-byte frames. The transport (an
//! authenticated TCP connection per pair of nodes) lives with the caller; this module only
//! encodes and validates, and never panics on any input (a property test below; the
//! cargo-fuzz target `fuzz/fuzz_targets/platform_msg.rs`).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | kind |
//! | 1 | 1 | flags (kind-specific) |
//! | 2 | 2 | vCPU |
//! | 4 | 4 | `a` |
//! | 8 | 8 | `b` |
//! | 16 | 8 | `c` |
//! | 24 | 8 | `d` |

use super::lapic::DeliveryMode;

/// Bytes of one frame.
pub const FRAME_LEN: usize = 32;

const KIND_INTERRUPT: u8 = 1;
const KIND_LOGICAL_ID: u8 = 2;
const KIND_IO_REQUEST: u8 = 3;
const KIND_IO_REPLY: u8 = 4;
const KIND_LEVEL_EOI: u8 = 5;
const KIND_LIFECYCLE: u8 = 6;

const FLAG_LEVEL: u8 = 1;
const FLAG_WRITE: u8 = 1;
const FLAG_MMIO: u8 = 2;

/// Address space of a forwarded access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// An I/O port.
    Pio,
    /// A guest-physical MMIO address.
    Mmio,
}

/// How a guest run ends, as every node must learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (ACPI reset register, or a triple fault).
    Reset,
    /// A node's part of the guest failed; everyone stops.
    Failed,
}

/// One platform message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// Deliver an interrupt to vCPU `vcpu`, which the receiver runs.
    Interrupt {
        /// Target vCPU.
        vcpu: u16,
        /// Vector (start-up page for SIPI).
        vector: u8,
        /// Delivery mode.
        delivery: DeliveryMode,
        /// Level triggered.
        level_triggered: bool,
    },
    /// vCPU `vcpu` (run by the sender) changed its logical destination registers.
    LogicalId {
        /// vCPU.
        vcpu: u16,
        /// LDR.
        ldr: u32,
        /// DFR.
        dfr: u32,
    },
    /// A device access by vCPU `vcpu` for the node that has the device.
    IoRequest {
        /// Requesting vCPU.
        vcpu: u16,
        /// Sequence number of the requester (matched in the reply).
        seq: u32,
        /// Port or MMIO.
        space: Space,
        /// Port or address.
        addr: u64,
        /// Bytes (1, 2, 4 or 8).
        len: u8,
        /// Write (with `data`) or read.
        write: bool,
        /// Value written.
        data: u64,
    },
    /// The answer to an [`Msg::IoRequest`].
    IoReply {
        /// Requesting vCPU.
        vcpu: u16,
        /// Its sequence number.
        seq: u32,
        /// Value read (0 for writes).
        data: u64,
    },
    /// A local APIC retired level-triggered `vector` (for the I/O APIC's remote IRR).
    LevelEoi {
        /// Vector.
        vector: u8,
    },
    /// The guest run ends this way, with this status (the guest's verdict, or 0).
    Lifecycle {
        /// What happened.
        event: Lifecycle,
        /// Status.
        status: u32,
    },
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// Unknown kind byte.
    #[error("unknown platform message kind {0}: the peer runs another version of ssi-dp")]
    Kind(u8),
    /// A field out of its range.
    #[error("platform message kind {kind} has an invalid {field}")]
    Field {
        /// Kind.
        kind: u8,
        /// Which field.
        field: &'static str,
    },
}

fn delivery_ok(d: DeliveryMode) -> bool {
    !matches!(d, DeliveryMode::Smi | DeliveryMode::ExtInt)
}

impl Msg {
    /// Encodes into one frame.
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        let (kind, flags, vcpu, a, b, c, d) = match *self {
            Msg::Interrupt {
                vcpu,
                vector,
                delivery,
                level_triggered,
            } => (
                KIND_INTERRUPT,
                if level_triggered { FLAG_LEVEL } else { 0 },
                vcpu,
                u32::from(vector) | (delivery.bits() << 8),
                0,
                0,
                0,
            ),
            Msg::LogicalId { vcpu, ldr, dfr } => (
                KIND_LOGICAL_ID,
                0,
                vcpu,
                0,
                u64::from(ldr),
                u64::from(dfr),
                0,
            ),
            Msg::IoRequest {
                vcpu,
                seq,
                space,
                addr,
                len,
                write,
                data,
            } => (
                KIND_IO_REQUEST,
                (if write { FLAG_WRITE } else { 0 })
                    | if space == Space::Mmio { FLAG_MMIO } else { 0 },
                vcpu,
                seq,
                addr,
                u64::from(len),
                data,
            ),
            Msg::IoReply { vcpu, seq, data } => (KIND_IO_REPLY, 0, vcpu, seq, data, 0, 0),
            Msg::LevelEoi { vector } => (KIND_LEVEL_EOI, 0, 0, u32::from(vector), 0, 0, 0),
            Msg::Lifecycle { event, status } => {
                let e = match event {
                    Lifecycle::PowerOff => 1,
                    Lifecycle::Reset => 2,
                    Lifecycle::Failed => 3,
                };
                (KIND_LIFECYCLE, e, 0, status, 0, 0, 0)
            }
        };
        f[0] = kind;
        f[1] = flags;
        f[2..4].copy_from_slice(&vcpu.to_le_bytes());
        f[4..8].copy_from_slice(&a.to_le_bytes());
        f[8..16].copy_from_slice(&b.to_le_bytes());
        f[16..24].copy_from_slice(&c.to_le_bytes());
        f[24..32].copy_from_slice(&d.to_le_bytes());
        f
    }

    /// Decodes and validates one frame. vCPU numbers are checked by the receiver, which knows
    /// the VM's size.
    pub fn decode(f: &[u8; FRAME_LEN]) -> Result<Msg, MsgError> {
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&f[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let (kind, flags) = (f[0], f[1]);
        let vcpu = u16::from_le_bytes([f[2], f[3]]);
        let a = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
        let (b, c, d) = (u64_at(8), u64_at(16), u64_at(24));
        let bad = |field| MsgError::Field { kind, field };
        Ok(match kind {
            KIND_INTERRUPT => {
                let delivery = DeliveryMode::from_bits(a >> 8)
                    .filter(|&d| delivery_ok(d))
                    .ok_or(bad("delivery mode"))?;
                if a >> 11 != 0 || flags & !FLAG_LEVEL != 0 {
                    return Err(bad("flags"));
                }
                Msg::Interrupt {
                    vcpu,
                    vector: a as u8,
                    delivery,
                    level_triggered: flags & FLAG_LEVEL != 0,
                }
            }
            KIND_LOGICAL_ID => {
                if b > u64::from(u32::MAX) || c > u64::from(u32::MAX) {
                    return Err(bad("logical id"));
                }
                Msg::LogicalId {
                    vcpu,
                    ldr: b as u32,
                    dfr: c as u32,
                }
            }
            KIND_IO_REQUEST => {
                if flags & !(FLAG_WRITE | FLAG_MMIO) != 0 {
                    return Err(bad("flags"));
                }
                let len = match c {
                    1 | 2 | 4 | 8 => c as u8,
                    _ => return Err(bad("length")),
                };
                let space = if flags & FLAG_MMIO != 0 {
                    Space::Mmio
                } else {
                    Space::Pio
                };
                if space == Space::Pio && (b > 0xFFFF || len > 4) {
                    return Err(bad("port"));
                }
                Msg::IoRequest {
                    vcpu,
                    seq: a,
                    space,
                    addr: b,
                    len,
                    write: flags & FLAG_WRITE != 0,
                    data: d,
                }
            }
            KIND_IO_REPLY => Msg::IoReply {
                vcpu,
                seq: a,
                data: b,
            },
            KIND_LEVEL_EOI => {
                if a > 0xFF {
                    return Err(bad("vector"));
                }
                Msg::LevelEoi { vector: a as u8 }
            }
            KIND_LIFECYCLE => Msg::Lifecycle {
                event: match flags {
                    1 => Lifecycle::PowerOff,
                    2 => Lifecycle::Reset,
                    3 => Lifecycle::Failed,
                    _ => return Err(bad("event")),
                },
                status: a,
            },
            k => return Err(MsgError::Kind(k)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let all = [
            Msg::Interrupt {
                vcpu: 3,
                vector: 0xEC,
                delivery: DeliveryMode::Fixed,
                level_triggered: true,
            },
            Msg::Interrupt {
                vcpu: 1,
                vector: 0x9A,
                delivery: DeliveryMode::StartUp,
                level_triggered: false,
            },
            Msg::LogicalId {
                vcpu: 2,
                ldr: 0x0400_0000,
                dfr: 0xFFFF_FFFF,
            },
            Msg::IoRequest {
                vcpu: 7,
                seq: 99,
                space: Space::Pio,
                addr: 0x3F8,
                len: 1,
                write: true,
                data: b'x'.into(),
            },
            Msg::IoRequest {
                vcpu: 7,
                seq: 100,
                space: Space::Mmio,
                addr: 0xFEC0_0010,
                len: 4,
                write: false,
                data: 0,
            },
            Msg::IoReply {
                vcpu: 7,
                seq: 100,
                data: 0x17_0011,
            },
            Msg::LevelEoi { vector: 0x30 },
            Msg::Lifecycle {
                event: Lifecycle::PowerOff,
                status: 0,
            },
            Msg::Lifecycle {
                event: Lifecycle::Failed,
                status: 3,
            },
        ];
        for m in all {
            assert_eq!(Msg::decode(&m.encode()), Ok(m), "{m:?}");
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        let mut f = [0u8; FRAME_LEN];
        assert_eq!(Msg::decode(&f), Err(MsgError::Kind(0)));
        f[0] = KIND_INTERRUPT;
        f[5] = 2; // SMI
        assert!(Msg::decode(&f).is_err());
        f[5] = 0;
        f[1] = 0x80;
        assert!(Msg::decode(&f).is_err());
        let mut io = Msg::IoRequest {
            vcpu: 0,
            seq: 0,
            space: Space::Pio,
            addr: 0x10000,
            len: 1,
            write: false,
            data: 0,
        }
        .encode();
        assert!(Msg::decode(&io).is_err(), "port beyond 16 bits");
        io[8..16].copy_from_slice(&0x3F8u64.to_le_bytes());
        io[16] = 3;
        assert!(Msg::decode(&io).is_err(), "length 3");
        let mut l = Msg::Lifecycle {
            event: Lifecycle::Reset,
            status: 0,
        }
        .encode();
        l[1] = 9;
        assert!(Msg::decode(&l).is_err());
    }

    proptest::proptest! {
        /// Any 32 bytes (with the kind byte mostly a real kind, so the field checks are
        /// reached): decoding never panics, and what it accepts encodes back to a frame that
        /// decodes to the same message.
        #[test]
        fn arbitrary_frames_decode_or_are_refused(
            kind in proptest::prop_oneof![1u8..=6, proptest::num::u8::ANY],
            rest in proptest::array::uniform31(proptest::num::u8::ANY),
        ) {
            let mut f = [0u8; FRAME_LEN];
            f[0] = kind;
            f[1..].copy_from_slice(&rest);
            if let Ok(m) = Msg::decode(&f) {
                proptest::prop_assert_eq!(Msg::decode(&m.encode()), Ok(m));
            }
        }
    }
}
