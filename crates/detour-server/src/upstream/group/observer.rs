//! [`UpstreamObserver`]: the one observer of an upstream's attempts, which
//! feeds its breakers, its outlier detection and its attempt metrics.

use std::sync::Arc;

use detour_breaker::BreakerRegistry;
use detour_core::{AttemptOutcome, Observer};
use detour_health::OutlierDetector;

use super::telemetry::{AttemptHandles, BackendCounters, Lazy};

/// Hears every attempt to this upstream's backends: breakers and outlier
/// detection learn from it, and the attempt metrics count it.
pub(super) struct UpstreamObserver {
    pub(super) breakers: Option<Arc<BreakerRegistry>>,
    pub(super) outlier: Arc<OutlierDetector>,
    pub(super) metrics: Arc<Lazy<AttemptHandles>>,
    pub(super) per_backend: Arc<BackendCounters>,
}

impl Observer for UpstreamObserver {
    fn on_attempt(&self, o: &AttemptOutcome<'_>) {
        self.metrics.get().record(o);
        self.per_backend.record(o);
        if let Some(b) = &self.breakers {
            b.on_attempt(o);
        }
        self.outlier.on_attempt(o);
    }
}
