//! The low-priority control side: membership, telemetry export, REST API. Never on the fault path.
//!
//! - [`handle`]: the narrow handle through which it sees and steers a data-plane node.
//! - [`membership`]: heartbeats, failure detection, join / leave / stop over mutual TLS.
//! - [`inventory`], [`tls`]: the cluster inventory file and the nodes' certificates.
//! - [`node_proof`]: the same certificates proving node ids on data connections.
//! - [`api`], [`metrics`], [`heatmap`]: the REST API, `/metrics`, `/heatmap`.

pub mod api;
pub mod build;
pub mod handle;
pub mod heatmap;
pub mod inventory;
pub mod membership;
pub mod metrics;
pub mod node_proof;
pub mod tls;
