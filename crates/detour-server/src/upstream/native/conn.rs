//! One HTTP/1.1 upstream connection, driven by the request's own task.
//!
//! [`send`] writes the request head and body and reads the response head,
//! both at once: a backend may answer before it has read the whole body. The
//! answer's body, [`H1Body`], owns the connection from then on; it goes on
//! writing what is left of the upload while it reads, and hands the
//! connection back ([`H1Body::take_reusable`]) only when the request was
//! written whole, the response read to its framing's end, nothing more was
//! buffered, and neither side asked to close.
//!
//! There is no task and no channel per connection, which is what hyper's
//! client pays for on every request.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use detour_core::{Error, ErrorKind};
use http::{HeaderMap, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::decode::{DecodeError, Decoded, Decoder};
use super::head::{self, BodySize, Framing};
use crate::upstream::UpstreamBody;

/// A transport the connection can own, whatever the connector made.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Read at least this much at a time.
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// An idle HTTP/1.1 connection, ready for a request.
pub(crate) struct H1Conn {
    io: Box<dyn Io>,
    /// A failed write sent nothing (a plain socket). Not over TLS: rustls
    /// takes the plaintext, may send part of its records and then fail, so
    /// there every write attempt counts as maybe sent.
    exact_writes: bool,
    /// Read but not yet parsed; empty whenever the connection is idle.
    rbuf: BytesMut,
    out: Out,
    /// Room for where a response head's lines lie, kept between responses.
    spans: Vec<head::Span>,
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn")
            .field("buffered", &self.rbuf.len())
            .finish_non_exhaustive()
    }
}

impl H1Conn {
    /// A connection over `io`, on which nothing was sent yet;
    /// `exact_writes` as the field says.
    pub(crate) fn new(io: impl Io + 'static, exact_writes: bool) -> Box<Self> {
        Box::new(H1Conn {
            io: Box::new(io),
            exact_writes,
            rbuf: BytesMut::new(),
            out: Out::default(),
            spans: Vec::new(),
        })
    }

    /// Whether an idle connection can take a request: not closed by the
    /// backend, and nothing unasked-for arrived on it. Never waits: it looks
    /// at what the transport already has.
    pub(crate) fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        // Outside tokio's cooperative budget: with the budget spent, a read
        // says "pending" without looking, and a dead connection would pass.
        let mut probe = std::pin::pin!(tokio::task::unconstrained(poll_fn(|cx| {
            self.poll_fill_lean(cx)
        })));
        // Ready means a close, stray bytes (an answer to nothing), or an error.
        probe.as_mut().poll(&mut cx).is_pending()
    }

    /// Read more into the buffer: the bytes read, 0 at the close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    /// [`poll_fill`](Self::poll_fill) for a connection that holds no buffer
    /// (idle, or waiting for its answer's head): read into the stack, and
    /// keep only the bytes that came. A connection waiting on a backend then
    /// holds no read buffer, only one the size of what it got; with many
    /// requests in flight (HTTP/2 clients) that is most of their memory.
    /// Bodies read with `poll_fill`, into a buffer of their own, no copy.
    fn poll_fill_lean(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() != 0 {
            return self.poll_fill(cx);
        }
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = tokio::io::ReadBuf::uninit(&mut stack);
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        self.rbuf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// Room in the read buffer, read or not.
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.rbuf.capacity()
    }

    /// Let go of the read buffer once nothing is in it (an idle connection
    /// in the pool holds none; see [`poll_fill_lean`](Self::poll_fill_lean)).
    /// An empty buffer may still share its allocation with the bytes split
    /// off it (a response's head and body): it is dropped too, or it would
    /// keep that allocation alive while the connection idles.
    fn release_buffer(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }
}

/// Bytes on their way to the transport, in order: `pre` (a head or chunk
/// framing, reused from request to request), then `data` (a body frame, not
/// copied), then `post` (a chunk's CRLF).
#[derive(Default)]
struct Out {
    pre: Vec<u8>,
    pre_at: usize,
    data: Bytes,
    post: &'static [u8],
    /// Whether any byte of the current request may have reached the
    /// transport.
    wrote: bool,
    /// Bytes were written since the transport was last flushed.
    unflushed: bool,
}

impl Out {
    fn is_empty(&self) -> bool {
        self.pre_at == self.pre.len() && self.data.is_empty() && self.post.is_empty()
    }

    /// Nothing queued, and everything written was flushed (TLS holds
    /// records until a flush).
    fn is_idle(&self) -> bool {
        self.is_empty() && !self.unflushed
    }

    /// Start over for a new request.
    fn reset(&mut self) {
        self.pre.clear();
        self.pre_at = 0;
        self.data = Bytes::new();
        self.post = b"";
        self.wrote = false;
        self.unflushed = false;
    }

