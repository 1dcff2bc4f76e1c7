//! The text form of a topology for the command line (`ssi-dp acpi --layout ...`); the grammar is
//! in docs/acpi.md "Layout syntax". Parsing never panics: every mistake is a [`SpecError`] that
//! quotes the offending text.

use super::topology::{
    Matrix, Measurements, MemRange, NodeDesc, Overrides, Topology, TopologyError,
};

/// Why a layout or matrix text could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The layout string is empty.
    #[error("the layout is empty: give nodes like \"0:mem=0-256M:cpus=0;1:mem=256M-512M:cpus=1\"")]
    EmptyLayout,
    /// A node without the leading `PXM:`.
    #[error("node {node:?}: start it with its proximity domain, like \"0:mem=0-256M:cpus=0\"")]
    MissingDomain {
        /// The node text.
        node: String,
    },
    /// A field other than `mem=` or `cpus=`.
    #[error("node {node:?}: unknown field {field:?}; fields are mem=RANGES and cpus=LIST")]
    UnknownField {
        /// The node text.
        node: String,
        /// The field.
        field: String,
    },
    /// A field given twice.
    #[error("node {node:?}: field {field:?} is given twice; list all values in one field")]
    RepeatedField {
        /// The node text.
        node: String,
        /// The field name.
        field: &'static str,
    },
    /// A number that does not parse.
    #[error(
        "{what}: {text:?} is not a number: use decimal or 0x-hex, optionally with a K/M/G/T \
         (binary) suffix for sizes"
    )]
    BadNumber {
        /// What was being read.
        what: &'static str,
        /// The text.
        text: String,
    },
    /// A number too large for its field.
    #[error("{what}: {text:?} is too large")]
    NumberTooLarge {
        /// What was being read.
        what: &'static str,
        /// The text.
        text: String,
    },
    /// A memory range without `-` or `+`.
    #[error("memory range {text:?}: write START-END (end exclusive) or START+SIZE")]
    BadRange {
        /// The text.
        text: String,
    },
    /// A memory range whose end is not above its start.
    #[error("memory range {text:?}: the end must be above the start")]
    EmptyRange {
        /// The text.
        text: String,
    },
    /// A CPU list item like `5-3`.
    #[error("cpu list item {text:?}: write N or N-M with N <= M")]
    BadCpuRange {
        /// The text.
        text: String,
    },
    /// A CPU range too long to be meant.
    #[error("cpu list item {text:?} names more than {max} vCPUs")]
    TooManyCpus {
        /// The text.
        text: String,
        /// The limit.
        max: usize,
    },
    /// A required matrix is missing.
    #[error(
        "--{flag} is required: give one row per node, rows separated by ';' and entries by ',' \
         (the node's own figure on the diagonal)"
    )]
    MissingMatrix {
        /// The flag name.
        flag: &'static str,
    },
    /// The parsed text describes an invalid topology.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// The command-line texts a topology is built from (flags of `ssi-dp acpi`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecArgs<'a> {
    /// `--layout`: nodes, their memory ranges and APIC ids.
    pub layout: &'a str,
    /// `--latency-ns`: measured 4 KiB fetch latency matrix (required).
    pub latency_ns: Option<&'a str>,
    /// `--bandwidth-mbps`: measured bandwidth matrix (required).
    pub bandwidth_mbps: Option<&'a str>,
    /// `--slit`: operator override of the SLIT distances.
    pub slit: Option<&'a str>,
    /// `--hmat-latency-ns`: operator override of the HMAT latencies.
    pub hmat_latency_ns: Option<&'a str>,
    /// `--hmat-bandwidth-mbps`: operator override of the HMAT bandwidths.
    pub hmat_bandwidth_mbps: Option<&'a str>,
}

/// Most vCPUs one `N-M` item may name (the topology limit).
const MAX_CPU_ITEM: usize = super::topology::MAX_VCPUS;

/// Parses and validates a whole topology.
pub fn parse_topology(args: &SpecArgs<'_>) -> Result<Topology, SpecError> {
    let nodes = parse_layout(args.layout)?;
    let latency = args
        .latency_ns
        .ok_or(SpecError::MissingMatrix { flag: "latency-ns" })?;
    let bandwidth = args.bandwidth_mbps.ok_or(SpecError::MissingMatrix {
        flag: "bandwidth-mbps",
    })?;
    let measurements = Measurements {
        fetch_latency_ns: parse_matrix("--latency-ns", latency)?,
        bandwidth_mbps: parse_matrix("--bandwidth-mbps", bandwidth)?,
    };
    let overrides = Overrides {
        slit: args.slit.map(|s| parse_matrix("--slit", s)).transpose()?,
        latency_ns: args
            .hmat_latency_ns
            .map(|s| parse_matrix("--hmat-latency-ns", s))
            .transpose()?,
        bandwidth_mbps: args
            .hmat_bandwidth_mbps
            .map(|s| parse_matrix("--hmat-bandwidth-mbps", s))
            .transpose()?,
    };
    Ok(Topology::new(nodes, measurements, overrides)?)
}

