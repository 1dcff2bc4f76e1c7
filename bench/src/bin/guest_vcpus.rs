//! `guest-vcpus`: first-touch fault throughput per vCPU of a KVM test guest, from 1 to N vCPUs
//! on one node (issue 17, item 4: per-thread throughput "in the test guests, 1 to N vCPUs").
//!
//! For each vCPU count, two `ssi-dp` processes on loopback run `--guest test:fault-latency`:
//! node 1 homes all guest memory and runs no vCPU, node 0 homes none and runs every vCPU, so
//! every first touch of the guest is a remote read that node 0's shard fetches from node 1.
//! Each vCPU reads each page of its slice once, with `rdtsc` around the load; node 0 prints
//! the guest-side percentiles and mean. A vCPU does nothing between touches but report the
//! sample (one doorbell exit), so its fault rate is 1 / mean latency; the table gives that
//! rate per vCPU, the sum over vCPUs, and the per-vCPU rate over the one-vCPU row's.
//!
//! The placement and idle policies are arguments and are printed with the table, with each
//! CPU's busy share during each row (the whole row: the two processes' start, formation and
//! exit included, so it understates the busy share while the guest runs) and the CPU time
//! other processes took during the runs.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::fault_latency::load::CpuSnapshot;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    about = "Guest-side first-touch fault rate per vCPU of a KVM test guest, 1 to N vCPUs on one \
             node, every touch remote"
)]
struct Args {
    /// The ssi-dp binary (default: `ssi-dp` next to this one).
    #[arg(long)]
    ssi_dp: Option<PathBuf>,
    /// vCPU counts to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    vcpus: Vec<u32>,
    /// Pages each vCPU touches once (ssi-dp takes up to 3 836).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=3836))]
    touch_pages: u32,
    /// CPU of node 0's shard (the node whose vCPUs fault).
    #[arg(long, default_value_t = 1)]
    shard_cpu: usize,
    /// Idle policy of node 0's shard: spin, hybrid or block.
    #[arg(long, default_value = "spin")]
    idle: String,
    /// CPU of node 1's shard (the home; always `block`, it shares a CPU).
    #[arg(long, default_value_t = 0)]
    home_cpu: usize,
    /// CPUs node 0's vCPU threads are pinned to (cpulist).
    #[arg(long, default_value = "0")]
    vcpu_cores: String,
    /// Give up on one row after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// What node 0 printed for one row.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Row {
    touches: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

/// Reads the numbers out of node 0's guest line (`... N first touches ... p50 Xus p99 Yus
/// p99.9 Zus max Wus mean Mus`).
fn parse_guest_line(out: &str) -> Option<Row> {
    let line = out
        .lines()
        .find(|l| l.contains("guest fault-latency: OK"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| -> Option<f64> {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1)?.strip_suffix("us")?.parse().ok()
    };
    let touches = words
        .iter()
        .position(|w| *w == "first")
        .and_then(|i| words.get(i.checked_sub(1)?)?.parse().ok())?;
    Some(Row {
        touches,
        p50: after("p50")?,
        p99: after("p99")?,
        p999: after("p99.9")?,
        max: after("max")?,
        mean: after("mean")?,
    })
}

/// Busy and total clock ticks of each CPU (`/proc/stat`'s `cpuN` lines), empty when unreadable.
fn cpu_ticks() -> Vec<(u64, u64)> {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    s.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let get = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal
            let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
            (busy, busy + get(3) + get(4))
        })
        .collect()
}

