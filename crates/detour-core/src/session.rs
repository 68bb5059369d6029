//! The downstream request as the hooks see it.

use std::net::SocketAddr;
use std::time::Duration;

use http::request::Parts;
use tokio::time::Instant;

use crate::error::ErrorKind;
use crate::plan::{Attempt, Choice, Planner};

/// The request target exactly as the client sent it, kept in the request's
/// extensions when the server rewrote the target (path normalization, see
/// `detour_server::config::PathsConfig`). [`Session::raw_uri`] reads it.
///
/// It is only there when the target was rewritten, so the common request
/// pays nothing for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUri(pub http::Uri);

/// The downstream request and the state of its attempts.
///
/// Hooks read and change the request head through [`req`](Session::req) and
/// [`req_mut`](Session::req_mut), and read the attempts through
/// [`attempts`](Session::attempts). The engine's bookkeeping (the attempt
/// [`Planner`], the response's status and size) changes only with the
/// [`EngineKey`] the engine takes before any hook runs.
#[derive(Debug)]
pub struct Session {
    req: Parts,
    client_addr: Option<SocketAddr>,
    started: Instant,
    plan: Planner,
    tls: bool,
    response_status: Option<http::StatusCode>,
    body_bytes_sent: u64,
    /// Whether the key was handed out.
    key_taken: bool,
    key_id: u64,
    /// A hook's word on hedging this request; `None`: the upstream's rules.
    hedging: Option<bool>,
}

/// The engine's key to a [`Session`]'s bookkeeping, from
/// [`Session::engine_key`]: handed out once, to whoever asks first — the
/// engine, before any hook sees the session — and good for that session
/// only.
#[derive(Debug, Clone, Copy)]
pub struct EngineKey(u64);

impl Session {
    /// A session for a request head, received from `client_addr` at `started`.
    #[inline]
    pub fn new(req: Parts, client_addr: Option<SocketAddr>, started: Instant) -> Self {
        Session {
            req,
            client_addr,
            started,
            plan: Planner::new(),
            tls: false,
            response_status: None,
            body_bytes_sent: 0,
            key_taken: false,
            key_id: fastrand::u64(..),
            hedging: None,
        }
    }

    /// The key to this session's bookkeeping, the first time it is asked
    /// for; `None` after that. The engine takes it as it makes the session,
    /// so hooks cannot change what the engine keeps (the safe flag, the
    /// attempts, the tried list).
    pub fn engine_key(&mut self) -> Option<EngineKey> {
        (!std::mem::replace(&mut self.key_taken, true)).then_some(EngineKey(self.key_id))
    }

    fn check(&self, key: EngineKey) {
        // A key is only made from its own session's id (engine_key), so a
        // mismatch is a key carried over from another session.
        assert_eq!(key.0, self.key_id, "an EngineKey from another session");
    }

    /// The attempt planner, to drive.
    ///
    /// # Panics
    /// When `key` belongs to another session.
    pub fn plan_mut(&mut self, key: EngineKey) -> &mut Planner {
        self.check(key);
        &mut self.plan
    }

    /// The attempt planner, to read.
    pub fn planner(&self) -> &Planner {
        &self.plan
    }

    /// This request's attempts, oldest first: where each went and why, what
    /// happened (with its commit point) and what was decided on it.
    pub fn attempts(&self) -> &[Attempt] {
        self.plan.attempts()
    }

    /// The attempt begun last: its peer is where the request is now.
    pub fn current_attempt(&self) -> Option<&Attempt> {
        self.plan.current()
    }

    /// Whether the client connected over TLS (the request's scheme is
    /// `https`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Record that the client connected over TLS (set by the server).
    ///
    /// # Panics
    /// When `key` belongs to another session.
    pub fn set_tls(&mut self, key: EngineKey, tls: bool) {
        self.check(key);
        self.tls = tls;
    }

    /// The downstream request head.
    pub fn req(&self) -> &Parts {
        &self.req
    }

    /// The downstream request head, to change before it is forwarded.
    pub fn req_mut(&mut self) -> &mut Parts {
        &mut self.req
    }

    /// The request method.
    pub fn method(&self) -> &http::Method {
        &self.req.method
    }

    /// The request URI.
    pub fn uri(&self) -> &http::Uri {
        &self.req.uri
    }

    /// The request target as the client sent it, before the server normalized
    /// its path: for a route that matches and forwards the raw path.
    ///
    /// When the server left the target alone this is [`uri`](Session::uri)
    /// itself, so a hook that rewrites the URI of such a request changes both.
    pub fn raw_uri(&self) -> &http::Uri {
        self.req
            .extensions
            .get::<RawUri>()
            .map_or(&self.req.uri, |raw| &raw.0)
    }

    /// The request headers.
    pub fn headers(&self) -> &http::HeaderMap {
        &self.req.headers
    }

