//! [`HttpProxy`]: serves downstream HTTP/1.1 and HTTP/2 (cleartext or TLS)
//! with hyper and drives the user's [`ProxyHttp`] hooks, the upstream pool
//! and the retry loop.

pub(crate) mod body;
mod charge;
mod conn;
mod drain;
pub(crate) mod engine;
mod exchange;
pub(crate) mod forward;
mod grpc;
pub(crate) mod path;
mod tunnel;

pub(crate) use tunnel::ConnSlot;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use detour_core::{Observer, ProxyHttp, RetryPolicy};
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

pub use body::ProxyBody;
// Defined on the upstream side, which the pools and the dialer are typed by.
pub use crate::upstream::UpstreamBody;

use crate::config::{Http2Config, LimitsConfig, PoolConfig, ServerConfig};
use crate::framing::{AmbiguousFraming, Answered, ConnWatch, FramingGuard};
use crate::send_timeout::SendTimeout;
use crate::upstream::h2pool::H2Pool;
use crate::upstream::pool::Pool;
use crate::upstream::{Connect, TcpConnector, Upstream};
use drain::run_until_drained;

/// How long a draining HTTP/1.1 connection waits for its next request (the
/// engine answers it with `Connection: close` while draining) before it is
/// shut down.
const H1_DRAIN_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
use forward::{Forwarding, RequestIds};

/// What every worker's copy of a proxy shares.
pub(crate) struct Shared<P, C> {
    pub(crate) proxy: Arc<P>,
    pub(crate) connector: Arc<C>,
    pub(crate) policy: Arc<RetryPolicy>,
    pub(crate) observers: Vec<Arc<dyn Observer>>,
    pub(crate) forwarding: Forwarding,
    pub(crate) paths: path::PathPolicy,
    pub(crate) proxy_name: Arc<str>,
    pub(crate) limits: LimitsConfig,
    pub(crate) http2: Http2Config,
    pub(crate) pool_config: PoolConfig,
    pub(crate) ids: RequestIds,
    pub(crate) draining: AtomicBool,
    /// Set at the end of the shutdown grace period: upgraded tunnels close.
    pub(crate) hard_stop: watch::Sender<bool>,
    /// Upgraded tunnels alive now (a drain waits for them within the grace).
    pub(crate) tunnels: watch::Sender<usize>,
    /// Upstreams registered with the builder, until the server that starts
    /// this proxy takes over their background services.
    upstreams: Mutex<Vec<Arc<Upstream>>>,
}

/// An HTTP reverse proxy driving the hooks of `P`, connecting upstream with `C`.
///
/// Cloning is cheap and shares the upstream pool; [`fork`](HttpProxy::fork)
/// shares everything but the pool (one pool per worker).
pub struct HttpProxy<P, C = TcpConnector> {
    pub(crate) shared: Arc<Shared<P, C>>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) h2pool: Arc<H2Pool>,
}

impl<P, C> Clone for HttpProxy<P, C> {
    fn clone(&self) -> Self {
        HttpProxy {
            shared: Arc::clone(&self.shared),
            pool: Arc::clone(&self.pool),
            h2pool: Arc::clone(&self.h2pool),
        }
    }
}

/// Builds an [`HttpProxy`].
pub struct HttpProxyBuilder<P, C = TcpConnector> {
    proxy: P,
    connector: C,
    config: ServerConfig,
    observers: Vec<Arc<dyn Observer>>,
    upstreams: Vec<Arc<Upstream>>,
}

impl<P: ProxyHttp> HttpProxy<P, TcpConnector> {
    /// A proxy over TCP with the default server configuration.
    pub fn new(proxy: P) -> Self {
        Self::builder(proxy).build()
    }

    /// Start building a proxy.
    pub fn builder(proxy: P) -> HttpProxyBuilder<P, TcpConnector> {
        HttpProxyBuilder {
            proxy,
            connector: TcpConnector,
            config: ServerConfig::default(),
            observers: Vec::new(),
            upstreams: Vec::new(),
        }
    }
}

