//! A watch on the request bytes before hyper parses them, for what hyper
//! smooths over: a request with both `Content-Length` and
//! `Transfer-Encoding`, or with the same length header twice.
//!
//! hyper follows RFC 9112 §6.3 for those (Transfer-Encoding wins, identical
//! lengths fold, the connection closes afterwards), which is safe, but the
//! headers hyper hands on no longer show the conflict. A proxy's users expect
//! such a request to be refused with 400, as nginx and HAProxy do, since the
//! same bytes may be framed differently by a box in front or behind.
//!
//! [`FramingGuard`] sees every byte the connection reads, finds each request
//! head (following the body framing from one request to the next: a length,
//! or chunks with their trailers), and records the index of the first request
//! whose framing is ambiguous. The engine answers that request 400 and the
//! connection closes. It never changes a byte; when it cannot follow (an
//! upgrade, a head it cannot parse, which hyper refuses anyway) it stops
//! watching.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the guard found, shared with the service of the same connection.
#[derive(Debug)]
pub(crate) struct Verdicts {
    /// Index (0-based) of the first request with ambiguous framing.
    first_bad: AtomicU64,
}

impl Verdicts {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Verdicts {
            first_bad: AtomicU64::new(u64::MAX),
        })
    }

    /// Whether request number `index` of the connection must be refused.
    pub(crate) fn is_bad(&self, index: u64) -> bool {
        self.first_bad.load(Ordering::Acquire) == index
    }
}

/// Marks a request whose framing was ambiguous on the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AmbiguousFraming(pub(crate) &'static str);

#[derive(Debug)]
enum Phase {
    /// Collecting a request head.
    Head,
    /// Skipping `n` more body bytes.
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize { size: u64, digits: bool, ext: bool },
    /// Skipping chunk data.
    ChunkData(u64),
    /// The CRLF after chunk data (skipped up to its LF).
    ChunkEnd,
    /// Trailer lines; `line` counts the bytes of the current one.
    Trailers { line: usize },
    /// Not following any more.
    Off,
}

impl Phase {
    const CHUNK_START: Phase = Phase::ChunkSize {
        size: 0,
        digits: false,
        ext: false,
    };
}

/// The scanner itself, independent of I/O (unit-tested on byte slices).
#[derive(Debug)]
pub(crate) struct Scanner {
    phase: Phase,
    head: Vec<u8>,
    max_head: usize,
    index: u64,
    verdicts: Arc<Verdicts>,
}

impl Scanner {
    pub(crate) fn new(max_head: usize, verdicts: Arc<Verdicts>) -> Self {
        Scanner {
            phase: Phase::Head,
            head: Vec::new(),
            max_head,
            index: 0,
            verdicts,
        }
    }

