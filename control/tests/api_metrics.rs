//! Every metric is real: with each [`Telemetry`] field set to its own non-zero value, every
//! family the exporter declares appears, carries exactly the samples derived from its field,
//! and every field's value shows up somewhere. A family added without a source, or a field
//! that is never exported, fails here (and the exhaustive struct literal below stops compiling
//! when a field is added to `Telemetry`, until it gets a value and an expected sample).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use control::handle::{Heat, Member, NodeHandle, PageInfo, PageQueryError, Telemetry};
use control::metrics::{render_snapshot, Exporter, FAMILIES};

/// Series identity: sample name and its labels (sorted), the value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Parses the OpenMetrics text: the declared families and every sample.
fn parse(text: &str) -> (BTreeSet<String>, Samples) {
    let mut families = BTreeSet::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(families.insert(name.to_string()), "{name} declared twice");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').expect("closing brace");
                let labels = l
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        assert!(
            samples.insert((name, labels), value).is_none(),
            "duplicate series: {line}"
        );
    }
    (families, samples)
}

/// The family a sample belongs to.
fn family_of<'a>(sample: &'a str, families: &BTreeSet<String>) -> &'a str {
    for suffix in ["_total", "_bucket", "_count", "_sum", ""] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if families.contains(base) {
                return base;
            }
        }
    }
    panic!("sample {sample} belongs to no declared family")
}

fn telemetry() -> Telemetry {
    // Every field set, each to a value no other field has.
    Telemetry {
        node: 7,
        faults: vec![
            ("read", "home", 101),
            ("read", "remote", 102),
            ("write", "home", 103),
            ("write", "remote", 104),
            ("upgrade", "home", 105),
            ("upgrade", "remote", 106),
        ],
        service_time: vec![
            (
                "read-remote".to_string(),
                vec![(0.000_01, 201), (0.000_1, 203), (0.001, 207)],
                211,
                0.0125,
            ),
            (
                "write-home".to_string(),
                vec![(0.000_01, 0), (0.000_1, 2)],
                3,
                0.000_3,
            ),
        ],
        invalidations: 301,
        page_bytes_sent: 302,
        page_bytes_received: 303,
        writeback_bytes: 304,
        evictions: 305,
        messages_sent: 306,
        messages_received: 307,
        transport_errors: 308,
        reconnects: 309,
        peer_rtt: vec![(1, 0.000_041), (2, 0.000_057)],
        ping_pong: 310,
        ping_pong_held: 319,
        prefetches: 314,
        replicas_held: 315,
        replica_cache_evictions: 316,
        homes_moved_in: 317,
        homes_moved_out: 318,
        cq_errors: 311,
        shard_turns: vec![(0, 401, 402), (1, 403, 404)],
        faults_failed: 312,
        protocol_violations: 313,
        shards_stalled: vec![1],
        members: vec![
            (0, control::handle::MemberState::Alive),
            (1, control::handle::MemberState::Suspect),
            (2, control::handle::MemberState::Dead),
        ],
        healthy: true,
        ready: false,
    }
}

