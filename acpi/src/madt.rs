//! MADT (Multiple APIC Description Table, ACPI 6.5 §5.2.12): one Processor Local APIC structure
//! per vCPU whose APIC id and UID fit in 8 bits, a Processor Local x2APIC structure for the
//! others (as the spec requires: x2APIC structures only for ids ≥ 255), the I/O APIC, the
//! ISA IRQ 0 → GSI 2 override of a PC-style PIT, and the LINT1 NMI wiring.

use super::platform::Platform;
use super::sdt::{OemIds, Sdt};
use super::topology::Topology;

/// MADT revision written (ACPI 6.3+).
pub const REVISION: u8 = 5;

const TYPE_LAPIC: u8 = 0;
const TYPE_IOAPIC: u8 = 1;
const TYPE_ISO: u8 = 2;
const TYPE_LAPIC_NMI: u8 = 4;
const TYPE_X2APIC: u8 = 9;
const TYPE_X2APIC_NMI: u8 = 0x0A;
const FLAG_PCAT_COMPAT: u32 = 1;
const LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags: active high, edge triggered (the NMI line and the PIT).
const INTI_HIGH_EDGE: u16 = 0b0101;
/// UID meaning "all processors" in the NMI structures.
const ALL_PROCESSORS_8: u8 = 0xFF;
const ALL_PROCESSORS_32: u32 = u32::MAX;
/// The local APIC input wired to NMI on a PC.
const NMI_LINT: u8 = 1;

/// Builds the MADT for `topology` on `platform`.
pub fn build(topology: &Topology, platform: &Platform, ids: &OemIds) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", REVISION, ids);
    t.u32(platform.local_apic_address);
    t.u32(if platform.legacy_pic {
        FLAG_PCAT_COMPAT
    } else {
        0
    });
    let mut any_x2apic = false;
    for vcpu in topology.vcpus() {
        match (u8::try_from(vcpu.uid), u8::try_from(vcpu.apic_id)) {
            (Ok(uid), Ok(apic)) if apic != 0xFF => {
                t.u8(TYPE_LAPIC).u8(8).u8(uid).u8(apic).u32(LAPIC_ENABLED);
            }
            _ => {
                any_x2apic = true;
                t.u8(TYPE_X2APIC)
                    .u8(16)
                    .u16(0)
                    .u32(vcpu.apic_id)
                    .u32(LAPIC_ENABLED)
                    .u32(vcpu.uid);
            }
        }
    }
    if let Some(io) = platform.io_apic {
        t.u8(TYPE_IOAPIC)
            .u8(12)
            .u8(io.id)
            .u8(0)
            .u32(io.address)
            .u32(io.gsi_base);
    }
    if platform.legacy_pic {
        // ISA bus 0, IRQ 0 (PIT) is wired to GSI 2, as on KVM's in-kernel irqchip and real PCs.
        t.u8(TYPE_ISO).u8(10).u8(0).u8(0).u32(2).u16(0);
    }
    t.u8(TYPE_LAPIC_NMI)
        .u8(6)
        .u8(ALL_PROCESSORS_8)
        .u16(INTI_HIGH_EDGE)
        .u8(NMI_LINT);
    if any_x2apic {
        t.u8(TYPE_X2APIC_NMI)
            .u8(12)
            .u16(INTI_HIGH_EDGE)
            .u32(ALL_PROCESSORS_32)
            .u8(NMI_LINT)
            .bytes(&[0; 3]);
    }
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdt::{sums_to_zero, HEADER_LEN};
    use crate::topology::{Matrix, Measurements, MemRange, NodeDesc, Overrides};

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn small_ids_get_lapic_entries_and_large_ones_x2apic() {
        let nodes = vec![NodeDesc {
            proximity_domain: 0,
            ranges: vec![MemRange::new(0, 1 << 30)],
            vcpus: vec![1, 0, 255, 70_000],
        }];
        let m = Measurements {
            fetch_latency_ns: Matrix::from_fn(1, |_, _| 1),
            bandwidth_mbps: Matrix::from_fn(1, |_, _| 1),
        };
        let t = Topology::new(nodes, m, Overrides::default()).unwrap();
        // The default (userspace irqchip) has no PC-AT PIC: no PCAT_COMPAT, no IRQ 0 override.
        let plain = build(&t, &Platform::default(), &OemIds::SSI_DP);
        assert_eq!(u32_at(&plain, HEADER_LEN + 4), 0);
        let legacy = Platform {
            legacy_pic: true,
            ..Platform::default()
        };
        assert_eq!(plain.len() + 10, build(&t, &legacy, &OemIds::SSI_DP).len());
        let b = build(&t, &legacy, &OemIds::SSI_DP);
        assert!(sums_to_zero(&b));
        assert_eq!(u32_at(&b, HEADER_LEN), 0xFEE0_0000);
        assert_eq!(u32_at(&b, HEADER_LEN + 4), FLAG_PCAT_COMPAT);
        let mut at = HEADER_LEN + 8;
        let mut seen = Vec::new();
        while at < b.len() {
            let (kind, len) = (b[at], b[at + 1] as usize);
            match kind {
                TYPE_LAPIC => seen.push(("lapic", u32::from(b[at + 2]), u32::from(b[at + 3]))),
                TYPE_X2APIC => seen.push(("x2apic", u32_at(&b, at + 12), u32_at(&b, at + 4))),
                TYPE_IOAPIC => seen.push(("ioapic", u32::from(b[at + 2]), u32_at(&b, at + 4))),
                TYPE_ISO => seen.push(("iso", u32::from(b[at + 3]), u32_at(&b, at + 4))),
                TYPE_LAPIC_NMI => seen.push(("nmi", u32::from(b[at + 2]), u32::from(b[at + 5]))),
                TYPE_X2APIC_NMI => seen.push(("x2nmi", u32_at(&b, at + 4), u32::from(b[at + 8]))),
                other => panic!("unexpected MADT structure {other}"),
            }
            at += len;
        }
        assert_eq!(at, b.len());
        assert_eq!(
            seen,
            vec![
                ("lapic", 0, 0),
                ("lapic", 1, 1),
                ("x2apic", 2, 255),
                ("x2apic", 3, 70_000),
                ("ioapic", 0, 0xFEC0_0000),
                ("iso", 0, 2),
                ("nmi", 0xFF, 1),
                ("x2nmi", u32::MAX, 1),
            ]
        );
    }
}
