//! The Grafana dashboard (`packaging/grafana/ssi-dp.json`) and the Prometheus alert rules
//! (`packaging/prometheus/ssi-dp-alerts.yml`) against the real tools and a real cluster:
//! `promtool` checks the rules and runs their unit tests (each alert fires on series made for
//! it and not on healthy ones); then a real Prometheus scrapes a three-node loopback cluster
//! formed by `ssi-dp up` (control plane, home migration, a bounded replica cache) while it runs
//! a workload full of remote faults, evaluating the rule file as it would in production. Every
//! dashboard expression, with its variables set to all nodes and to one node, must answer with
//! at least one number; every alert rule must evaluate without error and fire on none of the
//! healthy nodes; and every series that an expression or a rule selects must exist, so that a
//! misspelt metric or label cannot hide behind `or vector(0)` or an alert that never fires.
//! The state gauges must say what a healthy cluster is: every node sees every member alive,
//! every node is healthy and ready, no shard is stalled.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use ssi_tests::prom::{tool, Prometheus};
use ssi_tests::{free_port, scratch_dir, ssi_dp_bin};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/grafana/ssi-dp.json"
);
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/prometheus/ssi-dp-alerts.yml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/prometheus/ssi-dp-alerts.test.yml"
);

/// The scrape job the rules expect (`job="ssi-dp"`) and the dashboard's `$job`.
const JOB: &str = "ssi-dp";

#[test]
fn promtool_checks_the_alert_rules_and_runs_their_unit_tests() {
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let out = Command::new(tool("promtool"))
            .args(args)
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("SUCCESS"),
            "promtool {} {} failed:\n{text}",
            args[0],
            args[1]
        );
    }
}

/// The dashboard's JSON.
fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(ps: &'a Value, out: &mut Vec<&'a Value>) {
        for p in ps.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// `(panel title, expr)` of every query target of the dashboard.
fn targets(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            let expr = t["expr"].as_str().unwrap_or_default().to_string();
            out.push((title, expr));
        }
    }
    out
}

/// `label_values(SELECTOR, LABEL)` of every query variable, as `(name, selector, label)`.
fn variable_queries(d: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?").to_string();
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: not label_values(...): {q}"));
        let (sel, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("variable {name}: label_values without a label: {q}"));
        out.push((name, sel.trim().to_string(), label.trim().to_string()));
    }
    out
}

/// `expr` with the dashboard's variables set: `$job` to the scrape job, `$node` to `node`
/// (a regex: `.*` is Grafana's "All"), `$__rate_interval` to a minute (four scrapes of Grafana's
/// default interval and then some). An unknown variable fails the test.
fn substitute(expr: &str, node: &str) -> String {
    let mut e = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("${job}", JOB),
        ("$job", JOB),
        ("${node}", node),
        ("$node", node),
    ] {
        e = e.replace(var, value);
    }
    assert!(
        !e.contains('$'),
        "unknown dashboard variable left in {e} (from {expr})"
    );
    e
}

