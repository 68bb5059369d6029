//! Just enough HTTP/1.1 for a fault injector.
//!
//! Message heads are parsed with `httparse`; bodies are delimited by `Content-Length`, the
//! chunked transfer coding or the connection closing, as RFC 9112 §6–7 lays out. Response
//! heads are assembled by hand into plain bytes so a behavior can send them whole, cut them
//! anywhere, or not send them at all.

use std::fmt::Display;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest message head accepted: start line plus header fields.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in one head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4 * 1024;
/// How much to ask the socket for at once.
const READ_SIZE: usize = 16 * 1024;
/// The chunk that ends a chunked body (with no trailers).
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Why a message could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed or closed in the middle of a message.
    Io(io::Error),
    /// The peer sent something that is not HTTP/1.1; the text says what.
    Malformed(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => e,
            ReadError::Malformed(why) => io::Error::new(io::ErrorKind::InvalidData, why),
        }
    }
}

fn malformed(why: impl Into<String>) -> ReadError {
    ReadError::Malformed(why.into())
}

fn unexpected_eof() -> ReadError {
    ReadError::Io(io::ErrorKind::UnexpectedEof.into())
}

/// A request head as read off the wire.
#[derive(Clone, Debug)]
pub(crate) struct RequestHead {
    pub(crate) method: String,
    /// The request target exactly as sent (`/path?query`).
    pub(crate) target: String,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub(crate) minor_version: u8,
    pub(crate) headers: Vec<(String, String)>,
}

impl RequestHead {
    /// First value of the header field `name`.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the client wants the connection closed after this exchange: it said
    /// `Connection: close`, or it speaks HTTP/1.0 and did not ask for keep-alive.
    pub(crate) fn wants_close(&self) -> bool {
        has_token(&self.headers, "connection", "close")
            || (self.minor_version == 0 && !has_token(&self.headers, "connection", "keep-alive"))
    }

    /// Whether the client waits for `100 Continue` before sending its body.
    pub(crate) fn expects_continue(&self) -> bool {
        self.minor_version >= 1
            && self
                .header("expect")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }

    /// How the request body is delimited (RFC 9112 §6.3). A request has no body unless it
    /// says so; a transfer coding other than a final `chunked` cannot be delimited, so it is
    /// refused, like a `Content-Length` that is not one number.
    pub(crate) fn body_kind(&self) -> Result<BodyKind, ReadError> {
        if let Some(last) = header_tokens(&self.headers, "transfer-encoding").last() {
            return if last.eq_ignore_ascii_case("chunked") {
                Ok(BodyKind::Chunked)
            } else {
                Err(malformed(
                    "request transfer-encoding does not end in chunked",
                ))
            };
        }
        Ok(content_length(&self.headers)?.map_or(BodyKind::Empty, BodyKind::length))
    }
}

/// A response head as read off the wire.
#[derive(Clone, Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// How the response body is delimited (RFC 9112 §6.3), for a request other than HEAD.
    pub(crate) fn body_kind(&self) -> Result<BodyKind, ReadError> {
        if is_bodiless(self.status) {
            return Ok(BodyKind::Empty);
        }
        if let Some(last) = header_tokens(&self.headers, "transfer-encoding").last() {
            return Ok(if last.eq_ignore_ascii_case("chunked") {
                BodyKind::Chunked
            } else {
                BodyKind::UntilClose
            });
        }
        Ok(content_length(&self.headers)?.map_or(BodyKind::UntilClose, BodyKind::length))
    }
}

/// Whether responses with this status never carry a body (1xx, 204, 304).
pub(crate) fn is_bodiless(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// First value of the header field `name` (case-insensitive).
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The comma-separated elements of every `name` field, trimmed, in order.
fn header_tokens<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a comma-separated field `name` lists `token` (case-insensitive).
pub(crate) fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The `Content-Length`, if any. Repeated values must agree (RFC 9110 §8.6).
fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, ReadError> {
    let mut length = None;
    for value in header_tokens(headers, "content-length") {
        // `u64::from_str` would also take a leading `+`; the grammar is 1*DIGIT.
        let parsed = (value.len() <= 19 && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| malformed(format!("invalid content-length {value:?}")))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(malformed("conflicting content-length values"));
        }
        length = Some(parsed);
    }
    Ok(length)
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// No body at all.
    Empty,
    /// Exactly this many bytes (never zero: that is `Empty`).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the peer closes (responses only).
    UntilClose,
}

impl BodyKind {
    fn length(len: u64) -> Self {
        if len == 0 {
            BodyKind::Empty
        } else {
            BodyKind::Length(len)
        }
    }
}

