//! The proxy's live state: routes and upstreams, swapped whole on reload.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use detour_core::Backend;
use detour_proxy::lb::discovery::SourceState;
use detour_server::upstream::Upstream;

use super::config::Config;
use super::etcd_config::ConfigSourceStatus;
use super::explain::Recent;
use super::routes::Route;
use super::status::{Breaker, Health};

/// One generation of configuration: what a request sees from start to end
/// (a reload swaps in a new one; requests in flight keep theirs).
#[derive(Debug)]
pub struct State {
    /// Routes in file order.
    pub routes: Vec<Arc<Route>>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// 1 for the first configuration, +1 per successful reload.
    pub generation: u64,
    /// The configuration this generation was built from (`GET /config`).
    pub config: Arc<Config>,
}

/// The application: the current [`State`] plus what outlives reloads.
#[derive(Debug)]
pub struct App {
    state: ArcSwap<State>,
    /// Backends an operator put in maintenance (admin API), by upstream.
    maintenance: Mutex<HashSet<(String, SocketAddr)>>,
    /// The last retried or failed requests (`/debug/requests`), kept across
    /// reloads.
    recent: Recent,
    /// Where the configuration comes from, when that is etcd (`/status`).
    config_source: Arc<Mutex<Option<ConfigSourceStatus>>>,
}

impl App {
    /// An application serving `state`.
    pub fn new(state: State) -> Self {
        App {
            state: ArcSwap::from_pointee(state),
            maintenance: Mutex::new(HashSet::new()),
            recent: Recent::default(),
            config_source: Arc::default(),
        }
    }

    /// Where the configuration comes from, when that is etcd; the follower
    /// writes it, `/status` reads it.
    pub fn config_source(&self) -> Arc<Mutex<Option<ConfigSourceStatus>>> {
        Arc::clone(&self.config_source)
    }

    /// The current generation.
    pub fn current(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Swap in a new generation; returns the old one.
    pub fn swap(&self, state: State) -> Arc<State> {
        self.state.swap(Arc::new(state))
    }

    /// The last retried or failed requests.
    pub fn recent(&self) -> &Recent {
        &self.recent
    }

    /// Whether an operator put this backend in maintenance.
    pub fn in_maintenance(&self, upstream: &str, addr: SocketAddr) -> bool {
        self.maintenance
            .lock()
            .map(|m| m.contains(&(upstream.to_string(), addr)))
            .unwrap_or(false)
    }

    /// Record or clear maintenance for a backend.
    pub fn set_maintenance(&self, upstream: &str, addr: SocketAddr, on: bool) {
        if let Ok(mut m) = self.maintenance.lock() {
            if on {
                m.insert((upstream.to_string(), addr));
            } else {
                m.remove(&(upstream.to_string(), addr));
            }
        }
    }

    /// Keys of the backends in maintenance (carried over on reload).
    pub fn maintenance_list(&self) -> Vec<(String, SocketAddr)> {
        self.maintenance
            .lock()
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The state of backend `b` of `upstream` now, maintenance included.
    pub fn health(&self, upstream: &str, b: &Backend) -> Health {
        Health::of(b, self.in_maintenance(upstream, b.addr()))
    }

    /// Refresh the per-backend gauges (called at every scrape, so they are
    /// exact without any work on the request path).
    pub fn record_gauges(&self) {
        let state = self.current();
        let now = std::time::SystemTime::now();
        for (name, up) in &state.upstreams {
            for s in up.discovery_status() {
                let labels = [("upstream", name.clone()), ("source", s.source.clone())];
                let up_now = matches!(s.state, SourceState::Ok);
                metrics::gauge!("detour_discovery_source_up", &labels)
                    .set(f64::from(u8::from(up_now)));
                if let Some(age) = s.age(now) {
                    metrics::gauge!("detour_discovery_source_age_seconds", &labels)
                        .set(age.as_secs_f64());
                }
                if let Some(rev) = s.revision {
                    // Revisions stay far below 2^53: exact as an f64.
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!("detour_discovery_source_revision", &labels).set(rev as f64);
                }
            }
            for b in up.backends().iter() {
                let addr = b.addr().to_string();
                let healthy = self.health(name, b) == Health::Healthy;
                let labels = [("upstream", name.clone()), ("backend", addr)];
                metrics::gauge!("detour_backend_healthy", &labels)
                    .set(f64::from(u8::from(healthy)));
                metrics::gauge!("detour_backend_in_flight", &labels)
                    .set(f64::from(b.state().in_flight()));
                metrics::gauge!("detour_breaker_state", &labels).set(Breaker::of(b).gauge());
                let ejected = b
                    .state()
                    .ejected_until(tokio::time::Instant::now())
                    .is_some();
                metrics::gauge!("detour_backend_ejected", &labels).set(if ejected {
                    1.0
                } else {
                    0.0
                });
            }
        }
    }
}
