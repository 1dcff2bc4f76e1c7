//! The progress line: which scenario runs and how far it is, on stderr. On a terminal it is
//! one line redrawn twice a second; otherwise (logs, CI) a line every five seconds of a long
//! scenario. Measuring threads only add to a relaxed counter.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shared progress state; see the module documentation.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    current: Mutex<Option<(String, Instant)>>,
    stop: AtomicBool,
}

impl Progress {
    /// A scenario starts.
    pub fn begin(&self, label: &str, total: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        if let Ok(mut c) = self.current.lock() {
            *c = Some((label.to_string(), Instant::now()));
        }
    }

    /// `n` more samples are done.
    #[inline]
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Samples done in the current scenario.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// The scenario ended.
    pub fn end(&self) {
        if let Ok(mut c) = self.current.lock() {
            *c = None;
        }
    }

    fn line(&self) -> Option<(String, Duration)> {
        let c = self.current.lock().ok()?;
        let (label, since) = c.as_ref()?;
        let (done, total) = (self.done(), self.total.load(Ordering::Relaxed).max(1));
        Some((
            format!(
                "{label}: {done}/{total} samples ({}%), {:.1}s",
                done * 100 / total,
                since.elapsed().as_secs_f64()
            ),
            since.elapsed(),
        ))
    }

    /// Starts the thread that prints the line; it ends when [`Progress::stop`] is called.
    pub fn spawn_printer(self: &Arc<Self>) -> JoinHandle<()> {
        let p = self.clone();
        std::thread::spawn(move || {
            let tty = std::io::stderr().is_terminal();
            let mut last_log = Instant::now();
            let mut drawn = false;
            while !p.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let line = p.line();
                let mut err = std::io::stderr().lock();
                match (tty, line) {
                    (true, Some((l, _))) => {
                        let _ = write!(err, "\r\x1b[K{l}");
                        drawn = true;
                    }
                    (true, None) if drawn => {
                        let _ = write!(err, "\r\x1b[K");
                        drawn = false;
                    }
                    (false, Some((l, running)))
                        if running >= Duration::from_secs(5)
                            && last_log.elapsed() >= Duration::from_secs(5) =>
                    {
                        let _ = writeln!(err, "fault-latency: {l}");
                        last_log = Instant::now();
                    }
                    _ => {}
                }
                let _ = err.flush();
            }
            if drawn {
                let _ = write!(std::io::stderr(), "\r\x1b[K");
            }
        })
    }

    /// Ends the printer thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_reports_the_current_scenario() {
        let p = Progress::default();
        assert!(p.line().is_none());
        p.begin("remote-read", 200);
        p.add(50);
        let (l, _) = p.line().unwrap();
        assert!(l.starts_with("remote-read: 50/200 samples (25%)"), "{l}");
        p.end();
        assert!(p.line().is_none());
    }
}
