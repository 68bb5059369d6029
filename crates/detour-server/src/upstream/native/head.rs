//! Message heads: the request head as written to the backend, and the
//! response head as parsed from it (with `httparse`, as hyper parses it),
//! with the framing each one implies.
//!
//! The framing rules follow RFC 9112 §6 the way hyper's client applies them,
//! so the two clients accept the same responses:
//! a `1xx` other than `101` is skipped; `HEAD`, `204` and `304` have no body;
//! `Transfer-Encoding` ending in `chunked` is chunked and wins over
//! `Content-Length`, any other `Transfer-Encoding` reads to the close (and is
//! an error on HTTP/1.0); `Content-Length` values must all agree; with
//! neither, the body runs to the close.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, StatusCode, Version};

/// Most header lines in a response head (hyper's default too).
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest response head, status line to blank line.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most informational (`1xx`) heads skipped before the final one.
pub(crate) const MAX_INFORMATIONAL: usize = 16;

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Why a response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not HTTP/1.x, or a line httparse refuses.
    Syntax(httparse::Error),
    /// More than [`MAX_HEADERS`] header lines.
    TooManyHeaders,
    /// Longer than [`MAX_HEAD_BYTES`].
    TooLarge,
    /// More than [`MAX_INFORMATIONAL`] `1xx` heads.
    TooManyInformational,
    /// `Content-Length` unparsable, or values that disagree.
    BadContentLength,
    /// `Transfer-Encoding` on an HTTP/1.0 response.
    TransferEncodingOn10,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Syntax(e) => write!(f, "malformed response head: {e}"),
            HeadError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} response headers"),
            HeadError::TooLarge => write!(f, "response head over {MAX_HEAD_BYTES} bytes"),
            HeadError::TooManyInformational => {
                write!(f, "more than {MAX_INFORMATIONAL} informational responses")
            }
            HeadError::BadContentLength => f.write_str("invalid Content-Length in the response"),
            HeadError::TransferEncodingOn10 => {
                f.write_str("Transfer-Encoding on an HTTP/1.0 response")
            }
        }
    }
}

impl std::error::Error for HeadError {}

/// A final response head and what it means for the connection.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The response lets the connection be kept: it did not ask to close
    /// (HTTP/1.0 must ask to keep alive), its body has an end of its own,
    /// and it does not switch protocols (`101`, a `2xx` to `CONNECT`).
    pub(crate) keep_alive: bool,
}

/// Parse the next final response head at the front of `buf`, skipping and
/// consuming `1xx` heads (counted in `informational`). `Ok(None)`: more
/// bytes are needed. On success the head's bytes are gone from `buf`.
///
/// # Errors
/// [`HeadError`] for a head hyper's client would refuse too, and for the
/// limits above.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    informational: &mut usize,
    spans: &mut Vec<Span>,
) -> Result<Option<ResponseHead>, HeadError> {
    loop {
        // Left uninitialised: httparse writes the ones it fills (zeroing a
        // hundred slots per response would cost more than the parse).
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(e) => return Err(HeadError::Syntax(e)),
        };
        if len > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        // httparse guarantees a three-digit code once complete.
        let code = res.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| HeadError::Syntax(httparse::Error::Status))?;
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // Where each name and value lies in the head, so the values can
        // share its bytes once it is split off `buf` (no copy per value).
        // `spans` is the connection's, reused from response to response.
        spans.clear();
        let base = buf.as_ptr() as usize;
        spans.extend(res.headers.iter().map(|h| {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            Span {
                name: (n, n + h.name.len()),
                value: (v, v + h.value.len()),
            }
        }));
        let raw = buf.split_to(len).freeze();
        if status.is_informational() && code != 101 {
            *informational += 1;
            if *informational > MAX_INFORMATIONAL {
                return Err(HeadError::TooManyInformational);
            }
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let (headers, facts) = header_map(&raw, spans)?;
        return finish(status, version, headers, facts, method).map(Some);
    }
}

/// Where one header line's name and value lie in a head.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// What a response head's framing and connection fate depend on, gathered
/// while its lines go into the map (no lookups afterwards).
#[derive(Debug, Default)]
struct Facts {
    /// A `Connection` line lists `close`.
    close: bool,
    /// A `Connection` line lists `keep-alive`.
    keep_alive: bool,
    /// The last `Transfer-Encoding` line, if any.
    transfer_encoding: Option<HeaderValue>,
    /// The length the `Content-Length` lines state so far (`None`: no
    /// valid one yet).
    length: Option<u64>,
    /// One was not a plain decimal number, or two disagree.
    bad_length: bool,
}

