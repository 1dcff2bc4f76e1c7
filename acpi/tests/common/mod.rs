//! Topologies shared by the golden, iasl and Linux-under-QEMU tests, written in the CLI's text
//! form so the parser is exercised too.

#![allow(dead_code)] // each test binary uses a different subset

pub mod guest;

use acpi::{parse_topology, SpecArgs, Topology};

/// One test topology.
pub struct Case {
    /// Directory name under tests/golden/.
    pub name: &'static str,
    /// The CLI texts.
    pub args: SpecArgs<'static>,
    /// Guest RAM for QEMU (MiB), when the case can boot under QEMU (RAM at 0..size, APIC ids
    /// 0..n-1 as QEMU assigns them).
    pub qemu_mem_mib: Option<u64>,
}

impl Case {
    /// The validated topology.
    pub fn topology(&self) -> Topology {
        parse_topology(&self.args).unwrap_or_else(|e| panic!("case {}: {e}", self.name))
    }
}

/// One node: the degenerate NUMA machine.
pub const ONE_NODE: Case = Case {
    name: "one-node",
    args: SpecArgs {
        layout: "0:mem=0-256M:cpus=0",
        latency_ns: Some("400"),
        bandwidth_mbps: Some("20000"),
        slit: None,
        hmat_latency_ns: None,
        hmat_bandwidth_mbps: None,
    },
    qemu_mem_mib: Some(256),
};

/// Two nodes, one vCPU each, figures as a loopback TCP pair might measure them.
pub const TWO_NODES: Case = Case {
    name: "two-nodes",
    args: SpecArgs {
        layout: "0:mem=0-256M:cpus=0;1:mem=256M-512M:cpus=1",
        latency_ns: Some("400,30000;32000,450"),
        bandwidth_mbps: Some("20000,1100;1000,18000"),
        slit: None,
        hmat_latency_ns: None,
        hmat_bandwidth_mbps: None,
    },
    qemu_mem_mib: Some(512),
};

/// Four nodes with asymmetric distances; node 3 holds memory but no vCPU, so the HMAT matrix is
/// 3 initiators × 4 targets (non-square) and Linux must pick node 3's best initiator from the
/// off-diagonal column (node 1: lowest latency and highest bandwidth).
pub const FOUR_NODES_ASYMMETRIC: Case = Case {
    name: "four-nodes-asymmetric",
    args: SpecArgs {
        layout: "0:mem=0-128M:cpus=0;1:mem=128M-256M:cpus=1;2:mem=256M-384M:cpus=2;\
                 3:mem=384M-512M",
        latency_ns: Some(
            "400,25000,40000,60000;\
             27000,420,30000,20000;\
             45000,33000,410,50000;\
             61000,21000,52000,430",
        ),
        bandwidth_mbps: Some(
            "20000,1500,900,700;\
             1400,19000,1200,1800;\
             850,1100,19500,800;\
             650,1700,750,18500",
        ),
        slit: None,
        hmat_latency_ns: None,
        hmat_bandwidth_mbps: None,
    },
    qemu_mem_mib: Some(512),
};

/// Two nodes split around a 2–4 GiB PCI hole, x2APIC ids (≥ 255) on node 1, and operator
/// overrides of SLIT and HMAT latency. Golden and iasl only (QEMU would number APICs 0..n-1).
pub const PCI_HOLE_X2APIC_OVERRIDES: Case = Case {
    name: "pci-hole-x2apic-overrides",
    args: SpecArgs {
        layout: "0:mem=0-2G,4G-6G:cpus=0-1;1:mem=6G+4G:cpus=256,257",
        latency_ns: Some("350,70000;71000,360"),
        bandwidth_mbps: Some("25000,900;950,24000"),
        slit: Some("10,40;45,10"),
        hmat_latency_ns: Some("350,80000;81000,360"),
        hmat_bandwidth_mbps: None,
    },
    qemu_mem_mib: None,
};

/// Every case.
pub const ALL: [&Case; 4] = [
    &ONE_NODE,
    &TWO_NODES,
    &FOUR_NODES_ASYMMETRIC,
    &PCI_HOLE_X2APIC_OVERRIDES,
];
