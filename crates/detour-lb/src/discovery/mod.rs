//! Where the backend set comes from, and the task that keeps it current.
//!
//! A [`ServiceDiscovery`] source answers one question — which backends are
//! there now? — and [`run_discovery`] asks it on an interval and hands each
//! answer to [`LoadBalancer::update`]. When a round fails, the set stays as
//! it was (the last good answer) and the reason is logged; a source never has
//! to make up a set to report an error.
//!
//! A source that learns of changes as they happen (a watch) also says so
//! through [`ServiceDiscovery::changed`], and [`run_discovery`] then runs a
//! round at once instead of waiting for the interval.
//!
//! Built-in sources: [`StaticDiscovery`] (a fixed list), [`DnsDiscovery`]
//! (A/AAAA and SRV records, re-resolved each round), [`FileDiscovery`]
//! (a TOML file, re-read each round), with the `etcd` feature
//! `EtcdDiscovery` (keys under a prefix, read once then watched), and with
//! the `kubernetes` feature `KubernetesDiscovery` (a Service's
//! EndpointSlices, listed then watched). Anything else (a service
//! registry, an orchestrator's API) implements the trait.

mod dns;
#[cfg(feature = "etcd")]
mod etcd;
mod file;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod spec;
mod status;
#[cfg(any(feature = "etcd", feature = "kubernetes"))]
mod watched;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use detour_core::Backend;
use tokio::time::MissedTickBehavior;

use crate::selection::Selection;
use crate::{Changes, DiscoveryError, LoadBalancer};

pub use dns::{DnsDiscovery, DnsTarget, Resolve, SrvRecord, SystemResolver};
pub use file::FileDiscovery;
pub use spec::BackendSpec;
pub use status::{SourceState, SourceStatus};

#[cfg(feature = "etcd")]
pub use etcd::{EtcdDiscovery, EtcdEntries, EtcdOptions, EtcdSnapshot, EtcdTls, EtcdWatch};
#[cfg(feature = "kubernetes")]
pub use kubernetes::{KubernetesDiscovery, KubernetesOptions};
#[cfg(any(feature = "etcd", feature = "kubernetes"))]
pub use watched::WatchSnapshot;

/// A source of backend sets.
pub trait ServiceDiscovery: Send + Sync {
    /// The backends there are now.
    ///
    /// # Errors
    /// When the source cannot tell; the load balancer then keeps its set.
    fn discover(&self) -> impl Future<Output = Result<Vec<Backend>, DiscoveryError>> + Send;

    /// Completes when the source has news since the last [`discover`]
    /// (a watched source); [`run_discovery`] then asks at once. Sources that
    /// are only polled never complete, which is the default.
    ///
    /// [`discover`]: ServiceDiscovery::discover
    fn changed(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// A fixed list of backends.
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    backends: Vec<BackendSpec>,
}

impl StaticDiscovery {
    /// The list `backends`.
    pub fn new(backends: impl IntoIterator<Item = BackendSpec>) -> Self {
        StaticDiscovery {
            backends: backends.into_iter().collect(),
        }
    }
}

impl ServiceDiscovery for StaticDiscovery {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        Ok(self.backends.iter().map(BackendSpec::to_backend).collect())
    }
}

/// Ask `discovery` once and apply its answer to `lb`.
///
/// # Errors
/// The source's error; `lb` is then left unchanged.
pub async fn refresh<S, D>(lb: &LoadBalancer<S>, discovery: &D) -> Result<Changes, DiscoveryError>
where
    S: Selection,
    D: ServiceDiscovery + ?Sized,
{
    let backends = discovery.discover().await?;
    Ok(lb.update(backends))
}

/// Keep `lb` current from `discovery`: ask at once, then every `interval`
/// (at least 1 ms) and whenever the source says it [changed], until
/// `shutdown` completes or the load balancer is dropped everywhere else. A failed round keeps the last good set and logs
/// a warning with the reason.
///
/// [changed]: ServiceDiscovery::changed
///
/// The server owns this task: `tokio::spawn(run_discovery(lb.clone(),
/// source, interval, shutdown_signal))`.
///
/// # Cancel safety
/// Dropping the future stops discovery between two rounds or in the middle
/// of one; the set is only ever replaced whole.
pub async fn run_discovery<S, D>(
    lb: Arc<LoadBalancer<S>>,
    discovery: D,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) where
    S: Selection,
    D: ServiceDiscovery,
{
    // Hold the load balancer weakly between rounds: the task must not keep
    // an upstream alive that its owner has dropped.
    let weak = Arc::downgrade(&lb);
    drop(lb);
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            _ = ticker.tick() => {}
            () = discovery.changed() => {}
        }
        let answer = tokio::select! {
            biased;
            () = &mut shutdown => return,
            answer = discovery.discover() => answer,
        };
        let Some(lb) = weak.upgrade() else { return };
        match answer {
            Ok(backends) => {
                let changes = lb.update(backends);
                if !changes.is_empty() {
                    tracing::info!(
                        added = changes.added.len(),
                        removed = changes.removed.len(),
                        "discovery changed the backend set"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "discovery failed; keeping the last good backend set");
            }
        }
    }
}