/// A connection's socket with the bytes read from it but not yet consumed.
#[derive(Debug)]
pub(crate) struct Conn<S> {
    pub(crate) io: S,
    pub(crate) buf: BytesMut,
}

impl<S> Conn<S> {
    pub(crate) fn new(io: S) -> Self {
        Conn {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
        }
    }

    pub(crate) fn into_inner(self) -> S {
        self.io
    }
}

impl<S: AsyncRead + Unpin> Conn<S> {
    /// Reads more bytes into the buffer; `Ok(0)` means the peer closed.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes are either in the buffer or still in the socket.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_SIZE);
        self.io.read_buf(&mut self.buf).await
    }

    /// Reads the next request head; `Ok(None)` if the peer closed before sending a byte.
    pub(crate) async fn read_request_head(&mut self) -> Result<Option<RequestHead>, ReadError> {
        self.read_head(parse_request_head).await
    }

    /// Reads the next response head; `Ok(None)` if the peer closed before sending a byte.
    pub(crate) async fn read_response_head(&mut self) -> Result<Option<ResponseHead>, ReadError> {
        self.read_head(parse_response_head).await
    }

    async fn read_head<T>(&mut self, parse: ParseHead<T>) -> Result<Option<T>, ReadError> {
        loop {
            if !self.buf.is_empty() {
                if let Some((head, len)) = parse(&self.buf)? {
                    self.buf.advance(len);
                    return Ok(Some(head));
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(head_too_long());
                }
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(unexpected_eof())
                };
            }
        }
    }

    /// Reads one line, without its line ending (CRLF, or a bare LF as RFC 9112 §2.2 allows).
    async fn read_line(&mut self) -> Result<Bytes, ReadError> {
        let mut searched = 0;
        loop {
            if let Some(at) = self.buf[searched..].iter().position(|&b| b == b'\n') {
                let end = searched + at;
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                return Ok(line.freeze());
            }
            searched = self.buf.len();
            if searched > MAX_LINE {
                return Err(malformed("chunk-size or trailer line too long"));
            }
            if self.fill().await? == 0 {
                return Err(unexpected_eof());
            }
        }
    }

    /// The next buffered bytes, at most `limit` of them, reading if nothing is buffered.
    async fn take(&mut self, limit: u64) -> Result<Bytes, ReadError> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return Err(unexpected_eof());
        }
        let n = usize::try_from(limit).map_or(self.buf.len(), |l| l.min(self.buf.len()));
        Ok(self.buf.split_to(n).freeze())
    }
}

/// Parses a complete head at the start of a buffer: the head and its length in bytes, or
/// `None` if the buffer holds only part of one.
type ParseHead<T> = fn(&[u8]) -> Result<Option<(T, usize)>, ReadError>;

fn head_too_long() -> ReadError {
    malformed(format!("message head longer than {MAX_HEAD} bytes"))
}

fn owned_fields(fields: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|f| {
            (
                f.name.to_owned(),
                String::from_utf8_lossy(f.value).into_owned(),
            )
        })
        .collect()
}

fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, ReadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(malformed(format!("invalid request head: {e}"))),
    };
    if len > MAX_HEAD {
        return Err(head_too_long());
    }
    // A complete parse fills method, path and version; the defaults are never used.
    let head = RequestHead {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        minor_version: req.version.unwrap_or(1),
        headers: owned_fields(req.headers),
    };
    Ok(Some((head, len)))
}

fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, ReadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(malformed(format!("invalid response head: {e}"))),
    };
    // A complete parse fills the status; the default is never used.
    let head = ResponseHead {
        status: res.code.unwrap_or_default(),
        headers: owned_fields(res.headers),
    };
    Ok(Some((head, len)))
}

/// Reads a message body piece by piece, however it is delimited, so that a body never has
/// to fit in memory and the connection is positioned at the next message afterwards.
#[derive(Debug)]
pub(crate) struct BodyReader {
    kind: BodyKind,
    state: BodyState,
    read: u64,
}