/// Parses `PXM:field:field;PXM:...` into nodes (not yet validated as a whole).
pub fn parse_layout(text: &str) -> Result<Vec<NodeDesc>, SpecError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SpecError::EmptyLayout);
    }
    text.split(';')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(parse_node)
        .collect()
}

fn parse_node(node: &str) -> Result<NodeDesc, SpecError> {
    let mut parts = node.split(':');
    let pxm_text = parts.next().unwrap_or_default().trim();
    if pxm_text.is_empty() || pxm_text.contains('=') {
        return Err(SpecError::MissingDomain {
            node: node.to_owned(),
        });
    }
    let proximity_domain = parse_u32("proximity domain", pxm_text)?;
    let (mut ranges, mut vcpus) = (None, None);
    for field in parts {
        let field = field.trim();
        if let Some(list) = field.strip_prefix("mem=") {
            if ranges.is_some() {
                return Err(SpecError::RepeatedField {
                    node: node.to_owned(),
                    field: "mem",
                });
            }
            ranges = Some(
                list.split(',')
                    .map(parse_range)
                    .collect::<Result<Vec<_>, _>>()?,
            );
        } else if let Some(list) = field.strip_prefix("cpus=") {
            if vcpus.is_some() {
                return Err(SpecError::RepeatedField {
                    node: node.to_owned(),
                    field: "cpus",
                });
            }
            vcpus = Some(parse_cpu_list(list)?);
        } else {
            return Err(SpecError::UnknownField {
                node: node.to_owned(),
                field: field.to_owned(),
            });
        }
    }
    Ok(NodeDesc {
        proximity_domain,
        ranges: ranges.unwrap_or_default(),
        vcpus: vcpus.unwrap_or_default(),
    })
}

/// Parses `START-END` (end exclusive) or `START+SIZE`.
fn parse_range(text: &str) -> Result<MemRange, SpecError> {
    let text = text.trim();
    let bad = || SpecError::BadRange {
        text: text.to_owned(),
    };
    if let Some((start, size)) = text.split_once('+') {
        let base = parse_size("memory range start", start)?;
        let size = parse_size("memory range size", size)?;
        if size == 0 {
            return Err(SpecError::EmptyRange {
                text: text.to_owned(),
            });
        }
        return Ok(MemRange::new(base, size));
    }
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let base = parse_size("memory range start", start)?;
    let end = parse_size("memory range end", end)?;
    if end <= base {
        return Err(SpecError::EmptyRange {
            text: text.to_owned(),
        });
    }
    Ok(MemRange::new(base, end - base))
}

/// Parses a cpulist of APIC ids: `0-3,8,10-11` (ranges inclusive, as taskset writes them).
fn parse_cpu_list(text: &str) -> Result<Vec<u32>, SpecError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => {
                let a = parse_u32("APIC id", a)?;
                let b = parse_u32("APIC id", b)?;
                if b < a {
                    return Err(SpecError::BadCpuRange {
                        text: item.to_owned(),
                    });
                }
                if (b - a) as usize >= MAX_CPU_ITEM {
                    return Err(SpecError::TooManyCpus {
                        text: item.to_owned(),
                        max: MAX_CPU_ITEM,
                    });
                }
                out.extend(a..=b);
            }
            None => out.push(parse_u32("APIC id", item)?),
        }
    }
    Ok(out)
}

/// Parses a square-or-not matrix `a,b;c,d` (checked square by [`Matrix::from_rows`]).
pub fn parse_matrix<T>(what: &'static str, text: &str) -> Result<Matrix<T>, SpecError>
where
    T: Copy + TryFrom<u64>,
{
    let rows = text
        .split(';')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|row| {
            row.split(',')
                .map(|v| {
                    let n = parse_number(what, v)?;
                    T::try_from(n).map_err(|_| SpecError::NumberTooLarge {
                        what,
                        text: v.trim().to_owned(),
                    })
                })
                .collect::<Result<Vec<T>, SpecError>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Matrix::from_rows(what, rows)?)
}

fn parse_u32(what: &'static str, text: &str) -> Result<u32, SpecError> {
    let n = parse_number(what, text)?;
    u32::try_from(n).map_err(|_| SpecError::NumberTooLarge {
        what,
        text: text.trim().to_owned(),
    })
}

/// Parses a plain number: decimal or `0x` hex.
fn parse_number(what: &'static str, text: &str) -> Result<u64, SpecError> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse::<u64>(),
    };
    parsed.map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => SpecError::NumberTooLarge {
            what,
            text: t.to_owned(),
        },
        _ => SpecError::BadNumber {
            what,
            text: t.to_owned(),
        },
    })
}

