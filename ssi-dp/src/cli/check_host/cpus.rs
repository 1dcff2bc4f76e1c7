//! The items about the data-plane CPUs themselves: are they usable (`cores`), can the node
//! keep CPUs out of deep idle (`pm_qos`), are they shielded from the scheduler, the tick and
//! RCU (`isolcpus`, `nohz_full`, `rcu_nocbs`), their frequency governor, and guest halt
//! polling when the host is itself a VM.

use std::io::ErrorKind;

use super::host::{parse_cpus, HostView, Probes};
use super::item::{list_or_none, minus, Ctx, Item, Write};

/// The online CPUs.
pub const ONLINE: &str = "/sys/devices/system/cpu/online";
const ISOLATED: &str = "/sys/devices/system/cpu/isolated";
const NOHZ_FULL: &str = "/sys/devices/system/cpu/nohz_full";
const CMDLINE: &str = "/proc/cmdline";
const PM_QOS: &str = "/dev/cpu_dma_latency";
const HALTPOLL: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// `cores`: online, allowed to this process, and not every CPU of the host.
pub fn cores(h: &HostView, p: &Probes, ctx: &Ctx) -> Item {
    const N: &str = "cores";
    let online = match h.read_cpus(ONLINE) {
        Ok(c) => c,
        Err(why) => return Item::cannot(N, why),
    };
    let offline = minus(&ctx.cores, &online);
    if !offline.is_empty() {
        return Item::change(
            N,
            format!(
                "CPUs {} are not online (online: {})",
                list_or_none(&offline),
                list_or_none(&online)
            ),
            format!(
                "pick --cores among the online CPUs {}, or bring them online \
                 (echo 1 > /sys/devices/system/cpu/cpuN/online)",
                list_or_none(&online)
            ),
        );
    }
    let allowed = match &p.allowed_cpus {
        Ok(a) => a,
        Err(why) => return Item::cannot(N, why.clone()),
    };
    let barred = minus(&ctx.cores, allowed);
    if !barred.is_empty() {
        return Item::change(
            N,
            format!(
                "this process may not run on CPUs {} (its affinity is {}: a cpuset or taskset \
                 limits it)",
                list_or_none(&barred),
                list_or_none(allowed)
            ),
            "start the node outside the cpuset or taskset that limits it, or pick --cores \
             among the CPUs it may use",
        );
    }
    let rest = minus(&online, &ctx.cores);
    if rest.is_empty() {
        return Item::change(
            N,
            format!(
                "every online CPU ({}) would be a data-plane core: spinning shards would starve \
                 the vCPU threads, the control thread and the rest of the host",
                list_or_none(&online)
            ),
            "leave at least one CPU out of --cores",
        );
    }
    Item::ok(
        N,
        format!(
            "CPUs {} are online and this process may run on them; CPUs {} are left for vCPU \
             threads, the control thread and the rest of the host",
            ctx.cores_list(),
            list_or_none(&rest)
        ),
    )
}

/// `pm_qos`: whether this user can open `/dev/cpu_dma_latency` for writing (opening it
/// without writing a value makes a request at the default, i.e. no request).
pub fn pm_qos(h: &HostView, _: &Probes, _: &Ctx) -> Item {
    pm_qos_result(h.show(PM_QOS), h.open_for_write(PM_QOS, false).map(drop))
}

/// The `pm_qos` item for the outcome of opening the device `shown`.
pub fn pm_qos_result(shown: String, opened: std::io::Result<()>) -> Item {
    const N: &str = "pm_qos";
    match opened {
        Ok(()) => Item::ok(
            N,
            format!(
                "{shown} opens for writing: a node with --idle spin or hybrid holds it at 0 for \
                 its whole life, which keeps every CPU out of deep idle states"
            ),
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Item::change(
            N,
            format!(
                "this user cannot open {shown} for writing ({e}): a spinning node could not keep \
                 CPUs out of deep idle states (5x the p50 fault latency measured without)"
            ),
            format!(
                "run the node as root, or give its user write access to {shown} (a udev rule: \
                 KERNEL==\"cpu_dma_latency\", GROUP=\"kvm\", MODE=\"0660\")"
            ),
        ),
        Err(e) => Item::cannot(N, format!("cannot open {shown} for writing: {e}")),
    }
}

/// The value of the last `key=` (or bare `key`: empty) on a kernel command line, before
/// the ` -- ` that starts init's arguments.
pub fn cmdline_param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    let mut found = None;
    for word in cmdline.split_whitespace() {
        if word == "--" {
            break;
        }
        match word.split_once('=') {
            Some((k, v)) if k == key => found = Some(v),
            None if word == key => found = Some(""),
            _ => {}
        }
    }
    found
}

