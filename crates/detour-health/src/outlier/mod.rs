//! Passive outlier detection: eject backends that are up but failing, judged
//! from the outcomes of real traffic (the engine's [`detour_core::Observer`]
//! stream), after Envoy's outlier detection
//! (<https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier>).
//!
//! # Layout
//! - [`OutlierConfig`]: the `[upstreams.<name>.outlier]` table.
//! - [`OutlierDetector`]: the per-upstream detector; an `Observer`.
//! - `stats`: the success-rate and failure-percentage statistics.
//!
//! What each outcome does to the consecutive counters (`+1` counts, `0`
//! resets, `·` leaves alone):
//!
//! | outcome | 5xx | gateway | local origin |
//! |---|---|---|---|
//! | response < 500 | 0 | 0 | 0 |
//! | response 500, 501, 505… | +1 | 0 | 0 |
//! | response 502, 503, 504 | +1 | +1 | 0 |
//! | connect refused, connect timeout, TLS handshake | · | +1 | +1 |
//! | reset, closed, read/write timeout, invalid response | · | · | +1 |
//! | `Local(_)`, or any kind Detour raises itself | · | · | · |
//!
//! For success rate and failure percentage, a `BackendFailure` or any 5xx is
//! a failure and any other response a success; `Local` outcomes count as
//! neither.

mod config;
mod detector;
mod stats;

pub use config::{FailurePercentageConfig, OutlierConfig, SuccessRateConfig};
pub use detector::{OutlierDetector, OutlierStatus};
