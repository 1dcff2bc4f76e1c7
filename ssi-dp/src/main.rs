//! `ssi-dp`: the node daemon and its tools (see `ssi-dp --help`).
//!
//! This crate is the binary: argument parsing and the subcommands (`cli`), the supervisor and
//! `up`, the demo and the built-in workloads (`workload`), and the glue that joins the libraries
//! for one node process — the engine to the VMM (`guest`, `guest_linux`, `guest_link`), to the
//! ACPI tables (`acpi_topology`) and to the control plane (`control_glue`) — plus logging and
//! signal handling. Everything that serves a fault lives in the `engine` crate, the protocol in
//! `coherence`, the guest's vCPUs in `vmm`; this crate only wires them together, the way
//! Firecracker's binary is a thin layer over its `vmm` crate.

mod acpi_topology;
mod cli;
mod control_glue;
mod data_identity;
mod guest;
mod guest_link;
mod guest_linux;
mod logging;
mod sd_notify;
mod signals;
mod workload;

fn main() {
    std::process::exit(cli::main());
}
