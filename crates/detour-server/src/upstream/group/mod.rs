//! [`Upstream`]: one named group of backends with everything failover needs —
//! selection (`detour-lb`), active checks and outlier detection
//! (`detour-health`), breakers, a retry budget and a concurrency limit
//! (`detour-breaker`) — wired together so a user's `upstream_peer` is one call:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use detour_core::{HttpPeer, ProxyHttp, Result, Session};
//! # use detour_server::upstream::{Upstream, UpstreamConfig};
//! struct App { up: Arc<Upstream> }
//! impl ProxyHttp for App {
//!     type CTX = ();
//!     fn new_ctx(&self) {}
//!     async fn upstream_peer(&self, s: &mut Session, _: &mut ()) -> Result<HttpPeer> {
//!         self.up.select(s).await
//!     }
//! }
//! ```
//!
//! The peer it returns carries an admission permit (health, ejection,
//! draining and the breaker all agreed), the upstream's retry budget and its
//! observer, so the engine feeds breakers, outlier detection and metrics
//! without any registration. Background work — checks, outlier sweeps,
//! discovery — runs under [`Services`], which the server owns and stops: register
//! the upstream with the proxy
//! ([`HttpProxyBuilder::upstream`](crate::HttpProxyBuilder::upstream)) and
//! [`Server::start`](crate::Server::start) or
//! [`Server::run_forever`](crate::Server::run_forever) runs them. An upstream
//! whose services never started logs an error on its first `select`.
//!
//! # Layout
//! - this module: the [`Upstream`] type — building it, selecting a backend.
//! - `config`: [`UpstreamConfig`] and [`DiscoveryConfig`], validated at load.
//! - `observer`: the observer that feeds breakers, outlier detection and
//!   attempt metrics from every attempt's outcome.
//! - `telemetry`: the metric series ([`RequestMetrics`], per backend, events).
//! - `discovery`: the backend sources (static, DNS, file, etcd, Kubernetes) asked
//!   together, with the rules that keep a failing source from emptying the
//!   upstream.
//! - `etcd`: the `discovery.etcd` table and its checks.
//! - `kubernetes`: the `discovery.kubernetes` table and its checks.
//! - `services`: [`Services`], the background work's stop handle, and
//!   [`first_rounds`].
//! - `inherit`: what a reloaded upstream keeps from the one it replaces.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use detour_breaker::{BreakerRegistry, ConcurrencyLimit, RetryBudget};
use detour_core::spread::Verdict;
use detour_core::{
    Backend, Error, ErrorKind, GateState, Hedging, HttpPeer, Observer, PeerOptions, RemovalCap,
    RetryBudgetGate, RetryPolicy, Session,
};
use detour_health::{ConfiguredCheck, HealthChecker, HealthConfig, HealthEvent, OutlierDetector};
use detour_lb::{run_discovery, AnyLoadBalancer, HashKey};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ConfigError;
use crate::tls::TlsClient;
use crate::upstream::exchange::{CheckConnector, CheckExchange, PeerDialing};
use crate::upstream::Connect;

mod config;
mod discovery;
mod etcd;
mod inherit;
mod kubernetes;
mod observer;
mod services;
mod telemetry;

pub use config::{DiscoveryConfig, UpstreamConfig};
#[cfg(feature = "etcd")]
pub use etcd::etcd_access;
pub use etcd::{EtcdSourceConfig, EtcdTlsConfig};
pub use kubernetes::{KubernetesSourceConfig, PortRef};
pub use services::{first_rounds, Services};
pub use telemetry::RequestMetrics;

use config::budget_config;
use discovery::Sources;
use observer::UpstreamObserver;
use telemetry::{attempt_handles, AttemptHandles, BackendCounters, Lazy};

