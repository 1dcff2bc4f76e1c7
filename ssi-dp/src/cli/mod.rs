//! The `ssi-dp` command line: run a node (the default), `demo` (a local cluster), and the
//! tools around them.

mod acpi_cmd;
mod check_host;
mod child;
mod demo;
mod docs_cmd;
mod exit;
mod inventory_cmd;
mod leave;
mod node_cmd;
mod peer_arg;
mod preflight;
mod settings;
mod supervisor;
mod up;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::workload::Kind;
use engine::idle::IdlePolicy;
use engine::node::TransportKind;

/// ssi-dp: the data plane of a single-system-image hypervisor.
#[derive(Debug, Parser)]
#[command(
    name = "ssi-dp",
    version = control::build::VERSION_LINE,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local cluster on loopback (child processes), run a workload that exercises
    /// read sharing, write invalidation and contended atomics, check it, print per-node fault
    /// counts and latency percentiles.
    Demo(demo::DemoArgs),
    /// Write the ACPI tables (RSDP, XSDT, FADT, DSDT, MADT, SRAT, SLIT, HMAT) of a described
    /// topology into a directory, for inspection (`iasl -d DIR/*.dat`). See docs/acpi.md.
    Acpi(acpi_cmd::AcpiArgs),
    /// Bring up the nodes an inventory lists for this host (all of them for a local inventory)
    /// as child processes; stops them on Ctrl-C or when the cluster is stopped.
    Up(up::UpArgs),
    /// Create a cluster CA and one certificate per node for the control plane's mutual TLS.
    Certs(up::CertsArgs),
    /// Serve the REST API without being a node and form clusters on request: `POST /cluster`
    /// with an inventory starts its nodes for this host, `DELETE /cluster` stops them.
    Supervisor(supervisor::SupervisorArgs),
    /// Make a node leave a running cluster in order, through any member's REST API
    /// (`DELETE /nodes/{id}`); a node that homes memory first hands its pages to another home
    /// (needs --placement on). Waits for the answer.
    Leave(leave::LeaveArgs),
    /// Inventory tools: `ssi-dp inventory check FILE` checks an inventory (TOML or YAML) as a
    /// node would before starting, and names the line of an error.
    #[command(subcommand)]
    Inventory(inventory_cmd::InventoryCmd),
    /// Check this host's tuning for data-plane cores (docs/tuning.md: PM QoS, isolcpus /
    /// nohz_full / rcu_nocbs, IRQ affinity, userfaultfd, io_uring, memlock, busy polling, THP,
    /// ...): each item ok, change (with the command) or cannot check (with why). Exit 0 when
    /// ready for --idle spin, 1 when something should change; --fix applies the run-time fixes.
    CheckHost(check_host::CheckHostArgs),
    /// Print a shell completion script for ssi-dp (bash, zsh, fish, elvish, powershell); see
    /// docs/operations.md for where to install it.
    Completions(docs_cmd::CompletionsArgs),
    /// Print the ssi-dp(1) man page, or with DIR write it and one page per subcommand
    /// (ssi-dp-demo.1, ...) into DIR.
    Man(docs_cmd::ManArgs),
}

