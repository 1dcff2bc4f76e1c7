//! One unmodified Linux guest across the nodes of a cluster (`ssi-dp ... --kernel`).
//!
//! Every participating node creates a KVM VM over its view of the distributed address space
//! and runs the vCPUs placed on it (`--vcpus`, `--local-vcpus`; by default vCPU i on the
//! participant of rank i mod participants). The node that homes page 0 (the *loader*) writes
//! the kernel, initrd, boot structures and ACPI tables (which describe the cluster: one
//! proximity domain per node, with its memory and vCPUs, and the measured distances), runs
//! vCPU 0 (the bootstrap processor) and has the guest's devices. The interrupt controllers are
//! emulated in userspace (`vmm::platform`), so an IPI, a device access or the end of the run
//! that concerns another node travels on that node's guest platform channel
//! (`guest_link`). The nodes agree on the setup through the host area: each writes its vCPUs
//! and its `--vcpus`; the loader writes its VM's guest TSC offset and kvm-clock, which the
//! others copy, so the guest's clocks agree on every node.
//!
//! The run ends when the guest powers off (ACPI S5): every node then reports the guest's
//! verdict (what a program in the guest wrote to the status port, 0 when nothing was) and
//! exits 0 for a clean power-off with a zero verdict. A reset, a failure on any node, a lost
//! link or `--guest-timeout` end it with a failure on every node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm::launch::{linux_vm, load_linux, LinuxArgs};
use vmm::platform::msg::Lifecycle;
use vmm::platform::vcpu_loop::GuestTsc;
use vmm::platform::{End, Placement, Platform, PlatformError, Uplink};
use vmm::{ClockData, Console, GuestMemory, Outcome, VcpuReport, VmConfig};

use crate::acpi_topology::AcpiTopologyError;
use crate::guest::{acpi_tables, default_local_vcpus};
use crate::guest_link::{self, PlatformLink, PlatformLinkError};
use crate::workload::{finish, Progress, Report, WorkloadError};
use engine::barrier::Barrier;
use engine::host_area::{linux_words, HostArea, GUEST_BARRIERS};
use engine::node::Node;
use engine::stats::ShardStats;

/// Guest RAM is a whole number of these.
const RAM_ALIGN: u64 = 2 << 20;
/// Highest guest RAM end for Linux: below the 3 GiB MMIO hole (I/O APIC, local APICs).
const LINUX_RAM_LIMIT: u64 = 3 << 30;
/// How long nodes wait for each other's platform channels.
const LINK_TIMEOUT: Duration = Duration::from_secs(60);
/// Barrier slots of the guest-barrier page this run uses (2 is `finish`'s).
const PLACED: u64 = 0;
const LOADED: u64 = 1;
const LINKED: u64 = 3;

/// What the kernel prints when it starts init (KERN_INFO).
pub const DEFAULT_INIT_MARKER: &str = "Run /init as init process";

