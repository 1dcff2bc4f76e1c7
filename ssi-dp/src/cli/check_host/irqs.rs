//! The items about interrupts: no IRQ may be delivered to a data-plane core
//! (`/proc/irq/*/smp_affinity_list`, and `/proc/irq/default_smp_affinity` for IRQs set up
//! later), and no irqbalance that would put them back.

use std::io::ErrorKind;

use super::cpus::ONLINE;
use super::host::{parse_cpus, HostView, Probes};
use super::item::{list_or_none, minus, Ctx, Item, Write};

const DEFAULT_AFFINITY: &str = "/proc/irq/default_smp_affinity";

/// How many IRQ numbers a detail names before "and N more".
const NAMED: usize = 8;

/// `irq_affinity`: IRQs whose affinity includes a core, with writes that move each to its
/// other CPUs (or, when it has none, to the CPUs that are not cores).
pub fn irq_affinity(h: &HostView, _: &Probes, ctx: &Ctx) -> Item {
    const N: &str = "irq_affinity";
    let names = match h.list("/proc/irq") {
        Ok(n) => n,
        Err(e) => return Item::cannot(N, format!("cannot list {}: {e}", h.show("/proc/irq"))),
    };
    let mut irqs: Vec<u32> = names.iter().filter_map(|n| n.parse().ok()).collect();
    irqs.sort_unstable();
    let mut errors = Vec::new();
    let housekeeping = match h.read_cpus(ONLINE) {
        Ok(online) => Some(minus(&online, &ctx.cores)),
        Err(why) => {
            errors.push(why);
            None
        }
    };
    let others = housekeeping.clone().unwrap_or_default();
    let target = |affinity: &[usize]| {
        let rest = minus(affinity, &ctx.cores);
        if rest.is_empty() {
            others.clone()
        } else {
            rest
        }
    };
    let mut hits = Vec::new(); // (irq, affinity)
    let mut writes = Vec::new();
    for &irq in &irqs {
        let path = format!("/proc/irq/{irq}/smp_affinity_list");
        match h.read_cpus(&path) {
            Ok(aff) if aff.iter().any(|c| ctx.cores.contains(c)) => {
                let to = target(&aff);
                if !to.is_empty() {
                    writes.push(Write::file(&path, list_or_none(&to), list_or_none(&aff)));
                }
                hits.push((irq, aff));
            }
            Ok(_) => {}
            Err(why) => errors.push(why),
        }
    }
    // The affinity that IRQs set up later get.
    let mut default_hit = None;
    match h.read(DEFAULT_AFFINITY) {
        Ok(mask) => match parse_mask(&mask) {
            Some(cpus) if cpus.iter().any(|c| ctx.cores.contains(c)) => {
                let to = target(&cpus);
                if !to.is_empty() {
                    writes.push(Write::file(
                        DEFAULT_AFFINITY,
                        format_mask(&to),
                        mask.clone(),
                    ));
                }
                default_hit = Some(mask);
            }
            Some(_) => {}
            None => errors.push(format!("{}: unexpected {mask:?}", h.show(DEFAULT_AFFINITY))),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("cannot read {}: {e}", h.show(DEFAULT_AFFINITY))),
    }
    let unreadable = if errors.is_empty() {
        String::new()
    } else {
        format!("; {} unreadable, first: {}", errors.len(), errors[0])
    };
    if hits.is_empty() && default_hit.is_none() {
        if !errors.is_empty() {
            return Item::cannot(
                N,
                format!("could not read every IRQ's affinity{unreadable}"),
            );
        }
        return Item::ok(
            N,
            format!(
                "none of the {} IRQs may be delivered to CPUs {}",
                irqs.len(),
                ctx.cores_list()
            ),
        );
    }
    let mut named: Vec<String> = hits
        .iter()
        .take(NAMED)
        .map(|(i, _)| i.to_string())
        .collect();
    if hits.len() > NAMED {
        named.push(format!("and {} more", hits.len() - NAMED));
    }
    let mut detail = if hits.is_empty() {
        "no IRQ may be delivered to the cores yet".to_string()
    } else {
        format!(
            "{} of {} IRQs may be delivered to CPUs {} (IRQs {}; e.g. IRQ {}: smp_affinity_list \
             {})",
            hits.len(),
            irqs.len(),
            ctx.cores_list(),
            named.join(", "),
            hits[0].0,
            list_or_none(&hits[0].1)
        )
    };
    if let Some(mask) = &default_hit {
        detail.push_str(&format!(
            "; IRQs set up later may be too (default_smp_affinity {mask})"
        ));
    }
    detail.push_str(&unreadable);
    let fix = match &housekeeping {
        None => format!(
            "move them off CPUs {}: echo <the other CPUs> > /proc/irq/N/smp_affinity_list for \
             each IRQ N above",
            ctx.cores_list()
        ),
        Some(h) if h.is_empty() => "leave a CPU out of --cores for the IRQs".to_string(),
        Some(housekeeping) => format!(
            "echo {} > /proc/irq/N/smp_affinity_list for each IRQ N above (--fix keeps the \
             other CPUs of an IRQ that has some), echo {} > {DEFAULT_AFFINITY}; managed IRQs \
             (NVMe queues) refuse and need isolcpus=managed_irq,...",
            list_or_none(housekeeping),
            format_mask(housekeeping)
        ),
    };
    Item::change(N, detail, fix).with_writes(writes)
}

