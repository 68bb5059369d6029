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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use detour_breaker::{
    BreakerConfig, BreakerRegistry, BudgetConfig, ConcurrencyLimit, LimitConfig, RetryBudget,
};
use detour_core::spread::Verdict;
use detour_core::{
    check_duration, AttemptOutcome, Backend, Error, ErrorKind, GateState, HttpPeer, InvalidConfig,
    Observer, PeerOptions, RemovalCap, RetryBudgetGate, RetryPolicy, Session, Zero,
};
use detour_health::{HealthChecker, HealthConfig, HealthEvent, OutlierConfig, OutlierDetector};
use detour_lb::discovery::SystemResolver;
use detour_lb::{
    run_discovery, Algorithm, AnyLoadBalancer, BackendSpec, DiscoveryError, DnsDiscovery,
    DnsTarget, Failover, FileDiscovery, HashKey, LbOptions, ServiceDiscovery, SlowStart,
    StaticDiscovery,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ConfigError;
use crate::tls::{TlsClient, UpstreamTlsConfig};
use crate::upstream::TcpConnector;

mod inherit;
mod telemetry;

pub use telemetry::RequestMetrics;
use telemetry::{attempt_handles, AttemptHandles, BackendCounters, Lazy};

/// One `[upstreams.NAME]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Selection: `round_robin` (default), `random`, `least_request`,
    /// `peak_ewma`, `consistent_hash` (Ketama) or `maglev`.
    pub lb: Algorithm,
    /// What a consistent hash keys on: `header:NAME`, `cookie:NAME`,
    /// `query:NAME`, `path`, `uri`, `host`, `client_ip`, `method`.
    pub hash_key: Option<HashKey>,
    /// Static backends.
    pub backends: Vec<BackendSpec>,
    /// Discovery instead of (or on top of) static backends.
    pub discovery: Option<DiscoveryConfig>,
    /// Failover strategy (`[upstreams.NAME.failover]`, `kind = "active_active"`
    /// (default), `"priority"` or `"locality"`).
    pub failover: Failover,
    /// Below this percentage of available backends (over the whole upstream),
    /// selection ignores health, ejection and breakers. 0 = off: a clean 503.
    /// Default 50.
    pub panic_threshold: u8,
    /// Slow start for recovered backends (`[upstreams.NAME.slow_start]`); off
    /// when absent.
    pub slow_start: Option<SlowStart>,
    /// Retries and the retry budget (`[upstreams.NAME.retry]`).
    pub retry: RetryPolicy,
    /// Per-attempt timeouts (`[upstreams.NAME.timeouts]`).
    pub timeouts: PeerOptions,
    /// Active health checks; none when the table is absent.
    pub health: Option<HealthConfig>,
    /// Passive outlier detection (on with its defaults).
    pub outlier: OutlierConfig,
    /// Circuit breakers, one per backend (on with their defaults).
    pub breaker: BreakerConfig,
    /// Concurrency limit for the whole upstream; none when absent.
    pub concurrency: Option<LimitConfig>,
    /// TLS to the backends (`tls = { sni, verify, ca }`); cleartext when
    /// absent.
    pub tls: Option<UpstreamTlsConfig>,
    /// Speak HTTP/2 to the backends: with TLS, ALPN offers `h2` first (a
    /// backend may still choose HTTP/1.1); in cleartext, HTTP/2 by prior
    /// knowledge. Requests share one connection per backend. Default false.
    pub http2: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            lb: Algorithm::default(),
            hash_key: None,
            backends: Vec::new(),
            discovery: None,
            failover: Failover::default(),
            panic_threshold: LbOptions::default().panic_threshold,
            slow_start: None,
            retry: RetryPolicy::default(),
            timeouts: PeerOptions::default(),
            health: None,
            outlier: OutlierConfig::default(),
            breaker: BreakerConfig::default(),
            concurrency: None,
            tls: None,
            http2: false,
        }
    }
}

/// Where backends come from besides the static list.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// DNS names to resolve: `host:port` (A/AAAA) or `srv:_service._proto.name`
    /// (SRV); one string or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub dns: Vec<String>,
    /// A TOML file of `backends = [...]`, re-read on the interval.
    pub file: Option<PathBuf>,
    /// How often to refresh. Default 5 s.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub interval: Duration,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

impl UpstreamConfig {
    /// The load balancer's options this table describes.
    pub fn lb_options(&self) -> LbOptions {
        let mut o = LbOptions::default()
            .with_failover(self.failover.clone())
            .with_panic_threshold(self.panic_threshold);
        if let Some(s) = &self.slow_start {
            o = o.with_slow_start(*s);
        }
        o
    }

