//! A real Prometheus server for the tests that check what it makes of the nodes' `/metrics`
//! (Debian's `prometheus` package, which scripts/test and CI install, with `promtool`): start
//! one with a scrape configuration, ask its HTTP API, stop it when dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The executable `bin` on `PATH`; panics, saying which package to install, without it.
pub fn tool(bin: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|f| f.exists())
        })
        .unwrap_or_else(|| {
            panic!("{bin} is missing: install Debian's `prometheus` package (scripts/test does)")
        })
}

/// The body of `GET path` on a loopback port (HTTP/1.0, so never chunked), whatever the
/// status; `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split("\r\n\r\n").nth(1).map(str::to_string)
}

/// `s` percent-encoded for a query string (everything but letters, digits and `_`).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running Prometheus server, killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    /// Its HTTP port on loopback.
    pub port: u16,
    child: Child,
}

impl Prometheus {
    /// Starts Prometheus in `dir` (configuration and database there), scraping the loopback
    /// ports `targets` every second as job `job`, and evaluating the rule files `rules` every
    /// second; returns once its API answers.
    pub fn start(dir: &Path, job: &str, targets: &[u16], rules: &[&Path]) -> Prometheus {
        let port = crate::free_port();
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let rules: Vec<String> = rules.iter().map(|r| format!("'{}'", r.display())).collect();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                rules.join(", "),
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/-/ready").is_none_or(|b| !b.contains("Ready")) {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited at start with {st} (its configuration: {cfg:?})");
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The JSON answer of `GET /api/v1/<path>` (e.g. `rules`), `None` when there is none.
    pub fn api(&self, path: &str) -> Option<serde_json::Value> {
        let body = http_get(self.port, &format!("/api/v1/{path}"))?;
        serde_json::from_str(&body).ok()
    }

    /// The JSON answer of the PromQL instant query `q` (`status` is `success` or `error`).
    pub fn query(&self, q: &str) -> Option<serde_json::Value> {
        self.api(&format!("query?query={}", url_encode(q)))
    }

    /// The samples of the instant query `q` as `(labels, value)`; empty on an error.
    pub fn samples(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let Some(v) = self.query(q) else {
            return Vec::new();
        };
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|s| {
                        let labels = s["metric"]
                            .as_object()?
                            .iter()
                            .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect::<Option<_>>()?;
                        let val = s["value"][1].as_str()?.parse().ok()?;
                        Some((labels, val))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The samples of the instant query `q` as `(node label, value)`; empty on an error
    /// (a sample without a `node` label is left out).
    pub fn node_values(&self, q: &str) -> Vec<(String, f64)> {
        self.samples(q)
            .into_iter()
            .filter_map(|(mut labels, v)| Some((labels.remove("node")?, v)))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
