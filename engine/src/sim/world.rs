//! The engine simulator's world: nodes whose shards are the real `Shard` code, each over a
//! real guest region (real userfaultfd, real memory, real ioctls), talking over the simulated
//! network, driven in one thread in an order chosen by the seed.
//!
//! What is simulated, and only that: the network (delays, reordering across connections), the
//! clock, and the threads that touch memory — a touch is a fault handed to the shard the way a
//! userfaultfd event is, and once the shard says the access is allowed the simulator performs
//! it on the real memory. After every step the invariants are checked:
//!
//! - single writer / multiple readers: a page writable on one node is mapped nowhere else;
//! - the protocol's view matches the memory: a page the protocol calls mapped is present in
//!   the page tables, and one it calls writable is not write-protected (`/proc/self/pagemap`);
//! - every read returns the last write: every mapped copy holds the page's last value;
//! - liveness: every touch is eventually allowed, or failed with a named reason, before the
//!   run's time bound.
//!
//! Besides crashing a node, a seed may break connections between live nodes (losing what
//! they carry, as a reset does) and connect them again a little later: the sessions must
//! resume with nothing lost or repeated, which the invariants above check.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use coherence::{Access, Config, Layout, Machine, NodeId, NodeRange, PageAccess, Partition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::net::{Net, SharedNet, SimTransport};
use crate::clock::Clock;
use crate::doorbell::Doorbell;
use crate::idle::IdlePolicy;
use crate::node_state::NodeState;
use crate::region::Region;
use crate::shard::mailbox::Mailbox;
use crate::shard::route::peer_id;
use crate::shard::{Shard, ShardSetup};
use crate::stats::ShardStats;

/// Which invariant broke, with the step and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The step at which it was seen.
    pub step: u64,
    /// The invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {}: {} broken: {} (replay: SIM_SEED={} cargo test -p engine sim::)",
            self.seed, self.step, self.invariant, self.detail, self.seed
        )
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Steps taken (turns, touches, clock moves).
    pub steps: u64,
    /// Touches that became accesses.
    pub accesses: u64,
    /// Frames the network delivered.
    pub delivered: u64,
    /// Touches that faulted again after a wake.
    pub refaults: u64,
    /// Touches that failed with a named reason (page lost, cluster stopped).
    pub failed: u64,
    /// Nodes crashed.
    pub crashes: u64,
    /// Connections broken between live nodes.
    pub flaps: u64,
    /// Sessions resumed on a new connection (both ends count).
    pub restored: u64,
    /// Evictions started by bounded replica caches.
    pub cache_evictions: u64,
    /// Home moves started (home migration).
    pub moves: u64,
}

/// A run's shape.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Nodes that home memory.
    pub homes: u16,
    /// Nodes that home none.
    pub computes: u16,
    /// Pages each home contributes.
    pub pages_per_home: u64,
    /// Touches to make.
    pub touches: u64,
    /// Network delay range (ns).
    pub delay: (u64, u64),
    /// The protocol's residency window (ns).
    pub residency_ns: u64,
    /// A node that crashes (all its connections break, it never turns again) after this
    /// many touches, if any.
    pub crash: Option<(u16, u64)>,
    /// Connections between live nodes to break (each is connected again after a while).
    pub flaps: u32,
    /// Each node's replica-cache bound in pages (0: none).
    pub replica_cache: usize,
    /// Home migration on, with random moves of pages between the homes.
    pub migration: bool,
}

impl Scenario {
    /// A small cluster with hot pages, drawn from `rng`.
    pub fn draw(rng: &mut StdRng) -> Scenario {
        Scenario {
            homes: rng.gen_range(1..=3),
            computes: rng.gen_range(0..=2),
            pages_per_home: rng.gen_range(1..=4),
            touches: rng.gen_range(100..=800),
            delay: (1_000, rng.gen_range(2_000..=200_000)),
            residency_ns: [0, 10_000, 1_000_000][rng.gen_range(0..3)],
            crash: None,
            flaps: 0,
            replica_cache: 0,
            migration: false,
        }
        .with_crash(rng)
        .with_flaps(rng)
        .with_cache(rng)
        .with_migration(rng)
    }

