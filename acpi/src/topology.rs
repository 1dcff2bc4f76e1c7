//! The guest NUMA topology the ACPI tables describe: nodes (proximity domains) with their
//! guest-physical memory ranges and vCPUs (APIC ids), the measured inter-node figures, and the
//! operator's overrides. Independent of the data plane; validated once at construction so that
//! table generation cannot fail.

use std::collections::BTreeMap;
use std::fmt;

/// Guest page size; memory ranges are whole pages because the data plane works in pages.
pub const PAGE_SIZE: u64 = 4096;
/// Most proximity domains a topology may have (an SSI cluster of more nodes is not a target).
pub const MAX_NODES: usize = 64;
/// Most memory ranges per node (a node's share split around the PCI hole needs two or three).
pub const MAX_RANGES_PER_NODE: usize = 8;
/// Most vCPUs in the guest (KVM's per-VM limit on x86_64).
pub const MAX_VCPUS: usize = 1024;
/// Largest accepted fetch latency. Linux keeps HMAT latencies in picoseconds in a `u32`, so
/// anything above ~4.29 ms could not be reported; a 4 KiB fetch that slow means a broken link.
pub const MAX_LATENCY_NS: u32 = 4_000_000;
/// Largest accepted bandwidth (100 TB/s), so HMAT entries times their base unit fit a `u32`.
pub const MAX_BANDWIDTH_MBPS: u32 = 100_000_000;
/// The x2APIC broadcast id, never a processor's id.
const APIC_BROADCAST: u32 = u32::MAX;

