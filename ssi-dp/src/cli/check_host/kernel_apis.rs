//! The items about kernel interfaces a node opens: userfaultfd (it cannot run without),
//! io_uring (its default transport; without it the node falls back to epoll), and `/dev/kvm`
//! (information: only `--guest` and `--kernel` need it).

use std::io::ErrorKind;

use uffd_poller::OpenedVia;

use super::host::{HostView, Probes, UffdProblem, UringProblem};
use super::item::{Ctx, Item};

/// `userfaultfd`: this process created one the way a node does (never user-mode-only, with
/// write-protect faults).
pub fn userfaultfd(h: &HostView, p: &Probes, _: &Ctx) -> Item {
    const N: &str = "userfaultfd";
    let sysctl = match h.read("/proc/sys/vm/unprivileged_userfaultfd") {
        Ok(v) => format!("vm.unprivileged_userfaultfd={v}"),
        Err(e) => format!("vm.unprivileged_userfaultfd unreadable ({e})"),
    };
    let dev = match h.mode("/dev/userfaultfd") {
        Ok(m) => format!("/dev/userfaultfd {m}"),
        Err(e) => format!("/dev/userfaultfd: {e}"),
    };
    match &p.userfaultfd {
        Ok(via) => {
            let via = match via {
                OpenedVia::Device => "/dev/userfaultfd",
                OpenedVia::Syscall => "userfaultfd(2)",
            };
            let other_users = if p.euid == 0 {
                "; a node run as another user needs read/write access to /dev/userfaultfd or \
                 vm.unprivileged_userfaultfd=1"
            } else {
                ""
            };
            Item::ok(
                N,
                format!(
                    "this process (uid {}) created a userfaultfd with write-protect faults that \
                     sees kernel-mode (KVM) faults, through {via} ({sysctl}, {dev}){other_users}",
                    p.euid
                ),
            )
        }
        Err(UffdProblem::Denied(why)) => Item::change(
            N,
            format!("{why} ({sysctl}, {dev})"),
            "give the node's user read/write access to /dev/userfaultfd (chgrp kvm \
             /dev/userfaultfd && chmod 0660 /dev/userfaultfd, or a udev rule), or sysctl -w \
             vm.unprivileged_userfaultfd=1, or run the node as root",
        ),
        Err(UffdProblem::Unsupported(why)) => Item::change(
            N,
            why.clone(),
            "use a kernel with CONFIG_USERFAULTFD=y and write-protect support (Linux 5.7 or \
             later)",
        ),
        Err(UffdProblem::Failed(why)) => Item::cannot(N, why.clone()),
    }
}

/// `io_uring`: the transport's own probe (a real ring, the opcodes it uses, a
/// provided-buffer ring).
pub fn io_uring(h: &HostView, p: &Probes, _: &Ctx) -> Item {
    const N: &str = "io_uring";
    let sysctl = match h.read("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) if v.trim() == "1" => "kernel.io_uring_disabled=1: only root and the members of \
                                     kernel.io_uring_group may create rings"
            .into(),
        Ok(v) => format!("kernel.io_uring_disabled={v}"),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            "no kernel.io_uring_disabled sysctl (a kernel before 6.6)".into()
        }
        Err(e) => format!("kernel.io_uring_disabled unreadable ({e})"),
    };
    let fallback = "; until then the node falls back to the epoll transport";
    match &p.io_uring {
        Ok(zero_copy) => Item::ok(
            N,
            format!(
                "a ring with the operations the transport uses and a provided-buffer ring work \
                 (zero-copy send {}); {sysctl}",
                if *zero_copy {
                    "available"
                } else {
                    "unavailable"
                }
            ),
        ),
        Err(UringProblem::Disabled(_, why)) => Item::change(
            N,
            format!("{why}{fallback}"),
            "sysctl -w kernel.io_uring_disabled=0 (or 1, with the node's user in the group \
             kernel.io_uring_group names)",
        ),
        Err(UringProblem::Denied(why)) => Item::change(
            N,
            format!("{why}{fallback}"),
            "allow io_uring_setup, io_uring_enter and io_uring_register in the container's \
             seccomp profile or the LSM policy",
        ),
        Err(UringProblem::Unsupported(why)) => Item::change(
            N,
            format!("{why}{fallback}"),
            "use Linux 6.0 or later, built with CONFIG_IO_URING=y",
        ),
        Err(UringProblem::Failed(why)) => Item::cannot(N, format!("{why}; {sysctl}")),
    }
}

/// `kvm`: whether this user can open `/dev/kvm` (information).
pub fn kvm(h: &HostView, _: &Probes, _: &Ctx) -> Item {
    const N: &str = "kvm";
    let shown = h.show("/dev/kvm");
    match h.open_for_write("/dev/kvm", true) {
        Ok(_) => Item::ok(
            N,
            format!("{shown} opens read-write: --guest and --kernel can run here"),
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => Item::change(
            N,
            format!(
                "no {shown}: KVM is not loaded or not offered (information: only --guest and \
                 --kernel need it)"
            ),
            "modprobe kvm_intel or kvm_amd (on a VM, enable nested virtualization)",
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Item::change(
            N,
            format!(
                "this user cannot open {shown} ({e}; information: only --guest and --kernel \
                 need it)"
            ),
            "add the node's user to the group of /dev/kvm (usually kvm)",
        ),
        Err(e) => Item::cannot(N, format!("cannot open {shown}: {e}")),
    }
}
