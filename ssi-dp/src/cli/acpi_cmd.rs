//! `ssi-dp acpi --layout ... --latency-ns ... --bandwidth-mbps ... --out DIR`: the ACPI tables
//! of a topology described on the command line (syntax in docs/acpi.md), one file per table.

use std::path::PathBuf;

use acpi::{dump, parse_topology, SpecArgs};
use clap::Args;

use super::exit;

/// `ssi-dp acpi` options.
#[derive(Debug, Args)]
pub struct AcpiArgs {
    /// Nodes, memory ranges and APIC ids: "0:mem=0-256M:cpus=0;1:mem=256M-512M:cpus=1".
    #[arg(long)]
    layout: String,
    /// Measured 4 KiB fetch latency in ns, one row per node: "400,30000;31000,420".
    #[arg(long)]
    latency_ns: String,
    /// Measured bandwidth in MB/s (link streams; local copies on the diagonal), one row per
    /// node: "20000,1100;1050,19000".
    #[arg(long)]
    bandwidth_mbps: String,
    /// Override of the SLIT distances.
    #[arg(long)]
    slit: Option<String>,
    /// Override of the HMAT latencies (ns).
    #[arg(long)]
    hmat_latency_ns: Option<String>,
    /// Override of the HMAT bandwidths (MB/s).
    #[arg(long)]
    hmat_bandwidth_mbps: Option<String>,
    /// Directory to write the tables into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Writes the tables; returns the exit code.
pub fn run(a: AcpiArgs) -> i32 {
    let spec = SpecArgs {
        layout: &a.layout,
        latency_ns: Some(&a.latency_ns),
        bandwidth_mbps: Some(&a.bandwidth_mbps),
        slit: a.slit.as_deref(),
        hmat_latency_ns: a.hmat_latency_ns.as_deref(),
        hmat_bandwidth_mbps: a.hmat_bandwidth_mbps.as_deref(),
    };
    let topology = match parse_topology(&spec) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ssi-dp acpi: error: {e}");
            return exit::USAGE;
        }
    };
    match dump(&topology, &a.out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            0
        }
        Err(e) => {
            eprintln!("ssi-dp acpi: error: {e}");
            1
        }
    }
}
