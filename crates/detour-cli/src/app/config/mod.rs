//! The `detour` binary's configuration file.
//!
//! ```toml
//! [server]            # listeners, workers, limits (detour-server)
//! [admin]             # the admin listener
//! [log]               # access log and log format
//! [upstreams.NAME]    # backends and everything failover needs
//! [[routes]]          # host + path prefix -> upstream, with overrides
//! ```
//! Unknown keys are errors; every error names the file, the line and the
//! dotted field.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use detour_core::{check_duration, PeerOptions, RetryPolicy, Zero};
use detour_server::config::{toml_error, ConfigError};
use detour_server::upstream::UpstreamConfig;
use detour_server::ServerConfig;
use serde::{Deserialize, Serialize};

use super::routes::HostPattern;

pub mod paths;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Accept a file without `[[routes]]` (every request then gets 404):
    /// an explicit opt-in, since an empty file is far more often a mistake.
    /// Default false. A reload never removes every route of a running
    /// configuration, whatever this says.
    pub allow_no_routes: bool,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[upstreams.NAME]`.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[[routes]]`, tried in order.
    pub routes: Vec<RouteConfig>,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin API listens. Default `127.0.0.1:9901`; `enabled =
    /// false` turns it off. Beyond loopback a `token` is required.
    pub listen: SocketAddr,
    /// Serve the admin API. Default true.
    pub enabled: bool,
    /// When set, every endpoint but `/healthz` wants `Authorization: Bearer TOKEN`.
    /// Required when `listen` is not a loopback address.
    pub token: Option<String>,
    /// Connections served at once; further ones wait in the kernel's accept
    /// queue until one closes. Default 64, at most [`MAX_ADMIN_CONNECTIONS`].
    pub max_connections: usize,
    /// Host names (without port) that requests may carry in `Host` besides
    /// the listen address and `localhost`: the names a proxy in front of the
    /// admin API or an operator uses. Default none.
    pub allowed_hosts: Vec<String>,
    /// Time a client has to send a complete request head; also the longest
    /// a keep-alive connection may sit idle between requests. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            enabled: true,
            token: None,
            max_connections: 64,
            allowed_hosts: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// The largest `[admin] max_connections`: an admin API needs a handful.
pub const MAX_ADMIN_CONNECTIONS: usize = 4096;

