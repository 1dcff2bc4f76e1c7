//! ACPI tables that show the guest the cluster as a NUMA machine: RSDP, XSDT, FADT, DSDT, MADT,
//! SRAT, SLIT and HMAT, each a pure function of a [`Topology`] (layout plus measured inter-node
//! figures plus overrides).
//!
//! This crate owns the table bytes and the text forms (`--layout`, `--latency-ns`, ...) they are
//! parsed from. It is pure computation: no I/O except [`dump`] (which writes the tables to a
//! directory for inspection), no threads, no clocks. It may depend only on `thiserror` and
//! rust-vmm's `acpi_tables`; the VMM (which places the image in guest memory) and the node
//! binary (which measures the figures) depend on it, so neither links the control plane's TLS.
//! See docs/acpi.md for what each table says, the formula from measurements to SLIT/HMAT
//! values, and how a VMM places the tables.
//!
//! ```
//! use acpi::{parse_topology, tables, Placement, SpecArgs};
//!
//! let topology = parse_topology(&SpecArgs {
//!     layout: "0:mem=0-256M:cpus=0;1:mem=256M-512M:cpus=1",
//!     latency_ns: Some("400,30000;31000,420"),
//!     bandwidth_mbps: Some("20000,1100;1050,19000"),
//!     ..SpecArgs::default()
//! })?;
//! let image = tables(&topology).image(Placement::BIOS_AREA)?;
//! assert_eq!(image.table(b"SLIT").unwrap()[44..], [10, 72, 72, 10]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod dsdt;
mod dump;
mod fadt;
mod figures;
mod hmat;
mod image;
mod madt;
mod platform;
mod sdt;
mod slit;
mod spec;
mod srat;
mod topology;

pub use dump::{dump, dump_with, DumpError, FILES};
pub use figures::{distance, figures, slit_from_latency, Figures, LOCAL_DISTANCE};
pub use hmat::{encode_bandwidth, encode_latency, Encoded};
pub use image::{AcpiImage, PlaceError, Placement, TableLocation, BIOS_AREA_START, RSDP_LEN};
pub use platform::{
    IoApic, Platform, PowerRegisters, SerialPort, IAPC_NO_CMOS_RTC, IAPC_NO_VGA, POWER_REGISTERS,
};
pub use sdt::{checksum, sums_to_zero, OemIds};
pub use spec::{parse_layout, parse_matrix, parse_size, parse_topology, SpecArgs, SpecError};
pub use topology::{
    Matrix, Measurements, MemRange, NodeDesc, Overrides, Topology, TopologyError, Vcpu,
    MAX_BANDWIDTH_MBPS, MAX_LATENCY_NS, MAX_NODES, MAX_RANGES_PER_NODE, MAX_VCPUS, PAGE_SIZE,
};

/// The address-independent tables of a topology. The FADT, XSDT and RSDP carry addresses and
/// are produced by [`AcpiTables::image`] for a [`Placement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// DSDT: processor devices with `_UID` and `_PXM`, and COM1.
    pub dsdt: Vec<u8>,
    /// MADT (signature `APIC`): local APIC / x2APIC per vCPU, I/O APIC, overrides, NMI.
    pub madt: Vec<u8>,
    /// SRAT: processor and memory affinity.
    pub srat: Vec<u8>,
    /// SLIT: node distances.
    pub slit: Vec<u8>,
    /// HMAT: memory proximity attributes, latency and bandwidth matrices.
    pub hmat: Vec<u8>,
    /// The platform facts the FADT and MADT were built for.
    pub platform: Platform,
}

/// The tables of `topology` on the default [`Platform`].
pub fn tables(topology: &Topology) -> AcpiTables {
    tables_for(topology, &Platform::default())
}

/// The tables of `topology` on `platform`.
pub fn tables_for(topology: &Topology, platform: &Platform) -> AcpiTables {
    let figures = figures(topology);
    AcpiTables {
        dsdt: dsdt::build(topology, platform),
        madt: madt::build(topology, platform, &platform.ids),
        srat: srat::build(topology, &platform.ids),
        slit: slit::build(&figures.slit, &platform.ids),
        hmat: hmat::build(topology, &figures, &platform.ids),
        platform: *platform,
    }
}
