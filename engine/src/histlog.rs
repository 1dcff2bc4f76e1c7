//! HDR histogram interval logs (the V2 log format of HdrHistogram's `HistogramLogProcessor`
//! and friends): one tagged, deflate-compressed histogram per series per interval.
//!
//! A [`HistLog`] remembers the cumulative histograms it last wrote, so each dump records only
//! what happened since the previous one; the whole log is rewritten on each dump (it holds at
//! most [`MAX_INTERVALS`] intervals per series), so the file is always complete and readable.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use thiserror::Error;

/// Most intervals kept per series (older ones are dropped from the rewritten file).
pub const MAX_INTERVALS: usize = 10_000;

/// Why a log could not be written.
#[derive(Debug, Error)]
pub enum HistLogError {
    /// File I/O failed.
    #[error("cannot write histogram log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A series name is not a valid HDR log tag.
    #[error("{0:?} is not a valid histogram log tag (no spaces, commas or colons)")]
    BadTag(String),
    /// Serialisation failed.
    #[error("cannot encode a histogram: {0}")]
    Encode(String),
}

struct Interval {
    tag: String,
    start: Duration,
    length: Duration,
    hist: Histogram<u64>,
}

/// An interval log being built; see the module documentation.
pub struct HistLog {
    path: PathBuf,
    start: SystemTime,
    last: Duration,
    previous: Vec<(String, Histogram<u64>)>,
    intervals: Vec<Interval>,
    comments: Vec<String>,
    extra: Vec<(String, Histogram<u64>)>,
}

impl std::fmt::Debug for HistLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistLog")
            .field("path", &self.path)
            .field("intervals", &self.intervals.len())
            .finish()
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty() && Tag::new(t).is_some() && !t.contains(':')
}

impl HistLog {
    /// A log written to `path`, with the given header comments.
    pub fn new(path: impl AsRef<Path>, comments: Vec<String>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            start: SystemTime::now(),
            last: Duration::ZERO,
            previous: Vec::new(),
            intervals: Vec::new(),
            comments,
            extra: Vec::new(),
        }
    }

    /// Adds a cumulative series that every later dump includes next to the ones it is given
    /// (replacing an earlier series with the same tag).
    pub fn add_series(&mut self, tag: &str, cumulative: Histogram<u64>) {
        self.extra.retain(|(t, _)| t != tag);
        self.extra.push((tag.to_string(), cumulative));
    }

    /// Records an interval ending now for each `(tag, cumulative histogram)`: the difference
    /// to the cumulative histogram given last time for the same tag. Then rewrites the file.
    pub fn dump(&mut self, series: &[(String, Histogram<u64>)]) -> Result<(), HistLogError> {
        let now = self.start.elapsed().unwrap_or_default();
        let extra: Vec<_> = self.extra.clone();
        for (tag, cumulative) in series.iter().chain(extra.iter()) {
            if !valid_tag(tag) {
                return Err(HistLogError::BadTag(tag.clone()));
            }
            let mut interval = cumulative.clone();
            if let Some((_, prev)) = self.previous.iter().find(|(t, _)| t == tag) {
                // Counts only grow, so the subtraction cannot underflow; a reset (fewer
                // counts) falls back to the cumulative histogram.
                if interval.subtract(prev).is_err() {
                    interval = cumulative.clone();
                }
            }
            match self.previous.iter_mut().find(|(t, _)| t == tag) {
                Some(slot) => slot.1 = cumulative.clone(),
                None => self.previous.push((tag.clone(), cumulative.clone())),
            }
            self.intervals.push(Interval {
                tag: tag.clone(),
                start: self.last,
                length: now.saturating_sub(self.last),
                hist: interval,
            });
        }
        let limit = MAX_INTERVALS * series.len().max(1);
        if self.intervals.len() > limit {
            let excess = self.intervals.len() - limit;
            self.intervals.drain(..excess);
        }
        self.last = now;
        self.write()
    }

    fn write(&self) -> Result<(), HistLogError> {
        let io_err = |source| HistLogError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("hlog.tmp");
        let mut out = BufWriter::new(File::create(&tmp).map_err(io_err)?);
        let mut ser = V2DeflateSerializer::new();
        {
            let mut b = IntervalLogWriterBuilder::new();
            for c in &self.comments {
                b.add_comment(c);
            }
            b.with_start_time(self.start).with_base_time(self.start);
            let mut w = b.begin_log_with(&mut out, &mut ser).map_err(io_err)?;
            for i in &self.intervals {
                let tag = Tag::new(&i.tag).ok_or_else(|| HistLogError::BadTag(i.tag.clone()))?;
                w.write_histogram(&i.hist, i.start, i.length, Some(tag))
                    .map_err(|e| HistLogError::Encode(format!("{e:?}")))?;
            }
        }
        out.flush().map_err(io_err)?;
        drop(out);
        std::fs::rename(&tmp, &self.path).map_err(io_err)
    }
}

