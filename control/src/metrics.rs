//! The Prometheus exposition of a node's telemetry (`GET /metrics`), written with the official
//! `prometheus-client` crate.
//!
//! The counters live in the data plane as atomics that the shards publish; this module keeps no
//! copy of them. A [`Exporter`] registers one custom collector that, on every scrape, takes a
//! [`Telemetry`] snapshot through the [`NodeHandle`] and writes each value as a const metric.
//! [`render_snapshot`] encodes one given snapshot the same way (tests, dumps).
//!
//! Every family is listed in [`FAMILIES`]; all of them carry the label `node`. Families and
//! their sources:
//!
//! | family | type | labels | from |
//! |---|---|---|---|
//! | `ssi_dp_faults_total` | counter | kind, locality | `faults` |
//! | `ssi_dp_remote_miss_ratio` | gauge | | remote faults / all faults in `faults` |
//! | `ssi_dp_fault_service_seconds` | histogram | kind, locality | `service_time` |
//! | `ssi_dp_faults_failed_total` | counter | | `faults_failed` |
//! | `ssi_dp_invalidations_total` | counter | | `invalidations` |
//! | `ssi_dp_page_sent_bytes_total` | counter | | `page_bytes_sent` |
//! | `ssi_dp_page_received_bytes_total` | counter | | `page_bytes_received` |
//! | `ssi_dp_writeback_bytes_total` | counter | | `writeback_bytes` |
//! | `ssi_dp_evictions_total` | counter | | `evictions` |
//! | `ssi_dp_messages_sent_total` | counter | | `messages_sent` |
//! | `ssi_dp_messages_received_total` | counter | | `messages_received` |
//! | `ssi_dp_transport_errors_total` | counter | | `transport_errors` |
//! | `ssi_dp_reconnects_total` | counter | | `reconnects` |
//! | `ssi_dp_peer_rtt_seconds` | gauge | peer | `peer_rtt` |
//! | `ssi_dp_ping_pong_pages_total` | counter | | `ping_pong` |
//! | `ssi_dp_ping_pong_held_total` | counter | | `ping_pong_held` |
//! | `ssi_dp_prefetch_requests_total` | counter | | `prefetches` |
//! | `ssi_dp_replica_pages` | gauge | | `replicas_held` |
//! | `ssi_dp_replica_cache_evictions_total` | counter | | `replica_cache_evictions` |
//! | `ssi_dp_home_moves_total` | counter | direction (in, out) | `homes_moved_in`, `homes_moved_out` |
//! | `ssi_dp_cq_errors_total` | counter | | `cq_errors` |
//! | `ssi_dp_shard_busy_turns_total` | counter | shard | `shard_turns` (turns that found work) |
//! | `ssi_dp_shard_idle_turns_total` | counter | shard | `shard_turns` (turns that found none) |
//! | `ssi_dp_shard_busy_ratio` | gauge | shard | busy turns / all turns in `shard_turns` |
//! | `ssi_dp_protocol_violations_total` | counter | | `protocol_violations` |
//! | `ssi_dp_shard_stalled` | gauge | shard | 1 for the shards in `shards_stalled` |
//! | `ssi_dp_member_state` | gauge | member, state | 1 for each member's state in `members`, 0 for the others |
//! | `ssi_dp_healthy` | gauge | | `healthy` (1: `/healthz` answers 200) |
//! | `ssi_dp_ready` | gauge | | `ready` (1: `/readyz` answers 200) |

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::handle::{MemberState, NodeHandle, Telemetry};

