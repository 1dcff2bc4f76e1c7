//! The I/O APIC (82093AA-style, version 0x11, 24 pins) at 0xFEC00000, emulated in userspace:
//! the index/data register window, the redirection table, edge and level pins with remote
//! IRR, and the message a pin sends to the local APICs.
//!
//! A pure model; the device node's platform owns the one instance and routes the messages
//! it returns (docs/vmm.md, "Devices live on one node").

use super::lapic::{DeliveryMode, Destination, Message};

/// Guest-physical base of the I/O APIC (the MADT says so).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Size of its register window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Pins.
pub const PINS: usize = 24;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_TABLE: u32 = 0x10;
const VERSION: u32 = ((PINS as u32 - 1) << 16) | 0x11;

const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
const DELIVERY_STATUS: u64 = 1 << 12;
/// Bits the guest may write (vector, delivery mode, destination mode, polarity, trigger,
/// mask, destination).
const WRITABLE: u64 = 0xFF00_0000_0001_AFFF;

/// The I/O APIC's registers and pin levels.
#[derive(Debug, Clone)]
pub struct IoApic {
    id: u32,
    select: u32,
    table: [u64; PINS],
    level: [bool; PINS],
}

impl Default for IoApic {
    fn default() -> Self {
        Self::new()
    }
}

impl IoApic {
    /// Power-on state: every pin masked.
    pub fn new() -> Self {
        IoApic {
            id: 0,
            select: 0,
            table: [MASKED; PINS],
            level: [false; PINS],
        }
    }