    /// Queue a body frame framed as `framing` (nothing else may be queued
    /// behind `pre`).
    fn queue_data(&mut self, data: Bytes, framing: Framing) {
        if framing == Framing::Chunked {
            push_hex(&mut self.pre, data.len());
            self.pre.extend_from_slice(b"\r\n");
            self.post = b"\r\n";
        }
        self.data = data;
    }

    /// Write everything queued and flush it.
    fn poll_flush(
        &mut self,
        io: &mut Box<dyn Io>,
        exact: bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let slices = [
                io::IoSlice::new(&self.pre[self.pre_at..]),
                io::IoSlice::new(&self.data),
                io::IoSlice::new(self.post),
            ];
            if !exact {
                self.wrote = true;
            }
            let n = std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wrote = true;
            self.unflushed = true;
            self.advance(n);
        }
        self.pre.clear();
        self.pre_at = 0;
        if self.unflushed {
            std::task::ready!(Pin::new(&mut **io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        let pre = (self.pre.len() - self.pre_at).min(n);
        self.pre_at += pre;
        n -= pre;
        let data = self.data.len().min(n);
        let _ = self.data.split_to(data);
        n -= data;
        self.post = &self.post[n.min(self.post.len())..];
    }
}

/// `n` in upper-case hex, as a chunk size.
fn push_hex(dst: &mut Vec<u8>, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut shift = (usize::BITS - n.max(1).leading_zeros()).div_ceil(4) * 4;
    while shift > 0 {
        shift -= 4;
        dst.push(DIGITS[(n >> shift) & 0xf]);
    }
}

/// Why writing the request stopped.
enum WriteFail {
    /// The transport failed.
    Io(io::Error),
    /// The request body failed (the client's upload was cut short), or did
    /// not match its declared length: the backend must not see it complete.
    Body(&'static str),
}

/// The request body still to write, and how.
struct Upload {
    src: Option<UpstreamBody>,
    framing: Framing,
    /// Bytes still owed under `Content-Length`.
    left: u64,
    /// The trailer fields the request declared (`Trailer`), the only ones
    /// a chunked body may carry.
    trailer_names: Vec<http::HeaderName>,
    done: bool,
}

impl Upload {
    fn new(src: Option<UpstreamBody>, framing: Framing, head: &HeaderMap) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let trailer_names = if framing == Framing::Chunked {
            declared_trailers(head)
        } else {
            Vec::new()
        };
        Upload {
            done: src.is_none() && left == 0 && framing != Framing::Chunked,
            src,
            framing,
            left,
            trailer_names,
        }
    }

    /// Write the request as far as it goes now: `Ready(Ok)` once all of it
    /// was written and flushed.
    fn poll_write(
        &mut self,
        conn: &mut H1Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteFail>> {
        loop {
            std::task::ready!(conn.out.poll_flush(&mut conn.io, conn.exact_writes, cx))
                .map_err(WriteFail::Io)?;
            if self.done {
                return Poll::Ready(Ok(()));
            }
            let frame = match self.src.as_mut() {
                Some(src) => std::task::ready!(Pin::new(src).poll_frame(cx)),
                None => None,
            };
            match frame {
                None => self.finish(&mut conn.out, None)?,
                Some(Err(_)) => return Poll::Ready(Err(WriteFail::Body("request body cut short"))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.queue(&mut conn.out, data)?,
                    Err(frame) => self.finish(&mut conn.out, frame.into_trailers().ok())?,
                },
            }
        }
    }

    fn queue(&mut self, out: &mut Out, data: Bytes) -> Result<(), WriteFail> {
        if data.is_empty() {
            return Ok(());
        }
        if let Framing::Length(_) = self.framing {
            let n = data.len() as u64;
            if n > self.left {
                return Err(WriteFail::Body(
                    "request body longer than its Content-Length",
                ));
            }
            self.left -= n;
        }
        out.queue_data(data, self.framing);
        Ok(())
    }

    /// The body ended (with `trailers`, perhaps): its last chunk.
    fn finish(&mut self, out: &mut Out, trailers: Option<HeaderMap>) -> Result<(), WriteFail> {
        self.src = None;
        self.done = true;
        match self.framing {
            Framing::Chunked => {
                out.pre.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    // Declared, allowed in a trailer (hyper's list), and
                    // unable to end its line.
                    if self.trailer_names.contains(name)
                        && trailer_allowed(name)
                        && !head::breaks_line(value.as_bytes())
                    {
                        out.pre.extend_from_slice(name.as_str().as_bytes());
                        out.pre.extend_from_slice(b": ");
                        out.pre.extend_from_slice(value.as_bytes());
                        out.pre.extend_from_slice(b"\r\n");
                    }
                }
                out.pre.extend_from_slice(b"\r\n");
                Ok(())
            }
            _ if self.left > 0 => Err(WriteFail::Body(
                "request body shorter than its Content-Length",
            )),
            _ => Ok(()),
        }
    }
}

/// Whether `name` may travel in a trailer: not a field that frames,
/// routes, authenticates or otherwise needs the head (the fields hyper's
/// client drops from trailers too).
fn trailer_allowed(name: &http::HeaderName) -> bool {
    use http::header::*;
    ![
        AUTHORIZATION,
        CACHE_CONTROL,
        CONTENT_ENCODING,
        CONTENT_LENGTH,
        CONTENT_RANGE,
        CONTENT_TYPE,
        HOST,
        MAX_FORWARDS,
        SET_COOKIE,
        TRAILER,
        TRANSFER_ENCODING,
        TE,
    ]
    .contains(name)
}

/// The names a request's `Trailer` header declares.
fn declared_trailers(head: &HeaderMap) -> Vec<http::HeaderName> {
    head.get_all(http::header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|s| http::HeaderName::from_bytes(s.trim().as_bytes()).ok())
        .collect()
}

/// A request that failed to send, on either HTTP/1.1 client (or HTTP/2).
#[derive(Debug)]
pub(crate) struct SendFailed {
    /// What failed, classified for the retry rules.
    pub(crate) err: Error,
    /// No byte of the request reached the transport: it provably was not
    /// sent, and may go elsewhere whatever its method.
    pub(crate) unsent: bool,
}

/// Send `req` on `conn`, until the response head. The connection is gone
/// from the caller: it lives on in the response's body, or is dropped
/// (closed) with a failure.
///
/// # Cancel safety
/// Dropping the future drops the connection, closing it: a half-written
/// request or half-read answer never reaches a pool.
pub(crate) async fn send(
    mut conn: Box<H1Conn>,
    req: Request<UpstreamBody>,
) -> Result<Response<H1Body>, SendFailed> {
    // Made before the first await, so the request itself is not kept in
    // the future's state (every request's future is this much bigger).
    let (mut exchange, mut upload, keep_alive) = prepare(&mut conn, req)?;
    let head = poll_fn(|cx| exchange.poll_head(&mut conn, &mut upload, cx)).await?;
    let mut resp = Response::new(());
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    let body = H1Body {
        decoder: Decoder::new(head.framing),
        keep_alive: keep_alive && head.keep_alive && exchange.write_err.is_none(),
        upload: ((!upload.done || !conn.out.is_idle()) && exchange.write_err.is_none())
            .then(|| Box::new(upload)),
        conn: Some(conn),
    };
    Ok(resp.map(|()| body))
}

/// The request's head queued on `conn`, and what is left to send: the
/// exchange, the upload, and whether the request lets the connection live.
fn prepare(
    conn: &mut H1Conn,
    req: Request<UpstreamBody>,
) -> Result<(Exchange, Upload, bool), SendFailed> {
    let (mut parts, body) = req.into_parts();
    let size = if body.is_end_stream() {
        BodySize::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => BodySize::Known(n),
            None => BodySize::Unknown,
        }
    };
    conn.out.reset();
    let (framing, keep_alive) =
        head::encode_request(&mut parts, size, &mut conn.out.pre).map_err(|e| SendFailed {
            err: Error::upstream(ErrorKind::InvalidRequest)
                .context("the request head cannot be written")
                .cause(e)
                .never_retry(),
            unsent: true,
        })?;
    let src = (size != BodySize::Empty).then_some(body);
    let upload = Upload::new(src, framing, &parts.headers);
    let exchange = Exchange {
        method: parts.method,
        informational: 0,
        write_err: None,
    };
    Ok((exchange, upload, keep_alive))
}

/// The state of one exchange until its response head.
struct Exchange {
    method: Method,
    informational: usize,
    /// Writing failed: the answer may still be read (a backend that answers
    /// early and closes), but the connection is done.
    write_err: Option<io::Error>,
}

impl Exchange {
    fn poll_head(
        &mut self,
        conn: &mut H1Conn,
        upload: &mut Upload,
        cx: &mut Context<'_>,
    ) -> Poll<Result<head::ResponseHead, SendFailed>> {
        if self.write_err.is_none() && (!upload.done || !conn.out.is_idle()) {
            match upload.poll_write(conn, cx) {
                Poll::Ready(Err(WriteFail::Io(e))) if self.write_err.is_none() => {
                    self.write_err = Some(e);
                }
                Poll::Ready(Err(WriteFail::Body(why))) => {
                    return Poll::Ready(Err(SendFailed {
                        err: Error::upstream(ErrorKind::from_io(io::ErrorKind::UnexpectedEof))
                            .context(why),
                        unsent: !conn.out.wrote,
                    }))
                }
                _ => {}
            }
        }
        loop {
            // Nothing read yet (a pooled connection holds no stray bytes):
            // nothing to parse.
            let parsed = if conn.rbuf.is_empty() {
                Ok(None)
            } else {
                head::parse_response(
                    &mut conn.rbuf,
                    &self.method,
                    &mut self.informational,
                    &mut conn.spans,
                )
            };
            match parsed {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => {
                    return Poll::Ready(Err(SendFailed {
                        err: Error::upstream(ErrorKind::InvalidResponse).cause(e),
                        unsent: false,
                    }))
                }
            }
            match std::task::ready!(conn.poll_fill_lean(cx)) {
                Ok(0) => return Poll::Ready(Err(self.closed(conn))),
                Ok(_) => {}
                Err(e) => {
                    return Poll::Ready(Err(SendFailed {
                        err: Error::upstream(ErrorKind::from_io(e.kind())).cause(e),
                        unsent: !conn.out.wrote,
                    }))
                }
            }
        }
    }

