//! Idle policies: what a shard does when a loop turn finds no work.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// See the module documentation and DESIGN.md ("Threading model").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Busy-poll forever (lowest latency; one CPU per shard, PM QoS held at 0).
    Spin,
    /// Busy-poll for a bounded time after the last work, then sleep in the transport's wait
    /// with the userfaultfd and the doorbell watched.
    Hybrid {
        /// How long to spin before sleeping.
        spin: Duration,
    },
    /// Sleep as soon as a turn finds no work.
    Block,
}

/// Default spin time of the hybrid policy.
pub const DEFAULT_HYBRID_SPIN: Duration = Duration::from_micros(50);

impl IdlePolicy {
    /// Whether shards ever spin (then the node holds `/dev/cpu_dma_latency` at 0).
    pub fn spins(self) -> bool {
        !matches!(self, IdlePolicy::Block)
    }
}

impl fmt::Display for IdlePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdlePolicy::Spin => write!(f, "spin"),
            IdlePolicy::Hybrid { spin } => write!(f, "hybrid({}us)", spin.as_micros()),
            IdlePolicy::Block => write!(f, "block"),
        }
    }
}

/// An idle policy that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad idle policy {0:?}: use spin, hybrid, hybrid:<microseconds> or block")]
pub struct IdlePolicyError(pub String);

impl FromStr for IdlePolicy {
    type Err = IdlePolicyError;

    /// `spin`, `block`, `hybrid` or `hybrid:<µs>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdlePolicyError(s.to_string());
        match s {
            "spin" => Ok(IdlePolicy::Spin),
            "block" => Ok(IdlePolicy::Block),
            "hybrid" => Ok(IdlePolicy::Hybrid {
                spin: DEFAULT_HYBRID_SPIN,
            }),
            _ => {
                let us = s.strip_prefix("hybrid:").ok_or_else(bad)?;
                let us: u64 = us.parse().map_err(|_| bad())?;
                Ok(IdlePolicy::Hybrid {
                    spin: Duration::from_micros(us),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("spin".parse(), Ok(IdlePolicy::Spin));
        assert_eq!("block".parse(), Ok(IdlePolicy::Block));
        assert_eq!(
            "hybrid".parse(),
            Ok(IdlePolicy::Hybrid {
                spin: DEFAULT_HYBRID_SPIN
            })
        );
        let h: IdlePolicy = "hybrid:200".parse().unwrap();
        assert_eq!(h.to_string(), "hybrid(200us)");
        assert!("hybrid:x".parse::<IdlePolicy>().is_err());
        assert!("fast".parse::<IdlePolicy>().is_err());
        assert!(!IdlePolicy::Block.spins());
        assert!(h.spins());
    }
}
