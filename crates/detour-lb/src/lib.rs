//! Backend sets, selection algorithms, failover tiers and discovery for Detour.
//!
//! A [`LoadBalancer`] holds one upstream's backends as an immutable snapshot
//! swapped whole on updates (arc-swap), so selecting never locks or allocates.
//! [`select`](LoadBalancer::select) returns an admission
//! [`Permit`](detour_core::Permit) for a backend this request has not tried
//! yet, combining the algorithm, the failover strategy, health, breakers,
//! panic mode and slow start; [`select_with`](LoadBalancer::select_with) is the
//! raw walk over unique candidates for callers that decide for themselves.
//!
//! # Layout
//! - [`selection`]: the [`Selection`] trait and the algorithms — smooth
//!   weighted [`RoundRobin`], [`WeightedRandom`], [`LeastRequest`] and
//!   [`PeakEwma`] (both power of two choices), [`Ketama`] and [`Maglev`]
//!   consistent hashing — and [`Algorithm`], the one chosen at run time.
//! - [`HashKey`]: which part of a request a consistent hash keys on.
//! - [`failover`]: [`Failover`] (active-active, priority tiers, locality),
//!   panic threshold and [`SlowStart`], gathered in [`LbOptions`].
//! - [`discovery`]: [`ServiceDiscovery`] sources (static, DNS, file) and
//!   [`run_discovery`], the task that keeps a load balancer current.
//!
//! ```
//! use std::net::SocketAddr;
//! use detour_core::Backend;
//! use detour_lb::{HashKey, LoadBalancer, Maglev};
//! use tokio::time::Instant;
//!
//! let lb = LoadBalancer::new(Maglev::default());
//! lb.update((1..=3).map(|i| Backend::new(SocketAddr::from(([10, 0, 0, i], 80)))));
//!
//! let key: HashKey = "header:x-user".parse().unwrap();
//! let (req, ()) = http::Request::builder()
//!     .header("x-user", "alice")
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
//! let k = key.hash(&req, client);
//!
//! let first = lb.select(k, &[], Instant::now()).unwrap();
//! let again = lb.select(k, &[], Instant::now()).unwrap();
//! assert_eq!(first.backend().addr(), again.backend().addr(), "same key, same backend");
//! let retry = lb.select(k, &[first.backend().addr()], Instant::now()).unwrap();
//! assert_ne!(retry.backend().addr(), first.backend().addr(), "a retry moves on");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod balancer;
pub mod discovery;
mod error;
pub mod failover;
mod hash;
mod hash_key;
mod rng;
pub mod selection;
mod set;

pub use balancer::{AnyLoadBalancer, Changes, LoadBalancer, PanicChange, WeightOverride};
pub use detour_core::InvalidConfig;
pub use discovery::{
    refresh, run_discovery, BackendSpec, DnsDiscovery, DnsTarget, FileDiscovery, ServiceDiscovery,
    StaticDiscovery,
};
pub use error::{DiscoveryError, DiscoveryErrorKind};
pub use failover::{Failover, LbOptions, LocalityOrder, PriorityTiers, SlowStart};
pub use hash::hash_bytes;
pub use hash_key::HashKey;
pub use rng::Rng;
pub use selection::{
    Algorithm, Ketama, LeastRequest, Maglev, PeakEwma, RoundRobin, Selection, WeightedRandom,
};
