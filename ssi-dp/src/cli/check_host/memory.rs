//! The items about memory: the transparent huge page mode, the locked-memory limit against
//! what a node registers, and free page reporting when the host is itself a VM.

use std::io::ErrorKind;

use super::host::{HostView, Probes};
use super::item::{Ctx, Item, Write};

const THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
const REPORTING: &str = "/sys/module/page_reporting/parameters";

/// Bytes of io_uring fixed-buffer send slots a shard registers per connection slot, and the
/// slots beyond its connections (engine/src/node.rs, `sizes`: 256 pages per slot, 4 extra).
const URING_SLOT_BYTES: u64 = 256 * 4096;
const URING_EXTRA_SLOTS: u64 = 4;
/// RDMA memory registered per connection (docs/operations.md: 640 slots of 4 160 bytes).
const VERBS_CONN_BYTES: u64 = 640 * 4160;
/// `CAP_IPC_LOCK` in a capability mask.
const CAP_IPC_LOCK: u64 = 1 << 14;

/// `thp`: the project wants `madvise` (docs/tuning.md).
pub fn thp(h: &HostView, _: &Probes, _: &Ctx) -> Item {
    const N: &str = "thp";
    let text = match h.read(THP) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Item::cannot(
                N,
                format!(
                    "not applicable: {} is missing (a kernel without transparent huge pages)",
                    h.show(THP)
                ),
            )
        }
        Err(e) => return Item::cannot(N, format!("cannot read {}: {e}", h.show(THP))),
    };
    let Some(mode) = bracketed(&text) else {
        return Item::cannot(
            N,
            format!("{}: no [selected] mode in {text:?}", h.show(THP)),
        );
    };
    if mode == "madvise" {
        return Item::ok(
            N,
            "madvise, as the project wants (the guest region is MADV_NOHUGEPAGE whatever this \
             says)",
        );
    }
    Item::change(
        N,
        format!(
            "THP is {mode}; the project wants madvise, the default (measured: no effect on \
             fault latency either way, since the guest region is MADV_NOHUGEPAGE)"
        ),
        format!("echo madvise > {THP}"),
    )
    .with_writes(vec![Write::file(THP, "madvise", mode)])
}

/// The `[selected]` word of a sysfs choice list.
pub fn bracketed(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
}

