//! `--fix`: makes the file writes that items to change offer (sysctls, the THP mode, IRQ
//! affinities, cpufreq governors: each safe at run time and undone by writing the previous
//! value back), and records each outcome. The kernel command line is never touched.

use super::host::HostView;
use super::item::{Item, Status, Write};

/// One write `--fix` made or tried.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The item it was for.
    pub item: &'static str,
    /// What was written where, and what was there.
    pub write: Write,
    /// Whether the kernel took it (the error otherwise).
    pub result: Result<(), String>,
}

/// Makes every write of every item to change, in order; a failed write does not stop the
/// others.
pub fn apply(h: &HostView, items: &[Item]) -> Vec<Applied> {
    items
        .iter()
        .filter(|i| i.status == Status::Change)
        .flat_map(|i| {
            i.writes.iter().map(|w| Applied {
                item: i.name,
                write: w.clone(),
                result: h
                    .write(&w.path, &w.value)
                    .map_err(|e| format!("writing {}: {e}", h.show(&w.path))),
            })
        })
        .collect()
}
