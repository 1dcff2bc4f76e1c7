//! The test guests over guest memory registered with a userfaultfd (MISSING, kernel faults
//! allowed), filled on demand by a handler thread:
//!
//! * `vmm_writes_fault_into_uffd`: the loader's own writes to empty uffd memory fault and are
//!   zero-filled; the guests then run and give exact results.
//! * `guest_accesses_fault_into_uffd`: the guest is loaded into a separate "home" buffer and
//!   the VM's memory starts empty, as on a node that did not load it: every page the vCPUs
//!   need — page-table pages read by the guest page walk, the code page, the parameter block,
//!   the data — arrives through the uffd (UFFDIO_COPY from home), and the results are exact.

mod common;

use common::uffd::{Fill, UffdRegion};
use vmm::layout::{self, PAGE_SIZE};
use vmm::{paging, GuestMemory, TestGuest};

const RAM: usize = 64 << 20;

#[test]
fn vmm_writes_fault_into_uffd() {
    common::require_kvm();
    for vcpus in [1, 2] {
        for guest in TestGuest::ALL {
            let region = UffdRegion::new(RAM, Fill::Zero);
            // SAFETY: `region` owns the mapping and outlives `mem` and the VM in this scope.
            let mem = unsafe { GuestMemory::from_raw(region.addr, RAM, 0) }.unwrap();
            let p = common::params_for(guest, vcpus);
            common::run_guest(&mem, guest, &p);
            let faulted = region.faulted();
            let code = layout::TEST_CODE_OFFSET as usize;
            let pml4 = layout::TEST_PAGE_TABLES_OFFSET as usize;
            assert!(faulted.contains(&code), "loader's code write did not fault");
            assert!(
                faulted.contains(&pml4),
                "loader's page-table write did not fault"
            );
        }
    }
}

#[test]
fn guest_accesses_fault_into_uffd() {
    common::require_kvm();
    for vcpus in [1, 2] {
        for guest in TestGuest::ALL {
            let home = GuestMemory::anonymous(RAM, 0).unwrap();
            let p = common::params_for(guest, vcpus);
            let plan = guest.setup(&home, &p).unwrap();
            let region = UffdRegion::new(RAM, Fill::CopyFrom(home.host_addr()));
            // SAFETY: `region` owns the mapping and outlives `mem` and the VM in this scope.
            let mem = unsafe { GuestMemory::from_raw(region.addr, RAM, 0) }.unwrap();
            assert!(region.faulted().is_empty());
            let reports = common::run(&mem, &plan, vcpus, std::time::Duration::from_secs(120));
            let verdict = match guest.check(&p, &reports) {
                Ok(v) => v,
                Err(e) => panic!("{guest} over uffd with {vcpus} vCPUs: {e}\n{reports:#?}"),
            };
            if let Some(ns) = verdict.latency_ns(common::tsc_khz()) {
                // Informational only (timing is not asserted in tests).
                eprintln!(
                    "first touch through uffd, {vcpus} vCPU(s): p50 {} ns, p99 {} ns, max {} ns, n={}",
                    ns.value_at_quantile(0.5),
                    ns.value_at_quantile(0.99),
                    ns.max(),
                    ns.len()
                );
            }
            let faulted = region.faulted();
            // Only the guest page walk reads the page tables.
            for page in paging::table_pages(&plan.layout).into_iter().take(3) {
                assert!(
                    faulted.contains(&(page as usize)),
                    "page-table page {page:#x} did not fault"
                );
            }
            for page in [layout::TEST_CODE_OFFSET, layout::TEST_PARAMS_OFFSET] {
                assert!(
                    faulted.contains(&(page as usize)),
                    "{page:#x} did not fault"
                );
            }
            let data: Vec<u64> = match guest {
                TestGuest::Atomics => (0..u64::from(p.counters))
                    .map(|i| plan.counters + i * plan.counter_stride)
                    .collect(),
                TestGuest::TicketLock => vec![plan.lock, plan.locked_counter],
                TestGuest::ParallelSum => (0..plan.array_len * 8)
                    .step_by(PAGE_SIZE as usize)
                    .map(|o| plan.array + o)
                    .collect(),
                TestGuest::FaultLatency => (0..u64::from(vcpus))
                    .flat_map(|v| (0..u64::from(p.touch_pages)).map(move |j| (v, j)))
                    .map(|(v, j)| plan.touch_base_of(v) + j * PAGE_SIZE)
                    .collect(),
            };
            for gpa in data {
                let page = (gpa & !(PAGE_SIZE - 1)) as usize;
                assert!(
                    faulted.contains(&page),
                    "{guest}: data page {gpa:#x} did not fault"
                );
            }
        }
    }
}
