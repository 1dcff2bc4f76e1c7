//! A whole run: for every point of the axes (transport × node 0's idle policy) the floors,
//! then a fresh cluster and every scenario in order; then the tables, breakdowns, JSON lines, HDR
//! logs and the plot. Every result carries the machine, transport, idle policy and placement.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use engine::cpulist;
use engine::idle::IdlePolicy;
use engine::node::TransportKind;
use engine::pmqos::LatencyGuard;
use engine::shard::trace::FaultTrace;
use thiserror::Error;
use wire::FrameAuth;

use super::breakdown;
use super::cli::RunArgs;
use super::cluster::{idle_arg, Cluster, ClusterError, ClusterOpts};
use super::floor::{self, FloorKind, FloorOpts};
use super::load::CpuSnapshot;
use super::netns::{NetNs, NetnsError};
use super::plan::{PageCursor, Plan, PlanError, Scenario};
use super::plot;
use super::progress::Progress;
use super::report::{self, ScenarioResult};
use super::scenario::{Ctx, Recorder, ScenarioError};

/// Why a run could not start or complete.
#[derive(Debug, Error)]
pub enum RunError {
    /// A bad selection.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A bad cpulist.
    #[error("--fault-cpus: {0}")]
    Cpus(String),
    /// Namespaces.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// An output file or directory.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Warm-up samples before the recorded ones (page tables, caches, CPU frequency).
pub fn warmup(samples: usize) -> usize {
    (samples / 10).min(200)
}

fn transport_name(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Uring => "uring",
        TransportKind::Fallback => "epoll",
        TransportKind::Verbs => "verbs",
        TransportKind::Auto => match transport_uring::choose() {
            transport_uring::Choice::Uring(_) => "uring",
            transport_uring::Choice::Fallback(_) => "epoll",
        },
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// One line describing the machine. (Not its load average: a spinning shard alone keeps it
/// at 1 or more. Each part of the run reports the CPU time other processes took instead.)
pub fn machine_line() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "machine: {} CPUs ({model}), Linux {}{}",
        crate::online_cpus(),
        read_trim("/proc/sys/kernel/osrelease"),
        hypervisor_note(),
    )
}

/// What the CPU says of a hypervisor under it (CPUID leaf 0x40000000), for the machine line:
/// under QEMU's TCG every instruction is emulated, so the timings show correctness only.
fn hypervisor_note() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // The hypervisor-present bit: CPUID.1:ECX[31].
        if __cpuid(1).ecx & (1 << 31) == 0 {
            return String::new();
        }
        let r = __cpuid(0x4000_0000);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&r.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
        sig[8..].copy_from_slice(&r.edx.to_le_bytes());
        let name = String::from_utf8_lossy(&sig)
            .trim_end_matches('\0')
            .to_string();
        if name == "TCGTCGTCGTCG" {
            "; CPU emulated by QEMU TCG: these timings show that it works, not how fast".into()
        } else {
            format!("; in a virtual machine (hypervisor {name:?})")
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    String::new()
}