    /// A guest read of `len` bytes at `offset` in the window.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            IOREGSEL => self.select,
            IOWIN => match self.select {
                REG_ID => self.id << 24,
                REG_VERSION => VERSION,
                REG_ARBITRATION => self.id << 24,
                r if (REG_TABLE..REG_TABLE + 2 * PINS as u32).contains(&r) => {
                    let e = self.table[((r - REG_TABLE) / 2) as usize];
                    if r % 2 == 0 {
                        e as u32
                    } else {
                        (e >> 32) as u32
                    }
                }
                _ => 0,
            },
            _ => 0,
        }
    }

    /// A guest write at `offset`; returns a message to deliver when unmasking a pin that is
    /// asserted (level) makes it fire.
    pub fn write(&mut self, offset: u64, value: u32) -> Option<Message> {
        match offset {
            IOREGSEL => self.select = value & 0xFF,
            IOWIN => match self.select {
                REG_ID => self.id = (value >> 24) & 0xF,
                r if (REG_TABLE..REG_TABLE + 2 * PINS as u32).contains(&r) => {
                    let pin = ((r - REG_TABLE) / 2) as usize;
                    let old = self.table[pin];
                    let new = if r % 2 == 0 {
                        (old & !0xFFFF_FFFF) | u64::from(value)
                    } else {
                        (old & 0xFFFF_FFFF) | (u64::from(value) << 32)
                    };
                    let keep = old & (REMOTE_IRR | DELIVERY_STATUS);
                    self.table[pin] = (new & WRITABLE) | keep;
                    if self.table[pin] & LEVEL == 0 {
                        self.table[pin] &= !REMOTE_IRR;
                    }
                    return self.service(pin);
                }
                _ => {}
            },
            EOI => return self.eoi(value as u8).into_iter().next(),
            _ => {}
        }
        None
    }

    /// Drives pin `pin` to `high`. Returns the message to deliver, if the pin fires.
    pub fn set_line(&mut self, pin: usize, high: bool) -> Option<Message> {
        let was = std::mem::replace(self.level.get_mut(pin)?, high);
        let entry = self.table[pin];
        if entry & LEVEL == 0 {
            // Edge: a rising edge fires.
            return (high && !was && entry & MASKED == 0).then(|| self.message(pin));
        }
        self.service(pin)
    }

    /// One interrupt on an edge pin: a pulse (rise then fall).
    pub fn pulse(&mut self, pin: usize) -> Option<Message> {
        let m = self.set_line(pin, true);
        self.set_line(pin, false);
        m
    }

    /// A local APIC's EOI of a level-triggered `vector`: clears the remote IRR of the pins
    /// using it, and re-fires those still asserted.
    pub fn eoi(&mut self, vector: u8) -> Vec<Message> {
        let mut out = Vec::new();
        for pin in 0..PINS {
            if self.table[pin] & 0xFF == u64::from(vector) && self.table[pin] & REMOTE_IRR != 0 {
                self.table[pin] &= !REMOTE_IRR;
                out.extend(self.service(pin));
            }
        }
        out
    }

    /// A level pin fires when asserted, unmasked and not already in service.
    fn service(&mut self, pin: usize) -> Option<Message> {
        let entry = self.table[pin];
        if entry & LEVEL == 0 || !self.level[pin] || entry & (MASKED | REMOTE_IRR) != 0 {
            return None;
        }
        self.table[pin] |= REMOTE_IRR;
        Some(self.message(pin))
    }

    fn message(&self, pin: usize) -> Message {
        let e = self.table[pin];
        let dest = (e >> 56) as u8;
        Message {
            vector: e as u8,
            delivery: DeliveryMode::from_bits((e >> 8) as u32).unwrap_or(DeliveryMode::Fixed),
            level_triggered: e & LEVEL != 0,
            assert: true,
            destination: if e & (1 << 11) != 0 {
                Destination::Logical(dest)
            } else {
                Destination::Physical(dest)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(io: &mut IoApic, pin: u32, lo: u32, hi: u32) -> Option<Message> {
        io.write(IOREGSEL, REG_TABLE + 2 * pin + 1);
        io.write(IOWIN, hi);
        io.write(IOREGSEL, REG_TABLE + 2 * pin);
        io.write(IOWIN, lo)
    }

    #[test]
    fn version_and_table_read_back() {
        let mut io = IoApic::new();
        io.write(IOREGSEL, REG_VERSION);
        assert_eq!(io.read(IOWIN), 0x0017_0011);
        program(&mut io, 4, 0x0000_0824, 0x0300_0000);
        io.write(IOREGSEL, REG_TABLE + 8);
        assert_eq!(io.read(IOWIN), 0x0000_0824);
        io.write(IOREGSEL, REG_TABLE + 9);
        assert_eq!(io.read(IOWIN), 0x0300_0000);
        // Read-only bits (delivery status, remote IRR) cannot be written.
        program(&mut io, 5, 0x0000_5030, 0);
        io.write(IOREGSEL, REG_TABLE + 10);
        assert_eq!(io.read(IOWIN) & 0x5000, 0);
    }

    #[test]
    fn edge_pins_fire_on_rising_edges_only_when_unmasked() {
        let mut io = IoApic::new();
        assert_eq!(io.pulse(4), None, "masked at power-on");
        program(&mut io, 4, 0x0000_0024, 0x0100_0000);
        let m = io.pulse(4).expect("fires");
        assert_eq!(m.vector, 0x24);
        assert_eq!(m.destination, Destination::Physical(1));
        assert!(!m.level_triggered);
        assert!(io.set_line(4, true).is_some());
        assert!(io.set_line(4, true).is_none(), "no edge while high");
        assert!(io.set_line(99, true).is_none(), "no such pin");
    }

    #[test]
    fn level_pins_wait_for_eoi_and_refire_while_asserted() {
        let mut io = IoApic::new();
        program(&mut io, 9, 0x0000_8830, 0x0F00_0000); // level, logical dest 0x0F
        let m = io.set_line(9, true).expect("fires");
        assert!(m.level_triggered);
        assert_eq!(m.destination, Destination::Logical(0x0F));
        assert!(io.set_line(9, true).is_none(), "remote IRR holds it");
        assert_eq!(io.eoi(0x30).len(), 1, "still asserted: fires again");
        io.set_line(9, false);
        assert!(io.eoi(0x30).is_empty());
        // Masked while asserted, then unmasked: fires on unmask.
        program(&mut io, 9, 0x0001_8830, 0);
        io.set_line(9, true);
        assert!(program(&mut io, 9, 0x0000_8830, 0).is_some());
    }
}