    /// The backend closed before a whole response head.
    fn closed(&mut self, conn: &H1Conn) -> SendFailed {
        let err = match self.write_err.take() {
            Some(e) => Error::upstream(ErrorKind::from_io(e.kind())).cause(e),
            None => Error::upstream(ErrorKind::ConnectionClosed)
                .context("connection closed before the response head"),
        };
        SendFailed {
            err,
            unsent: !conn.out.wrote,
        }
    }
}

/// A response body read from its connection, which it owns until the end.
pub(crate) struct H1Body {
    conn: Option<Box<H1Conn>>,
    decoder: Decoder,
    /// The request body still going up (the answer came first).
    /// Boxed: it is rare, and this body lives in every response's state.
    upload: Option<Box<Upload>>,
    /// Both messages allow the connection to be kept.
    keep_alive: bool,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl H1Body {
    /// The connection, if it can carry another request: the body was read
    /// to its end, the request written whole, nothing else arrived, and
    /// neither side asked to close.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<H1Conn>> {
        let reusable = self.keep_alive
            && self.decoder.is_done()
            && self.upload.is_none()
            && self
                .conn
                .as_ref()
                .is_some_and(|c| c.rbuf.is_empty() && c.out.is_idle());
        if reusable {
            let mut conn = self.conn.take()?;
            conn.release_buffer();
            Some(conn)
        } else {
            None
        }
    }

