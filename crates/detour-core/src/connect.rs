//! How transport connections to upstreams are made, and how one request is
//! exchanged over one of them.
//!
//! The traits live here, in the vocabulary crate, so that everything that
//! dials a backend — the server's engine, `detour-health`'s active checks —
//! takes the same connector, and tests can swap in an in-memory one
//! (`detour-testkit`'s `MemoryConnector`) to run under a paused clock.
//! [`ClientExchange`] goes one step further for active HTTP checks: the
//! server hands the checker its own dialing (TLS, HTTP/2), so a check reaches
//! a backend the way traffic does while `detour-health` depends on this
//! crate alone.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{Error, ErrorKind};

/// Makes transport connections to upstream peers.
///
/// Callers apply their own timeout around [`connect`](Connect::connect) and
/// speak HTTP over what it returns.
pub trait Connect: Send + Sync + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Open a connection to `addr`.
    ///
    /// # Errors
    /// The I/O error of the attempt; `ConnectionRefused` is reported as a
    /// refused connection, anything else as a failed connect.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// The default connector: plain TCP with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connect for TcpConnector {
    type Io = TcpStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// One request of a [`ClientExchange`]: a head, no body.
///
/// Health checks send one; the exchange adds what the connection needs
/// (`Connection: close` on HTTP/1.1, `:scheme` and `:authority` on HTTP/2).
#[derive(Debug, Clone)]
pub struct ExchangeRequest {
    /// The method.
    pub method: Method,
    /// The path and query (origin form: `/healthz?deep=1`).
    pub uri: Uri,
    /// The headers to send. Without a `Host`, the exchange names the
    /// backend's address (`ip:port`).
    pub headers: HeaderMap,
    /// At most this many bytes of the response body are read and returned;
    /// 0: the body is not read at all.
    pub body_limit: usize,
}

impl ExchangeRequest {
    /// `method uri` with no headers, reading no body.
    pub fn new(method: Method, uri: Uri) -> Self {
        ExchangeRequest {
            method,
            uri,
            headers: HeaderMap::new(),
            body_limit: 0,
        }
    }

    /// This head as a request to `addr` carrying `body`, with a `Host`
    /// naming `addr` when the head has none: where every exchange starts.
    ///
    /// # Errors
    /// `InvalidRequest` should `addr` not make a `Host` value (it always
    /// does: an address is ASCII).
    pub fn to_request<B>(&self, addr: SocketAddr, body: B) -> Result<Request<B>, Error> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if !req.headers().contains_key(HOST) {
            let host = HeaderValue::try_from(addr.to_string()).map_err(|e| {
                Error::internal(ErrorKind::InvalidRequest)
                    .context("no Host for the address")
                    .cause(e)
            })?;
            req.headers_mut().insert(HOST, host);
        }
        Ok(req)
    }
}

/// What a [`ClientExchange`] brought back.
#[derive(Debug, Clone)]
pub struct ExchangeResponse {
    /// The response's status.
    pub status: StatusCode,
    /// The response's headers.
    pub headers: HeaderMap,
    /// The first [`ExchangeRequest::body_limit`] bytes of the body (all of
    /// it when it is shorter).
    pub body: Bytes,
}

/// The future a [`ClientExchange`] returns.
pub type ExchangeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ExchangeResponse, Error>> + Send + 'a>>;

/// Sends one request to a backend on a connection of its own and reads the
/// answer: how active health checks talk HTTP without knowing how the
/// traffic is dialled.
///
/// `detour-server` implements it with the engine's own dialing (the
/// proxy's connector, the upstream's TLS client and SNI, HTTP/2 when the
/// upstream speaks it), so a check reaches a backend the way requests do;
/// `detour-health` falls back to plain-TCP HTTP/1.1 when it is used on its
/// own. Object safe: checkers hold an `Arc<dyn ClientExchange>`.
pub trait ClientExchange: Send + Sync + 'static {
    /// Send `request` to `addr` over a fresh connection, never one pooled
    /// with traffic, closed once the answer is read.
    ///
    /// `timeout` bounds all of it: connect, TLS, the response head and the
    /// body read.
    ///
    /// # Errors
    /// An [`Error`] whose [`kind`](Error::kind) says what failed:
    /// `ConnectRefused`, `ConnectTimeout` (also when `timeout` ran out before
    /// a connection), `TlsHandshake`, `ReadTimeout` (`timeout` ran out after
    /// it), `ConnectionReset`, `ConnectionClosed`, `InvalidResponse`.
    ///
    /// # Cancel safety
    /// Dropping the future closes the connection; nothing is left behind.
    fn exchange<'a>(
        &'a self,
        addr: SocketAddr,
        request: &'a ExchangeRequest,
        timeout: Duration,
    ) -> ExchangeFuture<'a>;
}
