//! The kernel's cpulist syntax (`0-3,8`, as in sysfs and taskset): parsing into a sorted set
//! of CPU numbers, and writing one back for messages.

use crate::sys::MAX_CPUS;

/// Parses a cpulist (surrounding whitespace, such as sysfs's newline, is ignored; an empty
/// list is the empty set) into sorted, distinct CPU numbers below [`MAX_CPUS`].
pub fn parse(text: &str) -> Result<Vec<usize>, String> {
    let list = text.trim();
    let mut cpus = Vec::new();
    if list.is_empty() {
        return Ok(cpus);
    }
    let number = |s: &str| {
        s.parse::<usize>()
            .map_err(|_| format!("`{s}` is not a CPU number in cpulist `{list}`"))
    };
    for part in list.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if lo > hi {
            return Err(format!("range `{part}` runs backwards in cpulist `{list}`"));
        }
        if hi >= MAX_CPUS {
            return Err(format!("CPU {hi} in cpulist `{list}` is beyond {MAX_CPUS}"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Writes sorted CPU numbers as a cpulist with ranges (`0-3,8`); the empty set is `(none)`.
pub fn format(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut k = 0;
    while k < cpus.len() {
        let mut end = k;
        while end + 1 < cpus.len() && cpus[end + 1] == cpus[end] + 1 {
            end += 1;
        }
        out.push(if end == k {
            cpus[k].to_string()
        } else {
            format!("{}-{}", cpus[k], cpus[end])
        });
        k = end + 1;
    }
    if out.is_empty() {
        "(none)".to_string()
    } else {
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(parse("0-3,8\n").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse("5").unwrap(), vec![5]);
        assert_eq!(parse("3,1,1-2").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse(" \n").unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in ["0,,1", "a", "3-1", "1-", "-1", "0-7:2", "0-5000", "1 2"] {
            assert!(parse(bad).is_err(), "`{bad}` was accepted");
        }
        assert!(parse("3-1").unwrap_err().contains("backwards"));
    }

    #[test]
    fn formats_ranges() {
        assert_eq!(format(&[0, 1, 2, 3, 8]), "0-3,8");
        assert_eq!(format(&[0, 2]), "0,2");
        assert_eq!(format(&[]), "(none)");
        assert_eq!(
            parse(&format(&[1, 2, 5, 6, 7, 9])).unwrap(),
            [1, 2, 5, 6, 7, 9]
        );
    }
}