/// Running one node.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's id (0..63).
    #[arg(long)]
    pub node_id: Option<u32>,
    /// Address to listen on for peers, HOST:PORT.
    #[arg(long)]
    pub listen: Option<String>,
    /// A listening socket inherited from the parent (used by `ssi-dp demo` and tests).
    #[arg(long, hide = true)]
    pub listen_fd: Option<i32>,
    /// A peer: ID@HOST:PORT, or ID@HOST:PORT,mem=SIZE when its contribution differs from
    /// --memory. Repeat for every other node.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// Guest memory this node contributes (K/M/G/T suffixes; 0 for a compute-only node).
    #[arg(long, default_value = "64M")]
    pub memory: String,
    /// Data-plane cores, one shard pinned to each (cpulist syntax: 2-5,8).
    #[arg(long, default_value = "0")]
    pub cores: String,
    /// Do not pin shard threads to their cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Start even when --memory is more than this host has available (MemAvailable): the
    /// guest region is reserved, not allocated, so this works as long as the guest does not
    /// touch it all.
    #[arg(long)]
    pub allow_overcommit: bool,
    /// What an idle shard does: spin, hybrid (spin 50us then sleep), hybrid:<us>, block.
    #[arg(long, default_value = "hybrid")]
    pub idle: IdlePolicy,
    /// Transport: auto (io_uring when it works here, or epoll; and RDMA verbs for each peer
    /// that offers them where a device is ready), uring, fallback (epoll), verbs (RDMA for
    /// every peer; refused with the reason where there is no device).
    #[arg(long, default_value = "auto")]
    pub transport: TransportKind,
    /// Send page payloads with io_uring SEND_ZC. Off by default: for 4 KiB pages one copying
    /// vectored send per flush is cheaper (docs/wire.md); try it with a NIC that benefits.
    #[arg(long)]
    pub zero_copy: bool,
    /// File holding the cluster secret (at least 16 bytes; the same on every node).
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Protection of data frames after the handshake: mac (default: every frame
    /// authenticated, AES-256-GCM as a MAC), aead (also encrypts page contents) or none.
    /// Every node must use the same; overrides the inventory's frame_auth.
    #[arg(long)]
    pub frame_auth: Option<wire::FrameAuth>,
    /// Seconds to wait for every peer to connect.
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,
    /// Residency window in microseconds (0: off).
    #[arg(long, default_value_t = 0)]
    pub residency_us: u64,
    /// Ping-pong damping: a page taken from this node within 1 ms of acquiring it is held
    /// this many microseconds the next time, doubling each time it happens again, up to 8
    /// times (0: off). See docs/protocol.md §9.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub ping_pong_hold_us: u64,
    /// Serve the REST API (`/nodes`, `/pages/{gpa}`, `/metrics`, `/heatmap`, ...) on
    /// HOST:PORT. `--metrics-addr` is the same.
    #[arg(long, alias = "metrics-addr")]
    pub api_addr: Option<String>,
    /// Bearer token for the API's mutating endpoints (every method but GET and HEAD), one
    /// line of at least 16 characters; without it those endpoints answer 403. Overrides the
    /// inventory's api_token_file.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// The API's read-only endpoints need the token too.
    #[arg(long, requires = "api_token_file")]
    pub api_read_auth: bool,
    /// Take every setting of node --node-id from this inventory (TOML or YAML, by extension;
    /// see docs/operations.md).
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// Run the control plane (heartbeats, failure detection, join/leave) on HOST:PORT, with
    /// mutual TLS; every --peer then needs control=HOST:PORT.
    #[arg(long)]
    pub control: Option<String>,
    /// The cluster CA certificate (PEM) for the control plane.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), valid for node-<id>.ssi-dp.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Heartbeat period of the control plane, in ms.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Heartbeat silence before a node is suspected, in ms.
    #[arg(long, default_value_t = 500)]
    pub suspect_ms: u64,
    /// Silence before a node is declared dead, in ms: no heartbeat (control plane), or a
    /// data connection to it broken (reset, link down) and not restored for this long. 0: a
    /// broken data connection is the node's death at once.
    #[arg(long, default_value_t = 1500)]
    pub dead_ms: u64,
    /// Join a running cluster: wait on the control port until a member admits this node
    /// (POST /nodes on any member's API), then start with the cluster it announces.
    #[arg(long)]
    pub join_wait: bool,
    /// After --workload / --guest finishes, keep serving this many seconds (e.g. for a
    /// metrics scrape) before exiting; a signal or a cluster stop ends it earlier.
    #[arg(long, default_value_t = 0)]
    pub linger_secs: u64,
    /// Log lines for people (`human`) or as JSON objects (`json`).
    #[arg(long, default_value = "human")]
    pub log_format: crate::logging::LogFormat,
    /// Which log events to write: directives in RUST_LOG's syntax, e.g. `warn`,
    /// `info,engine=debug` or `control::membership=trace` (default: RUST_LOG when set, else
    /// `info`). See docs/operations.md.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Also log debug events (the same as --log debug).
    #[arg(long)]
    pub verbose: bool,
    /// Trace every protocol step on the page holding this guest-physical address (decimal or
    /// 0x hex; repeatable, up to 16): one log event per step with its transaction id.
    #[arg(long = "trace-page")]
    pub trace_pages: Vec<String>,
    /// Sequential prefetch: a remote read miss that continues a run of pages also requests
    /// the next N-1 pages (up to 64; 0 or 1: off). See docs/tuning.md.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub prefetch: u32,
    /// Bound on the memory of other homes this node keeps (read-only replicas and pages it
    /// owns writable), e.g. 64M (K/M/G suffixes, at least one 4 KiB page; 0: no bound).
    /// Beyond it the pages acquired least recently are evicted. See docs/operations.md.
    #[arg(long, default_value = "0")]
    pub replica_cache: String,
    /// Page placement: `off` keeps every page's home where the layout puts it; `on` moves a
    /// page's home to the node that uses it most (home migration). Every node must use the
    /// same setting. See docs/operations.md.
    #[arg(long, default_value = "off", value_parser = ["off", "on"])]
    pub placement: String,
    /// Address space to reserve for growth (nodes joining), e.g. 1T.
    #[arg(long, default_value = "256G")]
    pub max_address_space: String,
    /// Write HDR histogram interval logs of fault service times here at exit and on SIGUSR1.
    #[arg(long)]
    pub hist_dump: Option<PathBuf>,
    /// With --hist-dump: also record an interval (and rewrite the file) every this many
    /// seconds (0: only at exit and on SIGUSR1).
    #[arg(long, default_value_t = 0, requires = "hist_dump")]
    pub hist_interval: u64,
    /// Run a built-in workload, check its result and exit: counters, lock, seqs, pingpong,
    /// demo, scan, private; and, reporting their miss ratio after warm-up: partition,
    /// readmostly, queue, zipf.
    #[arg(long, conflicts_with = "guest")]
    pub workload: Option<Kind>,
    /// Run a test guest across the cluster (one KVM VM per node, vCPUs spread over the
    /// nodes), check its result and exit: test:atomics, test:ticket-lock, test:parallel-sum,
    /// test:fault-latency.
    #[arg(long)]
    pub guest: Option<String>,
    /// vCPUs of the guest (default: one per participating node).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// vCPU ids this node runs (cpulist syntax, or `none` to only serve memory; default:
    /// vCPU i runs on the participant of rank i mod participants).
    #[arg(long)]
    pub local_vcpus: Option<String>,
    /// CPUs to pin this node's vCPU threads to (cpulist; default: not pinned).
    #[arg(long)]
    pub vcpu_cores: Option<String>,
    /// Rounds or lock acquisitions per vCPU for the atomics and ticket-lock guests.
    #[arg(long, default_value_t = 2000)]
    pub guest_iterations: u64,
    /// Pages each vCPU of the fault-latency guest touches once (its slice; the guest's data
    /// span must hold one slice per vCPU). At most 3 836: each touch's sample travels to the
    /// other nodes in the vCPU's report slot.
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::guest::MAX_TOUCH_PAGES)))]
    pub guest_touch_pages: u32,
    /// Stop the guest's vCPUs after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub guest_timeout: u64,
    /// Boot this Linux kernel (bzImage or vmlinux) over the cluster's memory, with --vcpus
    /// vCPUs placed like a test guest's (vCPU 0 on the node homing page 0, which also has the
    /// devices) and ACPI tables describing the cluster; the run ends when the guest powers
    /// off. Needs hardware KVM (on PVM hosts Linux stops in early boot).
    #[arg(long, conflicts_with_all = ["guest", "workload"])]
    pub kernel: Option<PathBuf>,
    /// End a --kernel run with a failure when a vCPU stays this many seconds inside KVM_RUN
    /// without a single exit: it is blocked in the kernel (a running Linux exits hundreds of
    /// times a second), most likely on a page no node delivers (a stopped or hung peer).
    #[arg(long, requires = "kernel", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub vcpu_stall_secs: u64,
    /// Initrd for --kernel.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel.
    #[arg(long, requires = "kernel", default_value = vmm::launch::DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Console text that marks the end of the guest's boot, for the boot / workload split
    /// of the run's summary (the default is a KERN_INFO message: it shows only with
    /// loglevel 7 or more).
    #[arg(long, requires = "kernel", default_value = crate::guest_linux::DEFAULT_INIT_MARKER)]
    pub init_marker: String,
    /// Kernel entry: pvh (the vmlinux inside a bzImage, or a vmlinux) or bzimage (64-bit boot
    /// protocol).
    #[arg(long, requires = "kernel", default_value = "pvh")]
    pub boot: String,
    /// Write the ACPI tables of this cluster (from the formation measurements) into DIR, one
    /// file per table.
    #[arg(long)]
    pub acpi_dump: Option<PathBuf>,
    /// Operations per worker thread (private: rounds, 0 = until killed).
    #[arg(long, default_value_t = 1000)]
    pub ops: u64,
    /// Worker threads on this node.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Nodes that run the workload and meet at its barriers (cpulist syntax over node ids;
    /// default: every node).
    #[arg(long)]
    pub participants: Option<String>,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo(a)) => demo::run(a),
        Some(Command::Acpi(a)) => acpi_cmd::run(a),
        Some(Command::Up(a)) => up::run(a),
        Some(Command::Certs(a)) => up::certs(a),
        Some(Command::Supervisor(a)) => supervisor::run(a),
        Some(Command::Leave(a)) => leave::run(a),
        Some(Command::Inventory(c)) => inventory_cmd::run(c),
        Some(Command::CheckHost(a)) => check_host::run(a),
        Some(Command::Completions(a)) => docs_cmd::completions(a),
        Some(Command::Man(a)) => docs_cmd::man(a),
        None => node_cmd::run(cli.node),
    }
}
