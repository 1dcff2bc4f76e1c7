//! The simulator's test families and its self-tests (injected bugs).

use super::{find_bug, report, run_family, FailKind, Family};
use crate::protocol::inject::Bug;

#[test]
fn sim_mixed_clusters() {
    let s = run_family("sim_mixed_clusters", Family::Mixed, 700, 1_000_000);
    assert!(s.seeds >= 1);
    assert!(s.totals.steps > 0);
}

#[test]
fn sim_sharded_instances() {
    let s = run_family("sim_sharded_instances", Family::Sharded, 150, 2_000_000);
    assert!(s.totals.steps > 0);
}

#[test]
fn sim_compute_node_crashes() {
    let s = run_family("sim_compute_node_crashes", Family::Crash, 250, 3_000_000);
    assert!(s.totals.steps > 0);
}

#[test]
fn sim_home_death_stops_cluster() {
    let s = run_family(
        "sim_home_death_stops_cluster",
        Family::HomeDeath,
        60,
        4_000_000,
    );
    assert!(s.totals.steps > 0);
}

#[test]
fn sim_large_clusters() {
    let s = run_family("sim_large_clusters", Family::Large, 40, 5_000_000);
    assert!(s.totals.steps > 0);
}

/// Asserts that `bug` is caught, with one of the expected kinds.
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
