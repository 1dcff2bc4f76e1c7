//! The SMP work: one thread pinned to each CPU under test runs the phases below in step, and
//! every thread checks every result itself, so a CPU that sees stale or torn memory fails
//! the run. Phases: pinning, atomic counters on separate pages, a spinlock over page-sized
//! records with checksums, and barrier rounds. The phase running is published for the
//! watchdog.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;

use crate::spin::{Aborted, Barrier, Paged, SpinLock};
use crate::sys;

/// Counters every thread increments, each on its own page.
pub const COUNTERS: usize = 8;
/// Records behind the spinlock, each on its own page.
pub const RECORDS: usize = 64;

/// What the checker is doing, as the watchdog names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Start,
    Topology,
    Pinning,
    Counters,
    Records,
    BarrierRounds,
    Measure,
    Done,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Start,
        Phase::Topology,
        Phase::Pinning,
        Phase::Counters,
        Phase::Records,
        Phase::BarrierRounds,
        Phase::Measure,
        Phase::Done,
    ];

    /// The phase's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Topology => "topology",
            Phase::Pinning => "pinning",
            Phase::Counters => "counters",
            Phase::Records => "spinlock records",
            Phase::BarrierRounds => "barrier rounds",
            Phase::Measure => "measurements",
            Phase::Done => "verdict",
        }
    }

    /// Publishes this phase in `cell`.
    pub fn store(self, cell: &AtomicUsize) {
        cell.store(self as usize, Ordering::Relaxed);
    }

    /// The phase published in `cell`.
    pub fn load(cell: &AtomicUsize) -> Phase {
        Self::ALL
            .get(cell.load(Ordering::Relaxed))
            .copied()
            .unwrap_or(Phase::Done)
    }
}

/// One record behind the spinlock: a few fields and a checksum over them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The record's own index, so that a page landing in the wrong place is noticed.
    pub id: u64,
    /// Critical sections that updated it.
    pub updates: u64,
    /// The CPU of the last update.
    pub last_cpu: u64,
    /// Sum of the round numbers of its updates.
    pub total: u64,
    /// [`checksum`] of the fields above.
    pub checksum: u64,
}

/// FNV-1a-style mix of a record's fields (all but the checksum).
pub fn checksum(r: &Record) -> u64 {
    [r.id, r.updates, r.last_cpu, r.total]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h: u64, &f| {
            (h ^ f).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29)
        })
}

impl Record {
    /// A fresh record with index `id`.
    fn new(id: usize) -> Self {
        let mut r = Record {
            id: id as u64,
            ..Record::default()
        };
        r.seal();
        r
    }

    /// Rewrites the checksum after an update.
    fn seal(&mut self) {
        self.checksum = checksum(self);
    }

    /// Whether this is an intact record with index `id`.
    pub fn verify(&self, id: usize) -> bool {
        self.id == id as u64 && self.checksum == checksum(self)
    }
}

/// What a passing run counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The value every counter ended at (threads × rounds).
    pub counters: u64,
    /// Record updates, summed over the records (threads × rounds).
    pub records: u64,
}

/// The memory all threads share.
#[derive(Debug)]
struct Shared<'a> {
    threads: u64,
    rounds: u64,
    phase: &'a AtomicUsize,
    barrier: Barrier,
    counters: Vec<Paged<AtomicU64>>,
    records: SpinLock<Vec<Paged<Record>>>,
    slots: Vec<Paged<AtomicU64>>,
}

/// Why a thread stopped.
#[derive(Debug)]
enum Stop {
    /// It found something wrong (and aborted the others).
    Failed(String),
    /// Another thread failed.
    Aborted,
}

impl From<Aborted> for Stop {
    fn from(_: Aborted) -> Self {
        Stop::Aborted
    }
}

impl Shared<'_> {
    /// Aborts the other threads and returns the failure.
    fn fail(&self, why: String) -> Stop {
        self.barrier.abort();
        Stop::Failed(why)
    }
}

/// Aborts the barrier if its thread panics, so that the others do not wait for it forever.
struct AbortOnPanic<'a>(&'a Barrier);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.abort();
        }
    }
}

/// Runs the work with one thread pinned to each of `cpus`, publishing the phase in `phase`.
pub fn run(cpus: &[usize], rounds: u64, phase: &AtomicUsize) -> Result<Summary, String> {
    if cpus.is_empty() {
        return Err("no CPUs to run on".to_string());
    }
    let sh = Shared {
        threads: cpus.len() as u64,
        rounds,
        phase,
        barrier: Barrier::new(cpus.len()),
        counters: (0..COUNTERS).map(|_| Paged(AtomicU64::new(0))).collect(),
        records: SpinLock::new((0..RECORDS).map(|k| Paged(Record::new(k))).collect()),
        slots: cpus
            .iter()
            .map(|_| Paged(AtomicU64::new(u64::MAX)))
            .collect(),
    };
    let mut failures = Vec::new();
    thread::scope(|s| {
        let mut handles = Vec::new();
        for (t, &cpu) in cpus.iter().enumerate() {
            let sh = &sh;
            let spawned = thread::Builder::new()
                .name(format!("check-cpu{cpu}"))
                .spawn_scoped(s, move || {
                    let _abort = AbortOnPanic(&sh.barrier);
                    worker(sh, t, cpu)
                });
            match spawned {
                Ok(h) => handles.push((cpu, h)),
                Err(e) => {
                    failures.push(format!("cannot start the thread for CPU {cpu}: {e}"));
                    sh.barrier.abort();
                    break;
                }
            }
        }
        for (cpu, h) in handles {
            match h.join() {
                Ok(Ok(())) | Ok(Err(Stop::Aborted)) => {}
                Ok(Err(Stop::Failed(why))) => failures.push(why),
                Err(_) => failures.push(format!("the thread on CPU {cpu} panicked")),
            }
        }
    });
    if let Some(first) = failures.into_iter().next() {
        return Err(first);
    }
    let records = sh.records.lock().iter().map(|r| r.updates).sum();
    Ok(Summary {
        counters: sh.counters[0].load(Ordering::Relaxed),
        records,
    })
}

