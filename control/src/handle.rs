//! The narrow handle through which the control side sees and steers a data-plane node: what
//! the REST API, the metrics exporter and membership need, and nothing of the fault path.
//! The data plane implements [`NodeHandle`]; `control` never depends on the data plane.

use std::fmt;

use serde::Serialize;

/// A member's state as membership sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Heartbeats arrive.
    Alive,
    /// Heartbeats stopped for longer than the suspicion time; not yet declared dead.
    Suspect,
    /// Declared dead (missed heartbeats past the failure timeout, or its connections broke).
    /// Terminal: a node that comes back is not readmitted and must rejoin as a new node.
    Dead,
    /// Left the cluster in order.
    Left,
}

impl MemberState {
    /// Every state, in the order `/metrics` writes them.
    pub const ALL: [MemberState; 4] = [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Dead,
        MemberState::Left,
    ];
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        })
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Member {
    /// Node id.
    pub id: u16,
    /// Data-plane address.
    pub addr: String,
    /// Bytes of guest memory it contributes.
    pub memory: u64,
    /// First guest-physical address it homes (its contribution is `[gpa_start, gpa_start +
    /// memory)`).
    pub gpa_start: u64,
    /// Membership state.
    pub state: MemberState,
    /// Whether this is the node answering.
    pub this_node: bool,
    /// Milliseconds since its last heartbeat was heard (`None` for this node or before the
    /// first one).
    pub last_heard_ms: Option<u64>,
}

/// The coherence state of one page, as its home knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PageInfo {
    /// The page's guest-physical address (page aligned).
    pub gpa: u64,
    /// Page number.
    pub page: u64,
    /// The home node.
    pub home: u16,
    /// `zero` (never written), `shared`, `exclusive` or `lost`.
    pub state: String,
    /// The exclusive owner, if any.
    pub owner: Option<u16>,
    /// Nodes holding read-only copies.
    pub sharers: Vec<u16>,
    /// The page's version (incremented by each exclusive grant).
    pub version: u32,
    /// Whether a coherence transaction is in flight on it.
    pub busy: bool,
    /// Recent requests for the page by requesting node, `(node, count)`.
    pub recent_requests: Vec<(u16, u64)>,
    /// The node the cluster layout makes the page's home; `home` differs once home migration
    /// (`--placement on`) moved it.
    #[serde(default)]
    pub layout_home: u16,
    /// The page's moves on the way from the layout's home to `home`, oldest first, as the
    /// nodes that made them remember them (each keeps its last 256 moves).
    #[serde(default)]
    pub moves: Vec<PageMove>,
}

/// One move of a page's home, and why it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PageMove {
    /// The home it left.
    pub from: u16,
    /// The home it moved to.
    pub to: u16,
    /// Recent requests for the page by `to` at the old home when it moved.
    pub requests: u64,
    /// Recent requests for it by every node (the old home's own faults included).
    pub of: u64,
}

/// Why a page query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageQueryError {
    /// The address is outside the address space.
    #[error("gpa {gpa:#x} is outside the address space (0..{end:#x})")]
    OutOfRange {
        /// The address asked for.
        gpa: u64,
        /// End of the address space.
        end: u64,
    },
    /// The page's home did not answer.
    #[error("the home of gpa {gpa:#x}, node {home}, did not answer: {why}")]
    HomeUnavailable {
        /// The address asked for.
        gpa: u64,
        /// Its home.
        home: u16,
        /// Why.
        why: String,
    },
}

/// Page heat: request counts per address-space bucket and requesting node, as homes count
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heat {
    /// Bytes of address space per bucket.
    pub bucket_bytes: u64,
    /// Node ids, the columns of `counts`.
    pub nodes: Vec<u16>,
    /// `counts[bucket][k]`: requests for pages of the bucket made by `nodes[k]`.
    pub counts: Vec<Vec<u64>>,
    /// Home migration, per bucket: pages homed at the node drawing the picture although the
    /// layout homes them elsewhere (empty: none anywhere, or not kept).
    pub homes_in: Vec<u64>,
    /// Home migration, per bucket: pages of the drawing node's own range homed elsewhere now.
    pub homes_out: Vec<u64>,
}

