//! Structured logs: with `--log-format json` every log line a node writes is a JSON object
//! carrying its node id; with `--trace-page`, every protocol step on that page is an event
//! with the transaction id, and one fault's transaction can be followed from the requester to
//! the home.

use std::process::Command;

use ssi_tests::{scratch_dir, secret_file, ssi_dp_bin};

fn port() -> u16 {
    ssi_tests::free_port()
}

#[test]
fn json_logs_and_page_traces_correlate_across_nodes() {
    let dir = scratch_dir("logging");
    let s = secret_file(&dir, "secret", 61);
    let ports = [port(), port()];
    // Page 1 holds counter 0 of the counters workload; node 0 homes it.
    let traced = "0x1000";
    // The nodes must run at the same time (each waits for the other to form the mesh).
    let handles: Vec<_> = (0..2u16)
        .map(|id| {
            let s = s.clone();
            std::thread::spawn(move || {
                Command::new(ssi_dp_bin())
                    .args(["--node-id", &id.to_string()])
                    .args(["--listen", &format!("127.0.0.1:{}", ports[id as usize])])
                    .args([
                        "--peer",
                        &format!("{}@127.0.0.1:{}", 1 - id, ports[1 - id as usize]),
                    ])
                    .args([
                        "--memory",
                        "16M",
                        "--cores",
                        &(id % 2).to_string(),
                        "--idle",
                        "block",
                    ])
                    .arg("--cluster-secret-file")
                    .arg(&s)
                    .args([
                        "--workload",
                        "counters",
                        "--ops",
                        "500",
                        "--log-format",
                        "json",
                    ])
                    .args(["--trace-page", traced, "--connect-timeout", "30"])
                    .output()
                    .expect("run ssi-dp")
            })
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut txns: Vec<Vec<u64>> = Vec::new();
    for (id, o) in outs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "node {id}:\n{stdout}\n{stderr}");
        assert!(stdout.contains("workload counters: OK"), "{stdout}");
        let mut mine = Vec::new();
        for line in stderr.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert_eq!(v["node"].as_u64(), Some(id as u64), "{line}");
            assert!(
                v["level"].is_string() && v["msg"].is_string() && v["ts"].is_number(),
                "{line}"
            );
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
