//! Every counter the data plane keeps is updated by some code path, and every telemetry field
//! the control plane exports is filled from the data plane: a counter nobody updates would be
//! a metric that reads 0 forever and looks healthy. (Firecracker keeps a test of this kind.)
//!
//! The check reads the workspace's sources: for each counter field of the stats structures
//! below it looks for a statement that changes it outside the structure's own definition.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every `.rs` file under the workspace's crates (not target/, not fuzz/).
fn sources() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read a source directory") {
            let p = e.expect("directory entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if !matches!(name, "target" | "fuzz" | ".git" | "docs" | "scripts") {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&p).expect("read a source file");
                out.push((p, text));
            }
        }
    }
    out
}

/// The `pub NAME:` fields of `pub struct NAME { ... }` in `file`.
fn fields(file: &str, strukt: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(file)).expect("read the stats source");
    let start = text
        .find(&format!("pub struct {strukt} {{"))
        .unwrap_or_else(|| panic!("{file} has no `pub struct {strukt}`"));
    let body = &text[start..];
    let end = body.find("\n}").expect("end of the struct");
    body[..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split(':').next())
        .filter(|f| !f.contains(' ') && !f.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `line` changes field `f`: an increment, an atomic add or store, a histogram
/// record, or a counter helper (`bump`, `add`) applied to it.
fn updates(line: &str, f: &str) -> bool {
    let needle = format!(".{f}");
    let mut from = 0;
    while let Some(k) = line[from..].find(&needle) {
        let at = from + k;
        let mut rest = &line[at + needle.len()..];
        from = at + needle.len();
        if rest.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // a longer name
        }
        // Skip index groups: `.f[kind][l]`.
        while let Some(r) = rest.strip_prefix('[') {
            match r.find(']') {
                Some(e) => rest = &r[e + 1..],
                None => break,
            }
        }
        let helper = ["bump(&", "add(&", "set(&"].iter().any(|h| {
            line[..at]
                .rfind(h)
                .is_some_and(|h| !line[h..at].contains(')'))
        });
        if helper
            || [
                " +=",
                ".fetch_add(",
                ".store(",
                ".record(",
                ".record_owned(",
                ".count(",
            ]
            .iter()
            .any(|op| rest.starts_with(op))
        {
            return true;
        }
    }
    false
}

fn updated_somewhere(srcs: &[(PathBuf, String)], defined_in: &str, f: &str) -> Vec<String> {
    let def = root().join(defined_in);
    let mut sites = Vec::new();
    for (p, text) in srcs {
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.starts_with("//") || l.starts_with("pub ") || l.starts_with("assert") {
                continue;
            }
            // A `reset` in the defining file is not an update by a code path that counts.
            if *p == def && (l.contains(".store(0") || l.contains("reset")) {
                continue;
            }
            if updates(l, f) {
                sites.push(format!("{}:{}", p.display(), n + 1));
            }
        }
    }
    sites
}

#[test]
fn every_counter_is_updated_by_some_code_path() {
    let srcs = sources();
    let structs = [
        ("engine/src/stats.rs", "ShardStats", &["proto", "heat"][..]),
        ("wire/src/counters.rs", "TransportStats", &["per_slot"][..]),
        ("wire/src/counters.rs", "PeerCounters", &["peer"][..]),
        ("coherence/src/stats.rs", "Stats", &[][..]),
    ];
    let mut never = Vec::new();
    let mut checked = 0;
    for (file, strukt, not_counters) in structs {
        for f in fields(file, strukt) {
            if not_counters.contains(&f.as_str()) {
                continue;
            }
            checked += 1;
            if updated_somewhere(&srcs, file, &f).is_empty() {
                never.push(format!("{strukt}::{f} ({file})"));
            }
        }
    }
    assert!(
        checked > 40,
        "found only {checked} counters: the struct parser broke"
    );
    assert!(
        never.is_empty(),
        "counters that no code path updates (remove them, or update them where the event \
         happens): {never:?}"
    );
}

#[test]
fn the_checker_sees_a_counter_nobody_updates() {
    // The checker itself can fail: a field that only appears in its definition and in reads.
    let srcs = vec![(
        root().join("x.rs"),
        "let n = stats.quiet.load(Relaxed);\nprintln!(\"{}\", s.quiet);".to_string(),
    )];
    assert!(updated_somewhere(&srcs, "y.rs", "quiet").is_empty());
    for line in [
        "bump(&self.stats.quiet);",
        "self.stats.quiet += 1;",
        "st.quiet.fetch_add(1, Relaxed);",
        "self.quiet[kind as usize][l].record(ns);",
    ] {
        let srcs = vec![(root().join("x.rs"), line.to_string())];
        assert!(
            !updated_somewhere(&srcs, "y.rs", "quiet").is_empty(),
            "{line}"
        );
    }
}

#[test]
fn every_telemetry_field_is_filled_from_the_data_plane() {
    let fields = fields("control/src/handle.rs", "Telemetry");
    assert!(
        fields.len() > 10,
        "found only {} Telemetry fields",
        fields.len()
    );
    let glue = std::fs::read_to_string(root().join("ssi-dp/src/control_glue.rs"))
        .expect("read the control glue");
    let start = glue
        .find("Telemetry {")
        .expect("the glue builds a Telemetry");
    let literal = &glue[start..];
    let missing: Vec<_> = fields
        .iter()
        .filter(|f| {
            !literal.contains(&format!("{f}:")) && !literal.contains(&format!("            {f},"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "Telemetry fields the node never fills (they would export 0 forever): {missing:?}"
    );
}
