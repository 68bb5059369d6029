//! The downstream request as the hooks see it.

use std::net::SocketAddr;
use std::time::Duration;

use http::request::Parts;
use tokio::time::Instant;

use crate::error::ErrorKind;

/// The distinct addresses a request has tried, oldest first: the first few
/// inline (most requests make one or two attempts, and then need no
/// allocation), the rest on the heap.
#[derive(Debug, Clone)]
enum Tried {
    Inline(u8, [SocketAddr; INLINE_TRIED]),
    Heap(Vec<SocketAddr>),
}

const INLINE_TRIED: usize = 3;

impl Default for Tried {
    fn default() -> Self {
        Tried::Inline(0, [SocketAddr::from(([0, 0, 0, 0], 0)); INLINE_TRIED])
    }
}

impl Tried {
    fn as_slice(&self) -> &[SocketAddr] {
        match self {
            Tried::Inline(len, addrs) => &addrs[..usize::from(*len)],
            Tried::Heap(v) => v,
        }
    }

    /// Add `addr` unless it is there already.
    fn insert(&mut self, addr: SocketAddr) {
        if self.as_slice().contains(&addr) {
            return;
        }
        match self {
            Tried::Inline(len, addrs) if usize::from(*len) < INLINE_TRIED => {
                addrs[usize::from(*len)] = addr;
                *len += 1;
            }
            Tried::Inline(_, addrs) => {
                let mut v = addrs.to_vec();
                v.push(addr);
                *self = Tried::Heap(v);
            }
            Tried::Heap(v) => v.push(addr),
        }
    }
}

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
/// [`req_mut`](Session::req_mut); the engine keeps the attempt bookkeeping.
#[derive(Debug)]
pub struct Session {
    req: Parts,
    client_addr: Option<SocketAddr>,
    started: Instant,
    deadline: Option<Instant>,
    attempt: u32,
    tried: Tried,
    body_replayable: bool,
    last_error: Option<ErrorKind>,
    safe: bool,
    tls: bool,
    response_status: Option<http::StatusCode>,
    body_bytes_sent: u64,
}

impl Session {
    /// A session for a request head, received from `client_addr` at `started`.
    pub fn new(req: Parts, client_addr: Option<SocketAddr>, started: Instant) -> Self {
        Session {
            req,
            client_addr,
            started,
            deadline: None,
            attempt: 0,
            tried: Tried::default(),
            body_replayable: true,
            last_error: None,
            safe: false,
            tls: false,
            response_status: None,
            body_bytes_sent: 0,
        }
    }

    /// Whether the client connected over TLS (the request's scheme is
    /// `https`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Record that the client connected over TLS (set by the server).
    pub fn set_tls(&mut self, tls: bool) {
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

    /// The overall deadline of the attempts, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Set (or shorten) the overall deadline. A later deadline than the current
    /// one is ignored: hooks may narrow, never widen.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(match self.deadline {
            Some(d) => d.min(deadline),
            None => deadline,
        });
    }

    /// The number of the current attempt: 1 for the first, 2 for the first
    /// retry… (0 before any attempt).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Retries made so far.
    pub fn retries(&self) -> u32 {
        self.attempt.saturating_sub(1)
    }

    /// The addresses already tried for this request, oldest first.
    pub fn tried(&self) -> &[SocketAddr] {
        self.tried.as_slice()
    }

    /// Whether `addr` was already tried for this request.
    pub fn was_tried(&self, addr: SocketAddr) -> bool {
        self.tried.as_slice().contains(&addr)
    }

    /// Whether the request body can still be sent again in full.
    pub fn body_replayable(&self) -> bool {
        self.body_replayable
    }

    /// The error of the previous attempt, if it failed.
    pub fn last_error(&self) -> Option<ErrorKind> {
        self.last_error
    }

    /// Whether the request is safe to deliver twice (idempotent, or opted in).
    pub fn is_safe(&self) -> bool {
        self.safe
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
    #[doc(hidden)]
    pub fn set_response_status(&mut self, status: http::StatusCode) {
        self.response_status = Some(status);
    }

    /// Engine bookkeeping: `n` more body bytes went downstream.
    #[doc(hidden)]
    pub fn add_body_bytes_sent(&mut self, n: u64) {
        self.body_bytes_sent += n;
    }

    /// Engine bookkeeping: an attempt to `addr` begins.
    #[doc(hidden)]
    pub fn begin_attempt(&mut self, addr: SocketAddr) {
        self.attempt += 1;
        self.tried.insert(addr);
    }

    /// Engine bookkeeping: the previous attempt failed with `kind`.
    #[doc(hidden)]
    pub fn set_last_error(&mut self, kind: Option<ErrorKind>) {
        self.last_error = kind;
    }

    /// Engine bookkeeping: whether the body is still replayable.
    #[doc(hidden)]
    pub fn set_body_replayable(&mut self, replayable: bool) {
        self.body_replayable = replayable;
    }

    /// Engine bookkeeping: whether the request is safe to repeat.
    #[doc(hidden)]
    pub fn set_safe(&mut self, safe: bool) {
        self.safe = safe;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_keeps_distinct_addresses_in_order_past_the_inline_ones() {
        let req = http::Request::new(()).into_parts().0;
        let mut s = Session::new(req, None, Instant::now());
        let addrs: Vec<SocketAddr> = (1..=5)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        for a in &addrs {
            s.begin_attempt(*a);
            s.begin_attempt(addrs[0]); // a repeat is counted, not listed twice
        }
        assert_eq!(s.tried(), &addrs[..]);
        assert_eq!(s.attempt(), 10);
        assert!(s.was_tried(addrs[4]));
        assert!(!s.was_tried(SocketAddr::from(([127, 0, 0, 1], 9))));
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