impl AdminConfig {
    /// Check the table: bounded timeouts, at least one connection, and a
    /// token whenever the API is reachable beyond this host.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the `admin.…` field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration(
            "admin.header_read_timeout",
            self.header_read_timeout,
            Zero::Refused,
        )?;
        if !(1..=MAX_ADMIN_CONNECTIONS).contains(&self.max_connections) {
            return Err(ConfigError::field(
                "admin.max_connections",
                format!(
                    "must be between 1 and {MAX_ADMIN_CONNECTIONS}, got {}",
                    self.max_connections
                ),
            ));
        }
        for (i, h) in self.allowed_hosts.iter().enumerate() {
            let host_only = h
                .parse::<http::uri::Authority>()
                .is_ok_and(|a| a.port().is_none() && !h.contains('@'));
            if !host_only {
                return Err(ConfigError::field(
                    format!("admin.allowed_hosts[{i}]"),
                    format!("{h:?} is not a host name (give it without a port)"),
                ));
            }
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::field("admin.token", "must not be empty"));
        }
        if self.enabled && !is_loopback(self.listen.ip()) && self.token.is_none() {
            return Err(ConfigError::field(
                "admin.token",
                format!(
                    "the admin API listens on {} beyond loopback, where anyone who can reach it \
                     could drain backends: set a token (or listen on 127.0.0.1)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

/// 127.0.0.0/8, ::1, and 127.x written as an IPv4-mapped IPv6 address.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// One line per request on stdout (target `detour::access`, always at
    /// `info` whatever `level` or `RUST_LOG` say). Default true.
    pub access_log: bool,
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// A tracing filter (`info`, `warn`, …). Default `info`. `RUST_LOG`,
    /// when set, replaces it; neither silences the access log while
    /// `access_log` is true.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access_log: true,
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `*`, `example.com` or `*.example.com`. Default `*`.
    #[serde(default = "any_host")]
    pub host: String,
    /// Path prefix. Default `/`.
    #[serde(default = "root")]
    pub path_prefix: String,
    /// The upstream's name.
    pub upstream: String,
    /// This route's retry policy: keys as in `[upstreams.NAME.retry]`, each
    /// one not written taken from the upstream's policy (loaded from a
    /// file). The budget is the upstream's: `budget_*` keys are refused here
    /// (and left out when the configuration is written out).
    #[serde(serialize_with = "route_retry")]
    pub retry: Option<RetryPolicy>,
    /// Replaces the upstream's per-attempt timeouts for this route.
    pub timeouts: Option<PeerOptions>,
    /// Methods this route declares safe to retry (adds to the idempotent ones).
    #[serde(default)]
    pub safe_methods: Vec<String>,
    /// Treat a request carrying `Idempotency-Key` as safe to retry.
    pub idempotency_key: Option<bool>,
    /// Match on the path as the client sent it and forward that path, rather
    /// than the normalized one (`[server.paths]`). The server-wide refusals
    /// still apply. Default false.
    #[serde(default)]
    pub raw_path: bool,
}

/// A route's retry policy as the file may say it: without the budget keys,
/// which only an upstream's policy may carry.
fn route_retry<S: serde::Serializer>(
    policy: &Option<RetryPolicy>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let Some(policy) = policy else {
        return s.serialize_none();
    };
    let mut table = toml::Table::try_from(policy).map_err(serde::ser::Error::custom)?;
    table.retain(|k, _| !is_budget_key(k));
    table.serialize(s)
}

fn any_host() -> String {
    "*".into()
}

fn root() -> String {
    "/".into()
}

impl Config {
    /// Parse and validate `text`, read from `file`: errors name it, and
    /// relative paths in it are resolved against its directory. Without a
    /// file, a relative path is refused (see [`load`](Self::load)).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line and field at fault.
    pub fn from_toml(text: &str, file: Option<&Path>) -> Result<Self, ConfigError> {
        let base_dir = file.map(paths::base_dir_of).transpose()?;
        Self::load(text, file, base_dir.as_deref())
    }

    /// Parse and validate `text`. `file` names the source in errors;
    /// relative paths (certificates, CA files, discovery files) are resolved
    /// against `base_dir`, and refused with their field named when it is
    /// `None`: a configuration read from a source with no directory (a key
    /// in a store) has nothing to resolve them against.
    ///
    /// Retry policies are inherited key by key: `[server.retry]` is the base
    /// of every `[upstreams.NAME.retry]`, and an upstream's policy the base
    /// of each of its routes' `retry`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line and field at fault.
    pub fn load(
        text: &str,
        file: Option<&Path>,
        base_dir: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let attach = |e: ConfigError| match file {
            Some(f) => e.in_file(f),
            None => e,
        };
        // Parsed as written first, so errors point at the line at fault.
        let _: Config = toml::from_str(text).map_err(|e| attach(toml_error(text, &e)))?;
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| attach(toml_error(text, &e)))?;
        inherit_retry(&mut doc).map_err(attach)?;
        let mut config = Config::deserialize(doc)
            .map_err(|e| attach(ConfigError::field("retry", e.message().to_string())))?;
        paths::resolve(&mut config, base_dir).map_err(attach)?;
        config.validate().map_err(attach)
    }

    /// Read, parse and validate the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or a [`ConfigError`] naming the field.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::of_file(path, format!("cannot read: {e}")))?;
        Self::from_toml(&text, Some(path))
    }

    /// Check what serde cannot: cross-references and ranges.
    ///
    /// # Errors
    /// The first invalid value, with its dotted field.
    pub fn validate(self) -> Result<Self, ConfigError> {
        let server = self.server.clone().validate()?;
        self.admin.validate()?;
        for (name, up) in &self.upstreams {
            up.validate(name)?;
        }
        if self.routes.is_empty() && !self.allow_no_routes {
            return Err(ConfigError::field(
                "routes",
                "no [[routes]]: every request would get 404 (add a route, or set \
                 allow_no_routes = true to start without any)",
            ));
        }
        self.validate_routes()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::field("log.level", e.to_string()))?;
        Ok(Config { server, ..self })
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        for (i, r) in self.routes.iter().enumerate() {
            let at = |f: &str| format!("routes[{i}].{f}");
            HostPattern::parse(&r.host).map_err(|e| ConfigError::field(at("host"), e))?;
            if !r.path_prefix.starts_with('/') {
                return Err(ConfigError::field(
                    at("path_prefix"),
                    "must start with \"/\"",
                ));
            }
            if !self.upstreams.contains_key(&r.upstream) {
                return Err(ConfigError::field(
                    at("upstream"),
                    format!("no upstream named {:?}", r.upstream),
                ));
            }
            if let Some(p) = &r.retry {
                p.clone().validate().map_err(|e| {
                    ConfigError::field(at(&format!("retry.{}", e.field)), e.reason.clone())
                })?;
            }
            if let Some(t) = &r.timeouts {
                t.validate().map_err(|e| {
                    ConfigError::field(at(&format!("timeouts.{}", e.field)), e.reason)
                })?;
            }
            for (j, m) in r.safe_methods.iter().enumerate() {
                http::Method::from_bytes(m.as_bytes()).map_err(|_| {
                    ConfigError::field(
                        at(&format!("safe_methods[{j}]")),
                        format!("{m:?} is not a method"),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The retry policy `route` uses over its upstream's policy `base`.
    pub fn route_policy(&self, route: &RouteConfig, base: &RetryPolicy) -> Arc<RetryPolicy> {
        let mut policy = route.retry.clone().unwrap_or_else(|| base.clone());
        for m in &route.safe_methods {
            let m = m.to_ascii_uppercase();
            if !policy.safe_methods.contains(&m) {
                policy.safe_methods.push(m);
            }
        }
        if let Some(k) = route.idempotency_key {
            policy.idempotency_key = k;
        }
        Arc::new(policy)
    }
}

/// Keys of a retry table that configure the upstream's retry budget.
fn is_budget_key(key: &str) -> bool {
    key.starts_with("budget_")
}

/// Fill each retry table of `doc` from its base, key by key: `[server.retry]`
/// → `[upstreams.NAME.retry]` → `[[routes]] retry` (the route's upstream's).
///
/// # Errors
/// A route's `retry` with a `budget_*` key: the budget is the upstream's.
fn inherit_retry(doc: &mut toml::Table) -> Result<(), ConfigError> {
    let server = doc
        .get("server")
        .and_then(|s| s.get("retry"))
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_default();
    let mut effective = BTreeMap::new();
    if let Some(ups) = doc.get_mut("upstreams").and_then(toml::Value::as_table_mut) {
        for (name, up) in ups.iter_mut() {
            let Some(up) = up.as_table_mut() else {
                continue;
            };
            let retry = up
                .entry("retry")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(retry) = retry.as_table_mut() {
                fill_missing(retry, &server, |_| true);
                effective.insert(name.clone(), retry.clone());
            }
        }
    }
    let Some(routes) = doc.get_mut("routes").and_then(toml::Value::as_array_mut) else {
        return Ok(());
    };
    for (i, route) in routes.iter_mut().enumerate() {
        let Some(route) = route.as_table_mut() else {
            continue;
        };
        let base = route
            .get("upstream")
            .and_then(toml::Value::as_str)
            .and_then(|u| effective.get(u))
            .cloned()
            .unwrap_or_default();
        let Some(retry) = route.get_mut("retry").and_then(toml::Value::as_table_mut) else {
            continue;
        };
        if let Some(key) = retry.keys().find(|k| is_budget_key(k)) {
            return Err(ConfigError::field(
                format!("routes[{i}].retry.{key}"),
                "a route has no retry budget of its own: its retries are paid from its \
                 upstream's (set it in [upstreams.NAME.retry])",
            ));
        }
        fill_missing(retry, &base, |k| !is_budget_key(k));
    }
    Ok(())
}

/// Copy into `table` each key of `base` it lacks and `wanted` accepts.
fn fill_missing(table: &mut toml::Table, base: &toml::Table, wanted: impl Fn(&str) -> bool) {
    for (k, v) in base {
        if wanted(k) && !table.contains_key(k) {
            table.insert(k.clone(), v.clone());
        }
    }
}
