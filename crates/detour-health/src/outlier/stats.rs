//! The interval statistics: success-rate and failure-percentage outliers.
//!
//! Both follow Envoy's outlier detection
//! (<https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier>):
//! only backends with enough volume in the interval count, and nothing is
//! judged unless enough backends qualify. Success rate compares a backend with
//! its peers (mean − factor × standard deviation); failure percentage compares
//! it with a fixed threshold.

use super::config::{FailurePercentageConfig, SuccessRateConfig};

/// One backend's outcomes over the interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
}

impl Sample {
    fn volume(self) -> u64 {
        self.successes + self.failures
    }

    /// Success rate in percent.
    fn success_rate(self) -> f64 {
        self.successes as f64 * 100.0 / self.volume().max(1) as f64
    }
}

/// A backend to eject: its index in the samples and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outlier {
    pub(crate) index: usize,
    pub(crate) reason: String,
    /// Worse outliers sort first (the removal ceiling may stop the ejections
    /// part way, and the worst should go first).
    badness: f64,
}

/// Backends whose success rate is below `mean − stdev_factor × stdev`, worst
/// first.
pub(crate) fn success_rate_outliers(samples: &[Sample], cfg: &SuccessRateConfig) -> Vec<Outlier> {
    let rates: Vec<(usize, f64)> = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.volume() >= cfg.request_volume)
        .map(|(i, s)| (i, s.success_rate()))
        .collect();
    if rates.is_empty() || rates.len() < cfg.min_hosts as usize {
        return Vec::new();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - cfg.stdev_factor * variance.sqrt();
    let mut out: Vec<Outlier> = rates
        .into_iter()
        .filter(|&(_, r)| r < threshold)
        .map(|(index, r)| Outlier {
            index,
            reason: format!(
                "success rate {r:.1}% below {threshold:.1}% (mean {mean:.1}% of {} backends)",
                n as usize
            ),
            badness: -r,
        })
        .collect();
    sort_worst_first(&mut out);
    out
}

/// Backends failing `threshold` percent or more, worst first.
pub(crate) fn failure_percentage_outliers(
    samples: &[Sample],
    cfg: &FailurePercentageConfig,
) -> Vec<Outlier> {
    let qualified: Vec<(usize, f64)> = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.volume() >= cfg.request_volume)
        .map(|(i, s)| (i, 100.0 - s.success_rate()))
        .collect();
    if qualified.is_empty() || qualified.len() < cfg.min_hosts as usize {
        return Vec::new();
    }
    let threshold = f64::from(cfg.threshold);
    let mut out: Vec<Outlier> = qualified
        .into_iter()
        .filter(|&(_, f)| f >= threshold)
        .map(|(index, f)| Outlier {
            index,
            reason: format!("failure percentage {f:.1}% at or above {threshold}%"),
            badness: f,
        })
        .collect();
    sort_worst_first(&mut out);
    out
}

fn sort_worst_first(out: &mut [Outlier]) {
    out.sort_by(|a, b| b.badness.total_cmp(&a.badness));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(successes: u64, failures: u64) -> Sample {
        Sample {
            successes,
            failures,
        }
    }

    #[test]
    fn a_backend_far_below_its_peers_is_an_outlier() {
        let cfg = SuccessRateConfig::default();
        let samples = [s(100, 0), s(99, 1), s(100, 0), s(98, 2), s(50, 50)];
        let out = success_rate_outliers(&samples, &cfg);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].index, 4);
        assert!(
            out[0].reason.starts_with("success rate 50.0% below"),
            "{}",
            out[0].reason
        );
    }

    #[test]
    fn equal_backends_are_never_outliers() {
        let cfg = SuccessRateConfig::default();
        let samples = [s(10, 90); 6];
        assert!(success_rate_outliers(&samples, &cfg).is_empty());
    }

    #[test]
    fn too_few_qualified_backends_judge_nothing() {
        let cfg = SuccessRateConfig::default();
        // The bad one lacks volume, and only four qualify.
        let samples = [s(100, 0), s(100, 0), s(100, 0), s(100, 0), s(0, 99)];
        assert!(success_rate_outliers(&samples, &cfg).is_empty());
        let fp = FailurePercentageConfig {
            enabled: true,
            ..Default::default()
        };
        let samples = [s(0, 60), s(60, 0), s(60, 0), s(60, 0)];
        assert!(failure_percentage_outliers(&samples, &fp).is_empty());
    }

    #[test]
    fn failure_percentage_ejects_at_the_threshold_worst_first() {
        let fp = FailurePercentageConfig {
            enabled: true,
            ..Default::default()
        };
        let samples = [s(15, 85), s(60, 0), s(0, 60), s(60, 0), s(20, 80)];
        let out = failure_percentage_outliers(&samples, &fp);
        let idx: Vec<_> = out.iter().map(|o| o.index).collect();
        assert_eq!(idx, vec![2, 0], "100 % first, then 85 %; 80 % stays");
    }
}
