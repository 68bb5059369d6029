//! Server configuration: the `[server]` table of a TOML file, plus the command line.
//!
//! Every field has a documented default; [`ServerConfig::validate`] rejects nonsense
//! with the field named, at load time.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use detour_core::{check_duration, check_optional_duration, InvalidConfig, RetryPolicy, Zero};
use serde::{Deserialize, Serialize};

// Defined in its own module so that `tls` (which `validate` calls to load
// certificates) can report errors without depending on this one.
pub use crate::error::ConfigError;

/// How worker threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeModel {
    /// One current-thread runtime per worker, each with its own `SO_REUSEPORT`
    /// listener and upstream pool (the default: work stays on its core).
    #[default]
    PerWorker,
    /// One work-stealing runtime with `threads` workers sharing one listener and
    /// one pool: for hooks that do uneven work.
    WorkStealing,
}

/// The `[server]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Plain HTTP/1.1 addresses to listen on. Default `["127.0.0.1:8080"]`
    /// when no `[[server.listeners]]` are given either, else none.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Listeners with TLS or HTTP/2 (`[[server.listeners]]`). Default none.
    pub listeners: Vec<ListenerConfig>,
    /// Downstream HTTP/2 settings (`[server.http2]`).
    pub http2: Http2Config,
    /// Worker threads. Default 1.
    pub threads: usize,
    /// How workers run. Default `per_worker`.
    pub runtime: RuntimeModel,
    /// How long SIGTERM waits for in-flight requests. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// A Unix socket where the running server hands its listening sockets
    /// to a successor (`detour --upgrade`), so an upgrade drops no
    /// connection (see [`upgrade`](crate::upgrade)). Default none.
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// Name used in `Via` and `Proxy-Status`. Default `detour`.
    pub proxy_name: String,
    /// Downstream limits.
    pub limits: LimitsConfig,
    /// Upstream connection pool.
    pub pool: PoolConfig,
    /// Forwarding headers.
    pub forwarding: ForwardingConfig,
    /// Request paths: normalization and the paths refused (`[server.paths]`).
    pub paths: PathsConfig,
    /// The default retry policy (a hook may choose another per request).
    pub retry: RetryPolicy,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![default_listen()],
            listeners: Vec::new(),
            http2: Http2Config::default(),
            threads: 1,
            runtime: RuntimeModel::PerWorker,
            grace_period: Duration::from_secs(10),
            upgrade_socket: None,
            proxy_name: "detour".into(),
            limits: LimitsConfig::default(),
            pool: PoolConfig::default(),
            forwarding: ForwardingConfig::default(),
            paths: PathsConfig::default(),
            retry: RetryPolicy::default(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// An application protocol a listener speaks (named as in ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AppProtocol {
    /// `"http/1.1"`.
    Http11,
    /// `"h2"`: HTTP/2 (over TLS by ALPN; on a cleartext listener, by prior
    /// knowledge).
    H2,
}

impl<'de> Deserialize<'de> for AppProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "http/1.1" => Ok(AppProtocol::Http11),
            "h2" => Ok(AppProtocol::H2),
            other => Err(serde::de::Error::custom(format!(
                "unknown protocol {other:?} (expected \"h2\" or \"http/1.1\")"
            ))),
        }
    }
}

impl Serialize for AppProtocol {
    /// Its ALPN name, as it is read.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            AppProtocol::Http11 => "http/1.1",
            AppProtocol::H2 => "h2",
        })
    }
}

/// One `[[server.listeners]]` entry: an address with its protocols and,
/// optionally, TLS.
///
/// ```toml
/// [[server.listeners]]
/// addr = "0.0.0.0:8443"
/// tls = { cert = "site.pem", key = "site.key" }
/// protocols = ["h2", "http/1.1"]   # ALPN order; the default with TLS
///
/// [[server.listeners]]
/// addr = "127.0.0.1:8081"
/// protocols = ["h2"]               # cleartext HTTP/2 (prior knowledge)
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Certificates: `{ cert, key }` or a list of them chosen by SNI.
    /// Cleartext when absent.
    #[serde(default)]
    pub tls: Option<crate::tls::ListenerTls>,
    /// Protocols in order of preference. Default `["h2", "http/1.1"]` with
    /// TLS, `["http/1.1"]` without. On a cleartext listener `["h2"]` means
    /// HTTP/2 by prior knowledge, and both means either (told apart by the
    /// HTTP/2 preface).
    #[serde(default)]
    pub protocols: Vec<AppProtocol>,
}