    /// One seed in three turns home migration on (drawn last, like the cache).
    fn with_migration(mut self, rng: &mut StdRng) -> Scenario {
        self.migration = self.homes > 1 && rng.gen_ratio(1, 3);
        self
    }

    /// One seed in three bounds every node's replica cache to one or two pages, so that
    /// evictions run all the time (drawn last: the other draws of a seed stay as they were).
    fn with_cache(mut self, rng: &mut StdRng) -> Scenario {
        if rng.gen_ratio(1, 3) {
            self.replica_cache = rng.gen_range(1..=2);
        }
        self
    }

    /// One seed in two breaks up to four connections.
    fn with_flaps(mut self, rng: &mut StdRng) -> Scenario {
        if self.homes + self.computes > 1 && rng.gen_ratio(1, 2) {
            self.flaps = rng.gen_range(1..=4);
        }
        self
    }

    /// One seed in three crashes a node (a home as often as a compute node).
    fn with_crash(mut self, rng: &mut StdRng) -> Scenario {
        let n = self.homes + self.computes;
        if n > 1 && rng.gen_ratio(1, 3) {
            self.crash = Some((rng.gen_range(0..n), rng.gen_range(0..self.touches)));
        }
        self
    }
}

/// A touch waiting to be allowed.
#[derive(Debug, Clone, Copy)]
struct Pending {
    node: usize,
    page: u64,
    access: Access,
    since: u64,
}

/// One simulated node.
struct SimNode {
    shard: Shard<SimTransport>,
    region: Arc<Region>,
}

/// The world (see the module documentation).
pub struct World {
    seed: u64,
    rng: StdRng,
    net: SharedNet,
    clock: Arc<AtomicU64>,
    nodes: Vec<SimNode>,
    pages: u64,
    /// The last value written to each page (0: never written; pages start zeroed).
    last: Vec<u64>,
    next_value: u64,
    pending: Vec<Pending>,
    pagemap: std::fs::File,
    /// Pages the protocol declared lost (their contents are gone; not checked).
    lost: Vec<bool>,
    /// Nodes that crashed.
    dead: Vec<bool>,
    crash: Option<(u16, u64)>,
    /// Breaks left to make.
    flaps: u32,
    /// Broken connections `(a, b, when to connect them again)`.
    broken: Vec<(usize, usize, u64)>,
    stats: RunStats,
    /// Every node's replica-cache bound (0: none).
    replica_cache: usize,
    /// Home migration is on.
    migration: bool,
}

/// Longest a touch may wait, in simulated time, before the run fails on liveness.
const LIVENESS_NS: u64 = 5_000_000_000;

/// How far the clock moves when nothing is scheduled (no frame in flight, no protocol timer).
const IDLE_TICK_NS: u64 = 100_000;

/// How long a session may wait for a new connection before its node is declared dead (a
/// broken connection comes back within [`RECONNECT_NS`]; a crashed node's never does).
const RESUME_WINDOW_NS: u64 = 50_000_000;

/// Longest a broken connection stays broken.
const RECONNECT_NS: u64 = 2_000_000;

