//! Active health checks and passive outlier detection for Detour.
#![warn(missing_docs)]
