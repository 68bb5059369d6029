//! The upstream side: how connections are made ([`Connect`], [`TcpConnector`])
//! and kept (the per-worker pool).

pub use detour_core::connect::{Connect, TcpConnector};

pub(crate) mod pool;

mod group;

pub use group::{
    build_all, DiscoveryConfig, EventHook, RequestMetrics, Services, Upstream, UpstreamConfig,
};