    /// The request's `Host` (the header, or the URI's authority).
    pub fn host(&self) -> Option<&str> {
        self.req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.req.uri.host())
    }

    /// The client's address.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client_addr
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The overall deadline of the attempts, if any (moved on by time spent
    /// waiting for the client's request body).
    pub fn deadline(&self) -> Option<Instant> {
        self.plan.deadline()
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn time_left(&self) -> Option<Duration> {
        self.plan.time_left(Instant::now())
    }

    /// Set (or shorten) the overall deadline. A later deadline than the current
    /// one is ignored: hooks may narrow, never widen.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.plan.narrow_deadline(deadline);
    }

    /// The number of the current attempt: 1 for the first, 2 for the first
    /// retry… (0 before any attempt).
    pub fn attempt(&self) -> u32 {
        self.plan.current().map_or(0, |a| a.id.number())
    }

    /// Retries made so far (failovers included; hedges are not retries).
    pub fn retries(&self) -> u32 {
        let retries = self
            .plan
            .attempts()
            .iter()
            .filter(|a| matches!(a.choice, Choice::Failover | Choice::Retry))
            .count();
        u32::try_from(retries).unwrap_or(u32::MAX)
    }

    /// The addresses already tried for this request, oldest first.
    pub fn tried(&self) -> &[SocketAddr] {
        self.plan.tried()
    }

    /// Whether `addr` was already tried for this request.
    pub fn was_tried(&self, addr: SocketAddr) -> bool {
        self.plan.was_tried(addr)
    }

    /// Whether the request body can still be sent again in full.
    pub fn body_replayable(&self) -> bool {
        self.plan.body_replayable()
    }

    /// The error of the last attempt that settled with one (a status the
    /// policy retries counts as [`ErrorKind::HttpStatus`]).
    pub fn last_error(&self) -> Option<ErrorKind> {
        self.plan.last_error()
    }

    /// Whether the request is safe to deliver twice (idempotent, or opted in).
    pub fn is_safe(&self) -> bool {
        self.plan.is_safe()
    }

    /// Turn hedging of this request on or off, whatever its upstream's
    /// method list says ([`crate::hedge`]). On still needs an upstream that
    /// hedges, a request without a body, and budget; off keeps it to one
    /// attempt at a time. Call it from a hook that runs before the first
    /// attempt (`request_filter`, `upstream_peer`).
    pub fn set_hedging(&mut self, on: bool) {
        self.hedging = Some(on);
    }

    /// A hook's word on hedging this request ([`set_hedging`](Self::set_hedging)).
    pub fn hedging(&self) -> Option<bool> {
        self.hedging
    }

    /// The status of the response sent downstream, once its head is final
    /// (after `response_filter`): the upstream's, a hook's or Detour's own.
    /// `None` before that. [`logging`](crate::ProxyHttp::logging) reads it.
    pub fn response_status(&self) -> Option<http::StatusCode> {
        self.response_status
    }

    /// Response body bytes handed to the downstream connection so far, after
    /// `response_body_filter` (headers not counted; a body Detour or a hook
    /// made counts whole, a streamed one as it streams). In
    /// [`logging`](crate::ProxyHttp::logging), the body's size as sent.
    pub fn body_bytes_sent(&self) -> u64 {
        self.body_bytes_sent
    }

    /// Engine bookkeeping: the response head going downstream has `status`.
    ///
    /// # Panics
    /// When `key` belongs to another session.
    pub fn set_response_status(&mut self, key: EngineKey, status: http::StatusCode) {
        self.check(key);
        self.response_status = Some(status);
    }

    /// Engine bookkeeping: `n` more body bytes went downstream.
    ///
    /// # Panics
    /// When `key` belongs to another session.
    pub fn add_body_bytes_sent(&mut self, key: EngineKey, n: u64) {
        self.check(key);
        self.body_bytes_sent += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_keeps_distinct_addresses_in_order_past_the_inline_ones() {
        let req = http::Request::new(()).into_parts().0;
        let mut s = Session::new(req, None, Instant::now());
        let key = s.engine_key().unwrap();
        let addrs: Vec<SocketAddr> = (1..=5)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let now = Instant::now();
        for a in &addrs {
            s.plan_mut(key).begin(*a, now);
            s.plan_mut(key).begin(addrs[0], now); // a repeat is counted, not listed twice
        }
        assert_eq!(s.tried(), &addrs[..]);
        assert_eq!(s.attempt(), 10);
        assert!(s.was_tried(addrs[4]));
        assert!(!s.was_tried(SocketAddr::from(([127, 0, 0, 1], 9))));
    }

    #[test]
    fn the_engine_key_is_handed_out_once_and_fits_only_its_session() {
        let parts = || http::Request::new(()).into_parts().0;
        let mut s = Session::new(parts(), None, Instant::now());
        let key = s.engine_key().expect("the first ask gets the key");
        assert!(s.engine_key().is_none(), "a hook asking later gets nothing");
        s.set_response_status(key, http::StatusCode::OK);
        assert_eq!(s.response_status(), Some(http::StatusCode::OK));

        let mut other = Session::new(parts(), None, Instant::now());
        let stolen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            other.add_body_bytes_sent(key, 1);
        }));
        assert!(stolen.is_err(), "a key from another session is refused");
        assert_eq!(other.body_bytes_sent(), 0);
    }

    #[test]
    fn raw_uri_is_the_kept_original_or_the_uri_itself() {
        let req = http::Request::get("/admin")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut s = Session::new(req, None, Instant::now());
        assert_eq!(s.raw_uri(), "/admin");
        s.req_mut()
            .extensions
            .insert(RawUri(http::Uri::from_static("/x/../admin")));
        assert_eq!(s.uri(), "/admin");
        assert_eq!(s.raw_uri(), "/x/../admin");
    }
}