impl Facts {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == header::CONNECTION {
            let (close, keep_alive) = connection_tokens(value);
            self.close |= close;
            self.keep_alive |= keep_alive;
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = Some(value.clone());
        } else if *name == header::CONTENT_LENGTH {
            self.bad_length |= add_length(&mut self.length, value).is_none();
        }
    }
}

/// The header lines of a parsed head as a map, values sharing `raw`, and
/// the facts its framing needs.
fn header_map(raw: &Bytes, spans: &[Span]) -> Result<(HeaderMap, Facts), HeadError> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut facts = Facts::default();
    for &Span {
        name: (ns, ne),
        value: (vs, ve),
    } in spans
    {
        // httparse accepted both as a token and as field content, which
        // `http` accepts too; a refusal here would be a disagreement between
        // the two crates, reported as a malformed head.
        let name = HeaderName::from_bytes(&raw[ns..ne])
            .map_err(|_| HeadError::Syntax(httparse::Error::HeaderName))?;
        let value = HeaderValue::from_maybe_shared(raw.slice(vs..ve))
            .map_err(|_| HeadError::Syntax(httparse::Error::HeaderValue))?;
        facts.note(&name, &value);
        headers.append(name, value);
    }
    Ok((headers, facts))
}

/// The framing and connection fate of a final head.
///
/// HTTP/1.1 keeps alive unless a `Connection` line says `close`; HTTP/1.0
/// only when one says `keep-alive` (and none says `close`).
fn finish(
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    facts: Facts,
    method: &Method,
) -> Result<ResponseHead, HeadError> {
    let keep_alive = !facts.close && (version == Version::HTTP_11 || facts.keep_alive);
    let code = status.as_u16();
    let upgrade = code == 101 || (*method == Method::CONNECT && status.is_success());
    let framing = if upgrade || code == 204 || code == 304 || *method == Method::HEAD {
        Framing::Length(0)
    } else if let Some(te) = &facts.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(HeadError::TransferEncodingOn10);
        }
        if last_is_chunked(te) {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if facts.bad_length {
        return Err(HeadError::BadContentLength);
    } else if let Some(len) = facts.length {
        Framing::Length(len)
    } else {
        Framing::Close
    };
    Ok(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive: keep_alive && !upgrade && framing != Framing::Close,
    })
}

/// Whether a `Connection` value lists `close`, and whether it lists
/// `keep-alive`.
fn connection_tokens(value: &HeaderValue) -> (bool, bool) {
    let bytes = value.as_bytes();
    // The usual values, whole: nothing to split or trim.
    if bytes.eq_ignore_ascii_case(b"keep-alive") {
        return (false, true);
    }
    if bytes.eq_ignore_ascii_case(b"close") {
        return (true, false);
    }
    (has_token(value, "close"), has_token(value, "keep-alive"))
}

/// Whether a comma-separated header value lists `token`.
pub(crate) fn has_token(value: &HeaderValue, token: &str) -> bool {
    let bytes = value.as_bytes();
    if !bytes.contains(&b',') {
        // One element, the usual case (`keep-alive`, `close`).
        return bytes.trim_ascii().eq_ignore_ascii_case(token.as_bytes());
    }
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Whether the last `Transfer-Encoding` line's last coding is `chunked`.
fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .is_some_and(last_is_chunked)
}

/// Whether a `Transfer-Encoding` line's last coding is `chunked`.
fn last_is_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// The one length every `Content-Length` value states (lines and
/// comma-separated lists alike), or `None` if any is not a plain decimal
/// number or two disagree.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut len = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        add_length(&mut len, value)?;
    }
    len
}

/// Fold one `Content-Length` line into the length the lines before it
/// stated (`len`). `None` if it is not a plain decimal number (or list of
/// them) or disagrees.
fn add_length(len: &mut Option<u64>, value: &HeaderValue) -> Option<()> {
    let bytes = value.as_bytes();
    if !bytes.contains(&b',') {
        // One number, the usual case.
        let n = decimal(bytes.trim_ascii())?;
        if len.is_some_and(|l| l != n) {
            return None;
        }
        *len = Some(n);
        return Some(());
    }
    for part in value.to_str().ok()?.split(',') {
        let n = decimal(part.trim().as_bytes())?;
        if len.is_some_and(|l| l != n) {
            return None;
        }
        *len = Some(n);
    }
    Some(())
}