/// One service-time histogram: `(series name, [(upper bound in s, cumulative count)],
/// count, sum in s)`. The upper bounds are [`SERVICE_TIME_BUCKETS_NS`], always all of them
/// (build the list with [`service_time_buckets`]), so that a series keeps the same `le`
/// labels from scrape to scrape.
pub type ServiceTimeSeries = (String, Vec<(f64, u64)>, u64, f64);

/// The fixed upper bounds, in nanoseconds, of every fault service-time histogram: 1-2-5 steps
/// from 1 µs to 10 s (a remote fault here takes 50–200 µs; a stalled one, seconds). Values
/// above the last bound count only in `+Inf`. Changing these breaks dashboards: they are
/// documented in docs/api.md.
pub const SERVICE_TIME_BUCKETS_NS: [u64; 22] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Cumulative counts at each of [`SERVICE_TIME_BUCKETS_NS`] (as `(bound in s, count)`) from
/// recorded `(value in ns, count)` pairs in any order.
pub fn service_time_buckets(recorded: impl IntoIterator<Item = (u64, u64)>) -> Vec<(f64, u64)> {
    let mut counts = [0u64; SERVICE_TIME_BUCKETS_NS.len()];
    for (ns, n) in recorded {
        let i = SERVICE_TIME_BUCKETS_NS.partition_point(|&le| le < ns);
        if let Some(c) = counts.get_mut(i) {
            *c = c.saturating_add(n);
        }
    }
    let mut cumulative = 0u64;
    SERVICE_TIME_BUCKETS_NS
        .iter()
        .zip(counts)
        .map(|(&le, c)| {
            cumulative = cumulative.saturating_add(c);
            (le as f64 / 1e9, cumulative)
        })
        .collect()
}

/// What the data plane reports for metrics; every field is a real, updated counter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    /// This node.
    pub node: u16,
    /// Faults served by `(kind, locality)`: kind `read|write|upgrade`, locality
    /// `home|remote`.
    pub faults: Vec<(&'static str, &'static str, u64)>,
    /// Fault service time histograms by series name: `(name, [(upper bound s, cumulative
    /// count)], count, sum s)`.
    pub service_time: Vec<ServiceTimeSeries>,
    /// Invalidations sent by this node's homes.
    pub invalidations: u64,
    /// Page bytes sent and received (coherence traffic).
    pub page_bytes_sent: u64,
    /// Page bytes received.
    pub page_bytes_received: u64,
    /// Dirty write-back bytes (evictions of dirty replicas).
    pub writeback_bytes: u64,
    /// Replicas evicted (clean and dirty).
    pub evictions: u64,
    /// Protocol messages sent and received.
    pub messages_sent: u64,
    /// Protocol messages received.
    pub messages_received: u64,
    /// Transport errors (frames rejected, sends refused).
    pub transport_errors: u64,
    /// Peer connections lost.
    pub reconnects: u64,
    /// Round-trip time to each peer in seconds `(peer, rtt)`, from heartbeats.
    pub peer_rtt: Vec<(u16, f64)>,
    /// Pages counted as ping-ponging (taken away within the window after acquisition).
    pub ping_pong: u64,
    /// Acquisitions held longer than the residency window because the page ping-ponged.
    pub ping_pong_held: u64,
    /// Read requests issued by sequential prefetch (`--prefetch`).
    pub prefetches: u64,
    /// Pages of other homes held now, counted where the replica cache is bounded
    /// (`--replica-cache`; 0 otherwise).
    pub replicas_held: u64,
    /// Evictions the bounded replica cache started.
    pub replica_cache_evictions: u64,
    /// Pages whose home moved here (home migration, `--placement on`).
    pub homes_moved_in: u64,
    /// Pages whose home moved away from here.
    pub homes_moved_out: u64,
    /// Completion-queue errors (io_uring CQEs with an error result; RDMA CQ errors).
    pub cq_errors: u64,
    /// Shard loop turns that found work / none, by shard.
    pub shard_turns: Vec<(usize, u64, u64)>,
    /// Faults that failed (page lost, cluster stopped).
    pub faults_failed: u64,
    /// Protocol violations by peers.
    pub protocol_violations: u64,
    /// Shards the watchdog finds stalled now (no loop turn for its bound while awake).
    pub shards_stalled: Vec<usize>,
    /// Every member and its state, as this node sees them.
    pub members: Vec<(u16, MemberState)>,
    /// Whether `GET /healthz` would answer 200 (the data plane has not stopped on a failure).
    pub healthy: bool,
    /// Whether `GET /readyz` would answer 200 (serving, not stopping or leaving).
    pub ready: bool,
}