    /// Go on writing the upload, if one is left. The transport failing ends
    /// the upload (the answer may still be read; the connection is spent).
    /// The request body failing (the client's upload was cut short) ends
    /// the exchange: the connection is closed, so the backend sees the
    /// request was never finished, and the answer ends with an error.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        let (Some(up), Some(conn)) = (self.upload.as_mut(), self.conn.as_mut()) else {
            return None;
        };
        match up.poll_write(conn, cx) {
            Poll::Pending => None,
            Poll::Ready(Ok(())) => {
                self.upload = None;
                None
            }
            Poll::Ready(Err(WriteFail::Io(_))) => {
                self.keep_alive = false;
                self.upload = None;
                None
            }
            Poll::Ready(Err(WriteFail::Body(why))) => {
                self.keep_alive = false;
                self.upload = None;
                self.conn = None;
                Some(Error::upstream(ErrorKind::from_io(io::ErrorKind::UnexpectedEof)).context(why))
            }
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let Some(e) = this.poll_upload(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let decoded = match this.decoder.decode(&mut conn.rbuf) {
                Ok(Decoded::NeedMore) => match std::task::ready!(conn.poll_fill(cx)) {
                    Ok(0) => {
                        this.keep_alive = false;
                        this.decoder.eof()
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        this.keep_alive = false;
                        let err = Error::upstream(ErrorKind::from_io(e.kind())).cause(e);
                        return Poll::Ready(Some(Err(err)));
                    }
                },
                other => other,
            };
            return Poll::Ready(match decoded {
                Ok(Decoded::Data(data)) => Some(Ok(Frame::data(data))),
                Ok(Decoded::Trailers(t)) => Some(Ok(Frame::trailers(t))),
                Ok(Decoded::End | Decoded::NeedMore) => None,
                Err(e) => {
                    this.keep_alive = false;
                    Some(Err(body_error(e)))
                }
            });
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A body decoding failure as the retry rules see it: a cut-short body is
/// the connection closing, a grammar error an invalid response.
fn body_error(e: DecodeError) -> Error {
    let kind = match e {
        DecodeError::Incomplete => ErrorKind::ConnectionClosed,
        _ => ErrorKind::InvalidResponse,
    };
    Error::upstream(kind).cause(e)
}
