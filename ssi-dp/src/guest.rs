//! One KVM guest whose vCPUs run on different nodes (`ssi-dp ... --guest test:<name>`).
//!
//! Every participating node creates a KVM VM over its view of the distributed address space
//! and runs only its own vCPUs; guest memory is the node's region, so the guest's loads and
//! stores, KVM's page walks and the VMM's own writes all fault into the data plane.
//!
//! The address space is split in two: guest RAM from GPA 0 (a whole number of 2 MiB pages),
//! and the **host area** at the top ([`engine::host_area`]) that the guest cannot see (no
//! memory slot covers it) where the nodes coordinate: barriers (guest loaded, reports
//! written, end) and one report slot per vCPU. The node homing page 0 writes the guest (page tables,
//! GDT/TSS, code, parameters, data) before anyone starts a vCPU; afterwards every node writes
//! its vCPUs' reports into their slots and checks the reports of all vCPUs, so each node
//! verifies the whole run.

use std::time::Duration;

use vmm::guests::{GuestParams, TestGuest, Verdict};
use vmm::launch::{run_test_guest, Loader};
use vmm::{GuestMemory, Outcome, VcpuReport, VmConfig};

use crate::acpi_topology::AcpiTopologyError;
use crate::workload::{finish, Progress, Report, WorkloadError};
use engine::barrier::Barrier;
use engine::config::PAGE_SIZE;
use engine::host_area::{HostArea, GUEST_BARRIERS, MAX_VCPUS, SLOT_PAGES};
use engine::node::Node;

/// Guest RAM is a whole number of these.
const RAM_ALIGN: u64 = 2 << 20;

