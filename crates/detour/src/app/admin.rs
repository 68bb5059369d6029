//! The admin listener: `/healthz`, `/metrics`, `/status`, and backend control.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while serving, `503 draining` once a drain began |
//! | `GET /metrics` | Prometheus text |
//! | `GET /status` | JSON: every upstream's backends with health, breaker, in-flight |
//! | `POST /upstreams/{name}/backends/{addr}/drain` | no new requests; in-flight ones finish |
//! | `POST /upstreams/{name}/backends/{addr}/maintenance` | out of service until enabled |
//! | `POST /upstreams/{name}/backends/{addr}/enable` | back in service |
//!
//! It binds where `[admin] listen` says (loopback by default). With
//! `[admin] token` set, every endpoint but `/healthz` wants
//! `Authorization: Bearer <token>` and answers 401 without it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use detour_core::{Backend, GateState};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::state::App;

/// What the admin endpoints read and act on.
#[derive(Clone)]
pub struct Admin {
    pub(crate) app: Arc<App>,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub(crate) draining: watch::Receiver<bool>,
}

/// Serve the admin API on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, admin: Admin, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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
    pub health: &'static str,
    /// `closed`, `open`, `half_open`, or `none` when the upstream has no breakers.
    pub breaker: &'static str,
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

/// Health as a word, most severe first.
pub fn health_word(app: &App, upstream: &str, b: &Backend) -> &'static str {
    let now = tokio::time::Instant::now();
    let s = b.state();
    if app.in_maintenance(upstream, b.addr()) {
        "maintenance"
    } else if s.is_draining() {
        "draining"
    } else if s.check_failed() {
        "unhealthy"
    } else if s.ejected_until(now).is_some() {
        "ejected"
    } else {
        "healthy"
    }
}

/// The breaker state as a word.
pub fn breaker_word(b: &Backend) -> &'static str {
    match b.state().gate().map(|g| g.state()) {
        None => "none",
        Some(GateState::Closed) => "closed",
        Some(GateState::Open) => "open",
        Some(GateState::HalfOpen) => "half_open",
    }
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()))
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if path == "/healthz" && req.method() == Method::GET {
            return if *self.draining.borrow() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else {
                text(StatusCode::OK, "ok")
            };
        }
        if !self.authorized(&req) {
            let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is required");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        match (req.method(), path.as_str()) {
            (&Method::GET, "/metrics") => self.metrics(),
            (&Method::GET, "/status") => self.status(),
            (&Method::POST, p) if p.starts_with("/upstreams/") => self.control(p),
            (_, "/metrics" | "/status" | "/healthz") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => text(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        self.app.record_gauges();
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
                    health: health_word(&self.app, name, b),
                    breaker: breaker_word(b),
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
            ups.insert(name.clone(), serde_json::json!({ "backends": backends }));
        }
        serde_json::json!({
            "upstreams": ups,
            "config_generation": state.generation,
            "draining": *self.draining.borrow(),
        })
    }

    fn status(&self) -> Response<Full<Bytes>> {
        let mut body = self.status_json().to_string();
        body.push('\n');
        reply(StatusCode::OK, "application/json", body)
    }

    /// `/upstreams/{name}/backends/{addr}/{drain|maintenance|enable}`
    fn control(&self, path: &str) -> Response<Full<Bytes>> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let ["upstreams", name, "backends", addr, action] = parts.as_slice() else {
            return text(
                StatusCode::NOT_FOUND,
                "expected /upstreams/{name}/backends/{addr}/{drain|maintenance|enable}",
            );
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("{addr:?} is not an address"),
            );
        };
        let state = self.app.current();
        let Some(up) = state.upstreams.get(*name) else {
            return text(StatusCode::NOT_FOUND, format!("no upstream {name:?}"));
        };
        let backends = up.backends();
        let Some(b) = backends.iter().find(|b| b.addr() == addr) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("no backend {addr} in {name:?}"),
            );
        };
        match *action {
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
            format!("{name}/{addr}: {}", health_word(&self.app, name, b)),
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
