//! The fixed facts of the virtual platform that the tables state besides the NUMA layout:
//! interrupt controller addresses, legacy PIC/PIT presence, IA-PC boot flags, the serial port,
//! the ACPI sleep and reset registers and OEM ids. The defaults describe what the `vmm` crate
//! runs for a Linux guest: local APICs and an I/O APIC emulated in userspace, no PIC or PIT,
//! COM1, power-off through the hardware-reduced sleep registers.

use super::sdt::OemIds;

/// IA-PC boot architecture flag: no VGA hardware (do not probe it).
pub const IAPC_NO_VGA: u16 = 1 << 2;
/// IA-PC boot architecture flag (ACPI 5.0): no CMOS real-time clock at ports 0x70/0x71. Linux
/// then registers no RTC device; without it, a Linux guest of ours polled the absent clock's
/// update flag 40 000 times during boot (seen in the lab), each poll a VM exit.
pub const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

/// An I/O APIC as the MADT lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApic {
    /// I/O APIC id.
    pub id: u8,
    /// Guest-physical address of its registers.
    pub address: u32,
    /// First global system interrupt it serves.
    pub gsi_base: u32,
}

/// A 16550 UART the DSDT describes (`PNP0501`), so that a hardware-reduced guest, which does
/// not probe legacy ISA interrupts, wires its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialPort {
    /// First I/O port (8 ports are decoded).
    pub io_base: u16,
    /// Global system interrupt (edge triggered, active high).
    pub gsi: u32,
}

/// The hardware-reduced ACPI sleep and reset registers (FADT `SLEEP_CONTROL_REG`,
/// `SLEEP_STATUS_REG`, `RESET_REG`), all 8-bit I/O ports, and the DSDT's `_S5` sleep type.
/// Linux powers off by writing `SLP_EN | S5 << 2` to the control register and resets by
/// writing `reset_value` to the reset register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerRegisters {
    /// Sleep control register port.
    pub sleep_control: u16,
    /// Sleep status register port.
    pub sleep_status: u16,
    /// Reset register port.
    pub reset: u16,
    /// Value that resets.
    pub reset_value: u8,
    /// The `_S5` (soft-off) sleep type value.
    pub s5_sleep_type: u8,
}

/// The registers the `vmm` crate emulates.
pub const POWER_REGISTERS: PowerRegisters = PowerRegisters {
    sleep_control: 0x600,
    sleep_status: 0x601,
    reset: 0x602,
    reset_value: 1,
    s5_sleep_type: 5,
};

/// Platform facts the FADT, MADT and DSDT state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    /// Guest-physical address of the local APICs.
    pub local_apic_address: u32,
    /// The I/O APIC, if the guest has one.
    pub io_apic: Option<IoApic>,
    /// Whether the guest has the PC's dual 8259 PIC and an 8254 PIT on ISA IRQ 0 wired to
    /// GSI 2 (MADT PCAT_COMPAT flag and the IRQ 0 override). True for KVM's in-kernel irqchip;
    /// false for the userspace one the `vmm` crate runs.
    pub legacy_pic: bool,
    /// Sleep and reset registers (power-off, reset), if the guest has them.
    pub power: Option<PowerRegisters>,
    /// FADT IA-PC boot architecture flags.
    pub iapc_boot_arch: u16,
    /// COM1, if the guest has it (the Linux boot console).
    pub serial: Option<SerialPort>,
    /// OEM ids written into every table.
    pub ids: OemIds,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            local_apic_address: 0xFEE0_0000,
            io_apic: Some(IoApic {
                id: 0,
                address: 0xFEC0_0000,
                gsi_base: 0,
            }),
            legacy_pic: false,
            power: Some(POWER_REGISTERS),
            iapc_boot_arch: IAPC_NO_VGA | IAPC_NO_CMOS_RTC,
            serial: Some(SerialPort {
                io_base: 0x3F8,
                gsi: 4,
            }),
            ids: OemIds::SSI_DP,
        }
    }
}
