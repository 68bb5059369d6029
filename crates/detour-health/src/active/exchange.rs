//! The plain-TCP HTTP/1.1 [`ClientExchange`] an HTTP check uses when it is
//! given none ([`Http1Exchange`]: `detour-health` on its own), and
//! [`read_response`], how much of an answer any exchange reads.
//!
//! A server hands the checker its own exchange instead (`detour-server`'s
//! dials like its engine: TLS, HTTP/2); this one is the fallback, written
//! once.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use detour_core::connect::{
    ClientExchange, Connect, ExchangeFuture, ExchangeRequest, ExchangeResponse,
};
use detour_core::{Error, ErrorKind};
use http::header::CONNECTION;
use http::{HeaderValue, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// One request per connection over `C`, in HTTP/1.1 with
/// `Connection: close`. The connection is driven inside the exchange's own
/// future (not spawned), so an exchange cut short leaves nothing behind.
#[derive(Debug, Clone, Default)]
pub(crate) struct Http1Exchange<C> {
    connector: C,
}

impl<C: Connect> Http1Exchange<C> {
    /// Exchanges dialling through `connector`.
    pub(crate) fn new(connector: C) -> Self {
        Http1Exchange { connector }
    }

    async fn over(
        &self,
        io: C::Io,
        addr: SocketAddr,
        request: &ExchangeRequest,
    ) -> Result<ExchangeResponse, Error> {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .map_err(hyper_error)?;
        let mut req = request.to_request(addr, Empty::new())?;
        req.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        let exchange = async {
            let resp = sender.send_request(req).await.map_err(hyper_error)?;
            read_response(resp, request.body_limit)
                .await
                .map_err(hyper_error)
        };
        // The connection future does the I/O and must be polled until the
        // body is read; it runs in this task, so dropping the exchange drops
        // the connection.
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(exchange);
        let mut conn_done = false;
        std::future::poll_fn(|cx| {
            if !conn_done && conn.as_mut().poll(cx).is_ready() {
                // Its error, if any, reaches the exchange as a closed channel.
                conn_done = true;
            }
            exchange.as_mut().poll(cx)
        })
        .await
    }
}

impl<C: Connect> ClientExchange for Http1Exchange<C> {
    fn exchange<'a>(
        &'a self,
        addr: SocketAddr,
        request: &'a ExchangeRequest,
        timeout: Duration,
    ) -> ExchangeFuture<'a> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let io = match tokio::time::timeout_at(deadline, self.connector.connect(addr)).await {
                Err(_) => return Err(Error::upstream(ErrorKind::ConnectTimeout)),
                Ok(Err(e)) => return Err(Error::from_connect_io(e)),
                Ok(Ok(io)) => io,
            };
            tokio::time::timeout_at(deadline, self.over(io, addr, request))
                .await
                .unwrap_or_else(|_| Err(Error::upstream(ErrorKind::ReadTimeout)))
        })
    }
}

/// `resp` with the first `limit` bytes of its body (all of it when
/// shorter; nothing is read when `limit` is 0): what every
/// [`ClientExchange`] returns, so checks judge the same answer however they
/// dial.
///
/// # Errors
/// The body's own error, when a frame fails before `limit` bytes arrived.
pub async fn read_response<B>(resp: Response<B>, limit: usize) -> Result<ExchangeResponse, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let (head, mut body) = resp.into_parts();
    let mut seen = BytesMut::new();
    while seen.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame?.into_data() {
            let take = data.len().min(limit - seen.len());
            seen.extend_from_slice(&data[..take]);
        }
    }
    Ok(ExchangeResponse {
        status: head.status,
        headers: head.headers,
        body: seen.freeze(),
    })
}

/// What a failure of hyper's HTTP/1.1 client was.
fn hyper_error(err: hyper::Error) -> Error {
    let mut source = std::error::Error::source(&err);
    let mut io = None;
    while let Some(s) = source {
        if let Some(e) = s.downcast_ref::<std::io::Error>() {
            io = Some(e.kind());
            break;
        }
        source = s.source();
    }
    let kind = match io {
        Some(k) => ErrorKind::from_io(k),
        None if err.is_parse() || err.is_parse_status() => ErrorKind::InvalidResponse,
        None => ErrorKind::ConnectionClosed,
    };
    Error::upstream(kind).cause(err)
}
