//! The `detour` command as a library: [`app`] is the config-driven proxy
//! behind it (TOML configuration, routes, admin API, Prometheus metrics, live
//! reload, the demo), so tests and other programs can run it in-process.
//!
//! A proxy of your own is built on the `detour-proxy` crate instead; this
//! package is the ready-made one. Install the command with
//! `cargo install detour-cli`.
//!
//! Unix only: the proxy handles Unix signals (SIGTERM drains, SIGINT stops,
//! SIGHUP reloads).
#![warn(missing_docs)]

pub mod app;
