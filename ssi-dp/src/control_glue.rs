//! The narrow handles through which the control side (membership, REST API, metrics) sees
//! and steers this node: [`control::membership::NodeControl`] and
//! [`control::handle::NodeHandle`], implemented over a running [`Node`]. Nothing here is on
//! the fault path: it reads the atomics shards publish and posts to shard mailboxes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use control::handle::{
    Heat, JoinRequest, Member, MembershipError, MembershipOps, NodeHandle, PageInfo, PageMove,
    PageQueryError, Telemetry,
};
use control::membership::msg::NodeInfo;
use control::membership::{LeaveProgress, Membership, NodeControl, NodeControlError};

use engine::config::{self, ClusterSpec, NodeSpec, PAGE_SIZE};
use engine::node::Node;
use engine::node_state::StopReason;
use engine::shard::mailbox::DirView;
use engine::stats::{sum, FaultKind, Locality, HEAT_BUCKETS};
use engine::summary;

/// How long a join may take to apply on this node.
const EXTEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Most nodes a page query visits following a page's moved home.
const MAX_PAGE_HOPS: usize = 8;

/// See the module documentation.
pub struct Glue {
    node: Arc<Node>,
    /// Every member's control address, by id (the data-plane cluster spec has no place for it).
    controls: Mutex<Vec<(u16, String)>>,
    membership: OnceLock<Arc<Membership>>,
}

impl std::fmt::Debug for Glue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Glue")
            .field("node", &self.node.id())
            .finish()
    }
}

impl Glue {
    /// Handles over `node`; `controls` holds every member's control address.
    pub fn new(node: Arc<Node>, controls: Vec<(u16, String)>) -> Arc<Glue> {
        Arc::new(Glue {
            node,
            controls: Mutex::new(controls),
            membership: OnceLock::new(),
        })
    }

    /// Attaches the running membership (for member states and RTTs).
    pub fn set_membership(&self, m: Arc<Membership>) {
        let _ = self.membership.set(m);
    }

    /// The state of a page this node homes.
    /// This node's view of the page: its state if this node is its home; under home
    /// migration, `state: "moved"` with `home` the node it moved to, if it left from here
    /// (the query follows it); an error otherwise.
    fn local_page(&self, gpa: u64) -> Result<PageInfo, PageQueryError> {
        let layout = self.node.layout();
        let end = layout.end_page() * PAGE_SIZE;
        let page = gpa / PAGE_SIZE;
        let layout_home = match layout.home_of(page) {
            Ok(h) if gpa < end => h.get(),
            _ => return Err(PageQueryError::OutOfRange { gpa, end }),
        };
        let me = self.node.id();
        let unavailable = |why: &str| PageQueryError::HomeUnavailable {
            gpa,
            home: me,
            why: why.into(),
        };
        let st = self
            .node
            .query_page(page)
            .ok_or_else(|| unavailable("the shard owning the page did not answer"))?;
        let moves: Vec<PageMove> = st
            .moves
            .iter()
            .map(|m| PageMove {
                from: me,
                to: m.to,
                requests: m.requests,
                of: m.of,
            })
            .collect();
        let info = |home: u16, d: DirView| PageInfo {
            gpa: page * PAGE_SIZE,
            page,
            home,
            state: d.state.to_string(),
            owner: d.owner,
            sharers: d.sharers,
            version: d.version,
            busy: d.busy,
            recent_requests: st.recent.clone(),
            layout_home,
            moves: moves.clone(),
        };
        if let Some(d) = st.dir {
            return Ok(info(me, d));
        }
        if let Some(to) = st.moved_to {
            let moved = DirView {
                state: "moved",
                owner: None,
                sharers: Vec::new(),
                version: 0,
                busy: false,
            };
            return Ok(info(to, moved));
        }
        if layout_home == me {
            // Never written and never moved: the layout's home holds it as zero.
            let zero = DirView {
                state: "zero",
                owner: None,
                sharers: Vec::new(),
                version: 0,
                busy: false,
            };
            return Ok(info(me, zero));
        }
        Err(unavailable("this node is not the page's home"))
    }