/// Digits only: no sign, no spaces, and at most `u64::MAX - 2` (hyper
/// keeps the two values above for its own markers, and refuses them).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |n, &d| {
            if d.is_ascii_digit() {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            } else {
                None
            }
        })
        .filter(|n| *n <= u64::MAX - 2)
}

/// Why a request head could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestHeadError {
    /// A header value or the target holds a byte that would end the line
    /// (CR, LF or NUL): written as is, it would smuggle a second line.
    LineBreak,
    /// `Content-Length` unparsable or inconsistent.
    BadContentLength,
}

impl std::fmt::Display for RequestHeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RequestHeadError::LineBreak => "a request header holds CR, LF or NUL",
            RequestHeadError::BadContentLength => "invalid Content-Length in the request",
        })
    }
}

impl std::error::Error for RequestHeadError {}

/// What the request body is known to be before it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodySize {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Known(u64),
    /// Length unknown until the end.
    Unknown,
}

/// Write `head` as an HTTP/1.1 request head into `dst`, framing the body as
/// its headers say (`Transfer-Encoding` ending in `chunked`, else
/// `Content-Length`), or as `body` says when they say nothing: a known
/// length gets `Content-Length`, an unknown one `chunked`. A request with no
/// body loses any `Transfer-Encoding`. Returns the body's framing and
/// whether the request lets the connection be kept.
///
/// # Errors
/// [`RequestHeadError`]: nothing was written that could reach the wire.
pub(crate) fn encode_request(
    head: &mut request::Parts,
    body: BodySize,
    dst: &mut Vec<u8>,
) -> Result<(Framing, bool), RequestHeadError> {
    let framing = request_framing(&mut head.headers, body)?;
    dst.reserve(64 + head.headers.len() * 32);
    let begin = dst.len();
    dst.extend_from_slice(head.method.as_str().as_bytes());
    dst.push(b' ');
    let start = dst.len();
    match head.uri.path_and_query() {
        Some(pq) if head.uri.scheme().is_none() => dst.extend_from_slice(pq.as_str().as_bytes()),
        _ => dst.extend_from_slice(head.uri.to_string().as_bytes()),
    }
    if dst[start..].is_empty() {
        dst.push(b'/');
    }
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    let mut keep_alive = true;
    for (name, value) in &head.headers {
        if *name == header::CONNECTION && has_token(value, "close") {
            keep_alive = false;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    // One pass over the whole head instead of one per value: the only CR,
    // LF and NUL bytes in it must be the line ends written here (the request
    // line's, each field's, the blank line's). A target or a value holding
    // one (see `breaks_line`) adds to the count.
    if !only_line_ends(&dst[begin..], head.headers.len() + 2) {
        dst.truncate(begin);
        return Err(RequestHeadError::LineBreak);
    }
    Ok((framing, keep_alive))
}

/// Whether the CR, LF and NUL bytes in a written `head` of `lines` lines
/// (the blank one included) are exactly its line ends: one CR and one LF
/// each, so a count is enough (a search would start afresh after every line
/// end, and a head has one per field).
fn only_line_ends(head: &[u8], lines: usize) -> bool {
    special_bytes(head) == 2 * lines
}

/// How many bytes of `bytes` are CR, LF or NUL. Counted in one-byte lanes,
/// a chunk short enough that none overflows at a time: the compiler turns
/// the inner loop into vector compares of 16 bytes (SSE2 is baseline on
/// x86-64), where eight-byte words cost about three times the instructions.
fn special_bytes(bytes: &[u8]) -> usize {
    bytes
        .chunks(usize::from(u8::MAX))
        .map(|chunk| {
            let n = chunk.iter().fold(0u8, |n, &b| {
                n.wrapping_add(u8::from(b == b'\r' || b == b'\n' || b == 0))
            });
            usize::from(n)
        })
        .sum()
}

/// CR, LF or NUL: `http` refuses them in a header value it parses or
/// checks, so this only catches a value made without the checks (with
/// `unsafe`, in a hook). For trailer values; a request head is checked
/// whole by `only_line_ends`.
pub(crate) fn breaks_line(bytes: &[u8]) -> bool {
    memchr::memchr3(b'\r', b'\n', 0, bytes).is_some()
}

/// The request body's framing, the headers made to say it.
fn request_framing(headers: &mut HeaderMap, body: BodySize) -> Result<Framing, RequestHeadError> {
    // One pass over the few fields of a request instead of two hash lookups
    // for fields it usually does not carry.
    let (has_te, has_length) = headers.keys().fold((false, false), |(te, cl), name| {
        (
            te || name == header::TRANSFER_ENCODING,
            cl || name == header::CONTENT_LENGTH,
        )
    });
    if body == BodySize::Empty {
        if has_te {
            headers.remove(header::TRANSFER_ENCODING);
        }
        return match has_length {
            true => content_length(headers)
                .map(Framing::Length)
                .ok_or(RequestHeadError::BadContentLength),
            false => Ok(Framing::Length(0)),
        };
    }
    if has_te {
        // A request whose codings do not end in `chunked` cannot be
        // delimited: end them with it, as the body will be.
        if !last_coding_is_chunked(headers) {
            let mut line = headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .next_back()
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            line.extend_from_slice(b", chunked");
            let value = HeaderValue::from_bytes(&line).map_err(|_| RequestHeadError::LineBreak)?;
            headers.remove(header::TRANSFER_ENCODING);
            headers.insert(header::TRANSFER_ENCODING, value);
        }
        if has_length {
            headers.remove(header::CONTENT_LENGTH);
        }
        return Ok(Framing::Chunked);
    }
    if has_length {
        return content_length(headers)
            .map(Framing::Length)
            .ok_or(RequestHeadError::BadContentLength);
    }
    match body {
        BodySize::Known(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Ok(Framing::Length(n))
        }
        _ => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Ok(Framing::Chunked)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_break_or_nul_anywhere_in_a_written_head_is_caught() {
        let head = b"GET /a HTTP/1.1\r\nhost: b\r\nx: 1\r\n\r\n";
        assert!(only_line_ends(head, 4));
        for smuggled in [
            &b"GET /a HTTP/1.1\r\nhost: b\r\nx: 1\r\nevil: 1\r\n\r\n"[..],
            b"GET /a HTTP/1.1\r\nhost: b\r\nx: 1\rX\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: b\r\nx: 1\nX\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: b\0\r\nx: 1\r\n\r\n",
            b"GET /a\r\n HTTP/1.1\r\nhost: b\r\nx: 1\r\n\r\n",
        ] {
            assert!(
                !only_line_ends(smuggled, 4),
                "{:?}",
                String::from_utf8_lossy(smuggled)
            );
        }
    }

    #[test]
    fn each_byte_is_counted_wherever_it_lies() {
        let head = b"GET /abc HTTP/1.1\r\nhost: backend\r\nx-id: 0123456789\r\n\r\n";
        assert!(only_line_ends(head, 4));
        for at in 0..=head.len() {
            for byte in [b'\r', b'\n', 0] {
                let mut bad = head.to_vec();
                bad.insert(at, byte);
                assert!(!only_line_ends(&bad, 4), "{byte} at {at}");
            }
            for byte in [b'\t', b' ', 0x7f, 0x80, 0xff, 0x8d, 0x8a, 0x0b, 0x0c] {
                let mut fine = head.to_vec();
                fine.insert(at, byte);
                assert!(only_line_ends(&fine, 4), "{byte} at {at}");
            }
        }
    }

    #[test]
    fn every_special_byte_is_counted_in_heads_of_any_length() {
        let naive = |h: &[u8]| h.iter().filter(|b| matches!(b, b'\r' | b'\n' | 0)).count();
        // Chunk edges: all special (a lane at its limit), none, and mixed.
        for len in [0, 1, 15, 16, 17, 254, 255, 256, 509, 510, 511, 1000] {
            for fill in [b'\r', b'\n', 0, b'a'] {
                let h = vec![fill; len];
                assert_eq!(special_bytes(&h), naive(&h), "{fill} x {len}");
            }
            let mixed: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            assert_eq!(special_bytes(&mixed), naive(&mixed), "mixed {len}");
        }
        for byte in 0..=255u8 {
            let mut h = *b"abcdefghijklmnopqrstu";
            h[7] = byte;
            assert_eq!(special_bytes(&h), naive(&h), "{byte}");
        }
    }

    #[test]
    fn encoded_heads_pass_their_own_check() {
        let mut parts = http::Request::get("/p?q=1")
            .header("host", "b")
            .header("x-many", "1")
            .header("x-many", "2")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut dst = Vec::new();
        let (framing, keep_alive) =
            encode_request(&mut parts, BodySize::Empty, &mut dst).expect("written");
        assert_eq!(framing, Framing::Length(0));
        assert!(keep_alive);
        assert_eq!(
            dst,
            b"GET /p?q=1 HTTP/1.1\r\nhost: b\r\nx-many: 1\r\nx-many: 2\r\n\r\n"
        );
    }
}
