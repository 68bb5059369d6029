//! The `detour` binary's hooks: route, pick a peer from the route's upstream,
//! remember every attempt for the access log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use detour_core::{Error, ErrorKind, HttpPeer, ProxyHttp, RawUri, Result, RetryPolicy, Session};
use http::{request, response, Response, StatusCode, Uri};

use detour_server::upstream::RequestMetrics;

use super::routes::{self, RequestPath, Route};
use super::state::{App, State};

/// One attempt, as the access log lists it.
#[derive(Debug, Clone)]
pub struct AttemptLog {
    /// Where it went.
    pub backend: SocketAddr,
    /// `ok`, a status such as `503`, or an error type such as `connection_refused`.
    pub outcome: Outcome,
    /// Time since the request began when the attempt ended.
    pub at: Duration,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// It failed with this error type (RFC 9209 names).
    Error(&'static str),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Status(s) => write!(f, "{s}"),
            Outcome::Error(e) => f.write_str(e),
        }
    }
}

/// Per-request context.
#[derive(Debug)]
pub struct Ctx {
    state: Arc<State>,
    route: Option<Arc<Route>>,
    attempts: Vec<AttemptLog>,
    /// Whether `attempts` is kept: only the access log reads it.
    log_attempts: bool,
    status: u16,
}

/// The proxy behind the `detour` binary.
#[derive(Debug)]
pub struct DetourProxy {
    app: Arc<App>,
    access_log: bool,
    /// Requests no route took (upstream label `-`).
    unrouted: RequestMetrics,
}

impl DetourProxy {
    /// Hooks over `app`; `access_log` turns the per-request line on.
    pub fn new(app: Arc<App>, access_log: bool) -> Self {
        DetourProxy {
            app,
            access_log,
            unrouted: RequestMetrics::new("-"),
        }
    }
}

/// Note an attempt for the access log line (nothing to keep when it is off).
fn record(ctx: &mut Ctx, session: &Session, backend: SocketAddr, outcome: Outcome) {
    if !ctx.log_attempts {
        return;
    }
    ctx.attempts.push(AttemptLog {
        backend,
        outcome,
        at: session.elapsed(),
    });
}

/// Note a failed attempt for the access log and hand the error back unchanged:
/// what both failure hooks do.
fn record_error(ctx: &mut Ctx, session: &Session, peer: &HttpPeer, err: Error) -> Error {
    record(
        ctx,
        session,
        peer.addr,
        Outcome::Error(err.proxy_status_type()),
    );
    err
}

/// `uri` as an upstream request target: `/path?query`, never the client's
/// authority (the upstream head is built the same way).
fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map_or_else(|| uri.clone(), |pq| Uri::from(pq.clone()))
}

impl ProxyHttp for DetourProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            state: self.app.current(),
            route: None,
            attempts: Vec::new(),
            log_attempts: self.access_log,
            status: 0,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Option<Response<Bytes>>> {
        let path = RequestPath {
            normalized: session.uri().path(),
            raw: session.raw_uri().path(),
        };
        match routes::find(&ctx.state.routes, session.host(), path) {
            Some(r) => {
                ctx.route = Some(Arc::clone(r));
                Ok(None)
            }
            None => {
                let mut resp =
                    Response::new(Bytes::from_static(b"404 no route for this request\n"));
                *resp.status_mut() = StatusCode::NOT_FOUND;
                Ok(Some(resp))
            }
        }
    }

    fn retry_policy(&self, _session: &Session, ctx: &Ctx) -> Option<Arc<RetryPolicy>> {
        ctx.route.as_ref().map(|r| Arc::clone(&r.policy))
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<HttpPeer> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::internal(ErrorKind::NoPeer).context("no route"))?;
        let peer = route.upstream.select(session).await?;
        Ok(match &route.timeouts {
            Some(t) => peer.with_options(t.clone()),
            None => peer,
        })
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut request::Parts,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.route.as_ref().is_some_and(|r| r.raw_path) {
            if let Some(raw) = session.req().extensions.get::<RawUri>() {
                upstream_request.uri = origin_form(&raw.0);
            }
        }
        Ok(())
    }

    fn should_retry_response(
        &self,
        session: &Session,
        response: &response::Parts,
        policy_says: bool,
        ctx: &mut Ctx,
    ) -> bool {
        if let Some(&addr) = session.tried().last() {
            record(
                ctx,
                session,
                addr,
                Outcome::Status(response.status.as_u16()),
            );
        }
        policy_says
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        err: Error,
    ) -> Error {
        record_error(ctx, session, peer, err)
    }

    fn error_while_proxying(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        err: Error,
    ) -> Error {
        record_error(ctx, session, peer, err)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut response::Parts,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.status = response.status.as_u16();
        Ok(())
    }

    fn logging(&self, session: &mut Session, err: Option<&Error>, ctx: &mut Ctx) {
        let upstream = ctx.route.as_ref().map_or("-", |r| r.upstream.name());
        match &ctx.route {
            Some(r) => r.upstream.request_metrics(),
            None => &self.unrouted,
        }
        .record(ctx.status, session.elapsed());
        if !self.access_log {
            return;
        }
        let mut attempts = String::new();
        let mut prev = Duration::ZERO;
        for (i, a) in ctx.attempts.iter().enumerate() {
            if i > 0 {
                attempts.push(' ');
            }
            let took = a.at.saturating_sub(prev);
            prev = a.at;
            attempts.push_str(&format!(
                "{}:{}:{:.1}ms",
                a.backend,
                a.outcome,
                took.as_secs_f64() * 1e3
            ));
        }
        tracing::info!(
            target: "detour::access",
            method = %session.method(),
            path = %session.uri().path(),
            host = session.host().unwrap_or("-"),
            client = %session.client_addr().map_or_else(|| "-".to_string(), |a| a.ip().to_string()),
            status = ctx.status,
            upstream,
            attempts = %attempts,
            duration_ms = (session.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            error = err.map(|e| e.proxy_status_type()),
        );
    }
}
