//! A watch on the request bytes before hyper parses them, for what hyper
//! smooths over or cannot tell: a request with both `Content-Length` and
//! `Transfer-Encoding`, or with the same length header twice; and whether a
//! quiet connection is idle between requests or in the middle of a head.
//!
//! hyper follows RFC 9112 §6.3 for conflicting framing (Transfer-Encoding
//! wins, identical lengths fold, the connection closes afterwards), which is
//! safe, but the headers hyper hands on no longer show the conflict. A proxy's
//! users expect such a request to be refused with 400, as nginx and HAProxy
//! do, since the same bytes may be framed differently by a box in front or
//! behind.
//!
//! [`FramingGuard`] sees every byte the connection reads, finds each request
//! head (following the body framing from one request to the next: a length,
//! or chunks with their trailers), and records the index of the first request
//! whose framing is ambiguous. The engine answers that request 400 and the
//! connection closes. It never changes a byte. After an upgrade request it
//! holds what follows until the answer is known: a `101` ends the watch (the
//! bytes are a tunnel's), anything else resumes it on those same bytes. When
//! it cannot follow (a length it cannot read, a coding other than chunked,
//! which hyper refuses anyway) it stops watching. It reads a head's framing
//! fields without validating the head ([`HeadFacts`]): a head hyper's parser
//! refuses gets a 400 (a 431 for too many fields) and the connection
//! closes, so nothing after it is served.
//!
//! The guard also keeps the connection's clocks while no request is in
//! flight: a connection idle between requests for `keepalive_timeout` reads as
//! closed (hyper then closes it without a word), and a head begun but not
//! finished within `header_read_timeout` fails the read, so the server answers
//! `408` (see [`ConnWatch::head_timed_out`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::config::LimitsConfig;
use crate::lazy_timer::{LazyTimer, SpareTimer};
use crate::waker_slot::WakerSlot;

/// What the guard found and the service did, shared by both on one
/// connection.
#[derive(Debug)]
pub(crate) struct ConnWatch {
    scanner: Mutex<Scanner>,
    /// Index (0-based) of the first request with ambiguous framing.
    first_bad: AtomicU64,
    /// Requests handed to the service, and those whose response is over
    /// (its body dropped by hyper): while they differ, a request is in flight.
    started: AtomicU64,
    answered: AtomicU64,
    head_timed_out: AtomicBool,
    /// The connection's reader, when it last found a request in flight: woken
    /// when the answer is over, so the idle clock starts then (hyper does not
    /// read again by itself once a read found nothing).
    reader: WakerSlot,
    /// The attempt timer the connection's requests take turns with.
    pub(crate) spare_timer: SpareTimer,
    keepalive: Duration,
    head_timeout: Duration,
}

/// What a quiet connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The next request, with no byte of it yet.
    Idle,
    /// The rest of a head begun at this instant.
    Head(Instant),
    /// A request in flight: not the guard's to time until it is answered.
    Answering,
    /// Something else (a body, a tunnel): not the guard's to time.
    Busy,
}

impl ConnWatch {
    pub(crate) fn new(limits: &LimitsConfig) -> Arc<Self> {
        Arc::new(ConnWatch {
            scanner: Mutex::new(Scanner::new(limits.max_header_size)),
            first_bad: AtomicU64::new(u64::MAX),
            started: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            head_timed_out: AtomicBool::new(false),
            reader: WakerSlot::default(),
            spare_timer: SpareTimer::default(),
            keepalive: limits.keepalive_timeout,
            head_timeout: limits.header_read_timeout,
        })
    }

    fn scanner(&self) -> MutexGuard<'_, Scanner> {
        // A poisoned lock only means a panic elsewhere mid-scan; the scanner's
        // state is still a valid phase, so go on with it.
        self.scanner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn feed(&self, bytes: &[u8]) {
        let mut s = self.scanner();
        s.feed(bytes);
        self.publish(&mut s);
    }

