//! The devices of a Linux guest's platform, all on one node (the device node): the I/O APIC,
//! COM1 (a vm-superio 16550), the ACPI sleep and reset registers, the legacy reset ports, and
//! the status port through which a guest program reports its verdict. vCPUs on other nodes
//! reach them through forwarded accesses ([`super::Platform`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use acpi::POWER_REGISTERS;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

use super::ioapic::{IoApic, IOAPIC_BASE, IOAPIC_SIZE};
use super::lapic::Message;
use super::msg::Lifecycle;
use crate::console::Console;
use crate::layout::ports;

/// I/O APIC pin of COM1.
pub const COM1_PIN: usize = 4;
/// ACPI sleep control register (FADT `SLEEP_CONTROL_REG`, 8 bits), as the tables state it.
pub const SLEEP_CONTROL_PORT: u16 = POWER_REGISTERS.sleep_control;
/// ACPI sleep status register (FADT `SLEEP_STATUS_REG`, 8 bits).
pub const SLEEP_STATUS_PORT: u16 = POWER_REGISTERS.sleep_status;
/// ACPI reset register (FADT `RESET_REG`, 8 bits).
pub const RESET_PORT: u16 = POWER_REGISTERS.reset;
/// Value written to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = POWER_REGISTERS.reset_value;
/// The `_S5` sleep type the DSDT gives for soft-off.
pub const S5_SLEEP_TYPE: u8 = POWER_REGISTERS.s5_sleep_type;
/// The guest's verdict (32-bit write; 0 = success), the same port as the test guests' DONE.
pub const STATUS_PORT: u16 = ports::BASE + 3;
/// The PCI reset control register (bit 2 with bit 1: hard reset).
const CF9_PORT: u16 = 0xCF9;
/// The keyboard controller's command port (0xFE: pulse the reset line).
const I8042_COMMAND_PORT: u16 = 0x64;
/// SLP_EN in the sleep control register.
const SLP_EN: u8 = 1 << 5;

/// Whether a port belongs to the device node's devices (everything else is answered locally:
/// reads all ones, writes ignored).
pub fn is_device_port(port: u16) -> bool {
    crate::console::SerialPort::offset(port).is_some()
        || matches!(
            port,
            SLEEP_CONTROL_PORT
                | SLEEP_STATUS_PORT
                | RESET_PORT
                | STATUS_PORT
                | CF9_PORT
                | I8042_COMMAND_PORT
        )
}

/// Whether an MMIO address belongs to the device node's devices.
pub fn is_device_mmio(addr: u64) -> bool {
    (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_SIZE).contains(&addr)
}

/// The UART's interrupt line: latched here, turned into an I/O APIC pulse by the caller
/// once the device lock is released.
#[derive(Debug, Clone, Default)]
struct Line(Arc<AtomicBool>);

impl Trigger for Line {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}

/// What one access did besides its value.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Value read (0 for writes).
    pub value: u64,
    /// Interrupts to deliver (an I/O APIC message), at most two per access.
    pub interrupts: [Option<Message>; 2],
    /// The guest asked to power off or reset.
    pub lifecycle: Option<Lifecycle>,
    /// The guest reported this verdict.
    pub status: Option<u32>,
}

impl Outcome {
    fn interrupt(&mut self, m: Option<Message>) {
        if let Some(slot) = self.interrupts.iter_mut().find(|s| s.is_none()) {
            *slot = m;
        }
    }
}

/// The device node's devices.
pub struct Devices {
    ioapic: IoApic,
    uart: Serial<Line, NoEvents, Console>,
    uart_irq: Line,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("ioapic", &self.ioapic)
            .finish_non_exhaustive()
    }
}

impl Devices {
    /// The devices, COM1 writing to `console`.
    pub fn new(console: Console) -> Self {
        let line = Line::default();
        Devices {
            ioapic: IoApic::new(),
            uart: Serial::new(line.clone(), console),
            uart_irq: line,
        }
    }