    /// Check every value, naming the field (`upstreams.NAME.…`) at fault.
    ///
    /// # Errors
    /// The first invalid value.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let at = |field: &str| format!("upstreams.{name}.{field}");
        if detour_lb::Selection::hashes_key(&self.lb) && self.hash_key.is_none() {
            return Err(ConfigError::field(
                at("hash_key"),
                "consistent hashing needs a hash_key (e.g. \"header:x-user\")",
            ));
        }
        if self.backends.is_empty()
            && self
                .discovery
                .as_ref()
                .is_none_or(|d| d.dns.is_empty() && d.file.is_none())
        {
            return Err(ConfigError::field(
                at("backends"),
                "an upstream needs backends or discovery",
            ));
        }
        if let Some(d) = &self.discovery {
            for (i, t) in d.dns.iter().enumerate() {
                t.parse::<DnsTarget>().map_err(|e| {
                    ConfigError::field(at(&format!("discovery.dns[{i}]")), format!("{e}"))
                })?;
            }
        }
        // The crates name their fields with their table ("health.rise",
        // "breaker.open_for"); the retry policy's and the budget's keys live in
        // the retry table.
        let bad = |e: InvalidConfig| ConfigError::field(at(e.field), e.reason);
        if let Some(d) = &self.discovery {
            check_duration("discovery.interval", d.interval, Zero::Refused).map_err(bad)?;
        }
        self.timeouts
            .validate()
            .map_err(|e| ConfigError::field(at(&format!("timeouts.{}", e.field)), e.reason))?;
        self.lb_options().validate().map_err(bad)?;
        self.retry
            .clone()
            .validate()
            .map_err(|e| ConfigError::field(at(&format!("retry.{}", e.field)), e.reason))?;
        budget_config(&self.retry).validate().map_err(|e| {
            let key = e.field.replace("budget.", "retry.budget_");
            ConfigError::field(at(&key), e.reason)
        })?;
        if let Some(h) = &self.health {
            h.clone().validate().map_err(bad)?;
        }
        self.outlier.clone().validate().map_err(bad)?;
        self.breaker.validate().map_err(bad)?;
        if let Some(c) = &self.concurrency {
            // detour-breaker names the table `limit`; here it is `concurrency`.
            c.validate().map_err(|e| {
                let key = e.field.replacen("limit.", "concurrency.", 1);
                ConfigError::field(at(&key), e.reason)
            })?;
        }
        // Active HTTP checks speak cleartext HTTP/1.1: against TLS or h2c
        // backends every check would fail and take them all out of service.
        if let Some(h) = &self.health {
            if h.kind == detour_health::CheckKind::Http && (self.tls.is_some() || self.http2) {
                return Err(ConfigError::field(
                    at("health.kind"),
                    "HTTP checks speak cleartext HTTP/1.1; with tls or http2 use kind = \"tcp\"",
                ));
            }
        }
        if let Some(t) = &self.tls {
            if let Some(sni) = &t.sni {
                crate::tls::check_sni(sni, &at("tls.sni"))?;
            }
            TlsClient::new(t, self.http2, &at("tls"))?;
        }
        Ok(())
    }
}

/// The retry budget a policy asks for.
fn budget_config(policy: &RetryPolicy) -> BudgetConfig {
    let mut b = BudgetConfig::default();
    b.ratio = policy.budget_ratio;
    b.min_per_second = policy.budget_min_per_second;
    b.window = policy.budget_window;
    b
}

/// Hears every attempt to this upstream's backends: breakers and outlier
/// detection learn from it, and the attempt metrics count it.
struct UpstreamObserver {
    breakers: Option<Arc<BreakerRegistry>>,
    outlier: Arc<OutlierDetector>,
    metrics: Arc<Lazy<AttemptHandles>>,
    per_backend: Arc<BackendCounters>,
}

impl Observer for UpstreamObserver {
    fn on_attempt(&self, o: &AttemptOutcome<'_>) {
        self.metrics.get().record(o);
        self.per_backend.record(o);
        if let Some(b) = &self.breakers {
            b.on_attempt(o);
        }
        self.outlier.on_attempt(o);
    }
}