/// The series selectors of `expr` (`ssi_dp_...{...}` and `up{...}`, the braces kept), each of
/// which must select something on a healthy cluster.
fn selectors(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // The end of a string literal starting at `i`.
    let skip_string = |mut i: usize| {
        let q = b[i];
        i += 1;
        while i < b.len() && b[i] != q {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i + 1
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(i);
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let ident = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            let metric = ident.starts_with("ssi_dp_") || ident == "up";
            if metric && b.get(j) != Some(&b'(') {
                if b.get(j) == Some(&b'{') {
                    let mut k = j + 1;
                    while k < b.len() && b[k] != b'}' {
                        k = if matches!(b[k], b'"' | b'\'' | b'`') {
                            skip_string(k)
                        } else {
                            k + 1
                        };
                    }
                    i = (k + 1).min(b.len());
                    out.push(format!("{ident}{}", &expr[j..i]));
                } else {
                    out.push(ident.to_string());
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn selectors_are_found_inside_expressions() {
    assert_eq!(
        selectors(
            "sum by (node) (rate(ssi_dp_faults_total{job=~\"$job\", locality=\"re}mote\"}[1m])) \
             / ssi_dp_x + count(up == 0) or vector(0)"
        ),
        [
            "ssi_dp_faults_total{job=~\"$job\", locality=\"re}mote\"}",
            "ssi_dp_x",
            "up"
        ]
    );
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_on_a_templated_prometheus() {
    let d = dashboard();
    assert!(d["title"].is_string() && d["uid"].is_string() && d["schemaVersion"].is_u64());
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "job", "node"]);
    let mut ids = Vec::new();
    for p in panels(&d) {
        ids.push(p["id"].as_u64().expect("panel id"));
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("panel title");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        let ts = p["targets"].as_array().expect("targets");
        assert!(!ts.is_empty(), "panel {title} has no query");
        for t in ts {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
            let e = t["expr"].as_str().unwrap_or_default();
            assert!(!e.trim().is_empty(), "panel {title} has an empty query");
            substitute(e, ".*");
        }
    }
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "panel ids repeat");
    assert!(targets(&d).len() >= 30, "{} queries", targets(&d).len());
}

/// What is wrong with the answer to one query, if anything: it must succeed and, when
/// `data` is set, hold at least one sample with a number (not NaN).
fn judge(prom: &Prometheus, q: &str, data: bool) -> Option<String> {
    let Some(v) = prom.query(q) else {
        return Some("no JSON answer".into());
    };
    if v["status"] != "success" {
        return Some(format!("{}: {}", v["errorType"], v["error"]));
    }
    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    if !data {
        return None;
    }
    if result.is_empty() {
        return Some("no series".into());
    }
    let number = result.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|x| x.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    });
    (!number).then(|| format!("no sample is a number: {result:?}"))
}

/// Everything the dashboard asks that does not (yet) answer with data, as readable lines.
fn dashboard_gaps(prom: &Prometheus, d: &Value) -> Vec<String> {
    let mut gaps = Vec::new();
    for (title, expr) in targets(d) {
        for node in [".*", "0"] {
            let q = substitute(&expr, node);
            let mut qs = vec![q.clone()];
            qs.extend(selectors(&q));
            for s in qs {
                if let Some(why) = judge(prom, &s, true) {
                    gaps.push(format!("panel {title:?}, node {node:?}: {s}: {why}"));
                }
            }
        }
    }
    for (name, sel, label) in variable_queries(d) {
        let q = format!("count by ({label}) ({})", substitute(&sel, ".*"));
        if let Some(why) = judge(prom, &q, true) {
            gaps.push(format!("variable {name}: {q}: {why}"));
        }
    }
    gaps
}

/// Every alert rule Prometheus loaded: `(name, expr, state, health, last error)`.
fn rules(prom: &Prometheus) -> Vec<(String, String, String, String, String)> {
    let v = prom.api("rules").expect("GET /api/v1/rules");
    let mut out = Vec::new();
    for g in v["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            out.push((
                s("name"),
                s("query"),
                s("state"),
                s("health"),
                s("lastError"),
            ));
        }
    }
    out
}

/// Why the healthy cluster trips an alert rule, if it does: the rule did not evaluate, is
/// pending or firing, its expression fails or returns series, or a series it reads is
/// missing.
fn alert_problems(prom: &Prometheus) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, expr, state, health, err) in rules(prom) {
        if health != "ok" {
            problems.push(format!("{name}: health {health:?} ({err})"));
        }
        if state != "inactive" {
            problems.push(format!("{name}: {state}"));
        }
        match prom.query(&expr) {
            Some(v) if v["status"] == "success" => {
                let r = &v["data"]["result"];
                if r.as_array().is_none_or(|a| !a.is_empty()) {
                    problems.push(format!("{name} fires: {expr} = {r}"));
                }
            }
            other => problems.push(format!("{name}: {expr}: {other:?}")),
        }
        for s in selectors(&expr) {
            if let Some(why) = judge(prom, &s, true) {
                problems.push(format!("{name}: {s}: {why}"));
            }
        }
    }
    problems
}

