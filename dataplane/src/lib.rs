//! The ssi-dp data plane: the coherence protocol, shards, page-state tables and the node.
//!
//! - [`node`]: the embedding API — start a node in-process, get the guest region.
//! - [`shard`]: the pinned run-to-completion loop that serves faults and messages.
//! - [`mesh`]: authenticated connections between every pair of shards.
//! - [`region`]: the guest region registered with the userfaultfd.
//! - [`config`]: the cluster as the command line states it, and its layout digest.
//! - [`spsc`], [`doorbell`]: bounded rings and wake-ups between shards.
//! - [`stats`], [`atomic_hist`]: counters and histograms shards publish without locks.

pub mod acpi_topology;
pub mod affinity;
pub mod atomic_hist;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control_glue;
pub mod cpulist;
pub mod doorbell;
pub mod guest;
pub mod guest_link;
pub mod guest_linux;
pub mod histlog;
pub mod host_area;
pub mod idle;
pub mod logging;
pub mod measure;
pub mod mesh;
pub mod node;
pub mod node_state;
pub mod pmqos;
pub mod region;
pub mod shard;
pub mod signals;
pub mod spsc;
pub mod stats;
pub mod summary;
pub mod workload;
