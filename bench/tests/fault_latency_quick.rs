//! `fault-latency --quick` as CI runs it: every scenario with a few hundred samples on a real
//! cluster (node processes on loopback, `block` idle so that a loaded 2-CPU machine stays
//! correct). Checks the output, not the speed: every row present with the sample count asked
//! for, the JSON lines parse and hold ordered percentiles, the breakdown matched samples, the
//! plot has a line per scenario, every HDR log reads back with the same count, and `show` /
//! `compare` / `plot` read the logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_fault-latency");

/// Runs the benchmark binary, killing it if it runs past `limit`.
fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(EXE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fault-latency");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "fault-latency {args:?} ran past {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const LABELS: [&str; 20] = [
    "floor",
    "local-zero",
    "remote-read",
    "remote-read-shared",
    "remote-read-fwd",
    "remote-write-k0",
    "remote-write-k1",
    "remote-write-k2",
    "upgrade",
    "pingpong",
    "throughput-t1",
    "floor-throughput-t1",
    "throughput-t4",
    "floor-throughput-t4",
    "throughput-t16",
    "floor-throughput-t16",
    "prefetch-16",
    "floor-prefetch-16",
    "prefetch-16-t4",
    "prefetch-16-t16",
];

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not an unsigned number in {v}"))
}

fn hlog_of(dir: &Path, label: &str) -> PathBuf {
    let prefix = format!("{label}.");
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".hlog"))
                // `remote-read.` must not pick `remote-read-fwd.`: the rest is the axis
                // (transport.auth.idle.hlog).
                && p.file_name().unwrap().to_str().unwrap()[prefix.len()..]
                    .matches('.')
                    .count()
                    == 3
        })
        .collect();
    assert_eq!(found.len(), 1, "one log for {label} in {dir:?}: {found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn quick_run_writes_every_row_log_and_plot() {
    let dir = scratch("quick");
    let hlog = dir.join("hlog");
    let plot = dir.join("plot.svg");
    let out = run(
        &[
            "--quick",
            "--json",
            "--breakdown",
            "--no-progress",
            "--idle",
            "block",
            "--transport",
            "auto",
            "--hlog",
            hlog.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
        Duration::from_secs(240),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{stderr}",
        out.status
    );
    // The table (stderr in JSON mode) names the machine, placement and idle policy.
    for needle in [
        "machine:",
        "placement:",
        "idle block",
        "pm_qos:",
        "breakdown remote-read",
    ] {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from:\n{stderr}"
        );
    }

    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect();
    let label_of = |v: &Value| {
        v.get("label")
            .or_else(|| v.get("scenario"))
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    };
    let labels: Vec<String> = rows.iter().map(label_of).collect();
    assert_eq!(labels, LABELS, "rows in run order");

    for r in &rows {
        let label = label_of(r);
        for k in ["scenario", "transport", "idle", "placement"] {
            assert!(!r[k].as_str().unwrap().is_empty(), "{k} empty in {r}");
        }
        assert_eq!(r["idle"], "block");
        let threads = u(r, "threads");
        let count = u(r, "count");
        let tp_threads = label
            .strip_prefix("throughput-t")
            .or_else(|| label.strip_prefix("floor-throughput-t"));
        match tp_threads {
            // 600 faults split evenly over the threads, rounded up.
            Some(t) => {
                assert_eq!(threads, t.parse::<u64>().unwrap());
                assert_eq!(count, 600u64.div_ceil(threads) * threads, "{r}");
            }
            None if label == "prefetch-16" => {
                // 600 pages scanned, each touch a sample; prefetch must have saved faults.
                assert_eq!((threads, count), (1, 600), "{r}");
                let faults = u(r, "faults");
                assert!(faults > 0 && faults < count / 2, "{r}");
                assert!(u(r, "prefetch_requests") >= count / 2, "{r}");
                assert!(r["pages_per_s"].as_f64().unwrap() > 0.0, "{r}");
            }
            None if label.starts_with("prefetch-16-t") => {
                // The 600 pages split over the threads (rounded up), each scanning its run.
                let t: u64 = label["prefetch-16-t".len()..].parse().unwrap();
                assert_eq!(threads, t, "{r}");
                assert_eq!(count, 600u64.div_ceil(t) * t, "{r}");
                let faults = u(r, "faults");
                assert!(faults > 0 && faults < count / 2, "{r}");
                assert!(u(r, "prefetch_requests") >= count / 2, "{r}");
            }
            None if label == "floor-prefetch-16" => {
                // One fault, one request, one 16-page COPY per block of the 600 pages.
                assert_eq!((threads, count), (1, 600), "{r}");
                assert_eq!(u(r, "faults"), 600u64.div_ceil(16), "{r}");
                assert_eq!(u(r, "prefetch_requests"), 600u64.div_ceil(16), "{r}");
            }
            None => {
                assert_eq!(threads, 1);
                assert_eq!(count, 300, "{r}");
            }
        }
        let p: Vec<u64> = ["p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"]
            .iter()
            .map(|k| u(r, k))
            .collect();
        assert!(p[0] > 0 && p.windows(2).all(|w| w[0] <= w[1]), "{r}");
        assert!(r["faults_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["other_load_pct"].as_f64().is_some(), "{r}");
        let ratio = &r["floor_ratio"];
        if label.contains("prefetch-16") {
            // Mostly hits: no ratio to the latency floor.
            assert!(ratio.is_null(), "{r}");
        } else {
            assert!(ratio.as_f64().is_some_and(|x| x > 0.0), "{r}");
        }
        if label == "floor" {
            assert_eq!(ratio.as_f64(), Some(1.0));
        }
        // Throughput and prefetch rows have a rate floor from the same run.
        let rate = &r["rate_floor_ratio"];
        if label.starts_with("floor-throughput") || label.starts_with("floor-prefetch") {
            assert_eq!(rate.as_f64(), Some(1.0), "{r}");
            assert_eq!(r["transport"], "plain-tcp", "{r}");
        } else if label.starts_with("prefetch-16-t") {
            // The prefetch floor has one thread: nothing bounds the multi-thread rows.
            assert!(rate.is_null(), "{r}");
        } else if label.starts_with("throughput") || label.starts_with("prefetch") {
            assert!(rate.as_f64().is_some_and(|x| x > 0.0), "{r}");
        } else {
            assert!(rate.is_null(), "{r}");
        }
        // Every sample's shard record was found for most samples, and the steps are there.
        let b = &r["breakdown"];
        assert!(u(&b["fault_to_event"], "count") > 0, "{r}");
        assert!(u(&b["installed_to_resumed"], "count") > 0, "{r}");
        if label == "local-zero" {
            assert!(
                b.get("sent_to_received").is_none(),
                "a local fault sends nothing: {r}"
            );
        } else {
            assert!(u(&b["sent_to_received"], "count") > 0, "{r}");
        }
        // The node that answered node 0 timed its own part (the owner for a forward).
        let answerer = match label.as_str() {
            "remote-read-fwd" => Some("answered_by_node2"),
            "local-zero" => None,
            l if l.starts_with("floor") => None,
            _ => Some("answered_by_node1"),
        };
        if let Some(key) = answerer {
            assert!(u(&b[key], "count") > 0, "{key} missing: {r}");
        }

        // The HDR log holds exactly the samples of the row.
        let log = hlog_of(&hlog, &label);
        let series = engine::histlog::read_log(&log).unwrap();
        assert_eq!(series.len(), 1, "{log:?}");
        assert_eq!(series[0].0, label);
        assert_eq!(series[0].1.len(), count, "{log:?}");
    }

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<polyline").count(), LABELS.len());
    for l in &LABELS {
        assert!(
            svg.contains(&format!("data-label=\"{l}\"")),
            "{l} missing from the plot"
        );
    }

    let show = run(&["show", hlog.to_str().unwrap()], Duration::from_secs(30));
    assert!(show.status.success());
    let text = String::from_utf8_lossy(&show.stdout);
    for l in &LABELS {
        assert!(text.contains(l), "{l} missing from show:\n{text}");
    }
    let cmp = run(
        &["compare", hlog.to_str().unwrap(), hlog.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(cmp.status.success());
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(
        text.contains("1.00x") && !text.contains("only in"),
        "{text}"
    );
    let replot = dir.join("replot.svg");
    let out = run(
        &[
            "plot",
            "--out",
            replot.to_str().unwrap(),
            "--subtitle",
            "from the logs",
            hlog.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    let svg = std::fs::read_to_string(&replot).unwrap();
    assert_eq!(svg.matches("<polyline").count(), LABELS.len());
    assert!(svg.contains("from the logs"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_refused_with_a_message() {
    let out = run(&["--scenarios", "nope"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown scenario \"nope\""), "{stderr}");
    assert!(stderr.contains("floor-throughput"), "{stderr}");

    let out = run(&["--fault-cpus", "x"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fault-cpus"));

    let dir = scratch("bad");
    let missing = dir.join("missing.hlog");
    let out = run(
        &["show", missing.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.hlog"));

    let junk = dir.join("junk.hlog");
    std::fs::write(
        &junk,
        "#[StartTime: 1 (seconds since epoch)]\n0.1,0.2,3.0,not-base64!\n",
    )
    .unwrap();
    let out = run(&["show", junk.to_str().unwrap()], Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a corrupt log is an error, not a panic"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quick_run_in_network_namespaces() {
    let probe = Command::new("ip").args(["netns", "list"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: `ip netns` is not available (install iproute2, run as root)");
        return;
    }
    let out = run(
        &[
            "--quick",
            "--json",
            "--netns",
            "--no-progress",
            "--idle",
            "block",
            "--scenarios",
            "floor,remote-read,remote-read-fwd",
        ],
        Duration::from_secs(240),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains("network namespaces"), "{stderr}");
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let labels: Vec<&str> = rows.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["floor", "remote-read", "remote-read-fwd"]);
    for r in &rows {
        assert_eq!(u(r, "count"), 300, "{r}");
    }
    // Every namespace the run made is gone (they are all named `ssifl<pid>-...`).
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("ssifl"), "namespaces left behind: {left}");
}
