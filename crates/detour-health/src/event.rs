//! Every change of a backend's state is an event: a `tracing` event, `metrics`
//! counters and gauges, and an optional callback, each with its reason.
//!
//! Metrics (labels in braces):
//! - `detour_health_transitions_total{upstream, backend, to}`: counter, `to` is
//!   `down`, `up`, `ejected` or `unejected`.
//! - `detour_backend_healthy{upstream, backend}`: gauge, 1 while the active
//!   checks say up (0 for a new backend waiting for its first pass).
//! - `detour_backend_ejected{upstream, backend}`: gauge, 1 while ejected.
//! - `detour_outlier_ejections_total{upstream, reason}`: counter, `reason` is
//!   an [`EjectCause`] name (`consecutive_5xx`, `success_rate`, …).
//! - `detour_outlier_ejections_refused_total{upstream, reason}`: counter, an
//!   ejection the removal ceiling refused.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

/// A callback that hears every [`HealthEvent`]. It runs inline (for outlier
/// ejections, on the request path), so it must be quick and must not block.
pub type EventCallback = Arc<dyn Fn(&HealthEvent) + Send + Sync>;

/// One change of a backend's state.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthEvent {
    /// The upstream's name.
    pub upstream: Arc<str>,
    /// The backend's address.
    pub backend: SocketAddr,
    /// What changed.
    pub kind: EventKind,
    /// Why, for people: "3 consecutive failed checks: connection refused",
    /// "5 consecutive 5xx".
    pub reason: String,
    /// When.
    pub at: Instant,
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The active checks took the backend out.
    Down,
    /// The active checks brought the backend back.
    Up,
    /// Outlier detection ejected the backend.
    Ejected {
        /// Which detector fired.
        cause: EjectCause,
        /// When the ejection ends unless something ends it sooner.
        until: Instant,
    },
    /// An ejection ended (it expired, or a check saw the backend come back).
    Unejected,
}

impl EventKind {
    /// The metric label: `down`, `up`, `ejected`, `unejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Down => "down",
            EventKind::Up => "up",
            EventKind::Ejected { .. } => "ejected",
            EventKind::Unejected => "unejected",
        }
    }
}

/// Which outlier detector ejected a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EjectCause {
    /// Consecutive 5xx responses.
    Consecutive5xx,
    /// Consecutive gateway failures (502/503/504, connect failures).
    ConsecutiveGatewayFailure,
    /// Consecutive local-origin failures (refused, timeouts, resets).
    ConsecutiveLocalOriginFailure,
    /// Success rate far below its peers'.
    SuccessRate,
    /// Failure percentage above the threshold.
    FailurePercentage,
}

impl EjectCause {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectCause::Consecutive5xx => "consecutive_5xx",
            EjectCause::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectCause::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            EjectCause::SuccessRate => "success_rate",
            EjectCause::FailurePercentage => "failure_percentage",
        }
    }
}

impl fmt::Display for EjectCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The upstream's event sink: tracing, metrics and the callback.
#[derive(Clone)]
pub(crate) struct Events {
    upstream: Arc<str>,
    callback: Option<EventCallback>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("upstream", &self.upstream)
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

impl Events {
    pub(crate) fn new(upstream: Arc<str>) -> Self {
        Events {
            upstream,
            callback: None,
        }
    }

    pub(crate) fn upstream(&self) -> &Arc<str> {
        &self.upstream
    }

    pub(crate) fn set_upstream(&mut self, upstream: Arc<str>) {
        self.upstream = upstream;
    }

    pub(crate) fn set_callback(&mut self, callback: EventCallback) {
        self.callback = Some(callback);
    }

    /// Publish one transition everywhere.
    pub(crate) fn emit(&self, backend: SocketAddr, kind: EventKind, reason: String, at: Instant) {
        let up = &*self.upstream;
        match kind {
            EventKind::Down | EventKind::Ejected { .. } => tracing::warn!(
                upstream = up,
                backend = %backend,
                to = kind.as_str(),
                reason = %reason,
                "backend {}",
                kind.as_str()
            ),
            EventKind::Up | EventKind::Unejected => tracing::info!(
                upstream = up,
                backend = %backend,
                to = kind.as_str(),
                reason = %reason,
                "backend {}",
                kind.as_str()
            ),
        }
        metrics::counter!(
            "detour_health_transitions_total",
            "upstream" => Arc::clone(&self.upstream),
            "backend" => backend.to_string(),
            "to" => kind.as_str(),
        )
        .increment(1);
        match kind {
            EventKind::Down | EventKind::Up => self.gauge_healthy(backend, kind == EventKind::Up),
            EventKind::Ejected { cause, .. } => {
                metrics::counter!(
                    "detour_outlier_ejections_total",
                    "upstream" => Arc::clone(&self.upstream),
                    "reason" => cause.as_str(),
                )
                .increment(1);
                self.gauge_ejected(backend, true);
            }
            EventKind::Unejected => self.gauge_ejected(backend, false),
        }
        if let Some(cb) = &self.callback {
            cb(&HealthEvent {
                upstream: Arc::clone(&self.upstream),
                backend,
                kind,
                reason,
                at,
            });
        }
    }

    pub(crate) fn gauge_healthy(&self, backend: SocketAddr, healthy: bool) {
        metrics::gauge!(
            "detour_backend_healthy",
            "upstream" => Arc::clone(&self.upstream),
            "backend" => backend.to_string(),
        )
        .set(if healthy { 1.0 } else { 0.0 });
    }

    fn gauge_ejected(&self, backend: SocketAddr, ejected: bool) {
        metrics::gauge!(
            "detour_backend_ejected",
            "upstream" => Arc::clone(&self.upstream),
            "backend" => backend.to_string(),
        )
        .set(if ejected { 1.0 } else { 0.0 });
    }

    pub(crate) fn ejection_refused(&self, backend: SocketAddr, cause: EjectCause) {
        tracing::debug!(
            upstream = &*self.upstream,
            backend = %backend,
            reason = cause.as_str(),
            "ejection refused by the removal ceiling"
        );
        metrics::counter!(
            "detour_outlier_ejections_refused_total",
            "upstream" => Arc::clone(&self.upstream),
            "reason" => cause.as_str(),
        )
        .increment(1);
    }
}
