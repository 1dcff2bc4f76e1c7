//! Measurements the checker can take after its checks (`--measure N`), as the guest sees them:
//!
//! * **IPI round trip** from the first CPU to every other: `membarrier(PRIVATE_EXPEDITED)`
//!   while a thread of ours spins on the target CPU makes the kernel send that CPU one IPI and
//!   wait until its handler has run, so one call is one IPI there and its acknowledgement
//!   back (including the memory the two CPUs share for it). The kernel sends the IPI only
//!   while the spinner is the task running there, so some calls send none (seen in the lab:
//!   kernel threads ran on the target meanwhile); those are not counted.
//! * **Timer lateness** on every CPU: how much later than asked a 1 ms sleep wakes (the
//!   kernel's hrtimer on that CPU's local APIC timer).
//!
//! Each prints one line, `SSI-GUEST-MEASURE ...`, with p50 / p99 / max in microseconds. An IPI
//! sample counts only when the target CPU's function-call interrupt count (/proc/interrupts)
//! rose during the call; `calls=` says how many calls that took.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys;

/// Calls per wanted IPI sample at most (a call sends none while the target CPU runs another
/// task).
const MAX_CALLS_PER_SAMPLE: u64 = 10;
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
        let (rtt, calls) = ipi_round_trips(from, to, samples)?;
        if rtt.is_empty() {
            return Err(format!(
                "no membarrier call of {calls} sent CPU {to} an IPI (its thread never ran there?)"
            ));
        }
        say_line(
            &format!(
                "ipi cpu{from}(node {})->cpu{to}(node {}) calls={calls}",
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

/// Up to `samples` round trips, in microseconds, of membarrier calls from `from` that sent an
/// IPI to `to` while a thread of ours spun there, and how many calls that took.
fn ipi_round_trips(from: usize, to: usize, samples: u64) -> Result<(Vec<f64>, u64), String> {
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
        let mut calls = 0;
        while (us.len() as u64) < samples && calls < samples * MAX_CALLS_PER_SAMPLE {
            calls += 1;
            let before = function_call_interrupts(to);
            let t = Instant::now();
            sys::membarrier_expedited()
                .map_err(|e| format!("membarrier(PRIVATE_EXPEDITED) failed: {e}"))?;
            let took = t.elapsed().as_secs_f64() * 1e6;
            // A call counts only when the target handled an IPI meanwhile (or when its count
            // cannot be read at all).
            match (before, function_call_interrupts(to)) {
                (Some(b), Some(a)) if a == b => {}
                _ => us.push(took),
            }
        }
        Ok((us, calls))
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