    fn control_of(&self, id: u16) -> String {
        self.controls
            .lock()
            .ok()
            .and_then(|c| c.iter().find(|x| x.0 == id).map(|x| x.1.clone()))
            .unwrap_or_default()
    }
}

impl NodeControl for Glue {
    fn nodes(&self) -> Vec<NodeInfo> {
        self.node
            .cluster()
            .nodes
            .iter()
            .map(|n| NodeInfo {
                id: n.id,
                addr: n.addr.to_string(),
                control: self.control_of(n.id),
                memory: n.memory,
            })
            .collect()
    }

    fn declare_dead(&self, id: u16) {
        self.node.state().mark_dead(id);
        self.node.wake_shards();
    }

    fn mark_left(&self, id: u16) {
        self.node.state().mark_left(id);
        self.node.wake_shards();
    }

    fn refused(&self, _reason: &str) {
        // Membership logged the member's reason; the main loop reports the stop.
        self.node.state().set_fatal(StopReason::DeclaredDead);
    }

    fn data_plane_dead(&self) -> u64 {
        let s = self.node.state();
        if s.departures_expected() {
            // This node is stopping, or has handed its pages over and is about to leave: the
            // others closing their connections says nothing about them.
            return 0;
        }
        s.dead() & !s.left()
    }

    fn extend(&self, nodes: &[NodeInfo], joiner: u16) -> Result<(), NodeControlError> {
        let me = self.node.id();
        let mut specs = Vec::new();
        for n in nodes {
            let addr = config::resolve(n.id, &n.addr)
                .map_err(|e| NodeControlError::Members(Box::new(e)))?;
            specs.push(NodeSpec {
                id: n.id,
                addr,
                memory: n.memory,
            });
        }
        let mine = specs
            .iter()
            .find(|n| n.id == me)
            .cloned()
            .ok_or(NodeControlError::NotAMember)?;
        let others = specs.into_iter().filter(|n| n.id != me).collect();
        let cluster =
            ClusterSpec::new(mine, others).map_err(|e| NodeControlError::Members(Box::new(e)))?;
        self.node
            .extend(cluster, joiner, EXTEND_TIMEOUT)
            .map_err(|e| NodeControlError::DataPlane(Box::new(e)))?;
        if let Ok(mut c) = self.controls.lock() {
            for n in nodes {
                if !c.iter().any(|x| x.0 == n.id) {
                    c.push((n.id, n.control.clone()));
                }
            }
        }
        Ok(())
    }

    fn hand_back(&self) -> Result<(), NodeControlError> {
        self.node
            .leave(Duration::from_secs(60))
            .map_err(|e| NodeControlError::DataPlane(Box::new(e)))
    }

    fn retire(&self, id: u16, to: u16) -> Result<(), NodeControlError> {
        self.node
            .retire(id, to)
            .map_err(|e| NodeControlError::DataPlane(Box::new(e)))
    }

    fn retire_progress(&self, count_homed: bool) -> Result<LeaveProgress, NodeControlError> {
        let p = self
            .node
            .retire_progress(count_homed)
            .map_err(|e| NodeControlError::DataPlane(Box::new(e)))?;
        Ok(LeaveProgress {
            fenced: p.fenced,
            drained: p.drained,
            homed: p.homed,
        })
    }

    fn retired(&self, id: u16, to: u16) -> Result<(), NodeControlError> {
        self.node
            .retired(id, to)
            .map_err(|e| NodeControlError::DataPlane(Box::new(e)))
    }

    fn stop(&self) {
        self.node.state().expect_departures();
        self.node.state().request_cluster_stop();
    }

    fn page_local(&self, gpa: u64) -> Result<PageInfo, PageQueryError> {
        self.local_page(gpa)
    }
}

impl NodeHandle for Glue {
    fn id(&self) -> u16 {
        self.node.id()
    }

