//! The low-priority control thread: membership, ACPI table generation, telemetry export, REST
//! API. Never on the fault path.

pub mod acpi;
pub mod api;
pub mod handle;
pub mod heatmap;
pub mod metrics;