#[derive(Clone, Copy, Debug)]
enum BodyState {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

impl BodyReader {
    pub(crate) fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::Empty => BodyState::Done,
            BodyKind::Length(len) => BodyState::Length(len),
            BodyKind::Chunked => BodyState::ChunkSize,
            BodyKind::UntilClose => BodyState::UntilClose,
        };
        BodyReader {
            kind,
            state,
            read: 0,
        }
    }

    pub(crate) fn kind(&self) -> BodyKind {
        self.kind
    }

    /// Body bytes returned so far (decoded: chunk framing does not count).
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The next piece of the body, or `None` once all of it (and any trailers) was read.
    pub(crate) async fn next_chunk<S: AsyncRead + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Option<Bytes>, ReadError> {
        loop {
            match self.state {
                BodyState::Done => return Ok(None),
                BodyState::Length(left) => {
                    let data = conn.take(left).await?;
                    let left = left - data.len() as u64;
                    self.state = if left == 0 {
                        BodyState::Done
                    } else {
                        BodyState::Length(left)
                    };
                    return Ok(Some(self.count(data)));
                }
                BodyState::ChunkData(left) => {
                    let data = conn.take(left).await?;
                    let left = left - data.len() as u64;
                    self.state = if left == 0 {
                        BodyState::ChunkEnd
                    } else {
                        BodyState::ChunkData(left)
                    };
                    return Ok(Some(self.count(data)));
                }
                BodyState::ChunkSize => {
                    let size = parse_chunk_size(&conn.read_line().await?)?;
                    self.state = if size == 0 {
                        BodyState::Trailers
                    } else {
                        BodyState::ChunkData(size)
                    };
                }
                BodyState::ChunkEnd => {
                    if !conn.read_line().await?.is_empty() {
                        return Err(malformed("chunk data not followed by CRLF"));
                    }
                    self.state = BodyState::ChunkSize;
                }
                BodyState::Trailers => {
                    // Trailer fields are read and dropped; the empty line ends the body.
                    if conn.read_line().await?.is_empty() {
                        self.state = BodyState::Done;
                    }
                }
                BodyState::UntilClose => {
                    if conn.buf.is_empty() && conn.fill().await? == 0 {
                        self.state = BodyState::Done;
                        return Ok(None);
                    }
                    let data = conn.buf.split().freeze();
                    return Ok(Some(self.count(data)));
                }
            }
        }
    }

    /// Reads and discards the rest of the body; returns the body's total length.
    pub(crate) async fn drain<S: AsyncRead + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<u64, ReadError> {
        while self.next_chunk(conn).await?.is_some() {}
        Ok(self.read)
    }

    fn count(&mut self, data: Bytes) -> Bytes {
        self.read += data.len() as u64;
        data
    }
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1): hex digits, extensions ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ReadError> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    // 16 hex digits fit in a u64, so the sum below cannot overflow.
    if digits.is_empty() || digits.len() > 16 {
        return Err(malformed("invalid chunk size"));
    }
    digits.iter().try_fold(0u64, |size, &b| {
        let digit = char::from(b)
            .to_digit(16)
            .ok_or_else(|| malformed("invalid chunk size"))?;
        Ok(size << 4 | u64::from(digit))
    })
}

/// The reason phrase for a status, or `Unknown`.
fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// A response head under construction, as the bytes that will go on the wire.
#[derive(Debug)]
pub(crate) struct HeadBuilder(Vec<u8>);

impl HeadBuilder {
    /// Starts with the status line. The code is written as given, even if it is not three
    /// digits: producing broken responses on purpose is this crate's job.
    pub(crate) fn new(status: u16) -> Self {
        HeadBuilder(format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes())
    }

    pub(crate) fn header(&mut self, name: &str, value: impl Display) -> &mut Self {
        self.0
            .extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        self
    }

