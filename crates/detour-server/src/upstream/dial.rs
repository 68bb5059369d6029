//! Speaking to an upstream over a fresh transport: TLS (SNI, verification,
//! ALPN) when the peer asks for it, then an HTTP/1.1 or HTTP/2 handshake.
//!
//! The result is a [`Conn`]: an enum, not a boxed trait object, so the
//! HTTP/1.1 path pays one match per request and nothing else. HTTP/1.1
//! connections, TLS or not, go back to the idle pool keyed by address alone:
//! one backend address is spoken to one way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use detour_core::connect::Connect;
use detour_core::{Error, ErrorKind, HttpPeer};
use http::header::{self, HeaderValue};
use http::{request, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Http1Client;
use crate::tls::ALPN_H2;
use crate::upstream::classify::classify_hyper;
use crate::upstream::native::{self, H1Body, H1Conn, SendFailed};
use crate::upstream::pool::Sender;
use crate::upstream::response::UpBody;
use crate::upstream::UpstreamBody;

/// An HTTP/2 request sender; clones share one connection.
pub(crate) type H2Sender = hyper::client::conn::http2::SendRequest<UpstreamBody>;

/// A connection to an upstream, ready to take a request.
pub(crate) enum Conn {
    /// HTTP/1.1 through hyper: one request at a time; back to the idle
    /// pool afterwards.
    H1(Sender),
    /// HTTP/2: a handle on a multiplexed connection that stays in the
    /// HTTP/2 pool while it lives.
    H2(H2Sender),
    /// HTTP/1.1, Detour's own: the connection moves into the request's
    /// future and then into the response body (`None` once it has).
    Native(Option<Box<H1Conn>>),
}

pin_project_lite::pin_project! {
    /// The response future of any of the three (no boxing).
    #[project = SendingProj]
    pub(crate) enum Sending<A, B, N> {
        /// HTTP/1.1 through hyper.
        H1 { #[pin] f: A },
        /// HTTP/2.
        H2 { #[pin] f: B },
        /// Native HTTP/1.1.
        Native { #[pin] f: N },
        /// A native connection already used.
        Gone,
    }
}

/// A request hyper could not send: provably unsent when hyper hands it
/// back.
fn hyper_failure(mut e: TrySendError<Request<UpstreamBody>>) -> SendFailed {
    let unsent = e.take_message().is_some();
    SendFailed {
        err: classify_hyper(e.into_error()),
        unsent,
    }
}

/// What sending a request gives back.
pub(crate) type SendResult = Result<Response<UpBody>, SendFailed>;

type HyperResult = Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>>;

impl<A, B, N> Future for Sending<A, B, N>
where
    A: Future<Output = HyperResult>,
    B: Future<Output = HyperResult>,
    N: Future<Output = Result<Response<H1Body>, SendFailed>>,
{
    type Output = SendResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SendResult> {
        let hyper = match self.project() {
            SendingProj::H1 { f } => std::task::ready!(f.poll(cx)),
            SendingProj::H2 { f } => std::task::ready!(f.poll(cx)),
            SendingProj::Native { f } => {
                return f.poll(cx).map(|r| r.map(|resp| resp.map(UpBody::Native)))
            }
            SendingProj::Gone => {
                return Poll::Ready(Err(SendFailed {
                    err: Error::upstream(ErrorKind::ConnectionClosed)
                        .context("a native connection was used twice"),
                    unsent: true,
                }))
            }
        };
        Poll::Ready(match hyper {
            Ok(resp) => Ok(resp.map(|body| UpBody::Hyper { body, sender: None })),
            Err(e) => Err(hyper_failure(e)),
        })
    }
}

impl Conn {
    /// Send `req`. A native connection moves into the response body; a
    /// hyper one is given to it by [`attach`](Self::attach).
    pub(crate) fn send(&mut self, req: Request<UpstreamBody>) -> impl Future<Output = SendResult> {
        match self {
            Conn::H1(s) => Sending::H1 {
                f: s.try_send_request(req),
            },
            Conn::H2(s) => Sending::H2 {
                f: s.try_send_request(req),
            },
            Conn::Native(c) => match c.take() {
                Some(c) => Sending::Native {
                    f: native::send(c, req),
                },
                None => Sending::Gone,
            },
        }
    }

    /// Let `body`, this connection's answer, carry the connection to its
    /// end, to be pooled then ([`UpBody::take_reusable`]). An HTTP/2
    /// connection stays in its own pool; a native one is in the body already.
    pub(crate) fn attach(self, body: &mut UpBody) {
        if let (Conn::H1(s), UpBody::Hyper { sender, .. }) = (self, body) {
            *sender = Some(s);
        }
    }

    /// Shape a request head built for HTTP/1.1 for this connection: over
    /// HTTP/2 the target is absolute (`:scheme` and `:authority` from the
    /// `Host` header, which then goes), and `TE` may only say `trailers`.
    /// `has_body`: a request body follows. Over HTTP/1.1 a body of unknown
    /// length is sent chunked, whatever the method: hyper would otherwise
    /// drop the body of a GET or HEAD.
    pub(crate) fn adapt_head(&self, head: &mut request::Parts, peer: &HttpPeer, has_body: bool) {
        match self {
            Conn::H2(_) => to_http2(head, peer),
            Conn::H1(_) | Conn::Native(_) => {
                if has_body
                    && !head.headers.contains_key(header::CONTENT_LENGTH)
                    && !head.headers.contains_key(header::TRANSFER_ENCODING)
                {
                    head.headers.insert(
                        header::TRANSFER_ENCODING,
                        HeaderValue::from_static("chunked"),
                    );
                }
            }
        }
    }
}

fn to_http2(head: &mut request::Parts, peer: &HttpPeer) {
    head.version = Version::HTTP_2;
    if head.uri.scheme().is_none() {
        let scheme = if peer.tls.is_some() { "https" } else { "http" };
        let authority = match head.headers.remove(header::HOST) {
            Some(h) => h.to_str().map(str::to_owned).ok(),
            None => None,
        }
        .unwrap_or_else(|| peer.addr.to_string());
        let pq = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
        if let Ok(uri) = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(pq)
            .build()
        {
            head.uri = uri;
        }
    } else {
        head.headers.remove(header::HOST);
    }
    if head
        .headers
        .get(header::TE)
        .is_some_and(|te| te != HeaderValue::from_static("trailers"))
    {
        head.headers.remove(header::TE);
    }
}

/// Whether `alpn` names HTTP/2.
fn is_h2(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ALPN_H2)
}

/// A fresh connection to `peer` through `connector`: the transport within
/// the peer's connect timeout, then [`handshake`]. The engine dials every
/// new connection this way, and so do the active health checks, so a check
/// reaches a backend the way traffic does.
///
/// # Errors
/// `ConnectTimeout` or `ConnectRefused` when no transport was made (nothing
/// was sent), otherwise as [`handshake`] failed.
pub(crate) async fn connect<C: Connect>(
    connector: &C,
    peer: &HttpPeer,
    h1: Http1Client,
) -> Result<Conn, Error> {
    let io = match tokio::time::timeout(peer.options.connect_timeout, connector.connect(peer.addr))
        .await
    {
        Err(_) => return Err(Error::upstream(ErrorKind::ConnectTimeout)),
        Ok(Err(e)) => return Err(Error::from_connect_io(e)),
        Ok(Ok(io)) => io,
    };
    handshake(io, peer, h1).await
}

/// Handshake over `io`: TLS first when the peer wants it (bounded by the
/// peer's TLS timeout), then HTTP/1.1 or HTTP/2.
///
/// # Errors
/// `TlsHandshake` for a failed or slow TLS handshake (the request never left,
/// so any method may be retried), otherwise as the HTTP handshake failed.
pub(crate) async fn handshake<I>(io: I, peer: &HttpPeer, h1: Http1Client) -> Result<Conn, Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Some(tls) = &peer.tls else {
        return if peer.http2 {
            http2(io).await
        } else {
            http1(io, h1, true).await
        };
    };
    let config = Arc::clone(&tls.client)
        .downcast::<rustls::ClientConfig>()
        .map_err(|_| {
            Error::upstream(ErrorKind::TlsHandshake)
                .context("the peer's TLS client is not a rustls::ClientConfig")
                .never_retry()
        })?;
    let name = ServerName::try_from(tls.server_name.to_string()).map_err(|e| {
        Error::upstream(ErrorKind::TlsHandshake)
            .context("bad TLS server name")
            .cause(e)
    })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream =
        match tokio::time::timeout(peer.options.tls_timeout, connector.connect(name, io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Error::upstream(ErrorKind::TlsHandshake)
                    .context("TLS handshake with the upstream failed")
                    .cause(e))
            }
            Err(_) => {
                return Err(Error::upstream(ErrorKind::TlsHandshake)
                    .context("TLS handshake with the upstream took longer than tls_timeout"))
            }
        };
    if is_h2(stream.get_ref().1.alpn_protocol()) {
        http2(stream).await
    } else {
        http1(stream, h1, false).await
    }
}

/// An HTTP/1.1 connection over `io`; `exact_writes`: `io` is a plain
/// socket, where a failed write sent nothing (not TLS).
async fn http1<I>(io: I, h1: Http1Client, exact_writes: bool) -> Result<Conn, Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    if h1 == Http1Client::Native {
        return Ok(Conn::Native(Some(H1Conn::new(io, exact_writes))));
    }
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(classify_hyper)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::trace!(error = %e, "upstream connection ended");
        }
    });
    Ok(Conn::H1(sender))
}

async fn http2<I>(io: I) -> Result<Conn, Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(classify_hyper)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::trace!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(Conn::H2(sender))
}
