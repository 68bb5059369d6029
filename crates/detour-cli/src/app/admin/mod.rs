//! The admin listener: `/healthz`, `/metrics`, `/status`, and backend control.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while serving, `503 draining` once a drain began |
//! | `GET /metrics` | Prometheus text |
//! | `GET /status` | JSON: every upstream's backends with health, breaker, in-flight |
//! | `GET /config` | the running configuration as TOML, defaults written out, secrets redacted |
//! | `POST /reload` | what SIGHUP does; JSON: `applied` or `refused` (with the field), and the changes that need a restart |
//! | `POST /upstreams/{name}/backends/{addr}/drain` | no new requests; in-flight ones finish |
//! | `POST /upstreams/{name}/backends/{addr}/maintenance` | out of service until enabled |
//! | `POST /upstreams/{name}/backends/{addr}/enable` | back in service |
//! | `POST /upstreams/{name}/backends/{addr}/weight` | `weight=N` (query or body, 0 to [`MAX_WEIGHT`]): the backend's weight from now on |
//!
//! It binds where `[admin] listen` says (loopback by default; beyond
//! loopback `[admin] token` is required). Every request but `/healthz`
//! passes the [`guard`]: its Host must name the listener (else `421`), a
//! request that changes state must not come from another origin (else
//! `403`), and with a token set it needs `Authorization: Bearer <token>`
//! (else `401`). A known path with the wrong method answers `405` with
//! `Allow`. `/healthz` needs neither Host nor token: orchestrators probe it by
//! whatever address they know, and it only says `ok` or `draining`.
//!
//! [`listener`] caps connections, times out silent clients and backs off
//! when `accept` fails.

pub mod guard;
pub mod listener;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use detour_core::Backend;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use tokio::sync::watch;

pub use guard::{Guard, Refusal};
pub use listener::{serve, ListenerLimits};

use super::effective;
use super::reload::{ReloadReport, Reloader};
use super::state::App;
use super::status::{Breaker, Health};

/// What the admin endpoints read and act on.
#[derive(Clone)]
pub struct Admin {
    pub(crate) app: Arc<App>,
    pub(crate) guard: Guard,
    pub(crate) metrics: Option<detour_proxy::metrics::MetricsHandle>,
    pub(crate) draining: watch::Receiver<bool>,
    pub(crate) reloader: Reloader,
}

/// The admin endpoints, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Healthz,
    Metrics,
    Status,
    Config,
    Reload,
    /// `/upstreams/{name}/backends/{addr}/{drain|maintenance|enable}`.
    Control,
    /// `/upstreams/{name}/backends/{addr}/weight`.
    Weight,
    /// `/debug/requests`: the last retried or failed requests.
    Requests,
}

/// The largest weight `POST …/weight` accepts: far above any useful ratio
/// between backends, and small enough that no selection table overflows.
pub const MAX_WEIGHT: u32 = 10_000;

/// The largest body `POST …/weight` reads (`weight=10000` is 12 bytes).
const MAX_WEIGHT_BODY: usize = 1024;

impl Endpoint {
    fn of(path: &str) -> Option<Endpoint> {
        match path {
            "/healthz" => Some(Endpoint::Healthz),
            "/metrics" => Some(Endpoint::Metrics),
            "/status" => Some(Endpoint::Status),
            "/config" => Some(Endpoint::Config),
            "/reload" => Some(Endpoint::Reload),
            "/debug/requests" => Some(Endpoint::Requests),
            p if p.starts_with("/upstreams/") && p.ends_with("/weight") => Some(Endpoint::Weight),
            p if p.starts_with("/upstreams/") => Some(Endpoint::Control),
            _ => None,
        }
    }

