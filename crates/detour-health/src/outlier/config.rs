//! The `[upstreams.<name>.outlier]` table.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use detour_core::{check_duration, InvalidConfig, Zero};

/// Passive outlier detection for one upstream (`[upstreams.<name>.outlier]`),
/// modelled on Envoy's.
///
/// Every field has a documented default; [`validate`](Self::validate) rejects
/// nonsense with the field named. A consecutive-failure threshold of 0
/// disables that detector.
///
/// ```
/// use std::time::Duration;
/// use detour_health::OutlierConfig;
///
/// let config: OutlierConfig = toml::from_str(r#"
///     consecutive_5xx = 3
///     base_ejection = "10s"
///     max_ejection_percent = 34
///     [failure_percentage]
///     enabled = true
/// "#).unwrap();
/// let config = config.validate().unwrap();
/// assert_eq!(config.base_ejection, Duration::from_secs(10));
/// assert!(config.success_rate.enabled && config.failure_percentage.enabled);
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutlierConfig {
    /// Consecutive 5xx responses that eject a backend. Default 5; 0 disables.
    pub consecutive_5xx: u32,
    /// Consecutive gateway failures (502, 503, 504, and failures to connect)
    /// that eject a backend. Default 5; 0 disables.
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures (refused, timeouts, resets, closed
    /// connections, invalid responses: the backend never answered) that eject
    /// a backend. Default 5; 0 disables.
    pub consecutive_local_origin_failure: u32,
    /// How often success rate and failure percentage are evaluated (over the
    /// outcomes of the interval) and ejection multipliers decay. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The first ejection's length; the n-th lasts `n × base_ejection`.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// The longest ejection. Default 300 s.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// The ceiling on passive removal: ejections and open breakers together
    /// may take out at most this share of the upstream, counted after the
    /// removal. Default 50 (Envoy's 10 would forbid any passive removal in an
    /// upstream of fewer than 10 backends, breakers included).
    pub max_ejection_percent: u32,
    /// Share of each ejection that is random, 0.0–1.0: it lasts
    /// `length × (1 − jitter × u)` for a uniform `u` in [0, 1), so proxies
    /// that ejected a backend together do not all return to it at once.
    /// Default 0.1.
    pub jitter: f64,
    /// Eject backends whose success rate is far below their peers'.
    pub success_rate: SuccessRateConfig,
    /// Eject backends whose failure percentage is above a threshold.
    pub failure_percentage: FailurePercentageConfig,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            jitter: 0.1,
            success_rate: SuccessRateConfig::default(),
            failure_percentage: FailurePercentageConfig::default(),
        }
    }
}

/// Success-rate outlier detection (`[upstreams.<name>.outlier.success_rate]`):
/// each interval, among backends with at least `request_volume` outcomes,
/// if there are at least `min_hosts`, those whose success rate is below
/// `mean − stdev_factor × stdev` are ejected.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SuccessRateConfig {
    /// Whether it runs. Default true.
    pub enabled: bool,
    /// Backends with enough volume needed for the statistics. Default 5.
    pub min_hosts: u32,
    /// Outcomes in the interval a backend needs to be counted. Default 100.
    pub request_volume: u64,
    /// How many standard deviations below the mean is an outlier. Default 1.9.
    pub stdev_factor: f64,
}

impl Default for SuccessRateConfig {
    fn default() -> Self {
        SuccessRateConfig {
            enabled: true,
            min_hosts: 5,
            request_volume: 100,
            stdev_factor: 1.9,
        }
    }
}

/// Failure-percentage outlier detection
/// (`[upstreams.<name>.outlier.failure_percentage]`): each interval, among
/// backends with at least `request_volume` outcomes, if there are at least
/// `min_hosts`, those failing `threshold` percent or more are ejected.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FailurePercentageConfig {
    /// Whether it runs. Default false: a fixed threshold also ejects backends
    /// that fail because the *requests* are bad, so it is opt-in (as in Envoy).
    pub enabled: bool,
    /// Failure percentage that ejects, 1–100. Default 85.
    pub threshold: u32,
    /// Backends with enough volume needed. Default 5.
    pub min_hosts: u32,
    /// Outcomes in the interval a backend needs to be counted. Default 50.
    pub request_volume: u64,
}

impl Default for FailurePercentageConfig {
    fn default() -> Self {
        FailurePercentageConfig {
            enabled: false,
            threshold: 85,
            min_hosts: 5,
            request_volume: 50,
        }
    }
}