/// Parses a size or address: a number with an optional binary suffix K, M, G or T
/// (`256M` = 256 MiB, `0x1000`, `4G`).
pub fn parse_size(what: &'static str, text: &str) -> Result<u64, SpecError> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if !t.starts_with("0x") && !t.starts_with("0X") => {
            match c.to_ascii_uppercase() {
                'K' => (&t[..i], 10),
                'M' => (&t[..i], 20),
                'G' => (&t[..i], 30),
                'T' => (&t[..i], 40),
                _ => (t, 0),
            }
        }
        _ => (t, 0),
    };
    let n = parse_number(what, digits)?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SpecError::NumberTooLarge {
            what,
            text: t.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn parses_nodes_ranges_and_cpu_lists() {
        let nodes = parse_layout(
            "0:mem=0-256M:cpus=0-1; 1:cpus=2,5:mem=256M+256M,4G-0x140000000;2:mem=0x200000000+1G",
        )
        .unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].proximity_domain, 0);
        assert_eq!(nodes[0].ranges, vec![MemRange::new(0, 256 * M)]);
        assert_eq!(nodes[0].vcpus, vec![0, 1]);
        assert_eq!(
            nodes[1].ranges,
            vec![
                MemRange::new(256 * M, 256 * M),
                MemRange::new(4 << 30, 1 << 30)
            ]
        );
        assert_eq!(nodes[1].vcpus, vec![2, 5]);
        assert_eq!(nodes[2].ranges, vec![MemRange::new(8 << 30, 1 << 30)]);
        assert!(nodes[2].vcpus.is_empty());
    }

    #[test]
    fn sizes_take_binary_suffixes_and_hex() {
        assert_eq!(parse_size("s", "4K").unwrap(), 4096);
        assert_eq!(parse_size("s", "3m").unwrap(), 3 * M);
        assert_eq!(parse_size("s", "2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("s", "1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("s", "0x1000").unwrap(), 4096);
        assert_eq!(parse_size("s", " 17 ").unwrap(), 17);
        assert!(matches!(
            parse_size("s", "16777216T"),
            Err(SpecError::NumberTooLarge { .. })
        ));
        assert!(matches!(
            parse_size("s", "12Q"),
            Err(SpecError::BadNumber { .. })
        ));
        assert!(matches!(
            parse_size("s", ""),
            Err(SpecError::BadNumber { .. })
        ));
    }

    #[test]
    fn rejects_malformed_layouts() {
        assert_eq!(parse_layout("  ").unwrap_err(), SpecError::EmptyLayout);
        assert!(matches!(
            parse_layout("mem=0-1M:cpus=0"),
            Err(SpecError::MissingDomain { .. })
        ));
        assert!(matches!(
            parse_layout("0:ram=0-1M"),
            Err(SpecError::UnknownField { .. })
        ));
        assert!(matches!(
            parse_layout("0:cpus=0:cpus=1"),
            Err(SpecError::RepeatedField { field: "cpus", .. })
        ));
        assert!(matches!(
            parse_layout("0:mem=256M-0"),
            Err(SpecError::EmptyRange { .. })
        ));
        assert!(matches!(
            parse_layout("0:mem=256M"),
            Err(SpecError::BadRange { .. })
        ));
        assert!(matches!(
            parse_layout("0:cpus=3-1"),
            Err(SpecError::BadCpuRange { .. })
        ));
        assert!(matches!(
            parse_layout("0:cpus=0-4294967294"),
            Err(SpecError::TooManyCpus { .. })
        ));
        assert!(matches!(
            parse_layout("0:cpus=4294967296"),
            Err(SpecError::NumberTooLarge { .. })
        ));
        assert!(matches!(
            parse_layout("x:cpus=0"),
            Err(SpecError::BadNumber { .. })
        ));
    }

    #[test]
    fn matrices_must_be_square_and_fit_their_type() {
        let m: Matrix<u32> = parse_matrix("m", "1,2; 3,4").unwrap();
        assert_eq!((m.get(0, 1), m.get(1, 0)), (2, 3));
        assert!(matches!(
            parse_matrix::<u32>("m", "1,2;3"),
            Err(SpecError::Topology(TopologyError::NonSquareMatrix {
                row: 1,
                ..
            }))
        ));
        assert!(matches!(
            parse_matrix::<u8>("m", "10,256;20,10"),
            Err(SpecError::NumberTooLarge { .. })
        ));
        assert!(matches!(
            parse_matrix::<u32>("m", "1,x;2,3"),
            Err(SpecError::BadNumber { .. })
        ));
    }

    #[test]
    fn whole_topology_requires_measurements_and_validates() {
        let layout = "0:mem=0-256M:cpus=0;1:mem=256M-512M:cpus=1";
        let err = parse_topology(&SpecArgs {
            layout,
            ..SpecArgs::default()
        })
        .unwrap_err();
        assert_eq!(err, SpecError::MissingMatrix { flag: "latency-ns" });
        let args = SpecArgs {
            layout,
            latency_ns: Some("400,30000;30000,400"),
            bandwidth_mbps: Some("9000,1000;1000,9000"),
            slit: Some("10,40;40,10"),
            ..SpecArgs::default()
        };
        let t = parse_topology(&args).unwrap();
        assert_eq!(t.nodes().len(), 2);
        assert_eq!(t.overrides().slit.as_ref().unwrap().get(0, 1), 40);
        let overlapping = SpecArgs {
            layout: "0:mem=0-256M:cpus=0;1:mem=128M-512M:cpus=1",
            ..args
        };
        assert!(matches!(
            parse_topology(&overlapping),
            Err(SpecError::Topology(TopologyError::OverlappingRanges { .. }))
        ));
    }
}
