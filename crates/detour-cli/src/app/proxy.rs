//! The `detour` binary's hooks: route, pick a peer from the route's upstream,
//! write the access log line (its attempts are the session's history).

use std::sync::Arc;

use bytes::Bytes;
use detour_core::{Error, ErrorKind, HttpPeer, ProxyHttp, RawUri, Result, RetryPolicy, Session};
use http::{request, response, Response, StatusCode, Uri};

use detour_server::upstream::RequestMetrics;

use super::explain;
use super::routes::{self, RequestPath, Route};
use super::state::{App, State};

/// Per-request context.
#[derive(Debug)]
pub struct Ctx {
    state: Arc<State>,
    route: Option<Arc<Route>>,
    status: u16,
    /// Request body bytes read from the client (and sent upstream).
    bytes_in: u64,
    /// The client asked for the attempt history, with the admin token.
    explain: bool,
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
            status: 0,
            bytes_in: 0,
            explain: false,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        // Before any other hook: the token must not be seen by routing, the
        // upstream or a log.
        ctx.explain = explain::asked(session, ctx.state.config.admin.token.as_deref());
        Ok(())
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
        match routes::find(&ctx.state.routes, || session.host(), path) {
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
        let mut peer = route.upstream.select(session).await?;
        // Set in place: a builder call would move the peer twice more.
        if let Some(t) = &route.timeouts {
            peer.options = t.clone();
        }
        Ok(peer)
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

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut response::Parts,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.status = response.status.as_u16();
        if ctx.explain {
            response
                .headers
                .insert(explain::EXPLAIN_RESPONSE, explain::header_value(session));
        }
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
        // Looked up only when something records it: most requests are
        // neither kept nor logged.
        let keep = explain::worth_keeping(session, err, status);
        let request_id = if keep || self.access_log {
            header_str(session, &self.request_id)
        } else {
            None
        };
        if keep {
            self.app.recent().keep(&explain::Kept {
                session,
                request_id,
                status,
                upstream,
                error: err,
            });
        }
        if self.access_log {
            let line = AccessLine {
                session,
                request_id,
                status,
                bytes_in: ctx.bytes_in,
                bytes_out: session.body_bytes_sent(),
                upstream,
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
            attempts = %explain::history(s),
            user_agent = header_str(s, &http::header::USER_AGENT),
            error = self.error.map(|e| e.proxy_status_type()),
        );
    }
}
