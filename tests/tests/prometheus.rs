//! A real Prometheus server (Debian's `prometheus`, installed by scripts/test and CI) scrapes
//! a running two-node loopback cluster; after a workload, Prometheus' own HTTP API returns the
//! data plane's series with non-zero values for both nodes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ssi_tests::{launch, scratch_dir, secret_file, wait_all, NodeOpts};

fn port() -> u16 {
    ssi_tests::free_port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split("\r\n\r\n").nth(1).map(str::to_string)
}

/// Values of a PromQL instant query, `(node label, value)`.
fn query(prom: u16, q: &str) -> Vec<(String, f64)> {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Some(body) = get(prom, &format!("/api/v1/query?query={enc}")) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return Vec::new();
    };
    v["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| {
                    let node = s["metric"]["node"].as_str()?.to_string();
                    let val = s["value"][1].as_str()?.parse().ok()?;
                    Some((node, val))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn prometheus_scrapes_non_zero_series_from_both_nodes() {
    let Ok(prom_bin) = which("prometheus") else {
        panic!("prometheus is missing: install Debian's `prometheus` package (scripts/test does)");
    };
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
    let prom = port();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ssi-dp\n    static_configs:\n      - targets: ['127.0.0.1:{}', '127.0.0.1:{}']\n",
            apis[0], apis[1]
        ),
    )
    .unwrap();
    let mut server = Command::new(prom_bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
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
            let r = query(prom, q);
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
    let _ = server.kill();
    let _ = server.wait();
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

fn which(bin: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|f| f.exists())
        })
        .ok_or(())
}
