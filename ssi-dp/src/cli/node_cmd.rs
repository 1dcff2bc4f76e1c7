//! `ssi-dp --node-id N --listen ... --peer ...`: run one node until stopped, or run a
//! built-in workload on it and exit with its verdict.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coherence::FatalReason;
use control::handle::MembershipOps;
use control::membership::msg::NodeInfo;
use control::membership::{self, Membership, MembershipConfig};

use super::exit::{self, PauseWatch};
use super::settings::{self, Settings};
use super::NodeArgs;
use crate::acpi_topology::AcpiTopologyError;
use crate::control_glue::{Glue, NoControlPlane};
use crate::guest::GuestRunError;
use crate::guest_linux::LinuxRunError;
use crate::workload::{self, Progress, Spec, WorkloadError};
use crate::{guest, logging, signals};
use engine::config::{self, ClusterSpec, ConfigError, NodeSpec};
use engine::cpulist::CpuListError;
use engine::histlog::HistLog;
use engine::measure::Figures;
use engine::node::{Node, NodeConfig};
use engine::node_state::StopReason;
use engine::{cpulist, summary};

/// How long a node stopped by the control plane keeps running before it exits.
const STOP_GRACE: Duration = Duration::from_millis(300);
/// How long a home's death waits for a cluster stop that would explain it (the home may have
/// stopped in order, its stop message still on the way here).
const STOP_RACE: Duration = Duration::from_secs(1);