/// An upstream: its backends and everything that decides which one takes a
/// request. Build it with [`Upstream::from_config`].
pub struct Upstream {
    name: Arc<str>,
    lb: Arc<AnyLoadBalancer>,
    hash_key: Option<HashKey>,
    breakers: Option<Arc<BreakerRegistry>>,
    budget: Option<Arc<dyn RetryBudgetGate>>,
    limit: Option<Arc<ConcurrencyLimit>>,
    health: Option<Arc<HealthChecker<detour_health::ConfiguredCheck<TcpConnector>>>>,
    outlier: Arc<OutlierDetector>,
    cap: Arc<RemovalCap>,
    policy: Arc<RetryPolicy>,
    options: PeerOptions,
    observer: Arc<dyn Observer>,
    attempts: Arc<Lazy<AttemptHandles>>,
    per_backend: Arc<BackendCounters>,
    discovery: Option<(Sources, Duration)>,
    requests: RequestMetrics,
    tls: Option<(TlsClient, Option<Arc<str>>)>,
    http2: bool,
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
        config.validate(name)?;
        let bad = |field: &str, e: &dyn std::fmt::Display| {
            ConfigError::field(format!("upstreams.{name}.{field}"), e.to_string())
        };
        let algo = config.lb;
        let lb = Arc::new(
            AnyLoadBalancer::try_new(algo, config.lb_options()).map_err(|e| bad("failover", &e))?,
        );
        let mut outlier = OutlierDetector::new(config.outlier.clone())
            .map_err(|e| bad("outlier", &e))?
            .upstream(name);
        {
            let lb4 = Arc::clone(&lb);
            let ev = events.clone();
            outlier = outlier.on_event(move |e| {
                lb4.refresh_health(Instant::now());
                if let Some(ev) = &ev {
                    ev(e);
                }
            });
        }
        let outlier = Arc::new(outlier);
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
        let health = match &config.health {
            Some(h) => {
                let lb2 = Arc::clone(&lb);
                let mut checker = HealthChecker::from_config(h.clone(), TcpConnector, move || {
                    lb2.backends().to_vec()
                })
                .map_err(|e| bad("health", &e))?
                .upstream(name);
                // Tier loads and panic mode follow the checks at once, not at
                // the load balancer's next periodic refresh.
                let lb3 = Arc::clone(&lb);
                let ev = events.clone();
                checker = checker.on_event(move |e| {
                    lb3.refresh_health(Instant::now());
                    if let Some(ev) = &ev {
                        ev(e);
                    }
                });
                Some(Arc::new(checker))
            }
            None => None,
        };
        // Every backend that joins: its breaker, the removal ceiling, and (with
        // active checks) no traffic before its first passing check.
        let per_backend = Arc::new(BackendCounters::new(name));
        {
            let breakers = breakers.clone();
            let outlier = Arc::clone(&outlier);
            let health = health.clone();
            let per_backend = Arc::clone(&per_backend);
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
        if !config.backends.is_empty() {
            lb.update(config.backends.iter().map(|s| s.to_backend()));
        }
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
                Sources::new(config, d).map_err(|e| bad("discovery.dns", &e))?,
                d.interval,
            )),
            None => None,
        };
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
            tls,
            http2: config.http2,
            services_started,
            unstarted_logged: AtomicBool::new(false),
        })
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
    /// breaker (or any, in panic mode).
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
        let Some(permit) = self.lb.select(key, session.tried(), Instant::now()) else {
            return Err(self.why_none());
        };
        let mut peer = HttpPeer::admitted(permit, Arc::clone(&self.name))
            .with_options(self.options.clone())
            .with_observer(Arc::clone(&self.observer))
            .with_policy(Arc::clone(&self.policy));
        if let Some(b) = &self.budget {
            peer = peer.with_budget(Arc::clone(b));
        }
        if let Some(g) = guard {
            peer = peer.with_guard(g);
        }
        if let Some((client, sni)) = &self.tls {
            // Without a configured name, the backend's IP address is the
            // name verified (and no SNI is sent, as TLS wants for addresses).
            let name = match sni {
                Some(n) => Arc::clone(n),
                None => Arc::from(peer.addr.ip().to_string()),
            };
            peer = peer.with_tls(client.peer_tls(name));
        }
        Ok(peer.with_http2(self.http2))
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
                // interval later, not with a second round at once.
                tokio::time::sleep(interval).await;
                run_discovery(lb, sources, interval, stop).await;
            });
        }
        Services { stop }
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

/// Run the first round of every upstream's checks and discovery
/// ([`Upstream::first_round`]) on `runtime`, all at once, and wait for them.
pub async fn first_rounds(upstreams: &[Arc<Upstream>], runtime: &tokio::runtime::Handle) {
    let rounds: Vec<_> = upstreams
        .iter()
        .map(|u| {
            let u = Arc::clone(u);
            runtime.spawn(async move { u.first_round().await })
        })
        .collect();
    for r in rounds {
        let _ = r.await;
    }
}

/// Every source an upstream's backends come from, asked together: the
/// static list, DNS, a file. A round that fails anywhere changes nothing.
#[derive(Clone)]
struct Sources(Arc<SourcesInner>);

struct SourcesInner {
    fixed: StaticDiscovery,
    dns: Option<DnsDiscovery<SystemResolver>>,
    file: Option<FileDiscovery>,
}

impl Sources {
    fn new(config: &UpstreamConfig, d: &DiscoveryConfig) -> Result<Self, DiscoveryError> {
        let dns = if d.dns.is_empty() {
            None
        } else {
            // Validated already: every target parses.
            let targets: Vec<DnsTarget> = d.dns.iter().filter_map(|t| t.parse().ok()).collect();
            Some(DnsDiscovery::system(targets)?)
        };
        Ok(Sources(Arc::new(SourcesInner {
            fixed: StaticDiscovery::new(config.backends.iter().cloned()),
            dns,
            file: d.file.as_ref().map(FileDiscovery::new),
        })))
    }
}

impl ServiceDiscovery for Sources {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        let mut all = self.0.fixed.discover().await?;
        if let Some(dns) = &self.0.dns {
            all.extend(dns.discover().await?);
        }
        if let Some(file) = &self.0.file {
            all.extend(file.discover().await?);
        }
        Ok(all)
    }
}

/// An upstream's background work; dropping it stops everything.
#[derive(Debug)]
pub struct Services {
    stop: watch::Sender<bool>,
}

impl Services {
    /// Stop now (also what dropping does).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
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
