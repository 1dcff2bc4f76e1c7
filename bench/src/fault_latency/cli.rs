//! The `fault-latency` command line: the run options (scenarios, axes, placement, outputs),
//! the `show` and `compare` commands for HDR logs, and the hidden roles the benchmark runs
//! its child processes in.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use engine::idle::IdlePolicy;
use engine::node::TransportKind;
use wire::FrameAuth;

/// Per-fault latency of the ssi-dp data plane, as the faulting thread sees it.
#[derive(Debug, Parser)]
#[command(
    name = "fault-latency",
    args_conflicts_with_subcommands = true,
    about = "Per-fault service time of ssi-dp as the faulting thread sees it, with a \
             hand-written floor, HDR logs, plots and a breakdown of where the time goes"
)]
pub struct Cli {
    /// A command other than running the benchmark.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of a run (the default command).
    #[command(flatten)]
    pub run: RunArgs,
}

/// Commands besides the default run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prints percentiles of HDR interval logs (files, or directories of `.hlog` files).
    Show {
        /// Logs written by `--hlog` (or any HDR V2 interval log).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compares two HDR logs (or two `--hlog` directories) series by series.
    Compare {
        /// The baseline.
        a: PathBuf,
        /// The candidate.
        b: PathBuf,
    },
    /// Plots HDR interval logs (files or `--hlog` directories) as one percentile curve each.
    Plot {
        /// Where to write the SVG.
        #[arg(long)]
        out: PathBuf,
        /// Second line of the title (machine, settings).
        #[arg(long, default_value = "")]
        subtitle: String,
        /// Logs written by `--hlog` (or any HDR V2 interval log).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// A helper node (started by the benchmark itself; driven over stdin/stdout).
    #[command(hide = true)]
    Node(RoleArgs),
    /// The floors' home: answers 16-byte requests with 4 KiB pages (started by the benchmark).
    #[command(hide = true)]
    FloorHome(FloorHomeArgs),
}

/// Which CPUs the threads of a run use.
#[derive(Debug, Clone, Args)]
pub struct Placement {
    /// CPUs of node 0's faulting threads (cpulist; threads are spread round-robin).
    #[arg(long, default_value = "0")]
    pub fault_cpus: String,
    /// CPUs of node 0's data-plane shards (cpulist: one shard per CPU, each reading its own
    /// userfaultfd); the floors' handler thread runs on the first.
    #[arg(long, default_value = "1")]
    pub shard_cpu: String,
    /// CPU of the helper nodes' shards (and of the floors' home process).
    #[arg(long, default_value_t = 0)]
    pub helper_cpu: usize,
}

/// Options of a run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// CI mode: a few hundred samples per scenario (checks the output, not the speed).
    #[arg(long)]
    pub quick: bool,
    /// Samples per latency scenario (default 10000; 300 with --quick).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Faults per throughput row (default 40000; 600 with --quick).
    #[arg(long)]
    pub tp_faults: Option<usize>,
    /// Faulting-thread counts of the throughput rows (and of their floors).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub threads: Vec<usize>,
    /// Scenarios to run: floor, local-zero, remote-read, remote-read-shared, remote-read-fwd,
    /// remote-write, upgrade, pingpong, throughput, prefetch, floor-throughput, floor-prefetch
    /// (default: all). `throughput` and `prefetch` bring their floors (floor-throughput-tN,
    /// floor-prefetch-D: hand-written, pipelined or block-wise, measured in the same run);
    /// name a floor alone to run only it.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Pages per sequential-prefetch trigger in the prefetch row (node 0's `--prefetch`), and
    /// the block size of its floor.
    #[arg(long, default_value_t = 16)]
    pub prefetch_depth: u32,
    /// Largest number of sharers a remote write invalidates (rows k = 0..=K; K+2 nodes).
    #[arg(long, default_value_t = 2)]
    pub max_sharers: usize,
    /// Transports to run (each is an axis value): auto, uring, fallback.
    #[arg(long, value_delimiter = ',', default_value = "uring")]
    pub transport: Vec<TransportKind>,
    /// Idle policies of node 0's shard (each is an axis value): spin, hybrid[:µs], block.
    #[arg(long, value_delimiter = ',', default_value = "spin")]
    pub idle: Vec<IdlePolicy>,
    /// Frame protection of every node (each is an axis value): none, mac, aead.
    #[arg(long, value_delimiter = ',', default_value = "mac")]
    pub auth: Vec<FrameAuth>,
    /// Idle policy of the helper nodes' shards (they share CPUs, so block by default).
    #[arg(long, default_value = "block")]
    pub helper_idle: IdlePolicy,
    /// CPU placement.
    #[command(flatten)]
    pub placement: Placement,
    /// Run every node in its own network namespace, joined by veth pairs to a bridge.
    #[arg(long)]
    pub netns: bool,
    /// Print one JSON object per scenario on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write an HDR V2 interval log per scenario into this directory.
    #[arg(long)]
    pub hlog: Option<PathBuf>,
    /// Write the percentile-distribution plot (SVG) to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Time each step of a fault (event read, request sent, reply received, installed).
    #[arg(long)]
    pub breakdown: bool,
    /// No progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Seconds to wait for the cluster to form.
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,
    /// The whole address space (bytes; K, M, G, T suffixes, e.g. 64G), up to 1T: node 1
    /// contributes what the scenarios do not use, reserved and never touched, so the rows
    /// fault on the same few pages of a larger, sparse space (default: only the pages the
    /// scenarios need).
    #[arg(long, value_parser = parse_bytes)]
    pub space: Option<u64>,
    /// Helper nodes that home the throughput rows' pages, 1 to 15: thread t's page i lives
    /// on node 1 + (t + i) mod K, and the cluster has at least K + 1 nodes (processes).
    /// Every helper shares --helper-cpu and its --helper-idle policy.
    #[arg(long, default_value_t = 1)]
    pub homes: usize,
    /// Print each node's resident memory (VmRSS, VmHWM and Pss from /proc) once the cluster
    /// has formed and again after its last row.
    #[arg(long)]
    pub rss: bool,
}

