//! Inter-node figures measured at cluster formation, from which the ACPI SLIT and HMAT are
//! derived (docs/acpi.md, "Measurements").
//!
//! Every node measures its own row:
//! - to every other node `j` that homes memory: the median time of a read of a page homed
//!   on `j` that this node does not hold, through the same fault path a vCPU uses (a remote
//!   read fault: a request and a 4 KiB reply), over [`LATENCY_PAGES`] pages;
//! - to every other node `j`: the rate at which `j` streams bytes to this node over the data
//!   network ([`crate::link_probe`], the median of its rounds). The nodes take turns, in
//!   rank order, so that no two probes share the machines' CPUs or links;
//! - to itself: the median time and the throughput of copying a 4 KiB page in local memory.
//!
//! Probe pages are the highest pages of each home's range below the host area; they are only
//! read, and the replicas are handed back afterwards. Rows are exchanged through the host
//! area, so every node ends with the same matrices. A node that homes no memory has no
//! latency figure as a target; its column is filled with the row's largest latency
//! (documented in docs/acpi.md), which no table uses for memory placement.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::barrier::Barrier;
use crate::config::PAGE_SIZE;
use crate::host_area::{HostArea, FORMATION};
use crate::node::{Node, ProbeDialer};
use crate::node_state::{NodeState, StopReason};

/// Pages read one at a time for the latency median.
pub const LATENCY_PAGES: u64 = 64;
/// How long to wait for every node at each step (latencies done, each probe turn, rows).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a formation that is still measuring says what it does.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Counter slots on the formation page: rows written, latencies measured, probe turns.
const SLOT_ROWS: u64 = 0;
const SLOT_LATENCY: u64 = 1;
const SLOT_PROBES: u64 = 2;

/// The measured matrices, indexed by node rank (position in node-id order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Node ids in rank order.
    pub nodes: Vec<u16>,
    /// `[from][to]` median 4 KiB fetch latency in ns (diagonal: local copy).
    pub latency_ns: Vec<Vec<u32>>,
    /// `[from][to]` 4 KiB page throughput in MB/s (diagonal: local copy).
    pub bandwidth_mbps: Vec<Vec<u32>>,
}

