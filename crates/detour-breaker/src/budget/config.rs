//! The retry budget's configuration.

use std::time::Duration;

use serde::Deserialize;

use crate::error::bad;
use detour_core::{check_duration, InvalidConfig, Zero};

/// The shortest window: it is kept in 10 steps of at least 1 ms.
const MIN_WINDOW: Duration = Duration::from_millis(10);

/// How many retries a [`RetryBudget`](crate::RetryBudget) allows.
///
/// Over any `window`, retries may number `ratio × requests + min_per_second ×
/// window` (in seconds); a new budget also lends `min_per_second ×`
/// [`START_SECONDS`](crate::budget::START_SECONDS) once, until its traffic
/// earns as much (see [`RetryBudget`](crate::RetryBudget)). The `detour`
/// binary reads `ratio` from the retry table's `budget_ratio` key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// Retries allowed per request over the window. Default 0.2: at most one
    /// attempt in six is a retry, so an outage costs the backends at most
    /// 1.2× the normal load, not `1 + max_retries` times.
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic, so a quiet service can
    /// still retry. Default 10.
    pub min_per_second: u32,
    /// How far back requests and retries are counted. Default 1 s, so that
    /// the budget binds against the traffic of the moment: when clients slow
    /// down during an outage (each failed request waits out its backoffs), a
    /// longer window still holds the healthy traffic before it, and that
    /// traffic pays for the outage's retries.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(1),
        }
    }
}

impl BudgetConfig {
    /// Check every field.
    ///
    /// # Errors
    /// [`InvalidConfig`] naming the first field whose value makes no sense,
    /// e.g. `budget.ratio: must be a number >= 0.0, got -1`.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        check_duration("budget.window", self.window, Zero::Refused)?;
        if !(self.ratio.is_finite() && self.ratio >= 0.0) {
            return bad(
                "budget.ratio",
                format!("must be a number >= 0.0, got {}", self.ratio),
            );
        }
        if self.window < MIN_WINDOW {
            return bad(
                "budget.window",
                format!("must be at least {MIN_WINDOW:?}, got {:?}", self.window),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = BudgetConfig::default();
        assert_eq!(
            (c.ratio, c.min_per_second, c.window),
            (0.2, 10, Duration::from_secs(1))
        );
        c.validate().unwrap();
        let c: BudgetConfig = toml::from_str("ratio = 0.1\nwindow = \"30s\"").unwrap();
        assert_eq!((c.ratio, c.min_per_second), (0.1, 10));
        assert_eq!(c.window, Duration::from_secs(30));
        assert!(toml::from_str::<BudgetConfig>("budget_ratio = 0.1").is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let mut c = BudgetConfig {
            ratio: -1.0,
            ..Default::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "budget.ratio: must be a number >= 0.0, got -1"
        );
        c.ratio = f64::NAN;
        assert_eq!(c.validate().unwrap_err().field, "budget.ratio");
        c.ratio = 0.0;
        c.window = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().field, "budget.window");
        c.window = detour_core::MAX_DURATION + Duration::from_secs(1);
        assert_eq!(c.validate().unwrap_err().field, "budget.window");
    }
}