/// Why a topology was refused. Every message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// No node given.
    #[error("the topology has no node: describe at least one node with memory and vCPUs")]
    NoNodes,
    /// More nodes than [`MAX_NODES`].
    #[error("{count} nodes given, at most {max} are supported: merge nodes")]
    TooManyNodes {
        /// Nodes given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two nodes share a proximity domain.
    #[error("proximity domain {0} is given twice: give every node its own domain")]
    DuplicateProximityDomain(u32),
    /// Proximity domains are not 0..n-1 (SLIT is indexed by domain, so gaps are not allowed).
    #[error(
        "proximity domain {found} is out of range for {count} nodes: number the nodes' \
         domains 0..{count} without gaps"
    )]
    SparseProximityDomain {
        /// The domain out of range.
        found: u32,
        /// Number of nodes.
        count: usize,
    },
    /// A node with neither memory nor vCPUs.
    #[error("node {pxm} has neither memory nor vCPUs: give it one of them or drop it")]
    EmptyNode {
        /// The node's proximity domain.
        pxm: u32,
    },
    /// More ranges on one node than [`MAX_RANGES_PER_NODE`].
    #[error("node {pxm} has {count} memory ranges, at most {max} are supported: merge ranges")]
    TooManyRanges {
        /// The node's proximity domain.
        pxm: u32,
        /// Ranges given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A zero-sized range.
    #[error("node {pxm}: the memory range at {base:#x} is empty: give it a non-zero size")]
    EmptyRange {
        /// The node's proximity domain.
        pxm: u32,
        /// The range's base.
        base: u64,
    },
    /// A range that does not start and end on a page boundary.
    #[error(
        "node {pxm}: the memory range {range} is not 4 KiB aligned: align its base and size \
         to 4096 bytes"
    )]
    UnalignedRange {
        /// The node's proximity domain.
        pxm: u32,
        /// The range.
        range: MemRange,
    },
    /// A range that wraps past the end of the address space.
    #[error("node {pxm}: the memory range at {base:#x} of {size:#x} bytes wraps past 2^64")]
    RangeOverflow {
        /// The node's proximity domain.
        pxm: u32,
        /// The range's base.
        base: u64,
        /// The range's size.
        size: u64,
    },
    /// Two ranges overlap (on the same node or on two nodes).
    #[error(
        "memory range {first} of node {first_pxm} overlaps {second} of node {second_pxm}: \
         every guest-physical byte belongs to one node"
    )]
    OverlappingRanges {
        /// Domain of the lower range.
        first_pxm: u32,
        /// The lower range.
        first: MemRange,
        /// Domain of the upper range.
        second_pxm: u32,
        /// The upper range.
        second: MemRange,
    },
    /// No node has memory.
    #[error("no node has memory: give at least one node a memory range")]
    NoMemory,
    /// No node has vCPUs.
    #[error("no node has vCPUs: give at least one node a vCPU")]
    NoVcpus,
    /// More vCPUs than [`MAX_VCPUS`].
    #[error("{count} vCPUs given, at most {max} are supported")]
    TooManyVcpus {
        /// vCPUs given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An APIC id used twice.
    #[error(
        "APIC id {apic_id} is given to node {first_pxm} and to node {second_pxm}: every vCPU \
         needs its own APIC id"
    )]
    DuplicateApicId {
        /// The id.
        apic_id: u32,
        /// First node that has it.
        first_pxm: u32,
        /// Second node that has it.
        second_pxm: u32,
    },
    /// The broadcast APIC id.
    #[error("node {pxm}: APIC id {apic_id:#x} is the x2APIC broadcast id: use another id")]
    InvalidApicId {
        /// The node's proximity domain.
        pxm: u32,
        /// The id.
        apic_id: u32,
    },
    /// A matrix row of the wrong length.
    #[error(
        "{what}: row {row} has {len} entries but the matrix has {expected} rows: give a \
         square matrix, one row and one column per node"
    )]
    NonSquareMatrix {
        /// Which matrix.
        what: &'static str,
        /// The row.
        row: usize,
        /// Its length.
        len: usize,
        /// The number of rows.
        expected: usize,
    },
    /// A matrix whose size is not the number of nodes.
    #[error(
        "{what}: the matrix is {dim}x{dim} but there are {nodes} nodes: give one row per node"
    )]
    MatrixSize {
        /// Which matrix.
        what: &'static str,
        /// Its dimension.
        dim: usize,
        /// Number of nodes.
        nodes: usize,
    },
    /// A latency of zero (ACPI has no way to say "free", and it would divide by zero).
    #[error("{what}: latency from node {from} to node {to} is 0 ns: measure or give a real value")]
    ZeroLatency {
        /// Which matrix.
        what: &'static str,
        /// Initiator domain.
        from: usize,
        /// Target domain.
        to: usize,
    },
    /// A latency above [`MAX_LATENCY_NS`].
    #[error(
        "{what}: latency from node {from} to node {to} is {value} ns, above the {max} ns a guest \
         can be told: check the link between them"
    )]
    LatencyTooLarge {
        /// Which matrix.
        what: &'static str,
        /// Initiator domain.
        from: usize,
        /// Target domain.
        to: usize,
        /// The value.
        value: u32,
        /// The limit.
        max: u32,
    },
    /// A bandwidth of zero.
    #[error(
        "{what}: bandwidth from node {from} to node {to} is 0 MB/s: measure or give a real value"
    )]
    ZeroBandwidth {
        /// Which matrix.
        what: &'static str,
        /// Initiator domain.
        from: usize,
        /// Target domain.
        to: usize,
    },
    /// A bandwidth above [`MAX_BANDWIDTH_MBPS`].
    #[error("{what}: bandwidth from node {from} to node {to} is {value} MB/s, above {max} MB/s")]
    BandwidthTooLarge {
        /// Which matrix.
        what: &'static str,
        /// Initiator domain.
        from: usize,
        /// Target domain.
        to: usize,
        /// The value.
        value: u32,
        /// The limit.
        max: u32,
    },
    /// A SLIT override entry ACPI (and Linux) would refuse.
    #[error(
        "SLIT override: distance from node {from} to node {to} is {value}: a node's distance \
         to itself must be 10 and to any other node 11..=254"
    )]
    InvalidDistance {
        /// Row.
        from: usize,
        /// Column.
        to: usize,
        /// The value.
        value: u8,
    },
}

