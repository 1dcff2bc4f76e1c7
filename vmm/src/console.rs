//! Guest console output: a bounded capture buffer shared with whoever watches the guest
//! (tests look for the Linux banner in it), optionally echoed to the VMM's stdout, and the
//! 16550 UART (vm-superio) on COM1 that Linux's `earlyprintk=serial` and `console=ttyS0`
//! drive.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::layout::ports;

/// Most bytes a capture keeps; later bytes are counted, not stored.
pub const CAPTURE_LIMIT: usize = 1 << 20;

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: u64,
}

/// Console bytes written by the guest, shared between the vCPU threads and observers.
#[derive(Debug, Clone)]
pub struct Console {
    captured: Arc<Mutex<Captured>>,
    echo: bool,
}

impl Console {
    /// A console that captures; with `echo`, bytes also go to the VMM's stdout.
    pub fn new(echo: bool) -> Self {
        Console {
            captured: Arc::default(),
            echo,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.captured.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends guest bytes (bounded by [`CAPTURE_LIMIT`]).
    pub fn push(&self, bytes: &[u8]) {
        {
            let mut c = self.lock();
            let room = CAPTURE_LIMIT.saturating_sub(c.bytes.len());
            let keep = room.min(bytes.len());
            c.bytes.extend_from_slice(&bytes[..keep]);
            c.dropped += (bytes.len() - keep) as u64;
        }
        if self.echo {
            let mut out = io::stdout().lock();
            // Console echo is best effort: a closed stdout must not stop the guest.
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
    }

    /// A copy of what was captured so far.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// True when the capture contains `needle`.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.lock().bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// Bytes dropped because the capture was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The interrupt line of the UART: an eventfd registered as KVM irqfd for GSI 4 when the VM
/// has an in-kernel irqchip, otherwise nothing (the kernel's early console polls).
#[derive(Debug)]
pub struct SerialIrq(Option<EventFd>);

impl SerialIrq {
    /// A line wired to `fd`, or a disconnected line.
    pub fn new(fd: Option<EventFd>) -> Self {
        SerialIrq(fd)
    }
}

impl Trigger for SerialIrq {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        match &self.0 {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }
}

/// The COM1 16550 shared by the vCPU threads.
#[derive(Debug, Clone)]
pub struct SerialPort {
    uart: Arc<Mutex<Serial<SerialIrq, NoEvents, Console>>>,
}

impl SerialPort {
    /// A UART writing to `console`, interrupting through `irq`.
    pub fn new(irq: SerialIrq, console: Console) -> Self {
        SerialPort {
            uart: Arc::new(Mutex::new(Serial::new(irq, console))),
        }
    }

    /// Register offset of `port` when it belongs to COM1.
    pub fn offset(port: u16) -> Option<u8> {
        let off = port.checked_sub(ports::COM1)?;
        (off < ports::COM_LEN).then_some(off as u8)
    }

    /// A guest `out` to COM1 register `offset`.
    pub fn write(&self, offset: u8, value: u8) -> io::Result<()> {
        let mut uart = self.uart.lock().unwrap_or_else(PoisonError::into_inner);
        uart.write(offset, value)
            .map_err(|e| io::Error::other(format!("serial write: {e:?}")))
    }

    /// A guest `in` from COM1 register `offset`.
    pub fn read(&self, offset: u8) -> u8 {
        self.uart
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart_output_reaches_the_capture() {
        let console = Console::new(false);
        let port = SerialPort::new(SerialIrq::new(None), console.clone());
        for b in b"Linux version" {
            port.write(SerialPort::offset(ports::COM1).unwrap(), *b)
                .unwrap();
        }
        assert!(console.contains(b"Linux version"));
        assert!(!console.contains(b"Windows"));
        // Line status: transmitter empty, as a polling driver expects.
        assert_ne!(port.read(5) & 0x20, 0);
        assert_eq!(SerialPort::offset(ports::COM1 + 8), None);
        assert_eq!(SerialPort::offset(0x2f8), None);
    }

    #[test]
    fn capture_is_bounded() {
        let console = Console::new(false);
        console.push(&vec![b'a'; CAPTURE_LIMIT - 1]);
        console.push(b"xyz");
        assert_eq!(console.snapshot().len(), CAPTURE_LIMIT);
        assert_eq!(console.dropped(), 2);
    }
}
