//! Measurements the checker can take after its checks (`--measure N`), as the guest sees them:
//!
//! * **IPI round trip** from the first CPU to every other: `membarrier(PRIVATE_EXPEDITED)`
//!   while a thread of ours spins on the target CPU makes the kernel send that CPU one IPI and
//!   wait until its handler has run, so one call is one IPI there and its acknowledgement
//!   back (including the memory the two CPUs share for it). The kernel sends the IPI only
//!   while the spinner is the task running there, so on a machine busy with other work some
//!   calls send none; in the guest the checker is the only work.
//! * **Timer lateness** on every CPU: how much later than asked a 1 ms sleep wakes (the
//!   kernel's hrtimer on that CPU's local APIC timer).
//!
//! Each prints one line, `SSI-GUEST-MEASURE ...`, with p50 / p99 / max in microseconds; the
//! IPI line also says how many function-call IPIs the target CPU handled meanwhile (from
//! /proc/interrupts), so a call that sent none shows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys;

/// The sleep whose lateness is measured.
const SLEEP: Duration = Duration::from_millis(1);

/// Takes `samples` of each measurement over `cpus` (sorted, the first one is the sender).
pub fn run(cpus: &[usize], samples: u64) -> Result<(), String> {
    let Some((&from, others)) = cpus.split_first() else {
        return Err("no CPUs to measure".to_string());
    };
    sys::membarrier_register()
        .map_err(|e| format!("membarrier(REGISTER_PRIVATE_EXPEDITED) failed: {e}"))?;
    for &to in others {
        let before = function_call_interrupts(to);
        let rtt = ipi_round_trips(from, to, samples)?;
        // The target's count of function-call IPIs shows how many calls really sent one.
        let sent = match (before, function_call_interrupts(to)) {
            (Some(b), Some(a)) => a.saturating_sub(b).to_string(),
            _ => "?".to_string(),
        };
        say_line(
            &format!(
                "ipi cpu{from}(node {})->cpu{to}(node {}) ipis_received={sent}",
                node_of(from),
                node_of(to)
            ),
            rtt,
        );
    }
    for &cpu in cpus {
        let late = timer_lateness(cpu, samples)?;
        say_line(
            &format!("timer cpu{cpu}(node {}) sleep=1ms late", node_of(cpu)),
            late,
        );
    }
    Ok(())
}

/// Prints one measurement line with its percentiles.
fn say_line(what: &str, mut us: Vec<f64>) {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    println!(
        "SSI-GUEST-MEASURE {what} n={} p50_us={:.0} p99_us={:.0} max_us={:.0}",
        us.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// `samples` membarrier calls from `from` while a thread spins on `to`, in microseconds.
fn ipi_round_trips(from: usize, to: usize, samples: u64) -> Result<Vec<f64>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(false));
    let (s, r) = (stop.clone(), running.clone());
    let spinner = std::thread::Builder::new()
        .name(format!("spin-cpu{to}"))
        .spawn(move || -> Result<(), String> {
            sys::pin_to(to).map_err(|e| format!("pinning a thread to CPU {to}: {e}"))?;
            r.store(true, Ordering::Release);
            while !s.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            Ok(())
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let measured = (|| {
        sys::pin_to(from).map_err(|e| format!("pinning to CPU {from}: {e}"))?;
        while !running.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let mut us = Vec::with_capacity(samples as usize);
        for _ in 0..samples {
            let t = Instant::now();
            sys::membarrier_expedited()
                .map_err(|e| format!("membarrier(PRIVATE_EXPEDITED) failed: {e}"))?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(us)
    })();
    stop.store(true, Ordering::Release);
    let spun = spinner
        .join()
        .map_err(|_| "the spinning thread panicked".to_string())?;
    spun?;
    measured
}

/// `samples` 1 ms sleeps on `cpu`: how late each woke, in microseconds.
fn timer_lateness(cpu: usize, samples: u64) -> Result<Vec<f64>, String> {
    sys::pin_to(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
    let mut us = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let t = Instant::now();
        std::thread::sleep(SLEEP);
        us.push(t.elapsed().saturating_sub(SLEEP).as_secs_f64() * 1e6);
    }
    Ok(us)
}

/// The function-call interrupts `cpu` has handled (its column of the `CAL:` line of
/// /proc/interrupts), if readable.
fn function_call_interrupts(cpu: usize) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/interrupts").ok()?;
    let header = text.lines().next()?;
    let column = header
        .split_whitespace()
        .position(|c| c == format!("CPU{cpu}"))?;
    let line = text.lines().find(|l| l.trim_start().starts_with("CAL:"))?;
    line.split_whitespace().nth(column + 1)?.parse().ok()
}

/// The NUMA node of `cpu` (its `nodeN` entry in sysfs), or `?`.
fn node_of(cpu: usize) -> String {
    std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("node")
                .filter(|id| id.chars().all(|c| c.is_ascii_digit()) && !id.is_empty())
                .map(str::to_string)
        })
        .next()
        .unwrap_or_else(|| "?".to_string())
}