/// A guest-physical memory range `[base, base + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemRange {
    /// First guest-physical address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl MemRange {
    /// A range of `size` bytes at `base`.
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last byte (saturating; validated ranges never saturate).
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

impl fmt::Display for MemRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.base, self.end())
    }
}

/// One NUMA node as the guest sees it: an ACPI proximity domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDesc {
    /// ACPI proximity domain; the nodes of a topology use 0..n-1.
    pub proximity_domain: u32,
    /// Guest-physical memory this node holds (homes), in any order.
    pub ranges: Vec<MemRange>,
    /// APIC ids of the vCPUs that run on this node.
    pub vcpus: Vec<u32>,
}

/// A square matrix indexed `[from][to]` by proximity domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix<T> {
    dim: usize,
    cells: Vec<T>,
}

impl<T: Copy> Matrix<T> {
    /// Builds a matrix from its rows; `what` names it in errors.
    pub fn from_rows(what: &'static str, rows: Vec<Vec<T>>) -> Result<Self, TopologyError> {
        let dim = rows.len();
        let mut cells = Vec::with_capacity(dim * dim);
        for (row, values) in rows.into_iter().enumerate() {
            if values.len() != dim {
                return Err(TopologyError::NonSquareMatrix {
                    what,
                    row,
                    len: values.len(),
                    expected: dim,
                });
            }
            cells.extend(values);
        }
        Ok(Self { dim, cells })
    }

    /// Builds a `dim`×`dim` matrix from `f(from, to)`.
    pub fn from_fn(dim: usize, mut f: impl FnMut(usize, usize) -> T) -> Self {
        let mut cells = Vec::with_capacity(dim * dim);
        for from in 0..dim {
            for to in 0..dim {
                cells.push(f(from, to));
            }
        }
        Self { dim, cells }
    }

    /// Number of rows (and columns).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The entry from `from` to `to`.
    ///
    /// # Panics
    ///
    /// If either index is not below [`Matrix::dim`], like slice indexing; the matrices of a
    /// validated [`Topology`] have one row per proximity domain.
    pub fn get(&self, from: usize, to: usize) -> T {
        assert!(
            from < self.dim && to < self.dim,
            "matrix index out of range"
        );
        self.cells[from * self.dim + to]
    }

    /// Row `from` (the figures seen from node `from`).
    ///
    /// # Panics
    ///
    /// If `from` is not below [`Matrix::dim`].
    pub fn row(&self, from: usize) -> &[T] {
        &self.cells[from * self.dim..(from + 1) * self.dim]
    }
}

/// Inter-node figures measured at cluster formation (docs/acpi.md, "Measurements").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurements {
    /// Median time for a vCPU on node `from` to get a 4 KiB page held by node `to`, in ns. The
    /// diagonal is the node's local 4 KiB page copy.
    pub fetch_latency_ns: Matrix<u32>,
    /// Sustained 4 KiB page throughput from node `to`'s memory to node `from`, in MB/s
    /// (10^6 bytes per second). The diagonal is local copy bandwidth.
    pub bandwidth_mbps: Matrix<u32>,
}

/// Operator overrides; each replaces what would be derived from the measurements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// SLIT distances used as given (diagonal 10, elsewhere 11..=254).
    pub slit: Option<Matrix<u8>>,
    /// HMAT access latencies in ns (also the input of the SLIT formula when `slit` is unset).
    pub latency_ns: Option<Matrix<u32>>,
    /// HMAT access bandwidths in MB/s.
    pub bandwidth_mbps: Option<Matrix<u32>>,
}

/// A validated topology: everything the ACPI tables are a pure function of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<NodeDesc>,
    measurements: Measurements,
    overrides: Overrides,
}