    fn publish(&self, s: &mut Scanner) {
        if let Some(i) = s.bad.take() {
            let _ =
                self.first_bad
                    .compare_exchange(u64::MAX, i, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// A request reaches the service: its index on the connection.
    pub(crate) fn begin(&self) -> u64 {
        self.started.fetch_add(1, Ordering::Relaxed)
    }

    /// A response is over (see [`Answered`]).
    fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.reader.wake();
    }

    /// Wake `waker` when the request in flight is answered.
    fn wake_when_answered(&self, waker: &Waker) {
        self.reader.register(waker);
    }

    fn in_flight(&self) -> bool {
        self.started.load(Ordering::Relaxed) != self.answered.load(Ordering::Relaxed)
    }

    /// Whether request number `index` of the connection must be refused.
    pub(crate) fn is_bad(&self, index: u64) -> bool {
        self.first_bad.load(Ordering::Acquire) == index
    }

    /// Upgrade request `index` was answered without `101`: the bytes after
    /// it are HTTP again, and the watch goes on over them. `false` when it
    /// cannot: more than a head's worth of bytes came behind the request
    /// and were let go (or the connection was already being refused). The
    /// connection must then close after this answer, since the guard would
    /// neither check the requests behind it nor time the connection.
    pub(crate) fn not_upgraded(&self, index: u64) -> bool {
        let mut s = self.scanner();
        let followed = s.resume_after_upgrade(index);
        self.publish(&mut s);
        followed
    }

    /// What a quiet connection waits for now.
    fn waiting(&self) -> Wait {
        if self.in_flight() {
            return Wait::Answering;
        }
        self.scanner().waiting()
    }

    /// The guard cut a head that took longer than `header_read_timeout`.
    pub(crate) fn head_timed_out(&self) -> bool {
        self.head_timed_out.load(Ordering::Relaxed)
    }
}

/// A response body that tells the [`ConnWatch`] when hyper is done with it,
/// so the connection's clocks know a request is in flight until then.
pub(crate) struct Answered<B> {
    body: B,
    watch: Arc<ConnWatch>,
}

impl<B> Answered<B> {
    pub(crate) fn new(body: B, watch: Arc<ConnWatch>) -> Self {
        Answered { body, watch }
    }
}

impl<B> Drop for Answered<B> {
    fn drop(&mut self) {
        self.watch.answered();
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Answered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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
    /// After upgrade request `request`: bytes held until the answer is known,
    /// then fed again from `after` if it was not `101`.
    Upgrade {
        request: u64,
        pending: Vec<u8>,
        after: Box<Phase>,
    },
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
pub(crate) struct Scanner {
    phase: Phase,
    head: Vec<u8>,
    max_head: usize,
    index: u64,
    /// When the first byte of the head being collected arrived.
    head_started: Option<Instant>,
    /// A request found with ambiguous framing, not yet published.
    bad: Option<u64>,
}

impl std::fmt::Debug for Scanner {
    /// Everything but the clock: two scans of the same bytes read alike
    /// however the bytes arrived.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("phase", &self.phase)
            .field("head", &self.head)
            .field("max_head", &self.max_head)
            .field("index", &self.index)
            .field("in_head", &self.head_started.is_some())
            .field("bad", &self.bad)
            .finish()
    }
}

impl Scanner {
    pub(crate) fn new(max_head: usize) -> Self {
        Scanner {
            phase: Phase::Head,
            head: Vec::new(),
            max_head,
            index: 0,
            head_started: None,
            bad: None,
        }
    }

    /// What the connection waits for, as far as the bytes tell.
    fn waiting(&self) -> Wait {
        match (&self.phase, self.head_started) {
            (Phase::Head, None) => Wait::Idle,
            (Phase::Head, Some(at)) => Wait::Head(at),
            _ => Wait::Busy,
        }
    }

    /// Upgrade request `index` was not upgraded: go on over the held bytes.
    /// `false` when the watch had already given up.
    fn resume_after_upgrade(&mut self, index: u64) -> bool {
        if !matches!(&self.phase, Phase::Upgrade { request, .. } if *request == index) {
            return false;
        }
        if let Phase::Upgrade { pending, after, .. } =
            std::mem::replace(&mut self.phase, Phase::Off)
        {
            self.phase = *after;
            self.feed(&pending);
        }
        true
    }

    /// Look at the next bytes read from the connection.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Off => return,
                Phase::Upgrade { pending, .. } => {
                    // A tunnel's bytes (the answer was 101) are not held for
                    // long: past a head's worth the watch gives up.
                    if pending.len() + bytes.len() > self.max_head {
                        self.phase = Phase::Off;
                    } else {
                        pending.extend_from_slice(bytes);
                    }
                    return;
                }
                Phase::Head => match self.feed_head(bytes) {
                    Some(rest) => bytes = rest,
                    None => return,
                },
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

    /// Bytes of a request head: gathered up to its blank line, then looked
    /// at. Returns the bytes after the head, or `None` when all were taken.
    fn feed_head<'b>(&mut self, mut bytes: &'b [u8]) -> Option<&'b [u8]> {
        // Skip blank lines between requests (RFC 9112 §2.2).
        if self.head.is_empty() {
            let blank = bytes.iter().take_while(|b| **b == b'\r' || **b == b'\n');
            let n = blank.count();
            bytes = &bytes[n..];
            if bytes.is_empty() {
                return None;
            }
            // The common case, a whole head in one read: looked at where it
            // lies, without a copy (or a clock read).
            if let Some(end) = find_end(bytes) {
                self.finish_head(&bytes[..end]);
                return Some(&bytes[end..]);
            }
            if self.head_started.is_none() {
                self.head_started = Some(Instant::now());
            }
        }
        let before = self.head.len();
        self.head.extend_from_slice(bytes);
        let from = before.saturating_sub(3);
        let Some(end) = find_end(&self.head[from..]) else {
            if self.head.len() > self.max_head {
                // hyper answers 431; nothing more to follow.
                self.phase = Phase::Off;
                self.head = Vec::new();
                self.head_started = None;
            }
            return None;
        };
        let end = from + end;
        let rest_at = end - before;
        // The buffer is kept for the next head (its capacity, not its bytes).
        let mut head = std::mem::take(&mut self.head);
        self.finish_head(&head[..end]);
        head.clear();
        self.head = head;
        Some(&bytes[rest_at.min(bytes.len())..])
    }

    fn next_request(&mut self) {
        self.index += 1;
        self.phase = Phase::Head;
    }

    /// Look at a whole request `head` and set the phase that follows it.
    fn finish_head(&mut self, head: &[u8]) {
        self.head_started = None;
        let HeadFacts {
            connect,
            lengths,
            length,
            encodings,
            chunked,
            upgrade,
        } = HeadFacts::read(head);
        let bad = if lengths > 0 && encodings > 0 {
            Some("both Content-Length and Transfer-Encoding")
        } else if lengths > 1 {
            Some("Content-Length given more than once")
        } else {
            None
        };
        if bad.is_some() {
            self.bad.get_or_insert(self.index);
            // The request is refused and the connection closes.
            self.phase = Phase::Off;
            return;
        }
        let request = self.index;
        let next = if connect {
            // Refused (405) and the connection closes; nothing to follow.
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
        self.phase = if upgrade {
            // What follows may not be HTTP at all: held until the answer.
            Phase::Upgrade {
                request,
                pending: Vec::new(),
                after: Box::new(next),
            }
        } else {
            next
        };
    }

    /// The first request found with ambiguous framing, if any (before it is
    /// published to a [`ConnWatch`]).
    pub(crate) fn first_bad(&self) -> Option<u64> {
        self.bad
    }

    /// Whether request `index` was found bad.
    #[cfg(test)]
    fn verdict(&self, index: u64) -> bool {
        self.bad == Some(index)
    }
}

/// What the guard needs of a request head, read line by line.
///
/// Only the three header names that frame a request are looked at, and
/// nothing is validated: on a head that httparse (hyper's parser, with
/// hyper's default settings) accepts, each line is `name:value` with a
/// token for a name, so this reads what httparse's fields would (a test
/// compares the two on generated heads). A head httparse refuses, hyper
/// answers 400 (431 past its 100 fields) and closes the connection: what
/// follows is never served, so what this makes of it does not matter. A
/// full parse cost about as much as hyper's own (some 540 instructions for
/// a two-line head).
#[derive(Debug, Default, PartialEq, Eq)]
struct HeadFacts {
    /// The method is `CONNECT` (in any case).
    connect: bool,
    /// `Content-Length` fields, and the last one's value.
    lengths: usize,
    length: Option<u64>,
    /// `Transfer-Encoding` fields, and whether the last one ends in `chunked`.
    encodings: usize,
    chunked: bool,
    /// An `Upgrade` field is there.
    upgrade: bool,
}

impl HeadFacts {
    fn read(head: &[u8]) -> HeadFacts {
        let mut facts = HeadFacts {
            connect: head.len() > 8 && head[..8].eq_ignore_ascii_case(b"CONNECT "),
            ..HeadFacts::default()
        };
        // Past the request line, each field line up to the blank one.
        let mut rest = head;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            rest = &rest[at + 1..];
            if rest.starts_with(b"\n") || rest.starts_with(b"\r\n") {
                break;
            }
            // The value of this line when it is field `name` (whose colon
            // comes right after the name).
            let field = |name: &[u8]| {
                if rest.get(name.len()) != Some(&b':')
                    || !rest[..name.len()].eq_ignore_ascii_case(name)
                {
                    return None;
                }
                let line = &rest[name.len() + 1..];
                Some(&line[..memchr::memchr(b'\n', line).unwrap_or(line.len())])
            };
            if let Some(value) = field(b"content-length") {
                facts.lengths += 1;
                facts.length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if let Some(value) = field(b"transfer-encoding") {
                facts.encodings += 1;
                facts.chunked = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if field(b"upgrade").is_some() {
                facts.upgrade = true;
            }
        }
        facts
    }
}

/// The end of a head (just past `\r\n\r\n`, or a bare `\n\n`) in `buf`.
fn find_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\n', &buf[from..]) {
        let i = from + at;
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => from = i + 1,
        }
    }
    None
}

