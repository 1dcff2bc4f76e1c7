//! The engine simulator (test builds only): the real shard code — executor, codec, sessions,
//! routing, the protocol machine behind them — driven deterministically from a seed over real
//! guest regions, with the network, the clock and the touching threads simulated
//! ([`world`]). [`net`] is the simulated network behind the real `Transport` contract.
//!
//! `cargo test -p engine sim::` runs the seed budget; `SIM_SEED=<n>` replays one seed, and
//! `SIM_SEEDS=<n>` changes how many run.

pub mod net;
pub mod world;

use rand::rngs::StdRng;
use rand::SeedableRng;

use self::world::{RunStats, Scenario, World};

/// Runs seed `seed` to the end; the failure names the seed and the invariant.
fn run_seed(seed: u64) -> Result<RunStats, world::Failure> {
    let sc = Scenario::draw(&mut StdRng::seed_from_u64(seed ^ 0x5eed_5eed));
    let mut w = World::new(seed, sc).unwrap_or_else(|e| panic!("seed {seed}: set-up: {e}"));
    w.run(sc.touches)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeds_hold_every_invariant() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let sc = Scenario::draw(&mut StdRng::seed_from_u64(seed ^ 0x5eed_5eed));
        eprintln!("seed {seed}: {sc:?}");
        let st = run_seed(seed).unwrap_or_else(|f| panic!("{f}"));
        eprintln!("seed {seed}: {st:?}");
        return;
    }
    let seeds = env_u64("SIM_SEEDS").unwrap_or(1_000);
    let mut total = RunStats::default();
    for seed in 0..seeds {
        let st = run_seed(seed).unwrap_or_else(|f| panic!("{f}"));
        total.steps += st.steps;
        total.accesses += st.accesses;
        total.delivered += st.delivered;
        total.refaults += st.refaults;
        total.failed += st.failed;
        total.crashes += st.crashes;
        total.flaps += st.flaps;
        total.restored += st.restored;
        total.cache_evictions += st.cache_evictions;
        total.moves += st.moves;
    }
    eprintln!("engine simulator: {seeds} seeds, {total:?}");
    // The runs did something: accesses were made, frames crossed the network, and broken
    // connections were resumed.
    assert!(
        total.accesses > seeds && total.delivered > seeds,
        "{total:?}"
    );
    assert!(
        seeds < 10 || (total.flaps > 0 && total.restored > 0),
        "{total:?}"
    );
    // Bounded replica caches evicted pages (one seed in three bounds them to 1-2 pages).
    assert!(seeds < 10 || total.cache_evictions > 0, "{total:?}");
    // Homes moved (one seed in three turns migration on).
    assert!(seeds < 10 || total.moves > 0, "{total:?}");
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(7).unwrap_or_else(|f| panic!("{f}"));
    let b = run_seed(7).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(a, b, "the same seed took another course");
    assert!(a.accesses > 0 && a.delivered > 0, "{a:?}");
}