/// An upstream: its backends and everything that decides which one takes a
/// request. Build it with [`Upstream::from_config`].
pub struct Upstream {
    name: Arc<str>,
    lb: Arc<AnyLoadBalancer>,
    hash_key: Option<HashKey>,
    breakers: Option<Arc<BreakerRegistry>>,
    budget: Option<Arc<dyn RetryBudgetGate>>,
    hedging: Option<Arc<Hedging>>,
    limit: Option<Arc<ConcurrencyLimit>>,
    health: Option<Arc<HealthChecker<ConfiguredCheck<CheckConnector>>>>,
    outlier: Arc<OutlierDetector>,
    cap: Arc<RemovalCap>,
    policy: Arc<RetryPolicy>,
    options: PeerOptions,
    observer: Arc<dyn Observer>,
    attempts: Arc<Lazy<AttemptHandles>>,
    per_backend: Arc<BackendCounters>,
    discovery: Option<(Sources, Duration)>,
    requests: RequestMetrics,
    /// TLS and HTTP/2, for the peers it selects and its HTTP checks alike.
    dialing: PeerDialing,
    /// What the active checks dial through.
    check_connector: CheckConnector,
    /// Set by [`Upstream::start_services`]; [`Upstream::select`] reports an
    /// upstream selecting without them, once (then `unstarted_logged` is set).
    services_started: Arc<AtomicBool>,
    unstarted_logged: AtomicBool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("backends", &self.lb.backends().len())
            .finish_non_exhaustive()
    }
}

/// Called with every health event (check up/down, ejection) of any upstream.
pub type EventHook = Arc<dyn Fn(&HealthEvent) + Send + Sync>;

impl Upstream {
    /// Build upstream `name` from its configuration (validated here too).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field at fault.
    pub fn from_config(name: &str, config: &UpstreamConfig) -> Result<Self, ConfigError> {
        Self::build(name, config, None)
    }

    /// Like [`from_config`](Self::from_config), with a hook that hears every
    /// health event (checks up/down, ejections). Breaker transitions are
    /// heard through [`breakers`](Self::breakers)`()?.on_transition(..)`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field at fault.
    pub fn from_config_with_events(
        name: &str,
        config: &UpstreamConfig,
        events: EventHook,
    ) -> Result<Self, ConfigError> {
        Self::build(name, config, Some(events))
    }

    fn build(
        name: &str,
        config: &UpstreamConfig,
        events: Option<EventHook>,
    ) -> Result<Self, ConfigError> {
        // Discovery's files are read once, by its sources (`admission`),
        // before anything else is made: a file refused leaves nothing behind.
        config.check(name)?;
        let (budget, limit, discovery) = admission(name, config)?;
        let bad = |field: &str, e: &dyn std::fmt::Display| {
            ConfigError::field(format!("upstreams.{name}.{field}"), e.to_string())
        };
        let algo = config.lb;
        let lb = Arc::new(
            AnyLoadBalancer::try_new(algo, config.lb_options()).map_err(|e| bad("failover", &e))?,
        );
        let outlier = outlier_detector(name, config, &lb, events.clone())?;
        let cap = outlier.cap();
        cap.spread().on_change(telemetry::spread_events(name));
        let breakers = if config.breaker.enabled {
            Some(Arc::new(
                BreakerRegistry::new(config.breaker.clone())
                    .map_err(|e| bad("breaker", &e))?
                    .with_upstream(name),
            ))
        } else {
            None
        };
        let dialing = dialing(name, config)?;
        let check_connector = CheckConnector::default();
        let health = match &config.health {
            Some(h) => Some(checker(
                name,
                h,
                &dialing,
                &check_connector,
                &lb,
                events.clone(),
            )?),
            None => None,
        };
        let per_backend = Arc::new(BackendCounters::new(name));
        watch_members(&lb, &breakers, &outlier, &health, &per_backend);
        if !config.backends.is_empty() {
            lb.update(config.backends.iter().map(|s| s.to_backend()));
        }
        let hedging = hedging(name, config)?;
        let services_started = Arc::new(AtomicBool::new(false));
        lb.on_panic(telemetry::panic_events(name, Arc::clone(&services_started)));
        let attempts = Arc::new(Lazy::new(name, attempt_handles));
        let observer: Arc<dyn Observer> = Arc::new(UpstreamObserver {
            breakers: breakers.clone(),
            outlier: Arc::clone(&outlier),
            metrics: Arc::clone(&attempts),
            per_backend: Arc::clone(&per_backend),
        });
        Ok(Upstream {
            name: name.into(),
            lb,
            hash_key: config.hash_key.clone(),
            breakers,
            budget,
            hedging,
            limit,
            health,
            outlier,
            cap,
            policy: Arc::new(config.retry.clone()),
            options: config.timeouts.clone(),
            observer,
            attempts,
            per_backend,
            discovery,
            requests: RequestMetrics::new(name),
            dialing,
            check_connector,
            services_started,
            unstarted_logged: AtomicBool::new(false),
        })
    }