/// Why a Linux guest could not run (how the guest itself ended is a [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum LinuxRunError {
    /// No room for the host area above guest RAM.
    #[error("the address space is too small for a guest: give the nodes more --memory")]
    AddressSpaceTooSmall,
    /// `--vcpus` out of range.
    #[error("--vcpus {vcpus}: a Linux guest has 1 to {max}")]
    Vcpus {
        /// `--vcpus`.
        vcpus: u32,
        /// The most this version supports.
        max: u32,
    },
    /// `--local-vcpus` names a vCPU the guest does not have.
    #[error("vCPU {vcpu} is beyond --vcpus {vcpus}")]
    VcpuBeyond {
        /// The vCPU named.
        vcpu: u32,
        /// `--vcpus`.
        vcpus: u32,
    },
    /// Two nodes claim the same vCPU.
    #[error(
        "vCPU {vcpu} is placed on node {other} and on this node: give each vCPU to one node \
         (--local-vcpus)"
    )]
    PlacedTwice {
        /// The vCPU.
        vcpu: u32,
        /// The other node.
        other: u64,
    },
    /// The participants disagree on `--vcpus`.
    #[error(
        "node {node} was given --vcpus {theirs} and this node --vcpus {ours}: give every node \
         the same"
    )]
    VcpusDiffer {
        /// The other node.
        node: u16,
        /// Its `--vcpus`.
        theirs: u64,
        /// This node's.
        ours: u32,
    },
    /// No node runs a vCPU.
    #[error("vCPU {0} runs on no node: place it with --local-vcpus")]
    Unplaced(u32),
    /// The boot processor is not on the node that loads the kernel.
    #[error(
        "vCPU 0 (the boot processor) runs on node {node}, but node {loader} loads the kernel \
         (it homes guest page 0): place vCPU 0 on node {loader}"
    )]
    BootProcessorElsewhere {
        /// Where vCPU 0 was placed.
        node: u16,
        /// The loader.
        loader: u16,
    },
    /// Page 0 has no home in the layout.
    #[error(transparent)]
    Layout(#[from] coherence::LayoutError),
    /// The node's region cannot be guest memory.
    #[error("guest memory: {0}")]
    Memory(#[source] vmm::MemoryError),
    /// The cluster's ACPI description could not be built.
    #[error(transparent)]
    Acpi(#[from] AcpiTopologyError),
    /// The ACPI tables do not fit where the guest looks for them.
    #[error("placing the ACPI tables: {0}")]
    PlaceTables(#[source] acpi::PlaceError),
    /// Reading or writing the kernel and initrd failed.
    #[error("loading Linux: {0}")]
    LoadLinux(#[source] vmm::launch::LaunchError),
    /// KVM refused the VM.
    #[error("creating the VM: {0}")]
    CreateVm(#[source] vmm::launch::LaunchError),
    /// Reading or setting the guest's TSC offset or kvm-clock failed.
    #[error(transparent)]
    Clock(#[from] vmm::VmError),
    /// The loading node published no clock to copy.
    #[error("the loading node published no clock")]
    NoClock,
    /// The guest platform channels could not be set up.
    #[error(transparent)]
    Link(#[from] PlatformLinkError),
    /// The platform refused the placement.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// Handing pages back or meeting the others at the end failed.
    #[error(transparent)]
    Finish(#[from] WorkloadError),
}

/// A Linux boot on the cluster (`--kernel`).
#[derive(Debug, Clone)]
pub struct LinuxSpec {
    /// Kernel, initrd, command line and entry protocol.
    pub args: LinuxArgs,
    /// vCPUs of the guest.
    pub vcpus: u32,
    /// The vCPUs this node runs (`None`: the default placement).
    pub local_vcpus: Option<Vec<u32>>,
    /// CPUs to pin this node's vCPU threads to (empty: not pinned).
    pub vcpu_cores: Vec<usize>,
    /// Give up after this long.
    pub timeout: Duration,
    /// End the run when a vCPU makes no exit inside `KVM_RUN` for this long (`--vcpu-stall-secs`).
    pub stall: Duration,
    /// The nodes that take part, sorted.
    pub participants: Vec<u16>,
    /// Console text that marks the end of boot (`--init-marker`).
    pub init_marker: String,
}

/// Agrees with the other participants on which node runs each vCPU.
fn agree_on_placement(
    node: &Node,
    area: &HostArea,
    spec: &LinuxSpec,
    barrier: &Barrier,
    loader: u16,
) -> Result<Placement, LinuxRunError> {
    let me = node.id();
    let page = area.page(GUEST_BARRIERS);
    let local = spec
        .local_vcpus
        .clone()
        .unwrap_or_else(|| default_local_vcpus(spec.vcpus, &spec.participants, me));
    if spec.vcpus == 0 || spec.vcpus > linux_words::MAX_VCPUS {
        return Err(LinuxRunError::Vcpus {
            vcpus: spec.vcpus,
            max: linux_words::MAX_VCPUS,
        });
    }
    if let Some(&v) = local.iter().find(|&&v| v >= spec.vcpus) {
        return Err(LinuxRunError::VcpuBeyond {
            vcpu: v,
            vcpus: spec.vcpus,
        });
    }
    area.mem.write64(
        page,
        linux_words::VCPUS + 8 * usize::from(me),
        u64::from(spec.vcpus) + 1,
    );
    for &v in &local {
        let word = area
            .mem
            .atomic64(page, linux_words::OWNERS + 8 * v as usize);
        if let Err(other) =
            word.compare_exchange(0, u64::from(me) + 1, Ordering::SeqCst, Ordering::SeqCst)
        {
            return Err(LinuxRunError::PlacedTwice {
                vcpu: v,
                other: other - 1,
            });
        }
    }
    barrier.wait(PLACED);
    for &p in &spec.participants {
        let theirs = area
            .mem
            .read64(page, linux_words::VCPUS + 8 * usize::from(p));
        if theirs != u64::from(spec.vcpus) + 1 {
            return Err(LinuxRunError::VcpusDiffer {
                node: p,
                theirs: theirs.saturating_sub(1),
                ours: spec.vcpus,
            });
        }
    }
    let mut owner = Vec::with_capacity(spec.vcpus as usize);
    for v in 0..spec.vcpus {
        match area.mem.read64(page, linux_words::OWNERS + 8 * v as usize) {
            0 => return Err(LinuxRunError::Unplaced(v)),
            n => owner.push((n - 1) as u16),
        }
    }
    if owner[0] != loader {
        return Err(LinuxRunError::BootProcessorElsewhere {
            node: owner[0],
            loader,
        });
    }
    Ok(Placement {
        me,
        owner,
        device_node: loader,
    })
}

/// The loader's VM clock, as the other nodes copy it.
fn publish_clock(area: &HostArea, offset: u64, clock: &ClockData) {
    let page = area.page(GUEST_BARRIERS);
    let w = |i: usize, v: u64| area.mem.write64(page, linux_words::CLOCK + 8 * i, v);
    w(1, offset);
    w(2, clock.clock);
    w(3, u64::from(clock.flags));
    w(4, clock.realtime);
    w(0, 1);
}

fn read_clock(area: &HostArea) -> Option<(u64, ClockData)> {
    let page = area.page(GUEST_BARRIERS);
    let r = |i: usize| area.mem.read64(page, linux_words::CLOCK + 8 * i);
    (r(0) == 1).then(|| {
        (
            r(1),
            ClockData {
                clock: r(2),
                flags: r(3) as u32,
                realtime: r(4),
                ..Default::default()
            },
        )
    })
}

/// Boots Linux across the participants and returns this node's verdict on the run.
pub fn run_linux(
    node: &Node,
    spec: &LinuxSpec,
    progress: &Progress,
) -> Result<Report, LinuxRunError> {
    let me = node.id();
    let Some(area) = HostArea::of(node) else {
        return Err(LinuxRunError::AddressSpaceTooSmall);
    };
    let ram = (area.start() / RAM_ALIGN * RAM_ALIGN).min(LINUX_RAM_LIMIT);
    let barrier = Barrier::new(
        area.mem,
        area.page(GUEST_BARRIERS),
        spec.participants.len() as u64,
    );
    let loader = node.layout().home_of(0)?.get();
    let placement = agree_on_placement(node, &area, spec, &barrier, loader)?;
    let local = placement.local_vcpus();
    // SAFETY: the region stays mapped while `node` lives; the VM is dropped before return.
    let gm = unsafe { GuestMemory::from_raw(node.base(), ram as usize, 0) }
        .map_err(LinuxRunError::Memory)?;
    let config = VmConfig {
        vcpus: spec.vcpus,
        local_vcpus: local.clone(),
    };
    // The loader writes the guest and reads its VM's clock; the others wait, then copy it.
    let expected = guest_link::expect(node);
    let mut vm = if me == loader {
        let owner = placement.owner.clone();
        let vcpus_of = |id: u16| -> Vec<u32> {
            (0..owner.len() as u32)
                .filter(|&v| owner[v as usize] == id)
                .collect()
        };
        let topology = acpi_tables(node, ram, vcpus_of)?;
        let image = acpi::tables(&topology)
            .image(acpi::Placement::BIOS_AREA)
            .map_err(LinuxRunError::PlaceTables)?;
        let boot = load_linux(&gm, &spec.args, Some(&image)).map_err(LinuxRunError::LoadLinux)?;
        let vm = linux_vm(&gm, config, Some(&boot.boot)).map_err(LinuxRunError::CreateVm)?;
        let offset = vm.tsc_offset()?;
        vm.set_tsc_offset(offset)?;
        let clock = vm.clock()?;
        publish_clock(&area, offset, &clock);
        barrier.wait(LOADED);
        vm
    } else {
        barrier.wait(LOADED);
        let (offset, clock) = read_clock(&area).ok_or(LinuxRunError::NoClock)?;
        let vm = if local.is_empty() {
            None
        } else {
            let vm = linux_vm(&gm, config, None).map_err(LinuxRunError::CreateVm)?;
            vm.set_tsc_offset(offset)?;
            vm.set_clock(&clock)?;
            Some(vm)
        };
        match vm {
            Some(vm) => vm,
            None => return serve_only(node, &barrier, progress, &placement, expected),
        }
    };
    let tsc = GuestTsc {
        offset: vm.tsc_offset()?,
        khz: vm.tsc_khz().unwrap_or(0),
    };
    let peers = placement.peers();
    let link = Arc::new(PlatformLink::connect(node, &peers, expected, LINK_TIMEOUT)?);
    let console = Console::new(me == placement.device_node);
    let uplink: Option<Arc<dyn Uplink>> =
        (!peers.is_empty()).then(|| link.clone() as Arc<dyn Uplink>);
    let platform = Arc::new(Platform::new(placement.clone(), console.clone(), uplink)?);
    let readers = link.start_readers(&platform)?;
    barrier.wait(LINKED);

    let (stop, _watchdog) = vmm::stop_after(spec.timeout);
    let init_seen = watch_for_init(
        node,
        area,
        &console,
        (me == placement.device_node).then(|| spec.init_marker.clone()),
    );
    let start = Instant::now();
    let at_start = Counts::of(node.stats());
    let returned = AtomicBool::new(false);
    let reports = std::thread::scope(|scope| {
        let watch = std::thread::Builder::new()
            .name("ssi-dp-vcpu-stop".to_string())
            .spawn_scoped(scope, || {
                watch_vcpus(me, spec.stall, &platform, &stop, &returned, node)
            });
        if let Err(e) = &watch {
            tracing::warn!("node {me}: cannot start the thread that watches vCPUs stop: {e}");
        }
        let reports = vm.run_linux_vcpus(&platform, tsc, &spec.vcpu_cores, &stop);
        returned.store(true, Ordering::Release);
        reports
    });
    let end = platform.ended();
    if end.is_none() {
        // Stopped here (the timeout): the others must learn it before the links close.
        platform.end(Lifecycle::Failed, 1);
    }
    init_seen.0.store(true, Ordering::Release);
    let reached_init = init_seen.1.join().ok().flatten();
    let at_end = Counts::of(node.stats());
    link.close(end);
    for r in readers {
        if r.join().is_err() {
            tracing::error!("node {me}: a guest platform channel reader panicked");
        }
    }
    drop(vm);
    let report = verdict(
        spec,
        &placement,
        &platform,
        &reports,
        end,
        start.elapsed(),
        Phases {
            at_start,
            init: reached_init,
            at_end,
        },
        ram,
    );
    Ok(finish(node, &barrier, progress, report)?)
}

/// A participant with no vCPU: it only serves memory, and meets the others at the barriers.
fn serve_only(
    node: &Node,
    barrier: &Barrier,
    progress: &Progress,
    placement: &Placement,
    expected: guest_link::Expected,
) -> Result<Report, LinuxRunError> {
    drop(expected);
    barrier.wait(LINKED);
    let mut runners = placement.owner.clone();
    runners.sort_unstable();
    runners.dedup();
    let report = Report {
        ok: true,
        summary: format!("served memory while nodes {runners:?} ran the guest's vCPUs"),
        work_time: Duration::ZERO,
    };
    Ok(finish(node, barrier, progress, report)?)
}

/// How long vCPU threads have to leave their loops once the run ended or timed out.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Watches the local vCPU threads until `returned`.
///
/// * A vCPU inside `KVM_RUN`, asleep in the kernel, with no exit for `stall` ends the run
///   with a failure, naming it, where its thread waits and what the data plane last did. A
///   running Linux exits hundreds of times a second (its timer alone is an MSR write per
///   tick, every LAPIC access is an exit), a halted vCPU waits outside `KVM_RUN`, and with
///   no in-kernel irqchip KVM never sleeps for the guest: a vCPU thread asleep inside
///   `KVM_RUN` that long waits for something else, in practice a page.
/// * Once the run ended (power-off, a failure, a stall, or `stop`: the timeout), the vCPU
///   threads have [`STOP_GRACE`] to return; a thread that does not is stuck inside
///   `KVM_RUN` in a wait a signal does not end (a page fault KVM takes as killable but not
///   interruptible waits so for its userfaultfd page), which only the process's exit ends:
///   the node says so and exits with status 1, where it would otherwise hang past every
///   timeout.
fn watch_vcpus(
    me: u16,
    stall: Duration,
    platform: &Platform,
    stop: &AtomicBool,
    returned: &AtomicBool,
    node: &Node,
) {
    let tick = Duration::from_millis(50);
    let mut last: Vec<(u64, Instant)> = Vec::new();
    let mut sampled = Instant::now();
    let started = sampled;
    let mut said = sampled;
    while !stop.load(Ordering::Acquire) && platform.ended().is_none() {
        if returned.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(tick);
        if sampled.elapsed() < Duration::from_secs(1) {
            continue;
        }
        sampled = Instant::now();
        let now = platform.vcpu_activity();
        if sampled.duration_since(said) >= PROGRESS_EVERY {
            // A boot takes seconds on hardware and minutes under emulation: say it goes on.
            said = sampled;
            let exits: u64 = now.iter().map(|a| a.exits).sum();
            let served: u64 = node
                .stats()
                .iter()
                .flat_map(|s| s.faults_served.iter().flatten())
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            tracing::info!(
                elapsed_s = started.elapsed().as_secs(),
                vcpu_exits = exits,
                faults_served = served,
                "Linux guest running for {} s: {} vCPU(s) here made {exits} exits, this \
                 node served {served} faults",
                started.elapsed().as_secs(),
                now.len()
            );
        }
        last.resize(now.len(), (u64::MAX, sampled));
        let mut stalled = Vec::new();
        for (a, (exits, since)) in now.iter().zip(last.iter_mut()) {
            if !a.in_guest || a.left || a.exits != *exits {
                *exits = a.exits;
                *since = sampled;
            } else if since.elapsed() >= stall && thread_state(a.os_tid) != Some('R') {
                // Running without exits is guest code (PVM emulates a kernel's early boot
                // so for seconds); asleep in the kernel without exits is a wait.
                stalled.push(*a);
            }
        }
        if !stalled.is_empty() {
            tracing::error!(
                "node {me}: {} made no exit for {} s, asleep in the kernel \
                 inside KVM_RUN (waiting for a page no node delivers?); data plane: {}; ending \
                 the run",
                describe_vcpus(&stalled),
                stall.as_secs(),
                describe_shards(node)
            );
            platform.end(Lifecycle::Failed, 1);
        }
    }
    let since = Instant::now();
    while since.elapsed() < STOP_GRACE {
        if returned.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(tick);
    }
    let stuck: Vec<_> = platform
        .vcpu_activity()
        .into_iter()
        .filter(|a| !a.left)
        .collect();
    tracing::error!(
        "node {me}: the guest run ended but {} did not stop within {} s; data plane: {}; \
         exiting",
        describe_vcpus(&stuck),
        STOP_GRACE.as_secs(),
        describe_shards(node)
    );
    eprintln!(
        "ssi-dp: node {me}: exiting with vCPU threads still inside KVM_RUN (see the error \
         above): only the process's exit ends their wait"
    );
    std::process::exit(1);
}

/// How often a running Linux guest's progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// The state letter of thread `tid` of this process (`R` running, `S` or `D` asleep, ...),
/// from `/proc/self/task/TID/stat`; `None` when that cannot be read.
fn thread_state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // "TID (COMM) STATE ...": COMM may hold spaces and parentheses, so the last ')' ends it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// "vCPU 2 (812 exits, inside KVM_RUN, waiting in handle_userfault)", for each.
fn describe_vcpus(vcpus: &[vmm::platform::VcpuActivity]) -> String {
    let one = |a: &vmm::platform::VcpuActivity| {
        let place = if a.in_guest {
            "inside KVM_RUN"
        } else {
            "outside KVM_RUN"
        };
        // The kernel function the thread sleeps in ("0" when it runs); best effort, a
        // diagnosis only.
        let wchan = std::fs::read_to_string(format!("/proc/self/task/{}/wchan", a.os_tid))
            .ok()
            .filter(|w| a.os_tid > 0 && !w.is_empty())
            .map(|w| format!(", waiting in {w}"))
            .unwrap_or_default();
        format!("vCPU {} ({} exits, {place}{wchan})", a.vcpu, a.exits)
    };
    vcpus.iter().map(one).collect::<Vec<_>>().join(", ")
}

/// Each shard's fault and message counts, for a report on a stuck run.
fn describe_shards(node: &Node) -> String {
    let shard = |(i, s): (usize, &Arc<ShardStats>)| {
        let served: u64 = s
            .faults_served
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        format!(
            "shard {i}: userfaultfd events {}, faults served {served}, failed {}, messages \
             sent {} received {}",
            s.uffd_events.load(Ordering::Relaxed),
            s.faults_failed.load(Ordering::Relaxed),
            s.msgs_sent.load(Ordering::Relaxed),
            s.msgs_received.load(Ordering::Relaxed),
        )
    };
    node.stats()
        .iter()
        .enumerate()
        .map(shard)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What this node's data plane did, summed over its shards.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Faults served (every kind, home and remote pages).
    faults: u64,
    /// Of which on pages homed on another node.
    remote: u64,
    /// Pages that arrived with their contents from another node.
    pages_in: u64,
}

impl Counts {
    fn of(shards: &[Arc<ShardStats>]) -> Counts {
        let mut c = Counts::default();
        for s in shards {
            for by_loc in &s.faults_served {
                let home = by_loc[0].load(Ordering::Relaxed);
                let remote = by_loc[1].load(Ordering::Relaxed);
                c.faults += home + remote;
                c.remote += remote;
            }
            c.pages_in += s.installs_data.load(Ordering::Relaxed);
        }
        c
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            faults: self.faults.saturating_sub(before.faults),
            remote: self.remote.saturating_sub(before.remote),
            pages_in: self.pages_in.saturating_sub(before.pages_in),
        }
    }
}

/// When the guest started init, and this node's counts then.
type InitSeen = Option<(Duration, Counts)>;

/// A thread that splits the run at the guest's init: on the device node (`marker` given) it
/// watches the console for the marker and writes the time into the host area; on every
/// node it polls that word and notes its data-plane counts when it appears, so each node can
/// tell its boot from its workload.
fn watch_for_init(
    node: &Node,
    area: HostArea,
    console: &Console,
    marker: Option<String>,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<InitSeen>) {
    let done = Arc::new(AtomicBool::new(false));
    let (d, c) = (done.clone(), console.clone());
    let stats = node.stats().to_vec();
    let start = Instant::now();
    let h = std::thread::spawn(move || {
        let page = area.page(GUEST_BARRIERS);
        let mut written = false;
        while !d.load(Ordering::Acquire) {
            if !written && marker.as_ref().is_some_and(|m| c.contains(m.as_bytes())) {
                let ms = start.elapsed().as_millis() as u64;
                area.mem.write64(page, linux_words::INIT, ms + 1);
                written = true;
            }
            let mark = area.mem.read64(page, linux_words::INIT);
            if mark != 0 {
                return Some((Duration::from_millis(mark - 1), Counts::of(&stats)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    });
    (done, h)
}

/// This node's counts at the start of the run, at init (with its time), at the end.
struct Phases {
    at_start: Counts,
    init: InitSeen,
    at_end: Counts,
}

impl Phases {
    /// "; boot: F faults (R on remote pages), P pages in; after init: ..."
    fn describe(&self) -> String {
        let line = |c: Counts| {
            format!(
                "{} faults ({} on remote-homed pages), {} pages in",
                c.faults, c.remote, c.pages_in
            )
        };
        match self.init {
            Some((at, c)) => format!(
                "; reached init after {:.1} s; data plane until init: {}; after init: {}",
                at.as_secs_f64(),
                line(c.since(self.at_start)),
                line(self.at_end.since(c))
            ),
            None => format!(
                "; init not reached; data plane: {}",
                line(self.at_end.since(self.at_start))
            ),
        }
    }
}

/// This node's verdict on the run and its summary line.
#[allow(clippy::too_many_arguments)]
fn verdict(
    spec: &LinuxSpec,
    placement: &Placement,
    platform: &Platform,
    reports: &[VcpuReport],
    end: Option<End>,
    elapsed: Duration,
    phases: Phases,
    ram: u64,
) -> Report {
    let failures: Vec<String> = reports
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Failed(e) => Some(format!("vCPU {}: {e}", r.vcpu)),
            _ => None,
        })
        .collect();
    let (ok, how) = match end {
        Some(End {
            event: Lifecycle::PowerOff,
            status: 0,
        }) if failures.is_empty() => (
            true,
            "the guest powered off, verdict 0 (success)".to_string(),
        ),
        Some(End {
            event: Lifecycle::PowerOff,
            status,
        }) => (
            false,
            format!("the guest powered off with verdict {status} (failure)"),
        ),
        Some(End {
            event: Lifecycle::Reset,
            ..
        }) => (
            false,
            "the guest asked for a reset (a kernel panic with panic=N does too); this version \
             ends the run instead of restarting the guest"
                .to_string(),
        ),
        Some(End {
            event: Lifecycle::Failed,
            ..
        }) if failures.is_empty() => (false, "another node's part of the guest failed".to_string()),
        Some(_) | None if !failures.is_empty() => (false, failures.join("; ")),
        _ => (
            false,
            format!(
                "the guest did not power off within --guest-timeout {} s",
                spec.timeout.as_secs()
            ),
        ),
    };
    let c = reports
        .iter()
        .fold(vmm::vcpu::ExitCounters::default(), |mut a, r| {
            let b = &r.counters;
            a.lapic += b.lapic;
            a.device += b.device;
            a.forwarded += b.forwarded;
            a.msr += b.msr;
            a.hlt += b.hlt;
            a.injected += b.injected;
            a.ipis_sent += b.ipis_sent;
            a.timer_fires += b.timer_fires;
            a.unclaimed += b.unclaimed;
            a.unclaimed_at.merge(&b.unclaimed_at);
            a
        });
    let exits: u64 = reports.iter().map(|r| r.exits).sum();
    let s = &platform.stats;
    let secs = elapsed.as_secs_f64().max(1e-3);
    let remote_ipis = s.ipis_sent_remote.load(Ordering::Relaxed);
    Report {
        ok,
        summary: format!(
            "Linux on {} MiB across nodes, {} vCPUs (this node ran {:?}, devices on node {}): {how}; \
             {:.1} s{}; {exits} exits ({:.0}/s): local APIC {}, devices {} ({} forwarded), \
             TSC deadline {}, HLT {}, injected {}, unclaimed {}{}; IPIs sent {} (to other nodes \
             {remote_ipis}, {:.1}/s; received from them {}), device accesses served for other \
             nodes {}",
            ram >> 20,
            spec.vcpus,
            placement.local_vcpus(),
            placement.device_node,
            secs,
            phases.describe(),
            exits as f64 / secs,
            c.lapic,
            c.device,
            c.forwarded,
            c.msr,
            c.hlt,
            c.injected,
            c.unclaimed,
            if c.unclaimed > 0 {
                format!(" ({})", c.unclaimed_at)
            } else {
                String::new()
            },
            c.ipis_sent,
            remote_ipis as f64 / secs,
            s.ipis_received_remote.load(Ordering::Relaxed),
            s.io_served.load(Ordering::Relaxed),
        ),
        work_time: elapsed,
    }
}
