//! Active health checks: probe every backend on a schedule and take it out of
//! selection after `fall` consecutive failures, back in after `rise` passes.
//!
//! # Layout
//! - [`HealthConfig`]: the `[upstreams.<name>.health]` table.
//! - [`HealthCheck`]: one probe; built in are [`TcpCheck`] and [`HttpCheck`]
//!   (hyper's HTTP/1.1 client connection), chosen by [`ConfiguredCheck`];
//!   [`BoxHealthCheck`] erases the type.
//! - [`HealthChecker`]: schedules the checks of one upstream and applies their
//!   verdicts to each [`detour_core::BackendState`].
//!
//! Checks dial through a [`detour_core::connect::Connect`], so tests swap in an
//! in-memory connector and run under a paused clock.

mod check;
mod checker;
mod config;
mod configured;
mod http;
mod tcp;

pub use check::{BoxHealthCheck, CheckFailure, CheckFailureKind, HealthCheck};
pub use checker::{BackendHealth, HealthChecker, Verdict};
pub use config::{CheckKind, HealthConfig, ParseStatusRangeError, StatusRange};
pub use configured::ConfiguredCheck;
pub use http::HttpCheck;
pub use tcp::TcpCheck;