/// A CPU mask as `/proc/irq/default_smp_affinity` prints it (`3`, `ff,ffffffff`).
pub fn parse_mask(text: &str) -> Option<Vec<usize>> {
    let hex: String = text.trim().chars().filter(|&c| c != ',').collect();
    if hex.is_empty() {
        return None;
    }
    let mut cpus = Vec::new();
    for (i, c) in hex.chars().rev().enumerate() {
        let nibble = c.to_digit(16)?;
        for bit in 0..4 {
            if nibble & (1 << bit) != 0 {
                cpus.push(i * 4 + bit);
            }
        }
    }
    Some(cpus)
}

/// CPUs as a mask in the same syntax: 32-bit groups, most significant first.
pub fn format_mask(cpus: &[usize]) -> String {
    let groups = cpus.iter().max().map_or(1, |m| m / 32 + 1);
    let mut words = vec![0u32; groups];
    for &c in cpus {
        words[c / 32] |= 1 << (c % 32);
    }
    let mut out = format!("{:x}", words[groups - 1]);
    for w in words[..groups - 1].iter().rev() {
        out.push_str(&format!(",{w:08x}"));
    }
    out
}

/// `irqbalance`: not running, or running with the cores banned (its environment's
/// `IRQBALANCE_BANNED_CPULIST` / `IRQBALANCE_BANNED_CPUS`, or the cores isolated or
/// nohz_full, which irqbalance 1.8 and later leave alone).
pub fn irqbalance(h: &HostView, _: &Probes, ctx: &Ctx) -> Item {
    const N: &str = "irqbalance";
    let entries = match h.list("/proc") {
        Ok(e) => e,
        Err(e) => return Item::cannot(N, format!("cannot list {}: {e}", h.show("/proc"))),
    };
    let mut pids = Vec::new();
    let mut errors = Vec::new();
    for pid in entries
        .iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
    {
        match h.read(&format!("/proc/{pid}/comm")) {
            Ok(comm) if comm == "irqbalance" => pids.push(pid.clone()),
            Ok(_) => {}
            // The process exited since the listing.
            Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => errors.push(format!("/proc/{pid}/comm: {e}")),
        }
    }
    let Some(pid) = pids.first() else {
        if errors.is_empty() {
            return Item::ok(N, "irqbalance is not running");
        }
        return Item::cannot(
            N,
            format!(
                "could not read the names of {} processes (first: {})",
                errors.len(),
                errors[0]
            ),
        );
    };
    // Unreadable: not exempt (then the environment decides).
    let exempt: Vec<usize> = [
        "/sys/devices/system/cpu/isolated",
        "/sys/devices/system/cpu/nohz_full",
    ]
    .iter()
    .filter_map(|p| h.read_cpus_if_present(p).ok())
    .flatten()
    .collect();
    if minus(&ctx.cores, &exempt).is_empty() {
        return Item::ok(
            N,
            format!(
                "irqbalance (pid {pid}) is running; CPUs {} are isolated or nohz_full, which \
                 irqbalance 1.8 and later leave alone",
                ctx.cores_list()
            ),
        );
    }
    let environ = match std::fs::read(h.path(&format!("/proc/{pid}/environ"))) {
        Ok(b) => b,
        Err(e) => {
            return Item::cannot(
                N,
                format!(
                    "irqbalance (pid {pid}) is running, and whether it bans CPUs {} cannot be \
                     told: cannot read its environment: {e}",
                    ctx.cores_list()
                ),
            )
        }
    };
    let banned = banned_cpus(&environ);
    let missing = minus(&ctx.cores, &banned);
    if missing.is_empty() {
        return Item::ok(
            N,
            format!(
                "irqbalance (pid {pid}) is running with CPUs {} banned",
                list_or_none(&banned)
            ),
        );
    }
    Item::change(
        N,
        format!(
            "irqbalance (pid {pid}) is running and may move IRQs onto CPUs {} (banned: {})",
            list_or_none(&missing),
            list_or_none(&banned)
        ),
        format!(
            "set IRQBALANCE_BANNED_CPULIST={} in /etc/default/irqbalance (or \
             /etc/sysconfig/irqbalance) and restart it, or stop it: systemctl disable --now \
             irqbalance",
            ctx.cores_list()
        ),
    )
}

/// The CPUs a process environment (NUL-separated) bans from irqbalance.
fn banned_cpus(environ: &[u8]) -> Vec<usize> {
    let mut cpus = Vec::new();
    for var in environ.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(list) = var.strip_prefix("IRQBALANCE_BANNED_CPULIST=") {
            cpus.extend(parse_cpus(list).unwrap_or_default());
        } else if let Some(mask) = var.strip_prefix("IRQBALANCE_BANNED_CPUS=") {
            cpus.extend(parse_mask(mask).unwrap_or_default());
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip() {
        assert_eq!(parse_mask("3"), Some(vec![0, 1]));
        assert_eq!(parse_mask("00000001,00000004"), Some(vec![2, 32]));
        assert_eq!(parse_mask("xyz"), None);
        assert_eq!(format_mask(&[0]), "1");
        assert_eq!(format_mask(&[2, 32]), "1,00000004");
        assert_eq!(
            parse_mask(&format_mask(&[0, 5, 63, 64])),
            Some(vec![0, 5, 63, 64])
        );
    }

    #[test]
    fn banned_cpus_come_from_either_variable() {
        let env = b"PATH=/bin\0IRQBALANCE_BANNED_CPULIST=2-3\0IRQBALANCE_BANNED_CPUS=10\0";
        assert_eq!(banned_cpus(env), vec![2, 3, 4]);
    }
}