/// The node as the control side sees it.
pub trait NodeHandle: Send + Sync {
    /// This node's id.
    fn id(&self) -> u16;
    /// Every member, with its state.
    fn members(&self) -> Vec<Member>;
    /// The coherence state of the page at `gpa`.
    fn page(&self, gpa: u64) -> Result<PageInfo, PageQueryError>;
    /// Page heat over the address space.
    fn heat(&self) -> Heat;
    /// Current telemetry.
    fn telemetry(&self) -> Telemetry;
    /// `Some(why)` when the process answering is not a node but the `ssi-dp supervisor`,
    /// which forms and stops clusters: the routes about one node (`/pages`, `/metrics`,
    /// `/heatmap`) then answer 409 with `why`, which names a node's API to ask instead.
    fn not_a_node(&self) -> Option<String> {
        None
    }
    /// `GET /healthz`: `Err(why)` when the process runs but the node has stopped working
    /// (its data plane stopped on a failure); the default is alive.
    fn liveness(&self) -> Result<(), String> {
        Ok(())
    }
    /// `GET /readyz`: `Err(why)` when the node does not serve guest memory now (stopping,
    /// leaving, stopped on a failure); the default is ready.
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A node asking to join (body of `POST /nodes`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct JoinRequest {
    /// The id it wants; `None`: the next free id. It must be above every current member's
    /// (its memory is appended at the top of the address space).
    pub id: Option<u16>,
    /// Its data-plane address, HOST:PORT.
    pub addr: String,
    /// Its control-plane address, HOST:PORT.
    pub control: String,
    /// Bytes of memory it contributes (a multiple of 4096; 0 for compute only).
    pub memory: u64,
}

/// Why a membership operation was refused. Each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Malformed or impossible request (400).
    #[error("{0}")]
    Invalid(String),
    /// No such node (404).
    #[error("node {0} is not a member of this cluster")]
    NotFound(u16),
    /// The request conflicts with the cluster's state (409).
    #[error("{0}")]
    Conflict(String),
    /// A member needed for the operation did not answer (503).
    #[error("{0}")]
    Unavailable(String),
}

impl MembershipError {
    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            MembershipError::Invalid(_) => 400,
            MembershipError::NotFound(_) => 404,
            MembershipError::Conflict(_) => 409,
            MembershipError::Unavailable(_) => 503,
        }
    }
}

/// Membership operations the REST API exposes (implemented by the node's membership).
pub trait MembershipOps: Send + Sync {
    /// Admits a new node (`POST /nodes`); returns it as a member.
    fn join(&self, req: JoinRequest) -> Result<Member, MembershipError>;
    /// Makes node `id` leave in order (`DELETE /nodes/{id}`): it hands back its pages first.
    fn leave(&self, id: u16) -> Result<(), MembershipError>;
    /// Stops every node of the cluster in order (`DELETE /cluster`).
    fn stop_cluster(&self) -> Result<(), MembershipError>;
    /// Forms a cluster from an inventory (`POST /cluster`), where the receiver can (the
    /// `ssi-dp up` supervisor); a node already in a cluster answers `Conflict`.
    fn form_cluster(&self, inventory_toml: &str) -> Result<Vec<Member>, MembershipError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_buckets_are_fixed_and_cumulative() {
        let empty = service_time_buckets([]);
        let bounds: Vec<f64> = empty.iter().map(|b| b.0).collect();
        assert_eq!(bounds.len(), SERVICE_TIME_BUCKETS_NS.len());
        assert_eq!(bounds[0], 1e-6);
        assert_eq!(*bounds.last().unwrap(), 10.0);
        assert!(empty.iter().all(|b| b.1 == 0));
        // A value on a bound counts in that bucket; above the last one, only in +Inf.
        let b = service_time_buckets([(50_000, 2), (999, 1), (50_001, 4), (20_000_000_000, 9)]);
        assert_eq!(b.len(), SERVICE_TIME_BUCKETS_NS.len());
        let at = |s: f64| b.iter().find(|x| x.0 == s).unwrap().1;
        assert_eq!(at(1e-6), 1);
        assert_eq!(at(20e-6), 1);
        assert_eq!(at(50e-6), 3);
        assert_eq!(at(100e-6), 7);
        assert_eq!(at(10.0), 7);
    }
}
