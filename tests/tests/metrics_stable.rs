//! `/metrics` histograms keep their buckets: scraped early in a workload, in the middle and
//! after it, every service-time series has the same `le` labels (the documented fixed
//! bounds), and its cumulative counts only grow. Before the bounds were fixed, the buckets ran
//! up to the largest value seen so far, so new `le` labels appeared between scrapes (which
//! breaks `rate()` and `histogram_quantile()`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ssi_tests::prom::http_get;
use ssi_tests::{launch, scratch_dir, secret_file, NodeOpts};

/// `series labels without le -> (le -> cumulative count)` of the service-time histogram.
type Buckets = BTreeMap<String, BTreeMap<String, u64>>;

fn buckets(text: &str) -> Buckets {
    let mut out = Buckets::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("ssi_dp_fault_service_seconds_bucket{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").expect("a sample line");
        let mut le = None;
        let mut others = Vec::new();
        for l in labels.split(',') {
            match l.strip_prefix("le=") {
                Some(v) => le = Some(v.trim_matches('"').to_string()),
                None => others.push(l),
            }
        }
        let count: u64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("an integer count");
        out.entry(others.join(","))
            .or_default()
            .insert(le.expect("an le label"), count);
    }
    out
}

fn scrape(api: u16) -> Buckets {
    let text = http_get(api, "/metrics").expect("GET /metrics");
    let b = buckets(&text);
    assert!(!b.is_empty(), "no service-time series in:\n{text}");
    b
}

#[test]
fn service_time_buckets_do_not_change_between_scrapes() {
    let dir = scratch_dir("metrics-stable");
    let s = secret_file(&dir, "secret", 52);
    let apis = [ssi_tests::free_port(), ssi_tests::free_port()];
    let node = |id: u16| {
        let s = s.display().to_string();
        let api = format!("127.0.0.1:{}", apis[usize::from(id)]);
        let cores = (id % 2).to_string();
        NodeOpts::new(
            id,
            &[
                "--memory",
                "16M",
                "--cores",
                &cores,
                "--idle",
                "block",
                "--cluster-secret-file",
                &s,
                "--api-addr",
                &api,
                "--workload",
                "seqs",
                "--ops",
                "100000",
                "--linger-secs",
                "30",
            ],
        )
    };
    let nodes = launch(&[node(0), node(1)]);
    assert!(
        nodes[0].wait_for_output("cluster formed", Duration::from_secs(60)),
        "{}",
        nodes[0].output()
    );
    // Early: the first faults have been served; the largest value is still small.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let b = http_get(apis[0], "/metrics")
            .map(|t| buckets(&t))
            .unwrap_or_default();
        if b.values().any(|s| s.values().any(|&c| c > 0)) {
            break b;
        }
        assert!(Instant::now() < deadline, "no fault was ever counted");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    let middle = scrape(apis[0]);
    assert!(
        nodes[0].wait_for_output("workload seqs: OK", Duration::from_secs(120)),
        "{}",
        nodes[0].output()
    );
    let last = scrape(apis[0]);
    let les = |b: &Buckets| -> BTreeSet<(String, String)> {
        b.iter()
            .flat_map(|(s, m)| m.keys().map(move |le| (s.clone(), le.clone())))
            .collect()
    };
    // Series appear as fault kinds are first seen; those present keep their buckets.
    for (name, earlier, later) in [("middle", &first, &middle), ("last", &middle, &last)] {
        for (series, buckets) in earlier {
            let now = later
                .get(series)
                .unwrap_or_else(|| panic!("series {series} vanished by the {name} scrape"));
            assert_eq!(
                buckets.keys().collect::<Vec<_>>(),
                now.keys().collect::<Vec<_>>(),
                "{series}: the le labels changed by the {name} scrape"
            );
            for (le, c) in buckets {
                assert!(
                    now[le] >= *c,
                    "{series} le={le}: count went down {c} -> {}",
                    now[le]
                );
            }
        }
    }
    // The documented bounds: 1-2-5 steps from 1 µs to 10 s, and +Inf.
    let some = last.values().next().expect("a series");
    for le in ["0.000001", "0.0001", "10.0", "+Inf"] {
        assert!(
            some.contains_key(le),
            "le={le} missing from {:?}",
            some.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(some.len(), 23, "{:?}", some.keys().collect::<Vec<_>>());
    assert!(les(&last).len() >= les(&first).len());
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
