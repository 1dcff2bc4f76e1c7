//! The host as the checks see it: the files of `/proc`, `/sys` and `/dev` under a root
//! directory (`/` on a live host; a crafted tree in unit tests, like a chroot), and the
//! answers that only the running kernel can give to this process (system calls: its
//! user, affinity, memlock limit, whether a userfaultfd or an io_uring can be created),
//! gathered once by [`Probes::live`] or written by a test.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;

use uffd_poller::{OpenError, OpenedVia, Uffd};

/// Files of one host, under `root`.
#[derive(Debug, Clone)]
pub struct HostView {
    root: PathBuf,
}

impl HostView {
    /// This host: paths are used as they are.
    pub fn live() -> Self {
        Self::at("/")
    }

    /// A host whose `/` is `root` (a test's crafted tree).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Where the host's absolute path `abs` is.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// `abs` as shown to the user (the real path on a live host).
    pub fn show(&self, abs: &str) -> String {
        self.path(abs).display().to_string()
    }

    /// The text of `abs` without its trailing newline.
    pub fn read(&self, abs: &str) -> io::Result<String> {
        let s = std::fs::read_to_string(self.path(abs))?;
        Ok(s.trim_end_matches('\n').to_string())
    }

    /// The text of `abs`, or the sentence that says why it could not be read.
    pub fn read_or_why(&self, abs: &str) -> Result<String, String> {
        self.read(abs)
            .map_err(|e| format!("cannot read {}: {e}", self.show(abs)))
    }

    /// The CPUs listed in `abs` (kernel cpulist syntax; an empty file is no CPU).
    pub fn read_cpus(&self, abs: &str) -> Result<Vec<usize>, String> {
        let text = self.read_or_why(abs)?;
        parse_cpus(&text).map_err(|e| format!("{}: {e}", self.show(abs)))
    }

    /// Like [`HostView::read_cpus`], but a missing file is no CPU (for files that only
    /// kernels with a feature have).
    pub fn read_cpus_if_present(&self, abs: &str) -> Result<Vec<usize>, String> {
        match self.read(abs) {
            Ok(text) => parse_cpus(&text).map_err(|e| format!("{}: {e}", self.show(abs))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("cannot read {}: {e}", self.show(abs))),
        }
    }

    /// Whether `abs` exists (a broken tree and a missing file both say no).
    pub fn exists(&self, abs: &str) -> bool {
        self.path(abs).exists()
    }

    /// The names in directory `abs`.
    pub fn list(&self, abs: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.path(abs))? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    /// Opens `abs` for writing (and reading when `read` is set), creating nothing.
    pub fn open_for_write(&self, abs: &str, read: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(read)
            .write(true)
            .open(self.path(abs))
    }

    /// Writes `value` to the existing file `abs`, as `echo value > abs` does.
    pub fn write(&self, abs: &str, value: &str) -> io::Result<()> {
        use std::io::Write;
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path(abs))?;
        f.write_all(format!("{value}\n").as_bytes())
    }

    /// The permission bits and owner of `abs` (`mode 0600, owner uid 0 gid 0`).
    pub fn mode(&self, abs: &str) -> io::Result<String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(self.path(abs))?;
        Ok(format!(
            "mode {:04o}, owner uid {} gid {}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        ))
    }
}

/// Parses a cpulist as the kernel prints it (`0-3,8`; empty: no CPU).
pub fn parse_cpus(text: &str) -> Result<Vec<usize>, engine::cpulist::CpuListError> {
    let text = text.trim();
    if text.is_empty() || text == "(null)" {
        return Ok(Vec::new());
    }
    let mut cpus = engine::cpulist::parse(text)?;
    cpus.sort_unstable();
    Ok(cpus)
}

/// The soft and hard `RLIMIT_MEMLOCK` in bytes (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memlock {
    /// The limit that applies now (`ulimit -l`).
    pub soft: Option<u64>,
    /// How far an unprivileged process may raise it (`ulimit -Hl`).
    pub hard: Option<u64>,
}

/// Why no userfaultfd the node could use was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UffdProblem {
    /// The process may not create one that sees kernel-mode faults.
    Denied(String),
    /// The kernel has no userfaultfd, or lacks a feature the node needs.
    Unsupported(String),
    /// Anything else (no fd left, an unexpected errno).
    Failed(String),
}

/// Why no io_uring the transport could use was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UringProblem {
    /// `kernel.io_uring_disabled` forbids it (the sysctl's value).
    Disabled(u8, String),
    /// Denied by a seccomp profile or an LSM.
    Denied(String),
    /// The kernel has no io_uring, or lacks an operation the transport needs.
    Unsupported(String),
    /// Anything else.
    Failed(String),
}

/// What the running kernel answered this process.
#[derive(Debug, Clone)]
pub struct Probes {
    /// The effective user id.
    pub euid: u32,
    /// The CPUs this process may run on (`sched_getaffinity`).
    pub allowed_cpus: Result<Vec<usize>, String>,
    /// `getrlimit(RLIMIT_MEMLOCK)`.
    pub memlock: Result<Memlock, String>,
    /// A userfaultfd with the features the node needs, and how it was created.
    pub userfaultfd: Result<OpenedVia, UffdProblem>,
    /// An io_uring with what the transport needs; `Ok(true)` when zero-copy send works too.
    pub io_uring: Result<bool, UringProblem>,
}

impl Probes {
    /// Asks the running kernel.
    pub fn live() -> Self {
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        let euid = unsafe { libc::geteuid() };
        Self {
            euid,
            allowed_cpus: engine::affinity::current_cpus()
                .map_err(|e| format!("sched_getaffinity failed: {e}")),
            memlock: memlock(),
            userfaultfd: userfaultfd(),
            io_uring: io_uring(),
        }
    }
}

fn memlock() -> Result<Memlock, String> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` into `r`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        let e = io::Error::last_os_error();
        return Err(format!("getrlimit(RLIMIT_MEMLOCK) failed: {e}"));
    }
    let bytes = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Ok(Memlock {
        soft: bytes(r.rlim_cur),
        hard: bytes(r.rlim_max),
    })
}

/// Opens (and closes) a userfaultfd the way a node does: never user-mode-only, with the
/// features the data plane requires.
fn userfaultfd() -> Result<OpenedVia, UffdProblem> {
    match Uffd::open(engine::region::required_features()) {
        Ok(u) => Ok(u.opened_via()),
        Err(e) => Err(match e {
            OpenError::PermissionDenied { .. } => UffdProblem::Denied(e.to_string()),
            OpenError::Unsupported | OpenError::Features(_) | OpenError::ApiRejected { .. } => {
                UffdProblem::Unsupported(e.to_string())
            }
            _ => UffdProblem::Failed(e.to_string()),
        }),
    }
}

/// The transport's own start-up probe: a real `io_uring_setup`, the opcode probe, a
/// provided-buffer ring.
fn io_uring() -> Result<bool, UringProblem> {
    use transport_uring::UnsupportedReason as R;
    match transport_uring::probe() {
        Ok(f) => Ok(f.send_zc),
        Err(r) => {
            let why = r.to_string();
            Err(match r {
                R::DisabledBySysctl(v) => UringProblem::Disabled(v, why),
                R::Denied => UringProblem::Denied(why),
                R::NotInKernel | R::MissingOp(_) => UringProblem::Unsupported(why),
                R::Other(_) => UringProblem::Failed(why),
            })
        }
    }
}