    /// Dial the active checks through `connector` from now on: a proxy
    /// does this for every upstream registered with it, so its backends are
    /// checked the way they are reached.
    pub(crate) fn dial_checks_through<C: Connect>(&self, connector: Arc<C>) {
        self.check_connector.dial_through(connector);
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backends now (a snapshot).
    pub fn backends(&self) -> Arc<[Arc<Backend>]> {
        self.lb.backends()
    }

    /// The load balancer (to update the backends by hand, say).
    pub fn load_balancer(&self) -> &Arc<AnyLoadBalancer> {
        &self.lb
    }

    /// The breaker registry, when breakers are on.
    pub fn breakers(&self) -> Option<&Arc<BreakerRegistry>> {
        self.breakers.as_ref()
    }

    /// The outlier detector.
    pub fn outlier(&self) -> &Arc<OutlierDetector> {
        &self.outlier
    }

    /// The passive-removal ceiling shared by ejections and breakers.
    pub fn removal_cap(&self) -> &Arc<RemovalCap> {
        &self.cap
    }

    /// How failure is spread over the backends now: normal, concentrated
    /// (some failing, others clearly healthy) or correlated (all failing
    /// alike). See `detour_core::spread`.
    pub fn failure_spread(&self) -> Verdict {
        self.cap.spread().at(Instant::now())
    }

    /// Where the client requests this upstream served are counted.
    pub fn request_metrics(&self) -> &RequestMetrics {
        &self.requests
    }

    /// The upstream's retry policy.
    pub fn policy(&self) -> &Arc<RetryPolicy> {
        &self.policy
    }

    /// The per-attempt options.
    pub fn peer_options(&self) -> &PeerOptions {
        &self.options
    }

    /// Choose a backend for this request's next attempt: one it has not tried
    /// while others remain, admitted by health, ejection, draining and its
    /// breaker (or any, in panic mode), and outside the failover group a
    /// trusted proxy below already retried in
    /// ([`Planner::avoid_group`](detour_core::Planner::avoid_group)).
    ///
    /// # Errors
    /// `Overloaded` when the concurrency limit refuses; `CircuitOpen` (with
    /// `Retry-After`) when every breaker is open; `NoPeer` otherwise.
    pub async fn select(&self, session: &Session) -> detour_core::Result<HttpPeer> {
        if !self.services_started.load(Ordering::Relaxed) {
            self.log_unstarted();
        }
        let guard = match &self.limit {
            Some(l) => Some(l.acquire().await.map_err(Error::from)?),
            None => None,
        };
        let key = match &self.hash_key {
            Some(k) => k.hash(
                session.req(),
                session
                    .client_addr()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            ),
            None => 0,
        };
        let Some((permit, pick)) = self.lb.select_outside(
            key,
            session.tried(),
            session.planner().avoid_group(),
            Instant::now(),
        ) else {
            return Err(self.why_none());
        };
        let mut peer = HttpPeer::admitted(permit, Arc::clone(&self.name))
            .with_pick(pick)
            .with_options(self.options.clone())
            .with_observer(Arc::clone(&self.observer))
            .with_policy(Arc::clone(&self.policy));
        if let Some(b) = &self.budget {
            peer = peer.with_budget(Arc::clone(b));
        }
        if let Some(h) = &self.hedging {
            peer = peer.with_hedging(Arc::clone(h));
        }
        if let Some(g) = guard {
            peer = peer.with_guard(g);
        }
        Ok(self.dialing.apply(peer))
    }

    /// The first selection of an upstream whose services never started
    /// says so, once: without them no check runs (backends waiting for their
    /// first check stay out, and the balancer falls into panic mode, which
    /// ignores breakers), no ejection ends early and discovery never runs.
    #[cold]
    fn log_unstarted(&self) {
        if !self.unstarted_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                upstream = %self.name,
                "upstream selecting backends without its background services (health checks, \
                 outlier sweeps, discovery): register it with HttpProxy::builder(..).upstream(..) \
                 and run the proxy with Server::start or Server::run_forever"
            );
        }
    }

    fn why_none(&self) -> Error {
        let backends = self.lb.backends();
        let all_open = !backends.is_empty()
            && backends.iter().all(|b| {
                b.state()
                    .gate()
                    .is_some_and(|g| g.state() == GateState::Open)
            });
        if all_open {
            let mut err =
                Error::internal(ErrorKind::CircuitOpen).context("every backend's breaker is open");
            if let Some(after) = self.breakers.as_ref().and_then(|r| r.retry_after()) {
                err = err.retry_after(after);
            }
            err
        } else {
            Error::internal(ErrorKind::NoPeer).context("no backend available")
        }
    }

    /// Run the first round of active checks (bounded by the check timeout);
    /// the server does this before it opens its listeners. Also the first
    /// discovery round, so discovered backends are checked too.
    pub async fn first_round(&self) {
        if let Some((sources, _)) = &self.discovery {
            if let Err(e) = detour_lb::refresh(&self.lb, sources).await {
                tracing::warn!(upstream = %self.name, error = %e, "discovery failed; keeping the current backends");
            }
        }
        if let Some(h) = &self.health {
            h.first_round().await;
        }
    }

    /// Take over what `prev` (the upstream this one replaces on a reload)
    /// learnt from its discovery sources: each source's last good answer,
    /// by source. Call it before the first round, so a source that fails
    /// then (etcd down during a reload) keeps its backends instead of
    /// starting empty.
    pub fn inherit_discovery(&self, prev: &Upstream) {
        if let (Some((new, _)), Some((old, _))) = (&self.discovery, &prev.discovery) {
            new.inherit(old);
        }
    }

    /// Each discovery source's state (empty without a `discovery` table).
    pub fn discovery_status(&self) -> Vec<detour_lb::discovery::SourceStatus> {
        self.discovery
            .as_ref()
            .map(|(sources, _)| sources.status())
            .unwrap_or_default()
    }

    /// Start the background work — active checks, outlier sweeps, discovery —
    /// on `runtime`. It stops when the returned [`Services`] is dropped.
    /// [`Server::start`](crate::Server::start) does this for the upstreams
    /// registered with the proxy; call it yourself only for upstreams you
    /// build later (as a reload does). The upstream's metric series are made
    /// here too, so they exist (at 0) from the start.
    pub fn start_services(self: &Arc<Self>, runtime: &tokio::runtime::Handle) -> Services {
        self.services_started.store(true, Ordering::Relaxed);
        self.prime_metrics();
        let (stop, stopped) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Some(h) = &self.health {
            runtime.spawn(Arc::clone(h).run(until(stopped.clone())));
        }
        runtime.spawn(Arc::clone(&self.outlier).run(until(stopped.clone())));
        if let Some((sources, interval)) = self.discovery.clone() {
            let lb = Arc::clone(&self.lb);
            let stop = until(stopped.clone());
            runtime.spawn(async move {
                // The first round already ran (`first_round`): start one
                // interval later, not with a second round at once — or as
                // soon as a watched source has news.
                let mut stop = std::pin::pin!(stop);
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(interval) => {}
                    () = detour_lb::ServiceDiscovery::changed(&sources) => {}
                }
                run_discovery(lb, sources, interval, stop).await;
            });
        }
        Services::new(stop)
    }
}

