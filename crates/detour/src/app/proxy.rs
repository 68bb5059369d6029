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
    /// Request body bytes read from the client (and sent upstream).
    bytes_in: u64,
}

/// The proxy behind the `detour` binary.
#[derive(Debug)]
pub struct DetourProxy {
    app: Arc<App>,
    access_log: bool,
    /// The request-id header (`server.forwarding.request_id_header`).
    request_id: http::HeaderName,
    /// Requests no route took (upstream label `-`).
    unrouted: RequestMetrics,
}

impl DetourProxy {
    /// Hooks over `app`; `access_log` turns the per-request line on.
    pub fn new(app: Arc<App>, access_log: bool) -> Self {
        let header = &app.current().config.server.forwarding.request_id_header;
        // Invariant: the server configuration validated the name.
        let request_id = http::HeaderName::from_bytes(header.as_bytes())
            .unwrap_or_else(|_| http::HeaderName::from_static("x-request-id"));
        DetourProxy {
            app,
            access_log,
            request_id,
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
            bytes_in: 0,
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

    fn request_body_filter(
        &self,
        _session: &mut Session,
        chunk: &mut Bytes,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.bytes_in += chunk.len() as u64;
        Ok(())
    }

    fn logging(&self, session: &mut Session, err: Option<&Error>, ctx: &mut Ctx) {
        let upstream = ctx.route.as_ref().map(|r| r.upstream.name());
        // The status that went downstream, whoever made it (an upstream, a
        // hook, or Detour itself).
        let status = session.response_status().map_or(ctx.status, |s| s.as_u16());
        match &ctx.route {
            Some(r) => r.upstream.request_metrics(),
            None => &self.unrouted,
        }
        .record(status, session.elapsed());
        if self.access_log {
            let line = AccessLine {
                session,
                request_id: header_str(session, &self.request_id),
                status,
                bytes_in: ctx.bytes_in,
                bytes_out: session.body_bytes_sent(),
                upstream,
                attempts: &ctx.attempts,
                error: err,
            };
            line.write();
        }
    }
}

/// A header's value as text, when present and visible ASCII.
fn header_str<'s>(session: &'s Session, name: &http::HeaderName) -> Option<&'s str> {
    session.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The protocol as the access log names it.
fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The attempts as `backend:outcome:latency`, space-separated.
fn attempts_text(attempts: &[AttemptLog]) -> String {
    let mut text = String::new();
    let mut prev = Duration::ZERO;
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            text.push(' ');
        }
        let took = a.at.saturating_sub(prev);
        prev = a.at;
        text.push_str(&format!(
            "{}:{}:{:.1}ms",
            a.backend,
            a.outcome,
            took.as_secs_f64() * 1e3
        ));
    }
    text
}

/// Everything one access log line says about a request. What the session
/// knows is read from it; the rest is given.
pub struct AccessLine<'a> {
    /// The request.
    pub session: &'a Session,
    /// Its request id (the configured header, the client's or generated).
    pub request_id: Option<&'a str>,
    /// The status sent downstream (0: none was).
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent downstream.
    pub bytes_out: u64,
    /// The upstream the route chose, if a route matched.
    pub upstream: Option<&'a str>,
    /// Every attempt, in order.
    pub attempts: &'a [AttemptLog],
    /// The error that ended the request, if one did.
    pub error: Option<&'a Error>,
}

impl AccessLine<'_> {
    /// Write the line at target `detour::access`, level info. Absent values
    /// are left out (never `-` or `None`), so JSON lines stay typed.
    pub fn write(&self) {
        let s = self.session;
        tracing::info!(
            target: "detour::access",
            request_id = self.request_id,
            client = s.client_addr().map(|a| tracing::field::display(a.ip())),
            method = s.method().as_str(),
            host = s.host(),
            path = s.uri().path(),
            query = s.uri().query(),
            protocol = protocol(s.req().version),
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = (s.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            upstream = self.upstream,
            attempts = %attempts_text(self.attempts),
            user_agent = header_str(s, &http::header::USER_AGENT),
            error = self.error.map(|e| e.proxy_status_type()),
        );
    }
}
