//! HMAT (Heterogeneous Memory Attribute Table, ACPI 6.5 §5.2.28, revision 2): one Memory
//! Proximity Domain Attributes structure per memory node and two System Locality Latency and
//! Bandwidth structures (access latency, access bandwidth) over initiators = nodes with vCPUs
//! and targets = nodes with memory. The entry matrix is initiator-major with a row stride of the
//! *target* count, so non-square matrices (memory-only or CPU-only nodes) come out right.

use super::figures::Figures;
use super::sdt::{OemIds, Sdt};
use super::topology::{Matrix, Topology};

/// HMAT revision written (ACPI 6.3+ layout; Linux reads latencies in picoseconds).
pub const REVISION: u8 = 2;
/// Largest value an entry may hold (0xFFFF means "unreachable", 0 "no information").
pub const MAX_ENTRY: u16 = 0xFFFE;
/// Picoseconds per nanosecond: latency entries' base unit is in picoseconds.
const PS_PER_NS: u64 = 1000;

const TYPE_MEMORY_PROXIMITY: u16 = 0;
const TYPE_LOCALITY: u16 = 1;
const LEN_MEMORY_PROXIMITY: u32 = 40;
const LOCALITY_HEADER_LEN: u32 = 32;
const FLAG_INITIATOR_VALID: u16 = 1;
/// Locality flags: memory hierarchy 0 = "memory" (not a memory-side cache level).
const HIERARCHY_MEMORY: u8 = 0;

/// What a locality structure's entries measure (ACPI "Data Type").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DataType {
    /// Read and write latency alike.
    AccessLatency = 0,
    /// Read and write bandwidth alike.
    AccessBandwidth = 3,
}

/// A value matrix encoded as ACPI entries: `value ≈ entry × base_unit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Entry base unit (picoseconds for latency, MB/s for bandwidth).
    pub base_unit: u64,
    /// Entries in the order given.
    pub entries: Vec<u16>,
}

/// Encodes latencies (ns) with the smallest base unit of 1000·10^k ps that keeps every entry
/// ≤ 0xFFFE; entries are rounded up so a latency is never under-reported. With latencies
/// below 65.5 µs the base is 1 ns and Linux reports the exact values.
pub fn encode_latency(values_ns: &[u32]) -> Encoded {
    let max_ps = values_ns.iter().map(|&v| u64::from(v) * PS_PER_NS).max();
    let base_unit = base_for(max_ps.unwrap_or(0), PS_PER_NS, true);
    let entries = values_ns
        .iter()
        .map(|&v| entry((u64::from(v) * PS_PER_NS).div_ceil(base_unit)))
        .collect();
    Encoded { base_unit, entries }
}

/// Encodes bandwidths (MB/s) with the smallest base unit of 10^k MB/s that keeps every entry
/// ≤ 0xFFFE; entries are rounded to nearest and never to 0 (which means "no data").
pub fn encode_bandwidth(values_mbps: &[u32]) -> Encoded {
    let max = values_mbps.iter().map(|&v| u64::from(v)).max();
    let base_unit = base_for(max.unwrap_or(0), 1, false);
    let entries = values_mbps
        .iter()
        .map(|&v| entry(((u64::from(v) + base_unit / 2) / base_unit).max(1)))
        .collect();
    Encoded { base_unit, entries }
}

/// Smallest `floor × 10^k` such that `max / base` (rounded up or to nearest) fits an entry.
fn base_for(max: u64, floor: u64, round_up: bool) -> u64 {
    let mut base = floor;
    loop {
        let scaled = if round_up {
            max.div_ceil(base)
        } else {
            (max + base / 2) / base
        };
        if scaled <= u64::from(MAX_ENTRY) {
            return base;
        }
        base *= 10;
    }
}

fn entry(v: u64) -> u16 {
    u16::try_from(v).unwrap_or(MAX_ENTRY).min(MAX_ENTRY)
}

