//! Tunables of a protocol instance and their limits.

use thiserror::Error;

/// Most page records one instance can have (13-bit index in the local state).
pub const MAX_ACTIVE_PAGES: u32 = (1 << 13) - 1;
/// Most home transaction records one instance can have (16-bit link).
pub const MAX_HOME_TXNS: u32 = u16::MAX as u32;

/// Errors in a [`Config`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A pool size out of its range.
    #[error("{what} is {value}, must be in 1..={max}")]
    Pool {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: u32,
        /// The limit.
        max: u32,
    },
    /// Fewer waiters than pages that may wait.
    #[error("max_waiters ({waiters}) must be at least max_active_pages ({pages}) so every busy page can hold one waiter")]
    Waiters {
        /// max_waiters.
        waiters: u32,
        /// max_active_pages.
        pages: u32,
    },
}

/// Tunables of one protocol instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Residency window Δ (ns): how long after acquiring a page a node defers
    /// an invalidation or forward for it. 0 turns it off.
    pub residency_ns: u64,
    /// An invalidation/forward arriving within this time (ns) of acquiring
    /// the page counts as ping-pong in [`super::Stats::ping_pong`].
    pub ping_pong_window_ns: u64,
    /// Ping-pong damping (docs/protocol.md §9): a page taken away from this node within
    /// `ping_pong_window_ns` of acquiring it is held longer the next time it is acquired — this
    /// many ns after its first such take-away, twice that after the second, up to 8 times (0
    /// turns damping off). The per-page levels live in a small direct-mapped table (256 pages
    /// per instance) and fall back to zero once a page has been left alone for a while.
    pub ping_pong_hold_ns: u64,
    /// Delay before re-sending a request the home refused as busy (ns).
    pub retry_backoff_ns: u64,
    /// Page records (pages with an outstanding request, waiters, a deferred
    /// operation or a residency hold), `1..=8191`.
    pub max_active_pages: u32,
    /// Waiting faults over all pages (coalesced by `(token, access)`).
    pub max_waiters: u32,
    /// Waiting faults on one page.
    pub max_waiters_per_page: u32,
    /// Home transaction records (active + queued), `1..=65535`.
    pub max_home_txns: u32,
    /// Directory entries scanned per step by the death clean-up.
    pub cleanup_chunk: u32,
    /// Home migration (docs/protocol.md §12): a page's home may move to another node that
    /// contributes memory ([`super::Input::MoveHome`]). Every node of a cluster must agree:
    /// a node without it refuses the migration messages as violations. With it, every
    /// contributing node keeps directory entries for the whole address space (zeroed memory,
    /// resident only where used).
    pub migration: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            residency_ns: 0,
            ping_pong_window_ns: 1_000_000,
            ping_pong_hold_ns: 20_000,
            retry_backoff_ns: 50_000,
            max_active_pages: 1024,
            max_waiters: 4096,
            max_waiters_per_page: 64,
            max_home_txns: 4096,
            cleanup_chunk: 4096,
            migration: false,
        }
    }
}

impl Config {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |what, value: u32, max| {
            if value == 0 || value > max {
                Err(ConfigError::Pool { what, value, max })
            } else {
                Ok(())
            }
        };
        check("max_active_pages", self.max_active_pages, MAX_ACTIVE_PAGES)?;
        check("max_home_txns", self.max_home_txns, MAX_HOME_TXNS)?;
        check("max_waiters", self.max_waiters, 1 << 24)?;
        check("max_waiters_per_page", self.max_waiters_per_page, 1 << 16)?;
        check("cleanup_chunk", self.cleanup_chunk, 1 << 24)?;
        if self.max_waiters < self.max_active_pages {
            return Err(ConfigError::Waiters {
                waiters: self.max_waiters,
                pages: self.max_active_pages,
            });
        }
        Ok(())
    }

    /// Home transaction records for a cluster of `requester_instances`
    /// protocol instances (all shards of all nodes, this one included) that
    /// each keep at most `max_active_pages` requests outstanding. Twice that
    /// product: each instance's outstanding requests, plus as many
    /// transactions that outlive their requester's interest (a forwarded
    /// grant waits for the owner's `FwdAck` after the requester got its data,
    /// or a recall is pending after a crash). Capped at [`MAX_HOME_TXNS`].
    /// Beyond the pool the home refuses with `Nack(busy)` and the requester
    /// retries after `retry_backoff_ns`: safe, but not starvation-free.
    pub fn home_txns_needed(requester_instances: u32, max_active_pages: u32) -> u32 {
        requester_instances
            .saturating_mul(max_active_pages)
            .saturating_mul(2)
            .clamp(1, MAX_HOME_TXNS)
    }

    /// How long a page record keeps its acquisition time, for a residency window of
    /// `window_ns`.
    pub(crate) fn hold_ns(&self, window_ns: u64) -> u64 {
        window_ns.max(self.ping_pong_window_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_limits_are_enforced() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            max_active_pages: 8192,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Pool {
                what: "max_active_pages",
                ..
            })
        ));
        let c = Config {
            max_home_txns: 0,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Pool {
                what: "max_home_txns",
                ..
            })
        ));
        let c = Config {
            max_waiters: 10,
            max_active_pages: 20,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Waiters { .. })));
    }

    #[test]
    fn home_pool_sizing() {
        assert_eq!(Config::home_txns_needed(16, 64), 2048);
        assert_eq!(Config::home_txns_needed(0, 64), 1);
        assert_eq!(Config::home_txns_needed(64 * 8, 8191), MAX_HOME_TXNS);
    }
}