    /// The methods it answers, as an `Allow` value.
    fn allow(self) -> &'static str {
        match self {
            Endpoint::Healthz
            | Endpoint::Metrics
            | Endpoint::Status
            | Endpoint::Config
            | Endpoint::Requests => "GET, HEAD",
            Endpoint::Control | Endpoint::Weight | Endpoint::Reload => "POST",
        }
    }

    fn allows(self, method: &Method) -> bool {
        match self {
            Endpoint::Control | Endpoint::Weight | Endpoint::Reload => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

/// `405` naming the methods `endpoint` answers (RFC 9110 §15.5.6).
fn method_not_allowed(endpoint: Endpoint) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut().insert(
        header::ALLOW,
        header::HeaderValue::from_static(endpoint.allow()),
    );
    r
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut s = body.into();
    s.push('\n');
    reply(status, "text/plain; charset=utf-8", s)
}

/// A backend as `/status` shows it.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// Address.
    pub addr: SocketAddr,
    /// `healthy`, `unhealthy` (active check), `ejected`, `draining` or `maintenance`.
    pub health: Health,
    /// `closed`, `open`, `half_open`, or `none` when the upstream has no breakers.
    pub breaker: Breaker,
    /// Attempts in flight now.
    pub in_flight: u32,
    /// Weight.
    pub weight: u32,
    /// Priority tier.
    pub priority: u32,
    /// Locality, if any.
    pub region: Option<String>,
    /// Upstream latency EWMA in milliseconds, once measured.
    pub latency_ms: Option<f64>,
}

impl Admin {
    /// The admin API over `app`, guarded by `guard`.
    pub fn new(
        app: Arc<App>,
        guard: Guard,
        metrics: Option<detour_proxy::metrics::MetricsHandle>,
        draining: watch::Receiver<bool>,
        reloader: Reloader,
    ) -> Self {
        Admin {
            app,
            guard,
            metrics,
            draining,
            reloader,
        }
    }

    /// Answer `req`, which came in on a connection whose local address is
    /// `local`.
    async fn handle(&self, req: Request<Incoming>, local: SocketAddr) -> Response<Full<Bytes>> {
        let endpoint = Endpoint::of(req.uri().path());
        if endpoint == Some(Endpoint::Healthz) {
            return self.healthz(req.method());
        }
        if let Err(refusal) = self.guard.check(&req, local) {
            return refusal.response();
        }
        let Some(endpoint) = endpoint else {
            return text(StatusCode::NOT_FOUND, "no such admin endpoint");
        };
        if !endpoint.allows(req.method()) {
            return method_not_allowed(endpoint);
        }
        match endpoint {
            Endpoint::Metrics => self.metrics(),
            Endpoint::Status => self.status(),
            Endpoint::Config => self.config(),
            Endpoint::Reload => self.reload().await,
            Endpoint::Control => self.control(req.uri().path()),
            Endpoint::Weight => self.weight(req).await,
            Endpoint::Healthz => self.healthz(req.method()),
            Endpoint::Requests => self.recent_requests(),
        }
    }

