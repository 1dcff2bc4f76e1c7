//! The machine the guest sees, checked against the command line: the online CPUs (sysfs,
//! the affinity mask and std's count must all agree) and the NUMA nodes with their CPUs.

use std::io;
use std::path::Path;

use crate::args::Opts;
use crate::{cpulist, sys};

/// The kernel's list of online CPUs.
const ONLINE: &str = "/sys/devices/system/cpu/online";
/// Where the kernel lists NUMA nodes (`node0`, `node1`, …).
const NODES: &str = "/sys/devices/system/node";

/// What the topology checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The online CPUs, sorted.
    pub cpus: Vec<usize>,
    /// NUMA nodes present.
    pub nodes: usize,
}

/// Checks the CPUs and nodes against `opts`.
pub fn check(opts: &Opts) -> Result<Seen, String> {
    let text = read(Path::new(ONLINE))?;
    let online = cpulist::parse(&text).map_err(|e| format!("{ONLINE}: {e}"))?;
    say!(
        "online CPUs: {} ({})",
        online.len(),
        cpulist::format(&online)
    );
    if online.len() != opts.expect_cpus {
        return Err(format!(
            "{ONLINE} lists {} CPUs ({}), expected {}",
            online.len(),
            cpulist::format(&online),
            opts.expect_cpus
        ));
    }
    let allowed = sys::affinity().map_err(|e| format!("sched_getaffinity failed: {e}"))?;
    if allowed != online {
        return Err(format!(
            "this process may run on CPUs {} but the online CPUs are {}",
            cpulist::format(&allowed),
            cpulist::format(&online)
        ));
    }
    let parallelism = std::thread::available_parallelism()
        .map_err(|e| format!("available_parallelism failed: {e}"))?
        .get();
    if parallelism != opts.expect_cpus {
        return Err(format!(
            "available_parallelism is {parallelism}, expected {}",
            opts.expect_cpus
        ));
    }
    let nodes = check_nodes(Path::new(NODES), &opts.expect_nodes)?;
    Ok(Seen {
        cpus: online,
        nodes,
    })
}

/// Checks the nodes under `dir` (a sysfs node directory) against `expected` (sorted by id)
/// and returns how many are present.
pub fn check_nodes(dir: &Path, expected: &[(u32, Vec<usize>)]) -> Result<usize, String> {
    let present = present_nodes(dir)?;
    for &id in &present {
        let cpus = node_cpus(dir, id)?;
        say!("NUMA node {id}: CPUs {}", cpulist::format(&cpus));
        if let Some((_, want)) = expected.iter().find(|(n, _)| *n == id) {
            if cpus != *want {
                return Err(format!(
                    "NUMA node {id} has CPUs {}, expected {}",
                    cpulist::format(&cpus),
                    cpulist::format(want)
                ));
            }
        }
    }
    let wanted: Vec<u32> = expected.iter().map(|(id, _)| *id).collect();
    if !wanted.is_empty() && present != wanted {
        return Err(format!(
            "NUMA nodes present are {present:?}, expected exactly {wanted:?}"
        ));
    }
    Ok(present.len())
}

/// Node ids under `dir`, sorted; none if the kernel has no NUMA directory.
fn present_nodes(dir: &Path) -> Result<Vec<u32>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("node"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The CPUs of node `id` under `dir`.
fn node_cpus(dir: &Path, id: u32) -> Result<Vec<usize>, String> {
    let path = dir.join(format!("node{id}/cpulist"));
    cpulist::parse(&read(&path)?).map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fake sysfs node directory with `nodes` (id, cpulist text).
    fn fake_nodes(name: &str, nodes: &[(u32, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("guest-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (id, list) in nodes {
            let node = dir.join(format!("node{id}"));
            std::fs::create_dir_all(&node).unwrap();
            std::fs::write(node.join("cpulist"), format!("{list}\n")).unwrap();
        }
        std::fs::write(dir.join("online"), "0-1\n").unwrap();
        dir
    }

    #[test]
    fn nodes_must_match_exactly() {
        let dir = fake_nodes("nodes", &[(0, "0,2"), (1, "1,3"), (2, "")]);
        let all = [(0, vec![0, 2]), (1, vec![1, 3]), (2, vec![])];
        assert_eq!(check_nodes(&dir, &all), Ok(3));
        assert_eq!(check_nodes(&dir, &[]), Ok(3));
        let err = check_nodes(&dir, &[(0, vec![0, 2]), (1, vec![1, 3])]).unwrap_err();
        assert!(err.contains("expected exactly [0, 1]"), "{err}");
        let err = check_nodes(&dir, &[(0, vec![0, 1]), (1, vec![2, 3]), (2, vec![])]);
        assert_eq!(
            err,
            Err("NUMA node 0 has CPUs 0,2, expected 0-1".to_string())
        );
        let err = check_nodes(&dir, &[(0, vec![0, 2]), (1, vec![1, 3]), (3, vec![])]);
        assert!(err.unwrap_err().contains("expected exactly [0, 1, 3]"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
