//! A simulated cluster's shape and workload, derived from a seed.

use super::super::inject::Bug;
use super::super::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a test family exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Everything at random: sizes, shards, workloads, pools, residency,
    /// evictions, sometimes compute-node crashes.
    Mixed,
    /// Several shards per node (each instance sees only its pages).
    Sharded,
    /// Compute-only nodes crash at random moments.
    Crash,
    /// A home node crashes: the cluster must stop cleanly.
    HomeDeath,
    /// 12 to 16 nodes.
    Large,
    /// A home node leaves while homes move (every seed), sometimes while compute nodes crash.
    Leave,
}

/// How threads choose their accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// Random pages, some writes.
    Uniform,
    /// Random pages, few writes (replication).
    ReadMostly,
    /// Most accesses on one page from every node.
    HotPage,
    /// Two nodes write one page in turn.
    PingPong,
    /// Every node writes its own part of two shared pages.
    FalseSharing,
    /// Read a page, then write it (upgrades).
    ReadModifyWrite,
    /// Each thread picks one of the above.
    Mix,
}

const PROFILES: [Profile; 7] = [
    Profile::Uniform,
    Profile::ReadMostly,
    Profile::HotPage,
    Profile::PingPong,
    Profile::FalseSharing,
    Profile::ReadModifyWrite,
    Profile::Mix,
];

/// Everything that defines one run.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) seed: u64,
    pub(crate) family: Family,
    /// Pages contributed by each node (0 = compute-only).
    pub(crate) contrib: Vec<u64>,
    /// First page number of the cluster.
    pub(crate) base_page: u64,
    /// Protocol instances per node.
    pub(crate) shards: Vec<u32>,
    pub(crate) threads: usize,
    pub(crate) profile: Profile,
    pub(crate) write_pct: u32,
    pub(crate) think_max_ns: u64,
    pub(crate) config: Config,
    /// Per-page FIFO (weaker than per node pair) on the network.
    pub(crate) fifo_per_page: bool,
    pub(crate) delay_max_ns: u64,
    /// Percent of messages that are slow (x10) and very slow (x100).
    pub(crate) slow_pct: u32,
    /// Operations all threads perform in total.
    pub(crate) ops: u64,
    /// Evictions per 100 operations.
    pub(crate) evict_pct: u32,
    /// Nodes to crash, each when this many operations have been issued.
    pub(crate) crashes: Vec<(usize, u64)>,
    pub(crate) detect_max_ns: u64,
    pub(crate) bug: Option<Bug>,
    /// Sequential-prefetch depth: a read fault on page `p` also prefetches `p+1 ..
    /// p+depth-1` (0: off).
    pub(crate) prefetch: u32,
    /// Home moves per 100 operations (home migration, `config.migration`; 0: off).
    pub(crate) move_pct: u32,
    /// A home node's leave (docs/protocol.md §13): (leaving node, successor, operations
    /// issued when it starts). Only with home migration and two homes or more.
    pub(crate) retire: Option<(usize, usize, u64)>,
}

