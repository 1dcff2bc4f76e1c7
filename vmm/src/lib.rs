//! The KVM side of ssi-dp: a KVM VM per node process whose guest RAM is the node's view of the
//! ssi-dp region, the node's own vCPUs on pinned threads, the CPL3 test guests of issue #7,
//! and the Linux boot path (PVH and bzImage) with a 16550 console and the ACPI tables.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use vmm::{GuestMemory, GuestParams, TestGuest, Vm, VmConfig};
//!
//! let mem = GuestMemory::anonymous(64 << 20, 0)?;
//! let params = GuestParams::new(2);
//! let plan = TestGuest::Atomics.setup(&mem, &params)?;      // one node only
//! let mut vm = Vm::new(&mem, VmConfig::single_node(2))?;
//! vm.load(&plan.boot, Some(plan.doorbell_gpa))?;
//! let reports = vm.run_vcpus(&[0, 1], &AtomicBool::new(false));
//! let verdict = TestGuest::Atomics.check(&params, &reports)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See docs/vmm.md for the layout, the protocol, what runs on PVM hosts and what needs
//! hardware KVM.

pub mod console;
pub mod cpu;
pub mod guests;
pub mod launch;
pub mod layout;
pub mod linux;
pub mod memory;
pub mod paging;
pub mod platform;
pub mod protocol;
pub mod vcpu;
pub mod vm;

pub use console::{Console, SerialPort};
pub use cpu::{Boot, CpuMode};
pub use guests::{CheckError, GuestError, GuestParams, Plan, TestGuest, Verdict};
/// The kvm-clock state a node reads from its VM and others copy ([`Vm::clock`]).
pub use kvm_bindings::kvm_clock_data as ClockData;
pub use memory::{GuestMemory, MemoryError};
pub use vcpu::{Outcome, VcpuError, VcpuReport};
pub use vm::{stop_after, Vm, VmConfig, VmError};