impl Figures {
    /// `a,b;c,d` rows, as `ssi-dp acpi --latency-ns` takes them.
    pub fn matrix_arg(m: &[Vec<u32>]) -> String {
        m.iter()
            .map(|r| {
                r.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect::<Vec<_>>()
            .join(";")
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX).max(1)
}

/// Local 4 KiB copy: (median ns, MB/s).
fn local_copy() -> (u64, u64) {
    let mut src = vec![0u8; 64 * PAGE_SIZE as usize];
    let mut dst = vec![0u8; 64 * PAGE_SIZE as usize];
    for (i, b) in src.iter_mut().enumerate() {
        *b = i as u8;
    }
    let page = PAGE_SIZE as usize;
    let mut samples = Vec::with_capacity(1000);
    for i in 0..1000 {
        let k = (i % 64) * page;
        let t = Instant::now();
        dst[k..k + page].copy_from_slice(std::hint::black_box(&src[k..k + page]));
        std::hint::black_box(&dst);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    // Throughput: the median of rounds of 256 page copies (1 MiB), so that one preemption
    // does not become the figure.
    let mut rates = Vec::with_capacity(15);
    for _ in 0..15 {
        let t = Instant::now();
        for r in 0..16usize {
            let k = (r % 64) * page;
            for c in 0..16 {
                let o = (k + c * page) % (64 * page);
                dst[o..o + page].copy_from_slice(std::hint::black_box(&src[o..o + page]));
            }
            std::hint::black_box(&dst);
        }
        rates.push(256 * PAGE_SIZE * 1000 / (t.elapsed().as_nanos() as u64).max(1));
    }
    let mbps = median(rates);
    (median(samples), mbps)
}

/// Probe pages of home `node`: the highest pages of its range below the host area.
fn probes(node: &Node, home: u16, below: u64, want: u64) -> Vec<u64> {
    let layout = node.layout();
    let Some(r) = layout.ranges().iter().find(|r| r.node.get() == home) else {
        return Vec::new();
    };
    let end = (r.first_page + r.page_count).min(below);
    let n = want.min(end.saturating_sub(r.first_page) / 4);
    (end - n..end).rev().collect()
}

/// Remote reads of `pages` (of one home), one at a time: the median ns, or `None` if it
/// homes too little memory to probe.
fn remote_latency(area: &HostArea, pages: &[u64]) -> Option<u64> {
    if (pages.len() as u64) < LATENCY_PAGES {
        return None;
    }
    let mem = area.mem;
    let samples = pages
        .iter()
        .map(|&p| {
            let t = Instant::now();
            std::hint::black_box(mem.read64(p, 0));
            t.elapsed().as_nanos() as u64
        })
        .collect();
    Some(median(samples))
}

/// Why the formation measurements failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// The address space has no room for the host area the rows are exchanged in.
    #[error("the address space is too small to have a host area: give the nodes more --memory")]
    NoHostArea,
    /// The exchange did not complete in time.
    #[error("not every node finished its measurements within {0:?} (a node is slow or down): check that every node started and can reach the others")]
    Exchange(Duration),
    /// The node stopped while measuring (a home died, say): the measuring thread is left
    /// waiting on a page that can no longer be served.
    #[error("the node stopped during the formation measurements: {0}")]
    Stopped(StopReason),
    /// A link probe failed.
    #[error("measuring the link from node {node}: {why}")]
    Probe {
        /// The node probed.
        node: u16,
        /// What went wrong.
        why: String,
    },
    /// The measuring thread could not be started, or ended without an answer.
    #[error("the formation measurement thread failed ({0:?})")]
    Thread(std::io::ErrorKind),
}

/// Measures this node's row, exchanges rows with every node through the host area, and
/// returns the full matrices. Every node of the cluster must call it (at formation).
///
/// The measuring touches guest pages, and a thread whose page can no longer be served (its
/// home died meanwhile) waits forever; so it runs on a thread of its own, holding the region
/// mapped, and this one returns [`MeasureError::Stopped`] as soon as the node stops.
pub fn measure(node: &Node) -> Result<Figures, MeasureError> {
    let Some(area) = HostArea::of(node) else {
        return Err(MeasureError::NoHostArea);
    };
    let nodes: Vec<u16> = node.cluster().nodes.iter().map(|n| n.id).collect();
    let me = node.id();
    let probe_pages: Vec<Vec<u64>> = nodes
        .iter()
        .map(|&j| probes(node, j, area.first, LATENCY_PAGES))
        .collect();
    let dialer = node.probe_dialer();
    let region = node.region().clone();
    let state = node.shared_state();
    let (tx, rx) = std::sync::mpsc::channel();
    // What the measuring thread is doing, for the progress lines below (a few updates per
    // formation).
    let step = Arc::new(Mutex::new(String::from("starting")));
    let doing = step.clone();
    tracing::info!(
        "measuring the links to nodes {nodes:?} at formation: latency ({LATENCY_PAGES} remote \
         reads each), then bandwidth (a stream from each node in turn)"
    );
    std::thread::Builder::new()
        .name("ssi-measure".into())
        .spawn(move || {
            // Keeps the guest region mapped while this thread may still be in it.
            let _region = region;
            let r = measure_on(&area, &nodes, me, &probe_pages, &state, &dialer, &doing);
            // Nobody listens any more when the node stopped meanwhile: nothing to do then.
            let _ = tx.send(r);
        })
        .map_err(|e| MeasureError::Thread(e.kind()))?;
    let started = Instant::now();
    let deadline = started + EXCHANGE_TIMEOUT + Duration::from_secs(30);
    let mut said = started;
    loop {
        if said.elapsed() >= PROGRESS_EVERY {
            said = Instant::now();
            let doing = step.lock().map(|s| s.clone()).unwrap_or_default();
            tracing::info!(
                elapsed_s = started.elapsed().as_secs_f64(),
                "measuring the links at formation: {doing}"
            );
        }
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(r) => return r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(MeasureError::Thread(std::io::ErrorKind::BrokenPipe))
            }
        }
        if let Some(reason) = node.state().fatal() {
            return Err(MeasureError::Stopped(reason));
        }
        if Instant::now() > deadline {
            return Err(MeasureError::Exchange(EXCHANGE_TIMEOUT));
        }
    }
}

