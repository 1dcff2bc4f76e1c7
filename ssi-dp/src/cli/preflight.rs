//! What a node checks before it listens or dials: every file it will read or write, the
//! memory it promises the cluster and the CPUs it will pin to. A mistake found after the
//! cluster formed would take a member out of a running cluster (a home, at worst, stops
//! everyone); found here, it is one line and exit code 2.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// What a node is about to use, from its settings and flags.
#[derive(Debug, Default)]
pub struct Preflight<'a> {
    /// Data-plane cores.
    pub cores: &'a [usize],
    /// Whether shards will be pinned to `cores`.
    pub pin: bool,
    /// Guest memory this node contributes, in bytes.
    pub memory: u64,
    /// Run even when `memory` is more than the host has available.
    pub allow_overcommit: bool,
    /// `--kernel`.
    pub kernel: Option<&'a Path>,
    /// `--initrd`.
    pub initrd: Option<&'a Path>,
    /// `--hist-dump`.
    pub hist_dump: Option<&'a Path>,
}

/// Why a node must not start.
#[derive(Debug, Error)]
pub enum PreflightError {
    /// A core this node would pin a shard to is not one it may run on.
    #[error(
        "--cores: CPU {cpu} is not available to this process (it may run on {allowed}); \
         pick CPUs from /sys/devices/system/cpu/online and this process's affinity"
    )]
    CoreUnavailable {
        /// The CPU.
        cpu: usize,
        /// The CPUs it may use, as a cpulist.
        allowed: String,
    },
    /// The process's CPU affinity could not be read.
    #[error("cannot read this process's CPU affinity: {0}")]
    Affinity(#[source] std::io::Error),
    /// The node would contribute more memory than the host has available.
    #[error(
        "--memory {asked}: this host has only {available} available (MemAvailable in \
         /proc/meminfo); contribute less, or pass --allow-overcommit if you know the guest \
         will not touch it all"
    )]
    Overcommit {
        /// What the node would contribute, human-readable.
        asked: String,
        /// What the host has available, human-readable.
        available: String,
    },
    /// /proc/meminfo could not be read or has no MemAvailable line.
    #[error("cannot tell how much memory this host has available ({0}); pass --allow-overcommit to skip the check")]
    Meminfo(String),
    /// A file the node would read is missing or unreadable.
    #[error("{flag} {}: {source}", path.display())]
    Unreadable {
        /// The flag that named it.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not an image the VMM can boot.
    #[error("--kernel {}: {source}", path.display())]
    BadKernel {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: vmm::linux::LinuxError,
    },
    /// The histogram dump could not be written where it was asked for.
    #[error("--hist-dump {}: {why}; name a file in an existing, writable directory", path.display())]
    HistDump {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Runs every check; the first failure is returned.
pub fn check(p: &Preflight<'_>) -> Result<(), PreflightError> {
    if p.pin {
        check_cores(p.cores)?;
    }
    if !p.allow_overcommit {
        check_memory(p.memory)?;
    }
    for (flag, path) in [("--kernel", p.kernel), ("--initrd", p.initrd)] {
        if let Some(path) = path {
            let bytes = std::fs::read(path).map_err(|source| PreflightError::Unreadable {
                flag,
                path: path.to_path_buf(),
                source,
            })?;
            if flag == "--kernel" {
                vmm::linux::check_image(&bytes).map_err(|source| PreflightError::BadKernel {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
    }
    if let Some(path) = p.hist_dump {
        check_writable(path)?;
    }
    Ok(())
}

fn check_cores(cores: &[usize]) -> Result<(), PreflightError> {
    let allowed = engine::affinity::current_cpus().map_err(PreflightError::Affinity)?;
    match cores.iter().find(|c| !allowed.contains(c)) {
        Some(&cpu) => Err(PreflightError::CoreUnavailable {
            cpu,
            allowed: engine::cpulist::format(&allowed),
        }),
        None => Ok(()),
    }
}

fn check_memory(memory: u64) -> Result<(), PreflightError> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| PreflightError::Meminfo(format!("/proc/meminfo: {e}")))?;
    let available = mem_available(&text)
        .ok_or_else(|| PreflightError::Meminfo("no MemAvailable line in /proc/meminfo".into()))?;
    if memory > available {
        return Err(PreflightError::Overcommit {
            asked: human(memory),
            available: human(available),
        });
    }
    Ok(())
}

/// `MemAvailable` from the text of /proc/meminfo, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

fn human(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// The file need not exist yet, but its directory must, and must be writable (the dump is
/// written at exit, when it is too late to say so).
fn check_writable(path: &Path) -> Result<(), PreflightError> {
    let bad = |why: String| PreflightError::HistDump {
        path: path.to_path_buf(),
        why,
    };
    if path.is_dir() {
        return Err(bad("it is a directory".into()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|e| bad(format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(bad(format!("{} is not a directory", dir.display())));
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| bad("the path contains a NUL byte".into()))?;
    // SAFETY: `c` is a valid NUL-terminated path; access() only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(bad(format!("{} is not writable: {e}", dir.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_reads_kib() {
        let t = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(t), Some(2 << 20));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: x kB\n"), None);
        assert_eq!(mem_available("MemAvailable: 5 MB\n"), None);
    }

    #[test]
    fn each_mistake_is_named() {
        let dir = std::env::temp_dir().join(format!("ssi-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk");
        std::fs::write(&junk, b"not a kernel").unwrap();
        let ok = Preflight {
            memory: 1 << 20,
            hist_dump: Some(&dir.join("h.hlog")),
            ..Preflight::default()
        };
        assert!(check(&ok).is_ok());
        let e = check(&Preflight {
            memory: 1 << 60,
            ..Preflight::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--allow-overcommit"), "{e}");
        assert!(check(&Preflight {
            memory: 1 << 60,
            allow_overcommit: true,
            ..Preflight::default()
        })
        .is_ok());
        let missing = dir.join("missing");
        let e = check(&Preflight {
            kernel: Some(&missing),
            ..Preflight::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                e,
                PreflightError::Unreadable {
                    flag: "--kernel",
                    ..
                }
            ),
            "{e}"
        );
        let e = check(&Preflight {
            kernel: Some(&junk),
            ..Preflight::default()
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("neither a vmlinux ELF nor a bzImage"),
            "{e}"
        );
        let e = check(&Preflight {
            hist_dump: Some(&missing.join("h.hlog")),
            ..Preflight::default()
        })
        .unwrap_err();
        assert!(matches!(e, PreflightError::HistDump { .. }), "{e}");
        let e = check(&Preflight {
            cores: &[libc::CPU_SETSIZE as usize - 1],
            pin: true,
            ..Preflight::default()
        })
        .unwrap_err();
        assert!(matches!(e, PreflightError::CoreUnavailable { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
