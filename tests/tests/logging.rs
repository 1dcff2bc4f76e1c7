//! Structured logs: with `--log-format json` every log line a node writes is one JSON object
//! (checked with a JSON parser that also refuses a key given twice) carrying its node id,
//! with typed fields (numbers as numbers, the shard span's fields listed); with
//! `--trace-page`, every protocol step on that page is an event with the transaction id, and
//! one fault's transaction can be followed from the requester to the home. `--log` and
//! `RUST_LOG` filter the events; a filter that does not parse is a usage error.

use std::collections::BTreeSet;
use std::fmt;
use std::process::Command;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use ssi_tests::{scratch_dir, secret_file, ssi_dp_bin};

/// A JSON value parsed by a visitor that fails on a key repeated in one object (serde_json's
/// own `Value` keeps the last one silently).
struct NoDup;

impl<'de> Deserialize<'de> for NoDup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDupVisitor)
    }
}

struct NoDupVisitor;

impl<'de> Visitor<'de> for NoDupVisitor {
    type Value = NoDup;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoDup, E> {
        Ok(NoDup)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDup, E> {
        Ok(NoDup)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDup, E> {
        Ok(NoDup)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDup, E> {
        Ok(NoDup)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDup, E> {
        Ok(NoDup)
    }
    fn visit_unit<E>(self) -> Result<NoDup, E> {
        Ok(NoDup)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<NoDup, A::Error> {
        while a.next_element::<NoDup>()?.is_some() {}
        Ok(NoDup)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<NoDup, A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(k) = a.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(serde::de::Error::custom(format!("key {k:?} appears twice")));
            }
            a.next_value::<NoDup>()?;
        }
        Ok(NoDup)
    }
}

/// Parses one log line strictly: one JSON object, no key twice.
fn parse_line(line: &str) -> serde_json::Value {
    if let Err(e) = serde_json::from_str::<NoDup>(line) {
        panic!("not a JSON line without repeated keys ({e}): {line}");
    }
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn port() -> u16 {
    ssi_tests::free_port()
}

/// Runs two nodes of the counters workload with JSON logs, each with its extra arguments
/// and RUST_LOG (unset when `None`); returns their outputs.
fn run_pair(
    secret: &std::path::Path,
    extra: [&[&str]; 2],
    rust_log: [Option<&str>; 2],
) -> Vec<std::process::Output> {
    let ports = [port(), port()];
    // The nodes must run at the same time (each waits for the other to form the mesh).
    let handles: Vec<_> = (0..2u16)
        .map(|id| {
            let mut c = ssi_tests::pair_node(id, ports, secret);
            c.args(["--workload", "counters", "--ops", "500"])
                .args(["--log-format", "json", "--connect-timeout", "30"])
                .args(extra[id as usize]);
            match rust_log[id as usize] {
                Some(f) => c.env("RUST_LOG", f),
                None => c.env_remove("RUST_LOG"),
            };
            std::thread::spawn(move || c.output().expect("run ssi-dp"))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn json_logs_and_page_traces_correlate_across_nodes() {
    let dir = scratch_dir("logging");
    let s = secret_file(&dir, "secret", 61);
    // Page 1 holds counter 0 of the counters workload; node 0 homes it.
    let traced = "0x1000";
    let trace = ["--trace-page", traced];
    let outs = run_pair(&s, [&trace, &trace], [None, None]);
    let mut txns: Vec<Vec<u64>> = Vec::new();
    for (id, o) in outs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "node {id}:\n{stdout}\n{stderr}");
        assert!(stdout.contains("workload counters: OK"), "{stdout}");
        let mut mine = Vec::new();
        let (mut formed, mut in_shard) = (false, false);
        for line in stderr.lines() {
            let v = parse_line(line);
            assert!(v.is_object(), "{line}");
            assert_eq!(v["node"].as_u64(), Some(id as u64), "{line}");
            assert!(
                v["level"].is_string()
                    && v["target"].is_string()
                    && v["msg"].is_string()
                    && v["ts"].is_f64(),
                "{line}"
            );
            // A float field stays a number.
            if let Some(t) = v.get("formed_in_s") {
                assert!(t.is_f64() && t.as_f64() > Some(0.0), "{line}");
                formed = true;
            }
            // Events of a shard thread list the shard span with its field.
            if let Some(spans) = v.get("spans") {
                let spans = spans.as_array().unwrap_or_else(|| panic!("{line}"));
                for s in spans {
                    assert!(s["name"].is_string(), "{line}");
                    if s["name"] == "shard" {
                        assert_eq!(s["shard"].as_u64(), Some(0), "{line}");
                        in_shard = true;
                    }
                }
            }
            if v["target"] == "ssi_dp::trace" {
                assert_eq!(v["page"].as_u64(), Some(1), "{line}");
                if let Some(t) = v["txn"].as_u64().filter(|&t| t != 0) {
                    mine.push(t);
                }
            }
        }
        assert!(
            !mine.is_empty(),
            "node {id} traced no step of page 1:\n{stderr}"
        );
        assert!(formed, "node {id}: no formed_in_s field:\n{stderr}");
        assert!(
            in_shard,
            "node {id}: no event inside the shard span:\n{stderr}"
        );
        txns.push(mine);
    }
    // A transaction node 1 started on page 1 shows up in its home's trace too.
    assert!(
        txns[1].iter().any(|t| txns[0].contains(t)),
        "no transaction id common to both traces: {:?} / {:?}",
        &txns[0][..txns[0].len().min(10)],
        &txns[1][..txns[1].len().min(10)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_and_rust_log_filter_events_and_bad_filters_are_usage_errors() {
    let dir = scratch_dir("log-filter");
    let s = secret_file(&dir, "secret", 62);
    // Node 0: --log warn (overriding the RUST_LOG it is given); node 1: RUST_LOG keeps info
    // only for the ssi-dp binary's own events.
    let outs = run_pair(
        &s,
        [&["--log", "warn"], &[]],
        [Some("debug"), Some("warn,ssi_dp=info")],
    );
    for (id, o) in outs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "node {id}:\n{stderr}");
        let lines: Vec<_> = stderr.lines().map(parse_line).collect();
        for v in &lines {
            let level = v["level"].as_str().unwrap_or_default();
            match id {
                0 => assert!(level == "WARN" || level == "ERROR", "node 0 wrote {v}"),
                _ => assert!(
                    level == "WARN"
                        || level == "ERROR"
                        || (level == "INFO" && v["target"].as_str().unwrap().starts_with("ssi_dp")),
                    "node 1 wrote {v}"
                ),
            }
        }
        if id == 1 {
            assert!(
                lines
                    .iter()
                    .any(|v| v["msg"].as_str().unwrap().contains("cluster formed")),
                "node 1 kept no info event of its own:\n{stderr}"
            );
        }
    }
    // Filters that do not parse: exit code 2 before anything starts, naming the source.
    for (arg, env, names) in [
        (Some("engine=loud"), None, "--log"),
        (None, Some("engine=loud"), "RUST_LOG"),
    ] {
        let mut c = Command::new(ssi_dp_bin());
        c.args(["--node-id", "0", "--listen", "127.0.0.1:1"]);
        if let Some(a) = arg {
            c.args(["--log", a]);
        }
        match env {
            Some(e) => c.env("RUST_LOG", e),
            None => c.env_remove("RUST_LOG"),
        };
        let o = c.output().expect("run ssi-dp");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(names) && stderr.contains("loud"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
