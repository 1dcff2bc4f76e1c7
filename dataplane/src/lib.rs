//! The ssi-dp data plane: the coherence protocol, shards, page-state tables and the node.

pub mod atomic_hist;
pub mod config;
pub mod cpulist;
pub mod doorbell;
pub mod pmqos;
pub mod protocol;
pub mod spsc;
