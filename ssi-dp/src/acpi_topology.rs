//! The ACPI view of a running cluster: its nodes as proximity domains (in node-id order),
//! each with the guest-physical memory it homes and the vCPUs that run on it, and the
//! inter-node figures measured at formation — the input `acpi` turns into SRAT,
//! SLIT and HMAT.

use acpi::{
    Matrix, Measurements, MemRange, NodeDesc, Overrides, Topology, MAX_BANDWIDTH_MBPS,
    MAX_LATENCY_NS,
};

use engine::config::{ClusterSpec, PAGE_SIZE};
use engine::measure::Figures;

/// Why the ACPI view of the cluster could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AcpiTopologyError {
    /// The cluster has no formation measurements to derive distances from.
    #[error(
        "no inter-node measurements: the cluster was formed without them (address space too \
         small for a host area)"
    )]
    NoMeasurements,
    /// `acpi` refused the described topology.
    #[error(transparent)]
    Tables(#[from] acpi::TopologyError),
}

/// Builds the topology of `cluster` for a guest whose RAM is `[0, ram_end)`, with
/// `vcpus_of(node id)` the vCPU ids (= APIC ids) that run on each node. Nodes that hold
/// neither guest memory nor vCPUs are left out (ACPI has nothing to say about them).
/// Measured figures beyond what the tables can state (a latency above
/// [`MAX_LATENCY_NS`] on an overloaded or emulated host, say) are clamped to the limit with
/// a warning: they still tell the guest "far".
pub fn topology(
    cluster: &ClusterSpec,
    figures: &Figures,
    ram_end: u64,
    vcpus_of: impl Fn(u16) -> Vec<u32>,
) -> Result<Topology, AcpiTopologyError> {
    let mut nodes = Vec::new();
    let mut ranks = Vec::new();
    for (rank, (id, first, count)) in cluster.ranges().into_iter().enumerate() {
        let base = first * PAGE_SIZE;
        let end = ((first + count) * PAGE_SIZE).min(ram_end);
        let ranges = if end > base {
            vec![MemRange::new(base, end - base)]
        } else {
            Vec::new()
        };
        let vcpus = vcpus_of(id);
        if ranges.is_empty() && vcpus.is_empty() {
            continue;
        }
        nodes.push(NodeDesc {
            proximity_domain: nodes.len() as u32,
            ranges,
            vcpus,
        });
        ranks.push(rank);
    }
    let pick = |what: &str, m: &Vec<Vec<u32>>, max: u32| -> Vec<Vec<u32>> {
        ranks
            .iter()
            .map(|&i| {
                ranks
                    .iter()
                    .map(|&j| {
                        let v = m[i][j];
                        if v > max {
                            tracing::warn!(
                                "measured {what} from node rank {i} to rank {j} is {v}, above the \
                                 {max} ACPI can state; the guest is told {max}"
                            );
                        }
                        v.clamp(1, max)
                    })
                    .collect()
            })
            .collect()
    };
    let measurements = Measurements {
        fetch_latency_ns: Matrix::from_rows(
            "fetch latency",
            pick("fetch latency (ns)", &figures.latency_ns, MAX_LATENCY_NS),
        )?,
        bandwidth_mbps: Matrix::from_rows(
            "bandwidth",
            pick(
                "bandwidth (MB/s)",
                &figures.bandwidth_mbps,
                MAX_BANDWIDTH_MBPS,
            ),
        )?,
    };
    Ok(Topology::new(nodes, measurements, Overrides::default())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::config::NodeSpec;

    #[test]
    fn domains_follow_node_order_and_skip_empty_nodes() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let c = ClusterSpec::new(
            NodeSpec {
                id: 0,
                addr,
                memory: 8 << 20,
            },
            vec![
                NodeSpec {
                    id: 1,
                    addr,
                    memory: 0,
                },
                NodeSpec {
                    id: 2,
                    addr,
                    memory: 8 << 20,
                },
            ],
        )
        .unwrap();
        let f = Figures {
            nodes: vec![0, 1, 2],
            latency_ns: vec![vec![400, 9, 30_000], vec![9, 9, 9], vec![31_000, 9, 420]],
            bandwidth_mbps: vec![vec![20_000, 9, 900], vec![9, 9, 9], vec![950, 9, 19_000]],
        };
        // Guest RAM ends 2 MiB below the top; node 1 has no memory and no vCPU.
        let t = topology(&c, &f, 14 << 20, |id| {
            if id == 1 {
                vec![]
            } else {
                vec![u32::from(id)]
            }
        })
        .unwrap();
        let slit = acpi::tables(&t).slit;
        // Two domains; distances from the measured latencies (log scale, docs/acpi.md).
        let want = acpi::distance(400, 30_000);
        assert_eq!(
            &slit[36..36 + 8 + 4],
            &[
                2,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                10,
                want,
                acpi::distance(420, 31_000),
                10
            ]
        );
    }

    #[test]
    fn figures_beyond_what_acpi_can_state_are_clamped() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let node = |id, memory| NodeSpec { id, addr, memory };
        let c = ClusterSpec::new(node(0, 8 << 20), vec![node(1, 8 << 20)]).unwrap();
        // Seen in the lab: a 6.5 ms fetch under QEMU TCG, and a 0 MB/s bandwidth must not
        // reach the tables either.
        let f = Figures {
            nodes: vec![0, 1],
            latency_ns: vec![vec![2_000, 6_560_249], vec![7_242_178, 2_000]],
            bandwidth_mbps: vec![vec![600, 0], vec![1, 600]],
        };
        let t = topology(&c, &f, 14 << 20, |id| vec![u32::from(id)])
            .expect("clamped figures make valid tables");
        let slit = acpi::tables(&t).slit;
        assert_eq!(slit[45], acpi::distance(2_000, MAX_LATENCY_NS));
    }
}