impl OutlierConfig {
    /// Check every field.
    ///
    /// # Errors
    /// [`InvalidConfig`] naming the first field whose value makes no sense.
    pub fn validate(self) -> Result<Self, InvalidConfig> {
        let bad = |field, reason: String| Err(InvalidConfig::new(field, reason));
        check_duration("outlier.interval", self.interval, Zero::Refused)?;
        check_duration("outlier.base_ejection", self.base_ejection, Zero::Refused)?;
        check_duration("outlier.max_ejection", self.max_ejection, Zero::Refused)?;
        if self.max_ejection < self.base_ejection {
            return bad(
                "outlier.max_ejection",
                format!(
                    "{:?} is shorter than base_ejection {:?}",
                    self.max_ejection, self.base_ejection
                ),
            );
        }
        if self.max_ejection_percent > 100 {
            return bad(
                "outlier.max_ejection_percent",
                format!("must be within 0..=100, got {}", self.max_ejection_percent),
            );
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad(
                "outlier.jitter",
                format!("must be within 0.0..=1.0, got {}", self.jitter),
            );
        }
        let sr = &self.success_rate;
        if sr.min_hosts == 0 {
            return bad(
                "outlier.success_rate.min_hosts",
                "must be at least 1".into(),
            );
        }
        if sr.request_volume == 0 {
            return bad(
                "outlier.success_rate.request_volume",
                "must be at least 1".into(),
            );
        }
        if !(sr.stdev_factor.is_finite() && sr.stdev_factor > 0.0) {
            return bad(
                "outlier.success_rate.stdev_factor",
                format!("must be above 0, got {}", sr.stdev_factor),
            );
        }
        let fp = &self.failure_percentage;
        if !(1..=100).contains(&fp.threshold) {
            return bad(
                "outlier.failure_percentage.threshold",
                format!("must be within 1..=100, got {}", fp.threshold),
            );
        }
        if fp.min_hosts == 0 {
            return bad(
                "outlier.failure_percentage.min_hosts",
                "must be at least 1".into(),
            );
        }
        if fp.request_volume == 0 {
            return bad(
                "outlier.failure_percentage.request_volume",
                "must be at least 1".into(),
            );
        }
        Ok(self)
    }

    /// The length of the `n`-th ejection in a row (n ≥ 1), before jitter.
    pub(crate) fn ejection_length(&self, n: u32) -> Duration {
        self.base_ejection
            .saturating_mul(n.max(1))
            .min(self.max_ejection)
    }

    /// The multiplier past which ejections no longer grow: kept as the cap of
    /// the count, so decay brings a long-ejected backend back to `base` soon.
    pub(crate) fn max_multiplier(&self) -> u32 {
        let base = self.base_ejection.as_nanos().max(1);
        let n = self.max_ejection.as_nanos().div_ceil(base);
        u32::try_from(n).unwrap_or(u32::MAX).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let c = OutlierConfig::default().validate().unwrap();
        assert_eq!(
            (
                c.consecutive_5xx,
                c.consecutive_gateway_failure,
                c.consecutive_local_origin_failure
            ),
            (5, 5, 5)
        );
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.base_ejection, Duration::from_secs(30));
        assert_eq!(c.max_ejection, Duration::from_secs(300));
        assert_eq!(c.max_ejection_percent, 50);
        assert!(c.success_rate.enabled);
        assert_eq!(c.success_rate.min_hosts, 5);
        assert_eq!(c.success_rate.request_volume, 100);
        assert!((c.success_rate.stdev_factor - 1.9).abs() < f64::EPSILON);
        assert!(!c.failure_percentage.enabled);
        assert_eq!(c.failure_percentage.threshold, 85);
        assert_eq!(c.failure_percentage.min_hosts, 5);
        assert_eq!(c.failure_percentage.request_volume, 50);
    }

    #[test]
    fn ejections_grow_with_the_count_up_to_the_maximum() {
        let c = OutlierConfig::default();
        assert_eq!(c.ejection_length(1), Duration::from_secs(30));
        assert_eq!(c.ejection_length(2), Duration::from_secs(60));
        assert_eq!(c.ejection_length(10), Duration::from_secs(300));
        assert_eq!(c.ejection_length(1000), Duration::from_secs(300));
        assert_eq!(c.max_multiplier(), 10);
        let odd = OutlierConfig {
            base_ejection: Duration::from_secs(40),
            ..Default::default()
        };
        assert_eq!(odd.max_multiplier(), 8, "ceil(300 / 40)");
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: OutlierConfig| c.validate().unwrap_err().field;
        let d = OutlierConfig::default;
        assert_eq!(
            field(OutlierConfig {
                interval: Duration::ZERO,
                ..d()
            }),
            "outlier.interval"
        );
        assert_eq!(
            field(OutlierConfig {
                base_ejection: Duration::ZERO,
                ..d()
            }),
            "outlier.base_ejection"
        );
        assert_eq!(
            field(OutlierConfig {
                max_ejection: Duration::from_secs(1),
                ..d()
            }),
            "outlier.max_ejection"
        );
        assert_eq!(
            field(OutlierConfig {
                max_ejection_percent: 101,
                ..d()
            }),
            "outlier.max_ejection_percent"
        );
        assert_eq!(
            field(OutlierConfig {
                jitter: -0.1,
                ..d()
            }),
            "outlier.jitter"
        );
        let mut c = d();
        c.success_rate.stdev_factor = f64::NAN;
        assert_eq!(field(c), "outlier.success_rate.stdev_factor");
        let mut c = d();
        c.success_rate.request_volume = 0;
        assert_eq!(field(c), "outlier.success_rate.request_volume");
        let mut c = d();
        c.failure_percentage.threshold = 0;
        assert_eq!(field(c), "outlier.failure_percentage.threshold");
        let mut c = d();
        c.failure_percentage.min_hosts = 0;
        assert_eq!(field(c), "outlier.failure_percentage.min_hosts");
    }
}
