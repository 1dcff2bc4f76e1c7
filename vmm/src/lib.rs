//! The KVM side: guest memory backed by the node's DSM region, vCPU threads, guest loading.
//!
//! Filled in by issue #7.
