//! `fault-latency`: per-fault service time as the faulting thread sees it, on a real cluster
//! of ssi-dp nodes (this process is node 0; the other nodes are child processes of the same
//! binary on loopback, or in network namespaces joined by veth).
//!
//! - [`cli`]: the command line.
//! - [`plan`]: which scenarios run, how many pages each needs, the address-space layout.
//! - [`cluster`]: starting node 0 in-process and the helper nodes as child processes.
//! - [`role`]: the helper node process (the hidden `node` subcommand) and its control pipe.
//! - [`run`]: a whole run over the axes (transport × idle policy), and its output.
//! - [`netns`]: the `--netns` topology (one namespace per node, joined by a bridge).
//! - [`scenario`]: the measured loops.
//! - [`floor`]: the hand-written floors (uffd read → request → 4 KiB reply → UFFDIO_COPY; one
//!   at a time, pipelined for throughput, in blocks for prefetch).
//! - [`breakdown`]: where the time of a fault goes, from shard timestamps.
//! - [`report`]: results, the table and the JSON lines.
//! - [`plot`]: the percentile-distribution SVG.
//! - [`hlogs`]: HDR interval logs per scenario and the `show` / `compare` commands.
//! - [`progress`]: the progress line.
//! - [`load`]: how much CPU other processes took during the measurement.
//! - [`idle_wait`]: spin / hybrid / block waiting shared by the floors' loops.

pub mod breakdown;
pub mod cli;
pub mod cluster;
pub mod floor;
pub mod hlogs;
pub mod idle_wait;
pub mod load;
pub mod netns;
pub mod plan;
pub mod plot;
pub mod progress;
pub mod report;
pub mod role;
pub mod run;
pub mod scenario;

/// The value a node writes into word 0 of `page` in set-up and write scenarios, so that every
/// read can be checked against the writer it must see.
pub fn stamp(writer: u16, page: u64) -> u64 {
    0x5eed_0000_0000_0000 ^ (u64::from(writer) << 40) ^ page
}
