//! Rate-limited logging for messages a remote peer can trigger. One token bucket per logger;
//! suppressed messages are counted and reported with the next one that passes (as the
//! `suppressed` field of the `tracing` event).

use std::fmt;
use std::time::Instant;

/// A token bucket: `burst` messages at once, refilled at `per_sec` messages per second.
#[derive(Debug)]
pub struct LogLimiter {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing `burst` messages at once and `per_sec` per second after that.
    pub fn new(burst: u32, per_sec: u32) -> LogLimiter {
        LogLimiter {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst.max(1)),
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a message may be logged at `now`; `Some(n)` carries the number of messages
    /// suppressed since the last one allowed.
    pub fn allow_at(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Logs `msg` as a warning (through `tracing`) unless rate-limited.
    pub fn warn(&mut self, msg: fmt::Arguments<'_>) {
        match self.allow_at(Instant::now()) {
            Some(0) => tracing::warn!("{msg}"),
            Some(n) => tracing::warn!(suppressed = n, "{msg}"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(2, 1);
        assert_eq!(l.allow_at(t0), Some(0));
        assert_eq!(l.allow_at(t0), Some(0));
        assert_eq!(l.allow_at(t0), None);
        assert_eq!(l.allow_at(t0 + Duration::from_millis(100)), None);
        assert_eq!(l.allow_at(t0 + Duration::from_millis(1200)), Some(2));
    }
}