/// Why a node could not start its job, or what stopped the job.
#[derive(Debug, thiserror::Error)]
pub enum NodeCmdError {
    /// The bound data-plane listener has no local address.
    #[error(transparent)]
    ListenerAddr(std::io::Error),
    /// The member that admitted this node left it out of the cluster.
    #[error("the admitting member did not list this node")]
    NotListed,
    /// The member that admitted this node has another memory size for it.
    #[error("admitted with {admitted} bytes of memory but configured with {configured}")]
    MemoryMismatch {
        /// What the cluster expects.
        admitted: u64,
        /// `--memory`.
        configured: u64,
    },
    /// An address or the admitted cluster is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--boot` names no entry protocol.
    #[error("--boot {0:?}: use pvh or bzimage")]
    UnknownBoot(String),
    /// `--local-vcpus` is invalid.
    #[error("--local-vcpus: {0}")]
    LocalVcpus(#[source] CpuListError),
    /// `--vcpu-cores` is invalid.
    #[error("--vcpu-cores: {0}")]
    VcpuCores(#[source] CpuListError),
    /// `--guest` names no test guest.
    #[error(transparent)]
    Guest(#[from] vmm::launch::LaunchError),
    /// The job's thread could not start.
    #[error(transparent)]
    Spawn(std::io::Error),
    /// The address space has no room for a host area (`--acpi-dump`).
    #[error("the address space is too small")]
    AddressSpaceTooSmall,
    /// The cluster's ACPI description could not be built.
    #[error(transparent)]
    Acpi(#[from] AcpiTopologyError),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    AcpiDump(#[from] acpi::DumpError),
    /// The workload could not run.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The test guest could not run.
    #[error(transparent)]
    GuestRun(#[from] GuestRunError),
    /// The Linux guest could not run.
    #[error(transparent)]
    LinuxRun(#[from] LinuxRunError),
    /// A home left after the final check but the job published no result.
    #[error("no report")]
    NoReport,
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    tracing::error!("{msg}");
    exit::USAGE
}

/// Runs a node; returns the exit code.
pub fn run(a: NodeArgs) -> i32 {
    if let Err(e) = logging::init(a.log_format, a.log.as_deref(), a.verbose) {
        eprintln!("ssi-dp: error: {e}");
        return exit::USAGE;
    }
    if let Some(id) = a.node_id.and_then(|i| u16::try_from(i).ok()) {
        logging::set_node(id);
    }
    // A service manager's socket is checked before anything starts (a bad one is a usage
    // error), and told when the node serves.
    let mut notify = match crate::sd_notify::Notifier::from_env() {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    if notify.active() {
        match notify.watchdog_interval() {
            Some(every) => tracing::info!(
                "service manager: readiness notification on; watchdog pinged every {} ms while \
                 the node is healthy",
                every.as_millis()
            ),
            None => tracing::info!("service manager: readiness notification on"),
        }
    }
    let mut s = match settings::resolve(&a) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    warn_if_pvm(&a);
    let me = s.id;
    let max_space = match config::parse_size(&a.max_address_space) {
        Ok(v) => v,
        Err(e) => return fail(format!("--max-address-space: {e}")),
    };
    let replica_cache = match config::parse_size(&a.replica_cache) {
        Ok(0) => 0,
        Ok(b) if b < config::PAGE_SIZE => {
            return fail(format!(
                "--replica-cache {}: less than one 4 KiB page; give at least 4K, or 0 for no bound",
                a.replica_cache
            ))
        }
        Ok(b) => b / config::PAGE_SIZE,
        Err(e) => return fail(format!("--replica-cache: {e}")),
    };
    let pause_threshold = s
        .control
        .as_ref()
        .map(|c| c.dead.saturating_sub(c.heartbeat));
    let mut control = s.control.take();
    // A joiner learns the cluster from the member that admits it.
    let mut admitted = None;
    let mut controls = s.controls();
    let cluster = if a.join_wait {
        let c = control
            .as_ref()
            .expect("settings require the control plane with --join-wait");
        tracing::info!(
            "waiting on {} to be admitted (POST /nodes on a member's API)",
            c.addr
        );
        let wait = Duration::from_secs(a.connect_timeout.max(300));
        let (nodes, link) = match membership::wait_for_admission(&c.listener, &c.tls, wait) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("{e}");
                return exit::FAILED;
            }
        };
        admitted = Some(link);
        controls = nodes.iter().map(|n| (n.id, n.control.clone())).collect();
        match cluster_of(me, &s, &nodes) {
            Ok(c) => c,
            Err(e) => return fail(e),
        }
    } else {
        match s.cluster() {
            Ok(c) => c,
            Err(e) => return fail(e),
        }
    };
    let listen_addr = s
        .listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let participants = match &a.participants {
        None => cluster.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        Some(list) => {
            match cpulist::parse(list) {
                Ok(v) => {
                    let mut v: Vec<u16> = v.into_iter().map(|x| x as u16).collect();
                    v.sort_unstable();
                    let unknown = v
                        .iter()
                        .find(|&&x| !cluster.nodes.iter().any(|n| n.id == x));
                    match (unknown, control.is_some()) {
                    (Some(x), false) => {
                        return fail(format!("--participants names node {x}, which is not in the cluster"))
                    }
                    (Some(x), true) => tracing::info!("participant {x} is not a member yet; the workload waits for it to join"
                    ),
                    _ => {}
                }
                    v
                }
                Err(e) => return fail(format!("--participants: {e}")),
            }
        }
    };
    let cores = s.cores.clone();
    tracing::info!(
        "listening on {listen_addr}; layout {} (digest {}); cores {} ({}); idle {}; frames {}; \
         node identity {}",
        cluster.describe(),
        cluster.digest(),
        cpulist::format(&s.cores),
        if a.no_pin { "not pinned" } else { "pinned" },
        s.idle,
        s.frame_auth,
        if s.identity.is_some() {
            "by certificate"
        } else {
            "by cluster secret only"
        }
    );
    let mut cfg = NodeConfig::new(cluster, s.listener, s.secret);
    cfg.cores = cores;
    cfg.pin = !a.no_pin;
    cfg.idle = s.idle;
    cfg.transport = a.transport;
    cfg.zero_copy = a.zero_copy;
    cfg.frame_auth = s.frame_auth;
    cfg.identity = s.identity.clone().map(|p| {
        Arc::new(crate::data_identity::DataIdentity(p)) as Arc<dyn wire::handshake::NodeIdentity>
    });
    cfg.connect_timeout = Duration::from_secs(a.connect_timeout);
    // One failure timeout for the whole node: the control plane's heartbeat silence, and how
    // long a broken data connection may take to come back.
    cfg.resume_window = s
        .control
        .as_ref()
        .map_or(Duration::from_millis(a.dead_ms), |c| c.dead);
    cfg.protocol.residency_ns = a.residency_us * 1000;
    cfg.protocol.ping_pong_hold_ns = a.ping_pong_hold_us * 1000;
    cfg.max_address_space = max_space;
    cfg.prefetch = a.prefetch;
    cfg.replica_cache = replica_cache;
    cfg.protocol.migration = a.placement == "on";
    for t in &a.trace_pages {
        let gpa = match t
            .strip_prefix("0x")
            .map(|h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|| t.parse())
        {
            Ok(v) => v,
            Err(_) => {
                return fail(format!(
                    "--trace-page {t:?}: use a decimal or 0x-prefixed address"
                ))
            }
        };
        cfg.trace_pages.push(gpa / config::PAGE_SIZE);
    }
    if cfg.trace_pages.len() > engine::node::MAX_TRACED_PAGES {
        return fail(format!(
            "--trace-page: at most {} pages",
            engine::node::MAX_TRACED_PAGES
        ));
    }
    // Formation measurements are an exchange among the founding nodes; a joiner has none.
    cfg.measure = admitted.is_none();
    let forming = Instant::now();
    let node = match Node::start(cfg) {
        Ok(n) => Arc::new(n),
        Err(e) => {
            tracing::error!("{e}");
            return if e.is_setup() {
                exit::USAGE
            } else {
                exit::FAILED
            };
        }
    };
    // Watching for this node's own pauses starts at formation: a stop while the rest of the
    // node starts up (control plane, API, workload) can get it declared dead as well.
    let mut pause = PauseWatch::new(pause_threshold);
    tracing::info!(
        formed_in_s = forming.elapsed().as_secs_f64(),
        "{}; cluster formed, serving",
        node.transport_line()
    );
    if let Some(f) = node.figures() {
        tracing::info!(
            "measured 4 KiB fetch latency in ns (rows from, columns to, nodes {:?}): {}",
            f.nodes,
            Figures::matrix_arg(&f.latency_ns)
        );
        tracing::info!(
            "measured bandwidth in MB/s (streamed over the link from column to row; diagonal: \
             local 4 KiB copies): {}",
            Figures::matrix_arg(&f.bandwidth_mbps)
        );
    }
    if let Some(dir) = &a.acpi_dump {
        if let Err(e) = acpi_dump(&node, &a, &participants, dir) {
            tracing::error!("--acpi-dump: {e}");
            return exit::FAILED;
        }
    }
    if let Err(e) = signals::install() {
        tracing::warn!("cannot install signal handlers: {e}");
    }
    let glue = Glue::new(node.clone(), controls);
    let membership = match control.take() {
        None => None,
        Some(c) => {
            let info = NodeInfo {
                id: me,
                addr: listen_addr.clone(),
                control: c.addr.clone(),
                memory: s.memory,
            };
            let cfg = MembershipConfig {
                me: info,
                listener: c.listener,
                heartbeat: c.heartbeat,
                suspect: c.suspect,
                dead: c.dead,
                tls: c.tls,
                admitted_by: admitted.take(),
            };
            match Membership::start(cfg, glue.clone()) {
                Ok(m) => {
                    let m = Arc::new(m);
                    glue.set_membership(m.clone());
                    tracing::info!("control plane on {} (mutual TLS)", c.addr);
                    Some(m)
                }
                Err(e) => {
                    tracing::error!("control plane: {e}");
                    return exit::FAILED;
                }
            }
        }
    };
    let _api = match &s.api {
        None => None,
        Some(addr) => {
            let ops: Arc<dyn MembershipOps> = match &membership {
                Some(m) => m.clone(),
                None => Arc::new(NoControlPlane),
            };
            match control::api::serve(addr, glue.clone(), ops, s.api_auth.clone()) {
                Ok(api) => {
                    tracing::info!("REST API on {}", api.addr());
                    Some(api)
                }
                Err(e) => {
                    tracing::error!("{e}");
                    return exit::USAGE;
                }
            }
        }
    };
    let mut hlog = a.hist_dump.as_ref().map(|p| {
        HistLog::new(
            p,
            vec![format!(
                "ssi-dp node {me}: fault service time in ns (userfaultfd read to install)"
            )],
        )
    });

    notify.ready(&format!(
        "node {me} serving in a cluster of {} node(s){}",
        node.cluster().nodes.len(),
        s.api
            .as_deref()
            .map(|a| format!("; API on {a}"))
            .unwrap_or_default()
    ));
    let progress = Arc::new(Progress::default());
    let extras = Arc::new(std::sync::Mutex::new(guest::GuestExtras::default()));
    let job = match job(&a, &node, &participants, &progress, &extras) {
        Ok(j) => j,
        Err(e) => return fail(e),
    };
    let (label, worker) = match job {
        Some((l, w)) => (l, Some(w)),
        None => (String::new(), None),
    };
    let mut worker = worker;
    let mut code = exit::OK;
    let mut death_seen: Option<Instant> = None;
    let mut dumps = DumpTimer {
        every: (a.hist_interval > 0).then(|| Duration::from_secs(a.hist_interval)),
        last: std::time::Instant::now(),
    };
    loop {
        std::thread::sleep(Duration::from_millis(10));
        pause.tick();
        notify.tick(Instant::now(), healthy(&node));
        dumps.tick(&mut hlog, &node);
        if node.state().cluster_stop_requested() {
            tracing::info!("stopping: asked by the control plane");
            // Let the answer to the API request that stopped the cluster, and the stop
            // messages to the other nodes, go out before this node's connections close.
            node.state().expect_departures();
            std::thread::sleep(STOP_GRACE);
            break;
        }
        if let Some(reason) = node.state().fatal() {
            if let StopReason::Protocol(FatalReason::HomeDied(home)) = reason {
                if progress.verified.load(Ordering::SeqCst) {
                    tracing::info!("node {home} left after the final check; finishing");
                    let report = progress.report.lock().ok().and_then(|mut r| r.take());
                    code = print_report(me, &label, report.ok_or(NodeCmdError::NoReport));
                    break;
                }
                // A home stopping in order closes its connections STOP_GRACE after the
                // cluster stop went out; on a loaded host the stop can reach us later than
                // that. Give it time to arrive before calling the closure a death.
                if death_seen.get_or_insert_with(Instant::now).elapsed() < STOP_RACE {
                    continue;
                }
            }
            // Read the clock again: a stop may have landed between the tick and the read.
            pause.tick();
            let (c, line) = exit::explain(reason, pause.declared_dead(), &node.layout());
            tracing::error!("{line}");
            code = c;
            break;
        }
        if signals::stop_requested() {
            tracing::info!("stopping on signal");
            break;
        }
        if worker.as_ref().is_some_and(|w| w.is_finished()) {
            let w = worker.take().expect("checked above");
            code = match w.join() {
                Ok(r) => print_report(me, &label, r),
                Err(_) => {
                    tracing::info!("the workload thread panicked");
                    exit::FAILED
                }
            };
            break;
        }
    }
    if a.linger_secs > 0 && !signals::stop_requested() && !node.state().cluster_stop_requested() {
        tracing::info!("serving for {} more seconds (--linger-secs)", a.linger_secs);
        let until = std::time::Instant::now() + Duration::from_secs(a.linger_secs);
        while std::time::Instant::now() < until
            && !signals::stop_requested()
            && !node.state().cluster_stop_requested()
        {
            std::thread::sleep(Duration::from_millis(20));
            notify.tick(Instant::now(), healthy(&node));
            dumps.tick(&mut hlog, &node);
        }
    }
    notify.stopping(&format!("node {me} stopping (exit code {code})"));
    node.state().expect_departures();
    if let (Some(h), Some(lat)) = (
        &mut hlog,
        extras.lock().ok().and_then(|e| e.latency_ns.clone()),
    ) {
        h.add_series("guest-first-touch", lat);
    }
    dump(&mut hlog, &node);
    println!("{}", summary::render(me, node.stats()));
    // Threads still blocked in guest memory (a workload stopped by a failure) cannot be
    // joined; the process exit ends them.
    std::process::exit(code);
}

/// Whether the service manager's watchdog may be pinged: the data plane has not stopped on
/// a failure and no shard is stalled.
fn healthy(node: &Node) -> bool {
    node.state().fatal().is_none()
        && node
            .stats()
            .iter()
            .all(|s| !s.stalled.load(Ordering::Relaxed))
}

/// The cluster a joiner was admitted into, seen from node `me`.
fn cluster_of(me: u16, s: &Settings, nodes: &[NodeInfo]) -> Result<ClusterSpec, NodeCmdError> {
    let listen = s
        .listener
        .local_addr()
        .map_err(NodeCmdError::ListenerAddr)?;
    let mine = nodes
        .iter()
        .find(|n| n.id == me)
        .ok_or(NodeCmdError::NotListed)?;
    if mine.memory != s.memory {
        return Err(NodeCmdError::MemoryMismatch {
            admitted: mine.memory,
            configured: s.memory,
        });
    }
    let mut peers = Vec::new();
    for n in nodes.iter().filter(|n| n.id != me) {
        let addr = config::resolve(n.id, &n.addr)?;
        peers.push(NodeSpec {
            id: n.id,
            addr,
            memory: n.memory,
        });
    }
    Ok(ClusterSpec::new(
        NodeSpec {
            id: me,
            addr: listen,
            memory: s.memory,
        },
        peers,
    )?)
}

type Job = std::thread::JoinHandle<Result<workload::Report, NodeCmdError>>;

/// Says up front when this host's KVM cannot boot Linux (the files were checked with the
/// settings, before the node listened).
fn warn_if_pvm(a: &NodeArgs) {
    if a.kernel.is_some() && vmm::launch::host_kvm_is_pvm() {
        tracing::warn!("{}", vmm::launch::PVM_NOTE);
    }
}

/// Starts what the node was asked to run besides serving (`--workload` or `--guest`), if
/// anything, on its own thread; returns its label and handle.
fn job(
    a: &NodeArgs,
    node: &Arc<Node>,
    participants: &[u16],
    progress: &Arc<Progress>,
    extras: &Arc<std::sync::Mutex<guest::GuestExtras>>,
) -> Result<Option<(String, Job)>, NodeCmdError> {
    let (node, progress) = (node.clone(), progress.clone());
    if let Some(kind) = a.workload {
        let spec = Spec {
            kind,
            ops: a.ops,
            workers: a.workers,
            participants: participants.to_vec(),
        };
        let h = std::thread::Builder::new()
            .name("workload".into())
            .spawn(move || Ok(workload::run(&node, &spec, &progress)?))
            .map_err(NodeCmdError::Spawn)?;
        return Ok(Some((format!("workload {}", kind.name()), h)));
    }
    if let Some(kernel) = &a.kernel {
        if !participants.contains(&node.id()) {
            // It must not count at the participants' barriers; it serves memory (and may
            // leave or die) like any member.
            tracing::info!(
                "not among the guest's participants {participants:?}: serving memory only"
            );
            return Ok(None);
        }
        let protocol = match a.boot.as_str() {
            "pvh" => vmm::linux::Protocol::Pvh,
            "bzimage" => vmm::linux::Protocol::BzImage64,
            other => return Err(NodeCmdError::UnknownBoot(other.to_string())),
        };
        let local_vcpus = match &a.local_vcpus {
            Some(l) if l == "none" => Some(Vec::new()),
            Some(l) => Some(
                cpulist::parse(l)
                    .map_err(NodeCmdError::LocalVcpus)?
                    .into_iter()
                    .map(|v| v as u32)
                    .collect(),
            ),
            None => None,
        };
        let spec = crate::guest_linux::LinuxSpec {
            args: vmm::launch::LinuxArgs {
                kernel: kernel.clone(),
                initrd: a.initrd.clone(),
                cmdline: a.cmdline.clone(),
                protocol,
            },
            vcpus: a.vcpus.unwrap_or(participants.len() as u32),
            local_vcpus,
            vcpu_cores: match &a.vcpu_cores {
                Some(l) => cpulist::parse(l).map_err(NodeCmdError::VcpuCores)?,
                None => Vec::new(),
            },
            timeout: Duration::from_secs(a.guest_timeout),
            stall: Duration::from_secs(a.vcpu_stall_secs),
            participants: participants.to_vec(),
            init_marker: a.init_marker.clone(),
        };
        let h = std::thread::Builder::new()
            .name("linux".into())
            .spawn(move || Ok(crate::guest_linux::run_linux(&node, &spec, &progress)?))
            .map_err(NodeCmdError::Spawn)?;
        return Ok(Some(("linux".into(), h)));
    }
    let Some(g) = &a.guest else { return Ok(None) };
    let guest = vmm::launch::parse_guest_arg(g)?;
    let vcpus = a.vcpus.unwrap_or(participants.len() as u32);
    let local_vcpus = match &a.local_vcpus {
        Some(l) if l == "none" => Vec::new(),
        Some(l) => cpulist::parse(l)
            .map_err(NodeCmdError::LocalVcpus)?
            .into_iter()
            .map(|v| v as u32)
            .collect(),
        None => guest::default_local_vcpus(vcpus, participants, node.id()),
    };
    let vcpu_cores = match &a.vcpu_cores {
        Some(l) => cpulist::parse(l).map_err(NodeCmdError::VcpuCores)?,
        None => Vec::new(),
    };
    let spec = guest::GuestSpec {
        guest,
        vcpus,
        local_vcpus,
        vcpu_cores,
        iterations: a.guest_iterations,
        touch_pages: a.guest_touch_pages,
        timeout: Duration::from_secs(a.guest_timeout),
        participants: participants.to_vec(),
    };
    let extras = extras.clone();
    let h = std::thread::Builder::new()
        .name("guest".into())
        .spawn(move || Ok(guest::run(&node, &spec, &progress, &extras)?))
        .map_err(NodeCmdError::Spawn)?;
    Ok(Some((format!("guest {}", guest.name()), h)))
}

/// Writes the cluster's ACPI tables (vCPUs dealt round-robin over the participants, as
/// `--guest` runs them by default).
fn acpi_dump(
    node: &Node,
    a: &NodeArgs,
    participants: &[u16],
    dir: &std::path::Path,
) -> Result<(), NodeCmdError> {
    let vcpus = a.vcpus.unwrap_or(participants.len() as u32);
    let area = engine::host_area::HostArea::of(node).ok_or(NodeCmdError::AddressSpaceTooSmall)?;
    let ram_end = area.start() / (2 << 20) * (2 << 20);
    let topology = guest::acpi_tables(node, ram_end, |id| {
        guest::default_local_vcpus(vcpus, participants, id)
    })?;
    let files = acpi::dump(&topology, dir)?;
    for f in files {
        tracing::info!("wrote {}", f.display());
    }
    Ok(())
}

/// Prints a job's verdict; returns the exit code it implies.
fn print_report(me: u16, label: &str, r: Result<workload::Report, NodeCmdError>) -> i32 {
    match r {
        Ok(r) => {
            println!(
                "node {me}: {label}: {}: {}",
                if r.ok { "OK" } else { "FAILED" },
                r.summary
            );
            if r.ok {
                0
            } else {
                exit::FAILED
            }
        }
        Err(e) => {
            tracing::info!("{label}: error: {e}");
            exit::FAILED
        }
    }
}

/// When the histogram log gets its next interval: on SIGUSR1, and every `--hist-interval`.
struct DumpTimer {
    every: Option<Duration>,
    last: std::time::Instant,
}

impl DumpTimer {
    fn tick(&mut self, hlog: &mut Option<HistLog>, node: &Node) {
        if signals::take_dump_request() {
            dump(hlog, node);
        } else if self.every.is_some_and(|d| self.last.elapsed() >= d) {
            // Timer dumps log only their failures.
            if let Some(h) = hlog {
                if let Err(e) = h.dump(&summary::series(node.stats())) {
                    tracing::warn!("{e}");
                }
            }
        } else {
            return;
        }
        self.last = std::time::Instant::now();
    }
}

fn dump(hlog: &mut Option<HistLog>, node: &Node) {
    if let Some(h) = hlog {
        match h.dump(&summary::series(node.stats())) {
            Ok(()) => tracing::info!("histograms written"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}