    /// Look at the next bytes read from the connection.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Off => return,
                Phase::Head => {
                    // Skip blank lines between requests (RFC 9112 §2.2).
                    if self.head.is_empty() {
                        let blank = bytes.iter().take_while(|b| **b == b'\r' || **b == b'\n');
                        let n = blank.count();
                        bytes = &bytes[n..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    let before = self.head.len();
                    self.head.extend_from_slice(bytes);
                    let from = before.saturating_sub(3);
                    match find_end(&self.head[from..]) {
                        Some(end) => {
                            let end = from + end;
                            let rest_at = end - before;
                            self.head.truncate(end);
                            self.finish_head();
                            bytes = &bytes[rest_at.min(bytes.len())..];
                        }
                        None => {
                            if self.head.len() > self.max_head {
                                // hyper answers 431; nothing more to follow.
                                self.phase = Phase::Off;
                                self.head = Vec::new();
                            }
                            return;
                        }
                    }
                }
                Phase::Length(n) => {
                    let take = (*n).min(bytes.len() as u64);
                    *n -= take;
                    bytes = &bytes[take as usize..];
                    if *n == 0 {
                        self.next_request();
                    }
                }
                Phase::ChunkSize { size, digits, ext } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    match b {
                        b'\n' => {
                            if !*digits {
                                self.phase = Phase::Off;
                            } else if *size == 0 {
                                self.phase = Phase::Trailers { line: 0 };
                            } else {
                                self.phase = Phase::ChunkData(*size);
                            }
                        }
                        _ if *ext || b == b'\r' => {}
                        b';' | b' ' | b'\t' => *ext = true,
                        _ => match (b as char).to_digit(16) {
                            Some(d) if *size < (1 << 56) => {
                                *size = *size * 16 + u64::from(d);
                                *digits = true;
                            }
                            _ => self.phase = Phase::Off,
                        },
                    }
                }
                Phase::ChunkData(n) => {
                    let take = (*n).min(bytes.len() as u64);
                    *n -= take;
                    bytes = &bytes[take as usize..];
                    if *n == 0 {
                        self.phase = Phase::ChunkEnd;
                    }
                }
                Phase::ChunkEnd => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if b == b'\n' {
                        self.phase = Phase::CHUNK_START;
                    }
                }
                Phase::Trailers { line } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    match b {
                        b'\n' if *line == 0 => self.next_request(),
                        b'\n' => *line = 0,
                        b'\r' => {}
                        _ => *line += 1,
                    }
                }
            }
        }
    }

    fn next_request(&mut self) {
        self.index += 1;
        self.phase = Phase::Head;
    }

    fn finish_head(&mut self) {
        let head = std::mem::take(&mut self.head);
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&head);
        if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
            // hyper refuses it (400 or 431): nothing more to follow.
            self.phase = Phase::Off;
            return;
        }
        let (mut lengths, mut encodings, mut upgrade) = (0usize, 0usize, false);
        let mut length = None;
        let mut chunked = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                encodings += 1;
                chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let bad = if lengths > 0 && encodings > 0 {
            Some("both Content-Length and Transfer-Encoding")
        } else if lengths > 1 {
            Some("Content-Length given more than once")
        } else {
            None
        };
        if bad.is_some() {
            let _ = self.verdicts.first_bad.compare_exchange(
                u64::MAX,
                self.index,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            // The request is refused and the connection closes.
            self.phase = Phase::Off;
            return;
        }
        let is_connect = req
            .method
            .is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"));
        // The buffer is kept for the next head (its capacity, not its bytes).
        self.head = head;
        self.head.clear();
        self.phase = if upgrade || is_connect {
            // What follows may not be HTTP at all.
            Phase::Off
        } else if encodings > 0 {
            // Not chunked: hyper refuses it, and there is nothing to follow.
            if chunked {
                Phase::CHUNK_START
            } else {
                Phase::Off
            }
        } else {
            match (lengths, length) {
                // No body.
                (0, _) | (_, Some(0)) => {
                    self.index += 1;
                    Phase::Head
                }
                (_, Some(n)) => Phase::Length(n),
                // A malformed length: hyper refuses it.
                (_, None) => Phase::Off,
            }
        };
    }

    /// Why request `index` was refused, if it was.
    #[cfg(test)]
    fn verdict(&self, index: u64) -> bool {
        self.verdicts.is_bad(index)
    }
}

/// The end of a head (just past `\r\n\r\n`, or a bare `\n\n`) in `buf`.
fn find_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// A connection's read side with a [`Scanner`] watching it.
#[derive(Debug)]
pub(crate) struct FramingGuard<I> {
    inner: I,
    scanner: Scanner,
}

impl<I> FramingGuard<I> {
    pub(crate) fn new(inner: I, max_head: usize, verdicts: Arc<Verdicts>) -> Self {
        FramingGuard {
            inner,
            scanner: Scanner::new(max_head, verdicts),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let me = &mut *self;
        me.scanner.feed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Scanner {
        let mut s = Scanner::new(64 * 1024, Verdicts::new());
        for c in chunks {
            s.feed(c);
        }
        s
    }

    #[test]
    fn conflicting_framing_is_caught_in_any_request_of_a_connection() {
        let s = scan(&[b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"]);
        assert!(s.verdict(0));
        let s =
            scan(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"]);
        assert!(s.verdict(0), "TE before CL too");
        let s = scan(&[b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc"]);
        assert!(s.verdict(0), "identical duplicates too");
        // Third request, after a length body and a chunked body with trailers,
        // split at awkward places.
        let s = scan(&[
            b"POST /1 HTTP/1.1\r\ncontent-length: 5\r\n\r\nhel",
            b"loGET /2 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nab",
            b"c\r\n0\r\nx-trailer: 1\r\n\r",
            b"\nPOST /3 HTTP/1.1\r\ncontent-length: 1\r\ntransfer-enc",
            b"oding: chunked\r\n\r\n",
        ]);
        assert!(!s.verdict(0) && !s.verdict(1));
        assert!(s.verdict(2));
    }

    #[test]
    fn ordinary_requests_pass() {
        let s = scan(&[
            b"GET / HTTP/1.1\r\nhost: a\r\n\r\n\r\nGET /b HTTP/1.1\r\nhost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert_eq!(s.verdicts.first_bad.load(Ordering::Relaxed), u64::MAX);
        assert_eq!(s.index, 4);
    }

    #[test]
    fn bodies_that_look_like_heads_are_skipped() {
        let body = b"x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len());
        let s = scan(&[head.as_bytes(), body, b"GET / HTTP/1.1\r\n\r\n"]);
        assert!(!s.verdict(0) && !s.verdict(1));
        assert_eq!(s.index, 2);
    }
}