/// Runs the benchmark; returns the exit code (1 when a scenario failed or read wrong data).
pub fn run(a: &RunArgs) -> Result<i32, RunError> {
    let samples = a.samples();
    let plan = Plan::new(
        &a.scenarios,
        a.max_sharers,
        &a.threads,
        samples + warmup(samples),
        a.tp_faults(),
        a.prefetch_depth,
    )?
    .scale(a.homes, a.space)?;
    let fault_cpus =
        cpulist::parse(&a.placement.fault_cpus).map_err(|e| RunError::Cpus(e.to_string()))?;
    if fault_cpus.is_empty() {
        return Err(RunError::Cpus("no CPU given".into()));
    }
    let shard_cpus =
        cpulist::parse(&a.placement.shard_cpu).map_err(|e| RunError::Cpus(e.to_string()))?;
    if shard_cpus.is_empty() {
        return Err(RunError::Cpus("no shard CPU given".into()));
    }
    if let Some(dir) = &a.hlog {
        std::fs::create_dir_all(dir).map_err(|source| RunError::Output {
            path: dir.clone(),
            source,
        })?;
    }
    let netns = if a.netns {
        Some(NetNs::create(plan.nodes)?)
    } else {
        None
    };
    let progress = Arc::new(Progress::default());
    let printer = (!a.no_progress).then(|| progress.spawn_printer());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# fault-latency: per-fault service time as the faulting thread sees it"
    );
    let _ = writeln!(out, "# {}", machine_line());
    let _ = writeln!(
        out,
        "# nodes: {} ({}); node 0 = this process; {samples} samples per latency scenario \
         (+{} warm-up), {} faults per throughput row",
        plan.nodes,
        if a.netns {
            "network namespaces joined by veth and a bridge"
        } else {
            "processes on loopback"
        },
        warmup(samples),
        plan.tp_faults
    );
    if plan.homes > 1 || plan.space_pages.is_some() {
        let m = plan.memory();
        let homes = match plan.homes {
            1 => "node 1".to_string(),
            k => format!("nodes 1..={k}, page by page round-robin"),
        };
        let _ = writeln!(
            out,
            "# address space: {} ({} pages; node 1 contributes what the rows leave, \
             untouched); throughput pages homed on {homes}; contributions: {}",
            gib(m.iter().sum()),
            m.iter().sum::<u64>() / 4096,
            m.iter()
                .enumerate()
                .map(|(i, b)| format!("node {i} {}", gib(*b)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    emit(a, &out);
    let mut code = 0;
    let mut all: Vec<ScenarioResult> = Vec::new();
    for &t in &a.transport {
        for &idle in &a.idle {
            for &auth in &a.auth {
                let point = AxisPoint {
                    transport: t,
                    idle,
                    auth,
                    fault_cpus: &fault_cpus,
                    shard_cpus: &shard_cpus,
                };
                match run_point(a, &plan, &point, netns.as_ref(), &progress) {
                    Ok((rows, failed)) => {
                        code |= i32::from(failed);
                        all.extend(rows);
                    }
                    Err(e) => {
                        eprintln!("fault-latency: {}/{auth}/{idle}: {e}", transport_name(t));
                        code = 1;
                    }
                }
            }
        }
    }
    progress.stop();
    if let Some(p) = printer {
        let _ = p.join();
    }
    if let Some(path) = &a.plot {
        let multi = a.transport.len() * a.idle.len() * a.auth.len() > 1;
        let series: Vec<plot::Series<'_>> = all
            .iter()
            .map(|r| plot::Series {
                label: r.series_label(multi),
                hist: r.lat.histogram(),
            })
            .collect();
        let axes: Vec<String> = a
            .transport
            .iter()
            .flat_map(|t| {
                a.idle.iter().flat_map(move |i| {
                    a.auth
                        .iter()
                        .map(move |m| format!("{}/{m} {i}", transport_name(*t)))
                })
            })
            .collect();
        let svg = plot::svg(
            "ssi-dp fault-latency: percentile distribution",
            &format!(
                "{}\n{}; faults on CPU {}, node 0 shard on CPU {}, helpers on CPU {} ({}); {}",
                machine_line(),
                axes.join(", "),
                a.placement.fault_cpus,
                a.placement.shard_cpu,
                a.placement.helper_cpu,
                a.helper_idle,
                if a.netns { "netns + veth" } else { "loopback" }
            ),
            &series,
        );
        std::fs::write(path, svg).map_err(|source| RunError::Output {
            path: path.clone(),
            source,
        })?;
        eprintln!("fault-latency: plot written to {}", path.display());
    }
    Ok(code)
}

/// Bytes as GiB, MiB or KiB (whichever reads best).
fn gib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

/// A process's resident memory as `/proc` reports it: VmRSS and VmHWM from `status`, Pss
/// from `smaps_rollup` (each in KiB; `None` where the kernel does not say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resident {
    /// Resident set (KiB).
    pub rss_kib: Option<u64>,
    /// Peak resident set (KiB).
    pub hwm_kib: Option<u64>,
    /// Proportional set (KiB): shared pages divided among their users.
    pub pss_kib: Option<u64>,
}

/// The `KEY:   1234 kB` field of a `/proc` file, in KiB.
fn proc_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

impl Resident {
    /// Reads `/proc/<pid>` (`self` for this process). An unreadable `status` (the process is
    /// gone, or `/proc` is not mounted) is an error, reported in the `# rss` line; a missing
    /// `smaps_rollup` (kernels before 4.14) leaves only Pss unknown.
    pub fn of(pid: &str) -> Result<Resident, String> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"));
        Ok(Resident {
            rss_kib: proc_kib(&status, "VmRSS"),
            hwm_kib: proc_kib(&status, "VmHWM"),
            pss_kib: rollup.ok().and_then(|r| proc_kib(&r, "Pss")),
        })
    }

    fn render(&self) -> String {
        let f = |v: Option<u64>| v.map_or("?".to_string(), |k| gib(k * 1024));
        format!(
            "VmRSS {} (VmHWM {}, Pss {})",
            f(self.rss_kib),
            f(self.hwm_kib),
            f(self.pss_kib)
        )
    }
}

fn render(r: Result<Resident, String>) -> String {
    r.map_or_else(|e| format!("unreadable ({e})"), |r| r.render())
}

/// One `# rss` line: every node's resident memory at `when`.
fn rss_line(cluster: &Cluster, when: &str) -> String {
    let mut parts = vec![format!(
        "node 0 (this process) {}",
        render(Resident::of("self"))
    )];
    for (id, pid) in cluster.helper_pids() {
        parts.push(format!(
            "node {id} (pid {pid}) {}",
            render(Resident::of(&pid.to_string()))
        ));
    }
    format!("# rss {when}: {}\n", parts.join("; "))
}

/// Prints run output: on stdout, or on stderr when stdout carries JSON.
fn emit(a: &RunArgs, s: &str) {
    if a.json {
        eprint!("{s}");
    } else {
        print!("{s}");
    }
}

struct AxisPoint<'a> {
    transport: TransportKind,
    idle: IdlePolicy,
    auth: FrameAuth,
    fault_cpus: &'a [usize],
    shard_cpus: &'a [usize],
}