impl ListenerConfig {
    /// A cleartext HTTP/1.1 listener at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        ListenerConfig {
            addr,
            tls: None,
            protocols: Vec::new(),
        }
    }

    /// Serve TLS with this certificate and key (PEM files).
    pub fn with_tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        let pair = crate::tls::CertKeyFiles {
            cert: cert.into(),
            key: key.into(),
        };
        match &mut self.tls {
            Some(t) => t.certs.push(pair),
            None => {
                self.tls = Some(crate::tls::ListenerTls { certs: vec![pair] });
            }
        }
        self
    }

    /// Speak these protocols, in order of preference.
    pub fn with_protocols(mut self, protocols: &[AppProtocol]) -> Self {
        self.protocols = protocols.to_vec();
        self
    }

    /// The protocols in effect (the default when none were listed).
    pub fn effective_protocols(&self) -> Vec<AppProtocol> {
        if !self.protocols.is_empty() {
            self.protocols.clone()
        } else if self.tls.is_some() {
            vec![AppProtocol::H2, AppProtocol::Http11]
        } else {
            vec![AppProtocol::Http11]
        }
    }
}

/// Downstream HTTP/2 (`[server.http2]`): stream limits and the protection
/// against rapid-reset floods (CVE-2023-44487).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Http2Config {
    /// Streams one client connection may have open at once. Default 128.
    pub max_concurrent_streams: u32,
    /// Streams a client may reset before the server has even taken them up;
    /// past this the connection is closed with GOAWAY (`ENHANCE_YOUR_CALM`):
    /// the rapid-reset defence. Default 20.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may have to reset because of the client's errors
    /// before it closes the connection with GOAWAY. Default 1024.
    pub max_local_error_reset_streams: usize,
    /// Send a PING this often on an idle connection (off when absent).
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Option<Duration>,
    /// Close the connection when a PING is not answered within this.
    /// Default 20 s.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 128,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            keep_alive_interval: None,
            keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

/// The largest `limits.max_connections`: far beyond what one host can hold
/// open, and far below what the connection semaphore can count.
pub const MAX_CONNECTIONS: usize = 10_000_000;

/// Downstream limits (`[server.limits]`): what one client may hold, and for
/// how long, before the exchange is ended as the client's fault.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// Open downstream connections across all workers; further clients wait
    /// in the accept queue. Default 10,000, at most [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Largest request head in bytes (request line + headers); larger → 431.
    /// Default 64 KiB (at least 8 KiB).
    pub max_header_size: usize,
    /// Largest request target in bytes; longer → 414: on HTTP/1.1 the
    /// target as sent on the request line, on HTTP/2 `:path` alone (its
    /// `:authority` is a field, under `max_header_size`). Default 8 KiB; at
    /// most `max_header_size`.
    pub max_uri_size: usize,
    /// Largest request body in bytes; larger → 413. 0 means unlimited (bodies
    /// stream through in constant memory). Default 0.
    pub max_body_size: u64,
    /// Time a client has to send a complete request head once it started
    /// one; → 408. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest quiet time of a keep-alive connection between requests; then
    /// it is closed without a word. Default 75 s.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Longest time bytes wait to be written to a client that takes none of
    /// them (a client that stopped reading). HTTP/1.1 connections and tunnels
    /// are closed; on HTTP/2 the stuck stream is reset. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Longest wait for the next piece of a request body; → 408 (or a close
    /// once the response began). Default 60 s.
    #[serde(with = "humantime_serde")]
    pub client_body_timeout: Duration,
    /// Slowest request body accepted, in bytes per second, measured over
    /// `client_body_min_rate_window` of time spent waiting for the client (time
    /// spent waiting for the backend to take the body does not count);
    /// slower → 408. 0 turns the check off. Default 500.
    pub client_body_min_rate: u64,
    /// The window of `client_body_min_rate`: how far behind the rate a body
    /// may fall before it is cut. Default 20 s.
    #[serde(with = "humantime_serde")]
    pub client_body_min_rate_window: Duration,
    /// Forward `TRACE` requests (they echo the request, cookies included,
    /// back to whoever sent it). Default false: `TRACE` gets 405.
    pub allow_trace: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_header_size: 64 * 1024,
            max_uri_size: 8 * 1024,
            max_body_size: 0,
            header_read_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            client_body_min_rate: 500,
            client_body_min_rate_window: Duration::from_secs(20),
            allow_trace: false,
        }
    }
}