/// The CPUs of a kernel parameter's value: flags (`managed_irq,domain,`) skipped, `all` is
/// every CPU of `online`.
pub fn param_cpus(value: &str, online: &[usize]) -> Result<Vec<usize>, String> {
    let list: Vec<&str> = value
        .split(',')
        .filter(|w| !w.is_empty() && !w.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_'))
        .collect();
    if value.split(',').any(|w| w == "all") {
        return Ok(online.to_vec());
    }
    parse_cpus(&list.join(",")).map_err(|e| format!("cannot parse {value:?}: {e}"))
}

fn union(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut u: Vec<usize> = a.iter().chain(b).copied().collect();
    u.sort_unstable();
    u.dedup();
    u
}

/// What the kernel command line says about `key`, for a detail.
fn on_cmdline(h: &HostView, key: &str) -> String {
    match h
        .read(CMDLINE)
        .map(|c| cmdline_param(&c, key).map(str::to_string))
    {
        Ok(Some(v)) => format!("; the kernel command line has {key}={v}"),
        Ok(None) => format!("; the kernel command line has no {key}="),
        Err(_) => String::new(),
    }
}

/// `isolcpus`: the cores out of the scheduler's load balancing
/// (`/sys/devices/system/cpu/isolated`).
pub fn isolcpus(h: &HostView, _: &Probes, ctx: &Ctx) -> Item {
    const N: &str = "isolcpus";
    let isolated = match h.read_cpus(ISOLATED) {
        Ok(c) => c,
        Err(why) => return Item::cannot(N, why),
    };
    let missing = minus(&ctx.cores, &isolated);
    if missing.is_empty() {
        return Item::ok(
            N,
            format!(
                "CPUs {} are isolated (isolated: {})",
                ctx.cores_list(),
                list_or_none(&isolated)
            ),
        );
    }
    Item::boot(
        N,
        format!(
            "CPUs {} are not isolated: other tasks may be scheduled on them (isolated: {}{})",
            list_or_none(&missing),
            list_or_none(&isolated),
            on_cmdline(h, "isolcpus")
        ),
        format!(
            "isolcpus=managed_irq,domain,{}",
            list_or_none(&union(&isolated, &ctx.cores))
        ),
    )
}

/// `nohz_full`: the cores without the periodic tick (`/sys/devices/system/cpu/nohz_full`,
/// present only in kernels built with `CONFIG_NO_HZ_FULL`).
pub fn nohz_full(h: &HostView, _: &Probes, ctx: &Ctx) -> Item {
    const N: &str = "nohz_full";
    let text = match h.read(NOHZ_FULL) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Item::cannot(
                N,
                format!(
                    "not applicable: this kernel has no nohz_full ({} is missing: built without \
                     CONFIG_NO_HZ_FULL); with a kernel that has it, add nohz_full={} to its \
                     command line",
                    h.show(NOHZ_FULL),
                    ctx.cores_list()
                ),
            )
        }
        Err(e) => return Item::cannot(N, format!("cannot read {}: {e}", h.show(NOHZ_FULL))),
    };
    let full = match parse_cpus(&text) {
        Ok(c) => c,
        Err(e) => return Item::cannot(N, format!("{}: {e}", h.show(NOHZ_FULL))),
    };
    let missing = minus(&ctx.cores, &full);
    if missing.is_empty() {
        return Item::ok(
            N,
            format!(
                "CPUs {} run without the periodic tick while they run one task (nohz_full: {})",
                ctx.cores_list(),
                list_or_none(&full)
            ),
        );
    }
    Item::boot(
        N,
        format!(
            "CPUs {} take the periodic tick (nohz_full: {}{})",
            list_or_none(&missing),
            list_or_none(&full),
            on_cmdline(h, "nohz_full")
        ),
        format!("nohz_full={}", list_or_none(&union(&full, &ctx.cores))),
    )
}

