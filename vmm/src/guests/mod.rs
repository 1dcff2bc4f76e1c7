//! The four test guests of issue #7: what each computes, where its data lives, loading it into
//! guest memory, and checking its results.
//!
//! | guest | what every vCPU does | exact result checked |
//! |---|---|---|
//! | `atomics` | `lock inc` on counters spread over the data span | each counter = vCPUs × iterations |
//! | `ticket-lock` | ticket spinlock around a plain `load; add; store` | counter = vCPUs × iterations |
//! | `parallel-sum` | sums its slice of a multi-MiB array, stores its partial | partials and total |
//! | `fault-latency` | `rdtsc` around the first load of each page of a slice | sample count, checksum; TSC histogram |
//!
//! Loading ([`TestGuest::setup`]) writes page tables, GDT/TSS, code, parameters and data into
//! guest memory. On a cluster exactly one node does it — the node that homes low memory —
//! before any vCPU starts; the other nodes call [`TestGuest::plan`] (pure) for the same
//! [`Boot`] and must not touch guest memory before the loader signals readiness.

mod check;
mod params;
mod payload;

use std::fmt;

pub use check::{CheckError, Verdict};

use crate::cpu::{self, Boot, CpuMode};
use crate::layout::{self, LayoutError, TestLayout, PAGE_SIZE};
use crate::memory::{GuestMemory, MemoryError};
use crate::paging;
use payload::Entry;

/// Errors loading a test guest. Messages say what to change.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The RAM cannot hold the test layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A parameter is out of range.
    #[error("test guest parameter {name} = {value} is invalid: {hint}")]
    Param {
        /// Field.
        name: &'static str,
        /// Value given.
        value: u64,
        /// What is allowed.
        hint: &'static str,
    },
    /// The data does not fit the data span.
    #[error(
        "the {guest} guest needs {need:#x} bytes of data span but RAM leaves {have:#x}: give the \
         VM more memory or lower the parameters"
    )]
    DataSpan {
        /// Guest name.
        guest: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// Writing guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// A test guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestGuest {
    /// Lock-prefixed increments on counters spread over the data span.
    Atomics,
    /// A ticket spinlock protecting a non-atomic counter.
    TicketLock,
    /// A parallel sum over a multi-MiB array.
    ParallelSum,
    /// Guest-side first-touch latency.
    FaultLatency,
}

/// Parameters of a run. The same values must be given to `plan`/`setup` on every node and to
/// `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestParams {
    /// vCPUs of the whole VM.
    pub vcpus: u32,
    /// Rounds (atomics) or lock acquisitions (ticket lock) per vCPU.
    pub iterations: u64,
    /// Counters (atomics), spread evenly over the data span.
    pub counters: u32,
    /// Bytes of the parallel-sum array (multiple of 8).
    pub sum_bytes: u64,
    /// Pages each vCPU touches (fault latency).
    pub touch_pages: u32,
    /// Seed of the array contents.
    pub seed: u64,
}

impl GuestParams {
    /// Defaults sized for a 64 MiB guest on one host.
    pub fn new(vcpus: u32) -> Self {
        GuestParams {
            vcpus,
            iterations: 100_000,
            counters: 8,
            sum_bytes: 8 << 20,
            touch_pages: 256,
            seed: 0x5eed_0f55_d0d0,
        }
    }
}

/// Most counters of the atomics guest.
pub const MAX_COUNTERS: u32 = 512;
/// Most iterations (bounds a run).
pub const MAX_ITERATIONS: u64 = 1 << 32;
/// Offset of the ticket lock in the sync page (the barriers use the first lines).
const LOCK_IN_SYNC: u64 = 0x800;

