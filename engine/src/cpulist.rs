//! CPU lists in the kernel's cpulist syntax (the one `taskset -c` and
//! `/sys/devices/system/cpu/online` use): `2-5,8`, `0-10:2` (every second CPU).

use thiserror::Error;

/// Largest CPU number accepted (the kernel's `CPU_SETSIZE`).
pub const MAX_CPU: usize = 1023;

/// Why a cpulist could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuListError {
    /// The list is empty.
    #[error("empty CPU list: name at least one CPU, e.g. --cores 1 or --cores 2-5,8")]
    Empty,
    /// A part is not a number, a range or a strided range.
    #[error("bad CPU list item {0:?}: use N, N-M or N-M:STRIDE (e.g. 2-5,8)")]
    BadItem(String),
    /// A range runs backwards.
    #[error("CPU range {0:?} runs backwards: write the lower number first")]
    Backwards(String),
    /// A CPU number is beyond what the kernel supports.
    #[error("CPU {0} is beyond the largest CPU number {MAX_CPU}")]
    TooLarge(usize),
    /// A CPU appears twice.
    #[error("CPU {0} is listed twice: each data-plane core must be distinct")]
    Duplicate(usize),
}

/// Parses a cpulist into CPU numbers in the order written. Duplicates are refused because each
/// listed CPU gets its own pinned shard.
pub fn parse(list: &str) -> Result<Vec<usize>, CpuListError> {
    let list = list.trim();
    if list.is_empty() {
        return Err(CpuListError::Empty);
    }
    let mut cpus = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        let bad = || CpuListError::BadItem(item.to_string());
        let (range, stride) = match item.split_once(':') {
            Some((r, s)) => (r, s.parse::<usize>().map_err(|_| bad())?),
            None => (item, 1),
        };
        if stride == 0 {
            return Err(bad());
        }
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (num(a).ok_or_else(bad)?, num(b).ok_or_else(bad)?),
            None if stride == 1 => {
                let n = num(range).ok_or_else(bad)?;
                (n, n)
            }
            None => return Err(bad()),
        };
        if lo > hi {
            return Err(CpuListError::Backwards(item.to_string()));
        }
        if hi > MAX_CPU {
            return Err(CpuListError::TooLarge(hi));
        }
        for cpu in (lo..=hi).step_by(stride) {
            if cpus.contains(&cpu) {
                return Err(CpuListError::Duplicate(cpu));
            }
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}

fn num(s: &str) -> Option<usize> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Formats CPU numbers as a cpulist, merging runs (`[0,1,2,5]` → `0-2,5`).
pub fn format(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if sorted[i] == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{}", sorted[i]));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_taskset_syntax() {
        assert_eq!(parse("3").unwrap(), vec![3]);
        assert_eq!(parse("2-5,8").unwrap(), vec![2, 3, 4, 5, 8]);
        assert_eq!(parse("0-10:4").unwrap(), vec![0, 4, 8]);
        assert_eq!(parse(" 1 , 0 ").unwrap(), vec![1, 0]);
    }

    #[test]
    fn refuses_bad_lists() {
        assert_eq!(parse(""), Err(CpuListError::Empty));
        assert!(matches!(parse("a"), Err(CpuListError::BadItem(_))));
        assert!(matches!(parse("1-"), Err(CpuListError::BadItem(_))));
        assert!(matches!(parse("-1"), Err(CpuListError::BadItem(_))));
        assert!(matches!(parse("1-4:0"), Err(CpuListError::BadItem(_))));
        assert!(matches!(parse("4:2"), Err(CpuListError::BadItem(_))));
        assert!(matches!(parse("5-2"), Err(CpuListError::Backwards(_))));
        assert_eq!(parse("0-2,2"), Err(CpuListError::Duplicate(2)));
        assert_eq!(parse("4096"), Err(CpuListError::TooLarge(4096)));
    }

    #[test]
    fn formats_runs() {
        assert_eq!(format(&[5, 0, 1, 2]), "0-2,5");
        assert_eq!(format(&[]), "");
        assert_eq!(format(&parse("0-10:2").unwrap()), "0,2,4,6,8,10");
    }
}