/// Waits until counter `slot` of the formation page reaches `want` (every node arrived).
fn await_count(
    area: &HostArea,
    slot: u64,
    want: u64,
    state: &NodeState,
) -> Result<(), MeasureError> {
    let counter = area.mem.atomic64(area.page(FORMATION), (slot * 8) as usize);
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    while counter.load(Ordering::SeqCst) < want {
        if Instant::now() > deadline || state.dead() != 0 {
            return Err(MeasureError::Exchange(EXCHANGE_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The measurement proper, on the measuring thread: this node's row from `probe_pages` (by
/// target node, in `nodes` order) and link probes, then the exchange.
fn measure_on(
    area: &HostArea,
    nodes: &[u16],
    me: u16,
    probe_pages: &[Vec<u64>],
    state: &NodeState,
    dialer: &ProbeDialer,
    step: &Mutex<String>,
) -> Result<Figures, MeasureError> {
    let doing = |what: String| {
        if let Ok(mut s) = step.lock() {
            *s = what;
        }
    };
    let n = nodes.len() as u64;
    let barrier = Barrier::new(area.mem, area.page(FORMATION), n);
    let (local_ns, local_mbps) = local_copy();
    let latency: Vec<Option<u64>> = nodes
        .iter()
        .enumerate()
        .map(|(k, &j)| {
            if j == me {
                Some(local_ns)
            } else {
                doing(format!("latency to node {j}"));
                remote_latency(area, &probe_pages[k])
            }
        })
        .collect();
    // Streams load both ends' CPUs: no probe starts before every latency is measured, and
    // the nodes probe in turns.
    doing("waiting for every node's latencies".into());
    barrier.arrive(SLOT_LATENCY);
    await_count(area, SLOT_LATENCY, n, state)?;
    let mut bandwidth = vec![local_mbps; nodes.len()];
    for (turn, &prober) in nodes.iter().enumerate() {
        doing(format!(
            "bandwidth, turn {} of {}: node {prober} streams",
            turn + 1,
            nodes.len()
        ));
        if prober == me {
            for (k, &j) in nodes.iter().enumerate().filter(|&(_, &j)| j != me) {
                doing(format!("bandwidth: streaming from node {j}"));
                bandwidth[k] = dialer
                    .stream_mbps(j)
                    .map_err(|why| MeasureError::Probe { node: j, why })?;
            }
        }
        barrier.arrive(SLOT_PROBES);
        await_count(area, SLOT_PROBES, n * (turn as u64 + 1), state)?;
    }
    // Targets with no memory to probe get the row's largest latency.
    let max_lat = latency.iter().flatten().copied().max().unwrap_or(1);
    for (k, &j) in nodes.iter().enumerate() {
        let (p, o) = area.row_word(me, 2 * j as u64);
        area.mem.write64(p, o, latency[k].unwrap_or(max_lat));
        let (p, o) = area.row_word(me, 2 * j as u64 + 1);
        area.mem.write64(p, o, bandwidth[k]);
    }
    // Exchange: everyone's row is written once the rows barrier opens.
    doing("exchanging the rows".into());
    barrier.arrive(SLOT_ROWS);
    await_count(area, SLOT_ROWS, n, state)?;
    let mut latency_ns = Vec::new();
    let mut bandwidth_mbps = Vec::new();
    for &i in nodes {
        let mut l = Vec::new();
        let mut b = Vec::new();
        for &j in nodes {
            let (p, o) = area.row_word(i, 2 * j as u64);
            l.push(to_u32(area.mem.read64(p, o)));
            let (p, o) = area.row_word(i, 2 * j as u64 + 1);
            b.push(to_u32(area.mem.read64(p, o)));
        }
        latency_ns.push(l);
        bandwidth_mbps.push(b);
    }
    Ok(Figures {
        nodes: nodes.to_vec(),
        latency_ns,
        bandwidth_mbps,
    })
}