/// A byte count as `--space` takes it (`64G`, `4096`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    engine::config::parse_size(s)
        .map_err(|e| format!("{e} (give bytes with K, M, G or T, e.g. 16G)"))
}

impl RunArgs {
    /// Samples per latency scenario.
    pub fn samples(&self) -> usize {
        self.samples
            .unwrap_or(if self.quick { 300 } else { 10_000 })
            .max(1)
    }

    /// Faults per throughput row.
    pub fn tp_faults(&self) -> usize {
        self.tp_faults
            .unwrap_or(if self.quick { 600 } else { 40_000 })
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_homes_and_rss_parse_and_default_to_off() {
        let c = Cli::try_parse_from(["fault-latency"]).unwrap();
        assert_eq!((c.run.space, c.run.homes, c.run.rss), (None, 1, false));
        let c = Cli::try_parse_from(["fault-latency", "--space", "64G", "--homes", "7", "--rss"])
            .unwrap();
        assert_eq!(
            (c.run.space, c.run.homes, c.run.rss),
            (Some(64 << 30), 7, true)
        );
        assert_eq!(parse_bytes("1T"), Ok(1 << 40));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        let e = Cli::try_parse_from(["fault-latency", "--space", "lots"]).unwrap_err();
        assert!(e.to_string().contains("e.g. 16G"), "{e}");
        assert!(parse_bytes("5X").is_err());
    }
}

/// Arguments of a helper node process.
#[derive(Debug, Clone, Args)]
pub struct RoleArgs {
    /// This node's id.
    #[arg(long)]
    pub id: u16,
    /// Address to listen on (port 0: any free port, reported on stdout).
    #[arg(long)]
    pub bind: String,
    /// CPU of the node's shard.
    #[arg(long)]
    pub cpu: usize,
    /// Idle policy of the node's shard.
    #[arg(long)]
    pub idle: IdlePolicy,
    /// Transport.
    #[arg(long)]
    pub transport: TransportKind,
    /// Frame protection.
    #[arg(long)]
    pub auth: FrameAuth,
    /// Seconds to wait for the cluster to form.
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,
    /// Keep per-answer timestamps (for `--breakdown`).
    #[arg(long)]
    pub trace: bool,
}

/// Arguments of the floors' home process.
#[derive(Debug, Clone, Args)]
pub struct FloorHomeArgs {
    /// Address to listen on (port 0: any free port, reported on stdout).
    #[arg(long)]
    pub bind: String,
    /// CPU to run on.
    #[arg(long)]
    pub cpu: usize,
}
