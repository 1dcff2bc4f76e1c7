//! Failure of a shard thread is never silent.
//!
//! - [`AbortOnPanic`]: a shard that panics takes the whole process down at once, with a line
//!   naming it. A shard that merely unwound would leave every thread faulting on its pages
//!   asleep in the kernel forever, and closing the userfaultfd instead would let them run on
//!   fresh zero pages: wrong data, silently. (Release builds also set `panic = "abort"`.)
//! - [`Watchdog`]: a low-priority thread that names a shard whose loop stopped turning while
//!   it was not asleep in its idle wait (an endless loop, a system call that does not return),
//!   once per episode, and says when it runs again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::doorbell::Doorbell;
use crate::node_state::NodeState;
use crate::stats::ShardStats;

/// Aborts the process when dropped during a panic (put one at the top of a shard thread).
#[derive(Debug)]
pub struct AbortOnPanic {
    shard: usize,
}

impl AbortOnPanic {
    /// A guard for shard `shard`.
    pub fn new(shard: usize) -> Self {
        Self { shard }
    }
}

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The panic message is already on stderr (the default hook printed it).
            eprintln!(
                "ssi-dp: shard {} panicked (message above): its pages can no longer be served, \
                 so the node aborts rather than leave faulting threads hanging; this is a bug, \
                 please report it with the message and the log",
                self.shard
            );
            std::process::abort();
        }
    }
}

/// How often the watchdog samples the shards.
const SAMPLE: Duration = Duration::from_millis(100);

/// What the watchdog has to say about one shard after a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Report {
    /// No turn finished for this long while the shard was awake (said once per episode).
    Stalled(Duration),
    /// The shard turns (or sleeps) again after a reported stall of this long.
    Recovered(Duration),
}

/// The watchdog's view of one shard: its last turn count and since when it has not moved.
#[derive(Debug)]
pub struct Monitor {
    bound: Duration,
    turns: u64,
    since: Instant,
    reported: bool,
}

impl Monitor {
    /// A shard seen at `now` with `turns` finished turns; a stall is `bound` without a turn.
    pub fn new(now: Instant, turns: u64, bound: Duration) -> Self {
        Self {
            bound,
            turns,
            since: now,
            reported: false,
        }
    }

    /// One sample: the shard's turn count and whether it sleeps in its idle wait now.
    pub fn observe(&mut self, now: Instant, turns: u64, asleep: bool) -> Option<Report> {
        let waited = now.saturating_duration_since(self.since);
        if turns != self.turns || asleep {
            let was = std::mem::replace(&mut self.reported, false);
            self.turns = turns;
            self.since = now;
            return was.then_some(Report::Recovered(waited));
        }
        if !self.reported && waited >= self.bound {
            self.reported = true;
            return Some(Report::Stalled(waited));
        }
        None
    }
}

/// The watchdog thread (stopped with the node).
#[derive(Debug)]
pub struct Watchdog;

impl Watchdog {
    /// Starts the watchdog over the node's shards (`cores[i]` is shard `i`'s CPU): a shard
    /// that has not finished a turn for `bound` while not asleep is reported.
    pub fn start(
        state: Arc<NodeState>,
        stats: &[Arc<ShardStats>],
        doorbells: Arc<[Doorbell]>,
        cores: &[usize],
        bound: Duration,
    ) -> std::io::Result<JoinHandle<()>> {
        let now = Instant::now();
        let mut watched: Vec<(Arc<ShardStats>, usize, Monitor)> = stats
            .iter()
            .zip(cores)
            .map(|(s, &cpu)| (s.clone(), cpu, Monitor::new(now, turns(s), bound)))
            .collect();
        std::thread::Builder::new()
            .name("ssi-dp-watchdog".into())
            .spawn(move || {
                while !state.stopping() {
                    std::thread::sleep(SAMPLE);
                    if state.fatal().is_some() {
                        // The node stops on a recorded failure and says why; its shards no
                        // longer serve (faults stay waiting by design), which is no stall.
                        continue;
                    }
                    let now = Instant::now();
                    for (i, (stats, cpu, m)) in watched.iter_mut().enumerate() {
                        let asleep = doorbells.get(i).is_some_and(Doorbell::is_sleeping);
                        let report = m.observe(now, turns(stats), asleep);
                        if let Some(r) = report {
                            let stalled = matches!(r, Report::Stalled(_));
                            stats.stalled.store(stalled, Ordering::Relaxed);
                        }
                        match report {
                            None => {}
                            Some(Report::Stalled(d)) => tracing::error!(
                                "shard {i} (CPU {cpu}) has not finished a loop turn for {:.1} s \
                                 and is not idle: faults and messages for its pages wait. Its \
                                 thread (ssi-dp-shard{i}, {}) is stuck in a system call or a \
                                 loop; a stack trace (gdb -p PID, `thread apply all bt`) shows \
                                 where",
                                d.as_secs_f64(),
                                thread_whereabouts(&format!("ssi-dp-shard{i}"))
                            ),
                            Some(Report::Recovered(d)) => tracing::warn!(
                                "shard {i} (CPU {cpu}) runs again after {:.1} s",
                                d.as_secs_f64()
                            ),
                        }
                    }
                }
            })
    }
}

