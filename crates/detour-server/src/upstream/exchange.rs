//! Active HTTP checks dial like the engine.
//!
//! [`PeerDialing`] is how an upstream's peers are spoken to beyond their
//! address — its TLS client and server name, HTTP/2 or not — and
//! [`CheckExchange`] is detour-core's [`ClientExchange`] over the engine's
//! own [`dial::connect`]: the same connector, TLS settings, SNI and ALPN as
//! the upstream's traffic, so an upstream with `tls` or `http2` can have
//! HTTP checks. Each check takes a fresh connection that never enters the
//! pools and is closed once the answer is read.
//!
//! [`CheckConnector`] is the connector the checks (TCP and HTTP) dial
//! through: plain TCP until the upstream is registered with a proxy, then
//! that proxy's connector, so a proxy built with its own
//! [`connector`](crate::HttpProxyBuilder::connector) checks its backends
//! through it too.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use detour_core::connect::{
    ClientExchange, Connect, ExchangeFuture, ExchangeRequest, ExchangeResponse,
};
use detour_core::{Error, ErrorKind, HttpPeer, PeerOptions};
use detour_health::read_response;
use http::header::CONNECTION;
use http::{HeaderValue, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::config::Http1Client;
use crate::tls::TlsClient;
use crate::upstream::dial::{self, Conn};
use crate::upstream::{TcpConnector, UpstreamBody};

/// A check's transport, whatever the connector behind it returns.
pub(crate) trait CheckIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> CheckIo for T {}

type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Box<dyn CheckIo>>> + Send + 'a>>;

/// [`Connect`] behind a pointer: its connections boxed.
trait DynConnect: Send + Sync {
    fn connect_boxed(&self, addr: SocketAddr) -> ConnectFuture<'_>;
}

impl<C: Connect> DynConnect for Arc<C> {
    fn connect_boxed(&self, addr: SocketAddr) -> ConnectFuture<'_> {
        Box::pin(async move {
            let io = C::connect(self, addr).await?;
            Ok(Box::new(io) as Box<dyn CheckIo>)
        })
    }
}

/// The connector an upstream's checks dial through (see the module docs):
/// shared by its TCP and HTTP checks, switched by
/// [`dial_through`](Self::dial_through). A check already dialling finishes
/// on the connector it started with.
#[derive(Clone)]
pub(crate) struct CheckConnector(Arc<RwLock<Arc<dyn DynConnect>>>);

impl Default for CheckConnector {
    fn default() -> Self {
        CheckConnector(Arc::new(RwLock::new(Arc::new(Arc::new(TcpConnector)))))
    }
}

impl std::fmt::Debug for CheckConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckConnector")
    }
}

impl CheckConnector {
    /// Dial through `connector` from now on.
    pub(crate) fn dial_through<C: Connect>(&self, connector: Arc<C>) {
        let next: Arc<dyn DynConnect> = Arc::new(connector);
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = next;
    }

    fn current(&self) -> Arc<dyn DynConnect> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Connect for CheckConnector {
    type Io = Box<dyn CheckIo>;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Io> {
        let connector = self.current();
        connector.connect_boxed(addr).await
    }
}

/// How an upstream's peers are dialled beyond their address: TLS (the
/// client configuration and the configured server name) and HTTP/2.
/// Selection shapes every peer with it, and so does the check exchange, so
/// both reach a backend one way.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerDialing {
    tls: Option<(TlsClient, Option<Arc<str>>)>,
    http2: bool,
}

impl PeerDialing {
    /// TLS with `client` and server name `sni` when `tls` is set; HTTP/2
    /// when `http2`.
    pub(crate) fn new(tls: Option<(TlsClient, Option<Arc<str>>)>, http2: bool) -> Self {
        PeerDialing { tls, http2 }
    }

    /// `peer`, to be dialled this way. (Inlined: it runs on every request,
    /// and a call would copy the peer in and out.)
    #[inline]
    pub(crate) fn apply(&self, mut peer: HttpPeer) -> HttpPeer {
        if let Some((client, sni)) = &self.tls {
            // Without a configured name, the backend's IP address is the
            // name verified (and no SNI is sent, as TLS wants for addresses).
            let name = match sni {
                Some(n) => Arc::clone(n),
                None => Arc::from(peer.addr.ip().to_string()),
            };
            peer = peer.with_tls(client.peer_tls(name));
        }
        peer.with_http2(self.http2)
    }
}

/// One check request per fresh connection, dialled through `C` exactly as
/// the engine dials a new connection for the upstream's traffic.
#[derive(Debug)]
pub(crate) struct CheckExchange<C> {
    connector: C,
    dialing: PeerDialing,
    upstream: Arc<str>,
}

impl<C: Connect> CheckExchange<C> {
    /// Checks of upstream `upstream`, dialled through `connector` as
    /// `dialing` says.
    pub(crate) fn new(connector: C, dialing: PeerDialing, upstream: Arc<str>) -> Self {
        CheckExchange {
            connector,
            dialing,
            upstream,
        }
    }

    async fn run(
        &self,
        addr: SocketAddr,
        request: &ExchangeRequest,
        timeout: Duration,
    ) -> Result<ExchangeResponse, Error> {
        let deadline = Instant::now() + timeout;
        let mut options = PeerOptions::default();
        options.connect_timeout = timeout;
        options.tls_timeout = timeout;
        let peer = self
            .dialing
            .apply(HttpPeer::new(addr, Arc::clone(&self.upstream)).with_options(options));
        let mut conn = tokio::time::timeout_at(
            deadline,
            dial::connect(&self.connector, &peer, Http1Client::Hyper),
        )
        .await
        .map_err(|_| Error::upstream(ErrorKind::ConnectTimeout))??;
        let req = head(&conn, &peer, request)?;
        // `conn` is dropped on return: an HTTP/1.1 connection was asked to
        // close, and an HTTP/2 one closes with its last handle. Neither was
        // ever offered to the pools.
        tokio::time::timeout_at(deadline, async {
            let resp = conn.send(req).await.map_err(|e| e.err)?;
            read_response(resp, request.body_limit).await
        })
        .await
        .unwrap_or_else(|_| Err(Error::upstream(ErrorKind::ReadTimeout)))
    }
}

impl<C: Connect> ClientExchange for CheckExchange<C> {
    fn exchange<'a>(
        &'a self,
        addr: SocketAddr,
        request: &'a ExchangeRequest,
        timeout: Duration,
    ) -> ExchangeFuture<'a> {
        Box::pin(self.run(addr, request, timeout))
    }
}

/// The check's request shaped for `conn` as the engine shapes traffic: a
/// `Host` naming the backend when the check names none, `Connection: close`
/// on HTTP/1.1, `:scheme` and `:authority` on HTTP/2.
fn head(
    conn: &Conn,
    peer: &HttpPeer,
    request: &ExchangeRequest,
) -> Result<Request<UpstreamBody>, Error> {
    let mut req = request.to_request(peer.addr, UpstreamBody::empty())?;
    if matches!(conn, Conn::H1(_)) {
        req.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let (mut parts, body) = req.into_parts();
    conn.adapt_head(&mut parts, peer, false);
    Ok(Request::from_parts(parts, body))
}
