//! Start-up detection: whether io_uring works on this host with the operations the transport
//! needs, and a readable reason when it does not (so the node can say why it fell back).

use std::fmt;
use std::io;

use io_uring::{opcode, register::Probe, IoUring};
use thiserror::Error;

/// Optional io_uring features found by [`probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `IORING_OP_SEND_ZC` (zero-copy send, 6.0+).
    pub send_zc: bool,
    /// `IORING_FEAT_EXT_ARG` (timeouts on waits, 5.11+).
    pub ext_arg: bool,
}

/// Why io_uring cannot be used.
#[derive(Debug, Error)]
pub enum UnsupportedReason {
    /// The kernel has no io_uring.
    #[error("the kernel has no io_uring (ENOSYS): use a kernel with CONFIG_IO_URING")]
    NotInKernel,
    /// `kernel.io_uring_disabled` forbids it.
    #[error("io_uring is disabled by sysctl kernel.io_uring_disabled={0}: set it to 0 (or 1 with the io_uring group) to use the io_uring transport")]
    DisabledBySysctl(u8),
    /// Denied for another reason (container seccomp profile, LSM).
    #[error("io_uring setup was denied (EPERM), probably by a container seccomp profile or an LSM: allow io_uring_setup/enter/register to use the io_uring transport")]
    Denied,
    /// An operation the transport needs is missing.
    #[error("the kernel's io_uring lacks {0}: use Linux 6.0 or later for the io_uring transport")]
    MissingOp(&'static str),
    /// Something else failed.
    #[error("io_uring probe failed: {0}")]
    Other(#[from] io::Error),
}

fn sysctl_disabled() -> Option<u8> {
    let s = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()?;
    s.trim().parse().ok()
}

/// Checks that io_uring works here with what the transport needs: ring setup, the opcode
/// probe, multishot receive (`IORING_OP_RECV`), `SEND`, `POLL_ADD`, provided-buffer rings.
pub fn probe() -> Result<Features, UnsupportedReason> {
    let ring: IoUring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS) => UnsupportedReason::NotInKernel,
                Some(libc::EPERM) | Some(libc::EACCES) => match sysctl_disabled() {
                    Some(v) if v > 0 => UnsupportedReason::DisabledBySysctl(v),
                    _ => UnsupportedReason::Denied,
                },
                _ => UnsupportedReason::Other(e),
            })
        }
    };
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (code, name) in [
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
        (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
    ] {
        if !p.is_supported(code) {
            return Err(UnsupportedReason::MissingOp(name));
        }
    }
    // Provided-buffer rings (5.19) carry multishot receive (6.0): register a tiny one.
    let region = wire::region::PageRegion::new(4096)?;
    // SAFETY: the region outlives the registration (unregistered just below, before the
    // region is dropped), and 1 entry fits in one page.
    let reg = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(region.as_ptr() as u64, 1, 0, 0)
    };
    if reg.is_err() {
        return Err(UnsupportedReason::MissingOp(
            "provided-buffer rings (IORING_REGISTER_PBUF_RING)",
        ));
    }
    ring.submitter().unregister_buf_ring(0)?;
    Ok(Features {
        send_zc: p.is_supported(opcode::SendZc::CODE),
        ext_arg: ring.params().is_feature_ext_arg(),
    })
}

/// The transport a node should use, with the reason.
#[derive(Debug)]
pub enum Choice {
    /// io_uring works.
    Uring(Features),
    /// io_uring does not work; use the epoll fallback.
    Fallback(UnsupportedReason),
}

/// Probes io_uring and says which transport to use.
pub fn choose() -> Choice {
    match probe() {
        Ok(f) => Choice::Uring(f),
        Err(r) => Choice::Fallback(r),
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Uring(x) => write!(
                f,
                "transport: io_uring (zero-copy send {}, wait timeouts {})",
                if x.send_zc {
                    "available"
                } else {
                    "unavailable: pages are copied"
                },
                if x.ext_arg {
                    "available"
                } else {
                    "unavailable"
                }
            ),
            Choice::Fallback(r) => write!(f, "transport: epoll fallback, because {r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_matches_the_sysctl() {
        let disabled = sysctl_disabled().unwrap_or(0);
        match probe() {
            Ok(f) => {
                assert_ne!(disabled, 2, "io_uring_disabled=2 must make the probe fail");
                assert!(f.ext_arg, "kernels with multishot recv have EXT_ARG");
                assert!(choose().to_string().starts_with("transport: io_uring"));
            }
            Err(e) => {
                eprintln!("io_uring unavailable here: {e}");
                assert!(choose().to_string().contains("epoll fallback"));
            }
        }
    }
}