/// What every row of one axis point shares.
struct PointLabels {
    /// Transport and frame protection (`uring/mac`).
    tname: String,
    idle: String,
    placement: String,
    /// HDR log file suffix (`uring.spin`).
    suffix: String,
}

impl PointLabels {
    fn result(
        &self,
        s: Scenario,
        rec: &Recorder<'_>,
        breakdown: Option<breakdown::Breakdown>,
    ) -> ScenarioResult {
        ScenarioResult {
            scenario: s,
            transport: if s.is_floor() {
                "plain-tcp".into()
            } else {
                self.tname.clone()
            },
            idle: self.idle.clone(),
            placement: self.placement.clone(),
            lat: rec.lat.clone(),
            measured_ns: rec.measured_ns(),
            breakdown,
            others_pct: 0.0,
            prefetch: rec.prefetch,
        }
    }
}

fn run_point(
    a: &RunArgs,
    plan: &Plan,
    p: &AxisPoint<'_>,
    netns: Option<&NetNs>,
    progress: &Progress,
) -> Result<(Vec<ScenarioResult>, bool), RunError> {
    let tname = format!("{}/{}", transport_name(p.transport), p.auth);
    let labels = PointLabels {
        tname: tname.clone(),
        idle: p.idle.to_string(),
        placement: format!(
            "faults cpu {}, node0 shard cpu {} ({}), helper shards cpu {} ({})",
            cpulist::format(p.fault_cpus),
            cpulist::format(p.shard_cpus),
            p.idle,
            a.placement.helper_cpu,
            a.helper_idle
        ),
        suffix: format!(
            "{}.{}.{}",
            transport_name(p.transport),
            p.auth,
            idle_arg(p.idle).replace(':', "-")
        ),
    };
    // The node holds PM QoS while its shard may spin; the floors must run under the same.
    let pm = if p.idle.spins() {
        match LatencyGuard::hold(0) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("fault-latency: warning: {e}");
                None
            }
        }
    } else {
        None
    };
    let pm_line = match (p.idle.spins(), pm.is_some()) {
        (true, true) => {
            "/dev/cpu_dma_latency held at 0 (node 0 may spin; the floors run under the same)"
        }
        (true, false) => "/dev/cpu_dma_latency could not be held (see the warning above)",
        (false, _) => "/dev/cpu_dma_latency not held (node 0 blocks; so do the floors)",
    };
    let cpu_start = CpuSnapshot::now();
    let mut rows = Vec::new();
    let mut failed = false;
    // The floors first: they need the shard's CPU to themselves.
    for &s in plan.scenarios.iter().filter(|s| s.is_floor()) {
        match measure_floor(a, plan, p, &labels, netns, progress, s) {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("fault-latency: {}: {e}", s.label());
                failed = true;
            }
        }
    }
    let mut transport_line = String::new();
    if plan.scenarios.iter().any(|s| s.needs_cluster()) {
        match cluster_rows(a, plan, p, &labels, netns, progress) {
            Ok((line, cluster_rows, cluster_failed)) => {
                transport_line = line;
                rows.extend(cluster_rows);
                failed |= cluster_failed;
            }
            Err(e) => {
                eprintln!("fault-latency: cannot start the cluster: {e}");
                failed = true;
            }
        }
    }
    drop(pm);
    // Rows in the plan's order: each rate floor next to the row it bounds.
    rows.sort_by_key(|r| plan.scenarios.iter().position(|&s| s == r.scenario));
    let others = cpu_start.others_pct_since();
    for r in rows.iter_mut() {
        r.others_pct = others;
    }
    let heading = format!(
        "\n## transport {tname}, node 0 idle {}, helpers idle {}\n# {}\n# placement: {}; floors: \
         handler on CPU {}, home process on CPU {}\n# pm_qos: {pm_line}\n# other processes used \
         {others:.1}% of the machine's CPU time during this part{}",
        p.idle,
        a.helper_idle,
        if transport_line.is_empty() {
            "transport: -".to_string()
        } else {
            transport_line
        },
        labels.placement,
        p.shard_cpus[0],
        a.placement.helper_cpu,
        if others >= 5.0 {
            " (the machine was not quiet: treat these numbers as disturbed)"
        } else {
            ""
        },
    );
    print_point(a, p, &heading, &rows);
    Ok((rows, failed))
}

