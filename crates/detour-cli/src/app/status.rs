//! A backend's state in one type, for everything that shows it: the admin
//! API's `/status` and action answers, the gauges set at each scrape, and the
//! demo's table.
//!
//! Plain types with no knowledge of the application's state, which reads
//! them: [`App::health`](super::App::health) is the usual way in.

use detour_core::{Backend, GateState};
use serde::Serialize;

/// What a backend is doing, most severe first: an operator's mark, then the
/// active checks, then outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Out of service by the admin API (`maintenance`), kept across reloads.
    Maintenance,
    /// Drained: no new requests, in-flight ones finish.
    Draining,
    /// The active checks say it is down.
    Unhealthy,
    /// Outlier detection has it ejected.
    Ejected,
    /// Serving.
    Healthy,
}

impl Health {
    /// The state of `b` now; `in_maintenance`: an operator put it in
    /// maintenance (kept by [`App`](super::App), which
    /// [`App::health`](super::App::health) asks).
    pub fn of(b: &Backend, in_maintenance: bool) -> Health {
        let s = b.state();
        if in_maintenance {
            Health::Maintenance
        } else if s.is_draining() {
            Health::Draining
        } else if s.check_failed() {
            Health::Unhealthy
        } else if s.ejected_until(tokio::time::Instant::now()).is_some() {
            Health::Ejected
        } else {
            Health::Healthy
        }
    }

    /// The word `/status` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Maintenance => "maintenance",
            Health::Draining => "draining",
            Health::Unhealthy => "unhealthy",
            Health::Ejected => "ejected",
            Health::Healthy => "healthy",
        }
    }
}

/// A backend's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Breaker {
    /// The upstream has no breakers.
    None,
    /// Admitting normally.
    Closed,
    /// Refusing.
    Open,
    /// Letting probes through.
    HalfOpen,
}

impl Breaker {
    /// The breaker of `b` now.
    pub fn of(b: &Backend) -> Breaker {
        match b.state().gate().map(|g| g.state()) {
            None => Breaker::None,
            Some(GateState::Closed) => Breaker::Closed,
            Some(GateState::Open) => Breaker::Open,
            Some(GateState::HalfOpen) => Breaker::HalfOpen,
        }
    }

    /// The word `/status` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Breaker::None => "none",
            Breaker::Closed => "closed",
            Breaker::Open => "open",
            Breaker::HalfOpen => "half_open",
        }
    }

    /// The value of the `detour_breaker_state` gauge: 0 closed (or none),
    /// 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            Breaker::None | Breaker::Closed => 0.0,
            Breaker::HalfOpen => 1.0,
            Breaker::Open => 2.0,
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
