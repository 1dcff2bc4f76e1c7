//! Deterministic protocol simulator (test builds only).
//!
//! Drives 2–16 nodes (each with one or more protocol instances) in one
//! thread from a seed: a network with per-connection FIFO, random delays and
//! arbitrary interleaving across connections; random workloads; evictions;
//! crashes of compute-only nodes (and of a home, for the fatal path). After
//! every step it checks SWMR, data values against a reference model, actions
//! against the memory model, death handling, and liveness; at the end it
//! checks that the cluster drained and that directory, local states and
//! mappings agree.
//!
//! Each test reads `SEED=<n>` (replay that seed only) and `SIM_SOAK_SECS=<s>`
//! (run fresh seeds for that long); a failure prints the seed, the scenario,
//! and the last steps that touched the failing page.

mod scenario;
#[cfg(test)]
mod tests;
mod trace;
mod world;

pub(crate) use scenario::{Family, Scenario};
pub(crate) use world::{FailKind, Failure, RunStats, World};

use super::inject::Bug;
use std::time::{Duration, Instant};

/// Runs one seed of a family, with an optional injected bug.
pub(crate) fn run_seed(
    seed: u64,
    family: Family,
    bug: Option<Bug>,
) -> Result<RunStats, Box<(Scenario, Failure)>> {
    let mut sc = Scenario::new(seed, family);
    sc.bug = bug;
    let world = match World::new(sc.clone()) {
        Ok(w) => w,
        Err(e) => {
            let f = Failure {
                kind: FailKind::Violation,
                message: format!("cannot build the cluster: {e}"),
                page: None,
                step: 0,
                time: 0,
                trace: String::new(),
            };
            return Err(Box::new((sc, f)));
        }
    };
    world.run().map_err(|f| Box::new((sc, f)))
}

/// The failure report: seed, replay command, scenario, shortened trace.
pub(crate) fn report(test: &str, sc: &Scenario, f: &Failure) -> String {
    format!(
        "protocol simulation failed: seed={} kind={:?} at step {} (t={}ns)\n  {}\n  replay: SEED={} cargo test -p coherence {}\n  scenario: {}\n  last steps{}:\n{}",
        sc.seed,
        f.kind,
        f.step,
        f.time,
        f.message,
        sc.seed,
        test,
        sc.describe(),
        f.page.map(|p| format!(" touching page {p}")).unwrap_or_default(),
        f.trace
    )
}

/// Whether `SEED` or `SIM_SOAK_SECS` replaces the default seed range.
pub(crate) fn replaying() -> bool {
    std::env::var_os("SEED").is_some() || std::env::var_os("SIM_SOAK_SECS").is_some()
}

/// What a family run covered.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Summary {
    pub(crate) seeds: u64,
    pub(crate) totals: RunStats,
}

/// Runs a family as a test: `SEED` replays one seed, `SIM_SOAK_SECS` soaks
/// with fresh seeds, otherwise `default_seeds` seeds from `base`. Panics
/// with the report on the first failure.
pub(crate) fn run_family(test: &str, family: Family, default_seeds: u64, base: u64) -> Summary {
    let start = Instant::now();
    let mut summary = Summary::default();
    let one = |seed: u64, summary: &mut Summary| match run_seed(seed, family, None) {
        Ok(s) => {
            summary.seeds += 1;
            let t = &mut summary.totals;
            t.steps += s.steps;
            t.busy_faults += s.busy_faults;
            t.ops += s.ops;
            t.messages += s.messages;
            t.lost += s.lost;
            t.ping_pong += s.ping_pong;
            t.deferred += s.deferred;
            t.recalls += s.recalls;
            t.evictions += s.evictions;
            t.prefetches += s.prefetches;
            t.moves += s.moves;
            t.retired += s.retired;
            t.pointers_taken += s.pointers_taken;
            t.drain_events = t.drain_events.max(s.drain_events);
            for (a, b) in t.by_kind.iter_mut().zip(s.by_kind) {
                *a += b;
            }
        }
        Err(e) => panic!("{}", report(test, &e.0, &e.1)),
    };
    if let Some(seed) = std::env::var("SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        one(seed, &mut summary);
    } else if let Some(secs) = std::env::var("SIM_SOAK_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        let from = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        eprintln!("{test}: soaking for {secs}s from seed {from}");
        let mut seed = from;
        while start.elapsed() < Duration::from_secs(secs) {
            one(seed, &mut summary);
            seed = seed.wrapping_add(1);
        }
    } else {
        for k in 0..default_seeds {
            one(base + k, &mut summary);
        }
    }
    let t = summary.totals;
    eprintln!(
        "{test}: {} seeds, {} protocol steps (+{} busy fault retries), {} thread ops, {} messages in {:.2?} \
         (ping-pong {}, deferred {}, recalls {}, evictions {}, prefetches {}, home moves {}, homes left {} \
         with {} pointers kept, pages lost {})",
        summary.seeds,
        t.steps,
        t.busy_faults,
        t.ops,
        t.messages,
        start.elapsed(),
        t.ping_pong,
        t.deferred,
        t.recalls,
        t.evictions,
        t.prefetches,
        t.moves,
        t.retired,
        t.pointers_taken,
        t.lost
    );
    let kinds: Vec<String> = world::KIND_NAMES
        .iter()
        .zip(t.by_kind)
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    eprintln!("{test}: messages by kind: {}", kinds.join(", "));
    eprintln!("{test}: longest drain {} events", t.drain_events);
    summary
}

/// Runs seeds with `bug` injected until the checker fails; returns the
/// failure (or `None` if `max_seeds` seeds all passed).
pub(crate) fn find_bug(
    family: Family,
    bug: Bug,
    max_seeds: u64,
    base: u64,
) -> Option<(Scenario, Failure)> {
    (0..max_seeds).find_map(|k| run_seed(base + k, family, Some(bug)).err().map(|e| *e))
}