    fn members(&self) -> Vec<Member> {
        match self.membership.get() {
            Some(m) => m.members(),
            None => {
                // Without a control plane: the data plane's own view.
                let dead = self.node.state().dead();
                let left = self.node.state().left();
                let mut gpa = 0;
                self.node
                    .cluster()
                    .nodes
                    .iter()
                    .map(|n| {
                        let start = gpa;
                        gpa += n.memory;
                        let bit = 1u64 << n.id;
                        Member {
                            id: n.id,
                            addr: n.addr.to_string(),
                            memory: n.memory,
                            gpa_start: start,
                            state: if left & bit != 0 {
                                control::handle::MemberState::Left
                            } else if dead & bit != 0 {
                                control::handle::MemberState::Dead
                            } else {
                                control::handle::MemberState::Alive
                            },
                            this_node: n.id == self.node.id(),
                            last_heard_ms: None,
                        }
                    })
                    .collect()
            }
        }
    }

    fn page(&self, gpa: u64) -> Result<PageInfo, PageQueryError> {
        let layout = self.node.layout();
        let end = layout.end_page() * PAGE_SIZE;
        let mut home = match layout.home_of(gpa / PAGE_SIZE) {
            Ok(h) if gpa < end => h.get(),
            _ => return Err(PageQueryError::OutOfRange { gpa, end }),
        };
        // A page's coherence state lives at its home: start at the layout's and follow the
        // page's moves (home migration), a bounded number of them; a home that left is asked
        // through the node that took its pages.
        let mut moves = Vec::new();
        for _ in 0..MAX_PAGE_HOPS {
            home = self.node.successor(home);
            let mut info = if home == self.node.id() {
                self.local_page(gpa)?
            } else {
                match self.membership.get() {
                    Some(m) => m.query_page(home, gpa)?,
                    None => {
                        return Err(PageQueryError::HomeUnavailable {
                            gpa,
                            home,
                            why: format!(
                                "no control plane to ask node {home}; query its API instead"
                            ),
                        })
                    }
                }
            };
            moves.append(&mut info.moves);
            if info.state != "moved" {
                info.moves = moves;
                return Ok(info);
            }
            home = info.home;
        }
        Err(PageQueryError::HomeUnavailable {
            gpa,
            home,
            why: format!(
                "the page's home moved more than {MAX_PAGE_HOPS} times since the layout's; \
                 ask again (its home is moving now) or query node {home}"
            ),
        })
    }

    fn heat(&self) -> Heat {
        let stats = self.node.stats();
        let nodes: Vec<u16> = self.node.cluster().nodes.iter().map(|n| n.id).collect();
        let bucket_pages = stats.first().map_or(1, |s| s.heat.bucket_pages());
        let end = self.node.layout().end_page();
        let buckets = (end.div_ceil(bucket_pages) as usize).min(HEAT_BUCKETS);
        let counts = (0..buckets)
            .map(|b| {
                nodes
                    .iter()
                    .map(|&n| stats.iter().map(|s| s.heat.bucket(b, usize::from(n))).sum())
                    .collect()
            })
            .collect();
        let per_bucket = |f: &dyn Fn(&engine::stats::Heat, usize) -> u64| -> Vec<u64> {
            let v: Vec<u64> = (0..buckets)
                .map(|b| stats.iter().map(|s| f(&s.heat, b)).sum())
                .collect();
            if v.iter().all(|&x| x == 0) {
                Vec::new()
            } else {
                v
            }
        };
        Heat {
            bucket_bytes: bucket_pages * PAGE_SIZE,
            nodes,
            counts,
            homes_in: per_bucket(&|h, b| h.homes_in(b)),
            homes_out: per_bucket(&|h, b| h.homes_out(b)),
        }
    }

    fn liveness(&self) -> Result<(), String> {
        match self.node.state().fatal() {
            Some(reason) => Err(format!("the node stopped: {reason}")),
            None => Ok(()),
        }
    }

    fn readiness(&self) -> Result<(), String> {
        let s = self.node.state();
        if let Some(reason) = s.fatal() {
            return Err(format!("the node stopped: {reason}"));
        }
        if s.cluster_stop_requested() {
            return Err("the node is stopping".into());
        }
        if s.departures_expected() {
            return Err("the node is leaving the cluster or stopping".into());
        }
        Ok(())
    }

