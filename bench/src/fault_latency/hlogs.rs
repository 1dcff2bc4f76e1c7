//! HDR interval logs after the run: `fault-latency show FILE...` prints the percentiles of
//! every series in the logs (or in every `.hlog` of a directory); `fault-latency compare A B`
//! prints two logs (or two `--hlog` directories) side by side, series by series, with the
//! change at each percentile; `fault-latency plot` draws them. Logs are read with `engine::histlog::read_log`, so any HDR V2
//! interval log works, not only ours.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use engine::histlog::{read_log, HistLogError};
use hdrhistogram::Histogram;
use thiserror::Error;

use crate::Ns;

/// Why logs could not be shown or compared.
#[derive(Debug, Error)]
pub enum HlogError {
    /// A log could not be read or decoded.
    #[error(transparent)]
    Read(#[from] HistLogError),
    /// A directory could not be listed.
    #[error("cannot list {path}: {source}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Nothing to show.
    #[error("no .hlog files in {0}")]
    Empty(PathBuf),
    /// The plot could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Nothing in common between the two sides.
    #[error("{a} and {b} have no series in common (series are matched by file and tag)")]
    Disjoint {
        /// The baseline.
        a: PathBuf,
        /// The candidate.
        b: PathBuf,
    },
}

/// The percentiles shown.
const PCTS: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("max", 100.0),
];

/// The logs a path names: the file itself, or the `.hlog` files of a directory (sorted).
pub fn files(path: &Path) -> Result<Vec<PathBuf>, HlogError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let list = |source| HlogError::List {
        path: path.to_path_buf(),
        source,
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(list)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hlog"))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(HlogError::Empty(path.to_path_buf()));
    }
    Ok(out)
}

/// Every series of the logs a path names, keyed `file-stem/tag` for directories and `tag`
/// for a single file.
pub fn series(path: &Path) -> Result<Vec<(String, Histogram<u64>)>, HlogError> {
    let dir = path.is_dir();
    let mut out = Vec::new();
    for f in files(path)? {
        for (tag, h) in read_log(&f)? {
            let key = if dir {
                let stem = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if stem.starts_with(&tag) {
                    stem
                } else {
                    format!("{stem}/{tag}")
                }
            } else {
                tag
            };
            out.push((key, h));
        }
    }
    Ok(out)
}

fn pct(h: &Histogram<u64>, p: f64) -> u64 {
    if p >= 100.0 {
        h.max()
    } else {
        h.value_at_quantile(p / 100.0)
    }
}

/// The `show` output.
pub fn show(paths: &[PathBuf]) -> Result<String, HlogError> {
    let mut s = String::new();
    for path in paths {
        let _ = writeln!(s, "{}", path.display());
        let _ = write!(s, "  {:<40} {:>9}", "series", "count");
        for (name, _) in PCTS {
            let _ = write!(s, " {name:>9}");
        }
        s.push('\n');
        for (key, h) in series(path)? {
            let _ = write!(s, "  {key:<40} {:>9}", h.len());
            for (_, p) in PCTS {
                let _ = write!(s, " {:>9}", Ns(pct(&h, p)).to_string());
            }
            s.push('\n');
        }
    }
    Ok(s)
}

/// The `plot` command: one curve per series of the logs the paths name (a series of a
/// directory is named `<file stem>/<tag>`, or the stem when it starts with the tag).
pub fn plot(paths: &[PathBuf], subtitle: &str, out: &Path) -> Result<String, HlogError> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(series(p)?);
    }
    let lines: Vec<super::plot::Series<'_>> = all
        .iter()
        .map(|(label, hist)| super::plot::Series {
            label: label.clone(),
            hist,
        })
        .collect();
    let svg = super::plot::svg(
        "ssi-dp fault-latency: percentile distribution",
        subtitle,
        &lines,
    );
    std::fs::write(out, svg).map_err(|source| HlogError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(format!(
        "plotted {} series into {}\n",
        lines.len(),
        out.display()
    ))
}