/// What is wrong with the member-state, health, readiness and stall gauges of the healthy
/// three-node cluster (nodes and members 0, 1, 2), as readable lines.
fn state_problems(prom: &Prometheus) -> Vec<String> {
    let mut problems = Vec::new();
    let nodes = ["0", "1", "2"];
    let label = |l: &BTreeMap<String, String>, k: &str| l.get(k).cloned().unwrap_or_default();
    // (node, member) -> value of the `alive` series; and every other state must be 0.
    let alive = prom.samples(&format!(
        "ssi_dp_member_state{{job=\"{JOB}\", state=\"alive\"}}"
    ));
    let seen: BTreeSet<(String, String)> = alive
        .iter()
        .map(|(l, _)| (label(l, "node"), label(l, "member")))
        .collect();
    let want: BTreeSet<(String, String)> = nodes
        .iter()
        .flat_map(|n| nodes.iter().map(|m| (n.to_string(), m.to_string())))
        .collect();
    if alive.len() != want.len() || seen != want {
        problems.push(format!(
            "ssi_dp_member_state{{state=\"alive\"}}: (node, member) {seen:?}, expected {want:?}"
        ));
    }
    for (l, v) in &alive {
        if *v != 1.0 {
            problems.push(format!(
                "node {} sees member {} not alive ({v})",
                label(l, "node"),
                label(l, "member")
            ));
        }
    }
    let other = prom.samples(&format!(
        "ssi_dp_member_state{{job=\"{JOB}\", state!=\"alive\"}}"
    ));
    if other.len() != 3 * want.len() {
        problems.push(format!(
            "{} series of ssi_dp_member_state for suspect, dead and left, expected {}",
            other.len(),
            3 * want.len()
        ));
    }
    for (l, v) in &other {
        if *v != 0.0 {
            problems.push(format!(
                "node {} sees member {} {} ({v})",
                label(l, "node"),
                label(l, "member"),
                label(l, "state")
            ));
        }
    }
    for gauge in ["ssi_dp_healthy", "ssi_dp_ready"] {
        let mut got = prom.node_values(&format!("{gauge}{{job=\"{JOB}\"}}"));
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, f64)> = nodes.iter().map(|n| (n.to_string(), 1.0)).collect();
        if got != want {
            problems.push(format!("{gauge}: {got:?}, expected {want:?}"));
        }
    }
    let stalled = prom.samples(&format!("ssi_dp_shard_stalled{{job=\"{JOB}\"}}"));
    let shard_nodes: BTreeSet<String> = stalled.iter().map(|(l, _)| label(l, "node")).collect();
    if shard_nodes.len() != nodes.len() {
        problems.push(format!(
            "ssi_dp_shard_stalled from nodes {shard_nodes:?}, expected every node"
        ));
    }
    for (l, v) in &stalled {
        if *v != 0.0 {
            problems.push(format!(
                "shard {} of node {} stalled ({v})",
                label(l, "shard"),
                label(l, "node")
            ));
        }
    }
    problems
}

/// `ssi-dp up` running an inventory; stopped in order (SIGTERM) when dropped.
struct Up {
    child: Child,
    log: std::path::PathBuf,
}