/// Builds the HMAT for `topology` from its (override-applied) `figures`.
pub fn build(topology: &Topology, figures: &Figures, ids: &OemIds) -> Vec<u8> {
    let initiators = topology.initiators();
    let targets = topology.targets();
    let mut t = Sdt::new(*b"HMAT", REVISION, ids);
    t.u32(0); // reserved
    for &target in &targets {
        let local_cpus = !topology.nodes()[target as usize].vcpus.is_empty();
        let (flags, initiator) = if local_cpus {
            (FLAG_INITIATOR_VALID, target)
        } else {
            (0, 0)
        };
        t.u16(TYPE_MEMORY_PROXIMITY)
            .u16(0)
            .u32(LEN_MEMORY_PROXIMITY)
            .u16(flags)
            .u16(0)
            .u32(initiator)
            .u32(target)
            .u32(0)
            .u64(0)
            .u64(0);
    }
    let latency = encode_latency(&pairs(&figures.latency_ns, &initiators, &targets));
    locality(
        &mut t,
        DataType::AccessLatency,
        &initiators,
        &targets,
        &latency,
    );
    let bandwidth = encode_bandwidth(&pairs(&figures.bandwidth_mbps, &initiators, &targets));
    locality(
        &mut t,
        DataType::AccessBandwidth,
        &initiators,
        &targets,
        &bandwidth,
    );
    t.finish()
}

/// The initiator×target sub-matrix, initiator-major (row stride = number of targets).
pub fn pairs(m: &Matrix<u32>, initiators: &[u32], targets: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(initiators.len() * targets.len());
    for &i in initiators {
        for &j in targets {
            out.push(m.get(i as usize, j as usize));
        }
    }
    out
}

