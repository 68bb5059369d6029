//! The user's trait: the hooks the engine calls for every request.
//!
//! Only [`ProxyHttp::new_ctx`] and [`ProxyHttp::upstream_peer`] must be written;
//! every other hook has a default that does the ordinary thing.
//!
//! Hooks that may wait are `async` (written as `async fn` in an `impl`); the
//! body filters, the failure-path hooks and `logging` are plain functions
//! because they run per chunk or on the data path, where boxing a future per
//! call would cost more than the hook. Move waiting work to a header hook.
//!
//! ```text
//!  request ─► early_request_filter ─► request_filter ──(answered)──────────────┐
//!                                         │                                   │
//!             ┌───────────────────────────▼──────────────────┐                │
//!             │ upstream_peer ─► connect ─► connected_to_upstream             │
//!             │        ▲              │ fail_to_connect                        │
//!             │        │ retry        ▼                                        │
//!             │        ├──── upstream_request_filter ─► request_body_filter*   │
//!             │        │              │ error_while_proxying                   │
//!             │        │              ▼                                        │
//!             │        └──── should_retry_response (status)                    │
//!             └──────────────────────────┬───────────────────┘                │
//!                                        ▼                                    │
//!      upstream_response_filter ─► response_filter ─► response_body_filter* ─►─┤
//!                  (all attempts failed: fail_to_proxy ─► error response) ─►───┤
//!                                                                   logging ◄─┘
//! ```

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{request, response, Response};

use crate::error::{Error, Result};
use crate::peer::HttpPeer;
use crate::retry::RetryPolicy;
use crate::session::Session;

/// The hooks of a Detour proxy. Implement it in your crate; `detour-server`
/// runs everything else.
///
/// ```
/// use detour_core::{HttpPeer, ProxyHttp, Result, Session};
///
/// struct One;
///
/// impl ProxyHttp for One {
///     type CTX = ();
///     fn new_ctx(&self) {}
///     async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<HttpPeer> {
///         Ok(HttpPeer::new("127.0.0.1:9001".parse().unwrap(), "app"))
///     }
/// }
/// ```
pub trait ProxyHttp: Send + Sync + 'static {
    /// Per-request state, created by [`new_ctx`](Self::new_ctx) and passed to
    /// every hook of that request.
    type CTX: Send + 'static;

    /// Create the per-request state.
    fn new_ctx(&self) -> Self::CTX;

    /// Choose where the next attempt goes. Called before every attempt;
    /// [`Session::tried`] lists the addresses already tried, so a retry can go
    /// elsewhere.
    ///
    /// # Errors
    /// An error (typically [`ErrorKind::NoPeer`](crate::ErrorKind::NoPeer))
    /// ends the request with the status [`fail_to_proxy`](Self::fail_to_proxy) chooses.
    fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> impl Future<Output = Result<HttpPeer>> + Send;

    /// First hook, before anything else (rate limits, early rejections).
    fn early_request_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Inspect or answer the request. Return `Some(response)` to answer it
    /// without any upstream.
    fn request_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> impl Future<Output = Result<Option<Response<Bytes>>>> + Send {
        async { Ok(None) }
    }

    /// The retry policy for this request. `None` uses the one the first peer
    /// carries (an `Upstream`'s own), else the server's. Called once, right
    /// after the first `upstream_peer`.
    fn retry_policy(&self, _session: &Session, _ctx: &Self::CTX) -> Option<Arc<RetryPolicy>> {
        None
    }

    /// A connection to `peer` is ready (`reused`: it came from the pool).
    fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _reused: bool,
        _ctx: &mut Self::CTX,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Change the request head sent upstream (called for every attempt, on a
    /// fresh copy of the downstream head after the engine's forwarding headers).
    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _upstream_request: &mut request::Parts,
        _ctx: &mut Self::CTX,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Inspect or change one chunk of the request body on its way upstream.
    /// A replayed body is not filtered twice.
    ///
    /// # Errors
    /// An error ends the request: the attempt stops, and the client gets the
    /// error's answer (as the hook made it, e.g. a 413 never retried).
    fn request_body_filter(
        &self,
        _session: &mut Session,
        _chunk: &mut Bytes,
        _end_of_stream: bool,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        Ok(())
    }

    /// Whether an upstream response with this head should be retried. Called
    /// only while nothing went downstream; `policy_says` is the retry policy's
    /// answer for the status. The safety ceiling (safe request, replayable
    /// body) still applies to a `true`.
    fn should_retry_response(
        &self,
        _session: &Session,
        _response: &response::Parts,
        policy_says: bool,
        _ctx: &mut Self::CTX,
    ) -> bool {
        policy_says
    }

    /// Change the upstream's response head before anything else sees it.
    fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut response::Parts,
        _ctx: &mut Self::CTX,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Change the response head sent downstream (also called for responses
    /// Detour makes itself).
    fn response_filter(
        &self,
        _session: &mut Session,
        _response: &mut response::Parts,
        _ctx: &mut Self::CTX,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Inspect or change one chunk of the response body on its way downstream.
    ///
    /// # Errors
    /// An error ends the response where it is: the downstream connection
    /// (HTTP/1.1) or stream (HTTP/2) is closed, as response bytes already
    /// went out.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        _chunk: &mut Bytes,
        _end_of_stream: bool,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        Ok(())
    }

    /// Connecting to `peer` failed. Return the error, possibly narrowed with
    /// [`Error::never_retry`]. The engine decides the retry from it.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Self::CTX,
        err: Error,
    ) -> Error {
        err
    }

    /// The attempt failed after connecting (while sending the request or
    /// waiting for or reading the response). Return the error, possibly narrowed.
    fn error_while_proxying(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Self::CTX,
        err: Error,
    ) -> Error {
        err
    }

    /// Every attempt failed and no upstream response can be passed on: choose
    /// the status the client gets. The default follows the contract: 502 for
    /// refused / reset / invalid, 504 for timeouts, 503 for no backend.
    fn fail_to_proxy(&self, _session: &mut Session, err: &Error, _ctx: &mut Self::CTX) -> u16 {
        err.kind().default_status()
    }

    /// Detour is about to answer with an error of its own, with the `status`
    /// [`fail_to_proxy`](Self::fail_to_proxy) chose: return the whole
    /// response — status, headers and body, e.g. a JSON error page — instead
    /// of Detour's short `text/plain` one (`None`, the default). The engine
    /// still adds `Proxy-Status`, `Retry-After` (when the error knows when to
    /// come back) and the request id unless the response carries them, and
    /// `Connection: close` where the connection must end; then
    /// [`response_filter`](Self::response_filter) and [`logging`](Self::logging)
    /// run as for any response. Not called for gRPC calls (they get a
    /// `grpc-status`) nor for the up-front refusals whose status is fixed
    /// (400, 405, 413, 414, ...).
    fn fail_to_proxy_response(
        &self,
        _session: &mut Session,
        _err: &Error,
        _status: http::StatusCode,
        _ctx: &mut Self::CTX,
    ) -> Option<Response<Bytes>> {
        None
    }

    /// Whether to leave this error out of the error log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _err: &Error) -> bool {
        false
    }

    /// The request is over (response sent, or failed). Runs once per request.
    /// [`Session::response_status`] is the status the client got and
    /// [`Session::body_bytes_sent`] the body bytes sent.
    fn logging(&self, _session: &mut Session, _err: Option<&Error>, _ctx: &mut Self::CTX) {}
}