/// One floor row (`floor`, `floor-throughput-tN`, `floor-prefetch-D`) of one axis point.
fn measure_floor(
    a: &RunArgs,
    plan: &Plan,
    p: &AxisPoint<'_>,
    labels: &PointLabels,
    netns: Option<&NetNs>,
    progress: &Progress,
    s: Scenario,
) -> Result<ScenarioResult, floor::FloorError> {
    let (kind, samples, warm, total, what) = match s {
        Scenario::FloorThroughput { threads } => (
            FloorKind::Throughput { threads },
            plan.tp_faults,
            0,
            plan.tp_faults.div_ceil(threads) * threads,
            format!(
                "{threads} faulting threads, one handler: up to 64 uffd events per read, one \
                 send for their 16-byte requests, each 4 KiB reply installed with UFFDIO_COPY \
                 as it arrives"
            ),
        ),
        Scenario::FloorPrefetch { depth } => (
            FloorKind::Prefetch { depth },
            plan.tp_faults,
            0,
            plan.tp_faults,
            format!(
                "one thread reads pages in order; a fault requests its aligned {depth}-page \
                 block, installed with one UFFDIO_COPY; every touch is a sample"
            ),
        ),
        _ => (
            FloorKind::Latency,
            a.samples(),
            warmup(a.samples()),
            a.samples(),
            "uffd read, 16-byte request, 4 KiB reply, UFFDIO_COPY".to_string(),
        ),
    };
    let label = s.label();
    progress.begin(
        &format!("{label} [{} {}]", labels.tname, p.idle),
        total as u64,
    );
    let hlog = a.hlog.as_ref().map(|dir| {
        (
            engine::histlog::HistLog::new(
                dir.join(format!("{label}.{}.hlog", labels.suffix)),
                vec![format!(
                    "fault-latency {label} ({}): {what}; ns as the faulting thread sees it",
                    labels.suffix
                )],
            ),
            label.clone(),
        )
    });
    let mut rec = Recorder::new(progress, a.breakdown, total, hlog);
    let o = FloorOpts {
        kind,
        samples,
        warmup: warm,
        fault_cpus: p.fault_cpus,
        handler_cpu: p.shard_cpus[0],
        home_cpu: a.placement.helper_cpu,
        idle: p.idle,
        netns,
        trace: a.breakdown,
    };
    let r = floor::run(&o, &mut rec);
    progress.end();
    let traces = r?;
    let bd = a
        .breakdown
        .then(|| breakdown::compute(rec.samples(), &traces, 0));
    Ok(labels.result(s, &rec, bd))
}

