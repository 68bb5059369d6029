//! Downstream connections other than cleartext HTTP/1.1: TLS (ALPN picks
//! `h2` or `http/1.1`), HTTP/2 (over TLS or by prior knowledge), and
//! cleartext listeners that take both (told apart by the HTTP/2 preface).
//!
//! Every HTTP/2 connection gets the `[server.http2]` limits: concurrent
//! streams, and the rapid-reset defence (CVE-2023-44487): a client that
//! resets more streams than `max_pending_accept_reset_streams` before the
//! server took them up, or makes the server reset more than
//! `max_local_error_reset_streams`, loses its connection (GOAWAY). While
//! draining, the server sends GOAWAY and lets the streams in flight finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use detour_core::ProxyHttp;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::HttpProxy;
use crate::listener::ListenSpec;
use crate::send_timeout::{SendTimeout, StreamExec};
use crate::tls::ALPN_H2;
use crate::upstream::Connect;

/// A connection future that can be asked to shut down gracefully.
trait Graceful: std::future::Future {
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> Graceful for http2::Connection<I, S, E>
where
    Self: std::future::Future,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E, B> Graceful for auto::UpgradeableConnection<'_, I, S, E>
where
    Self: std::future::Future,
    S: hyper::service::Service<Request<Incoming>, Response = http::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drive `conn` to its end; when `drain` turns true (or the server goes
/// away), shut it down gracefully (HTTP/2: GOAWAY) and let it finish.
async fn run_until_drained<F, E>(
    conn: F,
    mut drain: watch::Receiver<bool>,
    client: Option<SocketAddr>,
) where
    F: Graceful<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        if !draining && *drain.borrow_and_update() {
            draining = true;
            conn.as_mut().shutdown();
        }
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, ?client, "downstream connection ended with an error");
                }
                return;
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() {
                    draining = true;
                    conn.as_mut().shutdown();
                }
            }
        }
    }
}

impl<P: ProxyHttp, C: Connect> HttpProxy<P, C> {
    /// Serve a connection accepted on a listener described by `spec`.
    pub(crate) async fn serve_accepted(
        &self,
        stream: TcpStream,
        client: Option<SocketAddr>,
        drain: watch::Receiver<bool>,
        spec: &ListenSpec,
    ) {
        // Every connection, under TLS too, ends when its client stops taking
        // bytes for the send timeout.
        let stream = SendTimeout::new(stream, self.shared.limits.send_timeout);
        match (&spec.tls, spec.h1, spec.h2) {
            (None, true, false) => self.serve_tcp(stream, client, drain).await,
            (None, false, _) => self.serve_h2(stream, client, false, drain).await,
            (None, true, true) => self.serve_auto(stream, client, drain).await,
            (Some(tls), _, _) => {
                let handshake = tls.acceptor().accept(stream);
                let timeout = self.shared.limits.header_read_timeout;
                let tls_stream = match tokio::time::timeout(timeout, handshake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, ?client, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(?client, "TLS handshake too slow");
                        return;
                    }
                };
                let alpn_h2 = tls_stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                // Without ALPN a client speaks HTTP/1.1 if the listener does.
                if alpn_h2 || !spec.h1 {
                    self.serve_h2(tls_stream, client, true, drain).await;
                } else {
                    self.serve(tls_stream, client, true, drain).await;
                }
            }
        }
    }

    /// The executor of downstream HTTP/2 streams (watches each for a client
    /// that stopped reading it).
    fn stream_exec(&self) -> StreamExec {
        StreamExec::new(self.shared.limits.send_timeout)
    }

    /// The downstream HTTP/2 settings for this proxy.
    fn http2_builder(&self) -> http2::Builder<StreamExec> {
        let mut b = http2::Builder::new(self.stream_exec());
        self.apply_http2(&mut b);
        b
    }

    fn apply_http2(&self, b: &mut http2::Builder<StreamExec>) {
        let c = &self.shared.http2;
        let header_list = u32::try_from(self.shared.limits.max_header_size).unwrap_or(u32::MAX);
        b.timer(TokioTimer::new())
            .max_concurrent_streams(c.max_concurrent_streams)
            .max_pending_accept_reset_streams(c.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(c.max_local_error_reset_streams)
            .max_header_list_size(header_list)
            .keep_alive_interval(c.keep_alive_interval)
            .keep_alive_timeout(c.keep_alive_timeout);
    }

    /// Serve HTTP/2 on `io` (after ALPN, or by prior knowledge).
    async fn serve_h2<I>(
        &self,
        io: I,
        client: Option<SocketAddr>,
        tls: bool,
        drain: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let proxy = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle_from(req, client, tls).await) }
        });
        let conn = self
            .http2_builder()
            .serve_connection(TokioIo::new(io), service);
        run_until_drained(conn, drain, client).await;
    }

    /// Serve a cleartext connection that may be HTTP/1.1 or HTTP/2 (prior
    /// knowledge): hyper-util tells them apart by the preface. HTTP/1.1 keeps
    /// its framing guard and upgrades.
    async fn serve_auto<I>(
        &self,
        stream: I,
        client: Option<SocketAddr>,
        drain: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let proxy = self.clone();
        let verdicts = crate::framing::Verdicts::new();
        let io = crate::framing::FramingGuard::new(
            stream,
            self.shared.limits.max_header_size,
            Arc::clone(&verdicts),
        );
        let served = Arc::new(AtomicU64::new(0));
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let proxy = proxy.clone();
            let index = served.fetch_add(1, Ordering::Relaxed);
            if req.version() < http::Version::HTTP_2 && verdicts.is_bad(index) {
                req.extensions_mut()
                    .insert(crate::framing::AmbiguousFraming(
                        "conflicting Content-Length / Transfer-Encoding",
                    ));
            }
            async move { Ok::<_, Infallible>(proxy.handle(req, client).await) }
        });
        let mut builder = auto::Builder::new(self.stream_exec());
        let limits = &self.shared.limits;
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_size.max(400 * 1024))
            .keep_alive(true);
        {
            let c = &self.shared.http2;
            let header_list = u32::try_from(limits.max_header_size).unwrap_or(u32::MAX);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(c.max_concurrent_streams)
                .max_pending_accept_reset_streams(c.max_pending_accept_reset_streams)
                .max_local_error_reset_streams(c.max_local_error_reset_streams)
                .max_header_list_size(header_list)
                .keep_alive_interval(c.keep_alive_interval)
                .keep_alive_timeout(c.keep_alive_timeout);
        }
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        run_until_drained(conn, drain, client).await;
    }
}