/// A connection's read side with a [`ConnWatch`] watching it, and its
/// idle and head clocks.
#[derive(Debug)]
pub(crate) struct FramingGuard<I> {
    inner: I,
    watch: Arc<ConnWatch>,
    timer: LazyTimer,
    /// When `timer` fires, while it is set.
    timer_at: Option<Instant>,
    /// When the idle period in progress runs out.
    idle_due: Option<Instant>,
}

impl<I> FramingGuard<I> {
    pub(crate) fn new(inner: I, watch: Arc<ConnWatch>) -> Self {
        FramingGuard {
            inner,
            watch,
            timer: LazyTimer::default(),
            timer_at: None,
            idle_due: None,
        }
    }

    /// Nothing to read: `Ready` when the connection was quiet too long —
    /// an end of input for an idle one, a `TimedOut` error for a slow head.
    fn poll_quiet(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wait = self.watch.waiting();
        let due = match wait {
            Wait::Answering => {
                self.idle_due = None;
                self.watch.wake_when_answered(cx.waker());
                return Poll::Pending;
            }
            Wait::Busy => {
                self.idle_due = None;
                return Poll::Pending;
            }
            // An idle period counts from its first quiet read.
            Wait::Idle => *self
                .idle_due
                .get_or_insert_with(|| Instant::now() + self.watch.keepalive),
            Wait::Head(since) => since + self.watch.head_timeout,
        };
        loop {
            // The timer is only ever moved earlier here. One still set for an
            // earlier wait fires early and is set again: one timer update per
            // idle period rather than one per request.
            if self.timer_at.is_none_or(|at| at > due) {
                self.timer_at = Some(due);
                self.timer.set(due);
            }
            if !self.timer.fired(cx) {
                return Poll::Pending;
            }
            self.timer_at = None;
            if Instant::now() >= due {
                break;
            }
        }
        self.idle_due = None;
        if wait == Wait::Idle {
            tracing::trace!("keep-alive connection idle for keepalive_timeout; closing");
            return Poll::Ready(Ok(()));
        }
        self.watch.head_timed_out.store(true, Ordering::Relaxed);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head not complete within header_read_timeout",
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let me = &mut *self;
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    me.watch.feed(read);
                    me.idle_due = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => me.poll_quiet(cx),
        }
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
    use std::mem::MaybeUninit;