/// The samples `t` must produce, derived from its fields.
fn expected(t: &Telemetry) -> Samples {
    let mut e = Samples::new();
    let node = t.node.to_string();
    let mut put = |name: &str, labels: &[(&str, String)], v: f64| {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        l.insert("node".into(), node.clone());
        e.insert((name.to_string(), l), v);
    };
    put(
        "ssi_dp_build_info",
        &[
            ("version", control::build::VERSION.to_string()),
            ("commit", control::build::COMMIT.to_string()),
        ],
        1.0,
    );
    for (kind, loc, n) in &t.faults {
        put(
            "ssi_dp_faults_total",
            &[("kind", kind.to_string()), ("locality", loc.to_string())],
            *n as f64,
        );
    }
    let all: u64 = t.faults.iter().map(|f| f.2).sum();
    let remote: u64 = t
        .faults
        .iter()
        .filter(|f| f.1 == "remote")
        .map(|f| f.2)
        .sum();
    put("ssi_dp_remote_miss_ratio", &[], remote as f64 / all as f64);
    for (name, buckets, count, sum) in &t.service_time {
        let (kind, loc) = name.split_once('-').unwrap();
        let kl = [("kind", kind.to_string()), ("locality", loc.to_string())];
        for (le, c) in buckets {
            let mut l = kl.to_vec();
            l.push(("le", le.to_string()));
            put("ssi_dp_fault_service_seconds_bucket", &l, *c as f64);
        }
        let mut inf = kl.to_vec();
        inf.push(("le", "+Inf".into()));
        put("ssi_dp_fault_service_seconds_bucket", &inf, *count as f64);
        put("ssi_dp_fault_service_seconds_count", &kl, *count as f64);
        put("ssi_dp_fault_service_seconds_sum", &kl, *sum);
    }
    let scalars = [
        ("ssi_dp_invalidations_total", t.invalidations),
        ("ssi_dp_page_sent_bytes_total", t.page_bytes_sent),
        ("ssi_dp_page_received_bytes_total", t.page_bytes_received),
        ("ssi_dp_writeback_bytes_total", t.writeback_bytes),
        ("ssi_dp_evictions_total", t.evictions),
        ("ssi_dp_messages_sent_total", t.messages_sent),
        ("ssi_dp_messages_received_total", t.messages_received),
        ("ssi_dp_transport_errors_total", t.transport_errors),
        ("ssi_dp_reconnects_total", t.reconnects),
        ("ssi_dp_ping_pong_pages_total", t.ping_pong),
        ("ssi_dp_ping_pong_held_total", t.ping_pong_held),
        ("ssi_dp_prefetch_requests_total", t.prefetches),
        ("ssi_dp_replica_pages", t.replicas_held),
        (
            "ssi_dp_replica_cache_evictions_total",
            t.replica_cache_evictions,
        ),
        ("ssi_dp_cq_errors_total", t.cq_errors),
        ("ssi_dp_faults_failed_total", t.faults_failed),
        ("ssi_dp_protocol_violations_total", t.protocol_violations),
    ];
    for (name, v) in scalars {
        put(name, &[], v as f64);
    }
    for (dir, v) in [("in", t.homes_moved_in), ("out", t.homes_moved_out)] {
        put(
            "ssi_dp_home_moves_total",
            &[("direction", dir.to_string())],
            v as f64,
        );
    }
    for (peer, rtt) in &t.peer_rtt {
        put(
            "ssi_dp_peer_rtt_seconds",
            &[("peer", peer.to_string())],
            *rtt,
        );
    }
    for (shard, busy, idle) in &t.shard_turns {
        let l = [("shard", shard.to_string())];
        put("ssi_dp_shard_busy_turns_total", &l, *busy as f64);
        put("ssi_dp_shard_idle_turns_total", &l, *idle as f64);
        put(
            "ssi_dp_shard_busy_ratio",
            &l,
            *busy as f64 / (*busy + *idle) as f64,
        );
        let stalled = t.shards_stalled.contains(shard);
        put("ssi_dp_shard_stalled", &l, f64::from(u8::from(stalled)));
    }
    for (id, state) in &t.members {
        for s in control::handle::MemberState::ALL {
            put(
                "ssi_dp_member_state",
                &[("member", id.to_string()), ("state", s.to_string())],
                f64::from(u8::from(*state == s)),
            );
        }
    }
    put("ssi_dp_healthy", &[], f64::from(u8::from(t.healthy)));
    put("ssi_dp_ready", &[], f64::from(u8::from(t.ready)));
    e
}

/// Label values are compared as numbers where they are numbers (`le="1e-5"` vs `0.00001`).
fn normalise(s: Samples) -> Samples {
    s.into_iter()
        .map(|((name, labels), v)| {
            let labels = labels
                .into_iter()
                .map(|(k, v)| {
                    let v = if k == "le" && v != "+Inf" {
                        format!("{:e}", v.parse::<f64>().unwrap())
                    } else {
                        v
                    };
                    (k, v)
                })
                .collect();
            ((name, labels), v)
        })
        .collect()
}

#[test]
fn every_declared_family_carries_its_field() {
    let t = telemetry();
    let text = render_snapshot(&t).unwrap();
    let (families, samples) = parse(&text);

    // The declared families are exactly the documented list.
    let listed: BTreeSet<String> = FAMILIES.iter().map(|f| f.to_string()).collect();
    assert_eq!(families, listed);

    // Every family has samples; no sample outside a family.
    let mut with_samples = BTreeSet::new();
    for (name, _) in samples.keys() {
        with_samples.insert(family_of(name, &families).to_string());
    }
    assert_eq!(with_samples, families, "families declared without samples");

    // Exactly the samples derived from the fields, with their values.
    let got = normalise(samples);
    let want = normalise(expected(&t));
    for (k, v) in &want {
        let g = got
            .get(k)
            .unwrap_or_else(|| panic!("missing sample {k:?}\n{text}"));
        assert!((g - v).abs() <= v.abs() * 1e-12, "{k:?}: got {g}, want {v}");
    }
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(extra.is_empty(), "samples with no source field: {extra:?}");
}