impl LimitsConfig {
    /// What the durations' check (in [`ServerConfig::validate`]) leaves.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_uri_size < 16 || self.max_uri_size > self.max_header_size {
            return Err(ConfigError::field(
                "server.limits.max_uri_size",
                format!(
                    "must be between 16 bytes and max_header_size ({}), got {}",
                    self.max_header_size, self.max_uri_size
                ),
            ));
        }
        Ok(())
    }
}

/// The upstream connection pool (`[server.pool]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Idle connections kept per backend, per worker. Default 128.
    pub max_idle_per_peer: usize,
    /// A request that is not safe to repeat only reuses a pooled connection
    /// idle for less than this; otherwise it gets a fresh one, so a backend
    /// closing an idle connection cannot turn it into a 502. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub unsafe_max_idle: Duration,
    /// Which HTTP/1.1 client speaks to the backends: `"native"` (Detour's
    /// own, driven by the request's task; see the engine chapter) or
    /// `"hyper"` (hyper's client connection). Upgrades always use hyper's.
    /// Default `"native"`.
    pub http1_client: Http1Client,
}

/// The HTTP/1.1 client for upstream connections ([`PoolConfig::http1_client`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Http1Client {
    /// hyper's client connection, with a task per connection.
    Hyper,
    /// Detour's own connection, driven by the request's task.
    #[default]
    Native,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_peer: 128,
            unsafe_max_idle: Duration::from_secs(1),
            http1_client: Http1Client::default(),
        }
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), self.prefix, 32)
                    == masked(u32::from(a).into(), self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), self.prefix, 128) == masked(u128::from(a), self.prefix, 128)
            }
            (IpAddr::V6(_), IpAddr::V4(a)) => self.contains(IpAddr::V6(a.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
        }
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
            None => width,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    /// `addr/prefix`, as it is read.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Forwarding headers (`[server.forwarding]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ForwardingConfig {
    /// Peers whose `X-Forwarded-*` headers are trusted and extended; from
    /// anyone else they are replaced. Default none.
    pub trusted_proxies: Vec<IpNet>,
    /// Add `X-Forwarded-For`, `-Proto` and `-Host`. Default true.
    pub x_forwarded: bool,
    /// Add `Via`. Default true.
    pub via: bool,
    /// The request-id header, generated when absent. Default `x-request-id`.
    pub request_id_header: String,
    /// Protocols a client may upgrade to (`Upgrade:` tokens, compared
    /// without case and version). Others are removed from the request, which
    /// then goes on as plain HTTP/1.1. `h2c` is never forwarded. Default
    /// `["websocket"]`.
    pub upgrade_protocols: Vec<String>,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            trusted_proxies: Vec::new(),
            x_forwarded: true,
            via: true,
            request_id_header: "x-request-id".into(),
            upgrade_protocols: vec!["websocket".into()],
        }
    }
}

/// Request paths (`[server.paths]`): what the server does to a request's path
/// once, before any hook runs, so that routing, every hook and the upstream
/// all see the same path.
///
/// ```toml
/// [server.paths]
/// normalize = true            # decode %XX of unreserved characters, then remove dot segments
/// merge_slashes = false       # "//a///b" -> "/a/b"
/// encoded_slashes = "reject"  # %2F, %5C or \ in a path -> 400 ("keep" forwards them as they are)
/// ```
///
/// The query is never touched. `*` (for `OPTIONS`) is left alone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PathsConfig {
    /// Decode percent-encoded unreserved characters (RFC 3986 §2.3: letters,
    /// digits, `-`, `.`, `_`, `~`), then remove `.` and `..` segments
    /// (§5.2.4), in that order, so `/%2e%2e/` is a `..` segment. A path that
    /// climbs above `/`, a malformed escape (`%zz`, a trailing `%`) and an
    /// encoded NUL (`%00`) get 400. Other escapes are kept byte for byte.
    /// Default true.
    pub normalize: bool,
    /// Merge repeated slashes: `//a///b` becomes `/a/b`. Default false: to
    /// RFC 3986 an empty segment is a segment, and some backends mean it.
    pub merge_slashes: bool,
    /// What to do with an encoded slash or backslash (`%2F`, `%5C`, any
    /// case) or a raw `\` in a path. Default `reject`.
    pub encoded_slashes: EncodedSlashes,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            normalize: true,
            merge_slashes: false,
            encoded_slashes: EncodedSlashes::Reject,
        }
    }
}