impl Upstream {
    /// Make every metric series of this upstream now, with the recorder
    /// installed at this moment.
    fn prime_metrics(&self) {
        self.requests.prime();
        self.attempts.get();
        self.per_backend.prime(&self.lb.backends());
        telemetry::prime_events(&self.name);
        telemetry::set_spread_gauge(&self.name, self.failure_spread().spread);
        telemetry::prime_panic(&self.name, self.lb.in_panic(Instant::now()));
    }
}

/// How upstream `name`'s peers are dialled: its TLS client (built here,
/// with a warning when verification is off) and HTTP/2.
fn dialing(name: &str, config: &UpstreamConfig) -> Result<PeerDialing, ConfigError> {
    let tls = match &config.tls {
        Some(t) => {
            if !t.verify {
                tracing::warn!(
                    upstream = name,
                    "TLS certificate verification is OFF for this upstream (tls.verify = false): \
                     any certificate is accepted, so anyone on the path can impersonate its backends"
                );
            }
            let client = TlsClient::new(t, config.http2, &format!("upstreams.{name}.tls"))?;
            Some((client, t.sni.as_deref().map(Arc::from)))
        }
        None => None,
    };
    Ok(PeerDialing::new(tls, config.http2))
}

/// Upstream `name`'s active checks as `health` describes them, over the
/// backends of `lb`. HTTP checks dial as the traffic does (`dialing`: TLS,
/// SNI, HTTP/2), on connections of their own.
fn checker(
    name: &str,
    health: &HealthConfig,
    dialing: &PeerDialing,
    connector: &CheckConnector,
    lb: &Arc<AnyLoadBalancer>,
    events: Option<EventHook>,
) -> Result<Arc<HealthChecker<ConfiguredCheck<CheckConnector>>>, ConfigError> {
    let exchange = Arc::new(CheckExchange::new(
        connector.clone(),
        dialing.clone(),
        Arc::from(name),
    ));
    let members = Arc::clone(lb);
    let checker = HealthChecker::from_config_with_exchange(
        health.clone(),
        connector.clone(),
        exchange,
        move || members.backends().to_vec(),
    )
    .map_err(|e| ConfigError::field(format!("upstreams.{name}.health"), e.to_string()))?
    .upstream(name);
    // Tier loads and panic mode follow the checks at once, not at the load
    // balancer's next periodic refresh.
    let lb = Arc::clone(lb);
    Ok(Arc::new(checker.on_event(move |e| {
        lb.refresh_health(Instant::now());
        if let Some(ev) = &events {
            ev(e);
        }
    })))
}

