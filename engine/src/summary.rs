//! Human-readable summaries of what a node did: faults by kind with service-time
//! percentiles, messages and bytes, and the HDR series the histogram dump writes.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::atomic_hist::AtomicHistogram;
use crate::stats::{sum, FaultKind, Locality, ShardStats};

/// A series name for logs and metrics: `read-remote`, `upgrade-home`, ...
pub fn series_name(kind: FaultKind, loc: Locality) -> String {
    format!("{}-{}", kind.name(), loc.name())
}

/// Every (kind, locality) histogram summed over the shards, with its series name.
pub fn series(stats: &[Arc<ShardStats>]) -> Vec<(String, Histogram<u64>)> {
    let mut out = Vec::new();
    for kind in FaultKind::ALL {
        for loc in [Locality::Home, Locality::Remote] {
            let total = AtomicHistogram::new();
            for s in stats {
                total.merge_from(s.histogram(kind, loc));
            }
            out.push((series_name(kind, loc), total.snapshot()));
        }
    }
    out
}

fn us(ns: u64) -> String {
    format!("{:.1}us", ns as f64 / 1000.0)
}

/// A multi-line summary of a node's shards.
pub fn render(node: u16, stats: &[Arc<ShardStats>]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "node {node}: faults served (service time from userfaultfd read to install: p50 / p99 / p99.9 / max)"
    );
    for (name, h) in series(stats) {
        if h.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "  {name:<15} {:>8}  {} / {} / {} / {}",
            h.len(),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max())
        );
    }
    let _ = writeln!(
        s,
        "  messages sent {} / received {}, page bytes sent {} / received {}, faults forwarded \
         between shards {}, deferred {}, failed {}, pages lost {}, protocol violations {}, \
         prefetch requests {}",
        sum(stats, |x| &x.msgs_sent),
        sum(stats, |x| &x.msgs_received),
        sum(stats, |x| &x.bytes_sent),
        sum(stats, |x| &x.bytes_received),
        sum(stats, |x| &x.faults_forwarded),
        sum(stats, |x| &x.faults_deferred),
        sum(stats, |x| &x.faults_failed),
        sum(stats, |x| &x.pages_lost),
        sum(stats, |x| &x.violations),
        sum(stats, |x| &x.proto.prefetches),
    );
    if stats.len() > 1 {
        // Each shard reads its own userfaultfd: how the faults spread over them. (Writing
        // into a String cannot fail.)
        let per: Vec<String> = stats
            .iter()
            .map(|x| x.uffd_events.load(Relaxed).to_string())
            .collect();
        let _ = writeln!(s, "  userfaultfd events per shard {}", per.join(" / "));
    }
    let lost = sum(stats, |x| &x.links_lost);
    if lost > 0 {
        // Writing into a String cannot fail.
        let _ = writeln!(
            s,
            "  connections lost {lost} / restored {}, frames sent again {}",
            sum(stats, |x| &x.links_restored),
            sum(stats, |x| &x.frames_resent),
        );
    }
    let ping_pong = sum(stats, |x| &x.proto.ping_pong);
    if ping_pong > 0 {
        // Writing into a String cannot fail.
        let _ = writeln!(
            s,
            "  ping-pong: pages taken away soon after this node acquired them {ping_pong}, \
             acquisitions held longer for it {}",
            sum(stats, |x| &x.proto.ping_pong_held),
        );
    }
    let (moved_in, moved_out) = (
        sum(stats, |x| &x.proto.homes_in),
        sum(stats, |x| &x.proto.homes_out),
    );
    if moved_in > 0 || moved_out > 0 {
        // Home migration (--placement on). Writing into a String cannot fail.
        let _ = writeln!(
            s,
            "  home moves: pages homed here from elsewhere {moved_in}, moved away {moved_out}, \
             requests redirected to a new home {}",
            sum(stats, |x| &x.proto.redirects),
        );
    }
    let (held, evicted) = (
        sum(stats, |x| &x.replicas_held),
        sum(stats, |x| &x.replica_evictions),
    );
    if held > 0 || evicted > 0 {
        // Only a bounded replica cache counts these (--replica-cache). Writing into a String
        // cannot fail.
        let _ = writeln!(
            s,
            "  replica cache: pages of other homes held {held} (peak per shard {}), \
             evictions {evicted}, acquisitions not recorded {}",
            stats
                .iter()
                .map(|x| x.replicas_held_max.load(Relaxed).to_string())
                .collect::<Vec<_>>()
                .join(" / "),
            sum(stats, |x| &x.replica_cache_lost),
        );
    }
    let busy = sum(stats, |x| &x.busy_turns);
    let idle = sum(stats, |x| &x.idle_turns);
    let _ = write!(
        s,
        "  shard loop turns busy {busy} / idle {idle}, sleeps {}",
        sum(stats, |x| &x.sleeps)
    );
    s
}

/// Faults served of one kind and locality, over shards.
pub fn served(stats: &[Arc<ShardStats>], kind: FaultKind, loc: Locality) -> u64 {
    stats
        .iter()
        .map(|s| s.faults_served[kind as usize][loc as usize].load(Relaxed))
        .sum()
}