    /// `/healthz`: no Host check and no token (see the module docs).
    fn healthz(&self, method: &Method) -> Response<Full<Bytes>> {
        if !Endpoint::Healthz.allows(method) {
            return method_not_allowed(Endpoint::Healthz);
        }
        if *self.draining.borrow() {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else {
            text(StatusCode::OK, "ok")
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        self.app.record_gauges();
        crate::app::process::record();
        match &self.metrics {
            Some(h) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                h.render(),
            ),
            None => text(StatusCode::NOT_FOUND, "metrics are off"),
        }
    }

    /// The `/status` document.
    pub fn status_json(&self) -> serde_json::Value {
        let mut ups = serde_json::Map::new();
        let state = self.app.current();
        for (name, up) in state.upstreams.iter() {
            let backends: Vec<BackendStatus> = up
                .backends()
                .iter()
                .map(|b| BackendStatus {
                    addr: b.addr(),
                    health: self.app.health(name, b),
                    breaker: Breaker::of(b),
                    in_flight: b.state().in_flight(),
                    weight: b.weight(),
                    priority: b.priority(),
                    region: b.locality().map(str::to_string),
                    latency_ms: b
                        .state()
                        .latency_ewma()
                        .map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
                })
                .collect();
            let spread = up.failure_spread();
            let discovery: Vec<_> = up.discovery_status().iter().map(source_json).collect();
            ups.insert(
                name.clone(),
                serde_json::json!({
                    "backends": backends,
                    "failure_spread": {
                        "state": spread.spread.as_str(),
                        "healthy": spread.healthy,
                        "failing": spread.failing,
                    },
                    "discovery": discovery,
                }),
            );
        }
        let source = self.app.config_source();
        let source = source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut doc = serde_json::json!({
            "upstreams": ups,
            "config_generation": state.generation,
            "draining": *self.draining.borrow(),
        });
        if let Some(source) = source {
            doc["config_source"] = serde_json::json!(source);
        }
        doc
    }

    fn status(&self) -> Response<Full<Bytes>> {
        let mut body = self.status_json().to_string();
        body.push('\n');
        reply(StatusCode::OK, "application/json", body)
    }

    /// `GET /debug/requests`: the last retried or failed requests, newest
    /// first, each with its attempt history.
    fn recent_requests(&self) -> Response<Full<Bytes>> {
        let mut body = self.app.recent().to_json().to_string();
        body.push('\n');
        reply(StatusCode::OK, "application/json", body)
    }

    /// `GET /config`: the running generation's configuration.
    fn config(&self) -> Response<Full<Bytes>> {
        let state = self.app.current();
        let heading = format!(
            "The running configuration (generation {}): every default written out, relative \
             paths resolved, secrets redacted.",
            state.generation
        );
        match effective::to_toml(&state.config, &heading) {
            Ok(text) => reply(StatusCode::OK, "application/toml", text),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    /// `POST /reload`: what SIGHUP does, answered with the outcome: 200
    /// when applied, 422 when refused (the old configuration keeps serving).
    async fn reload(&self) -> Response<Full<Bytes>> {
        let result = self.reloader.reload(None, "admin").await;
        let report = ReloadReport::new(&result, self.app.current().generation);
        let status = if result.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let mut body = serde_json::to_string(&report).unwrap_or_default();
        body.push('\n');
        reply(status, "application/json", body)
    }

    /// `/upstreams/{name}/backends/{addr}/{drain|maintenance|enable}`
    fn control(&self, path: &str) -> Response<Full<Bytes>> {
        let target = match BackendTarget::find(&self.app, path) {
            Ok(t) => t,
            Err((status, why)) => return text(status, why),
        };
        let (name, addr, action) = (target.name, target.addr, target.action);
        let b = &target.backend;
        match action {
            "drain" => {
                b.state().set_draining(true);
                self.app.set_maintenance(name, addr, false);
            }
            "maintenance" => {
                b.state().set_draining(true);
                self.app.set_maintenance(name, addr, true);
            }
            "enable" => {
                b.state().set_draining(false);
                b.state().mark_recovered(tokio::time::Instant::now());
                self.app.set_maintenance(name, addr, false);
            }
            other => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("unknown action {other:?}: drain, maintenance or enable"),
                )
            }
        }
        tracing::info!(upstream = %name, backend = %addr, action = %action, "admin action");
        text(
            StatusCode::OK,
            format!("{name}/{addr}: {}", self.app.health(name, b)),
        )
    }

    /// `POST /upstreams/{name}/backends/{addr}/weight` with `weight=N` in
    /// the query or the body: the backend's weight from now on (see
    /// [`Upstream::set_weight`](detour_server::upstream::Upstream::set_weight)).
    async fn weight(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (head, body) = req.into_parts();
        let target = match BackendTarget::find(&self.app, head.uri.path()) {
            Ok(t) => t,
            Err((status, why)) => return text(status, why),
        };
        let body = match read_small_body(body).await {
            Ok(b) => b,
            Err((status, why)) => return text(status, why),
        };
        let given = head
            .uri
            .query()
            .and_then(weight_param)
            .or_else(|| std::str::from_utf8(&body).ok().and_then(weight_param));
        let weight = match parse_weight(given) {
            Ok(w) => w,
            Err(why) => return text(StatusCode::BAD_REQUEST, why),
        };
        let (name, addr) = (target.name, target.addr);
        if !target.upstream.set_weight(addr, weight) {
            // A discovery round removed it since the lookup.
            return text(
                StatusCode::NOT_FOUND,
                format!("no backend {addr} in {name:?}"),
            );
        }
        tracing::info!(upstream = %name, backend = %addr, action = "weight", weight, "admin action");
        text(StatusCode::OK, format!("{name}/{addr}: weight {weight}"))
    }
}

/// A status and the text to answer with.
type Refused = (StatusCode, String);

/// The backend a control path names:
/// One discovery source in `/status`: its state, backends, revision, the
/// time of its last success (Unix seconds) and how old that is.
fn source_json(s: &detour_proxy::lb::discovery::SourceStatus) -> serde_json::Value {
    let now = std::time::SystemTime::now();
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    serde_json::json!({
        "source": s.source,
        "state": s.state.as_str(),
        "backends": s.backends,
        "revision": s.revision,
        "last_success": s.last_success.map(unix),
        "age_s": s.age(now).map(|d| (d.as_secs_f64() * 1e3).round() / 1e3),
        "error": s.error,
    })
}

/// `/upstreams/{name}/backends/{addr}/{action}`.
struct BackendTarget<'p> {
    name: &'p str,
    addr: SocketAddr,
    action: &'p str,
    upstream: Arc<detour_server::upstream::Upstream>,
    backend: Arc<Backend>,
}