/// One vCPU as the tables list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vcpu {
    /// ACPI processor UID (MADT, DSDT `_UID`): the vCPU's rank in ascending APIC-id order.
    pub uid: u32,
    /// (x2)APIC id.
    pub apic_id: u32,
    /// The node it runs on.
    pub proximity_domain: u32,
}

impl Topology {
    /// Validates and normalises (nodes sorted by domain, ranges by base, APIC ids ascending).
    pub fn new(
        mut nodes: Vec<NodeDesc>,
        measurements: Measurements,
        overrides: Overrides,
    ) -> Result<Self, TopologyError> {
        let count = nodes.len();
        if count == 0 {
            return Err(TopologyError::NoNodes);
        }
        if count > MAX_NODES {
            return Err(TopologyError::TooManyNodes {
                count,
                max: MAX_NODES,
            });
        }
        nodes.sort_by_key(|n| n.proximity_domain);
        for pair in nodes.windows(2) {
            if pair[0].proximity_domain == pair[1].proximity_domain {
                return Err(TopologyError::DuplicateProximityDomain(
                    pair[0].proximity_domain,
                ));
            }
        }
        for node in &nodes {
            if node.proximity_domain as usize >= count {
                return Err(TopologyError::SparseProximityDomain {
                    found: node.proximity_domain,
                    count,
                });
            }
        }
        let mut all_ranges = Vec::new();
        let mut apic_owner: BTreeMap<u32, u32> = BTreeMap::new();
        for node in &mut nodes {
            let pxm = node.proximity_domain;
            if node.ranges.is_empty() && node.vcpus.is_empty() {
                return Err(TopologyError::EmptyNode { pxm });
            }
            if node.ranges.len() > MAX_RANGES_PER_NODE {
                return Err(TopologyError::TooManyRanges {
                    pxm,
                    count: node.ranges.len(),
                    max: MAX_RANGES_PER_NODE,
                });
            }
            node.ranges.sort();
            for range in &node.ranges {
                validate_range(pxm, range)?;
                all_ranges.push((*range, pxm));
            }
            node.vcpus.sort_unstable();
            for &apic_id in &node.vcpus {
                if apic_id == APIC_BROADCAST {
                    return Err(TopologyError::InvalidApicId { pxm, apic_id });
                }
                if let Some(first_pxm) = apic_owner.insert(apic_id, pxm) {
                    return Err(TopologyError::DuplicateApicId {
                        apic_id,
                        first_pxm,
                        second_pxm: pxm,
                    });
                }
            }
        }
        if all_ranges.is_empty() {
            return Err(TopologyError::NoMemory);
        }
        if apic_owner.is_empty() {
            return Err(TopologyError::NoVcpus);
        }
        if apic_owner.len() > MAX_VCPUS {
            return Err(TopologyError::TooManyVcpus {
                count: apic_owner.len(),
                max: MAX_VCPUS,
            });
        }
        all_ranges.sort();
        for pair in all_ranges.windows(2) {
            let ((first, first_pxm), (second, second_pxm)) = (pair[0], pair[1]);
            if second.base < first.end() {
                return Err(TopologyError::OverlappingRanges {
                    first_pxm,
                    first,
                    second_pxm,
                    second,
                });
            }
        }
        validate_latency("fetch latency", &measurements.fetch_latency_ns, count)?;
        validate_bandwidth("bandwidth", &measurements.bandwidth_mbps, count)?;
        if let Some(m) = &overrides.latency_ns {
            validate_latency("latency override", m, count)?;
        }
        if let Some(m) = &overrides.bandwidth_mbps {
            validate_bandwidth("bandwidth override", m, count)?;
        }
        if let Some(m) = &overrides.slit {
            validate_size("SLIT override", m.dim(), count)?;
            for from in 0..count {
                for to in 0..count {
                    let value = m.get(from, to);
                    let ok = if from == to {
                        value == 10
                    } else {
                        (11..=254).contains(&value)
                    };
                    if !ok {
                        return Err(TopologyError::InvalidDistance { from, to, value });
                    }
                }
            }
        }
        Ok(Self {
            nodes,
            measurements,
            overrides,
        })
    }