/// The HTTP content type of the exposition: `prometheus-client` writes the OpenMetrics 1.0
/// text format (counters end in `_total`, units in `# UNIT`, the text ends with `# EOF`),
/// which Prometheus negotiates and scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric family the exporter writes, by the name that `# TYPE` lines carry (counters
/// without their `_total` sample suffix).
pub const FAMILIES: &[&str] = &[
    "ssi_dp_build_info",
    "ssi_dp_faults",
    "ssi_dp_remote_miss_ratio",
    "ssi_dp_fault_service_seconds",
    "ssi_dp_faults_failed",
    "ssi_dp_invalidations",
    "ssi_dp_page_sent_bytes",
    "ssi_dp_page_received_bytes",
    "ssi_dp_writeback_bytes",
    "ssi_dp_evictions",
    "ssi_dp_messages_sent",
    "ssi_dp_messages_received",
    "ssi_dp_transport_errors",
    "ssi_dp_reconnects",
    "ssi_dp_peer_rtt_seconds",
    "ssi_dp_ping_pong_pages",
    "ssi_dp_ping_pong_held",
    "ssi_dp_prefetch_requests",
    "ssi_dp_replica_pages",
    "ssi_dp_replica_cache_evictions",
    "ssi_dp_home_moves",
    "ssi_dp_cq_errors",
    "ssi_dp_shard_busy_turns",
    "ssi_dp_shard_idle_turns",
    "ssi_dp_shard_busy_ratio",
    "ssi_dp_protocol_violations",
    "ssi_dp_shard_stalled",
    "ssi_dp_member_state",
    "ssi_dp_healthy",
    "ssi_dp_ready",
];

/// Why the exposition could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The encoder refused a value (in practice: a histogram with no buckets at all).
    #[error(
        "cannot encode the metrics exposition (a histogram series without buckets?); \
         this is a bug in the node's telemetry, please report it"
    )]
    Encode,
}

impl From<fmt::Error> for MetricsError {
    fn from(_: fmt::Error) -> Self {
        MetricsError::Encode
    }
}

/// The `/metrics` exporter of one node: a registry whose only content is a collector that
/// reads the node's telemetry at scrape time.
pub struct Exporter {
    registry: Registry,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter that reads `node`'s telemetry on every [`render`](Self::render).
    pub fn new(node: Arc<dyn NodeHandle>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(NodeCollector { node }));
        Exporter { registry }
    }

    /// The exposition text of the node's telemetry as of now.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The exposition text of one telemetry snapshot (what [`Exporter::render`] writes when the
/// node reports `t`).
pub fn render_snapshot(t: &Telemetry) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(t.clone())));
    let mut out = String::with_capacity(8 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Reads the node's telemetry on each scrape.
struct NodeCollector {
    node: Arc<dyn NodeHandle>,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCollector")
            .field("node", &self.node.id())
            .finish()
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        encode_telemetry(&self.node.telemetry(), &mut encoder)
    }
}

/// Writes one fixed snapshot.
#[derive(Debug)]
struct SnapshotCollector(Telemetry);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        encode_telemetry(&self.0, &mut encoder)
    }
}

/// Labels of one series.
type Labels = Vec<(&'static str, String)>;

/// No exemplars are written.
type NoExemplar = Exemplar<NoLabelSet, u64>;

/// Writes one counter family of a single series labelled with the node.
fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    node: &Labels,
    value: u64,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    m.encode_family(node)?
        .encode_counter::<NoLabelSet, u64, u64>(&value, None::<&NoExemplar>)
}