/// Reads every tagged histogram of an interval log, summed per tag (in first-seen order).
pub fn read_log(path: &Path) -> Result<Vec<(String, Histogram<u64>)>, HistLogError> {
    let io_err = |source| HistLogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io_err)?;
    parse_log(&bytes)
}

/// Parses the bytes of an interval log (see [`read_log`]); hostile input is a typed error.
pub fn parse_log(bytes: &[u8]) -> Result<Vec<(String, Histogram<u64>)>, HistLogError> {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let mut out: Vec<(String, Histogram<u64>)> = Vec::new();
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(bytes) {
        let entry = entry.map_err(|e| HistLogError::Encode(format!("{e:?}")))?;
        let LogEntry::Interval(h) = entry else {
            continue;
        };
        let tag = h
            .tag()
            .map(|t| t.as_str().to_string())
            .unwrap_or_else(|| "untagged".into());
        let raw = base64_decode(h.encoded_histogram())
            .ok_or_else(|| HistLogError::Encode("bad base64 in the log".into()))?;
        let hist: Histogram<u64> = de
            .deserialize(&mut io::Cursor::new(raw))
            .map_err(|e| HistLogError::Encode(format!("{e:?}")))?;
        match out.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, acc)) => {
                acc.add(&hist)
                    .map_err(|e| HistLogError::Encode(format!("{e:?}")))?;
            }
            None => out.push((tag, hist)),
        }
    }
    Ok(out)
}

/// Standard base64 (with padding), as the log format uses.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim().as_bytes();
    if s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn base64_round_trips_known_vectors() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert!(base64_decode("Zm9").is_none());
        assert!(base64_decode("Z!==").is_none());
    }

    #[test]
    fn intervals_hold_the_difference_and_read_back_summed() {
        let dir = std::env::temp_dir().join(format!("ssi-dp-histlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.hlog");
        let mut log = HistLog::new(&path, vec!["test log".into()]);
        log.dump(&[
            ("read".into(), hist(&[1000, 2000])),
            ("write".into(), hist(&[5000])),
        ])
        .unwrap();
        // Cumulative: the second dump adds one read sample.
        log.dump(&[
            ("read".into(), hist(&[1000, 2000, 3000])),
            ("write".into(), hist(&[5000])),
        ])
        .unwrap();
        assert_eq!(log.intervals.len(), 4);
        assert_eq!(
            log.intervals[2].hist.len(),
            1,
            "second read interval holds only the new sample"
        );
        assert_eq!(log.intervals[3].hist.len(), 0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("#[StartTime:"), "{text}");
        assert!(text.contains("Tag=read,"), "{text}");
        let back = read_log(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].0, "read");
        assert_eq!(back[0].1.len(), 3);
        assert_eq!(back[1].1.len(), 1);
        assert!(log.dump(&[("bad tag".into(), hist(&[1]))]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