    /// Nodes in proximity-domain order (node `i` has domain `i`).
    pub fn nodes(&self) -> &[NodeDesc] {
        &self.nodes
    }

    /// The measured figures.
    pub fn measurements(&self) -> &Measurements {
        &self.measurements
    }

    /// The operator's overrides.
    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    /// Every vCPU in ascending APIC-id order, with its processor UID and node.
    pub fn vcpus(&self) -> Vec<Vcpu> {
        let mut all: Vec<(u32, u32)> = self
            .nodes
            .iter()
            .flat_map(|n| n.vcpus.iter().map(move |&a| (a, n.proximity_domain)))
            .collect();
        all.sort_unstable();
        all.into_iter()
            .enumerate()
            .map(|(uid, (apic_id, proximity_domain))| Vcpu {
                // At most MAX_VCPUS entries, so the rank fits.
                uid: uid as u32,
                apic_id,
                proximity_domain,
            })
            .collect()
    }

    /// Every memory range with its node, in ascending address order.
    pub fn memory(&self) -> Vec<(MemRange, u32)> {
        let mut all: Vec<(MemRange, u32)> = self
            .nodes
            .iter()
            .flat_map(|n| n.ranges.iter().map(move |&r| (r, n.proximity_domain)))
            .collect();
        all.sort();
        all
    }

    /// Domains of the nodes with vCPUs (HMAT initiators), ascending.
    pub fn initiators(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|n| !n.vcpus.is_empty())
            .map(|n| n.proximity_domain)
            .collect()
    }

    /// Domains of the nodes with memory (HMAT targets), ascending.
    pub fn targets(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|n| !n.ranges.is_empty())
            .map(|n| n.proximity_domain)
            .collect()
    }
}

fn validate_range(pxm: u32, range: &MemRange) -> Result<(), TopologyError> {
    if range.size == 0 {
        return Err(TopologyError::EmptyRange {
            pxm,
            base: range.base,
        });
    }
    if range.base.checked_add(range.size).is_none() {
        return Err(TopologyError::RangeOverflow {
            pxm,
            base: range.base,
            size: range.size,
        });
    }
    if range.base % PAGE_SIZE != 0 || range.size % PAGE_SIZE != 0 {
        return Err(TopologyError::UnalignedRange { pxm, range: *range });
    }
    Ok(())
}

fn validate_size(what: &'static str, dim: usize, nodes: usize) -> Result<(), TopologyError> {
    if dim != nodes {
        return Err(TopologyError::MatrixSize { what, dim, nodes });
    }
    Ok(())
}

fn validate_latency(
    what: &'static str,
    m: &Matrix<u32>,
    nodes: usize,
) -> Result<(), TopologyError> {
    validate_size(what, m.dim(), nodes)?;
    for from in 0..nodes {
        for to in 0..nodes {
            let value = m.get(from, to);
            if value == 0 {
                return Err(TopologyError::ZeroLatency { what, from, to });
            }
            if value > MAX_LATENCY_NS {
                return Err(TopologyError::LatencyTooLarge {
                    what,
                    from,
                    to,
                    value,
                    max: MAX_LATENCY_NS,
                });
            }
        }
    }
    Ok(())
}