/// What the server does with `%2F`, `%5C` or `\` in a request path
/// (`[server.paths] encoded_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EncodedSlashes {
    /// Answer 400. A backend that decodes `%2F` into `/` after the proxy
    /// matched the path would otherwise see a different path than the one
    /// routed (`/public%2F..%2Fadmin`); Windows servers read `\` as `/`.
    #[default]
    Reject,
    /// Forward them as they are, never decoded: for backends where an encoded
    /// slash is data (object keys). Routing sees `%2F`, never `/`.
    Keep,
}

impl ServerConfig {
    /// Check every field.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field whose value makes no sense.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        if self.listen.is_empty() && self.listeners.is_empty() {
            self.listen.push(default_listen());
        }
        self.check_durations()?;
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("server.listeners[{i}]");
            let protocols = l.effective_protocols();
            for (j, p) in protocols.iter().enumerate() {
                if protocols[..j].contains(p) {
                    return Err(ConfigError::field(
                        format!("{at}.protocols"),
                        format!("{p:?} is listed twice"),
                    ));
                }
            }
            if let Some(tls) = &l.tls {
                crate::tls::ServerTls::load(tls, &format!("{at}.tls"), Vec::new())?;
            }
        }
        if self.http2.max_concurrent_streams == 0 {
            return Err(ConfigError::field(
                "server.http2.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.threads == 0 || self.threads > 1024 {
            return Err(ConfigError::field(
                "server.threads",
                format!("must be between 1 and 1024, got {}", self.threads),
            ));
        }
        if self.proxy_name.is_empty()
            || !self
                .proxy_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(ConfigError::field(
                "server.proxy_name",
                "must be a non-empty token (letters, digits, - . _)",
            ));
        }
        // The cap is a semaphore, which panics above 2^61 permits.
        if !(1..=MAX_CONNECTIONS).contains(&self.limits.max_connections) {
            return Err(ConfigError::field(
                "server.limits.max_connections",
                format!(
                    "must be between 1 and {MAX_CONNECTIONS}, got {}",
                    self.limits.max_connections
                ),
            ));
        }
        if self.limits.max_header_size < 8192 {
            return Err(ConfigError::field(
                "server.limits.max_header_size",
                format!(
                    "must be at least 8192 bytes, got {}",
                    self.limits.max_header_size
                ),
            ));
        }
        self.limits.validate()?;
        if http::HeaderName::from_bytes(self.forwarding.request_id_header.as_bytes()).is_err() {
            return Err(ConfigError::field(
                "server.forwarding.request_id_header",
                format!(
                    "{:?} is not a header name",
                    self.forwarding.request_id_header
                ),
            ));
        }
        for (i, p) in self.forwarding.upgrade_protocols.iter().enumerate() {
            let token = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token || p.eq_ignore_ascii_case("h2c") {
                return Err(ConfigError::field(
                    format!("server.forwarding.upgrade_protocols[{i}]"),
                    format!("{p:?} cannot be forwarded (a protocol name token; h2c never is)"),
                ));
            }
        }
        self.retry = self
            .retry
            .validate()
            .map_err(|e| ConfigError::field(format!("server.retry.{}", e.field), e.reason))?;
        Ok(self)
    }

    /// Hold every duration of the table (the retry policy checks its own) to
    /// [`detour_core::MAX_DURATION`], and refuse zero where it cannot work.
    /// A new duration field gets its line here.
    fn check_durations(&self) -> Result<(), InvalidConfig> {
        check_duration("server.grace_period", self.grace_period, Zero::Allowed)?;
        let h2 = &self.http2;
        check_optional_duration(
            "server.http2.keep_alive_interval",
            h2.keep_alive_interval,
            Zero::Refused,
        )?;
        check_duration(
            "server.http2.keep_alive_timeout",
            h2.keep_alive_timeout,
            Zero::Refused,
        )?;
        let limits = &self.limits;
        let refused_at_zero = [
            (
                "server.limits.header_read_timeout",
                limits.header_read_timeout,
            ),
            ("server.limits.keepalive_timeout", limits.keepalive_timeout),
            ("server.limits.send_timeout", limits.send_timeout),
            (
                "server.limits.client_body_timeout",
                limits.client_body_timeout,
            ),
            (
                "server.limits.client_body_min_rate_window",
                limits.client_body_min_rate_window,
            ),
        ];
        for (name, d) in refused_at_zero {
            check_duration(name, d, Zero::Refused)?;
        }
        check_duration(
            "server.pool.unsafe_max_idle",
            self.pool.unsafe_max_idle,
            Zero::Allowed,
        )
    }

    /// Parse the `[server]` table of a TOML document (other tables belong to
    /// the application and are left alone) and validate it.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field (and line, for syntax errors).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            server: ServerConfig,
            // Other tables belong to the application.
            #[serde(flatten)]
            _rest: toml::Table,
        }
        let doc: Doc = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        doc.server.validate()
    }

    /// Read and validate the `[server]` table of a TOML file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and the field.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::of_file(path, format!("cannot read: {e}")))?;
        Self::from_toml(&text).map_err(|e| e.in_file(path))
    }
}

