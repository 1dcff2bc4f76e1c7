//! The low-priority control thread: membership, ACPI table generation, telemetry export, REST
//! API. Never on the fault path.

pub mod acpi;
pub mod handle;
pub mod inventory;
pub mod membership;
pub mod tls;
