//! DSDT (ACPI 6.5 §5.2.11.1): a minimal AML namespace, built with rust-vmm's `acpi_tables` AML
//! encoder: one processor device (`ACPI0007`) per vCPU under `\_SB`, named `Cxxx` (hex UID),
//! with `_UID` matching the MADT and `_PXM` matching the SRAT; COM1 (`PNP0501`) with its
//! I/O ports and interrupt, which a hardware-reduced guest only learns from here; and the
//! `\_S5` package that lets the guest power off through the FADT's sleep control register.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::Aml;

use super::platform::Platform;
use super::sdt::Sdt;
use super::topology::Topology;

/// DSDT revision written (2: AML integers are 64 bits).
pub const REVISION: u8 = 2;

/// Builds the DSDT for `topology`.
pub fn build(topology: &Topology, platform: &Platform) -> Vec<u8> {
    let mut children = Vec::new();
    for vcpu in topology.vcpus() {
        // UIDs are below MAX_VCPUS (1024), so three hex digits always suffice.
        let name = format!("C{:03X}", vcpu.uid);
        let hid = Name::new(Path::new("_HID"), &"ACPI0007");
        let uid = Name::new(Path::new("_UID"), &vcpu.uid);
        let pxm = Name::new(Path::new("_PXM"), &vcpu.proximity_domain);
        Device::new(Path::new(&name), vec![&hid, &uid, &pxm]).to_aml_bytes(&mut children);
    }
    if let Some(serial) = platform.serial {
        let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0501"));
        let uid = Name::new(Path::new("_UID"), &1u8);
        let io = IO::new(serial.io_base, serial.io_base, 1, 8);
        // Consumer, edge triggered, active high, exclusive.
        let irq = Interrupt::new(true, true, false, false, serial.gsi);
        let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&io, &irq]));
        Device::new(Path::new("COM1"), vec![&hid, &uid, &crs]).to_aml_bytes(&mut children);
    }
    let aml = Scope::raw(Path::new("\\_SB_"), children);
    let mut t = Sdt::new(*b"DSDT", REVISION, &platform.ids);
    t.bytes(&aml);
    if let Some(power) = platform.power {
        // \_S5: SLP_TYPa, SLP_TYPb (only the first matters for the hardware-reduced register).
        let (a, b) = (power.s5_sleep_type, 0u8);
        let mut s5 = Vec::new();
        Name::new(Path::new("\\_S5_"), &Package::new(vec![&a, &b])).to_aml_bytes(&mut s5);
        t.bytes(&s5);
    }
    t.finish()
}
