//! The simulator's test families and its self-tests (injected bugs).

use super::{find_bug, replaying, report, run_family, run_seed, FailKind, Family};
use crate::inject::Bug;

/// The default CI run of the main family must cover at least this much.
const CI_MIN_SEEDS: u64 = 1_000;
const CI_MIN_STEPS: u64 = 1_000_000;

#[test]
fn sim_mixed_clusters() {
    let s = run_family("sim_mixed_clusters", Family::Mixed, 4_000, 1_000_000);
    if !replaying() {
        assert!(s.seeds >= CI_MIN_SEEDS, "only {} seeds", s.seeds);
        assert!(
            s.totals.steps >= CI_MIN_STEPS,
            "only {} steps",
            s.totals.steps
        );
        // Sequential prefetch (an ordinary read with no waiter) is part of the mix.
        assert!(s.totals.prefetches > 0, "no prefetch was issued");
        assert_home_moves(&s.totals);
    }
}

/// Home migration ran in the family's seeds: moves started, pages travelled to new homes
/// with and without data, and requests that reached an old home were redirected.
fn assert_home_moves(t: &super::world::RunStats) {
    let kind = |name: &str| {
        let k = super::world::KIND_NAMES
            .iter()
            .position(|n| *n == name)
            .expect("a known message kind");
        t.by_kind[k]
    };
    assert!(t.moves > 0, "no home move started: {t:?}");
    assert!(kind("HomeMove(data)") > 0, "no home moved with data: {t:?}");
    assert!(kind("HomeMove(zero)") > 0, "no untouched page moved: {t:?}");
    assert!(kind("Nack(moved)") > 0, "no request was redirected: {t:?}");
    // Homes left the cluster, handing their pointers to their successors.
    assert!(t.retired > 0, "no home left: {t:?}");
    assert!(kind("HomePointer") > 0, "no pointer was handed over: {t:?}");
    assert!(t.pointers_taken > 0, "no successor kept a pointer: {t:?}");
}

#[test]
fn sim_sharded_instances() {
    let s = run_family("sim_sharded_instances", Family::Sharded, 800, 2_000_000);
    assert!(s.totals.steps > s.seeds);
}

#[test]
fn sim_compute_node_crashes() {
    let s = run_family("sim_compute_node_crashes", Family::Crash, 1_500, 3_000_000);
    assert!(s.totals.steps > s.seeds);
    if !replaying() {
        assert!(s.totals.prefetches > 0, "no prefetch was issued");
        // Homes move while compute nodes crash.
        assert_home_moves(&s.totals);
    }
    if !replaying() {
        // The failure paths were taken, not just scheduled.
        assert!(s.totals.lost > 0 && s.totals.recalls > 0, "{:?}", s.totals);
        // A leaving home handed a lost page over as lost.
        let lost_moves = super::world::KIND_NAMES
            .iter()
            .position(|n| *n == "HomeMove(lost)")
            .map_or(0, |k| s.totals.by_kind[k]);
        assert!(lost_moves > 0, "no lost page changed home: {:?}", s.totals);
    }
}

#[test]
fn sim_home_leaves() {
    let s = run_family("sim_home_leaves", Family::Leave, 600, 6_000_000);
    if !replaying() {
        assert_home_moves(&s.totals);
        assert!(
            s.totals.retired * 10 >= s.seeds * 9,
            "only {} of {} seeds saw their home leave",
            s.totals.retired,
            s.seeds
        );
    }
}

#[test]
fn sim_home_death_stops_cluster() {
    let s = run_family(
        "sim_home_death_stops_cluster",
        Family::HomeDeath,
        300,
        4_000_000,
    );
    assert!(s.totals.steps > s.seeds);
}

#[test]
fn sim_large_clusters() {
    let s = run_family("sim_large_clusters", Family::Large, 200, 5_000_000);
    assert!(s.totals.steps > s.seeds);
}

/// Asserts that `bug` is caught with one of the expected kinds, and that the
/// checker catches it in a good share of 100 seeds (not by luck).
fn caught(name: &str, family: Family, bug: Bug, expected: &[FailKind]) {
    let Some((sc, f)) = find_bug(family, bug, 400, 9_000_000) else {
        panic!("{name}: injected bug {bug:?} survived 400 seeds: the checker does not bite");
    };
    eprintln!(
        "{name}: caught {bug:?} at seed {}: {:?}: {}",
        sc.seed, f.kind, f.message
    );
    assert!(
        expected.contains(&f.kind),
        "{name}: {bug:?} was caught as {:?}, expected one of {expected:?}\n{}",
        f.kind,
        report(name, &sc, &f)
    );
    let hits = (0..100)
        .filter(|k| run_seed(9_500_000 + k, family, Some(bug)).is_err())
        .count();
    eprintln!("{name}: {bug:?} caught in {hits} of 100 seeds");
    assert!(
        hits >= 10,
        "{name}: {bug:?} caught in only {hits} of 100 seeds"
    );
}

#[test]
fn injected_skip_inv_ack_is_caught() {
    caught(
        "injected_skip_inv_ack_is_caught",
        Family::Mixed,
        Bug::SkipInvAckWait,
        &[FailKind::Swmr, FailKind::StaleCopy, FailKind::StaleRead],
    );
}

#[test]
fn injected_missing_write_protect_is_caught() {
    caught(
        "injected_missing_write_protect_is_caught",
        Family::Mixed,
        Bug::NoWriteProtectOnForward,
        &[
            FailKind::Swmr,
            FailKind::StaleCopy,
            FailKind::StaleRead,
            FailKind::BadAction,
        ],
    );
}

#[test]
fn injected_home_move_keeping_sharers_is_caught() {
    caught(
        "injected_home_move_keeping_sharers_is_caught",
        Family::Mixed,
        Bug::MoveKeepsSharers,
        &[
            FailKind::Swmr,
            FailKind::StaleCopy,
            FailKind::StaleRead,
            FailKind::EndState,
        ],
    );
}

#[test]
fn injected_leave_dropping_pointers_is_caught() {
    caught(
        "injected_leave_dropping_pointers_is_caught",
        Family::Leave,
        Bug::RetireDropsPointers,
        &[FailKind::EndState, FailKind::Liveness],
    );
}

#[test]
fn injected_missing_done_is_caught() {
    caught(
        "injected_missing_done_is_caught",
        Family::Mixed,
        Bug::RequesterSkipsDone,
        &[FailKind::Liveness],
    );
}

#[test]
fn injected_home_skips_done_wait_is_caught() {
    caught(
        "injected_home_skips_done_wait_is_caught",
        Family::Mixed,
        Bug::HomeSkipsDoneWait,
        &[
            FailKind::Swmr,
            FailKind::StaleCopy,
            FailKind::StaleRead,
            FailKind::Violation,
            FailKind::BadAction,
        ],
    );
}

#[test]
fn injected_dead_sharers_kept_is_caught() {
    caught(
        "injected_dead_sharers_kept_is_caught",
        Family::Crash,
        Bug::KeepDeadSharers,
        &[
            FailKind::SendToDead,
            FailKind::WaitingOnDead,
            FailKind::Liveness,
        ],
    );
}

#[test]
fn injected_lost_write_back_is_caught() {
    caught(
        "injected_lost_write_back_is_caught",
        Family::Mixed,
        Bug::DropWriteBack,
        &[FailKind::StaleCopy, FailKind::StaleRead],
    );
}