/// The upstream's outlier detector; each of its events refreshes the
/// balancer's view of health, then reaches `events`.
fn outlier_detector(
    name: &str,
    config: &UpstreamConfig,
    lb: &Arc<AnyLoadBalancer>,
    events: Option<EventHook>,
) -> Result<Arc<OutlierDetector>, ConfigError> {
    let lb = Arc::clone(lb);
    let outlier = OutlierDetector::new(config.outlier.clone())
        .map_err(|e| ConfigError::field(format!("upstreams.{name}.outlier"), e.to_string()))?
        .upstream(name)
        .on_event(move |e| {
            lb.refresh_health(Instant::now());
            if let Some(ev) = &events {
                ev(e);
            }
        });
    Ok(Arc::new(outlier))
}

/// Every backend that joins gets its breaker, a place under the removal
/// ceiling, its counters and (with active checks) no traffic before its
/// first passing check.
fn watch_members(
    lb: &AnyLoadBalancer,
    breakers: &Option<Arc<BreakerRegistry>>,
    outlier: &Arc<OutlierDetector>,
    health: &Option<Arc<HealthChecker<ConfiguredCheck<CheckConnector>>>>,
    per_backend: &Arc<BackendCounters>,
) {
    let breakers = breakers.clone();
    let outlier = Arc::clone(outlier);
    let health = health.clone();
    let per_backend = Arc::clone(per_backend);
    lb.on_update(move |all| {
        outlier.attach(all);
        per_backend.members(all);
        for b in all {
            if let Some(r) = &breakers {
                let _ = r.attach(b);
            }
            if let Some(h) = &health {
                h.prepare(b);
            }
        }
        if let Some(h) = &health {
            h.backends_changed();
        }
    });
}

