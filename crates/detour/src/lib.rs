//! Detour: a framework for HTTP reverse proxies that route around failed backends.
//!
//! This facade re-exports the Detour crates by feature:
//! - always: [`core`] (`detour-core`), the hooks and vocabulary, also at the root;
//! - `server` (default): [`server`] (`detour-server`), the engine that drives them;
//! - `testkit`: [`testkit`] (`detour-testkit`), faulty upstreams for tests.
#![warn(missing_docs)]

pub use detour_core as core;
pub use detour_core::*;

#[cfg(feature = "server")]
pub use detour_server as server;

#[cfg(feature = "testkit")]
pub use detour_testkit as testkit;
