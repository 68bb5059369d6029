//! [`UpstreamConfig`]: one `[upstreams.NAME]` table, its discovery table and
//! its validation (every field checked at load, the field named).

use std::path::PathBuf;
use std::time::Duration;

use detour_breaker::{BreakerConfig, BudgetConfig, LimitConfig};
use detour_core::{check_duration, HedgeConfig, InvalidConfig, PeerOptions, RetryPolicy, Zero};
use detour_health::{HealthConfig, OutlierConfig};
use detour_lb::{Algorithm, BackendSpec, DnsTarget, Failover, HashKey, LbOptions, SlowStart};
use serde::{Deserialize, Serialize};

use super::etcd::EtcdSourceConfig;
use super::kubernetes::KubernetesSourceConfig;
use crate::config::ConfigError;
use crate::tls::{TlsClient, UpstreamTlsConfig};

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
    /// Hedged requests (`[upstreams.NAME.hedge]`); off when absent.
    pub hedge: Option<HedgeConfig>,
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
            hedge: None,
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
    /// The keys under an etcd prefix, read once then watched (needs the
    /// `etcd` cargo feature, which the `detour` binary has).
    pub etcd: Option<EtcdSourceConfig>,
    /// A Kubernetes Service's endpoints, from its EndpointSlices (needs the
    /// `kubernetes` cargo feature, which the `detour` binary has).
    pub kubernetes: Option<KubernetesSourceConfig>,
    /// Whether an answer with no backend at all may empty the upstream.
    /// Default false: such an answer (a wiped prefix, a storm of expired
    /// leases, an emptied file) keeps the last set and marks the sources
    /// degraded.
    #[serde(default)]
    pub allow_empty: bool,
    /// How often to refresh. Default 5 s. A watched source (etcd) applies
    /// its changes at once besides.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub interval: Duration,
}

impl DiscoveryConfig {
    /// Whether any source is named.
    fn names_a_source(&self) -> bool {
        !self.dns.is_empty()
            || self.file.is_some()
            || self.etcd.is_some()
            || self.kubernetes.is_some()
    }
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

    /// Check every value, naming the field (`upstreams.NAME.…`) at fault,
    /// and read the files discovery names (etcd's credentials and TLS
    /// material, a kubeconfig), so that one that cannot be read is refused
    /// now.
    ///
    /// # Errors
    /// The first invalid value.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        self.check(name)?;
        let at = |field: &str| format!("upstreams.{name}.{field}");
        if let Some(d) = &self.discovery {
            if let Some(e) = &d.etcd {
                super::etcd::options(e, &at("discovery.etcd"))?;
            }
            if let Some(k) = &d.kubernetes {
                super::kubernetes::options(k, &at("discovery.kubernetes"))?;
            }
        }
        Ok(())
    }

    /// [`validate`](Self::validate) without reading discovery's files: for
    /// building an upstream, whose discovery sources read them anyway (with
    /// the same errors), so that they are not read twice.
    pub(super) fn check(&self, name: &str) -> Result<(), ConfigError> {
        let at = |field: &str| format!("upstreams.{name}.{field}");
        if detour_lb::Selection::hashes_key(&self.lb) && self.hash_key.is_none() {
            return Err(ConfigError::field(
                at("hash_key"),
                "consistent hashing needs a hash_key (e.g. \"header:x-user\")",
            ));
        }
        if self.backends.is_empty() && self.discovery.as_ref().is_none_or(|d| !d.names_a_source()) {
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
        if let Some(h) = &self.hedge {
            h.clone()
                .validate()
                .map_err(|e| ConfigError::field(at(&format!("hedge.{}", e.field)), e.reason))?;
        }
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
        // HTTP checks dial as the traffic does; over HTTP/2 their Host is
        // the request's :authority, which must be one.
        let http_check = self
            .health
            .as_ref()
            .filter(|h| h.kind == detour_health::CheckKind::Http);
        if let Some(host) = http_check.and_then(|h| h.host.as_deref()) {
            if self.http2 && host.parse::<http::uri::Authority>().is_err() {
                return Err(ConfigError::field(
                    at("health.host"),
                    format!("{host:?} is no authority (host[:port]), which HTTP/2 needs"),
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
pub(super) fn budget_config(policy: &RetryPolicy) -> BudgetConfig {
    let mut b = BudgetConfig::default();
    b.ratio = policy.budget_ratio;
    b.min_per_second = policy.budget_min_per_second;
    b.window = policy.budget_window;
    b
}
