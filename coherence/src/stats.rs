//! Plain counters a protocol instance keeps; the shard publishes them.

/// Counters of one protocol instance (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Faults received.
    pub faults: u64,
    /// Faults that joined a request already outstanding for the page.
    pub faults_coalesced: u64,
    /// Faults refused for lack of record or waiter space (caller retries).
    pub faults_busy: u64,
    /// Requests issued (remote or to the local directory).
    pub requests: u64,
    /// Read requests issued ahead of any fault ([`super::Input::Prefetch`]).
    pub prefetches: u64,
    /// Requests re-issued after a busy refusal.
    pub retries: u64,
    /// Transactions started at this home.
    pub txns: u64,
    /// Invalidations sent.
    pub invalidations: u64,
    /// Forwards sent.
    pub forwards: u64,
    /// Upgrades granted without data.
    pub upgrades: u64,
    /// Pages installed (data received or zero-filled).
    pub installs: u64,
    /// Busy refusals sent by this home.
    pub nacks_busy: u64,
    /// Invalidations or forwards (or home-copy take-overs) within the
    /// ping-pong window of the acquisition.
    pub ping_pong: u64,
    /// Invalidations or forwards deferred by the residency window.
    pub deferred: u64,
    /// Acquisitions held longer than the configured residency window because the page
    /// ping-ponged (damping, docs/protocol.md §9).
    pub ping_pong_held: u64,
    /// Clean evictions started.
    pub evictions_clean: u64,
    /// Dirty evictions (write-backs) started.
    pub evictions_dirty: u64,
    /// Evictions the home refused as busy.
    pub evictions_refused: u64,
    /// Pages this home declared lost.
    pub pages_lost: u64,
    /// Recalls sent (forward whose owner died).
    pub recalls: u64,
    /// Messages ignored because their sender is known dead.
    pub late_messages: u64,
    /// Protocol violations seen (a peer or this instance is buggy).
    pub violations: u64,
    /// Home moves started here ([`super::Input::MoveHome`]).
    pub moves_started: u64,
    /// Pages whose home moved away from here.
    pub moves_out: u64,
    /// Pages whose home moved here.
    pub moves_in: u64,
    /// Requests and evictions this node answered `Nack(Moved)` (it was the page's home).
    pub redirects: u64,
    /// This node's requests sent again to a new home after a `Nack(Moved)`.
    pub redirected: u64,
    /// Pointers this leaving node handed to its successor (docs/protocol.md §13).
    pub pointers_sent: u64,
    /// Pointers from a leaving node this successor kept.
    pub pointers_taken: u64,
    /// Pointers from a leaving node this successor dropped (it knew of a newer move).
    pub pointers_stale: u64,
}