/// Turn a TOML error into a [`ConfigError`] naming the line and the field
/// (the dotted path of the key the error points at).
pub fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let mut err = ConfigError {
        file: None,
        field: None,
        message: e.message().trim().to_string(),
    };
    let Some(span) = e.span() else { return err };
    let at = span.start.min(text.len());
    let line_no = text[..at].matches('\n').count() + 1;
    err.message = format!("line {line_no}: {}", err.message);
    // The table the error sits in: the last `[header]` above it.
    let mut table = String::new();
    for line in text[..at].lines() {
        let l = line.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    err.field = match (table.is_empty(), key) {
        (_, None) if !table.is_empty() => Some(table),
        (true, Some(k)) => Some(k),
        (false, Some(k)) => Some(format!("{table}.{k}")),
        _ => None,
    };
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = ServerConfig::from_toml("").unwrap();
        assert_eq!(c.threads, 1);
        assert_eq!(c.retry.max_retries, 3);
    }

    #[test]
    fn fields_are_named_in_errors() {
        let e = ServerConfig::from_toml("[server]\nthreads = 0\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("server.threads"));
        let e = ServerConfig::from_toml("[server.retry]\nmultiplier = 0.1\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("server.retry.multiplier"));
        let e = ServerConfig::from_toml("[server]\nthreds = 2\n").unwrap_err();
        assert!(e.to_string().contains("threds"), "{e}");
        let e = ServerConfig::from_toml("# c\n[server]\ngrace_period = \"soon\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("server.grace_period"), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = ServerConfig::from_toml("[server.limits]\nmax_connections = \"x\"\n").unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("server.limits.max_connections"),
            "{e}"
        );
    }

    #[test]
    fn durations_are_bounded() {
        for (table, key) in [
            ("server", "grace_period"),
            ("server.http2", "keep_alive_interval"),
            ("server.http2", "keep_alive_timeout"),
            ("server.limits", "header_read_timeout"),
            ("server.pool", "unsafe_max_idle"),
            ("server.retry", "max_delay"),
        ] {
            let text = format!("[{table}]\n{key} = \"10000000000000000000s\"\n");
            let e = ServerConfig::from_toml(&text).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(&*format!("{table}.{key}")), "{e}");
        }
        let e =
            ServerConfig::from_toml("[server.http2]\nkeep_alive_interval = \"0s\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("server.http2.keep_alive_interval"));
        ServerConfig::from_toml("[server]\ngrace_period = \"365d\"\n").unwrap();
    }

    #[test]
    fn other_tables_are_the_application_s() {
        let c = ServerConfig::from_toml(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.app]\nanything = 1\n",
        )
        .unwrap();
        assert_eq!(c.listen[0].port(), 0);
    }

    #[test]
    fn paths_default_to_normalize_and_reject_and_take_their_opt_ins() {
        let c = ServerConfig::from_toml("").unwrap();
        assert!(c.paths.normalize);
        assert!(!c.paths.merge_slashes);
        assert_eq!(c.paths.encoded_slashes, EncodedSlashes::Reject);
        let c = ServerConfig::from_toml(
            "[server.paths]\nnormalize = false\nmerge_slashes = true\nencoded_slashes = \"keep\"\n",
        )
        .unwrap();
        assert!(!c.paths.normalize);
        assert!(c.paths.merge_slashes);
        assert_eq!(c.paths.encoded_slashes, EncodedSlashes::Keep);
        let e =
            ServerConfig::from_toml("[server.paths]\nencoded_slashes = \"decode\"\n").unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("server.paths.encoded_slashes"),
            "{e}"
        );
    }

    #[test]
    fn ip_networks() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
    }
}
