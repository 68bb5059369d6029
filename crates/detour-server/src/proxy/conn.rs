//! Downstream connections other than cleartext HTTP/1.1: TLS (ALPN picks
//! `h2` or `http/1.1`), HTTP/2 (over TLS or by prior knowledge), and
//! cleartext listeners that take both (told apart by the HTTP/2 preface).
//!
//! Every HTTP/2 connection gets the `[server.http2]` limits: concurrent
//! streams, and the rapid-reset defence (CVE-2023-44487): a client that
//! resets more streams than `max_pending_accept_reset_streams` before the
//! server took them up, or makes the server reset more than
//! `max_local_error_reset_streams`, loses its connection (GOAWAY). Draining
//! and idle connections are handled by [`run_until_drained`], the one drain
//! path HTTP/1.1 connections take too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use detour_core::ProxyHttp;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::drain::{run_until_drained, IdleClose};
use super::{ConnSlot, HttpProxy};
use crate::listener::ListenSpec;
use crate::send_timeout::{SendTimeout, StreamExec};
use crate::tls::{ServerTls, ALPN_H2};
use crate::upstream::Connect;

impl<P: ProxyHttp, C: Connect> HttpProxy<P, C> {
    /// Serve a connection accepted on a listener described by `spec`.
    ///
    /// Its future is the connection task's, kept for the connection's whole
    /// life, and is as large as its largest path: so only cleartext
    /// HTTP/1.1, the common and lightest path, runs inline; TLS and HTTP/2
    /// (an HTTP/2 connection and a TLS session are several KB each) are
    /// boxed, one allocation per connection, and every idle cleartext
    /// HTTP/1.1 connection is that much smaller.
    pub(crate) async fn serve_accepted(
        &self,
        stream: TcpStream,
        client: Option<SocketAddr>,
        drain: watch::Receiver<bool>,
        spec: &ListenSpec,
        place: ConnSlot,
    ) {
        // Every connection, under TLS too, ends when its client stops taking
        // bytes for the send timeout.
        let stream = SendTimeout::new(stream, self.shared.limits.send_timeout);
        match (&spec.tls, spec.h1, spec.h2) {
            (None, true, false) => self.serve(stream, client, false, drain, Some(place)).await,
            (None, false, _) => Box::pin(self.serve_h2(stream, client, false, drain)).await,
            (None, true, true) => {
                let timeout = self.shared.limits.header_read_timeout;
                if sends_h2_preface(stream.get_ref(), timeout).await {
                    Box::pin(self.serve_h2(stream, client, false, drain)).await;
                } else {
                    self.serve(stream, client, false, drain, Some(place)).await;
                }
            }
            (Some(tls), h1, _) => {
                Box::pin(self.serve_tls(stream, client, drain, tls, h1, place)).await
            }
        }
    }

    /// Serve a connection on a TLS listener: the handshake, then HTTP/2 or
    /// HTTP/1.1 (when the listener takes it, `h1`) as ALPN says.
    async fn serve_tls(
        &self,
        stream: SendTimeout<TcpStream>,
        client: Option<SocketAddr>,
        drain: watch::Receiver<bool>,
        tls: &ServerTls,
        h1: bool,
        place: ConnSlot,
    ) {
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
        if alpn_h2 || !h1 {
            self.serve_h2(tls_stream, client, true, drain).await;
        } else {
            self.serve(tls_stream, client, true, drain, Some(place))
                .await;
        }
    }

    /// The executor of downstream HTTP/2 streams (watches each for a client
    /// that stopped reading it).
    fn stream_exec(&self) -> StreamExec {
        StreamExec::new(self.shared.limits.send_timeout)
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
            async move { Ok::<_, Infallible>(proxy.handle_from(req, client, tls, None).await) }
        });
        let exec = self.stream_exec();
        let mut builder = http2::Builder::new(exec.clone());
        self.apply_http2(&mut builder);
        let conn = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
        let idle = IdleClose {
            streams: exec,
            idle: self.shared.limits.keepalive_timeout,
        };
        if let Some(Err(e)) = run_until_drained(conn, drain, client, Some(idle), None).await {
            tracing::debug!(error = %e, ?client, "downstream connection ended with an error");
        }
    }
}

/// Whether a client on a listener that speaks both HTTP/1.1 and HTTP/2
/// opens with the HTTP/2 preface (prior knowledge). The bytes are only
/// peeked: whichever side serves the connection reads them all. A client
/// silent for `timeout`, or whose first bytes are not the preface, is
/// served as HTTP/1.1 (with that side's limits and timeouts).
async fn sends_h2_preface(stream: &TcpStream, timeout: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 || buf[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // Part of the preface: a peek would return the same bytes at once,
        // so wait a moment for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
