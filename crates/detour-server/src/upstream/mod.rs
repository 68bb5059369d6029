//! The upstream side: how connections are made ([`Connect`], [`TcpConnector`])
//! and kept (the per-worker pool).

pub use detour_core::connect::{Connect, TcpConnector};

pub(crate) mod pool;
