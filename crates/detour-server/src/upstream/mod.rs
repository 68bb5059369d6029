//! The upstream side: how connections are made ([`Connect`], [`TcpConnector`])
//! and kept (the per-worker pools: HTTP/1.1 idle connections, and shared
//! HTTP/2 connections), with TLS and ALPN when a peer asks for them; the
//! request body type they carry ([`UpstreamBody`]), how their errors are
//! classified (`classify`), the active checks' client (`exchange`: one
//! request per fresh connection, dialled exactly as traffic is), and
//! [`Upstream`], a named group of backends.
//! Nothing here uses the engine (`proxy`): the engine calls in.

pub use detour_core::connect::{Connect, TcpConnector};

mod body;
pub(crate) mod classify;
pub(crate) mod dial;
pub(crate) mod exchange;
pub(crate) mod h2pool;
pub(crate) mod native;
pub(crate) mod pool;
pub(crate) mod response;

mod group;

pub(crate) use body::UpFrame;
pub use body::UpstreamBody;

#[cfg(feature = "etcd")]
pub use group::etcd_access;
pub use group::{
    build_all, first_rounds, DiscoveryConfig, EtcdSourceConfig, EtcdTlsConfig, EventHook,
    KubernetesSourceConfig, PortRef, RequestMetrics, Services, Upstream, UpstreamConfig,
};
