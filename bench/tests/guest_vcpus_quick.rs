//! `guest-vcpus` on a short run: two vCPU counts with a few pages each, `block` idle (correct
//! on a loaded 2-CPU machine). Checks the table, not the speed: the placement line, one row per
//! vCPU count with the touches asked for, ordered percentiles, the per-vCPU and total rates
//! consistent with the mean, and bad arguments refused with a message.

use std::path::PathBuf;
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_guest-vcpus");

/// `ssi-dp` of the same build (cargo test --workspace builds it next to this binary).
fn ssi_dp() -> PathBuf {
    let p = PathBuf::from(EXE).with_file_name("ssi-dp");
    assert!(
        p.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` or build it first with \
         `cargo build -p ssi-dp`",
        p.display()
    );
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .output()
        .expect("run guest-vcpus")
}

#[test]
fn a_short_run_prints_one_consistent_row_per_vcpu_count() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: guest-vcpus runs a KVM guest (CI machines have it)"
    );
    let bin = ssi_dp();
    let out = run(&[
        "--ssi-dp",
        bin.to_str().expect("utf-8 path"),
        "--vcpus",
        "1,2",
        "--touch-pages",
        "64",
        "--idle",
        "block",
        "--shard-cpu",
        "1",
        "--home-cpu",
        "1",
        "--vcpu-cores",
        "0",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("# placement: node 0 shard on CPU 1 (block), its vCPU threads on CPUs 0"),
        "{text}"
    );
    assert!(text.contains("# other processes used"), "{text}");
    let rows: Vec<Vec<f64>> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim_start().starts_with("vcpus"))
        .map(|l| {
            l.split_whitespace()
                .take(10)
                .map(|w| w.parse().expect("a number"))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for (r, vcpus) in rows.iter().zip([1.0, 2.0]) {
        let [v, touches, p50, p99, p999, max, mean, per, total, _] = r[..] else {
            panic!("short row: {r:?}");
        };
        assert_eq!(v, vcpus);
        assert_eq!(touches, 64.0 * vcpus, "{text}");
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
            "{r:?}"
        );
        assert!(mean > 0.0 && mean <= max, "{r:?}");
        assert!((per - 1e6 / mean).abs() <= 1.0 + per * 1e-3, "{r:?}");
        assert!((total - per * vcpus).abs() <= 1.0 + total * 1e-3, "{r:?}");
    }
    assert_eq!(rows[0][9], 1.0, "the first row is the reference: {text}");
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = run(&["--vcpus", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vcpus takes counts from 1 to 64"));
    let out = run(&["--ssi-dp", "/nonexistent/ssi-dp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ssi-dp does not exist"));
    let out = run(&["--touch-pages", "4000"]);
    assert_eq!(out.status.code(), Some(2));
}