impl Scenario {
    /// The scenario of `seed` in `family`.
    pub(crate) fn new(seed: u64, family: Family) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed);
        let nodes = match family {
            Family::Large => rng.gen_range(12..=16),
            _ if rng.gen_bool(0.1) => rng.gen_range(7..=16),
            _ => rng.gen_range(2..=6),
        };
        let crash_family = matches!(family, Family::Crash)
            || (matches!(family, Family::Mixed | Family::Leave) && rng.gen_bool(0.15));
        // Contributions: a few homes; crash scenarios need compute-only nodes.
        let mut contrib: Vec<u64> = (0..nodes)
            .map(|_| {
                if rng.gen_bool(0.7) {
                    rng.gen_range(1..=6)
                } else {
                    0
                }
            })
            .collect();
        if contrib.iter().all(|&c| c == 0) {
            contrib[0] = rng.gen_range(1..=6);
        }
        if crash_family && contrib.iter().all(|&c| c > 0) {
            let i = rng.gen_range(1..nodes);
            contrib[i] = 0;
        }
        if family == Family::HomeDeath && contrib.iter().filter(|&&c| c > 0).count() < 1 {
            contrib[0] = 2;
        }
        if family == Family::Leave && contrib.iter().filter(|&&c| c > 0).count() < 2 {
            // Two homes at least: one leaves, one takes its pages.
            let k = (0..nodes).find(|&i| contrib[i] == 0).unwrap_or(1);
            contrib[k] = 3;
        }
        let sharded = family == Family::Sharded || (family == Family::Mixed && rng.gen_bool(0.2));
        let shards = (0..nodes)
            .map(|_| if sharded { rng.gen_range(1..=3) } else { 1 })
            .collect::<Vec<u32>>();
        let shards: Vec<u32> = shards;
        let threads = rng.gen_range(1..=3);
        // Requester pools: sometimes tiny (local busy outcomes, records
        // reclaimed from residency holds).
        let (max_active_pages, max_waiters, max_waiters_per_page) = if rng.gen_bool(0.15) {
            let p = rng.gen_range(1..=3);
            (p, p + rng.gen_range(0..=3), rng.gen_range(1..=2))
        } else {
            (64, 256, 16)
        };
        // Home pools: sized so no request is refused, or sometimes tiny (the
        // busy/retry path; liveness then only means "drains").
        let instances: u32 = shards.iter().sum();
        let max_home_txns = if rng.gen_bool(0.15) {
            rng.gen_range(1..=3)
        } else {
            Config::home_txns_needed(instances, max_active_pages)
        };
        let residency_ns = if rng.gen_bool(0.5) {
            0
        } else {
            rng.gen_range(1_000..=30_000)
        };
        let config = Config {
            residency_ns,
            ping_pong_window_ns: if rng.gen_bool(0.3) {
                0
            } else {
                rng.gen_range(5_000..=100_000)
            },
            ping_pong_hold_ns: 0,
            retry_backoff_ns: rng.gen_range(2_000..=40_000),
            max_active_pages,
            max_waiters,
            max_waiters_per_page,
            max_home_txns,
            cleanup_chunk: rng.gen_range(1..=8),
            migration: false,
        };
        let mut crashes = Vec::new();
        let ops = rng.gen_range(150..=1200u64) * if family == Family::Large { 3 } else { 1 };
        let compute: Vec<usize> = (0..nodes).filter(|&i| contrib[i] == 0).collect();
        if crash_family && !compute.is_empty() {
            let k = rng.gen_range(1..=compute.len());
            for &victim in compute.iter().take(k) {
                crashes.push((victim, rng.gen_range(0..ops)));
            }
        }
        if family == Family::HomeDeath {
            let homes: Vec<usize> = (0..nodes).filter(|&i| contrib[i] > 0).collect();
            let victim = homes[rng.gen_range(0..homes.len())];
            crashes.push((victim, rng.gen_range(ops / 4..ops)));
        }
        // Its own stream, so the rest of each seed's scenario stays what it was: home
        // migration in half the seeds, with a few to many moves.
        let move_pct = {
            let mut r = StdRng::seed_from_u64(seed ^ 0x6d6f_7665_686f_6d65);
            if family == Family::Leave {
                [10, 30][r.gen_range(0..2)]
            } else if r.gen_bool(0.5) {
                [2, 10, 30][r.gen_range(0..3)]
            } else {
                0
            }
        };
        // Ping-pong damping: its own stream too.
        let ping_pong_hold_ns = {
            let mut r = StdRng::seed_from_u64(seed ^ 0x7069_6e67_706f_6e67);
            if r.gen_bool(0.3) {
                0
            } else {
                r.gen_range(1_000..=20_000)
            }
        };
        let config = Config {
            migration: move_pct > 0,
            ping_pong_hold_ns,
            ..config
        };
        // A home leaves in half the seeds with migration: its own stream too.
        let retire = {
            let mut r = StdRng::seed_from_u64(seed ^ 0x7265_7469_7265_2121);
            // Not the home a HomeDeath scenario kills: its death during the leave stops the
            // cluster like any home's.
            let victims: Vec<usize> = crashes.iter().map(|c| c.0).collect();
            let homes: Vec<usize> = (0..nodes)
                .filter(|&i| contrib[i] > 0 && !victims.contains(&i))
                .collect();
            if move_pct > 0 && homes.len() >= 2 && (family == Family::Leave || r.gen_bool(0.5)) {
                let d = homes[r.gen_range(0..homes.len())];
                let rest: Vec<usize> = homes.iter().copied().filter(|&h| h != d).collect();
                Some((d, rest[r.gen_range(0..rest.len())], r.gen_range(0..ops)))
            } else {
                None
            }
        };
        Self {
            seed,
            family,
            move_pct,
            retire,
            contrib,
            base_page: if rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(1..1_000_000)
            },
            shards,
            threads,
            profile: PROFILES[rng.gen_range(0..PROFILES.len())],
            write_pct: rng.gen_range(10..=70),
            think_max_ns: [500, 5_000, 50_000][rng.gen_range(0..3)],
            config,
            fifo_per_page: rng.gen_bool(0.5),
            delay_max_ns: [2_000, 20_000, 100_000][rng.gen_range(0..3)],
            slow_pct: rng.gen_range(0..=10),
            ops,
            evict_pct: [0, 5, 30][rng.gen_range(0..3)],
            crashes,
            detect_max_ns: rng.gen_range(1_000..=300_000),
            bug: None,
            // Its own stream, so the rest of each seed's scenario stays what it was.
            prefetch: {
                let mut r = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
                if r.gen_bool(0.4) {
                    r.gen_range(2..=4)
                } else {
                    0
                }
            },
        }
    }

    /// Whether faults must complete in a bounded number of steps: home pools
    /// sized with `Config::home_txns_needed`. Below that, a busy home refuses
    /// and requesters retry, which is safe but may starve a requester for a
    /// while; such runs must still drain.
    pub(crate) fn strict_liveness(&self) -> bool {
        let instances: u32 = self.shards.iter().sum();
        self.config.max_home_txns
            >= Config::home_txns_needed(instances, self.config.max_active_pages)
    }

    /// Number of pages in the cluster.
    pub(crate) fn pages(&self) -> u64 {
        self.contrib.iter().sum()
    }

    /// One line describing the scenario.
    pub(crate) fn describe(&self) -> String {
        format!(
            "family={:?} nodes={} contrib={:?} base_page={} shards={:?} threads={} profile={:?} \
             write%={} ops={} evict%={} residency={}ns pingpong={}ns damping={}ns pools(rec={},wait={},wpp={},txn={}) \
             fifo_per_page={} delay_max={}ns slow%={} crashes={:?} prefetch={} move%={} retire={:?} bug={:?}",
            self.family,
            self.contrib.len(),
            self.contrib,
            self.base_page,
            self.shards,
            self.threads,
            self.profile,
            self.write_pct,
            self.ops,
            self.evict_pct,
            self.config.residency_ns,
            self.config.ping_pong_window_ns,
            self.config.ping_pong_hold_ns,
            self.config.max_active_pages,
            self.config.max_waiters,
            self.config.max_waiters_per_page,
            self.config.max_home_txns,
            self.fifo_per_page,
            self.delay_max_ns,
            self.slow_pct,
            self.crashes,
            self.prefetch,
            self.move_pct,
            self.retire,
            self.bug,
        )
    }

    /// A profile for one thread (Mix picks one per thread).
    pub(crate) fn thread_profile(&self, rng: &mut StdRng) -> Profile {
        match self.profile {
            Profile::Mix => PROFILES[rng.gen_range(0..PROFILES.len() - 1)],
            p => p,
        }
    }
}