impl Up {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forms a three-node cluster with the API on `apis` from an inventory in `dir` (secret and
/// certificates created by `--init`), every node running the `partition` workload with home
/// migration and a bounded replica cache: remote faults, evictions and home moves go on until
/// it is stopped (the workload would take many minutes). One worker per node: three workers
/// and three shards already share two CPUs here, and the rules' latency threshold must hold.
fn start_cluster(dir: &Path, apis: &[u16; 3]) -> Up {
    let mut inv = String::from(
        "[cluster]\nsecret_file = \"secret\"\nheartbeat_ms = 50\nsuspect_ms = 500\n\
         dead_ms = 1500\n\n[tls]\nca = \"certs/ca.pem\"\n",
    );
    for (id, api) in apis.iter().enumerate() {
        inv.push_str(&format!(
            "\n[[node]]\nid = {id}\nlisten = \"127.0.0.1:{}\"\ncontrol = \"127.0.0.1:{}\"\n\
             api = \"127.0.0.1:{api}\"\nmemory = \"16M\"\ncores = \"{}\"\nidle = \"block\"\n\
             cert = \"certs/node{id}.pem\"\nkey = \"certs/node{id}.key\"\n",
            free_port(),
            free_port(),
            id % 2
        ));
    }
    let path = dir.join("inventory.toml");
    std::fs::write(&path, inv).expect("write the inventory");
    let log = dir.join("up.log");
    let out = File::create(&log).expect("create up.log");
    let child = Command::new(ssi_dp_bin())
        .args(["up", "--init"])
        .arg(&path)
        .args([
            "--",
            "--workload",
            "partition",
            "--ops",
            "50000000",
            "--workers",
            "1",
            "--replica-cache",
            "512K",
            "--placement",
            "on",
        ])
        .stdout(Stdio::from(out.try_clone().expect("dup log")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start ssi-dp up");
    Up { child, log }
}

#[test]
fn a_live_cluster_fills_every_dashboard_panel_and_trips_no_alert() {
    let started = Instant::now();
    let d = dashboard();
    let dir = scratch_dir("observability");
    let apis = [free_port(), free_port(), free_port()];
    let mut up = start_cluster(&dir, &apis);
    let prom = Prometheus::start(&dir, JOB, &apis, &[Path::new(RULES)]);

    // Until every panel has data: the cluster forms, Prometheus scrapes it twice, the
    // workload's faults reach every node's rate windows.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut gaps = dashboard_gaps(&prom, &d);
    while !gaps.is_empty() && Instant::now() < deadline {
        if let Some(st) = up.exited() {
            panic!("the cluster stopped ({st}):\n{}", up.log());
        }
        std::thread::sleep(Duration::from_secs(1));
        gaps = dashboard_gaps(&prom, &d);
    }
    assert!(
        gaps.is_empty(),
        "dashboard queries without data after {:?}:\n{}\n--- cluster log:\n{}",
        started.elapsed(),
        gaps.join("\n"),
        up.log()
    );
    let filled = started.elapsed();

    // The state gauges of a healthy cluster: every node sees every member (itself included)
    // alive and in no other state, is healthy and ready, and no watchdog finds a shard stalled.
    let states = state_problems(&prom);
    assert!(
        states.is_empty(),
        "state gauges of a healthy cluster:\n{}\n--- cluster log:\n{}",
        states.join("\n"),
        up.log()
    );

    // Then no alert rule may trip, in five evaluations a second apart, nor in any of
    // Prometheus' own evaluations meanwhile (its ALERTS series holds pending alerts too).
    let rule_names: Vec<String> = rules(&prom).into_iter().map(|r| r.0).collect();
    let in_file = std::fs::read_to_string(RULES)
        .expect("read the rules")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(
        in_file >= 10 && rule_names.len() == in_file,
        "Prometheus loaded {rule_names:?} of the {in_file} rules in {RULES}"
    );
    let watched = Instant::now();
    for _ in 0..5 {
        let problems = alert_problems(&prom);
        assert!(
            problems.is_empty(),
            "alert rules on a healthy cluster:\n{}\n--- cluster log:\n{}",
            problems.join("\n"),
            up.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let window = watched.elapsed().as_secs() + 1;
    let alerts = prom
        .query(&format!("max_over_time(ALERTS[{window}s])"))
        .expect("query ALERTS");
    assert_eq!(alerts["status"], "success", "{alerts}");
    assert_eq!(
        alerts["data"]["result"],
        serde_json::json!([]),
        "alerts pending or firing on a healthy cluster"
    );
    assert!(up.exited().is_none(), "{}", up.log());
    // For the record: how far the busiest node's p99 stayed below SsiDpFaultLatencyHigh's.
    let p99 = prom.node_values(
        "histogram_quantile(0.99, sum by (node, le) (rate(\
         ssi_dp_fault_service_seconds_bucket{locality=\"remote\"}[5m])))",
    );
    eprintln!(
        "{} dashboard queries answered after {filled:?}; {} alert rules quiet; remote p99 \
         by node {p99:?}; {:?} in all",
        targets(&d).len(),
        rule_names.len(),
        started.elapsed()
    );
    drop(prom);
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}