/// Why a test guest could not run (a failed check is a [`Report`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum GuestRunError {
    /// No room for the host area above guest RAM.
    #[error(
        "the address space ({0} bytes) is too small for a guest: give the nodes more --memory"
    )]
    AddressSpaceTooSmall(usize),
    /// `--vcpus` out of range.
    #[error("--vcpus {0}: choose 1..={MAX_VCPUS}")]
    Vcpus(u32),
    /// `--local-vcpus` names a vCPU the guest does not have.
    #[error("vCPU {vcpu} is beyond --vcpus {vcpus}")]
    VcpuBeyond {
        /// The vCPU named.
        vcpu: u32,
        /// `--vcpus`.
        vcpus: u32,
    },
    /// The node's region cannot be guest memory.
    #[error("guest memory: {0}")]
    Memory(#[source] vmm::MemoryError),
    /// Page 0 has no home in the layout.
    #[error(transparent)]
    Layout(#[from] coherence::LayoutError),
    /// Writing the guest into memory failed.
    #[error("loading the guest: {0}")]
    Load(#[source] vmm::GuestError),
    /// Creating or running the VM failed.
    #[error("running the guest: {0}")]
    Run(#[source] vmm::launch::LaunchError),
    /// Handing pages back or meeting the others at the end failed.
    #[error(transparent)]
    Finish(#[from] WorkloadError),
}

/// A guest run's parameters.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Which test guest.
    pub guest: TestGuest,
    /// vCPUs of the whole VM.
    pub vcpus: u32,
    /// The vCPUs this node runs.
    pub local_vcpus: Vec<u32>,
    /// CPUs to pin this node's vCPU threads to (empty: not pinned).
    pub vcpu_cores: Vec<usize>,
    /// Rounds or lock acquisitions per vCPU (atomics, ticket lock).
    pub iterations: u64,
    /// Pages each vCPU touches once (fault-latency guest).
    pub touch_pages: u32,
    /// Give up after this long.
    pub timeout: Duration,
    /// The nodes that take part (they meet at the host-area barriers), sorted.
    pub participants: Vec<u16>,
}

/// Default vCPU placement: vCPU `i` runs on the participant of rank `i % participants`.
pub fn default_local_vcpus(vcpus: u32, participants: &[u16], me: u16) -> Vec<u32> {
    let Some(rank) = participants.iter().position(|&p| p == me) else {
        return Vec::new();
    };
    (0..vcpus)
        .filter(|v| *v as usize % participants.len() == rank)
        .collect()
}

/// What a finished run measured besides the verdict.
#[derive(Debug, Clone, Default)]
pub struct GuestExtras {
    /// First-touch latency seen by the guest (fault-latency guest), in ns.
    pub latency_ns: Option<hdrhistogram::Histogram<u64>>,
}

/// Results one vCPU's report slot holds: after a 5-word head, (key, value) pairs of words.
const REPORT_RESULTS: u64 = (SLOT_PAGES * PAGE_SIZE / 8 - 5) / 2;

/// Most pages a vCPU of the fault-latency guest may touch: one result per touch and a checksum
/// must fit its report slot, through which the other nodes read it.
pub const MAX_TOUCH_PAGES: u32 = REPORT_RESULTS as u32 - 1;

/// Report slots in the host area.
struct Reports(HostArea);

impl Reports {
    /// Writes one report into its slot: `[vcpu, outcome, status, n, dropped, (key, value)*]`
    /// as 64-bit words across the slot's pages.
    fn write(&self, r: &VcpuReport) -> u64 {
        let (code, status) = match &r.outcome {
            Outcome::Done(s) => (0, *s),
            Outcome::Halted => (1, 0),
            Outcome::Stopped | Outcome::PoweredOff | Outcome::Reset => (2, 0),
            Outcome::Failed(_) => (3, 0),
        };
        let n = (r.results.len() as u64).min(REPORT_RESULTS);
        let dropped = r.dropped_results + r.results.len() as u64 - n;
        let head = [u64::from(r.vcpu), code, status, n, dropped];
        let page0 = self.0.slot(r.vcpu);
        let mut w = 0u64;
        let mut put = |v: u64| {
            self.0
                .mem
                .write64(page0 + w / 512, ((w % 512) * 8) as usize, v);
            w += 1;
        };
        for v in head {
            put(v);
        }
        for &(k, v) in r.results.iter().take(n as usize) {
            put(k);
            put(v);
        }
        dropped
    }

    /// Reads back the report of `vcpu` (a remote vCPU that failed comes back as `Stopped`:
    /// its own node reports the failure).
    fn read(&self, vcpu: u32) -> VcpuReport {
        let page0 = self.0.slot(vcpu);
        let mut w = 0u64;
        let mut get = || {
            let v = self.0.mem.read64(page0 + w / 512, ((w % 512) * 8) as usize);
            w += 1;
            v
        };
        let id = get() as u32;
        let code = get();
        let status = get();
        let cap = (SLOT_PAGES * PAGE_SIZE / 8 - 5) / 2;
        let n = get().min(cap);
        let dropped = get();
        let results = (0..n).map(|_| (get(), get())).collect();
        VcpuReport {
            vcpu: id,
            outcome: match code {
                0 => Outcome::Done(status),
                1 => Outcome::Halted,
                _ => Outcome::Stopped,
            },
            results,
            dropped_results: dropped,
            console: Vec::new(),
            exits: 0,
            unhandled_pio: 0,
            last_rip: 0,
            elapsed: Duration::ZERO,
            counters: Default::default(),
        }
    }
}

fn summary(v: &Verdict, extras: &GuestExtras) -> String {
    match v {
        Verdict::Atomics { counters } => format!(
            "{} counters, each {} (exact)",
            counters.len(),
            counters.first().copied().unwrap_or(0)
        ),
        Verdict::TicketLock { total } => format!("protected counter {total} (exact)"),
        Verdict::ParallelSum { total } => format!("array sum {total:#x} (exact)"),
        Verdict::FaultLatency { ticks } => match &extras.latency_ns {
            Some(h) => format!(
                "{} first touches (each vCPU reads the pages of the next vCPU's slice), guest-side latency p50 {:.1}us p99 {:.1}us p99.9 {:.1}us max {:.1}us mean {:.1}us",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.value_at_quantile(0.999) as f64 / 1e3,
                h.max() as f64 / 1e3,
                h.mean() / 1e3
            ),
            None => format!("{} first touches (no TSC frequency to convert them)", ticks.len()),
        },
    }
}

/// Runs the guest on a started node and returns this node's verdict on the whole run.
pub fn run(
    node: &Node,
    spec: &GuestSpec,
    progress: &Progress,
    extras: &std::sync::Mutex<GuestExtras>,
) -> Result<Report, GuestRunError> {
    let me = node.id();
    let Some(area) = HostArea::of(node) else {
        return Err(GuestRunError::AddressSpaceTooSmall(node.region().len()));
    };
    if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
        return Err(GuestRunError::Vcpus(spec.vcpus));
    }
    if let Some(&v) = spec.local_vcpus.iter().find(|&&v| v >= spec.vcpus) {
        return Err(GuestRunError::VcpuBeyond {
            vcpu: v,
            vcpus: spec.vcpus,
        });
    }
    let ram = area.start() / RAM_ALIGN * RAM_ALIGN;
    // SAFETY: the region stays mapped while `node` lives, which outlives the VM built here
    // (it is dropped before this function returns).
    let gm = unsafe { GuestMemory::from_raw(node.base(), ram as usize, 0) }
        .map_err(GuestRunError::Memory)?;
    let host = Reports(area);
    let parties = spec.participants.len() as u64;
    let barrier = Barrier::new(area.mem, area.page(GUEST_BARRIERS), parties);
    let mut params = GuestParams::new(spec.vcpus);
    params.iterations = spec.iterations;
    params.touch_pages = spec.touch_pages;

    // The node homing page 0 writes the guest; nobody starts a vCPU before it is done.
    let loader = node.layout().home_of(0)?.get() == me;
    if loader {
        spec.guest
            .setup(&gm, &params)
            .map_err(GuestRunError::Load)?;
    }
    barrier.wait(0);

    let (stop, _watchdog) = vmm::stop_after(spec.timeout);
    let config = VmConfig {
        vcpus: spec.vcpus,
        local_vcpus: spec.local_vcpus.clone(),
    };
    let run = run_test_guest(
        &gm,
        spec.guest,
        &params,
        config,
        Loader::OtherNode,
        &spec.vcpu_cores,
        &stop,
    )
    .map_err(GuestRunError::Run)?;
    let mut local_failures = Vec::new();
    for r in &run.reports {
        if let Outcome::Failed(e) = &r.outcome {
            local_failures.push(format!("vCPU {}: {e}", r.vcpu));
        }
        if !r.console.is_empty() {
            tracing::info!(
                "vCPU {} console: {}",
                r.vcpu,
                String::from_utf8_lossy(&r.console)
            );
        }
        let dropped = host.write(r);
        if dropped > 0 {
            local_failures.push(format!(
                "vCPU {}: {dropped} results did not fit its report slot",
                r.vcpu
            ));
        }
    }
    barrier.wait(1);

    let all: Vec<VcpuReport> = (0..spec.vcpus).map(|v| host.read(v)).collect();
    let checked = spec.guest.check(&params, &all);
    let report = match (&checked, local_failures.is_empty()) {
        (Ok(v), true) => {
            let mut x = GuestExtras::default();
            if let Some(khz) = run.tsc_khz {
                x.latency_ns = v.latency_ns(khz);
            }
            let s = summary(v, &x);
            if let Ok(mut e) = extras.lock() {
                *e = x;
            }
            Report {
                ok: true,
                summary: format!(
                    "{} vCPUs (this node ran {:?}) over {} MiB of guest RAM: {s}",
                    spec.vcpus,
                    spec.local_vcpus,
                    ram >> 20
                ),
                work_time: run
                    .reports
                    .iter()
                    .map(|r| r.elapsed)
                    .max()
                    .unwrap_or_default(),
            }
        }
        (Err(e), _) => Report {
            ok: false,
            summary: format!("check failed: {e}"),
            work_time: Duration::ZERO,
        },
        (Ok(_), false) => Report {
            ok: false,
            summary: format!("local vCPUs failed: {}", local_failures.join("; ")),
            work_time: Duration::ZERO,
        },
    };
    drop(run);
    Ok(finish(node, &barrier, progress, report)?)
}

/// The ACPI tables for a guest on this cluster whose vCPUs run per `vcpus_of`.
pub fn acpi_tables(
    node: &Node,
    ram_end: u64,
    vcpus_of: impl Fn(u16) -> Vec<u32>,
) -> Result<acpi::Topology, AcpiTopologyError> {
    let figures = node.figures().ok_or(AcpiTopologyError::NoMeasurements)?;
    crate::acpi_topology::topology(&node.cluster(), figures, ram_end, vcpus_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_are_dealt_round_robin_over_participants() {
        assert_eq!(default_local_vcpus(4, &[0, 1], 0), vec![0, 2]);
        assert_eq!(default_local_vcpus(4, &[0, 1], 1), vec![1, 3]);
        assert_eq!(default_local_vcpus(2, &[3], 3), vec![0, 1]);
        assert!(default_local_vcpus(2, &[0, 1], 5).is_empty());
    }

    #[test]
    fn the_touch_limit_in_the_help_is_what_a_report_slot_holds() {
        // --guest-touch-pages' help names this number.
        assert_eq!(MAX_TOUCH_PAGES, 3836);
        assert!((u64::from(MAX_TOUCH_PAGES) + 1) * 16 + 40 <= SLOT_PAGES * PAGE_SIZE);
        assert!((u64::from(MAX_TOUCH_PAGES) + 2) * 16 + 40 > SLOT_PAGES * PAGE_SIZE);
    }
}