fn locality(t: &mut Sdt, kind: DataType, initiators: &[u32], targets: &[u32], enc: &Encoded) {
    // Counts are bounded by MAX_NODES, so the length fits easily.
    let len = LOCALITY_HEADER_LEN as usize
        + 4 * initiators.len()
        + 4 * targets.len()
        + 2 * enc.entries.len();
    t.u16(TYPE_LOCALITY)
        .u16(0)
        .u32(len as u32)
        .u8(HIERARCHY_MEMORY)
        .u8(kind as u8)
        .u8(0) // minimum transfer size: not specified
        .u8(0)
        .u32(initiators.len() as u32)
        .u32(targets.len() as u32)
        .u32(0)
        .u64(enc.base_unit);
    for &i in initiators {
        t.u32(i);
    }
    for &j in targets {
        t.u32(j);
    }
    for &e in &enc.entries {
        t.u16(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::figures;
    use crate::sdt::{sums_to_zero, HEADER_LEN};
    use crate::topology::{Measurements, MemRange, NodeDesc, Overrides};

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// A decoded locality structure: (data type, initiators, targets, base, entries).
    type Locality = (u8, Vec<u32>, Vec<u32>, u64, Vec<u16>);

    /// Walks an HMAT the way Linux's hmat_parse_locality does.
    fn decode(b: &[u8]) -> (Vec<(u16, u32, u32)>, Vec<Locality>) {
        let mut at = HEADER_LEN + 4;
        let (mut prox, mut loc) = (Vec::new(), Vec::new());
        while at < b.len() {
            let len = u32_at(b, at + 4) as usize;
            match u16_at(b, at) {
                0 => prox.push((u16_at(b, at + 8), u32_at(b, at + 12), u32_at(b, at + 16))),
                1 => {
                    let ni = u32_at(b, at + 12) as usize;
                    let nt = u32_at(b, at + 16) as usize;
                    let mut o = at + 32;
                    let inits: Vec<u32> = (0..ni).map(|k| u32_at(b, o + 4 * k)).collect();
                    o += 4 * ni;
                    let targs: Vec<u32> = (0..nt).map(|k| u32_at(b, o + 4 * k)).collect();
                    o += 4 * nt;
                    let entries: Vec<u16> = (0..ni * nt).map(|k| u16_at(b, o + 2 * k)).collect();
                    assert_eq!(o + 2 * ni * nt, at + len, "locality length");
                    loc.push((b[at + 9], inits, targs, u64_at(b, at + 24), entries));
                }
                other => panic!("unexpected HMAT structure type {other}"),
            }
            at += len;
        }
        assert_eq!(at, b.len());
        (prox, loc)
    }

    /// Three nodes: 0 and 1 have vCPUs and memory, 2 is memory-only, so the matrix is 2×3.
    /// A row stride of the initiator count (the acpi_tables 0.2.1 bug) would put node 0's
    /// entry for target 2 where node 1's entry for target 0 belongs.
    #[test]
    fn non_square_matrix_is_target_strided() {
        let lat = Matrix::from_rows(
            "lat",
            vec![
                vec![401, 20_002, 30_003],
                vec![21_010, 411, 22_012],
                vec![1, 1, 421],
            ],
        )
        .unwrap();
        let bw = Matrix::from_rows(
            "bw",
            vec![
                vec![12_000, 1_001, 902],
                vec![1_010, 11_011, 1_012],
                vec![1, 1, 10_022],
            ],
        )
        .unwrap();
        let nodes = vec![
            NodeDesc {
                proximity_domain: 0,
                ranges: vec![MemRange::new(0, 1 << 30)],
                vcpus: vec![0],
            },
            NodeDesc {
                proximity_domain: 1,
                ranges: vec![MemRange::new(1 << 30, 1 << 30)],
                vcpus: vec![1],
            },
            NodeDesc {
                proximity_domain: 2,
                ranges: vec![MemRange::new(2 << 30, 1 << 30)],
                vcpus: vec![],
            },
        ];
        let t = Topology::new(
            nodes,
            Measurements {
                fetch_latency_ns: lat.clone(),
                bandwidth_mbps: bw.clone(),
            },
            Overrides::default(),
        )
        .unwrap();
        let b = build(&t, &figures(&t), &OemIds::SSI_DP);
        assert!(sums_to_zero(&b));
        assert_eq!(b[8], REVISION);
        let (prox, loc) = decode(&b);
        // Nodes with CPUs name themselves as the attached initiator; the memory-only one none.
        assert_eq!(prox, vec![(1, 0, 0), (1, 1, 1), (0, 0, 2)]);
        assert_eq!(loc.len(), 2);
        for (kind, inits, targs, base, entries) in &loc {
            assert_eq!(inits, &[0, 1]);
            assert_eq!(targs, &[0, 1, 2]);
            assert_eq!(*base, if *kind == 0 { 1000 } else { 1 });
            for (ii, &i) in inits.iter().enumerate() {
                for (ti, &j) in targs.iter().enumerate() {
                    let want = if *kind == 0 { &lat } else { &bw }.get(i as usize, j as usize);
                    let got = u64::from(entries[ii * targs.len() + ti]) * base;
                    let got = if *kind == 0 { got / 1000 } else { got };
                    assert_eq!(got, u64::from(want), "type {kind} initiator {i} target {j}");
                }
            }
        }
        assert_eq!(loc[0].0, DataType::AccessLatency as u8);
        assert_eq!(loc[1].0, DataType::AccessBandwidth as u8);
    }

    #[test]
    fn latency_base_grows_only_when_entries_would_overflow() {
        let e = encode_latency(&[400, 65_534]);
        assert_eq!((e.base_unit, e.entries.clone()), (1000, vec![400, 65_534]));
        // 65 535 ns no longer fits at 1 ns: base 10 ns, rounded up.
        let e = encode_latency(&[401, 65_535]);
        assert_eq!((e.base_unit, e.entries.clone()), (10_000, vec![41, 6_554]));
        let e = encode_latency(&[crate::topology::MAX_LATENCY_NS]);
        assert!(e.entries[0] <= MAX_ENTRY);
        // What Linux computes (entry × base in ps, in a u32) must not overflow.
        assert!(u64::from(e.entries[0]) * e.base_unit <= u64::from(u32::MAX));
    }

    #[test]
    fn bandwidth_rounds_to_nearest_and_never_to_zero() {
        let e = encode_bandwidth(&[20_000, 1_100]);
        assert_eq!((e.base_unit, e.entries.clone()), (1, vec![20_000, 1_100]));
        let e = encode_bandwidth(&[100_000, 4, 15]);
        assert_eq!((e.base_unit, e.entries.clone()), (10, vec![10_000, 1, 2]));
        let e = encode_bandwidth(&[crate::topology::MAX_BANDWIDTH_MBPS]);
        assert!(e.entries[0] <= MAX_ENTRY);
        assert!(u64::from(e.entries[0]) * e.base_unit <= u64::from(u32::MAX));
    }
}