#[test]
fn every_field_value_reaches_the_text() {
    // Independent of the expected table: each distinct counter value of the snapshot is the
    // value of some sample, so a field the exporter skips is caught even if the table above
    // skipped it too.
    let t = telemetry();
    let (_, samples) = parse(&render_snapshot(&t).unwrap());
    let values: Vec<f64> = samples.values().copied().collect();
    let mut fields: Vec<f64> = vec![
        t.invalidations,
        t.page_bytes_sent,
        t.page_bytes_received,
        t.writeback_bytes,
        t.evictions,
        t.messages_sent,
        t.messages_received,
        t.transport_errors,
        t.reconnects,
        t.ping_pong,
        t.ping_pong_held,
        t.prefetches,
        t.replicas_held,
        t.replica_cache_evictions,
        t.homes_moved_in,
        t.homes_moved_out,
        t.cq_errors,
        t.faults_failed,
        t.protocol_violations,
    ]
    .into_iter()
    .map(|v| v as f64)
    .collect();
    fields.extend(t.faults.iter().map(|f| f.2 as f64));
    fields.extend(t.peer_rtt.iter().map(|p| p.1));
    fields.extend(t.shard_turns.iter().flat_map(|s| [s.1 as f64, s.2 as f64]));
    for (_, b, c, s) in &t.service_time {
        fields.extend(b.iter().filter(|x| x.1 > 0).map(|x| x.1 as f64));
        fields.push(*c as f64);
        fields.push(*s);
    }
    for f in fields {
        assert!(
            values.contains(&f),
            "the value {f} of a field is not exported"
        );
    }
}

#[test]
fn a_snapshot_with_no_faults_has_a_zero_miss_ratio_and_no_nan() {
    let t = Telemetry {
        node: 3,
        shard_turns: vec![(0, 0, 0)],
        ..Telemetry::default()
    };
    let (_, samples) = parse(&render_snapshot(&t).unwrap());
    assert!(samples.values().all(|v| v.is_finite()));
    let ratio = samples
        .iter()
        .find(|((n, _), _)| n == "ssi_dp_remote_miss_ratio")
        .unwrap();
    assert_eq!(*ratio.1, 0.0);
}

/// A node whose counters move between scrapes, as the data plane's atomics do.
struct LiveNode {
    invalidations: AtomicU64,
}

impl NodeHandle for LiveNode {
    fn id(&self) -> u16 {
        4
    }
    fn members(&self) -> Vec<Member> {
        Vec::new()
    }
    fn page(&self, gpa: u64) -> Result<PageInfo, PageQueryError> {
        Err(PageQueryError::OutOfRange { gpa, end: 0 })
    }
    fn heat(&self) -> Heat {
        Heat {
            bucket_bytes: 4096,
            nodes: Vec::new(),
            counts: Vec::new(),
            homes_in: Vec::new(),
            homes_out: Vec::new(),
        }
    }
    fn telemetry(&self) -> Telemetry {
        Telemetry {
            node: 4,
            invalidations: self.invalidations.load(Ordering::Relaxed),
            ..Telemetry::default()
        }
    }
}

#[test]
fn the_exporter_reads_the_node_at_each_scrape() {
    let node = Arc::new(LiveNode {
        invalidations: AtomicU64::new(17),
    });
    let exporter = Exporter::new(node.clone());
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("ssi_dp_invalidations_total"))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        line(&exporter.render().unwrap()),
        "ssi_dp_invalidations_total{node=\"4\"} 17"
    );
    node.invalidations.store(90_001, Ordering::Relaxed);
    assert_eq!(
        line(&exporter.render().unwrap()),
        "ssi_dp_invalidations_total{node=\"4\"} 90001"
    );
}

#[test]
fn docs_list_every_family() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md"))
        .expect("docs/api.md");
    let text = render_snapshot(&telemetry()).unwrap();
    let (families, samples) = parse(&text);
    for f in &families {
        // Documented by the name a query uses: counters with `_total`.
        let used = samples
            .keys()
            .map(|(n, _)| n.as_str())
            .find(|n| family_of(n, &families) == f)
            .unwrap();
        let shown = if used.ends_with("_total") {
            used
        } else {
            f.as_str()
        };
        assert!(
            doc.contains(&format!("`{shown}`")),
            "docs/api.md does not list `{shown}`"
        );
    }
}
