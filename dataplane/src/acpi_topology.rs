//! The ACPI view of a running cluster: its nodes as proximity domains (in node-id order),
//! each with the guest-physical memory it homes and the vCPUs that run on it, and the
//! inter-node figures measured at formation — the input `control::acpi` turns into SRAT,
//! SLIT and HMAT.

use control::acpi::{Matrix, Measurements, MemRange, NodeDesc, Overrides, Topology};

use crate::config::{ClusterSpec, PAGE_SIZE};
use crate::measure::Figures;

/// Builds the topology of `cluster` for a guest whose RAM is `[0, ram_end)`, with
/// `vcpus_of(node id)` the vCPU ids (= APIC ids) that run on each node. Nodes that hold
/// neither guest memory nor vCPUs are left out (ACPI has nothing to say about them).
pub fn topology(
    cluster: &ClusterSpec,
    figures: &Figures,
    ram_end: u64,
    vcpus_of: impl Fn(u16) -> Vec<u32>,
) -> Result<Topology, String> {
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
    let pick = |m: &Vec<Vec<u32>>| -> Vec<Vec<u32>> {
        ranks
            .iter()
            .map(|&i| ranks.iter().map(|&j| m[i][j]).collect())
            .collect()
    };
    let measurements = Measurements {
        fetch_latency_ns: Matrix::from_rows("fetch latency", pick(&figures.latency_ns))
            .map_err(|e| e.to_string())?,
        bandwidth_mbps: Matrix::from_rows("bandwidth", pick(&figures.bandwidth_mbps))
            .map_err(|e| e.to_string())?,
    };
    Topology::new(nodes, measurements, Overrides::default()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeSpec;

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
        let slit = control::acpi::tables(&t).slit;
        // Two domains; distances from the measured latencies (log scale, docs/acpi.md).
        let want = control::acpi::distance(400, 30_000);
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
                control::acpi::distance(420, 31_000),
                10
            ]
        );
    }
}