/// What a node with `shards` shards, in a cluster of `peers` other nodes with as many,
/// registers: (io_uring fixed-buffer bytes, RDMA bytes). One connection per pair of shards.
pub fn memlock_needed(shards: u64, peers: u64) -> (u64, u64) {
    let conns_per_shard = shards * peers;
    let uring = shards * (conns_per_shard + URING_EXTRA_SLOTS) * URING_SLOT_BYTES;
    let verbs = shards * conns_per_shard * VERBS_CONN_BYTES;
    (uring, verbs)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Whether `/proc/self/status` gives this process `CAP_IPC_LOCK`.
fn has_ipc_lock(h: &HostView) -> Result<bool, String> {
    let status = h.read_or_why("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| format!("no CapEff line in {}", h.show("/proc/self/status")))?;
    u64::from_str_radix(hex.trim(), 16)
        .map(|caps| caps & CAP_IPC_LOCK != 0)
        .map_err(|e| {
            format!(
                "CapEff {:?} in {}: {e}",
                hex.trim(),
                h.show("/proc/self/status")
            )
        })
}

/// `memlock`: `RLIMIT_MEMLOCK` covers what the node registers (io_uring fixed send buffers,
/// and RDMA memory where an RDMA device exists), or `CAP_IPC_LOCK` exempts the process.
pub fn memlock(h: &HostView, p: &Probes, ctx: &Ctx) -> Item {
    const N: &str = "memlock";
    let limit = match &p.memlock {
        Ok(l) => *l,
        Err(why) => return Item::cannot(N, why.clone()),
    };
    let (rdma, rdma_note) = match h.list("/sys/class/infiniband") {
        Ok(d) => (!d.is_empty(), String::new()),
        Err(e) if e.kind() == ErrorKind::NotFound => (false, String::new()),
        Err(e) => (
            false,
            format!(
                " (RDMA memory not counted: cannot list {}: {e})",
                h.show("/sys/class/infiniband")
            ),
        ),
    };
    let shards = ctx.cores.len() as u64;
    let (uring, verbs) = memlock_needed(shards, ctx.peers as u64);
    let need = uring + if rdma { verbs } else { 0 };
    let what = format!(
        "a node with {shards} shard(s), in a cluster with {} other node(s) of as many, \
         registers {} ({} of io_uring fixed send buffers{}){rdma_note}",
        ctx.peers,
        mib(need),
        mib(uring),
        if rdma {
            format!(", {} of RDMA memory", mib(verbs))
        } else {
            String::new()
        }
    );
    let cap = has_ipc_lock(h);
    if cap == Ok(true) {
        return Item::ok(
            N,
            format!(
                "this process has CAP_IPC_LOCK, so RLIMIT_MEMLOCK does not apply to it; {what}; a \
                 node run as another user needs that much"
            ),
        );
    }
    let cap_note = match cap {
        Err(why) => format!(" (whether it has CAP_IPC_LOCK is unknown: {why})"),
        _ => String::new(),
    };
    let shown = |l: Option<u64>| l.map_or("unlimited".to_string(), mib);
    match limit.soft {
        None => Item::ok(N, format!("RLIMIT_MEMLOCK is unlimited{cap_note}; {what}")),
        Some(soft) if soft >= need => Item::ok(
            N,
            format!("RLIMIT_MEMLOCK is {}{cap_note}; {what}", mib(soft)),
        ),
        Some(soft) => {
            let kib = need.div_ceil(1024);
            let hard = match limit.hard {
                Some(hard) if hard < need => format!(
                    "; the hard limit ({}) must be raised too, in /etc/security/limits.conf",
                    mib(hard)
                ),
                _ => String::new(),
            };
            Item::change(
                N,
                format!(
                    "RLIMIT_MEMLOCK is {} (hard {}){cap_note}; {what}: beyond the limit io_uring \
                     pages are copied per send{}",
                    mib(soft),
                    shown(limit.hard),
                    if rdma {
                        " and RDMA registration fails"
                    } else {
                        ""
                    }
                ),
                format!(
                    "raise the locked-memory limit of the node's user to {kib} KiB: ulimit -l \
                     {kib} before starting it, or LimitMEMLOCK={need} in its systemd unit{hard}"
                ),
            )
        }
    }
}

/// `page_reporting`: whether the hypervisor takes back free pages of this host (a VM).
pub fn page_reporting(h: &HostView, _: &Probes, _: &Ctx) -> Item {
    const N: &str = "page_reporting";
    if !h.exists(REPORTING) {
        return Item::cannot(
            N,
            format!(
                "not applicable: no free page reporting ({} is missing: bare metal, or no \
                 balloon that reports)",
                h.show(REPORTING)
            ),
        );
    }
    let order = h
        .read(&format!("{REPORTING}/page_reporting_order"))
        .unwrap_or_else(|e| format!("unreadable: {e}"));
    let reported = format!("{REPORTING}/reported_kib");
    let kib = match h.read(&reported) {
        Ok(t) => match t.trim().parse::<u64>() {
            Ok(k) => k,
            Err(e) => return Item::cannot(N, format!("{}: {t:?}: {e}", h.show(&reported))),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Item::cannot(
                N,
                format!(
                    "this kernel has free page reporting (page_reporting_order {order}) but does \
                     not say how much it reported (no {}): whether the hypervisor takes free \
                     pages back is not visible here",
                    h.show(&reported)
                ),
            )
        }
        Err(e) => return Item::cannot(N, format!("cannot read {}: {e}", h.show(&reported))),
    };
    if kib == 0 {
        return Item::ok(
            N,
            format!("no free page reported to the hypervisor (page_reporting_order {order})"),
        );
    }
    Item::change(
        N,
        format!(
            "{kib} KiB of free pages were reported to the hypervisor (page_reporting_order \
             {order}), which unbacks them: a later first touch of such a page costs a host-level \
             fault (4.5-12 us per page measured), paid by the page installs of faults"
        ),
        "back the VM's memory up front: turn free page reporting off for this VM (its \
         hypervisor's balloon, or page_reporting.page_reporting_order above the largest page \
         order on this kernel's command line), or run on bare metal",
    )
}