    use proptest::prelude::*;

    use super::*;

    fn scan(chunks: &[&[u8]]) -> Scanner {
        let mut s = Scanner::new(64 * 1024);
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
        assert_eq!(s.bad, None);
        assert_eq!(s.index, 4);
    }

    #[test]
    fn after_an_upgrade_request_the_watch_waits_for_the_answer() {
        let upgrade = b"GET / HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
        let bad = b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        // Not upgraded: the held bytes are scanned as the next request.
        let mut s = scan(&[upgrade, &bad[..10]]);
        s.feed(&bad[10..]);
        assert!(!s.verdict(1), "nothing decided before the answer");
        s.resume_after_upgrade(0);
        assert!(s.verdict(1));
        // Upgraded (never resumed): the tunnel's bytes are not HTTP, and past
        // a head's worth the watch stops holding them.
        let mut s = Scanner::new(16);
        s.feed(upgrade);
        s.feed(&[b'x'; 64]);
        assert!(matches!(s.phase, Phase::Off));
        // A resume for another request changes nothing.
        let mut s = scan(&[upgrade, bad]);
        s.resume_after_upgrade(7);
        assert!(!s.verdict(1));
    }

    #[test]
    fn the_scanner_tells_idle_from_a_partial_head() {
        let mut s = scan(&[b"GET / HTTP/1.1\r\n\r\n"]);
        assert_eq!(s.waiting(), Wait::Idle);
        s.feed(b"GE");
        assert!(matches!(s.waiting(), Wait::Head(_)));
        s.feed(b"T / HTTP/1.1\r\ncontent-length: 2\r\n\r\n");
        assert_eq!(s.waiting(), Wait::Busy, "a body is not the guard's to time");
        s.feed(b"ok");
        assert_eq!(s.waiting(), Wait::Idle);
    }

