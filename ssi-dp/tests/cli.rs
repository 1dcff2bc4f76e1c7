//! The `ssi-dp` binary's command line, run as a user runs it. (Having an integration test
//! here also makes `cargo test --workspace` build the binary, which the multi-process tests in
//! `tests/` start.)

use std::process::Command;

fn ssi_dp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ssi-dp"))
        .args(args)
        .output()
        .expect("run the ssi-dp binary")
}

#[test]
fn version_and_help_name_the_subcommands() {
    let v = ssi_dp(&["--version"]);
    assert!(v.status.success(), "{v:?}");
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(
        text.starts_with("ssi-dp ") && text.contains(env!("CARGO_PKG_VERSION")),
        "{text}"
    );
    let h = ssi_dp(&["--help"]);
    assert!(h.status.success(), "{h:?}");
    let text = String::from_utf8_lossy(&h.stdout);
    for sub in ["demo", "acpi", "up", "certs", "supervisor"] {
        assert!(text.contains(sub), "--help does not list {sub}:\n{text}");
    }
}

#[test]
fn an_unknown_flag_is_a_usage_error_that_names_it() {
    let out = ssi_dp(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn a_demo_with_too_many_nodes_is_refused_before_starting_any() {
    let out = ssi_dp(&["demo", "--nodes", "17"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--nodes must be 1..=16"), "{err}");
}
