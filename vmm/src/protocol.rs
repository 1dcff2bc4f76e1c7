//! The test-guest ↔ host protocol: what a guest store to the doorbell (or an `out` to the
//! protocol ports) means, and the result keys the payloads use.
//!
//! PVM does not let CPL3 code execute `in`/`out` (IOPL and the TSS I/O bitmap are not
//! honoured for guest user mode: the instruction raises #GP), so test guests report through
//! MMIO stores to the doorbell page instead; each 8-byte store is one exit. The same registers
//! are decoded from I/O ports [`ports::BASE`]`..+4` (32-bit values) for CPL0 code and for
//! hosts with hardware KVM.

use crate::layout::{doorbell, ports};

/// Result keys: `kind << 32 | index`.
pub mod keys {
    /// Final value of counter `index` (atomics), reported by vCPU 0 after the barrier.
    pub const COUNTER: u64 = 1;
    /// Critical sections a vCPU completed (ticket lock).
    pub const ACQUIRED: u64 = 2;
    /// The non-atomic counter the ticket lock protects, reported by vCPU 0.
    pub const LOCKED_TOTAL: u64 = 3;
    /// A vCPU's partial sum (parallel sum); index = vCPU.
    pub const PARTIAL: u64 = 4;
    /// The sum of all partials read back from guest memory by vCPU 0.
    pub const SUM: u64 = 5;
    /// TSC ticks around one first touch (fault latency); index = page number within the vCPU.
    pub const TOUCH_TICKS: u64 = 6;
    /// Sum of the first words read from the touched pages; index = vCPU.
    pub const TOUCH_CHECKSUM: u64 = 7;

    /// The key for `kind` and `index`.
    pub const fn key(kind: u64, index: u64) -> u64 {
        (kind << 32) | (index & 0xffff_ffff)
    }

    /// The kind of a key.
    pub const fn kind(key: u64) -> u64 {
        key >> 32
    }

    /// The index of a key.
    pub const fn index(key: u64) -> u64 {
        key & 0xffff_ffff
    }
}

/// Guest failure codes written to DONE.
pub mod fail {
    /// Success.
    pub const OK: u64 = 0;
    /// The parameter block's magic is wrong (setup not run, or run on other memory).
    pub const BAD_PARAMS: u64 = 0xbad0;
}

/// One decoded protocol write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A console byte.
    Console(u8),
    /// Latch the key of the next value.
    Key(u64),
    /// A value for the latched key.
    Value(u64),
    /// The vCPU finished with this status.
    Done(u64),
}

fn value_of(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn from_offset(offset: u64, value: u64) -> Option<Event> {
    match offset {
        doorbell::CONSOLE => Some(Event::Console(value as u8)),
        doorbell::KEY => Some(Event::Key(value)),
        doorbell::VALUE => Some(Event::Value(value)),
        doorbell::DONE => Some(Event::Done(value)),
        _ => None,
    }
}

/// Decodes a store of `data` at `addr` given the doorbell's GPA; `None` if it is not a
/// protocol register.
pub fn decode_mmio(doorbell_gpa: u64, addr: u64, data: &[u8]) -> Option<Event> {
    let offset = addr.checked_sub(doorbell_gpa)?;
    if offset >= doorbell::WINDOW || offset % 8 != 0 {
        return None;
    }
    from_offset(offset, value_of(data))
}

/// Decodes an `out` of `data` to `port`; `None` if it is not a protocol port.
pub fn decode_port(port: u16, data: &[u8]) -> Option<Event> {
    let n = port.checked_sub(ports::BASE)?;
    if n >= ports::COUNT {
        return None;
    }
    from_offset(u64::from(n) * 8, value_of(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_and_ports_decode_the_same_registers() {
        let bell = 0x4000_0000;
        let v = 0x1122_3344_5566_7788u64.to_le_bytes();
        assert_eq!(decode_mmio(bell, bell, b"x"), Some(Event::Console(b'x')));
        assert_eq!(
            decode_mmio(bell, bell + 8, &v),
            Some(Event::Key(0x1122_3344_5566_7788))
        );
        assert_eq!(
            decode_mmio(bell, bell + 0x10, &v[..4]),
            Some(Event::Value(0x5566_7788))
        );
        assert_eq!(decode_mmio(bell, bell + 0x18, &[3]), Some(Event::Done(3)));
        assert_eq!(decode_mmio(bell, bell + 0x20, &v), None);
        assert_eq!(decode_mmio(bell, bell + 4, &v), None);
        assert_eq!(decode_mmio(bell, bell - 8, &v), None);
        assert_eq!(decode_port(ports::BASE, b"y"), Some(Event::Console(b'y')));
        assert_eq!(
            decode_port(ports::BASE + 3, &[0, 1, 0, 0]),
            Some(Event::Done(256))
        );
        assert_eq!(decode_port(ports::BASE + 4, &[1]), None);
        assert_eq!(decode_port(ports::COM1, &[1]), None);
    }

    #[test]
    fn keys_split_into_kind_and_index() {
        let k = keys::key(keys::PARTIAL, 7);
        assert_eq!((keys::kind(k), keys::index(k)), (keys::PARTIAL, 7));
    }
}