    #[test]
    fn bodies_that_look_like_heads_are_skipped() {
        let body = b"x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len());
        let s = scan(&[head.as_bytes(), body, b"GET / HTTP/1.1\r\n\r\n"]);
        assert!(!s.verdict(0) && !s.verdict(1));
        assert_eq!(s.index, 2);
    }

    /// What httparse makes of `head`, as the guard read it before the line
    /// scan: `None` when httparse refuses it.
    fn facts_by_httparse(head: &[u8]) -> Option<HeadFacts> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, head, &mut slots);
        if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
            return None;
        }
        let mut facts = HeadFacts {
            connect: req
                .method
                .is_some_and(|m| m.eq_ignore_ascii_case("CONNECT")),
            ..HeadFacts::default()
        };
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                facts.lengths += 1;
                facts.length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                facts.encodings += 1;
                facts.chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                facts.upgrade = true;
            }
        }
        Some(facts)
    }

    #[test]
    fn the_line_scan_reads_framing_fields() {
        let facts = HeadFacts::read(
            b"POST /x HTTP/1.1\r\nHost: a:1\r\nContent-Length:  12 \r\n\
              Transfer-Encoding: gzip, Chunked\t\r\nUPGRADE: h2c\r\n\r\n",
        );
        let want = HeadFacts {
            connect: false,
            lengths: 1,
            length: Some(12),
            encodings: 1,
            chunked: true,
            upgrade: true,
        };
        assert_eq!(facts, want);
        let connect = HeadFacts::read(b"CONNECT a:443 HTTP/1.1\nhost: a:443\n\n");
        assert!(connect.connect && connect.lengths == 0);
        // A name with a colon in its value only, and a body-looking line
        // after the blank one, are not fields of the head.
        let facts =
            HeadFacts::read(b"GET / HTTP/1.1\r\nx: content-length: 1\r\n\r\ncontent-length: 2\r\n");
        assert_eq!(facts, HeadFacts::default());
    }

    /// A request head from parts chosen to sit near the framing fields:
    /// their names in odd cases and near misses, values with spaces,
    /// commas and non-ASCII bytes. `lax` adds what httparse refuses (spaces
    /// before a colon, a bare CR, obs-fold, bad tokens).
    fn heads(lax: bool) -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "POST", "CONNECT", "connect", "PUT"]);
        let mut names = vec![
            "Content-Length",
            "content-length",
            "CONTENT-LENGTH",
            "Transfer-Encoding",
            "transfer-encoding",
            "Upgrade",
            "upgrade",
            "Host",
            "content-lengths",
            "x-content-length",
            "transfer-encodin",
            "upgrades",
            "x",
        ];
        let mut eols = vec!["\r\n", "\n"];
        let mut extra = vec![""];
        if lax {
            names.extend([" content-length", "content-length ", "upgr@de", ""]);
            eols.push("\r");
            extra.extend(["\r\n folded", "\x01", "\u{a0}"]);
        }
        let value = prop::sample::select(vec![
            "",
            "0",
            "12",
            " 7 ",
            "\t3\t",
            "1,2",
            "+5",
            "-1",
            "chunked",
            "Chunked ",
            "gzip, chunked",
            "chunked, gzip",
            "gzip,chunked ,",
            " , CHUNKED",
            "websocket",
            "5\u{a0}",
            "caf\u{e9}",
            "a:b:c",
            "99999999999999999999",
        ]);
        let field = (
            prop::sample::select(names),
            value,
            prop::sample::select(extra),
            prop::sample::select(eols.clone()),
        );
        (
            method,
            prop::sample::select(eols),
            prop::collection::vec(field, 0..6),
        )
            .prop_map(|(method, eol, fields)| {
                let mut head = format!("{method} / HTTP/1.1{eol}");
                for (name, value, extra, eol) in fields {
                    head.push_str(&format!("{name}:{value}{extra}{eol}"));
                }
                head.push_str(eol);
                head.into_bytes()
            })
    }

    proptest! {
        #[test]
        fn the_line_scan_reads_what_httparse_reads(head in heads(false)) {
            // These heads are all well formed: each is compared.
            let parsed = facts_by_httparse(&head);
            prop_assert!(parsed.is_some(), "{:?}", String::from_utf8_lossy(&head));
            prop_assert_eq!(HeadFacts::read(&head), parsed.unwrap_or_default());
        }

        #[test]
        fn on_any_head_httparse_accepts_the_line_scan_agrees(head in heads(true)) {
            if let Some(parsed) = facts_by_httparse(&head) {
                prop_assert_eq!(HeadFacts::read(&head), parsed);
            }
        }
    }
}