fn validate_bandwidth(
    what: &'static str,
    m: &Matrix<u32>,
    nodes: usize,
) -> Result<(), TopologyError> {
    validate_size(what, m.dim(), nodes)?;
    for from in 0..nodes {
        for to in 0..nodes {
            let value = m.get(from, to);
            if value == 0 {
                return Err(TopologyError::ZeroBandwidth { what, from, to });
            }
            if value > MAX_BANDWIDTH_MBPS {
                return Err(TopologyError::BandwidthTooLarge {
                    what,
                    from,
                    to,
                    value,
                    max: MAX_BANDWIDTH_MBPS,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn node(pxm: u32, ranges: &[(u64, u64)], vcpus: &[u32]) -> NodeDesc {
        NodeDesc {
            proximity_domain: pxm,
            ranges: ranges.iter().map(|&(b, s)| MemRange::new(b, s)).collect(),
            vcpus: vcpus.to_vec(),
        }
    }

    fn uniform(n: usize) -> Measurements {
        Measurements {
            fetch_latency_ns: Matrix::from_fn(n, |a, b| if a == b { 500 } else { 20_000 }),
            bandwidth_mbps: Matrix::from_fn(n, |a, b| if a == b { 10_000 } else { 1_000 }),
        }
    }

    fn build(nodes: Vec<NodeDesc>) -> Result<Topology, TopologyError> {
        let n = nodes.len();
        Topology::new(nodes, uniform(n), Overrides::default())
    }

    #[test]
    fn accepts_and_normalises_a_valid_layout() {
        let t = build(vec![
            node(1, &[(512 * M, 256 * M), (256 * M, 256 * M)], &[3, 1]),
            node(0, &[(0, 256 * M)], &[0, 2]),
        ])
        .unwrap();
        assert_eq!(t.nodes()[0].proximity_domain, 0);
        assert_eq!(t.nodes()[1].ranges[0].base, 256 * M);
        let vcpus = t.vcpus();
        let order: Vec<(u32, u32, u32)> = vcpus
            .iter()
            .map(|v| (v.uid, v.apic_id, v.proximity_domain))
            .collect();
        assert_eq!(order, vec![(0, 0, 0), (1, 1, 1), (2, 2, 0), (3, 3, 1)]);
        assert_eq!(t.initiators(), vec![0, 1]);
        assert_eq!(t.targets(), vec![0, 1]);
    }

    #[test]
    fn refuses_overlapping_ranges_across_nodes() {
        let err = build(vec![
            node(0, &[(0, 256 * M)], &[0]),
            node(1, &[(255 * M, 2 * M)], &[1]),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            TopologyError::OverlappingRanges {
                first_pxm: 0,
                first: MemRange::new(0, 256 * M),
                second_pxm: 1,
                second: MemRange::new(255 * M, 2 * M),
            }
        );
    }

    #[test]
    fn refuses_overlap_within_one_node_and_accepts_touching_ranges() {
        assert!(matches!(
            build(vec![node(0, &[(0, 8 * M), (4 * M, 8 * M)], &[0])]),
            Err(TopologyError::OverlappingRanges { .. })
        ));
        assert!(build(vec![node(0, &[(0, 8 * M), (8 * M, 8 * M)], &[0])]).is_ok());
    }

    #[test]
    fn refuses_duplicate_apic_ids() {
        let err = build(vec![node(0, &[(0, M)], &[0, 7]), node(1, &[(M, M)], &[7])]).unwrap_err();
        assert_eq!(
            err,
            TopologyError::DuplicateApicId {
                apic_id: 7,
                first_pxm: 0,
                second_pxm: 1
            }
        );
    }

    #[test]
    fn refuses_bad_ranges() {
        assert!(matches!(
            build(vec![node(0, &[(0, 0)], &[0])]),
            Err(TopologyError::EmptyRange { pxm: 0, base: 0 })
        ));
        assert!(matches!(
            build(vec![node(0, &[(0x1800, M)], &[0])]),
            Err(TopologyError::UnalignedRange { .. })
        ));
        assert!(matches!(
            build(vec![node(0, &[(u64::MAX - 4095, 8192)], &[0])]),
            Err(TopologyError::RangeOverflow { .. })
        ));
    }

    #[test]
    fn refuses_sparse_or_duplicate_domains_and_empty_nodes() {
        assert_eq!(
            build(vec![node(0, &[(0, M)], &[0]), node(2, &[(M, M)], &[1])]).unwrap_err(),
            TopologyError::SparseProximityDomain { found: 2, count: 2 }
        );
        assert_eq!(
            build(vec![node(0, &[(0, M)], &[0]), node(0, &[(M, M)], &[1])]).unwrap_err(),
            TopologyError::DuplicateProximityDomain(0)
        );
        assert_eq!(
            build(vec![node(0, &[(0, M)], &[0]), node(1, &[], &[])]).unwrap_err(),
            TopologyError::EmptyNode { pxm: 1 }
        );
        assert_eq!(build(vec![]).unwrap_err(), TopologyError::NoNodes);
        assert_eq!(
            build(vec![node(0, &[], &[0])]).unwrap_err(),
            TopologyError::NoMemory
        );
        assert_eq!(
            build(vec![node(0, &[(0, M)], &[])]).unwrap_err(),
            TopologyError::NoVcpus
        );
    }

    #[test]
    fn refuses_non_square_and_wrongly_sized_matrices() {
        let err = Matrix::from_rows("fetch latency", vec![vec![1u32, 2], vec![3]]).unwrap_err();
        assert_eq!(
            err,
            TopologyError::NonSquareMatrix {
                what: "fetch latency",
                row: 1,
                len: 1,
                expected: 2
            }
        );
        let err = Topology::new(
            vec![node(0, &[(0, M)], &[0]), node(1, &[(M, M)], &[1])],
            uniform(3),
            Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            TopologyError::MatrixSize {
                what: "fetch latency",
                dim: 3,
                nodes: 2
            }
        );
    }

    #[test]
    fn refuses_zero_and_huge_figures() {
        let nodes = vec![node(0, &[(0, M)], &[0]), node(1, &[(M, M)], &[1])];
        let mut m = uniform(2);
        m.fetch_latency_ns = Matrix::from_fn(2, |a, b| if (a, b) == (1, 0) { 0 } else { 9 });
        assert_eq!(
            Topology::new(nodes.clone(), m, Overrides::default()).unwrap_err(),
            TopologyError::ZeroLatency {
                what: "fetch latency",
                from: 1,
                to: 0
            }
        );
        let mut m = uniform(2);
        m.bandwidth_mbps = Matrix::from_fn(2, |a, _| if a == 0 { 0 } else { 9 });
        assert!(matches!(
            Topology::new(nodes.clone(), m, Overrides::default()),
            Err(TopologyError::ZeroBandwidth { from: 0, to: 0, .. })
        ));
        let overrides = Overrides {
            latency_ns: Some(Matrix::from_fn(2, |_, _| MAX_LATENCY_NS + 1)),
            ..Overrides::default()
        };
        assert!(matches!(
            Topology::new(nodes, uniform(2), overrides),
            Err(TopologyError::LatencyTooLarge {
                what: "latency override",
                ..
            })
        ));
    }

    #[test]
    fn refuses_slit_overrides_that_linux_would_reject() {
        let nodes = vec![node(0, &[(0, M)], &[0]), node(1, &[(M, M)], &[1])];
        for (bad, at) in [
            (vec![vec![10, 10], vec![20, 10]], (0, 1)),
            (vec![vec![11, 20], vec![20, 10]], (0, 0)),
            (vec![vec![10, 255], vec![20, 10]], (0, 1)),
        ] {
            let overrides = Overrides {
                slit: Some(Matrix::from_rows("SLIT override", bad).unwrap()),
                ..Overrides::default()
            };
            match Topology::new(nodes.clone(), uniform(2), overrides) {
                Err(TopologyError::InvalidDistance { from, to, .. }) => {
                    assert_eq!((from, to), at)
                }
                other => panic!("expected InvalidDistance, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_the_broadcast_apic_id() {
        assert!(matches!(
            build(vec![node(0, &[(0, M)], &[u32::MAX])]),
            Err(TopologyError::InvalidApicId { .. })
        ));
    }
}
