//! Active health checks and passive outlier detection for Detour.
//!
//! Two ways to learn that a backend should get no traffic, both writing to the
//! shared [`detour_core::BackendState`] that selection reads:
//!
//! - **Active checks** ([`HealthChecker`]) probe every backend on a schedule
//!   (TCP connect, HTTP, or any [`HealthCheck`]) and mark it down after `fall`
//!   consecutive failures, up after `rise` passes. A check that sees a backend
//!   come back also moves its open breaker to half-open and, if configured,
//!   ends its outlier ejection, so recovery is bounded by the checks.
//! - **Outlier detection** ([`OutlierDetector`]) watches real traffic (it is
//!   the engine's [`detour_core::Observer`]) and ejects backends that are up
//!   but failing: consecutive 5xx, gateway or local-origin failures, success
//!   rate far below the peers', failure percentage. Ejections grow with
//!   repeats, and one ceiling ([`detour_core::RemovalCap`], shared with the
//!   breakers) caps all passive removal.
//!
//! Every change is an [`HealthEvent`]: a `tracing` event, metrics, and an
//! optional callback.
//!
//! # Layout
//! - [`active`]: [`HealthConfig`], [`HealthCheck`], [`TcpCheck`], [`HttpCheck`],
//!   [`HealthChecker`]. HTTP checks talk through a
//!   [`ClientExchange`](detour_core::connect::ClientExchange) a server hands
//!   them (its own TLS and HTTP/2 dialing), or plain-TCP HTTP/1.1 without
//!   one.
//! - [`outlier`]: [`OutlierConfig`], [`OutlierDetector`].
//! - [`event`]: [`HealthEvent`], [`EventKind`], [`EjectCause`], the metrics.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use detour_core::{connect::TcpConnector, Backend, Observer};
//! use detour_health::{HealthChecker, HealthConfig, OutlierConfig, OutlierDetector};
//!
//! # async fn demo() -> Result<(), detour_health::InvalidConfig> {
//! let backends: Vec<Arc<Backend>> = ["10.0.0.1:80", "10.0.0.2:80"]
//!     .iter()
//!     .map(|a| Arc::new(Backend::new(a.parse().unwrap())))
//!     .collect();
//!
//! // Passive: attach the members (installs the removal ceiling on each), and
//! // hand the detector to the engine as an observer.
//! let detector = Arc::new(OutlierDetector::new(OutlierConfig::default())?.upstream("app"));
//! detector.attach(&backends);
//! let _observer: Arc<dyn Observer> = detector.clone();
//!
//! // Active: the checker asks for the members before every pass.
//! let list = backends.clone();
//! let checker = Arc::new(
//!     HealthChecker::from_config(HealthConfig::http("/healthz"), TcpConnector, move || list.clone())?
//!         .upstream("app"),
//! );
//! checker.first_round().await; // before the listeners open
//!
//! let (stop, stopped) = tokio::sync::watch::channel(());
//! let shutdown = |mut rx: tokio::sync::watch::Receiver<()>| async move { let _ = rx.changed().await; };
//! tokio::spawn(Arc::clone(&checker).run(shutdown(stopped.clone())));
//! tokio::spawn(Arc::clone(&detector).run(shutdown(stopped)));
//! // ... serve; at shutdown:
//! drop(stop);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod active;
pub mod event;
pub mod outlier;

pub use active::read_response;
pub use active::{
    BackendHealth, BoxHealthCheck, CheckFailure, CheckFailureKind, CheckKind, ConfiguredCheck,
    HealthCheck, HealthChecker, HealthConfig, HttpCheck, StatusRange, TcpCheck, Verdict,
};
pub use detour_core::InvalidConfig;
pub use event::{EjectCause, EventCallback, EventKind, HealthEvent};
pub use outlier::{
    FailurePercentageConfig, OutlierConfig, OutlierDetector, OutlierStatus, SuccessRateConfig,
};
