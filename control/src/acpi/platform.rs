//! The fixed facts of the virtual platform that the tables state besides the NUMA layout:
//! interrupt controller addresses, legacy PIC/PIT presence, IA-PC boot flags, the serial port
//! and OEM ids. The
//! defaults describe a KVM guest with the in-kernel irqchip (what the VMM of issue #7 runs).

use super::sdt::OemIds;

/// IA-PC boot architecture flag: no VGA hardware (do not probe it).
pub const IAPC_NO_VGA: u16 = 1 << 2;

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

/// Platform facts the FADT, MADT and DSDT state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    /// Guest-physical address of the local APICs.
    pub local_apic_address: u32,
    /// The I/O APIC, if the guest has one.
    pub io_apic: Option<IoApic>,
    /// Whether the guest has the PC's dual 8259 PIC and an 8254 PIT on ISA IRQ 0 wired to
    /// GSI 2 (MADT PCAT_COMPAT flag and the IRQ 0 override). True for KVM's in-kernel irqchip.
    pub legacy_pic: bool,
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
            legacy_pic: true,
            iapc_boot_arch: IAPC_NO_VGA,
            serial: Some(SerialPort {
                io_base: 0x3F8,
                gsi: 4,
            }),
            ids: OemIds::SSI_DP,
        }
    }
}
