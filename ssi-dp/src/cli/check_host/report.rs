//! The report: the items (and what `--fix` did) as text for people or as one JSON object
//! for tools, and the exit status they imply.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::fix::Applied;
use super::item::{Item, Status};
use crate::cli::exit;

/// Width of the name column of the text report.
const NAME_WIDTH: usize = 15;
/// Width of the status column.
const STATUS_WIDTH: usize = 14;

/// Everything one run found and did.
#[derive(Debug)]
pub struct Report {
    /// The data-plane cores, as a cpulist.
    pub cores: String,
    /// Whether they are the default (every online CPU but CPU 0).
    pub cores_default: bool,
    /// `--peers`.
    pub peers: usize,
    /// The items, in report order (after `--fix`, as found again afterwards).
    pub items: Vec<Item>,
    /// What `--fix` did (`None` without `--fix`).
    pub applied: Option<Vec<Applied>>,
}

impl Report {
    /// The items whose `change` means the host is not ready for `--idle spin`.
    fn blocking(&self) -> Vec<&'static str> {
        self.items
            .iter()
            .filter(|i| i.counts && i.status == Status::Change)
            .map(|i| i.name)
            .collect()
    }

    /// Whether nothing that counts for `--idle spin` should change.
    pub fn ready(&self) -> bool {
        self.blocking().is_empty()
    }

    /// 0 when ready for `--idle spin`, 1 when something that counts should change.
    pub fn exit_code(&self) -> i32 {
        if self.ready() {
            exit::OK
        } else {
            exit::FAILED
        }
    }

    /// The kernel parameters the items to change ask for, space-separated.
    fn boot_params(&self) -> Option<String> {
        let params: Vec<&str> = self
            .items
            .iter()
            .filter(|i| i.status == Status::Change)
            .filter_map(|i| i.boot_param.as_deref())
            .collect();
        (!params.is_empty()).then(|| params.join(" "))
    }

    /// The text report, one line per item (plus its fix), then a summary.
    pub fn text(&self) -> String {
        // Writing into a String cannot fail: the `let _ = writeln!` below drop an `Ok(())`.
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ssi-dp check-host: data-plane cores {}{}",
            self.cores,
            if self.cores_default {
                " (the default: every online CPU but CPU 0; choose with --cores)"
            } else {
                ""
            }
        );
        if let Some(applied) = &self.applied {
            if applied.is_empty() {
                let _ = writeln!(out, "--fix: nothing to change at run time");
            }
            for a in applied {
                let w = &a.write;
                let _ = match &a.result {
                    Ok(()) => writeln!(
                        out,
                        "--fix: {}: {} {} -> {}, done (undo: {})",
                        a.item, w.path, w.previous, w.value, w.undo
                    ),
                    Err(e) => writeln!(
                        out,
                        "--fix: {}: {} {} -> {}, failed: {e}",
                        a.item, w.path, w.previous, w.value
                    ),
                };
            }
            let _ = writeln!(out, "after --fix:");
        }
        for i in &self.items {
            let _ = writeln!(
                out,
                "{:<NAME_WIDTH$}{:<STATUS_WIDTH$}{}",
                i.name,
                i.status.as_str(),
                i.detail
            );
            if let (Status::Change, Some(fix)) = (i.status, &i.fix) {
                let how = if i.writes.is_empty() {
                    "fix"
                } else {
                    "fix (--fix does it)"
                };
                let _ = writeln!(out, "{:<NAME_WIDTH$}{how}: {fix}", "");
            }
        }
        if let Some(params) = self.boot_params() {
            let _ = writeln!(
                out,
                "kernel command line: add {params} (check-host never edits it; it takes effect \
                 at the next boot)"
            );
        }
        let advisory: Vec<&str> = self
            .items
            .iter()
            .filter(|i| !i.counts && i.status == Status::Change)
            .map(|i| i.name)
            .collect();
        let advisory = if advisory.is_empty() {
            String::new()
        } else {
            format!(" (advisory, not counted: {})", advisory.join(", "))
        };
        let blocking = self.blocking();
        let verdict = if blocking.is_empty() {
            "yes".to_string()
        } else {
            format!("no, change {}", blocking.join(", "))
        };
        let _ = writeln!(
            out,
            "ready for --idle spin on CPUs {}: {verdict}{advisory}",
            self.cores
        );
        out
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|i| {
                json!({
                    "name": i.name,
                    "status": i.status.as_str(),
                    "counts_for_spin": i.counts,
                    "detail": i.detail,
                    "fix": i.fix,
                    "fixable": i.status == Status::Change && !i.writes.is_empty(),
                    "boot_param": i.boot_param,
                })
            })
            .collect();
        let fixes: Vec<Value> = self
            .applied
            .iter()
            .flatten()
            .map(|a| {
                json!({
                    "item": a.item,
                    "path": a.write.path,
                    "previous": a.write.previous,
                    "value": a.write.value,
                    "undo": a.write.undo,
                    "ok": a.result.is_ok(),
                    "error": a.result.as_ref().err(),
                })
            })
            .collect();
        json!({
            "cores": self.cores,
            "cores_default": self.cores_default,
            "peers": self.peers,
            "items": items,
            "fixed": self.applied.is_some(),
            "fixes": fixes,
            "kernel_command_line": self.boot_params(),
            "ready_for_spin": self.ready(),
            "exit_code": self.exit_code(),
        })
    }
}
