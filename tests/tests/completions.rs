//! `ssi-dp completions SHELL` and `ssi-dp man [DIR]` with the real binary and the real tools:
//! the bash script, sourced in a real `bash`, registers a completion for `ssi-dp` that offers
//! the subcommands and the flags (driven as bash drives it: COMP_WORDS, COMP_CWORD, then the
//! registered function); the man pages render with `groff -man -Tutf8 -ww` without a warning
//! and document real flags. Needs `bash` and `groff` (Debian: groff-base; scripts/test
//! installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ssi_tests::{scratch_dir, ssi_dp_bin};

fn ssi_dp(args: &[&str]) -> Output {
    let out = Command::new(ssi_dp_bin())
        .args(args)
        .output()
        .expect("run ssi-dp");
    assert!(
        out.status.success(),
        "ssi-dp {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tool(program: &str, package: &str) -> Command {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{program} is needed (Debian: apt-get install {package})"
    );
    Command::new(program)
}

/// What the completion registered for `ssi-dp` offers for the command line `words` (the last
/// one is the word being completed), one offer a line.
fn bash_offers(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = words.join(" ");
    let program = format!(
        r#"set -u
source '{script}'
spec=$(complete -p ssi-dp) || {{ echo "no completion registered for ssi-dp" >&2; exit 3; }}
read -ra parts <<< "$spec"
fn=
for ((i = 0; i < ${{#parts[@]}}; i++)); do
    [ "${{parts[i]}}" = -F ] && fn=${{parts[i+1]}}
done
[ -n "$fn" ] || {{ echo "no function in: $spec" >&2; exit 3; }}
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
COMPREPLY=()
"$fn" ssi-dp "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        script = script.display(),
        words = quoted.join(" "),
    );
    let out = tool("bash", "bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash completing {words:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_registers_and_offers_subcommands_and_flags() {
    let dir = scratch_dir("completions");
    let script = dir.join("ssi-dp.bash");
    std::fs::write(&script, ssi_dp(&["completions", "bash"]).stdout).unwrap();

    // Registered, the way `complete -p` shows it.
    let out = tool("bash", "bash")
        .args([
            "--norc",
            "--noprofile",
            "-c",
            &format!("source '{}' && complete -p ssi-dp", script.display()),
        ])
        .output()
        .unwrap();
    let spec = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{spec}");
    assert!(
        spec.starts_with("complete ")
            && spec.contains(" -F ")
            && spec.trim_end().ends_with(" ssi-dp"),
        "{spec}"
    );

    let has = |offers: &[String], want: &str| offers.iter().any(|o| o == want);
    let first = bash_offers(&script, &["ssi-dp", ""]);
    for want in ["demo", "leave", "up", "man", "completions", "--node-id"] {
        assert!(
            has(&first, want),
            "`ssi-dp <TAB>` offers no {want}: {first:?}"
        );
    }
    let flag = bash_offers(&script, &["ssi-dp", "--node"]);
    assert!(has(&flag, "--node-id"), "`ssi-dp --node<TAB>`: {flag:?}");
    let leave = bash_offers(&script, &["ssi-dp", "leave", "--"]);
    for want in ["--api", "--token-file"] {
        assert!(
            has(&leave, want),
            "`ssi-dp leave --<TAB>` offers no {want}: {leave:?}"
        );
    }
    let shells = bash_offers(&script, &["ssi-dp", "completions", ""]);
    for want in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(has(&shells, want), "`ssi-dp completions <TAB>`: {shells:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_shell_gets_a_script_naming_the_flags() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = String::from_utf8(ssi_dp(&["completions", shell]).stdout).unwrap();
        assert!(script.contains("ssi-dp"), "{shell}: {script}");
        assert!(script.contains("node-id"), "{shell} script lacks --node-id");
    }
    let bad = Command::new(ssi_dp_bin())
        .args(["completions", "nosh"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values: bash"));
}

/// Renders a page with groff, failing on any warning; returns the plain text.
fn render(page: &Path) -> String {
    let out = tool("groff", "groff-base")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(page)
        .output()
        .expect("run groff");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.is_empty(),
        "groff on {}: {}\n{warnings}",
        page.display(),
        out.status
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn man_page_renders_without_warnings_and_documents_the_flags() {
    let dir = scratch_dir("man");
    let page = dir.join("ssi-dp.1");
    std::fs::write(&page, ssi_dp(&["man"]).stdout).unwrap();
    let text = render(&page);
    for want in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "--node-id <NODE_ID>",
        "This node's id (0..63)",
        "SUBCOMMANDS",
        "ssi-dp-demo(1)",
        "ssi-dp-leave(1)",
    ] {
        assert!(text.contains(want), "ssi-dp.1 lacks {want:?}:\n{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn man_dir_gets_one_page_per_subcommand() {
    let dir = scratch_dir("man-dir").join("man1");
    let out = ssi_dp(&["man", dir.to_str().unwrap()]);
    let listed: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        listed.len(),
        names.len(),
        "printed {listed:?}, wrote {names:?}"
    );
    for want in [
        "ssi-dp.1",
        "ssi-dp-demo.1",
        "ssi-dp-leave.1",
        "ssi-dp-man.1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    for name in &names {
        let text = render(&dir.join(name));
        assert!(text.contains("OPTIONS"), "{name}:\n{text}");
    }
    let leave = render(&dir.join("ssi-dp-leave.1"));
    assert!(leave.contains("--token-file <TOKEN_FILE>"), "{leave}");
    assert!(leave.contains("ssi-dp leave"), "{leave}");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}