impl<P: ProxyHttp, C: Connect> HttpProxyBuilder<P, C> {
    /// Use this server configuration (limits, pool, forwarding, retry policy).
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Use this default retry policy (a hook may still choose another).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Report every attempt's outcome to `observer`.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Register an [`Upstream`] the hooks select from: the server that runs
    /// this proxy ([`Server::start`](crate::Server::start),
    /// [`Server::run_forever`](crate::Server::run_forever)) runs its first
    /// round of health checks and discovery before it listens, then its
    /// background services (checks, outlier sweeps, discovery) until it
    /// stops. An upstream that is not registered never runs them, and its
    /// first `select` logs an error saying so.
    pub fn upstream(mut self, upstream: Arc<Upstream>) -> Self {
        self.upstreams.push(upstream);
        self
    }

    /// Register several upstreams (see [`upstream`](Self::upstream)).
    pub fn upstreams(mut self, upstreams: impl IntoIterator<Item = Arc<Upstream>>) -> Self {
        self.upstreams.extend(upstreams);
        self
    }

    /// Connect upstream with `connector` instead of plain TCP: the traffic
    /// and the active checks of the registered upstreams alike.
    pub fn connector<C2: Connect>(self, connector: C2) -> HttpProxyBuilder<P, C2> {
        HttpProxyBuilder {
            proxy: self.proxy,
            connector,
            config: self.config,
            observers: self.observers,
            upstreams: self.upstreams,
        }
    }

    /// Build the proxy. The registered upstreams' active checks dial through
    /// its connector from now on.
    pub fn build(self) -> HttpProxy<P, C> {
        let c = self.config;
        let connector = Arc::new(self.connector);
        for up in &self.upstreams {
            up.dial_checks_through(Arc::clone(&connector));
        }
        let (hard_stop, _) = watch::channel(false);
        HttpProxy {
            pool: Arc::new(Pool::new(c.pool.max_idle_per_peer)),
            h2pool: Arc::new(H2Pool::default()),
            shared: Arc::new(Shared {
                proxy: Arc::new(self.proxy),
                connector,
                policy: Arc::new(c.retry),
                observers: self.observers,
                forwarding: Forwarding::new(c.forwarding, &c.proxy_name),
                paths: path::PathPolicy::from(&c.paths),
                proxy_name: c.proxy_name.into(),
                limits: c.limits,
                http2: c.http2,
                pool_config: c.pool,
                ids: RequestIds::new(),
                draining: AtomicBool::new(false),
                hard_stop,
                tunnels: watch::channel(0).0,
                upstreams: Mutex::new(self.upstreams),
            }),
        }
    }
}

impl<P: ProxyHttp, C: Connect> HttpProxy<P, C> {
    /// The user's hooks.
    pub fn hooks(&self) -> &P {
        &self.shared.proxy
    }

    /// Hand the registered upstreams to the server that starts their
    /// services (each server takes them once; a failed start gives them back
    /// with [`return_upstreams`](Self::return_upstreams)).
    pub(crate) fn take_upstreams(&self) -> Vec<Arc<Upstream>> {
        std::mem::take(&mut *self.registered())
    }

    /// Give back upstreams a server took but could not start.
    pub(crate) fn return_upstreams(&self, upstreams: Vec<Arc<Upstream>>) {
        self.registered().extend(upstreams);
    }

