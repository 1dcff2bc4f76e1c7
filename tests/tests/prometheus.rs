//! A real Prometheus server (Debian's `prometheus`, installed by scripts/test and CI) scrapes
//! a running two-node loopback cluster; after a workload, Prometheus' own HTTP API returns the
//! data plane's series with non-zero values for both nodes.

use std::time::{Duration, Instant};

use ssi_tests::prom::Prometheus;
use ssi_tests::{launch, scratch_dir, secret_file, wait_all, NodeOpts};

fn port() -> u16 {
    ssi_tests::free_port()
}

#[test]
fn prometheus_scrapes_non_zero_series_from_both_nodes() {
    let dir = scratch_dir("prometheus");
    let s = secret_file(&dir, "secret", 51);
    let apis = [port(), port()];
    let node = |id: u16| {
        let s = s.display().to_string();
        let cores = (id % 2).to_string();
        let api = format!("127.0.0.1:{}", apis[id as usize]);
        let a = [
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
            "20000",
            "--linger-secs",
            "120",
        ];
        NodeOpts::new(id, &a)
    };
    let nodes = launch(&[node(0), node(1)]);
    for n in &nodes {
        assert!(
            n.wait_for_output("workload seqs: OK", Duration::from_secs(120)),
            "{}",
            n.output()
        );
    }
    let prom = Prometheus::start(&dir, "ssi-dp", &apis, &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    // (series, whether both nodes must have a non-zero value): invalidations are sent only by
    // the home of the contended page, so one node suffices there.
    let wanted = [
        (
            "ssi_dp_faults_total{kind=\"read\",locality=\"remote\"}",
            true,
        ),
        ("ssi_dp_messages_sent_total", true),
        ("ssi_dp_page_sent_bytes_total", true),
        (
            "ssi_dp_fault_service_seconds_count{kind=\"write\",locality=\"remote\"}",
            true,
        ),
        ("ssi_dp_invalidations_total", false),
    ];
    let mut missing: Vec<(&str, bool)> = wanted.to_vec();
    while !missing.is_empty() && Instant::now() < deadline {
        missing.retain(|&(q, both)| {
            let r = prom.node_values(q);
            let on = |node: &str| r.iter().any(|(n, v)| n == node && *v > 0.0);
            let ok = if both {
                on("0") && on("1")
            } else {
                on("0") || on("1")
            };
            !ok
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prom);
    assert!(
        missing.is_empty(),
        "Prometheus lacks non-zero values for: {missing:?}"
    );
    for mut n in nodes {
        n.kill9();
    }
    let _ = wait_all(Vec::new(), Duration::ZERO);
    let _ = std::fs::remove_dir_all(&dir);
}