    /// Ends the head with the empty line.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

/// Writes `data` as one chunk of a chunked body. Empty data writes nothing, since an empty
/// chunk would end the body.
pub(crate) async fn write_chunk<W: AsyncWrite + Unpin>(io: &mut W, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut frame = Vec::with_capacity(data.len() + 20);
    frame.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\r\n");
    io.write_all(&frame).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(bytes: &'static [u8]) -> Conn<&'static [u8]> {
        Conn::new(bytes)
    }

    async fn read_body(
        conn: &mut Conn<&'static [u8]>,
        kind: BodyKind,
    ) -> Result<Vec<u8>, ReadError> {
        let mut body = BodyReader::new(kind);
        let mut out = Vec::new();
        while let Some(chunk) = body.next_chunk(conn).await? {
            out.extend_from_slice(&chunk);
        }
        assert_eq!(body.bytes_read(), out.len() as u64);
        Ok(out)
    }

    #[tokio::test]
    async fn request_head_then_next_request_on_same_connection() {
        let mut c = conn(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n");
        let head = c.read_request_head().await.unwrap().unwrap();
        assert_eq!(
            (head.method.as_str(), head.target.as_str()),
            ("POST", "/a?b=1")
        );
        assert_eq!(head.header("content-length"), Some("3"));
        assert!(!head.wants_close());
        assert_eq!(head.body_kind().unwrap(), BodyKind::Length(3));
        assert_eq!(
            read_body(&mut c, BodyKind::Length(3)).await.unwrap(),
            b"abc"
        );

        let next = c.read_request_head().await.unwrap().unwrap();
        assert_eq!(next.minor_version, 0);
        assert!(next.wants_close(), "HTTP/1.0 closes by default");
        assert!(c.read_request_head().await.unwrap().is_none(), "clean EOF");
    }

    #[tokio::test]
    async fn head_arriving_one_byte_at_a_time() {
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for b in b"GET /slow HTTP/1.1\r\nX-Request-Id: 7\r\n\r\n" {
                client.write_all(&[*b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut c = Conn::new(server);
        let head = c.read_request_head().await.unwrap().unwrap();
        assert_eq!(head.target, "/slow");
        assert_eq!(head.header("x-request-id"), Some("7"));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn chunked_body_with_extensions_and_trailers() {
        let mut c = conn(b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nrest");
        let body = read_body(&mut c, BodyKind::Chunked).await.unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&c.buf[..], b"rest", "the next message is left in place");
    }

    #[tokio::test]
    async fn bad_chunks_are_malformed_not_panics() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
        ] {
            let mut c = Conn::new(bad);
            let err = read_body_any(&mut c).await.unwrap_err();
            assert!(matches!(err, ReadError::Malformed(_)), "{bad:?}: {err:?}");
        }
    }

    async fn read_body_any(c: &mut Conn<&[u8]>) -> Result<u64, ReadError> {
        BodyReader::new(BodyKind::Chunked).drain(c).await
    }

    #[tokio::test]
    async fn truncated_body_is_an_io_error() {
        let mut c = conn(b"ab");
        let err = read_body(&mut c, BodyKind::Length(5)).await.unwrap_err();
        assert!(matches!(err, ReadError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test]
    async fn malformed_and_oversized_heads() {
        let mut c = conn(b"NOT HTTP\r\n\r\n");
        assert!(matches!(
            c.read_request_head().await,
            Err(ReadError::Malformed(_))
        ));

        let huge: &'static [u8] = Box::leak(
            format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD))
                .into_bytes()
                .into_boxed_slice(),
        );
        let mut c = Conn::new(huge);
        assert!(matches!(
            c.read_request_head().await,
            Err(ReadError::Malformed(_))
        ));
    }

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "POST".into(),
            target: "/".into(),
            minor_version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn request_body_framing() {
        assert_eq!(head(&[]).body_kind().unwrap(), BodyKind::Empty);
        assert_eq!(
            head(&[("content-length", "0")]).body_kind().unwrap(),
            BodyKind::Empty
        );
        assert_eq!(
            head(&[("Content-Length", "5"), ("content-length", "5")])
                .body_kind()
                .unwrap(),
            BodyKind::Length(5)
        );
        assert_eq!(
            head(&[
                ("transfer-encoding", "gzip, chunked"),
                ("content-length", "5")
            ])
            .body_kind()
            .unwrap(),
            BodyKind::Chunked
        );
        for bad in [
            &[("content-length", "+5")][..],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "99999999999999999999")],
            &[("transfer-encoding", "gzip")],
        ] {
            assert!(head(bad).body_kind().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connection_tokens() {
        assert!(head(&[("Connection", "keep-alive, Close")]).wants_close());
        assert!(!head(&[("connection", "keep-alive")]).wants_close());
        assert!(head(&[("expect", "100-Continue")]).expects_continue());
    }

    #[test]
    fn response_framing() {
        let res = |status, headers: &[(&str, &str)]| ResponseHead {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
        };
        assert_eq!(
            res(204, &[("content-length", "3")]).body_kind().unwrap(),
            BodyKind::Empty
        );
        assert_eq!(res(200, &[]).body_kind().unwrap(), BodyKind::UntilClose);
        assert_eq!(
            res(200, &[("transfer-encoding", "chunked")])
                .body_kind()
                .unwrap(),
            BodyKind::Chunked
        );
    }

    #[test]
    fn head_builder_writes_wire_format() {
        let mut head = HeadBuilder::new(503);
        head.header("retry-after", 2);
        assert_eq!(
            head.finish(),
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\n\r\n"
        );
        assert_eq!(
            HeadBuilder::new(799).finish(),
            b"HTTP/1.1 799 Unknown\r\n\r\n"
        );
    }
}