    fn telemetry(&self) -> Telemetry {
        let st = self.node.stats();
        let mut faults = Vec::new();
        for kind in FaultKind::ALL {
            for loc in [Locality::Home, Locality::Remote] {
                faults.push((kind.name(), loc.name(), summary::served(st, kind, loc)));
            }
        }
        let service_time = summary::series(st)
            .into_iter()
            .map(|(name, h)| {
                // Fixed bounds: the `le` labels never change between scrapes.
                let buckets = control::handle::service_time_buckets(
                    h.iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value())),
                );
                let sum_s = h
                    .iter_recorded()
                    .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
                    .sum::<f64>()
                    / 1e9;
                (name, buckets, h.len(), sum_s)
            })
            .collect();
        let transports = self.node.transport_stats();
        let rejected: u64 = transports.iter().map(|t| t.rejected.total()).sum();
        let backpressure: u64 = transports
            .iter()
            .map(|t| t.backpressure.load(Relaxed))
            .sum();
        let cq_errors: u64 = transports.iter().map(|t| t.cq_errors.load(Relaxed)).sum();
        let peers_down: u64 = transports.iter().map(|t| t.peers_down.load(Relaxed)).sum();
        let m = self.membership.get();
        Telemetry {
            node: self.node.id(),
            faults,
            service_time,
            invalidations: sum(st, |x| &x.proto.invalidations),
            page_bytes_sent: sum(st, |x| &x.bytes_sent),
            page_bytes_received: sum(st, |x| &x.bytes_received),
            writeback_bytes: sum(st, |x| &x.proto.evictions_dirty) * PAGE_SIZE,
            evictions: sum(st, |x| &x.proto.evictions_clean)
                + sum(st, |x| &x.proto.evictions_dirty),
            messages_sent: sum(st, |x| &x.msgs_sent),
            messages_received: sum(st, |x| &x.msgs_received),
            transport_errors: rejected + backpressure,
            reconnects: m.map_or(0, |m| m.reconnects()) + peers_down,
            peer_rtt: m.map(|m| m.rtt()).unwrap_or_default(),
            ping_pong: sum(st, |x| &x.proto.ping_pong),
            ping_pong_held: sum(st, |x| &x.proto.ping_pong_held),
            prefetches: sum(st, |x| &x.proto.prefetches),
            replicas_held: sum(st, |x| &x.replicas_held),
            replica_cache_evictions: sum(st, |x| &x.replica_evictions),
            homes_moved_in: sum(st, |x| &x.proto.homes_in),
            homes_moved_out: sum(st, |x| &x.proto.homes_out),
            cq_errors,
            shard_turns: st
                .iter()
                .enumerate()
                .map(|(i, s)| (i, s.busy_turns.load(Relaxed), s.idle_turns.load(Relaxed)))
                .collect(),
            faults_failed: sum(st, |x| &x.faults_failed),
            protocol_violations: sum(st, |x| &x.violations),
            shards_stalled: st
                .iter()
                .enumerate()
                .filter(|(_, s)| s.stalled.load(Relaxed))
                .map(|(i, _)| i)
                .collect(),
            members: self.members().iter().map(|m| (m.id, m.state)).collect(),
            healthy: self.liveness().is_ok(),
            ready: self.readiness().is_ok(),
        }
    }
}

/// Membership operations of a node started without a control plane: the API says so.
#[derive(Debug)]
pub struct NoControlPlane;

const NO_CONTROL: &str = "this node runs without a control plane: start the nodes from an \
    inventory (`ssi-dp up`) or with --control and TLS certificates to join, leave or stop \
    through the API";

impl MembershipOps for NoControlPlane {
    fn join(&self, _req: JoinRequest) -> Result<Member, MembershipError> {
        Err(MembershipError::Conflict(NO_CONTROL.into()))
    }

    fn leave(&self, _id: u16) -> Result<(), MembershipError> {
        Err(MembershipError::Conflict(NO_CONTROL.into()))
    }

    fn stop_cluster(&self) -> Result<(), MembershipError> {
        Err(MembershipError::Conflict(NO_CONTROL.into()))
    }

    fn form_cluster(&self, _inventory_toml: &str) -> Result<Vec<Member>, MembershipError> {
        Err(MembershipError::Conflict(
            "this node already belongs to a cluster; start a new one with `ssi-dp up INVENTORY` or POST /cluster to an `ssi-dp supervisor`"
                .into(),
        ))
    }
}