/// Starts a cluster and runs every cluster scenario of the plan on it; returns the transport
/// line, the rows, and whether any scenario failed.
fn cluster_rows(
    a: &RunArgs,
    plan: &Plan,
    p: &AxisPoint<'_>,
    labels: &PointLabels,
    netns: Option<&NetNs>,
    progress: &Progress,
) -> Result<(String, Vec<ScenarioResult>, bool), ClusterError> {
    let opts = ClusterOpts {
        memory: plan.memory(),
        transport: p.transport,
        auth: p.auth,
        idle: p.idle,
        helper_idle: a.helper_idle,
        shard_cpus: p.shard_cpus.to_vec(),
        helper_cpu: a.placement.helper_cpu,
        connect_timeout: a.connect_timeout,
        trace: a.breakdown,
    };
    let mut cluster = Cluster::start(&opts, netns)?;
    if a.rss {
        emit(a, &rss_line(&cluster, "after formation"));
    }
    let transport_line = cluster.transport_line.clone();
    let ranges = cluster.node.cluster().ranges();
    let range_of = |id: usize| {
        ranges
            .iter()
            .find(|r| usize::from(r.0) == id)
            .map_or(PageCursor::new(0, 0), |r| PageCursor::new(r.1, r.2))
    };
    let mut rows = Vec::new();
    let mut failed = false;
    {
        let mut ctx = Ctx {
            cluster: &mut cluster,
            progress,
            fault_cpus: p.fault_cpus.to_vec(),
            samples: a.samples(),
            warmup: warmup(a.samples()),
            tp_faults: plan.tp_faults,
            local: range_of(0),
            remote: range_of(1),
            homes: (2..=plan.homes).map(range_of).collect(),
            keep_samples: a.breakdown,
            hlog: a.hlog.as_ref().map(|d| (d.clone(), labels.suffix.clone())),
        };
        let mut cursor = 0u64;
        for &s in plan.scenarios.iter().filter(|s| s.needs_cluster()) {
            let total = match s {
                Scenario::Throughput { threads } => plan.tp_faults.div_ceil(threads) * threads,
                Scenario::Prefetch { threads, .. } => plan.tp_faults.div_ceil(threads) * threads,
                _ => a.samples(),
            };
            progress.begin(
                &format!("{} [{} {}]", s.label(), labels.tname, p.idle),
                total as u64,
            );
            let r = ctx.run(s);
            progress.end();
            match r {
                Ok(rec) => {
                    let bd = a
                        .breakdown
                        .then(|| cluster_breakdown(&mut ctx, &rec, &mut cursor));
                    rows.push(labels.result(s, &rec, bd));
                }
                Err(e) => {
                    eprintln!("fault-latency: {}: {e}", s.label());
                    failed = true;
                    if matches!(e, ScenarioError::Cluster(_)) {
                        // A helper is gone: the rest of this point cannot run.
                        break;
                    }
                }
            }
        }
    }
    if a.rss {
        emit(a, &rss_line(&cluster, "after the last row"));
    }
    cluster.stop();
    Ok((transport_line, rows, failed))
}

/// Node 0's shard records since `cursor` matched with the samples, plus what the helper
/// nodes timed of their answers.
fn cluster_breakdown(
    ctx: &mut Ctx<'_>,
    rec: &Recorder<'_>,
    cursor: &mut u64,
) -> breakdown::Breakdown {
    let mut traces: Vec<FaultTrace> = Vec::new();
    let mut missed = 0;
    if let Some(r) = ctx.cluster.node.traces().first() {
        missed = r.faults.read_since(cursor, &mut traces);
    }
    let mut b = breakdown::compute(rec.samples(), &traces, missed);
    match ctx.cluster.served() {
        Ok(v) => b.answered = v.into_iter().filter(|x| x.1 > 0).collect(),
        Err(e) => eprintln!("fault-latency: {e}"),
    }
    b
}

/// Prints one axis point: the table, the breakdowns, and the JSON lines.
fn print_point(a: &RunArgs, p: &AxisPoint<'_>, heading: &str, rows: &[ScenarioResult]) {
    let mut out = report::table(heading, rows);
    for r in rows {
        if let Some(b) = &r.breakdown {
            out.push('\n');
            out.push_str(&breakdown::render(
                &format!(
                    "{} [{}/{} {}]",
                    r.scenario.label(),
                    transport_name(p.transport),
                    p.auth,
                    p.idle
                ),
                b,
            ));
        }
    }
    emit(a, &out);
    if a.json {
        let floor = rows.iter().find(|r| r.scenario == Scenario::Floor);
        for r in rows {
            println!("{}", report::json(r, floor, report::rate_floor_of(r, rows)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse_and_this_process_has_a_resident_set() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nVmRSSx: 1 kB\n";
        assert_eq!(proc_kib(status, "VmRSS"), Some(1024));
        assert_eq!(proc_kib(status, "VmHWM"), Some(2048));
        assert_eq!(proc_kib(status, "Pss"), None);
        let me = Resident::of("self").expect("own /proc status");
        assert!(me.rss_kib.is_some_and(|k| k > 0), "{me:?}");
        assert!(me.hwm_kib >= me.rss_kib);
        let gone = Resident::of("0");
        assert!(
            gone.as_ref().is_err_and(|e| e.contains("/proc/0/status")),
            "no such process: an error naming the file, no number: {gone:?}"
        );
        assert!(render(gone).starts_with("unreadable ("));
        assert_eq!(gib(64 << 30), "64.00 GiB");
        assert_eq!(gib(3 << 20), "3.0 MiB");
    }
}