/// What admits a request or a retry: the retry budget, the concurrency
/// limit, and the discovery sources with their interval.
type Admission = (
    Option<Arc<dyn RetryBudgetGate>>,
    Option<Arc<ConcurrencyLimit>>,
    Option<(Sources, Duration)>,
);

/// How far back the hedging budget counts.
const HEDGE_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// The upstream's hedging, when its config has a `hedge` table: hedges paid
/// from a budget of their own (`hedge.budget_ratio` of the requests over
/// 10 s, no minimum). Longer than the retry budget's 1 s: with no minimum, a
/// quiet upstream (a few requests a second) would otherwise never earn a
/// whole hedge, and a latency tail does not slow clients down the way an
/// outage's backoffs do.
fn hedging(name: &str, config: &UpstreamConfig) -> Result<Option<Arc<Hedging>>, ConfigError> {
    let Some(h) = &config.hedge else {
        return Ok(None);
    };
    let mut b = detour_breaker::BudgetConfig::default();
    b.ratio = h.budget_ratio;
    b.min_per_second = 0;
    b.window = HEDGE_BUDGET_WINDOW;
    let budget = RetryBudget::new(b).map_err(|e| {
        ConfigError::field(
            format!("upstreams.{name}.hedge.budget_ratio"),
            e.to_string(),
        )
    })?;
    Ok(Some(Arc::new(Hedging::new(h.clone(), Arc::new(budget)))))
}

fn admission(name: &str, config: &UpstreamConfig) -> Result<Admission, ConfigError> {
    let bad = |field: &str, e: &dyn std::fmt::Display| {
        ConfigError::field(format!("upstreams.{name}.{field}"), e.to_string())
    };
    let budget_on = config.retry.budget_ratio > 0.0 || config.retry.budget_min_per_second > 0;
    let budget: Option<Arc<dyn RetryBudgetGate>> = if budget_on {
        Some(Arc::new(
            RetryBudget::new(budget_config(&config.retry)).map_err(|e| bad("retry", &e))?,
        ))
    } else {
        None
    };
    let limit = match &config.concurrency {
        Some(c) => Some(Arc::new(
            ConcurrencyLimit::new(c.clone()).map_err(|e| bad("concurrency", &e))?,
        )),
        None => None,
    };
    let discovery = match &config.discovery {
        Some(d) => Some((
            Sources::new(config, d, &format!("upstreams.{name}"))?,
            d.interval,
        )),
        None => None,
    };
    Ok((budget, limit, discovery))
}

/// Build every upstream of a `[upstreams]` table.
///
/// # Errors
/// The first upstream whose configuration is invalid, with the field named.
pub fn build_all(
    configs: &BTreeMap<String, UpstreamConfig>,
    events: Option<EventHook>,
) -> Result<BTreeMap<String, Arc<Upstream>>, ConfigError> {
    configs
        .iter()
        .map(|(name, c)| {
            let up = match &events {
                Some(ev) => Upstream::from_config_with_events(name, c, Arc::clone(ev))?,
                None => Upstream::from_config(name, c)?,
            };
            Ok((name.clone(), Arc::new(up)))
        })
        .collect()
}