    fn registered(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Upstream>>> {
        self.shared
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy sharing everything but the upstream pool (one per worker, so a
    /// worker's connections stay on its own runtime).
    pub fn fork(&self) -> Self {
        HttpProxy {
            shared: Arc::clone(&self.shared),
            pool: Arc::new(Pool::new(self.shared.pool_config.max_idle_per_peer)),
            h2pool: Arc::new(H2Pool::default()),
        }
    }

    /// Start draining: responses carry `Connection: close` from now on.
    pub fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the proxy is draining.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Upgraded tunnels alive now.
    pub fn live_tunnels(&self) -> usize {
        *self.shared.tunnels.borrow()
    }

    /// Wait until no upgraded tunnel is alive.
    pub async fn tunnels_closed(&self) {
        let mut rx = self.shared.tunnels.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// End every upgraded tunnel (the grace period is over).
    pub fn stop_tunnels(&self) {
        self.shared.hard_stop.send_replace(true);
    }

    /// The downstream HTTP/1.1 connection settings for this proxy.
    ///
    /// hyper's own head timer is off: the framing guard times idle
    /// connections (`keepalive_timeout`) and heads (`header_read_timeout`)
    /// whenever no request is in flight, and closes any connection it can no
    /// longer follow (see [`ConnWatch::not_upgraded`]). hyper's timer would
    /// box and register a fresh timer for every request, and keep one for
    /// every idle connection.
    pub(crate) fn http1_builder(&self) -> http1::Builder {
        let mut b = http1::Builder::new();
        let limits = &self.shared.limits;
        b.header_read_timeout(None)
            .max_header_size(limits.max_header_size)
            .max_buf_size(limits.max_header_size.max(400 * 1024))
            .keep_alive(true);
        b
    }

    /// Serve one downstream connection until it closes (a client that takes
    /// no bytes for `[server.limits] send_timeout` loses it). When `drain` turns
    /// true the connection finishes the request in flight, answers it with
    /// `Connection: close`, and closes.
    pub async fn serve_connection<I>(
        &self,
        io: I,
        client: Option<SocketAddr>,
        drain: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let io = SendTimeout::new(io, self.shared.limits.send_timeout);
        self.serve(io, client, false, drain, None).await;
    }

    /// Serve an HTTP/1.1 connection until it closes; a client too slow to
    /// send a request head gets `408 Request Timeout` before the close.
    /// `place`: the connection's place under `max_connections`, which an
    /// upgraded tunnel keeps.
    pub(crate) async fn serve<I>(
        &self,
        io: I,
        client: Option<SocketAddr>,
        tls: bool,
        drain: watch::Receiver<bool>,
        place: Option<ConnSlot>,
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (io, slot) = crate::io::Reclaim::new(io);
        if self.serve_h1(io, client, tls, drain, place).await {
            crate::io::send_request_timeout(&slot).await;
        }
    }

    /// Serve until the connection closes; `true` when it ended because the
    /// client was too slow to send a request head.
    async fn serve_h1<I>(
        &self,
        io: I,
        client: Option<SocketAddr>,
        tls: bool,
        drain: watch::Receiver<bool>,
        place: Option<ConnSlot>,
    ) -> bool
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let proxy = self.clone();
        // The guard watches the raw bytes for framing hyper would smooth over
        // and keeps the quiet connection's clocks; the service counts requests
        // to find the one it flagged, and tells it which are in flight.
        let watch = ConnWatch::new(&self.shared.limits);
        let io = FramingGuard::new(io, Arc::clone(&watch));
        let service_watch = Arc::clone(&watch);
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let proxy = proxy.clone();
            let watch = Arc::clone(&service_watch);
            let index = watch.begin();
            if watch.is_bad(index) {
                req.extensions_mut().insert(AmbiguousFraming(
                    "conflicting Content-Length / Transfer-Encoding",
                ));
            }
            let upgrade = req.headers().contains_key(http::header::UPGRADE);
            if let (true, Some(p)) = (upgrade, &place) {
                req.extensions_mut().insert(p.clone());
            }
            // Boxed: hyper keeps a connection's in-flight slot (an
            // `Option` of this future) for the connection's whole life, so
            // an unboxed request future would cost every idle connection
            // its full size; boxed, only a request in flight pays for it.
            // The box is made first and the future written into it: with
            // `Box::pin` the future (5 KB) was built on the stack and copied
            // whole into the box for every request.
            Box::into_pin(Box::write(Box::new_uninit(), async move {
                let mut resp = proxy
                    .handle_from(req, client, tls, Some(&watch.spare_timer))
                    .await;
                if upgrade
                    && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                    && !watch.not_upgraded(index)
                {
                    // The guard let go of the bytes behind this request.
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(resp.map(|b| Answered::new(b, watch)))
            }))
        });
        let conn = std::pin::pin!(self
            .http1_builder()
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades());
        let r = run_until_drained(conn, drain, client, None, Some(H1_DRAIN_LINGER)).await;
        // Only the guard times heads (hyper's own timer is off).
        let slow_head = watch.head_timed_out();
        if slow_head {
            tracing::debug!(?client, "request head too slow");
        } else if let Some(Err(e)) = r {
            tracing::debug!(error = %e, ?client, "downstream connection ended with an error");
        }
        slow_head
    }
}