/// Each CPU's busy percentage between two `cpu_ticks` readings, as `a/b/...`.
fn busy_pcts(before: &[(u64, u64)], after: &[(u64, u64)]) -> String {
    let pcts: Vec<String> = before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1).max(1);
            format!(
                "{:.0}",
                a.0.saturating_sub(b.0) as f64 * 100.0 / total as f64
            )
        })
        .collect();
    if pcts.is_empty() {
        "-".into()
    } else {
        pcts.join("/")
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `ssi-dp` next to this binary.
fn default_ssi_dp() -> Result<PathBuf, String> {
    std::env::current_exe()
        .map(|me| me.with_file_name("ssi-dp"))
        .map_err(|e| format!("cannot tell where this binary is ({e}): give --ssi-dp PATH"))
}

/// Waits for `child` up to `deadline` (killing it past that), then returns whether it exited 0
/// and what it wrote to `log`.
fn finish(mut child: Child, deadline: Instant, log: &Path) -> Result<(bool, String), String> {
    let ok = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                // A kill that fails means the child already exited; wait() reaps it either way.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "a node ran past --timeout and was killed (its output: {})",
                    log.display()
                ));
            }
            Err(e) => return Err(format!("waiting for a node: {e}")),
        }
    };
    let out =
        std::fs::read_to_string(log).map_err(|e| format!("reading {}: {e}", log.display()))?;
    Ok((ok, out))
}

/// A file for a node's standard output and error.
fn log_file(path: &Path) -> Result<(Stdio, Stdio), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let g = f
        .try_clone()
        .map_err(|e| format!("duplicating {}: {e}", path.display()))?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

fn run_row(a: &Args, bin: &Path, dir: &Path, vcpus: u32) -> Result<Row, String> {
    let secret = dir.join("cluster.secret");
    let (log0, log1) = (dir.join("node0.log"), dir.join("node1.log"));
    // Each vCPU's slice, plus the guest's fixed low 4 MiB and room to spare, rounded to MiB.
    let need_mib = ((u64::from(vcpus) * u64::from(a.touch_pages) * 4096) >> 20) * 2 + 64;
    let (p0, p1) = (
        free_port().map_err(|e| format!("no free port: {e}"))?,
        free_port().map_err(|e| format!("no free port: {e}"))?,
    );
    let common = |cmd: &mut Command| {
        cmd.args(["--guest", "test:fault-latency", "--vcpus"])
            .arg(vcpus.to_string())
            .arg("--guest-touch-pages")
            .arg(a.touch_pages.to_string())
            .arg("--guest-timeout")
            .arg(a.timeout.to_string())
            .arg("--cluster-secret-file")
            .arg(&secret)
            .stdin(Stdio::null());
    };
    let mut home = Command::new(bin);
    home.args(["--node-id", "1", "--listen"])
        .arg(format!("127.0.0.1:{p1}"))
        .arg("--peer")
        .arg(format!("0@127.0.0.1:{p0},mem=0"))
        .arg("--memory")
        .arg(format!("{need_mib}M"))
        .arg("--cores")
        .arg(a.home_cpu.to_string())
        .args(["--idle", "block", "--local-vcpus", "none"]);
    common(&mut home);
    let (o, e) = log_file(&log1)?;
    home.stdout(o).stderr(e);
    let mut faulting = Command::new(bin);
    faulting
        .args(["--node-id", "0", "--listen"])
        .arg(format!("127.0.0.1:{p0}"))
        .arg("--peer")
        .arg(format!("1@127.0.0.1:{p1},mem={need_mib}M"))
        .args(["--memory", "0", "--cores"])
        .arg(a.shard_cpu.to_string())
        .arg("--idle")
        .arg(&a.idle)
        .arg("--local-vcpus")
        .arg(format!("0-{}", vcpus - 1))
        .arg("--vcpu-cores")
        .arg(&a.vcpu_cores);
    common(&mut faulting);
    let (o, e) = log_file(&log0)?;
    faulting.stdout(o).stderr(e);
    let deadline = Instant::now() + Duration::from_secs(a.timeout + 30);
    let home = home
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let faulting = match faulting.spawn() {
        Ok(c) => c,
        Err(e) => {
            // The home is killed; its output does not matter next to the spawn error.
            let _ = finish(home, Instant::now(), &log1);
            return Err(format!("starting {}: {e}", bin.display()));
        }
    };
    let (ok0, out0) = finish(faulting, deadline, &log0)?;
    let (ok1, out1) = finish(home, deadline, &log1)?;
    if !ok0 || !ok1 {
        return Err(format!(
            "the {vcpus}-vCPU run failed.\n--- node 0 ---\n{out0}\n--- node 1 ---\n{out1}"
        ));
    }
    parse_guest_line(&out0).ok_or_else(|| {
        format!("node 0 printed no fault-latency line with a mean (an older ssi-dp?):\n{out0}")
    })
}

