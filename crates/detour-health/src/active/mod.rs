//! Active health checks: probe every backend on a schedule and take it out of
//! selection after `fall` consecutive failures, back in after `rise` passes.
//!
//! # Layout
//! - [`HealthConfig`]: the `[upstreams.<name>.health]` table.
//! - [`HealthCheck`]: one probe; built in are [`TcpCheck`] and [`HttpCheck`],
//!   chosen by [`ConfiguredCheck`]; [`BoxHealthCheck`] erases the type.
//! - `exchange`: how an HTTP check talks when no server hands it a
//!   [`ClientExchange`](detour_core::connect::ClientExchange): plain-TCP
//!   HTTP/1.1 (hyper's client connection); [`read_response`], how much
//!   of an answer any exchange reads.
//! - [`HealthChecker`]: schedules the checks of one upstream and applies their
//!   verdicts to each [`detour_core::BackendState`].
//!
//! Checks dial through a [`detour_core::connect::Connect`], so tests swap in an
//! in-memory connector and run under a paused clock. `detour-server` hands
//! HTTP checks its own exchange, which dials as its engine does (TLS, SNI,
//! HTTP/2), so upstreams with `tls` or `http2` have HTTP checks too.

mod check;
mod checker;
mod config;
mod configured;
mod exchange;
mod http;
mod tcp;

pub use check::{BoxHealthCheck, CheckFailure, CheckFailureKind, HealthCheck};
pub use checker::{BackendHealth, HealthChecker, Verdict};
pub use config::{CheckKind, HealthConfig, ParseStatusRangeError, StatusRange};
pub use configured::ConfiguredCheck;
pub use exchange::read_response;
pub use http::HttpCheck;
pub use tcp::TcpCheck;
