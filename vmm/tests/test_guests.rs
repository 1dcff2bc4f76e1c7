//! The four test guests on anonymous guest memory, with one and two vCPUs in one process:
//! exact results (recomputed on the host from the parameters) or the test fails.

mod common;

use vmm::{GuestMemory, TestGuest, Verdict};

const RAM: usize = 64 << 20;

fn run_all(vcpus: u32) {
    common::require_kvm();
    for guest in TestGuest::ALL {
        let mem = GuestMemory::anonymous(RAM, 0).unwrap();
        let p = common::params_for(guest, vcpus);
        let verdict = common::run_guest(&mem, guest, &p);
        match (&guest, &verdict) {
            (TestGuest::Atomics, Verdict::Atomics { counters }) => {
                assert_eq!(counters.len(), p.counters as usize);
                assert!(counters
                    .iter()
                    .all(|&c| c == u64::from(vcpus) * p.iterations));
            }
            (TestGuest::TicketLock, Verdict::TicketLock { total }) => {
                assert_eq!(*total, u64::from(vcpus) * p.iterations)
            }
            (TestGuest::ParallelSum, Verdict::ParallelSum { total }) => {
                let expected = (0..p.sum_bytes / 8).fold(0u64, |a, i| {
                    a.wrapping_add(vmm::guests::array_element(p.seed, i))
                });
                assert_eq!(*total, expected);
            }
            (TestGuest::FaultLatency, Verdict::FaultLatency { ticks }) => {
                assert_eq!(ticks.len(), u64::from(vcpus) * u64::from(p.touch_pages));
                let ns = verdict.latency_ns(2_000_000).unwrap();
                assert_eq!(ns.len(), ticks.len());
            }
            (g, v) => panic!("{g} produced the verdict of another guest: {v:?}"),
        }
    }
}

#[test]
fn four_guests_one_vcpu() {
    run_all(1);
}

#[test]
fn four_guests_two_vcpus() {
    run_all(2);
}

#[test]
fn cli_entry_point_runs_a_pinned_guest() {
    common::require_kvm();
    let mem = GuestMemory::anonymous(RAM, 0).unwrap();
    let guest = vmm::launch::parse_guest_arg("test:ticket-lock").unwrap();
    let p = common::params_for(guest, 2);
    let (stop, _cancel) = vmm::stop_after(std::time::Duration::from_secs(120));
    let allowed = common::allowed_cpus();
    let pin: Vec<usize> = (0..2).map(|i| allowed[i % allowed.len()]).collect();
    let run = vmm::launch::run_test_guest(
        &mem,
        guest,
        &p,
        vmm::VmConfig::single_node(2),
        vmm::launch::Loader::ThisNode,
        &pin,
        &stop,
    )
    .unwrap();
    assert!(run.tsc_khz.is_some_and(|k| k > 0));
    match guest.check(&p, &run.reports) {
        Ok(Verdict::TicketLock { total }) => assert_eq!(total, 2 * p.iterations),
        other => panic!("{other:?}"),
    }
}