/// Every address a test guest uses: a pure function of the layout and parameters, the same
/// on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The memory layout.
    pub layout: TestLayout,
    /// How the vCPUs start.
    pub boot: Boot,
    /// Doorbell GPA.
    pub doorbell_gpa: u64,
    /// Counter 0 (atomics).
    pub counters: u64,
    /// Bytes between counters.
    pub counter_stride: u64,
    /// Ticket lock.
    pub lock: u64,
    /// Counter behind the lock.
    pub locked_counter: u64,
    /// Array (parallel sum).
    pub array: u64,
    /// Array elements.
    pub array_len: u64,
    /// Partials.
    pub partials: u64,
    /// First touch slice (vCPU i touches slice (i + 1) mod vcpus).
    pub touch_base: u64,
    /// Bytes between touch slices.
    pub touch_stride: u64,
    /// vCPUs of the VM.
    pub vcpus: u32,
}

impl fmt::Display for TestGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TestGuest {
    /// Every test guest.
    pub const ALL: [TestGuest; 4] = [
        TestGuest::Atomics,
        TestGuest::TicketLock,
        TestGuest::ParallelSum,
        TestGuest::FaultLatency,
    ];

    /// The name used by `--guest test:<name>`.
    pub fn name(self) -> &'static str {
        match self {
            TestGuest::Atomics => "atomics",
            TestGuest::TicketLock => "ticket-lock",
            TestGuest::ParallelSum => "parallel-sum",
            TestGuest::FaultLatency => "fault-latency",
        }
    }

    /// Parses a name (as printed by [`TestGuest::name`]).
    pub fn from_name(name: &str) -> Option<TestGuest> {
        TestGuest::ALL.into_iter().find(|g| g.name() == name)
    }

    fn entry(self) -> Entry {
        match self {
            TestGuest::Atomics => Entry::Atomics,
            TestGuest::TicketLock => Entry::Ticket,
            TestGuest::ParallelSum => Entry::Sum,
            TestGuest::FaultLatency => Entry::Latency,
        }
    }

    /// Computes every address for guest RAM `[ram_base, ram_base + ram_size)` without
    /// touching memory: what a node that does not load the guest needs to start its vCPUs.
    pub fn plan(
        self,
        ram_base: u64,
        ram_size: u64,
        params: &GuestParams,
    ) -> Result<Plan, GuestError> {
        let layout = TestLayout::new(ram_base, ram_size, params.vcpus)?;
        check_param(
            "iterations",
            params.iterations,
            1,
            MAX_ITERATIONS,
            "1..=2^32",
        )?;
        check_param(
            "counters",
            u64::from(params.counters),
            1,
            u64::from(MAX_COUNTERS),
            "1..=512",
        )?;
        check_param(
            "touch_pages",
            u64::from(params.touch_pages),
            1,
            1 << 16,
            "1..=65536",
        )?;
        if params.sum_bytes == 0 || params.sum_bytes % 8 != 0 {
            return Err(GuestError::Param {
                name: "sum_bytes",
                value: params.sum_bytes,
                hint: "a non-zero multiple of 8",
            });
        }
        let (data, data_len) = layout.data_span();
        let vcpus = u64::from(params.vcpus);
        let span_err = |guest: TestGuest, need: u64| GuestError::DataSpan {
            guest: guest.name(),
            need,
            have: data_len,
        };
        // Atomics: counters evenly over the whole span, each on its own page.
        let counter_stride = (data_len / u64::from(params.counters)) / PAGE_SIZE * PAGE_SIZE;
        if counter_stride == 0 {
            return Err(span_err(
                TestGuest::Atomics,
                u64::from(params.counters) * PAGE_SIZE,
            ));
        }
        // Parallel sum: partial pages at the start of the span, the array centred on the
        // middle of the span (so it straddles the halves homed on two nodes).
        let partials = data;
        let partials_end = partials + vcpus * PAGE_SIZE;
        let array_bytes = params.sum_bytes.next_multiple_of(PAGE_SIZE);
        let mid = data + data_len / 2;
        let array = mid.saturating_sub(array_bytes / 2) / PAGE_SIZE * PAGE_SIZE;
        if array < partials_end || array + array_bytes > layout.ram_end() {
            return Err(span_err(
                TestGuest::ParallelSum,
                vcpus * PAGE_SIZE + 2 * array_bytes,
            ));
        }
        // Fault latency: the span split into one slice per vCPU; vCPU i touches the slice
        // after its own ((i + 1) mod n): with nodes homing equal shares in vCPU order, every
        // touch is remote.
        let touch_stride = data_len / vcpus / PAGE_SIZE * PAGE_SIZE;
        let touch_bytes = u64::from(params.touch_pages) * PAGE_SIZE;
        if touch_stride < touch_bytes {
            return Err(span_err(TestGuest::FaultLatency, vcpus * touch_bytes));
        }
        let doorbell_gpa = layout.doorbell_gpa();
        let boot = Boot {
            mode: CpuMode::LongUser,
            entry: layout.gpa(layout::TEST_CODE_OFFSET) + payload::entry_offset(self.entry()),
            cr3: layout.pml4_gpa(),
            gdt_gpa: layout.gpa(layout::TEST_GDT_OFFSET),
            tss_gpa: layout.gpa(layout::TEST_TSS_OFFSET),
            stack_top: layout.stack_top(0),
            stack_stride: layout::TEST_STACK_SIZE,
            rsi: layout.gpa(layout::TEST_PARAMS_OFFSET),
            rbx: 0,
        };
        Ok(Plan {
            layout,
            boot,
            doorbell_gpa,
            counters: data,
            counter_stride,
            lock: layout.gpa(layout::TEST_SYNC_OFFSET) + LOCK_IN_SYNC,
            locked_counter: mid / PAGE_SIZE * PAGE_SIZE + PAGE_SIZE,
            array,
            array_len: params.sum_bytes / 8,
            partials,
            touch_base: data,
            touch_stride,
            vcpus: params.vcpus,
        })
    }

    /// Loads the guest into `mem`: page tables, GDT/TSS, code, parameter block, zeroed sync
    /// page and counters, and this guest's data. Run on exactly one node, before any vCPU
    /// starts. Returns the plan (the same as [`TestGuest::plan`]).
    pub fn setup(self, mem: &GuestMemory, params: &GuestParams) -> Result<Plan, GuestError> {
        let plan = self.plan(mem.gpa_base(), mem.size() as u64, params)?;
        let l = &plan.layout;
        paging::write_identity_map(mem, l)?;
        cpu::write_gdt(mem, plan.boot.gdt_gpa, plan.boot.tss_gpa)?;
        mem.write(l.gpa(layout::TEST_CODE_OFFSET), payload::blob())?;
        let zero = [0u8; PAGE_SIZE as usize];
        mem.write(l.gpa(layout::TEST_SYNC_OFFSET), &zero)?;
        let fields = [
            (params::MAGIC_OFF, params::MAGIC),
            (params::VCPUS, u64::from(params.vcpus)),
            (params::DOORBELL, plan.doorbell_gpa),
            (params::ITERATIONS, params.iterations),
            (params::SYNC, l.gpa(layout::TEST_SYNC_OFFSET)),
            (params::COUNTERS, plan.counters),
            (params::COUNTER_COUNT, u64::from(params.counters)),
            (params::COUNTER_STRIDE, plan.counter_stride),
            (params::LOCK, plan.lock),
            (params::LOCKED_COUNTER, plan.locked_counter),
            (params::ARRAY, plan.array),
            (params::ARRAY_LEN, plan.array_len),
            (params::PARTIALS, plan.partials),
            (params::TOUCH_BASE, plan.touch_base),
            (params::TOUCH_STRIDE, plan.touch_stride),
            (params::TOUCH_PAGES, u64::from(params.touch_pages)),
        ];
        let mut block = [0u8; params::LEN as usize];
        for (off, value) in fields {
            let off = off as usize;
            block[off..off + 8].copy_from_slice(&value.to_le_bytes());
        }
        mem.write(l.gpa(layout::TEST_PARAMS_OFFSET), &block)?;
        match self {
            TestGuest::Atomics => {
                for i in 0..u64::from(params.counters) {
                    mem.write_u64(plan.counters + i * plan.counter_stride, 0)?;
                }
            }
            TestGuest::TicketLock => mem.write_u64(plan.locked_counter, 0)?,
            TestGuest::ParallelSum => {
                for v in 0..u64::from(params.vcpus) {
                    mem.write_u64(plan.partials + v * PAGE_SIZE, 0)?;
                }
                write_array(mem, plan.array, plan.array_len, params.seed)?;
            }
            TestGuest::FaultLatency => {
                for v in 0..u64::from(params.vcpus) {
                    for j in 0..u64::from(params.touch_pages) {
                        let gpa = plan.touch_base_of(v) + j * PAGE_SIZE;
                        mem.write_u64(gpa, touch_marker(v, j))?;
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Checks the reports of all vCPUs (from every node) against the exact expected results.
    pub fn check(
        self,
        params: &GuestParams,
        reports: &[crate::vcpu::VcpuReport],
    ) -> Result<Verdict, CheckError> {
        check::check(self, params, reports)
    }
}

impl Plan {
    /// First page vCPU `v` touches in the fault-latency guest: the slice of vCPU
    /// `(v + 1) mod vcpus`.
    pub fn touch_base_of(&self, v: u64) -> u64 {
        self.touch_base + ((v + 1) % u64::from(self.vcpus)) * self.touch_stride
    }
}

fn check_param(
    name: &'static str,
    value: u64,
    min: u64,
    max: u64,
    hint: &'static str,
) -> Result<(), GuestError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(GuestError::Param { name, value, hint })
    }
}

/// The first word of page `j` of vCPU `v`'s touch slice.
pub fn touch_marker(v: u64, j: u64) -> u64 {
    (v << 32) | (j + 1)
}

/// Element `i` of the parallel-sum array for `seed` (splitmix64).
pub fn array_element(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn write_array(mem: &GuestMemory, gpa: u64, len: u64, seed: u64) -> Result<(), MemoryError> {
    const CHUNK: u64 = 8192;
    let mut buf = vec![0u8; (CHUNK * 8) as usize];
    let mut i = 0;
    while i < len {
        let n = CHUNK.min(len - i);
        for k in 0..n {
            let o = (k * 8) as usize;
            buf[o..o + 8].copy_from_slice(&array_element(seed, i + k).to_le_bytes());
        }
        mem.write(gpa + i * 8, &buf[..(n * 8) as usize])?;
        i += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::keys;
    use crate::vcpu::{Outcome, VcpuReport};
    use std::time::Duration;

    const RAM: u64 = 64 << 20;

    fn report(vcpu: u32, results: Vec<(u64, u64)>) -> VcpuReport {
        VcpuReport {
            vcpu,
            outcome: Outcome::Done(0),
            results,
            dropped_results: 0,
            console: Vec::new(),
            exits: 0,
            unhandled_pio: 0,
            last_rip: 0,
            elapsed: Duration::ZERO,
            counters: Default::default(),
        }
    }

    #[test]
    fn plans_keep_every_address_inside_the_data_span() {
        for vcpus in [1, 2, 3, 8] {
            let p = GuestParams::new(vcpus);
            let plan = TestGuest::Atomics.plan(0, RAM, &p).unwrap();
            let (data, len) = plan.layout.data_span();
            let inside = |gpa: u64, bytes: u64| gpa >= data && gpa + bytes <= data + len;
            for i in 0..u64::from(p.counters) {
                assert!(inside(plan.counters + i * plan.counter_stride, 8));
            }
            assert!(plan.counter_stride >= PAGE_SIZE && plan.counter_stride % PAGE_SIZE == 0);
            assert!(inside(plan.locked_counter, 8));
            assert!(inside(plan.array, p.sum_bytes));
            assert!(plan.array >= plan.partials + u64::from(vcpus) * PAGE_SIZE);
            let mut slices: Vec<u64> = (0..u64::from(vcpus))
                .map(|v| plan.touch_base_of(v))
                .collect();
            for s in &slices {
                assert!(inside(*s, u64::from(p.touch_pages) * PAGE_SIZE));
            }
            slices.sort_unstable();
            slices.dedup();
            assert_eq!(slices.len(), vcpus as usize, "one slice per vCPU");
            if vcpus > 1 {
                assert_ne!(
                    plan.touch_base_of(0),
                    data,
                    "vCPU 0 touches another vCPU's slice"
                );
            }
            // Same plan for every guest except the entry.
            let sum = TestGuest::ParallelSum.plan(0, RAM, &p).unwrap();
            assert_eq!(sum.array, plan.array);
            assert_ne!(sum.boot.entry, plan.boot.entry);
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let base = GuestParams::new(2);
        let cases = [
            GuestParams {
                iterations: 0,
                ..base
            },
            GuestParams {
                counters: 0,
                ..base
            },
            GuestParams {
                counters: MAX_COUNTERS + 1,
                ..base
            },
            GuestParams {
                sum_bytes: 12,
                ..base
            },
            GuestParams {
                touch_pages: 0,
                ..base
            },
        ];
        for p in cases {
            assert!(
                matches!(
                    TestGuest::Atomics.plan(0, RAM, &p),
                    Err(GuestError::Param { .. })
                ),
                "{p:?}"
            );
        }
        let huge = GuestParams {
            sum_bytes: RAM,
            ..base
        };
        assert!(matches!(
            TestGuest::ParallelSum.plan(0, RAM, &huge),
            Err(GuestError::DataSpan { .. })
        ));
        let many = GuestParams {
            touch_pages: 60_000,
            ..base
        };
        assert!(matches!(
            TestGuest::FaultLatency.plan(0, RAM, &many),
            Err(GuestError::DataSpan { .. })
        ));
        assert!(matches!(
            TestGuest::Atomics.plan(0, 2 << 20, &base),
            Err(GuestError::Layout(_))
        ));
    }

    #[test]
    fn check_rejects_wrong_missing_or_unfinished_results() {
        let p = GuestParams {
            vcpus: 2,
            iterations: 10,
            ..GuestParams::new(2)
        };
        let good = || {
            vec![
                report(
                    0,
                    vec![
                        (keys::key(keys::ACQUIRED, 0), 10),
                        (keys::key(keys::LOCKED_TOTAL, 0), 20),
                    ],
                ),
                report(1, vec![(keys::key(keys::ACQUIRED, 1), 10)]),
            ]
        };
        assert!(matches!(
            TestGuest::TicketLock.check(&p, &good()),
            Ok(Verdict::TicketLock { total: 20 })
        ));
        let mut lost_update = good();
        lost_update[0].results[1].1 = 19;
        assert!(matches!(
            TestGuest::TicketLock.check(&p, &lost_update),
            Err(CheckError::Mismatch { .. })
        ));
        let mut missing = good();
        missing[1].results.clear();
        assert!(matches!(
            TestGuest::TicketLock.check(&p, &missing),
            Err(CheckError::Missing { vcpu: 1, .. })
        ));
        let mut stopped = good();
        stopped[1].outcome = Outcome::Stopped;
        assert!(matches!(
            TestGuest::TicketLock.check(&p, &stopped),
            Err(CheckError::Unfinished { vcpu: 1, .. })
        ));
        let mut twice = good();
        twice[1].vcpu = 0;
        assert!(matches!(
            TestGuest::TicketLock.check(&p, &twice),
            Err(CheckError::Reports { .. })
        ));
        assert!(matches!(
            TestGuest::TicketLock.check(&p, &good()[..1]),
            Err(CheckError::Reports { .. })
        ));
        // Atomics: one counter short.
        let p1 = GuestParams {
            vcpus: 1,
            iterations: 5,
            counters: 2,
            ..GuestParams::new(1)
        };
        let r = vec![report(
            0,
            vec![
                (keys::key(keys::COUNTER, 0), 5),
                (keys::key(keys::COUNTER, 1), 4),
            ],
        )];
        assert!(matches!(
            TestGuest::Atomics.check(&p1, &r),
            Err(CheckError::Mismatch { .. })
        ));
    }

    #[test]
    fn array_elements_are_deterministic_and_distinct() {
        assert_eq!(array_element(1, 5), array_element(1, 5));
        assert_ne!(array_element(1, 5), array_element(1, 6));
        assert_ne!(array_element(1, 5), array_element(2, 5));
        assert_eq!(
            TestGuest::from_name("parallel-sum"),
            Some(TestGuest::ParallelSum)
        );
        assert_eq!(TestGuest::from_name("nope"), None);
    }
}
