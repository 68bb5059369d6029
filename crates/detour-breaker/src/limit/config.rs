//! The concurrency limit's configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::bad;
use detour_core::{check_duration, InvalidConfig, Zero};

/// How many requests a [`ConcurrencyLimit`](crate::ConcurrencyLimit) lets run
/// and wait.
///
/// The defaults are Envoy's circuit-breaker thresholds (1024 requests, 1024
/// pending), plus a bounded wait so nothing queues forever.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitConfig {
    /// Requests in flight at once. Default 1024.
    pub max_in_flight: u32,
    /// Requests that may wait for a slot when all are taken; beyond that they
    /// are refused at once (503). 0 refuses every request that finds no slot.
    /// Default 1024.
    pub max_pending: u32,
    /// Longest wait for a slot before the request is refused. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            max_in_flight: 1024,
            max_pending: 1024,
            max_wait: Duration::from_secs(1),
        }
    }
}

impl LimitConfig {
    /// Check every field.
    ///
    /// # Errors
    /// [`InvalidConfig`] naming the first field whose value makes no sense,
    /// e.g. `limit.max_in_flight: must be >= 1`.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        check_duration("limit.max_wait", self.max_wait, Zero::Allowed)?;
        if self.max_in_flight == 0 {
            return bad("limit.max_in_flight", "must be >= 1");
        }
        if self.max_pending > 0 && self.max_wait.is_zero() {
            return bad(
                "limit.max_wait",
                "must be > 0 when max_pending > 0 (set max_pending = 0 to never wait)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c: LimitConfig = toml::from_str("max_in_flight = 8\nmax_wait = \"250ms\"").unwrap();
        assert_eq!(c.max_in_flight, 8);
        assert_eq!(c.max_pending, 1024);
        assert_eq!(c.max_wait, Duration::from_millis(250));
        c.validate().unwrap();
        assert!(toml::from_str::<LimitConfig>("max_inflight = 8").is_err());
        let zero = LimitConfig {
            max_in_flight: 0,
            ..Default::default()
        };
        assert_eq!(
            zero.validate().unwrap_err().to_string(),
            "limit.max_in_flight: must be >= 1"
        );
        let no_wait = LimitConfig {
            max_wait: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(no_wait.validate().unwrap_err().field, "limit.max_wait");
        let never_waits = LimitConfig {
            max_pending: 0,
            max_wait: Duration::ZERO,
            ..Default::default()
        };
        never_waits.validate().unwrap();
    }
}
