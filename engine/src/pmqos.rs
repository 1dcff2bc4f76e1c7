//! PM QoS: holding `/dev/cpu_dma_latency` at 0 while data-plane cores spin.
//!
//! The kernel honours a CPU wake-up latency request for as long as the file stays open. On
//! these machines a halted CPU takes ~40 µs to wake, ~5 µs with the request held at 0, so a
//! node with a spinning shard holds it for its whole life and releases it by closing the file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use thiserror::Error;

/// The PM QoS device for CPU wake-up latency.
pub const CPU_DMA_LATENCY: &str = "/dev/cpu_dma_latency";

/// Why the latency request could not be made.
#[derive(Debug, Error)]
pub enum PmQosError {
    /// Opening the device failed.
    #[error(
        "cannot open {path}: {source}; spinning cores will wake slowly from idle. Run as root \
         (or grant write access to {path}), or use --idle block"
    )]
    Open {
        /// The device path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing the request failed.
    #[error("cannot write the latency request to {path}: {source}")]
    Write {
        /// The device path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Holds a CPU wake-up latency request until dropped.
#[derive(Debug)]
pub struct LatencyGuard {
    _file: File,
    micros: i32,
}

impl LatencyGuard {
    /// Requests a maximum CPU wake-up latency of `micros` µs (0: never enter deep idle) on the
    /// default device.
    pub fn hold(micros: i32) -> Result<Self, PmQosError> {
        Self::hold_at(Path::new(CPU_DMA_LATENCY), micros)
    }

    /// Same as [`LatencyGuard::hold`] on an explicit device path.
    pub fn hold_at(path: &Path, micros: i32) -> Result<Self, PmQosError> {
        let display = path.display().to_string();
        let mut file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| PmQosError::Open {
                path: display.clone(),
                source,
            })?;
        // The device takes the request as a native-endian s32.
        file.write_all(&micros.to_ne_bytes())
            .map_err(|source| PmQosError::Write {
                path: display,
                source,
            })?;
        Ok(Self {
            _file: file,
            micros,
        })
    }

    /// The latency held, in µs.
    pub fn micros(&self) -> i32 {
        self.micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_gives_actionable_error() {
        let err = LatencyGuard::hold_at(Path::new("/nonexistent/cpu_dma_latency"), 0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--idle block"), "{msg}");
    }

    #[test]
    fn holds_request_on_real_device_when_root() {
        if !Path::new(CPU_DMA_LATENCY).exists() {
            eprintln!("skipping: {CPU_DMA_LATENCY} does not exist on this kernel");
            return;
        }
        match LatencyGuard::hold(0) {
            Ok(g) => assert_eq!(g.micros(), 0),
            // Without root the error must be the actionable one, never a panic.
            Err(e) => assert!(e.to_string().contains("Run as root"), "{e}"),
        }
    }
}