/// `rcu_nocbs`: RCU callbacks of the cores run elsewhere (`rcu_nocbs=` on the kernel command
/// line, or implied by an effective `nohz_full`).
pub fn rcu_nocbs(h: &HostView, _: &Probes, ctx: &Ctx) -> Item {
    const N: &str = "rcu_nocbs";
    let cmdline = match h.read_or_why(CMDLINE) {
        Ok(c) => c,
        Err(why) => return Item::cannot(N, why),
    };
    let online = match h.read_cpus(ONLINE) {
        Ok(o) => o,
        Err(why) => return Item::cannot(N, why),
    };
    let nocbs = match cmdline_param(&cmdline, "rcu_nocbs") {
        Some(v) => match param_cpus(v, &online) {
            Ok(c) => c,
            Err(why) => {
                return Item::cannot(N, format!("rcu_nocbs on the kernel command line: {why}"))
            }
        },
        None => Vec::new(),
    };
    // nohz_full CPUs have their callbacks offloaded too (when the kernel has nohz_full).
    let nohz = match h.read_cpus_if_present(NOHZ_FULL) {
        Ok(c) => c,
        Err(why) => return Item::cannot(N, why),
    };
    let covered = union(&nocbs, &nohz);
    let missing = minus(&ctx.cores, &covered);
    if missing.is_empty() {
        return Item::ok(
            N,
            format!(
                "RCU callbacks of CPUs {} run elsewhere (rcu_nocbs: {}, nohz_full: {})",
                ctx.cores_list(),
                list_or_none(&nocbs),
                list_or_none(&nohz)
            ),
        );
    }
    Item::boot(
        N,
        format!(
            "CPUs {} run their own RCU callbacks (rcu_nocbs on the kernel command line: {}, \
             nohz_full: {})",
            list_or_none(&missing),
            list_or_none(&nocbs),
            list_or_none(&nohz)
        ),
        format!("rcu_nocbs={}", list_or_none(&union(&nocbs, &ctx.cores))),
    )
}

/// `governor`: the cpufreq governor of each core (`performance` wanted).
pub fn governor(h: &HostView, _: &Probes, ctx: &Ctx) -> Item {
    const N: &str = "governor";
    let mut slow = Vec::new(); // (cpu, governor)
    let mut absent = Vec::new();
    let mut errors = Vec::new();
    let mut writes = Vec::new();
    let mut no_performance = Vec::new();
    for &cpu in &ctx.cores {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
        match h.read(&path) {
            Ok(g) if g == "performance" => {}
            Ok(g) => {
                let avail =
                    format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_available_governors");
                match h.read(&avail) {
                    Ok(a) if a.split_whitespace().any(|w| w == "performance") => {
                        writes.push(Write::file(&path, "performance", g.clone()))
                    }
                    _ => no_performance.push(cpu),
                }
                slow.push((cpu, g));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => absent.push(cpu),
            Err(e) => errors.push(format!("cannot read {}: {e}", h.show(&path))),
        }
    }
    if absent.len() == ctx.cores.len() {
        return Item::cannot(
            N,
            format!(
                "not applicable: CPUs {} have no cpufreq directory (no frequency scaling driver, \
                 as in most VMs: the frequency is not this kernel's to set)",
                ctx.cores_list()
            ),
        );
    }
    if slow.is_empty() {
        if !errors.is_empty() {
            return Item::cannot(N, errors.join("; "));
        }
        return Item::ok(
            N,
            format!("CPUs {} run the performance governor", ctx.cores_list()),
        );
    }
    let mut detail = slow
        .iter()
        .map(|(c, g)| format!("CPU {c} runs the {g} governor"))
        .collect::<Vec<_>>()
        .join(", ");
    detail.push_str(
        " (advisory, not measured here: a spinning core is busy and clocks up under most \
         governors; the CPUs of the faulting vCPU threads may not)",
    );
    if !no_performance.is_empty() {
        detail.push_str(&format!(
            "; the driver offers no performance governor for CPUs {}",
            list_or_none(&no_performance)
        ));
    }
    Item::change(
        N,
        detail,
        format!(
            "cpupower -c {} frequency-set -g performance (or echo performance > \
             /sys/devices/system/cpu/cpuN/cpufreq/scaling_governor)",
            ctx.cores_list()
        ),
    )
    .with_writes(writes)
}

/// `haltpoll`: information for hosts that are VM guests with the haltpoll cpuidle driver.
pub fn haltpoll(h: &HostView, _: &Probes, _: &Ctx) -> Item {
    const N: &str = "haltpoll";
    match h.read(HALTPOLL) {
        Ok(v) => Item::ok(
            N,
            format!(
                "this host is a VM guest with the haltpoll cpuidle driver (guest_halt_poll_ns \
                 {v}); with --idle spin or hybrid the node's PM QoS request does what halt \
                 polling would (with --idle block and no PM QoS held, 200000 helped as much)"
            ),
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => Item::cannot(
            N,
            format!(
                "not applicable: no haltpoll cpuidle driver ({} is missing: bare metal, or a VM \
                 guest with another driver)",
                h.show(HALTPOLL)
            ),
        ),
        Err(e) => Item::cannot(N, format!("cannot read {}: {e}", h.show(HALTPOLL))),
    }
}