/// `node` plus the given labels.
fn with(node: &Labels, more: &[(&'static str, String)]) -> Labels {
    let mut l = node.clone();
    l.extend_from_slice(more);
    l
}

/// `part / whole`, 0 when `whole` is 0.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Splits a service-time series name `<kind>-<locality>` into its labels; a name without a
/// dash is all kind, locality `all`.
fn series_labels(name: &str) -> [(&'static str, String); 2] {
    let (kind, locality) = match name.split_once('-') {
        Some((k, l)) if !k.is_empty() && !l.is_empty() => (k, l),
        _ => (name, "all"),
    };
    [
        ("kind", kind.to_string()),
        ("locality", locality.to_string()),
    ]
}

/// Per-bucket counts from cumulative ones, ending with a `+Inf` bucket that holds what the
/// finite buckets did not (the encoder accumulates again). Cumulative counts that go down
/// (a torn read of a live histogram) contribute nothing rather than wrapping.
fn per_bucket(cumulative: &[(f64, u64)], count: u64) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(cumulative.len() + 1);
    let mut seen = 0u64;
    for &(le, c) in cumulative {
        if le.is_nan() || le == f64::INFINITY {
            continue;
        }
        out.push((le, c.saturating_sub(seen)));
        seen = seen.max(c);
    }
    out.push((f64::INFINITY, count.saturating_sub(seen)));
    out
}

/// Writes every family from one snapshot. The exhaustive destructuring makes a field added to
/// [`Telemetry`] a compile error here until it is exported.
fn encode_telemetry(t: &Telemetry, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let Telemetry {
        node,
        faults,
        service_time,
        invalidations,
        page_bytes_sent,
        page_bytes_received,
        writeback_bytes,
        evictions,
        messages_sent,
        messages_received,
        transport_errors,
        reconnects,
        peer_rtt,
        ping_pong,
        ping_pong_held,
        prefetches,
        replicas_held,
        replica_cache_evictions,
        homes_moved_in,
        homes_moved_out,
        cq_errors,
        shard_turns,
        faults_failed,
        protocol_violations,
        shards_stalled,
        members,
        healthy,
        ready,
    } = t;
    let n: Labels = vec![("node", node.to_string())];
    {
        let mut m = enc.encode_descriptor(
            "ssi_dp_build_info",
            "Always 1; the labels say which build the node runs (version, and the commit it \
             was built from: `unknown` outside a git checkout, `-dirty` with local changes).",
            None,
            MetricType::Gauge,
        )?;
        let l = with(
            &n,
            &[
                ("version", crate::build::VERSION.to_string()),
                ("commit", crate::build::COMMIT.to_string()),
            ],
        );
        m.encode_family(&l)?.encode_gauge(&1i64)?;
    }

    {
        let mut m = enc.encode_descriptor(
            "ssi_dp_faults",
            "Faults served, by kind (read, write, upgrade) and by where the page's home is \
             (home: this node, remote: another node).",
            None,
            MetricType::Counter,
        )?;
        for (kind, locality, v) in faults {
            let l = with(
                &n,
                &[
                    ("kind", kind.to_string()),
                    ("locality", locality.to_string()),
                ],
            );
            m.encode_family(&l)?
                .encode_counter::<NoLabelSet, u64, u64>(v, None::<&NoExemplar>)?;
        }
    }
    {
        let all = faults.iter().fold(0u64, |a, f| a.saturating_add(f.2));
        let remote = faults
            .iter()
            .filter(|f| f.1 == "remote")
            .fold(0u64, |a, f| a.saturating_add(f.2));
        let mut m = enc.encode_descriptor(
            "ssi_dp_remote_miss_ratio",
            "Faults whose page is homed on another node over all faults, since the node \
             started (0 before the first fault).",
            None,
            MetricType::Gauge,
        )?;
        m.encode_family(&n)?.encode_gauge(&ratio(remote, all))?;
    }
    {
        let mut m = enc.encode_descriptor(
            "ssi_dp_fault_service",
            "Fault service time, from reading the fault off the userfaultfd to installing \
             the page, by kind and locality.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (name, buckets, count, sum) in service_time {
            let l = with(&n, &series_labels(name));
            m.encode_family(&l)?.encode_histogram::<NoLabelSet>(
                *sum,
                *count,
                &per_bucket(buckets, *count),
                None,
            )?;
        }
    }
    counter(
        enc,
        "ssi_dp_faults_failed",
        "Faults that could not be served (page lost with its owner, cluster stopped).",
        None,
        &n,
        *faults_failed,
    )?;
    counter(
        enc,
        "ssi_dp_invalidations",
        "Invalidations sent by this node's homes to holders of a copy.",
        None,
        &n,
        *invalidations,
    )?;
    counter(
        enc,
        "ssi_dp_page_sent",
        "Page bytes sent to other nodes (coherence traffic and migration).",
        Some(&Unit::Bytes),
        &n,
        *page_bytes_sent,
    )?;
    counter(
        enc,
        "ssi_dp_page_received",
        "Page bytes received from other nodes (coherence traffic and migration).",
        Some(&Unit::Bytes),
        &n,
        *page_bytes_received,
    )?;
    counter(
        enc,
        "ssi_dp_writeback",
        "Bytes of dirty replicas written back home on eviction.",
        Some(&Unit::Bytes),
        &n,
        *writeback_bytes,
    )?;
    counter(
        enc,
        "ssi_dp_evictions",
        "Replicas evicted from the replica cache (clean and dirty).",
        None,
        &n,
        *evictions,
    )?;
    counter(
        enc,
        "ssi_dp_messages_sent",
        "Protocol messages sent (transport send operations).",
        None,
        &n,
        *messages_sent,
    )?;
    counter(
        enc,
        "ssi_dp_messages_received",
        "Protocol messages received (transport receive operations).",
        None,
        &n,
        *messages_received,
    )?;
    counter(
        enc,
        "ssi_dp_transport_errors",
        "Transport errors: frames rejected and sends refused.",
        None,
        &n,
        *transport_errors,
    )?;
    counter(
        enc,
        "ssi_dp_reconnects",
        "Peer connections lost.",
        None,
        &n,
        *reconnects,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "ssi_dp_peer_rtt",
            "Round-trip time to each peer, from heartbeats.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (peer, rtt) in peer_rtt {
            let l = with(&n, &[("peer", peer.to_string())]);
            m.encode_family(&l)?.encode_gauge(rtt)?;
        }
    }
    counter(
        enc,
        "ssi_dp_ping_pong_pages",
        "Pages taken away from this node within the residency window after it acquired them.",
        None,
        &n,
        *ping_pong,
    )?;
    counter(
        enc,
        "ssi_dp_ping_pong_held",
        "Acquisitions held longer than the residency window because the page ping-ponged \
         (damping, --ping-pong-hold-us).",
        None,
        &n,
        *ping_pong_held,
    )?;
    counter(
        enc,
        "ssi_dp_prefetch_requests",
        "Read requests issued ahead of any fault by sequential prefetch (--prefetch).",
        None,
        &n,
        *prefetches,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "ssi_dp_replica_pages",
            "Pages of other homes this node holds (read-only replicas and pages it owns \
             writable); counted only when the replica cache is bounded (--replica-cache), 0 \
             otherwise.",
            None,
            MetricType::Gauge,
        )?;
        m.encode_family(&n)?
            .encode_gauge(&(*replicas_held as f64))?;
    }
    counter(
        enc,
        "ssi_dp_replica_cache_evictions",
        "Evictions started by the bounded replica cache (--replica-cache): the pages of \
         other homes acquired least recently, beyond the bound.",
        None,
        &n,
        *replica_cache_evictions,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "ssi_dp_home_moves",
            "Pages whose home moved to this node (in) or from it (out): home migration, \
             --placement on.",
            None,
            MetricType::Counter,
        )?;
        for (dir, v) in [("in", *homes_moved_in), ("out", *homes_moved_out)] {
            let l = with(&n, &[("direction", dir.to_string())]);
            m.encode_family(&l)?
                .encode_counter::<NoLabelSet, u64, u64>(&v, None::<&NoExemplar>)?;
        }
    }
    counter(
        enc,
        "ssi_dp_cq_errors",
        "Completion-queue entries with an error result (io_uring CQEs, RDMA CQ errors; \
         always 0 on the epoll TCP transport).",
        None,
        &n,
        *cq_errors,
    )?;
    {
        let mut busy = enc.encode_descriptor(
            "ssi_dp_shard_busy_turns",
            "Shard loop turns that found work, by shard.",
            None,
            MetricType::Counter,
        )?;
        for (shard, b, _) in shard_turns {
            let l = with(&n, &[("shard", shard.to_string())]);
            busy.encode_family(&l)?
                .encode_counter::<NoLabelSet, u64, u64>(b, None::<&NoExemplar>)?;
        }
    }
    {
        let mut idle = enc.encode_descriptor(
            "ssi_dp_shard_idle_turns",
            "Shard loop turns that found no work, by shard.",
            None,
            MetricType::Counter,
        )?;
        for (shard, _, i) in shard_turns {
            let l = with(&n, &[("shard", shard.to_string())]);
            idle.encode_family(&l)?
                .encode_counter::<NoLabelSet, u64, u64>(i, None::<&NoExemplar>)?;
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "ssi_dp_shard_busy_ratio",
            "Busy turns over all turns of each shard since the node started.",
            None,
            MetricType::Gauge,
        )?;
        for (shard, b, i) in shard_turns {
            let l = with(&n, &[("shard", shard.to_string())]);
            m.encode_family(&l)?
                .encode_gauge(&ratio(*b, b.saturating_add(*i)))?;
        }
    }
    counter(
        enc,
        "ssi_dp_protocol_violations",
        "Protocol violations by peers (messages that break the coherence protocol).",
        None,
        &n,
        *protocol_violations,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "ssi_dp_shard_stalled",
            "1 while the watchdog finds the shard stalled (no loop turn finished for its bound \
             while it was not asleep: its faults and messages wait), else 0.",
            None,
            MetricType::Gauge,
        )?;
        for (shard, _, _) in shard_turns {
            let l = with(&n, &[("shard", shard.to_string())]);
            m.encode_family(&l)?
                .encode_gauge(&i64::from(shards_stalled.contains(shard)))?;
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "ssi_dp_member_state",
            "Each member's state as this node sees it: 1 for the state it is in (alive, \
             suspect, dead, left), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for (id, state) in members {
            for s in MemberState::ALL {
                let l = with(&n, &[("member", id.to_string()), ("state", s.to_string())]);
                m.encode_family(&l)?.encode_gauge(&i64::from(*state == s))?;
            }
        }
    }
    for (name, help, v) in [
        (
            "ssi_dp_healthy",
            "1 while the node works (GET /healthz answers 200), 0 once its data plane stopped \
             on a failure.",
            healthy,
        ),
        (
            "ssi_dp_ready",
            "1 while the node serves guest memory in its cluster (GET /readyz answers 200), 0 \
             while it stops or leaves.",
            ready,
        ),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        m.encode_family(&n)?.encode_gauge(&i64::from(*v))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_bucket_undoes_cumulative_counts_and_adds_inf() {
        let b = per_bucket(&[(0.001, 3), (0.01, 7), (0.1, 7)], 10);
        assert_eq!(b, vec![(0.001, 3), (0.01, 4), (0.1, 0), (f64::INFINITY, 3)]);
    }

    #[test]
    fn per_bucket_never_wraps_on_torn_snapshots() {
        let b = per_bucket(&[(0.001, 5), (0.01, 2), (f64::NAN, 9)], 1);
        assert_eq!(b, vec![(0.001, 5), (0.01, 0), (f64::INFINITY, 0)]);
    }

    #[test]
    fn series_names_split_into_kind_and_locality() {
        assert_eq!(
            series_labels("read-remote"),
            [
                ("kind", "read".to_string()),
                ("locality", "remote".to_string())
            ]
        );
        assert_eq!(
            series_labels("all"),
            [("kind", "all".to_string()), ("locality", "all".to_string())]
        );
        assert_eq!(series_labels("-x")[1].1, "all");
    }

    #[test]
    fn an_empty_snapshot_still_declares_every_family() {
        let text = render_snapshot(&Telemetry::default()).unwrap();
        for f in FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {f} ")),
                "{f} missing:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("ssi_dp_remote_miss_ratio{node=\"0\"} 0.0"));
    }
}
