//! Detour: a framework for HTTP reverse proxies that route around failed backends.
//!
//! This facade re-exports the Detour crates by feature:
//! - always: [`core`] (`detour-core`), the hooks and vocabulary, also at the root;
//! - `server` (default): [`server`] (`detour-server`), the engine that drives them;
//! - `server` also brings [`lb`], [`health`] and [`breaker`];
//! - `prometheus`: [`metrics`], one call that serves Prometheus `/metrics`
//!   for a program of your own;
//! - `testkit`: [`testkit`] (`detour-testkit`), faulty upstreams for tests.
//!
//! The config-driven `detour` command is the `detour-cli` package, built on
//! this one: `cargo install detour-cli`.
//!
//! Unix only: the `server` feature handles Unix signals (SIGTERM drains,
//! SIGINT stops, SIGHUP reloads); the crates below it use no Unix-specific
//! API.
#![warn(missing_docs)]

pub use detour_core as core;
pub use detour_core::*;

#[cfg(feature = "server")]
pub use detour_server as server;

#[cfg(feature = "testkit")]
pub use detour_testkit as testkit;

#[cfg(feature = "server")]
pub use detour_breaker as breaker;
#[cfg(feature = "server")]
pub use detour_health as health;
#[cfg(feature = "server")]
pub use detour_lb as lb;

#[cfg(feature = "prometheus")]
pub mod metrics;

/// The book's chapters as doc tests: every Rust block in `docs/src` is
/// compiled by `cargo test --workspace` (`no_run`: compiled, not run), which
/// turns on the features they use.
/// A block that includes an example's file stays `ignore`: the example is
/// compiled as its own program.
#[cfg(all(doctest, feature = "prometheus", feature = "testkit"))]
mod book {
    #[doc = include_str!("../../../docs/src/breakers.md")]
    struct Breakers;
    #[doc = include_str!("../../../docs/src/first-proxy.md")]
    struct FirstProxy;
    #[doc = include_str!("../../../docs/src/failover.md")]
    struct Failover;
    #[doc = include_str!("../../../docs/src/health.md")]
    struct Health;
    #[doc = include_str!("../../../docs/src/hooks.md")]
    struct Hooks;
    #[doc = include_str!("../../../docs/src/introduction.md")]
    struct Introduction;
    #[doc = include_str!("../../../docs/src/load-balancing.md")]
    struct LoadBalancing;
    #[doc = include_str!("../../../docs/src/retries.md")]
    struct Retries;
    #[doc = include_str!("../../../docs/src/testing.md")]
    struct Testing;
    #[doc = include_str!("../../../docs/src/tls-http2.md")]
    struct TlsHttp2;
}
