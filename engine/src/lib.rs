//! The ssi-dp engine: what runs a node's share of the guest's memory, on the fault path.
//!
//! It owns the guest region and its userfaultfd, the pinned shard threads that serve faults and
//! peer messages run-to-completion (each driving the [`coherence`] protocol machines of its
//! pages), the mesh of authenticated connections between shards, the lock-free rings, wake-ups,
//! counters and histograms they share, and the formation measurement. It may depend on the
//! protocol (`coherence`), the frame format (`wire`), the fault source (`uffd-poller`) and the
//! transports; it knows nothing of the command line, the VMM or the control plane — the
//! `ssi-dp` binary joins those to it through [`node::Node`] and [`node::NodeHandle`]-style
//! accessors.
//!
//! - [`node`]: the embedding API — start a node in-process, get the guest region.
//! - [`shard`]: the pinned run-to-completion loop that serves faults and messages, and
//!   [`shard::codec`], where protocol messages become frames and back.
//! - [`mesh`]: authenticated connections between every pair of shards.
//! - [`region`]: the guest region registered with the userfaultfd.
//! - [`config`]: the cluster as the command line states it, and its layout digest.
//! - [`spsc`], [`doorbell`]: bounded rings and wake-ups between shards.
//! - [`stats`], [`atomic_hist`], [`summary`], [`histlog`]: counters and histograms shards
//!   publish without locks, the end-of-run summary and HDR logs read from them.
//! - [`mem`], [`barrier`], [`host_area`], [`measure`]: typed access to guest memory through the
//!   fault path, barriers kept there, the host area nodes coordinate in, and the inter-node
//!   figures measured at formation.
//! - [`watchdog`]: a panicking shard aborts the node; a stalled one is named.
//! - `sim` (test builds): the engine simulator, the real shards over a simulated network
//!   and clock (docs/architecture.md).
//! - [`idle`], [`affinity`], [`cpulist`], [`pmqos`], [`clock`]: the idle policy, CPU
//!   placement, PM QoS and the clock the shards read.

pub mod affinity;
pub mod atomic_hist;
pub mod barrier;
pub mod clock;
pub mod config;
pub mod cpulist;
pub mod doorbell;
pub mod histlog;
pub mod host_area;
pub mod idle;
pub mod link_probe;
pub mod measure;
pub mod mem;
pub mod mesh;
pub mod mixed;
pub mod node;
pub mod node_state;
pub mod placement;
pub mod pmqos;
pub mod redial;
pub mod region;
pub(crate) mod replica_cache;
pub mod shard;
#[cfg(test)]
mod sim;
pub mod spsc;
pub mod stats;
pub mod summary;
pub mod watchdog;