/// The `compare` output: for each series present in both, the baseline, the candidate and
/// the change at each percentile; series present on one side only are listed after.
pub fn compare(a: &Path, b: &Path) -> Result<String, HlogError> {
    let sa = series(a)?;
    let sb = series(b)?;
    let mut s = String::new();
    let _ = writeln!(s, "A = {}\nB = {}", a.display(), b.display());
    let _ = write!(s, "{:<40} {:>5}", "series", "");
    for (name, _) in PCTS {
        let _ = write!(s, " {name:>9}");
    }
    s.push('\n');
    let mut common = 0;
    for (key, ha) in &sa {
        let Some((_, hb)) = sb.iter().find(|(k, _)| k == key) else {
            continue;
        };
        common += 1;
        let _ = write!(s, "{key:<40} {:>5}", "A");
        for (_, p) in PCTS {
            let _ = write!(s, " {:>9}", Ns(pct(ha, p)).to_string());
        }
        let _ = write!(
            s,
            "\n{:<40} {:>5}",
            format!("  ({} / {} samples)", ha.len(), hb.len()),
            "B"
        );
        for (_, p) in PCTS {
            let _ = write!(s, " {:>9}", Ns(pct(hb, p)).to_string());
        }
        let _ = write!(s, "\n{:<40} {:>5}", "", "B/A");
        for (_, p) in PCTS {
            let (x, y) = (pct(ha, p), pct(hb, p));
            let cell = if x == 0 {
                "-".to_string()
            } else {
                format!("{:.2}x", y as f64 / x as f64)
            };
            let _ = write!(s, " {cell:>9}");
        }
        s.push('\n');
    }
    if common == 0 {
        return Err(HlogError::Disjoint {
            a: a.to_path_buf(),
            b: b.to_path_buf(),
        });
    }
    for (side, mine, other) in [("A", &sa, &sb), ("B", &sb, &sa)] {
        for (key, _) in mine.iter() {
            if !other.iter().any(|(k, _)| k == key) {
                let _ = writeln!(s, "{key:<40} only in {side}");
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::histlog::HistLog;

    fn hist(values: impl Iterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn show_and_compare_read_what_histlog_writes() {
        let dir = std::env::temp_dir().join(format!("fl-hlogs-{}", std::process::id()));
        let (da, db) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&da).unwrap();
        std::fs::create_dir_all(&db).unwrap();
        let mut la = HistLog::new(da.join("remote-read.uring.spin.hlog"), vec!["a".into()]);
        la.dump(&[("remote-read".into(), hist((1..=1000).map(|v| v * 10)))])
            .unwrap();
        let mut lb = HistLog::new(db.join("remote-read.uring.spin.hlog"), vec!["b".into()]);
        lb.dump(&[("remote-read".into(), hist((1..=1000).map(|v| v * 20)))])
            .unwrap();
        let mut lc = HistLog::new(db.join("upgrade.uring.spin.hlog"), vec!["c".into()]);
        lc.dump(&[("upgrade".into(), hist(1..=10))]).unwrap();

        let out = show(std::slice::from_ref(&db)).unwrap();
        assert!(out.contains("remote-read.uring.spin"), "{out}");
        assert!(out.contains("upgrade.uring.spin"), "{out}");
        assert!(out.contains(" 1000 "), "{out}");

        let out = compare(&da, &db).unwrap();
        assert!(out.contains("2.00x"), "B is twice A at p50: {out}");
        assert!(
            out.contains("upgrade.uring.spin") && out.contains("only in B"),
            "{out}"
        );
        // Single files compare by tag.
        let out = compare(
            &da.join("remote-read.uring.spin.hlog"),
            &db.join("remote-read.uring.spin.hlog"),
        )
        .unwrap();
        assert!(out.contains("(1000 / 1000 samples)"), "{out}");
        assert!(matches!(
            compare(&da, &db.join("upgrade.uring.spin.hlog")),
            Err(HlogError::Disjoint { .. })
        ));
        let svg = dir.join("p.svg");
        let msg = plot(&[da.clone(), db.clone()], "two runs", &svg).unwrap();
        assert!(msg.starts_with("plotted 3 series"), "{msg}");
        let text = std::fs::read_to_string(&svg).unwrap();
        assert_eq!(text.matches("<polyline").count(), 3);
        assert!(text.contains("two runs"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
