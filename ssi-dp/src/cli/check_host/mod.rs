//! `ssi-dp check-host [--cores LIST] [--fix] [--json]`: checks every host setting of
//! docs/tuning.md for the data-plane cores, each item `ok`, `change` (with the command or
//! kernel parameter that fixes it) or `cannot check` (with why), and exits 0 when nothing
//! that matters for `--idle spin` should change, 1 otherwise, 2 on a usage error. `--fix`
//! makes the run-time changes that are safe and reversible (sysctls, THP mode, IRQ
//! affinity, cpufreq governor) and says what each replaced; it never edits the kernel
//! command line.
//!
//! The checks read the host through [`host::HostView`], a root directory for `/proc`,
//! `/sys` and `/dev` (`/` here, a crafted tree in the unit tests), and [`host::Probes`], the
//! answers of the running kernel to this process's system calls.

mod cpus;
mod fix;
mod host;
mod irqs;
mod item;
mod kernel_apis;
mod memory;
mod net;
mod report;
#[cfg(test)]
mod tests;

use std::io::Write as _;

use clap::Args;
use thiserror::Error;

use super::exit;
use host::{HostView, Probes};
use item::{Ctx, Item};
use report::Report;

/// One item's check.
type Check = fn(&HostView, &Probes, &Ctx) -> Item;

/// Every item in report order: its name, whether a `change` of it means the host is not
/// ready for `--idle spin` (the others are advisory), and its check.
const ITEMS: &[(&str, bool, Check)] = &[
    ("cores", true, cpus::cores),
    ("pm_qos", true, cpus::pm_qos),
    ("isolcpus", true, cpus::isolcpus),
    ("nohz_full", true, cpus::nohz_full),
    ("rcu_nocbs", true, cpus::rcu_nocbs),
    ("irq_affinity", true, irqs::irq_affinity),
    ("irqbalance", true, irqs::irqbalance),
    ("userfaultfd", true, kernel_apis::userfaultfd),
    ("io_uring", true, kernel_apis::io_uring),
    ("memlock", true, memory::memlock),
    ("busy_poll", false, net::busy_poll),
    ("busy_read", false, net::busy_read),
    ("thp", false, memory::thp),
    ("governor", false, cpus::governor),
    ("haltpoll", false, cpus::haltpoll),
    ("page_reporting", false, memory::page_reporting),
    ("kvm", false, kernel_apis::kvm),
];

/// `ssi-dp check-host` options.
#[derive(Debug, Args)]
pub struct CheckHostArgs {
    /// Data-plane cores to check (cpulist: 2-5,8). Default: every online CPU but CPU 0.
    #[arg(long)]
    cores: Option<String>,
    /// Make the changes that are safe and reversible at run time (sysctls, THP mode, IRQ
    /// affinity, cpufreq governor), printing each with the value it replaced; needs root.
    /// Never edits the kernel command line (it prints what to add).
    #[arg(long)]
    fix: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Check (and fix) only these items, comma-separated, by the names the report prints.
    #[arg(long, value_delimiter = ',', value_name = "ITEMS")]
    only: Vec<String>,
    /// Other nodes in the cluster, each with as many cores as this one: sizes the locked
    /// memory the node registers (memlock item).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=4095))]
    peers: u16,
}

/// Why the check could not run (exit code 2).
#[derive(Debug, Error)]
pub enum CheckHostError {
    /// `--cores` is not a cpulist.
    #[error("--cores {list:?}: {source}")]
    BadCores {
        /// What was given.
        list: String,
        /// What is wrong with it.
        #[source]
        source: engine::cpulist::CpuListError,
    },
    /// No `--cores`, and no default could be chosen.
    #[error("no default data-plane cores ({why}): name them with --cores, e.g. --cores 2-5")]
    NoDefaultCores {
        /// Why.
        why: String,
    },
    /// `--only` names no item.
    #[error("--only: there is no item {name:?}; the items are {known}")]
    UnknownItem {
        /// The name given.
        name: String,
        /// Every item's name.
        known: String,
    },
    /// `--fix` without root.
    #[error(
        "--fix changes kernel settings and needs root (this process runs as uid {euid}): run \
         it again as root (sudo ssi-dp check-host --fix ...), or apply the fixes the report \
         prints yourself"
    )]
    FixNeedsRoot {
        /// The effective user id.
        euid: u32,
    },
}

/// Runs `ssi-dp check-host` on this host; returns the exit code.
pub fn run(a: CheckHostArgs) -> i32 {
    let report = match check(&a, &HostView::live(), &Probes::live()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ssi-dp check-host: {e}");
            return exit::USAGE;
        }
    };
    let text = if a.json {
        format!("{}\n", report.json())
    } else {
        report.text()
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        eprintln!("ssi-dp check-host: cannot write the report: {e}");
        return exit::FAILED;
    }
    report.exit_code()
}

/// Checks (and with `--fix` fixes, then checks again) the host `h`, whose kernel answered
/// `probes`.
fn check(a: &CheckHostArgs, h: &HostView, probes: &Probes) -> Result<Report, CheckHostError> {
    let (cores, cores_default) = match &a.cores {
        Some(list) => {
            let mut c =
                engine::cpulist::parse(list).map_err(|source| CheckHostError::BadCores {
                    list: list.clone(),
                    source,
                })?;
            c.sort_unstable();
            (c, false)
        }
        None => (default_cores(h)?, true),
    };
    let selected = select(&a.only)?;
    if a.fix && probes.euid != 0 {
        return Err(CheckHostError::FixNeedsRoot { euid: probes.euid });
    }
    let ctx = Ctx {
        cores,
        peers: usize::from(a.peers),
    };
    let mut items = run_checks(&selected, h, probes, &ctx);
    let applied = if a.fix {
        let applied = fix::apply(h, &items);
        items = run_checks(&selected, h, probes, &ctx);
        Some(applied)
    } else {
        None
    };
    Ok(Report {
        cores: ctx.cores_list(),
        cores_default,
        peers: ctx.peers,
        items,
        applied,
    })
}

/// Every online CPU but CPU 0 (which keeps the host's housekeeping).
fn default_cores(h: &HostView) -> Result<Vec<usize>, CheckHostError> {
    let online = h
        .read_cpus(cpus::ONLINE)
        .map_err(|why| CheckHostError::NoDefaultCores { why })?;
    let cores = item::minus(&online, &[0]);
    if cores.is_empty() {
        return Err(CheckHostError::NoDefaultCores {
            why: "CPU 0 is the only online CPU".into(),
        });
    }
    Ok(cores)
}

/// The items `--only` names (all without it), in report order.
fn select(only: &[String]) -> Result<Vec<(&'static str, bool, Check)>, CheckHostError> {
    for name in only {
        if !ITEMS.iter().any(|(n, ..)| n == name) {
            return Err(CheckHostError::UnknownItem {
                name: name.clone(),
                known: ITEMS
                    .iter()
                    .map(|(n, ..)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(ITEMS
        .iter()
        .filter(|(n, ..)| only.is_empty() || only.iter().any(|o| o == n))
        .copied()
        .collect())
}

fn run_checks(
    selected: &[(&'static str, bool, Check)],
    h: &HostView,
    probes: &Probes,
    ctx: &Ctx,
) -> Vec<Item> {
    selected
        .iter()
        .map(|&(name, counts, check)| {
            let mut item = check(h, probes, ctx);
            debug_assert_eq!(item.name, name, "a check reports under its own name");
            item.counts = counts;
            item
        })
        .collect()
}
