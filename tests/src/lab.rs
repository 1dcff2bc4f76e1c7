//! The lab from the tests: boots the lab VM (`scripts/lab run`: QEMU TCG emulating an AMD CPU
//! with SVM and nested paging, so the VM has a hardware-style `/dev/kvm`), runs one shell
//! command in it with the `ssi-dp` binary and `lab-cluster` on its PATH, and returns the
//! command's output and exit status.
//!
//! A lab that cannot run (no QEMU, no kernel package, no KVM inside the VM) makes the test
//! fail with the script's message: a lab test never passes without having run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ssi_dp_bin;

/// Exit status `scripts/lab` uses when the lab itself could not run.
const LAB_UNAVAILABLE: i32 = 125;
/// Exit status when the VM ran out of time.
const LAB_TIMEOUT: i32 = 124;

/// The repository root (the `tests` crate sits one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Linux kernel the lab boots as L1, which the Linux guest tests also boot as the guest
/// (Debian's cloud kernel, downloaded and unpacked by `scripts/lab`, never installed; not the
/// generic kernel `--rdma` boots, which sits next to it under the lab directory).
pub fn guest_kernel() -> PathBuf {
    let script = repo_root().join("scripts/lab");
    let out = Command::new(&script)
        .arg("kernel")
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/lab kernel failed, so no kernel to boot:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            && path.exists(),
        "scripts/lab kernel printed {path:?}, not a vmlinuz"
    );
    path
}

/// One lab run to make.
#[derive(Debug, Clone)]
pub struct Lab {
    timeout: Duration,
    bins: Vec<PathBuf>,
    files: Vec<(PathBuf, String)>,
    shadow_paging: bool,
    rdma: bool,
    vms: u8,
}

/// What a lab run gave.
#[derive(Debug)]
pub struct LabRun {
    /// The command's exit status inside the VM (`None`: the VM ran out of time).
    pub status: Option<i32>,
    /// The command's output (stdout and stderr).
    pub output: String,
    /// What `scripts/lab` itself said (progress, errors).
    pub log: String,
    /// Wall time of the whole run, VM boot included.
    pub elapsed: Duration,
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Lab {
    /// A run with `ssi-dp` and `lab-cluster` in the VM, scripts/lab's one L1 vCPU (it says
    /// why), 10 minutes at most.
    pub fn new() -> Self {
        Lab {
            timeout: Duration::from_secs(600),
            bins: vec![ssi_dp_bin(), repo_root().join("scripts/lab-cluster")],
            files: Vec::new(),
            shadow_paging: false,
            rdma: false,
            vms: 1,
        }
    }

    /// Two VMs (with [`Lab::rdma`]) joined by a virtual Ethernet: each runs the command with
    /// `LAB_VM` (0 or 1), `LAB_IP` and `LAB_PEER` set and `rxe0` on `eth0`; output lines
    /// start with `[vm0] ` or `[vm1] `, and the status is 0 only when both exited 0.
    pub fn two_vms(mut self) -> Self {
        self.vms = 2;
        self
    }

    /// Boots the generic 6.12 kernel with soft-RoCE (`rxe0` on loopback) and rdma-core's
    /// libraries (`scripts/lab run --rdma`).
    pub fn rdma(mut self) -> Self {
        self.rdma = true;
        self
    }

    /// Adds an executable (with the libraries it loads) to the VM's PATH.
    pub fn bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bins.push(path.into());
        self
    }

    /// Sets the wall-clock limit of the whole VM.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Gives L1's KVM no nested paging (scripts/lab explains when that is sound).
    pub fn shadow_paging(mut self) -> Self {
        self.shadow_paging = true;
        self
    }

    /// Copies `src` into the VM at the absolute path `dest`.
    pub fn file(mut self, src: impl Into<PathBuf>, dest: &str) -> Self {
        self.files.push((src.into(), dest.to_string()));
        self
    }

    /// Boots the VM and runs `command` (a `sh -c` line) in it. Panics with the lab's own
    /// message when the lab could not run.
    pub fn run(&self, command: &str) -> LabRun {
        let script = repo_root().join("scripts/lab");
        let mut cmd = Command::new(&script);
        cmd.arg("run")
            .arg("--timeout")
            .arg(self.timeout.as_secs().to_string());
        if self.shadow_paging {
            cmd.arg("--shadow-paging");
        }
        if self.rdma {
            cmd.arg("--rdma");
        }
        if self.vms != 1 {
            cmd.arg("--vms").arg(self.vms.to_string());
        }
        for b in &self.bins {
            cmd.arg("--bin").arg(b);
        }
        for (src, dest) in &self.files {
            cmd.arg("--file").arg(format!("{}:{dest}", src.display()));
        }
        cmd.arg("--").arg(command);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        // The script bounds the VM; this bounds the script (waiting for the lab lock, packing,
        // fetching) with a margin on top.
        let deadline = start + self.timeout + Duration::from_secs(900);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let output = reader.join().unwrap_or_default();
        let log = err_reader.join().unwrap_or_default();
        assert_ne!(
            status,
            Some(LAB_UNAVAILABLE),
            "the lab could not run, so this test cannot check anything:\n{log}"
        );
        LabRun {
            status: status.filter(|&s| s != LAB_TIMEOUT),
            output,
            log,
            elapsed: start.elapsed(),
        }
    }
}

impl LabRun {
    /// The exit status `lab-cluster` reported for node `id` (`@@NODE id status`).
    pub fn node_status(&self, id: u16) -> Option<i32> {
        let prefix = format!("@@NODE {id} ");
        self.output
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|s| s.trim().parse().ok())
    }

    /// What node `id` printed (its lines without the `[nI] ` prefix).
    pub fn node_output(&self, id: u16) -> String {
        let prefix = format!("[n{id}] ");
        let mut s = String::new();
        for l in self.output.lines().filter_map(|l| l.strip_prefix(&prefix)) {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// Everything, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status {:?} after {:.0?}\n--- output ---\n{}\n--- lab ---\n{}",
            self.status, self.elapsed, self.output, self.log
        )
    }
}