/// Checks that the calling thread runs on `cpu`.
fn check_cpu(sh: &Shared<'_>, cpu: usize, when: &str) -> Result<(), Stop> {
    match sys::current_cpu() {
        Ok(c) if c == cpu => Ok(()),
        Ok(c) => Err(sh.fail(format!(
            "{when}: the thread pinned to CPU {cpu} runs on CPU {c}"
        ))),
        Err(e) => Err(sh.fail(format!("{when}: sched_getcpu failed: {e}"))),
    }
}

/// Thread `t`'s part of every phase, on `cpu`; thread 0 also publishes and reports phases.
fn worker(sh: &Shared<'_>, t: usize, cpu: usize) -> Result<(), Stop> {
    let lead = t == 0;
    let mut sense = false;
    let want = sh.threads * sh.rounds;
    let enter = |p: Phase| {
        if lead {
            p.store(sh.phase);
            say!(
                "phase {} ({} threads, {} rounds)",
                p.name(),
                sh.threads,
                sh.rounds
            );
        }
    };

    enter(Phase::Pinning);
    sys::pin_to(cpu)
        .map_err(|e| sh.fail(format!("pinning: sched_setaffinity(CPU {cpu}) failed: {e}")))?;
    check_cpu(sh, cpu, "pinning")?;
    sh.barrier.wait(&mut sense)?;

    enter(Phase::Counters);
    for _ in 0..sh.rounds {
        for c in &sh.counters {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    sh.barrier.wait(&mut sense)?;
    for (k, c) in sh.counters.iter().enumerate() {
        let v = c.load(Ordering::Relaxed);
        if v != want {
            return Err(sh.fail(format!(
                "counters: CPU {cpu} sees counter {k} at {v}, expected {want}"
            )));
        }
    }

    enter(Phase::Records);
    for i in 0..sh.rounds {
        // Each thread walks all records (7 is coprime to 64), starting at its own offset.
        let k = ((t as u64 * 31 + i * 7) % RECORDS as u64) as usize;
        let mut records = sh.records.lock();
        let r = &mut records[k].0;
        if !r.verify(k) {
            return Err(sh.fail(format!(
                "spinlock records: CPU {cpu} found record {k} corrupt before its update: {r:?}"
            )));
        }
        r.updates += 1;
        r.last_cpu = cpu as u64;
        r.total += i;
        r.seal();
    }
    sh.barrier.wait(&mut sense)?;
    let (updates, total) = {
        let records = sh.records.lock();
        if let Some((k, r)) = records.iter().enumerate().find(|(k, r)| !r.verify(*k)) {
            return Err(sh.fail(format!(
                "spinlock records: CPU {cpu} found record {k} corrupt: {:?}",
                r.0
            )));
        }
        records
            .iter()
            .fold((0, 0), |(u, s), r| (u + r.updates, s + r.total))
    };
    let want_total = sh.threads * (sh.rounds * sh.rounds.saturating_sub(1) / 2);
    if updates != want || total != want_total {
        return Err(sh.fail(format!(
            "spinlock records: CPU {cpu} counts {updates} updates summing to {total}, expected \
             {want} summing to {want_total}"
        )));
    }

    enter(Phase::BarrierRounds);
    for r in 0..sh.rounds / 10 {
        sh.slots[t].store(r, Ordering::Relaxed);
        sh.barrier.wait(&mut sense)?;
        for (j, slot) in sh.slots.iter().enumerate() {
            let v = slot.load(Ordering::Relaxed);
            if v != r {
                return Err(sh.fail(format!(
                    "barrier rounds: in round {r} CPU {cpu} sees thread {j}'s slot at {v}"
                )));
            }
        }
        sh.barrier.wait(&mut sense)?;
    }
    check_cpu(sh, cpu, "after the work")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_detects_corruption() {
        let mut r = Record::new(5);
        assert!(r.verify(5));
        assert!(!r.verify(6), "a record in the wrong place passed");
        r.updates = 3;
        assert!(!r.verify(5), "an update without a new checksum passed");
        r.seal();
        assert!(r.verify(5));
        for bit in [0, 17, 63] {
            let mut bad = r;
            bad.total ^= 1 << bit;
            assert!(!bad.verify(5), "flipped bit {bit} passed");
        }
        let mut bad = r;
        bad.checksum ^= 1;
        assert!(!bad.verify(5));
    }

    #[test]
    fn runs_on_every_host_cpu() {
        let cpus = sys::affinity().expect("sched_getaffinity");
        let phase = AtomicUsize::new(0);
        let rounds = 300;
        let got = run(&cpus, rounds, &phase).expect("the work should pass on this host");
        let n = cpus.len() as u64;
        assert_eq!(
            got,
            Summary {
                counters: n * rounds,
                records: n * rounds
            }
        );
        assert_eq!(Phase::load(&phase), Phase::BarrierRounds);
    }

    #[test]
    fn a_failing_thread_stops_the_others() {
        let cpus = sys::affinity().expect("sched_getaffinity");
        // The last CPU an affinity mask can name is not on this host: pinning fails there
        // while the other thread waits at the barrier, which must let it go.
        let bad = sys::MAX_CPUS - 1;
        let err = run(&[cpus[0], bad], 10, &AtomicUsize::new(0)).unwrap_err();
        assert!(err.contains(&format!("CPU {bad}")), "{err}");
    }
}
