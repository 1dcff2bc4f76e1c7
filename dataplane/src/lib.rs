//! The ssi-dp data plane: the coherence protocol, shards, page-state tables and the node.

pub mod protocol;