impl<'p> BackendTarget<'p> {
    /// Parse `path` and look the backend up in `app`'s current generation;
    /// the answer to send instead when the path names nothing.
    fn find(app: &App, path: &'p str) -> Result<Self, Refused> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let ["upstreams", name, "backends", addr, action] = parts.as_slice() else {
            return Err((
                StatusCode::NOT_FOUND,
                "expected /upstreams/{name}/backends/{addr}/{drain|maintenance|enable|weight}"
                    .into(),
            ));
        };
        let Ok(parsed) = addr.parse::<SocketAddr>() else {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("{addr:?} is not an address"),
            ));
        };
        let state = app.current();
        let Some(upstream) = state.upstreams.get(*name) else {
            return Err((StatusCode::NOT_FOUND, format!("no upstream {name:?}")));
        };
        let backends = upstream.backends();
        let Some(backend) = backends.iter().find(|b| b.addr() == parsed) else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no backend {parsed} in {name:?}"),
            ));
        };
        Ok(BackendTarget {
            name,
            addr: parsed,
            action,
            upstream: Arc::clone(upstream),
            backend: Arc::clone(backend),
        })
    }
}

/// The request body, when it is at most [`MAX_WEIGHT_BODY`] bytes.
async fn read_small_body(body: Incoming) -> Result<Bytes, Refused> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, MAX_WEIGHT_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_WEIGHT_BODY} bytes"),
        )),
        Err(e) => Err((StatusCode::BAD_REQUEST, format!("reading the body: {e}"))),
    }
}

/// The value of `weight=` in a query string or a form body.
fn weight_param(pairs: &str) -> Option<&str> {
    pairs
        .trim()
        .split('&')
        .find_map(|pair| pair.strip_prefix("weight="))
}

/// `given` as a weight, or why it is not one.
fn parse_weight(given: Option<&str>) -> Result<u32, String> {
    let Some(given) = given else {
        return Err(format!(
            "give weight=N (0 to {MAX_WEIGHT}) in the query or the body"
        ));
    };
    match given.parse::<u32>() {
        Ok(w) if w <= MAX_WEIGHT => Ok(w),
        _ => Err(format!(
            "weight {given:?}: expected a whole number from 0 to {MAX_WEIGHT} (0: no new requests)"
        )),
    }
}