fn main() {
    let a = Args::parse();
    if a.vcpus.is_empty() || a.vcpus.iter().any(|&v| v == 0 || v > 64) {
        eprintln!("guest-vcpus: --vcpus takes counts from 1 to 64");
        std::process::exit(2);
    }
    let bin = match a.ssi_dp.clone().map_or_else(default_ssi_dp, Ok) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("guest-vcpus: {e}");
            std::process::exit(2);
        }
    };
    if !bin.is_file() {
        eprintln!(
            "guest-vcpus: {} does not exist: build it (cargo build --release -p ssi-dp) or give \
             --ssi-dp PATH",
            bin.display()
        );
        std::process::exit(2);
    }
    let dir = std::env::temp_dir().join(format!("guest-vcpus-{}", std::process::id()));
    let secret = dir.join("cluster.secret");
    let made = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)?
            .write_all(&key)
    });
    if let Err(e) = made {
        eprintln!(
            "guest-vcpus: writing a cluster secret in {}: {e}",
            dir.display()
        );
        std::process::exit(1);
    }
    println!(
        "# guest-vcpus: test:fault-latency guest, {} first touches per vCPU, every touch remote \
         (node 1 homes all guest memory)\n# placement: node 0 shard on CPU {} ({}), its vCPU \
         threads on CPUs {}; node 1 shard on CPU {} (block); {} online CPUs",
        a.touch_pages,
        a.shard_cpu,
        a.idle,
        a.vcpu_cores,
        a.home_cpu,
        bench::online_cpus()
    );
    println!(
        "vcpus  touches    p50 us    p99 us  p99.9 us    max us   mean us   per vCPU/s      \
         total/s  vs 1 vCPU  CPU busy %"
    );
    let load = CpuSnapshot::now();
    let mut first: Option<f64> = None;
    let mut failed = false;
    for &v in &a.vcpus {
        let ticks = cpu_ticks();
        match run_row(&a, &bin, &dir, v) {
            Ok(r) => {
                let busy = busy_pcts(&ticks, &cpu_ticks());
                let per = 1e6 / r.mean.max(1e-3);
                let base = *first.get_or_insert(per);
                println!(
                    "{:>5} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>12.0} {:>12.0} {:>10.2}  {}",
                    v,
                    r.touches,
                    r.p50,
                    r.p99,
                    r.p999,
                    r.max,
                    r.mean,
                    per,
                    per * f64::from(v),
                    per / base,
                    busy
                );
            }
            Err(e) => {
                eprintln!("guest-vcpus: {e}");
                failed = true;
                break;
            }
        }
    }
    println!(
        "# other processes used {:.1} % of the machine's CPU time during the runs",
        load.others_pct_since()
    );
    // Keep the nodes' logs of a failed row for the user; else remove the secret and logs.
    if failed {
        eprintln!("guest-vcpus: the nodes' logs are in {}", dir.display());
        std::process::exit(1);
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("guest-vcpus: removing {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_guest_line() {
        let out = "ssi-dp: node 0: listening\nnode 0: guest fault-latency: OK: 4 vCPUs (this \
                   node ran [0, 1, 2, 3]) over 254 MiB of guest RAM: 1024 first touches (each \
                   vCPU reads the pages of the next vCPU's slice), guest-side latency p50 156.8us \
                   p99 307.5us p99.9 389.1us max 394.5us mean 160.2us\n";
        let r = parse_guest_line(out).expect("parsed");
        assert_eq!(r.touches, 1024);
        assert_eq!(r.p50, 156.8);
        assert_eq!(r.p999, 389.1);
        assert_eq!(r.max, 394.5);
        assert_eq!(r.mean, 160.2);
    }

    #[test]
    fn a_line_without_a_mean_is_refused() {
        let out = "node 0: guest fault-latency: OK: 1 vCPUs: 256 first touches, guest-side \
                   latency p50 44.6us p99 70.1us p99.9 85.2us max 85.2us\n";
        assert_eq!(parse_guest_line(out), None);
    }
}
