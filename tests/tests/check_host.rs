//! `ssi-dp check-host` on this host, for real: every item is reported with a valid status,
//! the exit status agrees with the items, `--json` says what the text says, usage errors
//! exit 2, and `--fix` changes `net.core.busy_poll` (the one setting it is asked to fix
//! here), reports the value it replaced, and finds nothing left to do the second time. The
//! test puts the sysctl back as it found it.

use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;
use ssi_tests::ssi_dp_bin;

/// Every item, in report order (docs/tuning.md, "Checking a host").
const ITEMS: &[&str] = &[
    "cores",
    "pm_qos",
    "isolcpus",
    "nohz_full",
    "rcu_nocbs",
    "irq_affinity",
    "irqbalance",
    "userfaultfd",
    "io_uring",
    "memlock",
    "busy_poll",
    "busy_read",
    "thp",
    "governor",
    "haltpoll",
    "page_reporting",
    "kvm",
];

const BUSY_POLL: &str = "/proc/sys/net/core/busy_poll";

/// The `--fix` test changes a sysctl the other tests read.
static HOST: Mutex<()> = Mutex::new(());

/// Runs `ssi-dp check-host ARGS`: (exit code, stdout, stderr).
fn check_host(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ssi_dp_bin())
        .arg("check-host")
        .args(args)
        .output()
        .expect("run ssi-dp");
    let code = out.status.code().expect("check-host exited by a signal");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("unrecognized subcommand"),
        "this ssi-dp has no check-host: rebuild it (cargo build -p ssi-dp)"
    );
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// The item lines of the text report: (name, status, detail).
fn item_lines(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(' ')?;
            if !ITEMS.contains(&name) {
                return None;
            }
            let rest = rest.trim_start();
            let status = ["cannot check", "change", "ok"]
                .into_iter()
                .find(|s| rest.starts_with(&format!("{s} ")))
                .unwrap_or_else(|| panic!("no valid status in {line:?}"));
            let detail = rest[status.len()..].trim_start().to_string();
            Some((name.to_string(), status.to_string(), detail))
        })
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn every_item_is_reported_and_the_exit_status_and_json_agree() {
    let _host = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let (code, text, stderr) = check_host(&[]);
    println!("{text}");
    assert!(code == 0 || code == 1, "exit {code}: {stderr}\n{text}");
    let items = item_lines(&text);
    let names: Vec<&str> = items.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(names, ITEMS, "{text}");
    for (name, status, detail) in &items {
        assert!(!detail.is_empty(), "{name} says nothing");
        // A change comes with its fix on the next line.
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        let next = text.lines().nth(line + 1).unwrap_or_default();
        assert_eq!(
            status == "change",
            next.trim_start().starts_with("fix"),
            "{name}: {next:?}"
        );
    }

    let (jcode, json, stderr) = check_host(&["--json"]);
    assert_eq!(jcode, code, "{stderr}");
    let v: Value = serde_json::from_str(&json).expect("--json prints one JSON object");
    let jitems = v["items"].as_array().expect("items");
    assert_eq!(jitems.len(), items.len());
    let mut blocking = Vec::new();
    for ((name, status, _), j) in items.iter().zip(jitems) {
        assert_eq!(j["name"], name.as_str());
        assert_eq!(j["status"], status.as_str(), "{name}");
        assert!(j["detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(j["fix"].is_string(), status == "change", "{name}");
        if status == "change" && j["counts_for_spin"] == true {
            blocking.push(name.as_str());
        }
    }
    let expected = if blocking.is_empty() { 0 } else { 1 };
    assert_eq!(code, expected, "exit status against the items {blocking:?}");
    assert_eq!(v["exit_code"], expected);
    assert_eq!(v["ready_for_spin"], blocking.is_empty());
    let verdict = if blocking.is_empty() {
        "yes".to_string()
    } else {
        format!("no, change {}", blocking.join(", "))
    };
    let summary = format!(
        "ready for --idle spin on CPUs {}: {verdict}",
        v["cores"].as_str().unwrap()
    );
    assert!(text.contains(&summary), "{summary:?} not in\n{text}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--cores", "3-1"][..],
        &["--only", "pm_qos,no_such_item"],
        &["--no-such-flag"],
    ] {
        let (code, out, err) = check_host(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?} printed a report: {out}");
        assert!(!err.is_empty(), "{args:?} said nothing");
    }
}

/// Writes the value back however the test ends.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        std::fs::write(BUSY_POLL, format!("{}\n", self.0)).expect("restore net.core.busy_poll");
    }
}

#[test]
fn fix_sets_busy_poll_and_reports_what_it_replaced() {
    let _host = HOST.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() {
        let (code, _, err) = check_host(&["--fix", "--only", "busy_poll"]);
        assert_eq!(code, 2);
        assert!(err.contains("needs root"), "{err}");
        eprintln!("not root: only the refusal of --fix was checked");
        return;
    }
    let original = match std::fs::read_to_string(BUSY_POLL) {
        Ok(v) => v.trim().to_string(),
        Err(e) => {
            // Then the item must say it cannot check, and --fix has nothing to do.
            let (code, text, _) = check_host(&["--fix", "--only", "busy_poll"]);
            assert_eq!(code, 0, "{text}");
            assert!(text.contains("cannot check"), "{e}: {text}");
            return;
        }
    };
    let restore = Restore(original.clone());
    std::fs::write(BUSY_POLL, "0\n").expect("set net.core.busy_poll=0");

    let (code, json, err) = check_host(&["--fix", "--only", "busy_poll", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}{err}"));
    assert_eq!(code, 0, "busy_poll is advisory: {json}");
    let fixes = v["fixes"].as_array().unwrap();
    assert_eq!(fixes.len(), 1, "{json}");
    assert_eq!(fixes[0]["item"], "busy_poll");
    assert_eq!(fixes[0]["path"], BUSY_POLL);
    assert_eq!(fixes[0]["previous"], "0");
    assert_eq!(fixes[0]["value"], "50");
    assert_eq!(fixes[0]["undo"], "sysctl -w net.core.busy_poll=0");
    assert_eq!(fixes[0]["ok"], true, "{json}");
    assert_eq!(
        v["items"][0]["status"], "ok",
        "checked again after the fix: {json}"
    );
    assert_eq!(std::fs::read_to_string(BUSY_POLL).unwrap().trim(), "50");

    let (code, text, _) = check_host(&["--fix", "--only", "busy_poll"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("--fix: nothing to change at run time"),
        "{text}"
    );
    assert_eq!(item_lines(&text)[0].1, "ok", "{text}");

    drop(restore);
    assert_eq!(std::fs::read_to_string(BUSY_POLL).unwrap().trim(), original);
}
