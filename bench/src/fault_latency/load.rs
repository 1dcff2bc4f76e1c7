//! How much CPU time other processes took while a part of the run was measured: the whole
//! machine's busy time (`/proc/stat`) minus this process's and its reaped children's
//! (`/proc/self/stat`). A benchmark on a shared 2-CPU machine is only as good as this number;
//! every table prints it.

/// A reading of the machine's and this process tree's CPU time, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSnapshot {
    machine_busy: u64,
    machine_total: u64,
    own: u64,
}

fn machine() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some((busy, busy + get(3) + get(4)))
}

fn own() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14..=17, i.e. 11..=14 after the name.
    (11..=14).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

impl CpuSnapshot {
    /// Reads the counters now (zeroes where they cannot be read).
    pub fn now() -> Self {
        let (machine_busy, machine_total) = machine().unwrap_or((0, 0));
        Self {
            machine_busy,
            machine_total,
            own: own().unwrap_or(0),
        }
    }

    /// Percent of the machine's CPU time that other processes used since `self`.
    pub fn others_pct_since(&self) -> f64 {
        let now = Self::now();
        let total = now.machine_total.saturating_sub(self.machine_total);
        if total == 0 {
            return 0.0;
        }
        let busy = now.machine_busy.saturating_sub(self.machine_busy);
        let own = now.own.saturating_sub(self.own);
        busy.saturating_sub(own) as f64 * 100.0 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_busy_time_is_not_counted_as_others() {
        assert!(machine().is_some() && own().is_some(), "procfs is readable");
        let s = CpuSnapshot::now();
        // Burn about 200 ms of CPU in this process.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let pct = s.others_pct_since();
        assert!((0.0..=100.0).contains(&pct), "{pct}");
    }
}
