//! One line of the report: an item's status, what was found, what to change, and the file
//! writes `--fix` may make for it.

/// How an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// As the project wants it.
    Ok,
    /// Should change: the item's `fix` says how.
    Change,
    /// Could not be checked: the detail says why (missing file, no permission, not
    /// applicable to this host).
    CannotCheck,
}

impl Status {
    /// The word printed for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Change => "change",
            Status::CannotCheck => "cannot check",
        }
    }
}

/// One file write that `--fix` makes: `value` into `path` (an absolute host path), which
/// held `previous`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The host path.
    pub path: String,
    /// What to write.
    pub value: String,
    /// What it holds now.
    pub previous: String,
    /// The command that restores `previous`.
    pub undo: String,
}

impl Write {
    /// A write of `value` into `path`, undone with `echo previous > path`.
    pub fn file(path: &str, value: impl Into<String>, previous: impl Into<String>) -> Self {
        let previous = previous.into();
        Self {
            undo: format!("echo {previous} > {path}"),
            path: path.to_string(),
            value: value.into(),
            previous,
        }
    }

    /// The sysctl `key` (dotted) set to `value`, undone with `sysctl -w key=previous`.
    pub fn sysctl(key: &str, value: impl Into<String>, previous: impl Into<String>) -> Self {
        let previous = previous.into();
        Self {
            undo: format!("sysctl -w {key}={previous}"),
            path: sysctl_path(key),
            value: value.into(),
            previous,
        }
    }
}

/// `/proc/sys/...` of a dotted sysctl key.
pub fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// One checked item.
#[derive(Debug, Clone)]
pub struct Item {
    /// Its name (`pm_qos`, `isolcpus`, ...), as `--only` takes it.
    pub name: &'static str,
    /// How it stands.
    pub status: Status,
    /// Whether a `change` here means the host is not ready for `--idle spin` (set from
    /// [`super::ITEMS`]; the others are advisory).
    pub counts: bool,
    /// What was found.
    pub detail: String,
    /// For `change`: the command or kernel parameter that makes it `ok`.
    pub fix: Option<String>,
    /// For `change`: a kernel command line parameter to add (also in `fix`).
    pub boot_param: Option<String>,
    /// For `change`: what `--fix` writes (empty: nothing safe to do at run time).
    pub writes: Vec<Write>,
}

impl Item {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name,
            status,
            counts: false,
            detail: detail.into(),
            fix: None,
            boot_param: None,
            writes: Vec::new(),
        }
    }

    /// As wanted.
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail)
    }

    /// To change, with how.
    pub fn change(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        let mut i = Self::new(name, Status::Change, detail);
        i.fix = Some(fix.into());
        i
    }

    /// To change by adding `param` to the kernel command line (never done by `--fix`).
    pub fn boot(name: &'static str, detail: impl Into<String>, param: String) -> Self {
        let mut i = Self::change(
            name,
            detail,
            format!("add {param} to the kernel command line (takes effect at the next boot)"),
        );
        i.boot_param = Some(param);
        i
    }

    /// Not checkable, with why.
    pub fn cannot(name: &'static str, why: impl Into<String>) -> Self {
        Self::new(name, Status::CannotCheck, why)
    }

    /// With the writes `--fix` makes.
    pub fn with_writes(mut self, writes: Vec<Write>) -> Self {
        self.writes = writes;
        self
    }
}

/// What the checks are asked about.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The data-plane cores, sorted.
    pub cores: Vec<usize>,
    /// Other nodes of the cluster, each with as many cores as this one (for memlock).
    pub peers: usize,
}

impl Ctx {
    /// The cores as a cpulist.
    pub fn cores_list(&self) -> String {
        engine::cpulist::format(&self.cores)
    }
}

/// `a` minus `b`.
pub fn minus(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter().copied().filter(|c| !b.contains(c)).collect()
}

/// A cpulist, or `none`.
pub fn list_or_none(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        "none".into()
    } else {
        engine::cpulist::format(cpus)
    }
}