/// What the kernel says of this process's thread named `name`: its state letter (R running,
/// S or D asleep), the kernel function it sleeps in and the system call it is in (number and
/// first argument, from `/proc/self/task/TID/syscall`). A diagnosis only: what cannot be
/// read is left out.
fn thread_whereabouts(name: &str) -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "its state unreadable: /proc/self/task cannot be listed".to_string();
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        // "TID (COMM) STATE ...": COMM may hold spaces and parentheses, the last ')' ends it.
        let state = stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].trim_start().chars().next())
            .unwrap_or('?');
        let wchan = read("wchan");
        let syscall = read("syscall");
        let mut call = syscall.split_whitespace();
        let call = match (call.next(), call.next()) {
            (Some(nr), Some(arg)) if nr.chars().all(|c| c.is_ascii_digit()) => {
                format!(", in system call {nr} (first argument {arg})")
            }
            (Some(what), _) => format!(", system call: {what}"),
            _ => String::new(),
        };
        let wchan = match wchan.trim() {
            "" | "0" => String::new(),
            w => format!(", asleep in {w}"),
        };
        return format!(
            "thread {} in state {state}{wchan}{call}",
            task.file_name().to_string_lossy()
        );
    }
    "no such thread found".to_string()
}

fn turns(s: &ShardStats) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    s.busy_turns.load(Relaxed) + s.idle_turns.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_reported_once_per_episode_and_its_end_too() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut m = Monitor::new(t0, 10, Duration::from_millis(500));
        // Turning, then still for less than the bound: nothing to say.
        assert_eq!(m.observe(ms(100), 11, false), None);
        assert_eq!(m.observe(ms(500), 11, false), None);
        // Still, awake, past the bound (measured from the last turn at 100 ms): one report.
        assert_eq!(
            m.observe(ms(700), 11, false),
            Some(Report::Stalled(Duration::from_millis(600)))
        );
        assert_eq!(m.observe(ms(900), 11, false), None);
        // It turns again: the end of the episode, once.
        assert_eq!(
            m.observe(ms(1000), 12, false),
            Some(Report::Recovered(Duration::from_millis(900)))
        );
        assert_eq!(m.observe(ms(1100), 13, false), None);
        // Asleep in its idle wait without turning for long: not a stall.
        assert_eq!(m.observe(ms(5000), 13, true), None);
        assert_eq!(m.observe(ms(5400), 13, false), None);
        assert!(matches!(
            m.observe(ms(6000), 13, false),
            Some(Report::Stalled(_))
        ));
    }

    #[test]
    fn whereabouts_name_a_live_thread_and_admit_a_missing_one() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("wd-sleeper".into())
            .spawn(move || {
                // Parked until the test sends (or drops the sender): either ends the wait.
                let _ = rx.recv();
            })
            .unwrap();
        // It parks in a futex wait: asleep, in a system call.
        let mut seen = String::new();
        for _ in 0..100 {
            seen = thread_whereabouts("wd-sleeper");
            if seen.contains("in state S") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            seen.starts_with("thread ") && seen.contains("in state S"),
            "{seen}"
        );
        if cfg!(target_arch = "x86_64") {
            assert!(
                seen.contains("in system call 202 "),
                "futex is 202 on x86-64: {seen}"
            );
        }
        tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(thread_whereabouts("wd-no-such"), "no such thread found");
    }

    #[test]
    fn a_panicking_shard_aborts_the_process() {
        // Run in a child process (this test binary, filtered to the helper below): the child
        // must die by SIGABRT with the guard's line on stderr, not exit after unwinding.
        if std::env::var_os("SSI_DP_ABORT_CHILD").is_some() {
            let _guard = AbortOnPanic::new(3);
            panic!("planted panic");
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "watchdog::tests::a_panicking_shard_aborts_the_process",
                "--nocapture",
            ])
            .env("SSI_DP_ABORT_CHILD", "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("shard 3 panicked"), "{err}");
        assert!(err.contains("planted panic"), "{err}");
    }
}