impl World {
    /// Builds the cluster of `sc` (seeded by `seed`).
    pub fn new(seed: u64, sc: Scenario) -> Result<World, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = usize::from(sc.homes + sc.computes);
        let ranges: Vec<NodeRange> = (0..n as u16)
            .map(|i| NodeRange {
                node: NodeId::new(i).expect("small ids"),
                first_page: u64::from(i.min(sc.homes)) * sc.pages_per_home,
                page_count: if i < sc.homes { sc.pages_per_home } else { 0 },
            })
            .collect();
        let pages = u64::from(sc.homes) * sc.pages_per_home;
        let layout = Layout::new(4096, ranges).map_err(|e| e.to_string())?;
        let net_rng = StdRng::seed_from_u64(rng.gen());
        let net = Net::new(net_rng, sc.delay);
        let clock = Arc::new(AtomicU64::new(1));
        let config = Config {
            residency_ns: sc.residency_ns,
            migration: sc.migration,
            ..Config::default()
        };
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            for j in 0..n {
                if i < j {
                    net.borrow_mut().connect((i as u16, 0), (j as u16, 0));
                }
            }
        }
        for i in 0..n {
            nodes.push(sim_node(
                i,
                n,
                &layout,
                (pages, sc.replica_cache),
                config,
                &net,
                &clock,
            )?);
        }
        let pagemap = std::fs::File::open("/proc/self/pagemap")
            .map_err(|e| format!("/proc/self/pagemap: {e}"))?;
        Ok(World {
            seed,
            rng,
            net,
            clock,
            nodes,
            pages,
            last: vec![0; pages as usize],
            next_value: 1,
            pending: Vec::new(),
            pagemap,
            lost: vec![false; pages as usize],
            dead: vec![false; n],
            crash: sc.crash,
            flaps: sc.flaps,
            broken: Vec::new(),
            stats: RunStats::default(),
            replica_cache: sc.replica_cache,
            migration: sc.migration,
        })
    }

    fn now(&self) -> u64 {
        self.clock.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_now(&mut self, t: u64) {
        let t = t.max(self.now());
        self.clock.store(t, std::sync::atomic::Ordering::Relaxed);
        self.net.borrow_mut().advance_to(t);
    }

    fn fail(&self, invariant: &'static str, detail: String) -> Failure {
        Failure {
            seed: self.seed,
            step: self.stats.steps,
            invariant,
            detail,
        }
    }

    /// Runs `touches` random touches to completion, checking after every step.
    pub fn run(&mut self, touches: u64) -> Result<RunStats, Failure> {
        let mut made = 0;
        while made < touches || !self.pending.is_empty() {
            self.stats.steps += 1;
            if self.crash.is_some_and(|(_, at)| made >= at) {
                let (n, _) = self.crash.take().expect("checked");
                self.crash_node(usize::from(n));
            }
            if self.flaps > 0 && self.rng.gen_ratio(1, 50) {
                self.flap();
            }
            if self.migration && self.rng.gen_ratio(1, 40) {
                self.move_home();
            }
            self.reconnect();
            let roll = self.rng.gen_range(0..100);
            if made < touches && roll < 25 {
                self.touch();
                made += 1;
            } else if roll < 80 {
                let i = self.rng.gen_range(0..self.nodes.len());
                if !self.dead[i] {
                    self.nodes[i].shard.turn();
                }
            } else {
                self.advance();
            }
            self.complete_touches()?;
            self.check()?;
            if let Some(p) = self
                .pending
                .iter()
                .find(|p| self.now() - p.since > LIVENESS_NS)
            {
                return Err(self.fail(
                    "liveness",
                    format!(
                        "node {} has waited {} ms for {:?} access to page {}",
                        p.node,
                        (self.now() - p.since) / 1_000_000,
                        p.access,
                        p.page
                    ),
                ));
            }
        }
        self.settle_caches()?;
        self.stats.delivered = self.net.borrow().delivered;
        self.stats.restored = self.nodes.iter().map(|n| n.shard.sim_restored()).sum();
        self.stats.cache_evictions = self.nodes.iter().map(|n| n.shard.sim_cache().0).sum();
        Ok(self.stats)
    }

    /// Once the touches are done, every node still in the run comes back within its replica
    /// cache's bound: the evictions it started finish and a page whose residency window kept
    /// it is offered again (turns and clock moves, checked after each as in the run).
    fn settle_caches(&mut self) -> Result<(), Failure> {
        const SETTLE_STEPS: u64 = 200_000;
        let over = |w: &World| {
            (0..w.nodes.len()).find(|&i| !w.out(i) && w.nodes[i].shard.sim_cache().1 > 0)
        };
        let mut steps = 0;
        while let Some(n) = over(self) {
            steps += 1;
            if steps > SETTLE_STEPS {
                let held = self.nodes[n].shard.sim_cache().1;
                return Err(self.fail(
                    "replica cache",
                    format!(
                        "node {n} still holds {held} pages beyond its bound of {} after \
                         {SETTLE_STEPS} steps with nothing else to do",
                        self.replica_cache
                    ),
                ));
            }
            self.stats.steps += 1;
            self.reconnect();
            if self.rng.gen_ratio(3, 4) {
                let i = self.rng.gen_range(0..self.nodes.len());
                if !self.dead[i] {
                    self.nodes[i].shard.turn();
                }
            } else {
                self.advance();
            }
            self.check()?;
        }
        Ok(())
    }

    /// Home migration: the home of a random page moves to another live node that homes
    /// memory (what the placement policy does when one node uses the page most).
    fn move_home(&mut self) {
        let page = self.rng.gen_range(0..self.pages);
        let Some(from) = (0..self.nodes.len())
            .find(|&n| !self.out(n) && self.nodes[n].shard.sim_machine().is_home(page))
        else {
            return;
        };
        let homes = self.nodes[from].shard.sim_machine().layout().homes();
        let to = self.rng.gen_range(0..self.nodes.len());
        let Ok(to_id) = NodeId::new(to as u16) else {
            return;
        };
        if to == from || self.out(to) || !homes.contains(to_id) {
            return;
        }
        if self.nodes[from].shard.sim_move(page, to_id) {
            self.stats.moves += 1;
        }
    }

    /// Breaks the connection between two live nodes (what it carries is lost); it is
    /// connected again within [`RECONNECT_NS`].
    fn flap(&mut self) {
        let n = self.nodes.len();
        let a = self.rng.gen_range(0..n);
        let b = self.rng.gen_range(0..n);
        if a == b || self.out(a) || self.out(b) {
            return;
        }
        let (a, b) = (a.min(b), a.max(b));
        if self.broken.iter().any(|&(x, y, _)| (x, y) == (a, b)) {
            return;
        }
        self.flaps -= 1;
        self.stats.flaps += 1;
        self.net
            .borrow_mut()
            .break_link((a as u16, 0), (b as u16, 0));
        let at = self.now() + self.rng.gen_range(1_000..=RECONNECT_NS);
        self.broken.push((a, b, at));
    }

    /// Connects again the broken connections whose time came, once both ends have heard of
    /// the break (the transport has dropped the old connection).
    fn reconnect(&mut self) {
        let now = self.now();
        let mut i = 0;
        while i < self.broken.len() {
            let (a, b, at) = self.broken[i];
            if self.dead[a] || self.dead[b] {
                self.broken.swap_remove(i);
                continue;
            }
            let (na, nb) = (node_id(a), node_id(b));
            let ready = at <= now
                && self.nodes[a].shard.sim_detached(nb)
                && self.nodes[b].shard.sim_detached(na);
            if !ready {
                i += 1;
                continue;
            }
            self.broken.swap_remove(i);
            self.net.borrow_mut().connect((a as u16, 0), (b as u16, 0));
            for (x, y) in [(a, b), (b, a)] {
                let peer = peer_id(node_id(y), 0);
                let shard = &mut self.nodes[x].shard;
                if let Err(e) = shard.sim_transport().add_sim_peer(peer, (y as u16, 0)) {
                    panic!("reconnecting node {x} to node {y}: {e}");
                }
                shard.sim_peer(node_id(y));
            }
        }
    }

    /// Moves the clock: to the next frame's delivery or the next protocol deadline, whichever
    /// comes first (at least a tick).
    fn advance(&mut self) {
        let net_next = self.net.borrow().next_delivery();
        let timer_next = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.dead[*i])
            .filter_map(|(_, n)| n.shard.sim_next_deadline())
            .chain(self.broken.iter().map(|b| b.2))
            .min();
        let now = self.now();
        let target = [net_next, timer_next]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min()
            .unwrap_or(now + IDLE_TICK_NS);
        self.set_now(target);
    }

    /// Node `n` crashes: its connections break (the others learn it at their next poll)
    /// and it never runs again; its waiting touches die with it.
    fn crash_node(&mut self, n: usize) {
        self.dead[n] = true;
        self.stats.crashes += 1;
        self.net.borrow_mut().crash(n as u16);
        self.pending.retain(|p| p.node != n);
    }

    /// Whether node `n` is out of the run: crashed, or stopped (a home died, or one of its
    /// touches found a page lost; the real node would report it and exit).
    fn out(&self, n: usize) -> bool {
        let shard = &self.nodes[n].shard;
        self.dead[n] || shard.sim_machine().fatal().is_some() || shard.sim_stopped().is_some()
    }

    /// A random thread on a random node touches a random page.
    fn touch(&mut self) {
        let node = self.rng.gen_range(0..self.nodes.len());
        if self.out(node) {
            return;
        }
        let page = self.rng.gen_range(0..self.pages);
        let access = if self.rng.gen_bool(0.4) {
            Access::Write
        } else {
            Access::Read
        };
        let since = self.now();
        self.pending.push(Pending {
            node,
            page,
            access,
            since,
        });
        // A touch of a page already allowed completes without a fault (no kernel event).
        if !allowed(self.access_of(node, page), access) {
            self.nodes[node].shard.sim_fault(page, access);
        }
    }

    fn access_of(&self, node: usize, page: u64) -> PageAccess {
        self.nodes[node]
            .shard
            .sim_machine()
            .local_access(page)
            .unwrap_or(PageAccess::Invalid)
    }

    /// Performs the touches whose access the protocol now allows (on the real memory).
    fn complete_touches(&mut self) -> Result<(), Failure> {
        let mut i = 0;
        while i < self.pending.len() {
            let p = self.pending[i];
            let acc = self.access_of(p.node, p.page);
            if self.out(p.node) {
                // The node stopped (a home died): its touches fail with the cluster.
                self.stats.failed += 1;
                self.pending.swap_remove(i);
                continue;
            }
            if acc == PageAccess::Lost {
                self.stats.failed += 1;
                self.lost[p.page as usize] = true;
                self.pending.swap_remove(i);
                continue;
            }
            if !allowed(acc, p.access) {
                // The kernel wakes a waiting thread whenever the page's mapping changes; it
                // touches again and faults again if the access is still not allowed. A touch
                // with no waiter and no deferred fault for its page is such a thread.
                let shard = &self.nodes[p.node].shard;
                if shard.sim_machine().waiters_on(p.page) == 0 && !shard.sim_deferred(p.page) {
                    self.stats.refaults += 1;
                    self.nodes[p.node].shard.sim_fault(p.page, p.access);
                }
                i += 1;
                continue;
            }
            self.pending.swap_remove(i);
            self.stats.accesses += 1;
            let (present, wp) = self.page_flags(p.node, p.page)?;
            if !present || (p.access == Access::Write && wp) {
                return Err(self.fail(
                    "protocol view matches memory",
                    format!(
                        "node {} page {}: the protocol allows {:?}, the page tables say present={present} write-protected={wp}",
                        p.node, p.page, p.access
                    ),
                ));
            }
            let addr = self.nodes[p.node].region.page_addr(p.page) as *mut u64;
            if p.access == Access::Write {
                let v = self.next_value;
                self.next_value += 1;
                // SAFETY: the page is present and not write-protected (checked above), so the
                // store cannot fault; this thread is the only one touching the region.
                unsafe { addr.write_volatile(v) };
                self.last[p.page as usize] = v;
            }
        }
        Ok(())
    }

    /// `(present, uffd write-protected)` from `/proc/self/pagemap` for `page` on `node`.
    fn page_flags(&self, node: usize, page: u64) -> Result<(bool, bool), Failure> {
        let addr = self.nodes[node].region.page_addr(page) as u64;
        let mut e = [0u8; 8];
        // SAFETY: pread into an 8-byte buffer we own, from our own pagemap fd.
        let r = unsafe {
            libc::pread(
                self.pagemap.as_raw_fd(),
                e.as_mut_ptr().cast(),
                8,
                ((addr / 4096) * 8) as libc::off_t,
            )
        };
        if r != 8 {
            return Err(self.fail(
                "protocol view matches memory",
                format!(
                    "cannot read /proc/self/pagemap: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
        let v = u64::from_le_bytes(e);
        Ok((v >> 63 & 1 == 1, v >> 57 & 1 == 1))
    }

    /// The invariants over every page.
    fn check(&self) -> Result<(), Failure> {
        for page in 0..self.pages {
            let mut writers = Vec::new();
            let mut readers = Vec::new();
            for node in 0..self.nodes.len() {
                if self.dead[node] {
                    continue;
                }
                let access = self.access_of(node, page);
                // A node out of the run (it stopped: a home it depends on was declared dead,
                // as when both ends of a link broken past the resume window declare each
                // other dead) exits in a real cluster: its copies no longer count as readers
                // or writers. Its page tables must still match its protocol view.
                match access {
                    PageAccess::Writable if !self.out(node) => writers.push(node),
                    PageAccess::ReadOnly if !self.out(node) => readers.push(node),
                    _ => {}
                }
                // What a thread could do without asking the protocol must be what the
                // protocol allows: no mapping where it holds nothing, no write where it holds
                // a read-only copy.
                let (present, wp) = self.page_flags(node, page)?;
                let leak = match access {
                    PageAccess::Invalid | PageAccess::Lost => present,
                    PageAccess::ReadOnly => present && !wp,
                    PageAccess::Writable => false,
                };
                if leak {
                    return Err(self.fail(
                        "protocol view matches memory",
                        format!(
                            "node {node} page {page}: the protocol says {access:?}, the page tables say present={present} write-protected={wp}"
                        ),
                    ));
                }
            }
            if writers.len() > 1 || (writers.len() == 1 && !readers.is_empty()) {
                return Err(self.fail(
                    "single writer / multiple readers",
                    format!("page {page}: writable on {writers:?}, read-only on {readers:?}"),
                ));
            }
            let lost = self.lost[page as usize]
                || (0..self.nodes.len()).any(|n| {
                    !self.dead[n]
                        && matches!(
                            self.nodes[n].shard.sim_machine().dir_state(page),
                            Some(coherence::DirState::Lost)
                        )
                });
            if lost {
                continue;
            }
            for node in writers.into_iter().chain(readers) {
                let (present, _) = self.page_flags(node, page)?;
                if !present {
                    return Err(self.fail(
                        "protocol view matches memory",
                        format!("node {node} page {page}: mapped per the protocol, absent in the page tables"),
                    ));
                }
                let addr = self.nodes[node].region.page_addr(page) as *const u64;
                // SAFETY: the page is present (checked above): the load cannot fault.
                let v = unsafe { addr.read_volatile() };
                if v != self.last[page as usize] {
                    return Err(self.fail(
                        "every read returns the last write",
                        format!(
                            "node {node} page {page} holds {v}, the last write was {}",
                            self.last[page as usize]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn node_id(i: usize) -> NodeId {
    NodeId::new(i as u16).expect("small ids")
}

fn allowed(have: PageAccess, want: Access) -> bool {
    match want {
        Access::Read => matches!(have, PageAccess::ReadOnly | PageAccess::Writable),
        Access::Write => have == PageAccess::Writable,
    }
}

/// Node `i` of `n`: one shard over its own region, a simulated transport with a connection
/// to every other node, a manual clock.
fn sim_node(
    i: usize,
    n: usize,
    layout: &Layout,
    (pages, replica_cache): (u64, usize),
    config: Config,
    net: &SharedNet,
    clock: &Arc<AtomicU64>,
) -> Result<SimNode, String> {
    let me = NodeId::new(i as u16).expect("small ids");
    let machine =
        Machine::new(me, layout.clone(), Partition::WHOLE, config).map_err(|e| e.to_string())?;
    let region = Arc::new(Region::new(pages, pages, 1).map_err(|e| e.to_string())?);
    let mut transport = SimTransport::new((i as u16, 0), net.clone(), n.max(1));
    for j in 0..n {
        if j != i {
            let peer = peer_id(NodeId::new(j as u16).expect("small ids"), 0);
            transport
                .add_sim_peer(peer, (j as u16, 0))
                .map_err(|e| e.to_string())?;
        }
    }
    let doorbells: Arc<[Doorbell]> = vec![Doorbell::new().map_err(|e| e.to_string())?].into();
    let setup = ShardSetup {
        index: 0,
        count: 1,
        machine,
        layout: layout.clone(),
        transport,
        conns: Vec::new(),
        region: region.clone(),
        inbox: Vec::new(),
        outbox: vec![None],
        doorbells,
        stats: Arc::new(ShardStats::default()),
        state: Arc::new(NodeState::new(1)),
        idle: IdlePolicy::Block,
        sessions: (4096, 1024),
        resume_window: std::time::Duration::from_nanos(RESUME_WINDOW_NS),
        redial: None,
        retry_limit: config.max_active_pages as usize,
        mailbox: Arc::new(Mailbox::default()),
        traced: Vec::new(),
        trace: None,
        clock: Clock::Manual(clock.clone()),
        replica_cache,
    };
    let mut shard = Shard::new(setup).map_err(|e| e.to_string())?;
    for j in 0..n {
        if j != i {
            shard.sim_peer(NodeId::new(j as u16).expect("small ids"));
        }
    }
    Ok(SimNode { shard, region })
}