    /// A port access of `len` bytes (`data` for writes).
    pub fn pio(&mut self, port: u16, len: u8, write: bool, data: u64) -> Outcome {
        let mut out = Outcome::default();
        if let Some(off) = crate::console::SerialPort::offset(port) {
            if write {
                // A UART write error only means its interrupt line could not be latched.
                let _ = self.uart.write(off, data as u8);
            } else {
                out.value = u64::from(self.uart.read(off));
            }
            if self.uart_irq.0.swap(false, Ordering::AcqRel) {
                out.interrupt(self.ioapic.pulse(COM1_PIN));
            }
            return out;
        }
        match (port, write) {
            (SLEEP_CONTROL_PORT, true) => {
                let v = data as u8;
                if v & SLP_EN != 0 && (v >> 2) & 7 == S5_SLEEP_TYPE {
                    out.lifecycle = Some(Lifecycle::PowerOff);
                }
            }
            (RESET_PORT, true) if data as u8 == RESET_VALUE => {
                out.lifecycle = Some(Lifecycle::Reset)
            }
            (CF9_PORT, true) if data as u8 & 0x04 != 0 => out.lifecycle = Some(Lifecycle::Reset),
            (I8042_COMMAND_PORT, true) if data as u8 == 0xFE => {
                out.lifecycle = Some(Lifecycle::Reset)
            }
            (STATUS_PORT, true) if len == 4 => out.status = Some(data as u32),
            (_, false) => out.value = u64::MAX >> (64 - 8 * u32::from(len.clamp(1, 8))),
            _ => {}
        }
        out
    }

    /// An MMIO access (the I/O APIC window).
    pub fn mmio(&mut self, addr: u64, len: u8, write: bool, data: u64) -> Outcome {
        let mut out = Outcome::default();
        let off = addr.wrapping_sub(IOAPIC_BASE);
        if len != 4 || off >= IOAPIC_SIZE {
            out.value = if write { 0 } else { u64::MAX };
            return out;
        }
        if write {
            out.interrupt(self.ioapic.write(off, data as u32));
        } else {
            out.value = u64::from(self.ioapic.read(off));
        }
        out
    }

    /// A local APIC retired level-triggered `vector`.
    pub fn level_eoi(&mut self, vector: u8) -> Vec<Message> {
        self.ioapic.eoi(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_reset_and_status_ports_report_lifecycle() {
        let mut d = Devices::new(Console::new(false));
        assert_eq!(d.pio(SLEEP_CONTROL_PORT, 1, true, 5 << 2).lifecycle, None);
        assert_eq!(
            d.pio(SLEEP_CONTROL_PORT, 1, true, u64::from(SLP_EN | 5 << 2))
                .lifecycle,
            Some(Lifecycle::PowerOff)
        );
        assert_eq!(
            d.pio(SLEEP_CONTROL_PORT, 1, true, u64::from(SLP_EN | 3 << 2))
                .lifecycle,
            None,
            "S3 is not supported"
        );
        assert_eq!(
            d.pio(RESET_PORT, 1, true, 1).lifecycle,
            Some(Lifecycle::Reset)
        );
        assert_eq!(
            d.pio(CF9_PORT, 1, true, 0x06).lifecycle,
            Some(Lifecycle::Reset)
        );
        assert_eq!(
            d.pio(I8042_COMMAND_PORT, 1, true, 0xFE).lifecycle,
            Some(Lifecycle::Reset)
        );
        assert_eq!(d.pio(STATUS_PORT, 4, true, 7).status, Some(7));
        assert_eq!(d.pio(0x21, 1, false, 0).value, 0xFF, "no PIC");
        assert!(is_device_port(0x3F8) && is_device_port(STATUS_PORT) && !is_device_port(0x80));
        assert!(is_device_mmio(IOAPIC_BASE + 0x10) && !is_device_mmio(0xFEE0_0000));
    }

    #[test]
    fn uart_transmit_interrupt_goes_through_the_ioapic() {
        let console = Console::new(false);
        let mut d = Devices::new(console.clone());
        // Route pin 4 to vector 0x24, vCPU 1 (physical), edge.
        d.mmio(IOAPIC_BASE, 4, true, 0x10 + 2 * COM1_PIN as u64 + 1);
        d.mmio(IOAPIC_BASE + 0x10, 4, true, 1 << 24);
        d.mmio(IOAPIC_BASE, 4, true, 0x10 + 2 * COM1_PIN as u64);
        d.mmio(IOAPIC_BASE + 0x10, 4, true, 0x24);
        // Enable the THR-empty interrupt (IER bit 1), then send a byte.
        let ier = d.pio(ports::COM1 + 1, 1, true, 0x02);
        let tx = d.pio(ports::COM1, 1, true, u64::from(b'k'));
        let fired = ier
            .interrupts
            .iter()
            .chain(tx.interrupts.iter())
            .flatten()
            .count();
        assert!(fired >= 1, "THR empty raises the line");
        assert!(console.contains(b"k"));
    }
}
