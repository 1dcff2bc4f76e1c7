//! SRAT (System Resource Affinity Table, ACPI 6.5 §5.2.16): one Memory Affinity structure per
//! memory range and one processor affinity structure per vCPU — Processor Local APIC Affinity
//! when the APIC id fits in 8 bits, Processor Local x2APIC Affinity otherwise.

use super::sdt::{OemIds, Sdt};
use super::topology::Topology;

/// SRAT revision written (ACPI 6.x: proximity domains are 32 bits everywhere).
pub const REVISION: u8 = 3;
/// Largest APIC id the 8-bit Processor Local APIC structures can carry (0xFF is broadcast).
pub const MAX_XAPIC_ID: u32 = 0xFE;

const TYPE_LAPIC_AFFINITY: u8 = 0;
const TYPE_MEMORY_AFFINITY: u8 = 1;
const TYPE_X2APIC_AFFINITY: u8 = 2;
const LEN_LAPIC_AFFINITY: u8 = 16;
const LEN_MEMORY_AFFINITY: u8 = 40;
const LEN_X2APIC_AFFINITY: u8 = 24;
const FLAG_ENABLED: u32 = 1;

/// Builds the SRAT for `topology`.
pub fn build(topology: &Topology, ids: &OemIds) -> Vec<u8> {
    let mut t = Sdt::new(*b"SRAT", REVISION, ids);
    t.u32(1); // reserved, must be 1 for backward compatibility
    t.u64(0); // reserved
    for vcpu in topology.vcpus() {
        let pxm = vcpu.proximity_domain.to_le_bytes();
        if vcpu.apic_id <= MAX_XAPIC_ID {
            t.u8(TYPE_LAPIC_AFFINITY)
                .u8(LEN_LAPIC_AFFINITY)
                .u8(pxm[0]) // proximity domain [7:0]
                .u8(vcpu.apic_id as u8)
                .u32(FLAG_ENABLED)
                .u8(0) // local SAPIC EID
                .bytes(&pxm[1..4]) // proximity domain [31:8]
                .u32(0); // clock domain
        } else {
            t.u8(TYPE_X2APIC_AFFINITY)
                .u8(LEN_X2APIC_AFFINITY)
                .u16(0)
                .u32(vcpu.proximity_domain)
                .u32(vcpu.apic_id)
                .u32(FLAG_ENABLED)
                .u32(0) // clock domain
                .u32(0);
        }
    }
    for (range, pxm) in topology.memory() {
        t.u8(TYPE_MEMORY_AFFINITY)
            .u8(LEN_MEMORY_AFFINITY)
            .u32(pxm)
            .u16(0)
            .u64(range.base)
            .u64(range.size)
            .u32(0)
            .u32(FLAG_ENABLED)
            .u64(0);
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
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn lists_xapic_then_x2apic_cpus_and_every_range() {
        let nodes = vec![
            NodeDesc {
                proximity_domain: 0,
                ranges: vec![MemRange::new(0, 1 << 31), MemRange::new(1 << 32, 1 << 30)],
                vcpus: vec![0, 300],
            },
            NodeDesc {
                proximity_domain: 1,
                ranges: vec![MemRange::new(5 << 30, 1 << 30)],
                vcpus: vec![254],
            },
        ];
        let m = Measurements {
            fetch_latency_ns: Matrix::from_fn(2, |_, _| 1),
            bandwidth_mbps: Matrix::from_fn(2, |_, _| 1),
        };
        let t = Topology::new(nodes, m, Overrides::default()).unwrap();
        let b = build(&t, &OemIds::SSI_DP);
        assert!(sums_to_zero(&b));
        assert_eq!(u32_at(&b, 4) as usize, b.len());
        assert_eq!(u32_at(&b, HEADER_LEN), 1);
        let mut at = HEADER_LEN + 12;
        // APIC 0 on node 0, 8-bit structure.
        assert_eq!(&b[at..at + 4], &[0, 16, 0, 0]);
        at += 16;
        // APIC 254 on node 1: still fits the 8-bit structure.
        assert_eq!(&b[at..at + 4], &[0, 16, 1, 254]);
        assert_eq!(u32_at(&b, at + 4), FLAG_ENABLED);
        at += 16;
        // APIC 300 needs the x2APIC structure.
        assert_eq!(&b[at..at + 2], &[2, 24]);
        assert_eq!(u32_at(&b, at + 4), 0);
        assert_eq!(u32_at(&b, at + 8), 300);
        at += 24;
        let ranges: Vec<(u32, u64, u64)> = (0..3)
            .map(|i| {
                let s = at + i * 40;
                assert_eq!(&b[s..s + 2], &[1, 40]);
                assert_eq!(u32_at(&b, s + 28), FLAG_ENABLED);
                (u32_at(&b, s + 2), u64_at(&b, s + 8), u64_at(&b, s + 16))
            })
            .collect();
        assert_eq!(
            ranges,
            vec![
                (0, 0, 1 << 31),
                (0, 1 << 32, 1 << 30),
                (1, 5 << 30, 1 << 30)
            ]
        );
        assert_eq!(at + 3 * 40, b.len());
    }
}
