//! Forwarding headers: what a proxy removes, adds and checks on the way through.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, StatusCode, Uri, Version};

use crate::config::{ForwardingConfig, LimitsConfig};

/// Headers that describe one hop and never travel further (RFC 9110 §7.6.1),
/// plus the old `Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    crate::upstream::pool::KEEP_ALIVE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// `X-Forwarded-For`, `-Proto` and `-Host`: constants, since `from_static`
/// outside a constant parses the name at every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Which of the headers the forwarding reads a message carries, and how
/// many fields of each, found in one pass over it: a hash lookup costs
/// about 110 instructions even for a header that is absent, and most
/// messages carry none of these but one `Host` or one `Content-Length`.
#[derive(Debug, Clone, Copy, Default)]
struct Present {
    content_length: u32,
    transfer_encoding: u32,
    host: u32,
    upgrade: u32,
    /// A `Content-Length` value holds a comma (a list of lengths).
    length_list: bool,
    expect: bool,
    xff: bool,
    xfp: bool,
    xfh: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Present {
        let mut p = Present::default();
        for (name, value) in headers {
            p.note(name, value);
        }
        p
    }

    /// Take one field into account. Standard names compare as one tag
    /// each; only the rest are read as text (a string match costs a length
    /// switch and a memcmp per name, and most names are standard).
    #[inline]
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == header::CONTENT_LENGTH {
            self.content_length += 1;
            self.length_list |= value.as_bytes().contains(&b',');
        } else if name == header::HOST {
            self.host += 1;
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding += 1;
        } else if name == header::UPGRADE {
            self.upgrade += 1;
        } else if name == header::EXPECT {
            self.expect = true;
        } else if name.as_str().starts_with("x-forwarded-") {
            match &name.as_str()["x-forwarded-".len()..] {
                "for" => self.xff = true,
                "proto" => self.xfp = true,
                "host" => self.xfh = true,
                _ => {}
            }
        }
    }
}

/// The elements of a comma-separated list field (RFC 9110 §5.6.1), over all
/// of its fields in order (§5.3: several fields are one list), trimmed, the
/// empty ones skipped.
fn list_elements(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The protocol name of an `Upgrade` token (`websocket` of `WebSocket/13`).
fn protocol_name(token: &[u8]) -> &[u8] {
    token
        .split(|b| *b == b'/')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// An `Upgrade` element as RFC 9110 §7.8 writes it: `token [ "/" token ]`.
/// Anything else (bytes outside a token, an empty part) is not forwarded.
fn well_formed_protocol(element: &[u8]) -> bool {
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    element
        .trim_ascii()
        .splitn(2, |b| *b == b'/')
        .all(|part| !part.is_empty() && part.iter().all(tchar))
}

/// Narrow a request's `Upgrade` to the protocols in `allowed` (never `h2c`,
/// RFC 9113 §3.1). Returns whether an upgrade is still asked for; when not,
/// the request goes on as plain HTTP (hop-by-hop stripping then removes
/// `Upgrade`).
///
/// Every `Upgrade` field is read (they are one list); when anything was
/// left out, or the list came in several fields, one field with the kept
/// tokens in the client's order replaces them. Only an HTTP/1.1 request can
/// upgrade: an `Upgrade` in HTTP/1.0 is ignored (RFC 9110 §7.8), and HTTP/2
/// has no such mechanism (RFC 9113 §8.6).
pub(crate) fn filter_upgrade(parts: &mut request::Parts, allowed: &[String]) -> bool {
    if parts.version != Version::HTTP_11 {
        return false;
    }
    let headers = &mut parts.headers;
    let upgrades = Present::scan(headers).upgrade;
    if upgrades == 0 || !connection_has(headers, "upgrade") {
        return false;
    }
    let several_fields = upgrades > 1;
    let allows = |token: &&[u8]| {
        let name = protocol_name(token);
        well_formed_protocol(token)
            && !name.eq_ignore_ascii_case(b"h2c")
            && allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(name))
    };
    let (mut offered, mut kept) = (0, 0);
    for token in list_elements(headers, header::UPGRADE) {
        offered += 1;
        kept += usize::from(allows(&token));
    }
    if kept == 0 {
        return false;
    }
    if kept != offered || several_fields {
        let narrowed: Vec<&[u8]> = list_elements(headers, header::UPGRADE)
            .filter(allows)
            .collect();
        // Made of bytes of valid field values joined by `, `: always valid.
        match HeaderValue::from_bytes(&narrowed.join(&b", "[..])) {
            Ok(v) => {
                headers.insert(header::UPGRADE, v);
            }
            Err(_) => return false,
        }
    }
    true
}

/// Whether a `101`'s `Upgrade` names only protocols the request offered
/// (RFC 9110 §7.8: a server may only switch to one of those). All `Upgrade`
/// fields of both count; an empty element or none at all is a refusal.
pub(crate) fn upgrade_was_offered(request: &HeaderMap, response: &HeaderMap) -> bool {
    let mut chosen = response
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(protocol_name)
        .peekable();
    chosen.peek().is_some()
        && chosen.all(|c| {
            !c.is_empty()
                && list_elements(request, header::UPGRADE)
                    .any(|o| protocol_name(o).eq_ignore_ascii_case(c))
        })
}

/// Whether a `Connection` header lists `token` (case-insensitive).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    list_elements(headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Which hop-by-hop headers a message carries, and what its `Connection`
/// elements say (see [`HopByHop::scan`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HopByHop {
    /// Bit `i`: `HOP_BY_HOP[i]` is present; the bit after them: `Upgrade`.
    seen: u16,
    /// A `Connection` element is `close`.
    close: bool,
    /// A `Connection` element may name another field to remove: one that
    /// is none of the usual tokens and no field that is never removed.
    names_others: bool,
}

/// `Connection` elements that name no field to remove: the usual tokens,
/// and the message's own routing and framing, which are never a client's
/// to remove (`Connection: host` or `content-length` is ignored).
const NEVER_NAMED: [&str; 5] = ["keep-alive", "close", "upgrade", "host", "content-length"];

impl HopByHop {
    /// One pass over the fields (names compared, no hashing; only a
    /// `Connection` value is read).
    pub(crate) fn scan(headers: &HeaderMap) -> Self {
        let mut hop = HopByHop::default();
        for (name, value) in headers {
            hop.note(name, value);
        }
        hop
    }

    /// Take one field into account.
    #[inline]
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            self.seen |= 1 << i;
            if i == 0 {
                self.connection_elements(value);
            }
        } else if name == header::UPGRADE {
            self.seen |= 1 << HOP_BY_HOP.len();
        }
    }

    /// The elements of one `Connection` field.
    fn connection_elements(&mut self, value: &HeaderValue) {
        let elements = value.as_bytes().split(|b| *b == b',');
        for t in elements.map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if !NEVER_NAMED
                .iter()
                .any(|k| t.eq_ignore_ascii_case(k.as_bytes()))
            {
                self.names_others = true;
            }
        }
    }

    /// A `Keep-Alive` field is present (`HOP_BY_HOP[1]`).
    pub(crate) fn keep_alive(self) -> bool {
        self.seen & 2 != 0
    }

    /// A `Transfer-Encoding` field is present (`HOP_BY_HOP[7]`).
    fn transfer_encoding(self) -> bool {
        self.seen & (1 << 7) != 0
    }

    /// The `Connection` field lists `close`: the sender closes after this
    /// message.
    pub(crate) fn closes(self) -> bool {
        self.close
    }
}

/// Remove hop-by-hop headers and those the `Connection` header names. When
/// `upgrade` is set, `Upgrade` and `Connection: upgrade` are kept so the next hop
/// sees the upgrade request (or response).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    strip_seen_hop_by_hop(headers, HopByHop::scan(headers), upgrade);
}

/// [`strip_hop_by_hop`] for a message already scanned: only the headers
/// `seen` names are removed. Most messages carry none or only
/// `Connection: keep-alive`.
pub(crate) fn strip_seen_hop_by_hop(headers: &mut HeaderMap, seen: HopByHop, upgrade: bool) {
    if seen.names_others {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty() && !NEVER_NAMED.iter().any(|k| t.eq_ignore_ascii_case(k)))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if seen.seen & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if seen.seen & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// The transfer codings a message's `Transfer-Encoding` fields list, as
/// hyper reads them. Requests and responses are judged from this one count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Codings {
    /// `chunked` elements (RFC 9112 §6.1 allows one).
    chunked: usize,
    /// Other codings (empty elements are not codings).
    other: usize,
    /// Whether the very last element of the last field is `chunked`: hyper
    /// decodes chunked only then (`chunked, ` is not), and otherwise reads
    /// a response until the connection closes.
    ends_chunked: bool,
}

impl Codings {
    /// `None` when the message has no `Transfer-Encoding` field.
    fn of(headers: &HeaderMap) -> Option<Codings> {
        let mut fields = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
        fields.peek()?;
        let mut c = Codings::default();
        for coding in fields
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
        {
            c.ends_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if c.ends_chunked {
                c.chunked += 1;
            } else if !coding.is_empty() {
                c.other += 1;
            }
        }
        Some(c)
    }

    /// Exactly one `chunked` and nothing else: the only coding Detour
    /// passes on (hyper removes it and the next hop re-frames the body).
    fn only_chunked(self) -> bool {
        self.ends_chunked && self.chunked == 1 && self.other == 0
    }
}

/// The framing of an upstream response as Detour can pass it on
/// (RFC 9112 §6, RFC 9110 §8.6):
///
/// - a `1xx` or `204` has no body, and any `Content-Length` is dropped;
/// - with a `Transfer-Encoding`, any `Content-Length` is dropped (§6.3: the
///   coding wins, and the length would cut the body short), and the coding
///   must be exactly one `chunked`: another coding would be delivered with
///   its name dropped, an empty one is read until close, and a doubled
///   `chunked` is decoded once, so its chunk framing would reach the client;
/// - a `Content-Length` repeated with one value (`5, 5`, or two fields,
///   which hyper accepts) becomes one field: HTTP/2 clients reset a stream
///   with a list there, and hyper will not write one.
///
/// Returns the head's hop-by-hop fields, found in the same pass.
///
/// # Errors
/// `InvalidResponse` with `Proxy-Status: …; error=http_response_transfer_coding`
/// for any coding but one `chunked`; with `error=http_protocol_error` for
/// `Content-Length` values that differ or are not numbers.
pub(crate) fn check_response_framing(
    status: StatusCode,
    headers: &mut HeaderMap,
) -> Result<HopByHop, detour_core::Error> {
    // One pass: the lengths here, the hop-by-hop fields for the caller.
    let (mut hop, mut lengths, mut length_list) = (HopByHop::default(), 0u32, false);
    for (name, value) in headers.iter() {
        if name == header::CONTENT_LENGTH {
            lengths += 1;
            length_list |= value.as_bytes().contains(&b',');
        } else {
            hop.note(name, value);
        }
    }
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        if lengths > 0 {
            headers.remove(header::CONTENT_LENGTH);
        }
        return Ok(hop);
    }
    let codings = match hop.transfer_encoding() {
        false => None,
        true => Codings::of(headers),
    };
    let Some(codings) = codings else {
        // The usual case, one length that the client has parsed already,
        // needs no lookup at all.
        if lengths <= 1 && !length_list {
            return Ok(hop);
        }
        return one_content_length(headers).map(|()| hop);
    };
    headers.remove(header::CONTENT_LENGTH);
    if codings.only_chunked() {
        Ok(hop)
    } else {
        Err(
            detour_core::Error::upstream(detour_core::ErrorKind::InvalidResponse)
                .context("response with a transfer coding other than one chunked")
                .proxy_status("http_response_transfer_coding"),
        )
    }
}

/// Collapse a repeated `Content-Length` of one value into one field.
fn one_content_length(headers: &mut HeaderMap) -> Result<(), detour_core::Error> {
    let mut fields = headers.get_all(header::CONTENT_LENGTH).iter();
    match (fields.next(), fields.next()) {
        (None, _) => return Ok(()),
        // The usual case: one value, which hyper has parsed already.
        (Some(one), None) if !one.as_bytes().contains(&b',') => return Ok(()),
        _ => {}
    }
    let mut length = None;
    for value in headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
    {
        let n = std::str::from_utf8(value.trim_ascii())
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        match (n, length) {
            (Some(n), None) => length = Some(n),
            (Some(n), Some(first)) if n == first => {}
            _ => {
                return Err(
                    detour_core::Error::upstream(detour_core::ErrorKind::InvalidResponse)
                        .context("response with differing Content-Length values")
                        .proxy_status("http_protocol_error"),
                )
            }
        }
    }
    if let Some(n) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(())
}

/// Why a downstream request is refused before any hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadRequest {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
}

/// Check what hyper's parser lets through but a careful proxy refuses:
/// request smuggling vectors (conflicting or duplicate framing), transfer
/// codings Detour cannot pass on, a missing, repeated, malformed or
/// contradicting `Host`, a target over its limit or in a form its method
/// does not take, methods not proxied, and bodies over the limit. Returns
/// the declared body length.
pub(crate) fn check_request(
    parts: &request::Parts,
    limits: &LimitsConfig,
) -> Result<Option<u64>, BadRequest> {
    let refuse = |status, reason| Err(BadRequest { status, reason });
    if let Some(seen) = parts.extensions.get::<crate::framing::AmbiguousFraming>() {
        return refuse(StatusCode::BAD_REQUEST, seen.0);
    }
    let present = Present::scan(&parts.headers);
    let len = check_framing(parts, present)?;
    check_host(parts, present)?;
    if target_len(parts.version, &parts.uri) > limits.max_uri_size {
        return refuse(StatusCode::URI_TOO_LONG, "request target over max_uri_size");
    }
    // Methods are case-sensitive (RFC 9110 §9.1), so `trace` is not TRACE
    // to HTTP; but a backend that folds case would run it as TRACE.
    let method = parts.method.as_str();
    if method.eq_ignore_ascii_case("CONNECT") {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied");
    }
    if method.eq_ignore_ascii_case("TRACE") && !limits.allow_trace {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "TRACE is not allowed");
    }
    check_target_form(parts)?;
    if let Some(n) = len {
        if limits.max_body_size != 0 && n > limits.max_body_size {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body over the limit");
        }
    }
    Ok(len)
}

/// The `Allow` value of a 405 from [`check_request`]: the methods Detour
/// passes on (RFC 9110 §15.5.6 wants the header on every 405).
pub(crate) fn allowed_methods(limits: &LimitsConfig) -> HeaderValue {
    HeaderValue::from_static(if limits.allow_trace {
        "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"
    } else {
        "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"
    })
}

fn bad_request<T>(reason: &'static str) -> Result<T, BadRequest> {
    Err(BadRequest {
        status: StatusCode::BAD_REQUEST,
        reason,
    })
}

/// `Content-Length` and `Transfer-Encoding` (RFC 9112 §6): one length at
/// most, never with a transfer coding, and no coding but one final
/// `chunked` (a doubled `chunked` is malformed, §6.1: 400; another coding
/// is one Detour would have to undo: 501).
fn check_framing(parts: &request::Parts, present: Present) -> Result<Option<u64>, BadRequest> {
    if present.content_length > 1 {
        return bad_request("duplicate Content-Length");
    }
    let cl_value = match present.content_length {
        0 => None,
        _ => parts.headers.get(header::CONTENT_LENGTH),
    };
    let codings = match present.transfer_encoding {
        0 => None,
        _ => Codings::of(&parts.headers),
    };
    if let Some(codings) = codings {
        if cl_value.is_some() {
            return bad_request("both Content-Length and Transfer-Encoding");
        }
        if parts.version == Version::HTTP_10 {
            return bad_request("Transfer-Encoding in an HTTP/1.0 request");
        }
        if !codings.ends_chunked {
            return bad_request("Transfer-Encoding does not end in chunked");
        }
        if codings.chunked > 1 {
            return bad_request("chunked applied more than once");
        }
        if codings.other > 0 {
            return Err(BadRequest {
                status: StatusCode::NOT_IMPLEMENTED,
                reason: "a transfer coding other than chunked",
            });
        }
    }
    match cl_value {
        None => Ok(None),
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) => Ok(Some(n)),
            None => bad_request("malformed Content-Length"),
        },
    }
}

/// `Host` (RFC 9112 §3.2, RFC 9113 §8.3.1): exactly one in an HTTP/1.1
/// request; it and the target's authority (absolute-form, `:authority`)
/// are each `uri-host [ ":" port ]` (see [`host_and_port`]); and on HTTP/2
/// a `host` names the same origin as `:authority` (see [`same_origin`]).
fn check_host(parts: &request::Parts, present: Present) -> Result<(), BadRequest> {
    if present.host > 1 {
        return bad_request("more than one Host");
    }
    let host = match present.host {
        0 => None,
        _ => parts.headers.get(header::HOST),
    };
    let host = match host {
        Some(h) => Some(host_and_port(h.as_bytes()).ok_or(BadRequest {
            status: StatusCode::BAD_REQUEST,
            reason: "invalid Host",
        })?),
        None => None,
    };
    let authority = match parts.uri.authority() {
        Some(a) => Some(host_and_port(a.as_str().as_bytes()).ok_or(BadRequest {
            status: StatusCode::BAD_REQUEST,
            reason: "invalid authority in the target",
        })?),
        None => None,
    };
    match (parts.version, host, authority) {
        (Version::HTTP_11, None, _) => bad_request("missing Host"),
        (Version::HTTP_2, Some(h), Some(a)) if !same_origin(h, a, parts.uri.scheme_str()) => {
            bad_request("Host differs from :authority")
        }
        _ => Ok(()),
    }
}

/// A `Host` or authority split into host and port.
type HostPort<'a> = (&'a [u8], Option<&'a [u8]>);

/// Split `value` into host and port (`None` without a colon) if it is
/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2–3.2.3): a non-empty reg-name or
/// IPv4 address (unreserved, sub-delims, `%XX`), or an IPv6 address in
/// brackets, then digits after a colon. `None` for anything else: userinfo
/// (`x@h`, which RFC 9110 §4.2.4 forbids in http URIs), a path (`h/x`), two
/// ports (`h:80:80`), spaces, an empty host (RFC 9110 §4.2.1), IPvFuture.
fn host_and_port(value: &[u8]) -> Option<HostPort<'_>> {
    let (host, rest) = if let Some(inner) = value.strip_prefix(b"[") {
        let end = inner.iter().position(|b| *b == b']')?;
        let addr = std::str::from_utf8(&inner[..end]).ok()?;
        addr.parse::<std::net::Ipv6Addr>().ok()?;
        value.split_at(end + 2)
    } else {
        let end = value.iter().position(|b| *b == b':').unwrap_or(value.len());
        let (host, rest) = value.split_at(end);
        if !is_reg_name(host) {
            return None;
        }
        (host, rest)
    };
    match rest {
        [] => Some((host, None)),
        [b':', port @ ..] if port.iter().all(u8::is_ascii_digit) => Some((host, Some(port))),
        _ => None,
    }
}

/// Bytes a reg-name holds as they are: unreserved and sub-delims (RFC 3986
/// §3.2.2). `%` starts an escape and is not among them.
const REG_NAME_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~')
            || matches!(
                c,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        b += 1;
    }
    t
};

/// A non-empty RFC 3986 reg-name (an IPv4 address is one too): bytes of
/// [`REG_NAME_BYTES`] and `%` escapes.
fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b if REG_NAME_BYTES[usize::from(b)] => i += 1,
            b'%' if host
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                i += 3;
            }
            _ => return false,
        }
    }
    !host.is_empty()
}

/// Whether two hosts name one origin (RFC 3986 §6.2.2.1, §6.2.3): the
/// host compared without case, and no port (or an empty one) the same as
/// the scheme's default. Ports are otherwise compared as written.
fn same_origin<'a>((h1, p1): HostPort<'a>, (h2, p2): HostPort<'a>, scheme: Option<&str>) -> bool {
    let default: Option<&'a [u8]> = match scheme {
        Some("http") => Some(b"80"),
        Some("https") => Some(b"443"),
        _ => None,
    };
    let or_default = |p: Option<&'a [u8]>| match p {
        None | Some([]) => default,
        Some(p) => Some(p),
    };
    h1.eq_ignore_ascii_case(h2) && or_default(p1) == or_default(p2)
}

/// The target's form fits the method (RFC 9112 §3.2.3–3.2.4): the
/// authority-form (`host:port`) is CONNECT's alone, and the asterisk-form
/// (`*`, `:path: *` on HTTP/2) is OPTIONS's alone.
fn check_target_form(parts: &request::Parts) -> Result<(), BadRequest> {
    let uri = &parts.uri;
    if uri.scheme().is_none() && uri.authority().is_some() && parts.method != Method::CONNECT {
        return bad_request("authority-form target without CONNECT");
    }
    if uri.path() == "*" && parts.method != Method::OPTIONS {
        return bad_request("asterisk-form target without OPTIONS");
    }
    Ok(())
}

/// The length of the request target that `max_uri_size` limits: on
/// HTTP/1.1 the target as the client sent it on the request line (the
/// path and query, or all of an absolute-form `http://host/path`); on
/// HTTP/2 `:path` alone. hyper hands Detour an HTTP/2 request with the
/// scheme and `:authority` in its URI, but the authority is a field like
/// `Host` there, under `max_header_size`: counting it would make one path
/// 414 on HTTP/2 and not on HTTP/1.1.
fn target_len(version: Version, uri: &Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    match uri.authority() {
        Some(a) if version != Version::HTTP_2 => {
            uri.scheme_str().map_or(0, |s| s.len() + 3) + a.as_str().len() + pq
        }
        _ => pq,
    }
}

/// Make the request's authority its `Host`: the authority of an
/// absolute-form target replaces any `Host` (RFC 9112 §3.2.2), and an HTTP/2
/// request without `host` gets its `:authority`, so routing, hooks and the
/// backend all see one host.
pub(crate) fn host_from_authority(parts: &mut request::Parts) {
    let Some(authority) = parts.uri.authority() else {
        return;
    };
    let same = parts
        .headers
        .get(header::HOST)
        .is_some_and(|h| h.as_bytes() == authority.as_str().as_bytes());
    if !same {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
}

/// Generates request ids: a random per-process prefix and a counter, as 32 hex
/// digits, written without any formatting machinery.
///
/// Ids are written [`BATCH`] at a time into one buffer that each id's value
/// shares: a request's id then costs no allocation of its own, and the
/// copies of it (the upstream head's) none either.
pub(crate) struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
    /// The current batch and how many of its ids are handed out. Held only
    /// to take one id (never across an await).
    batch: std::sync::Mutex<(bytes::Bytes, usize)>,
}

/// Ids written at a time.
const BATCH: usize = 64;
/// Hex digits in an id.
const ID_LEN: usize = 32;

impl RequestIds {
    pub(crate) fn new() -> Self {
        RequestIds {
            prefix: fastrand::u64(..),
            counter: AtomicU64::new(fastrand::u64(..)),
            batch: std::sync::Mutex::new((bytes::Bytes::new(), BATCH)),
        }
    }

    pub(crate) fn next(&self) -> HeaderValue {
        // A poisoned lock held only a batch and a count, both whole.
        let mut guard = self
            .batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (ids, taken) = &mut *guard;
        if *taken == BATCH {
            *ids = self.write_batch();
            *taken = 0;
        }
        let at = *taken * ID_LEN;
        *taken += 1;
        let id = ids.slice(at..at + ID_LEN);
        drop(guard);
        // Invariant: 32 ASCII hex digits are always a valid header value.
        HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }

    /// The next [`BATCH`] ids, one after another.
    fn write_batch(&self) -> bytes::Bytes {
        let first = self.counter.fetch_add(BATCH as u64, Ordering::Relaxed);
        // The prefix is the same in every id of the batch: written once.
        let prefix = hex16(self.prefix);
        let mut buf = Vec::with_capacity(BATCH * ID_LEN);
        for k in 0..BATCH as u64 {
            buf.extend_from_slice(&prefix);
            buf.extend_from_slice(&hex16(first.wrapping_add(k)));
        }
        buf.into()
    }
}

/// `word` as 16 lower-case hex digits, most significant first.
fn hex16(word: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 16];
    for (j, digit) in out.iter_mut().enumerate() {
        *digit = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
    }
    out
}

/// Everything needed to write forwarding headers, prepared once.
pub(crate) struct Forwarding {
    pub(crate) config: ForwardingConfig,
    pub(crate) via: HeaderValue,
    pub(crate) request_id: HeaderName,
}

impl Forwarding {
    pub(crate) fn new(config: ForwardingConfig, proxy_name: &str) -> Self {
        // Invariant: both were validated with the server config.
        let via = HeaderValue::from_str(&format!("1.1 {proxy_name}"))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 detour"));
        let request_id = HeaderName::from_bytes(config.request_id_header.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-request-id"));
        Forwarding {
            config,
            via,
            request_id,
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// Build the head sent upstream from the client's head.
    ///
    /// `down` was already stripped of hop-by-hop headers (see
    /// [`strip_hop_by_hop`]) before Detour added its own, so a client's
    /// `Connection` cannot name them away. `tls`: the client came over TLS.
    pub(crate) fn upstream_head(
        &self,
        down: &request::Parts,
        client: Option<SocketAddr>,
        tls: bool,
    ) -> request::Parts {
        // Made with room for what is added below (X-Forwarded-*, Via), then
        // filled: a clone has no room to spare, and the first insert into it
        // reallocates (about 1,000 instructions, more than hashing a
        // request's headers again). No more room than that: a table that
        // stays small comes from the allocator's fast per-thread cache. The
        // rare additions (a Host for a target without one, Connection for an
        // upgrade) may grow it.
        let added = 3 * usize::from(self.config.x_forwarded) + usize::from(self.config.via);
        let mut headers = HeaderMap::with_capacity(down.headers.len() + added);
        // The copy notes what is there as it goes (joining cookies below
        // changes nothing it notes), and keeps the `Host` for
        // X-Forwarded-Host.
        let (mut present, mut host) = (Present::default(), None);
        for (name, value) in &down.headers {
            present.note(name, value);
            if name == header::HOST {
                host = Some(value);
            }
            headers.append(name.clone(), value.clone());
        }
        if down.version == Version::HTTP_2 {
            join_cookies(&mut headers);
        }
        // We answer `Expect: 100-continue` ourselves: the client's body is read
        // only once an upstream is connected.
        if present.expect {
            headers.remove(header::EXPECT);
        }
        if present.host == 0 {
            if let Some(auth) = down.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
        }
        if self.config.x_forwarded {
            self.add_x_forwarded(&mut headers, host, client, tls, present);
        }
        if self.config.via {
            headers.append(header::VIA, self.via.clone());
        }
        let uri = match down.uri.path_and_query() {
            // Origin form: the upstream sees `/path?query`, never our authority.
            Some(pq) if down.uri.authority().is_some() => {
                Uri::from_maybe_shared(bytes::Bytes::copy_from_slice(pq.as_str().as_bytes()))
                    .unwrap_or_else(|_| down.uri.clone())
            }
            _ => down.uri.clone(),
        };
        let mut head = http::Request::new(()).into_parts().0;
        head.method = down.method.clone();
        head.uri = uri;
        head.version = Version::HTTP_11;
        head.headers = headers;
        head
    }

    /// X-Forwarded-For, -Proto and -Host (from `host`, the request's
    /// `Host`), replacing any a client that is not trusted sent.
    fn add_x_forwarded(
        &self,
        headers: &mut HeaderMap,
        host: Option<&HeaderValue>,
        client: Option<SocketAddr>,
        tls: bool,
        present: Present,
    ) {
        let Some(client) = client else { return };
        let ip = client.ip().to_canonical();
        let trusted = self.trusted(ip);
        let (xff, xfp, xfh) = (X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST);
        let prev = if present.xff && trusted {
            headers.get(&xff).and_then(|v| v.to_str().ok())
        } else {
            None
        };
        let value = match prev {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {ip}")).ok(),
            None => Some(client_ip_value(ip)),
        };
        if let Some(v) = value {
            set(headers, xff, v, present.xff);
        }
        if !(trusted && present.xfp) {
            let scheme = if tls { "https" } else { "http" };
            set(headers, xfp, HeaderValue::from_static(scheme), present.xfp);
        }
        if !(trusted && present.xfh) {
            match host {
                Some(h) => set(headers, xfh, h.clone(), present.xfh),
                None if present.xfh => {
                    headers.remove(xfh);
                }
                None => {}
            }
        }
    }
}

/// Set `name` to `value` alone. A name known to be absent is appended: an
/// insert would also look for values to replace.
fn set(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue, present: bool) {
    if present {
        headers.insert(name, value);
    } else {
        headers.append(name, value);
    }
}

/// HTTP/2 may split `cookie` into one field per cookie; an HTTP/1.1 server
/// expects one field, joined with `; ` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

/// The `X-Forwarded-For` value naming one client address. Formatting an
/// address costs more than the rest of the header work, and a connection's
/// requests all come from one address: each worker thread keeps the last
/// value and hands out cheap clones of it.
fn client_ip_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, v)) = last.as_ref() {
            if *cached == ip {
                return v.clone();
            }
        }
        // Invariant: an IP address formats to ASCII digits, dots, colons and
        // hex letters, always a valid header value.
        let v = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        *last = Some((ip, v.clone()));
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().uri("/a?b=1");
        for (k, v) in raw {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn fwd(trusted: &[&str]) -> Forwarding {
        let config = ForwardingConfig {
            trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
            ..ForwardingConfig::default()
        };
        Forwarding::new(config, "detour")
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut p = parts(&[
            ("host", "example.com"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("expect", "100-continue"),
        ]);
        strip_hop_by_hop(&mut p.headers, false);
        let up = fwd(&[]).upstream_head(&p, Some("10.0.0.9:5000".parse().unwrap()), false);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "expect",
        ] {
            assert!(!up.headers.contains_key(gone), "{gone} survived");
        }
        assert_eq!(up.headers["x-kept"], "yes");
        assert_eq!(up.headers["host"], "example.com");
        assert_eq!(up.headers["via"], "1.1 detour");
        assert_eq!(up.headers["x-forwarded-for"], "10.0.0.9");
        assert_eq!(up.headers["x-forwarded-proto"], "http");
        assert_eq!(up.headers["x-forwarded-host"], "example.com");
        assert_eq!(up.uri, "/a?b=1");
    }

    #[test]
    fn upgrade_survives_stripping() {
        let mut p = parts(&[
            ("host", "h"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(filter_upgrade(&mut p, &["websocket".into()]));
        strip_hop_by_hop(&mut p.headers, true);
        let up = fwd(&[]).upstream_head(&p, None, false);
        assert_eq!(up.headers["upgrade"], "websocket");
        assert_eq!(up.headers["connection"], "upgrade");
    }

    #[test]
    fn only_allowed_upgrades_are_offered_and_h2c_never() {
        let allowed = ["websocket".to_string(), "h2c".to_string()];
        let offer = |value: &str| {
            let mut p = parts(&[("host", "h"), ("connection", "upgrade"), ("upgrade", value)]);
            let kept = filter_upgrade(&mut p, &allowed);
            (
                kept,
                p.headers[header::UPGRADE].to_str().unwrap().to_string(),
            )
        };
        assert_eq!(offer("h2c"), (false, "h2c".into()));
        assert_eq!(offer("foo/2"), (false, "foo/2".into()));
        assert_eq!(offer("h2c, WebSocket/13"), (true, "WebSocket/13".into()));
        assert_eq!(offer("websocket"), (true, "websocket".into()));
        // Without `Connection: upgrade` nothing is an upgrade.
        let mut p = parts(&[("host", "h"), ("upgrade", "websocket")]);
        assert!(!filter_upgrade(&mut p, &allowed));
    }

    #[test]
    fn upgrade_elements_must_be_tokens() {
        assert!(well_formed_protocol(b"websocket"));
        assert!(well_formed_protocol(b" WebSocket/13 "));
        assert!(!well_formed_protocol(b"websocket/"));
        assert!(!well_formed_protocol(b"websocket/1/2"));
        assert!(!well_formed_protocol(b"websocket/t\xd4\xbf"));
        assert!(!well_formed_protocol(b"web socket"));
    }

    #[test]
    fn a_101_must_name_an_offered_protocol() {
        let req = parts(&[("upgrade", "websocket")]).headers;
        let resp = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(upgrade_was_offered(&req, &resp("WebSocket")));
        assert!(!upgrade_was_offered(&req, &resp("h2c")));
        assert!(!upgrade_was_offered(&req, &resp("websocket, h2c")));
        assert!(!upgrade_was_offered(&req, &HeaderMap::new()));
    }

    #[test]
    fn connection_cannot_name_away_host_or_length() {
        let mut p = parts(&[
            ("host", "h"),
            ("content-length", "3"),
            ("connection", "host, content-length, x-request-id"),
            ("x-request-id", "client-id"),
        ]);
        strip_hop_by_hop(&mut p.headers, false);
        assert_eq!(p.headers["host"], "h");
        assert_eq!(p.headers["content-length"], "3");
        assert!(
            !p.headers.contains_key("x-request-id"),
            "the client's own id may go"
        );
    }

    #[test]
    fn the_reg_name_table_holds_unreserved_and_sub_delims_only() {
        let listed =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=";
        for b in 0..=255u8 {
            assert_eq!(REG_NAME_BYTES[usize::from(b)], listed.contains(&b), "{b}");
        }
        assert!(is_reg_name(b"example.com") && is_reg_name(b"a%41b"));
        assert!(!is_reg_name(b"") && !is_reg_name(b"a%4") && !is_reg_name(b"a b"));
    }

    #[test]
    fn the_response_scan_reads_every_connection_field() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" Close ,upgrade"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        let hop = check_response_framing(StatusCode::OK, &mut h).unwrap();
        assert!(hop.closes() && !hop.names_others && !hop.keep_alive());
        // A second field naming another header takes the slow path, which
        // removes it with the rest.
        h.append(header::CONNECTION, HeaderValue::from_static("x-trace"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert(
            crate::upstream::pool::KEEP_ALIVE,
            HeaderValue::from_static("timeout=5"),
        );
        let hop = check_response_framing(StatusCode::OK, &mut h).unwrap();
        assert!(hop.names_others && hop.keep_alive());
        strip_seen_hop_by_hop(&mut h, hop, false);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-length"]);
        // Only the usual tokens: nothing else is looked for or removed.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let hop = check_response_framing(StatusCode::NO_CONTENT, &mut h).unwrap();
        assert!(!hop.closes() && !hop.names_others);
        strip_seen_hop_by_hop(&mut h, hop, false);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-kept"]
        );
    }

    #[test]
    fn response_framing_drops_a_length_beside_a_coding_and_refuses_other_codings() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        check_response_framing(StatusCode::OK, &mut h).unwrap();
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        let e = check_response_framing(StatusCode::OK, &mut h).unwrap_err();
        assert_eq!(e.proxy_status_type(), "http_response_transfer_coding");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        check_response_framing(StatusCode::OK, &mut h).unwrap();
        assert_eq!(h[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn x_forwarded_proto_is_the_listener_s_scheme() {
        let p = parts(&[("host", "h")]);
        let up = fwd(&[]).upstream_head(&p, Some("10.0.0.9:1".parse().unwrap()), true);
        assert_eq!(up.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn http2_cookies_are_joined_for_http11() {
        let mut p = parts(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        p.version = Version::HTTP_2;
        let up = fwd(&[]).upstream_head(&p, None, false);
        let cookies: Vec<_> = up.headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn x_forwarded_is_trusted_only_from_configured_proxies() {
        let p = parts(&[
            ("host", "h"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let untrusted = fwd(&[]).upstream_head(&p, Some("10.0.0.9:1".parse().unwrap()), false);
        assert_eq!(untrusted.headers["x-forwarded-for"], "10.0.0.9");
        assert_eq!(untrusted.headers["x-forwarded-proto"], "http");
        let trusted =
            fwd(&["10.0.0.0/8"]).upstream_head(&p, Some("10.0.0.9:1".parse().unwrap()), false);
        assert_eq!(trusted.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(trusted.headers["x-forwarded-proto"], "https");
    }

    fn limits(max_body: u64) -> LimitsConfig {
        LimitsConfig {
            max_body_size: max_body,
            ..LimitsConfig::default()
        }
    }

    fn status_of(p: &request::Parts) -> Option<u16> {
        check_request(p, &limits(0))
            .err()
            .map(|b| b.status.as_u16())
    }

    #[test]
    fn smuggling_vectors_are_refused() {
        let both = parts(&[
            ("host", "h"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(status_of(&both), Some(400));
        let mut dup = parts(&[("host", "h"), ("content-length", "5")]);
        dup.headers
            .append("content-length", HeaderValue::from_static("5"));
        assert_eq!(status_of(&dup), Some(400));
        let big = parts(&[("host", "h"), ("content-length", "100")]);
        assert_eq!(
            check_request(&big, &limits(10)).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(check_request(&big, &limits(0)).unwrap(), Some(100));
    }

    #[test]
    fn transfer_codings_other_than_a_final_chunked_are_refused() {
        let te = |v: &str| status_of(&parts(&[("host", "h"), ("transfer-encoding", v)]));
        assert_eq!(te("chunked"), None);
        assert_eq!(te("gzip, chunked"), Some(501));
        assert_eq!(te("chunked, gzip"), Some(400));
        assert_eq!(te("gzip"), Some(400));
        let mut old = parts(&[("host", "h"), ("transfer-encoding", "chunked")]);
        old.version = Version::HTTP_10;
        assert_eq!(status_of(&old), Some(400));
    }

    #[test]
    fn host_is_exact() {
        let mut two = parts(&[("host", "a")]);
        two.headers.append("host", HeaderValue::from_static("b"));
        assert_eq!(status_of(&two), Some(400));
        let mut absolute = parts(&[]);
        absolute.uri = "http://example.com/x".parse().unwrap();
        assert_eq!(
            status_of(&absolute),
            Some(400),
            "HTTP/1.1 needs Host even then"
        );
        let mut absolute = parts(&[("host", "other")]);
        absolute.uri = "http://example.com/x".parse().unwrap();
        assert_eq!(status_of(&absolute), None);
        host_from_authority(&mut absolute);
        assert_eq!(absolute.headers["host"], "example.com");
        let mut h2 = parts(&[("host", "evil")]);
        h2.version = Version::HTTP_2;
        h2.uri = "https://example.com/x".parse().unwrap();
        assert_eq!(status_of(&h2), Some(400));
        h2.headers.remove("host");
        assert_eq!(status_of(&h2), None);
        host_from_authority(&mut h2);
        assert_eq!(h2.headers["host"], "example.com");
    }

    #[test]
    fn methods_and_targets_over_their_limits() {
        let mut trace = parts(&[("host", "h")]);
        trace.method = Method::TRACE;
        assert_eq!(status_of(&trace), Some(405));
        let allowing = LimitsConfig {
            allow_trace: true,
            ..LimitsConfig::default()
        };
        assert!(check_request(&trace, &allowing).is_ok());
        let mut long = parts(&[("host", "h")]);
        long.uri = format!("/{}", "a".repeat(9000)).parse().unwrap();
        assert_eq!(status_of(&long), Some(414));
    }

    // Defects found by the review of issue 14 (see the review report).

    #[test]
    fn review_upgrade_fields_are_one_list() {
        let allowed = ["websocket".to_string()];
        // Two fields are one list (RFC 9110 §5.3): h2c must not reach the
        // backend beside websocket ...
        let mut p = parts(&[("host", "h"), ("connection", "upgrade")]);
        p.headers
            .append(header::UPGRADE, HeaderValue::from_static("websocket"));
        p.headers
            .append(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(filter_upgrade(&mut p, &allowed));
        let offered: Vec<_> = p.headers.get_all(header::UPGRADE).iter().collect();
        assert_eq!(offered, ["websocket"], "h2c is never forwarded");
        // ... and websocket after h2c is still offered.
        let mut p = parts(&[("host", "h"), ("connection", "upgrade")]);
        p.headers
            .append(header::UPGRADE, HeaderValue::from_static("h2c"));
        p.headers
            .append(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(filter_upgrade(&mut p, &allowed));
        // A 101 whose second Upgrade field names a protocol not offered.
        let req = parts(&[("upgrade", "websocket")]).headers;
        let mut resp = HeaderMap::new();
        resp.append(header::UPGRADE, HeaderValue::from_static("websocket"));
        resp.append(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!upgrade_was_offered(&req, &resp));
    }

    #[test]
    fn review_response_coding_is_exactly_one_chunked() {
        for te in ["", " , ", "chunked, chunked"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            h.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_str(te).unwrap(),
            );
            // hyper reads "" as close-delimited and decodes "chunked, chunked"
            // once: neither is the chunked body Detour re-frames.
            assert!(
                check_response_framing(StatusCode::OK, &mut h).is_err(),
                "{te:?} passed"
            );
        }
    }

    #[test]
    fn review_response_length_is_one_value() {
        // hyper's client accepts `Content-Length: 5, 5` and two `5` fields
        // (RFC 9110 §8.6 allows it). Passed on as they are, the HTTP/2 stream
        // is reset (PROTOCOL_ERROR) and an HTTP/1.1 HEAD gets no answer at all
        // (hyper: "user sent unexpected header"), while the log says 200.
        for two_fields in [false, true] {
            let mut h = HeaderMap::new();
            if two_fields {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
                h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            } else {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
            }
            check_response_framing(StatusCode::OK, &mut h).unwrap();
            let lengths: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
            assert_eq!(lengths, ["5"], "two fields: {two_fields}");
        }
    }

    #[test]
    fn review_host_must_be_uri_host_and_port() {
        for host in ["evil@admin.internal", "admin.internal/x", "a:80:80", "a b"] {
            let p = parts(&[("host", host)]);
            assert_eq!(status_of(&p), Some(400), "Host: {host}");
        }
        // Userinfo in an absolute-form target or :authority (RFC 9110 §4.2.4,
        // RFC 9113 §8.3.1): today it becomes the backend's Host.
        let mut p = parts(&[("host", "a")]);
        p.uri = "http://x@admin.internal/".parse().unwrap();
        assert_eq!(status_of(&p), Some(400));
    }

    #[test]
    fn review_target_form_fits_the_method() {
        // RFC 9112 §3.2.3, §3.2.4: authority-form is for CONNECT only,
        // asterisk-form for OPTIONS only. Today `GET admin.internal:80` is
        // routed by that authority and forwarded with that target.
        let mut p = parts(&[("host", "a")]);
        p.uri = "admin.internal:80".parse().unwrap();
        assert_eq!(status_of(&p), Some(400));
        let mut p = parts(&[("host", "a")]);
        p.method = Method::DELETE;
        p.uri = "*".parse().unwrap();
        assert_eq!(status_of(&p), Some(400));
    }

    #[test]
    fn review_uri_limit_is_the_same_on_http2() {
        // An origin-form target of exactly max_uri_size passes on HTTP/1.1;
        // the same :path must pass on HTTP/2.
        let path = format!("/{}", "a".repeat(LimitsConfig::default().max_uri_size - 1));
        let mut h1 = parts(&[("host", "a")]);
        h1.uri = path.parse().unwrap();
        assert_eq!(status_of(&h1), None);
        let mut h2 = parts(&[]);
        h2.version = Version::HTTP_2;
        h2.uri = format!("http://a{path}").parse().unwrap();
        assert_eq!(status_of(&h2), None);
    }

    #[test]
    fn host_syntax_is_uri_host_and_port() {
        for ok in [
            "example.com",
            "Example.COM:8080",
            "a:",
            "10.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "xn--bcher-kva.example",
            "a%2Db",
        ] {
            assert!(host_and_port(ok.as_bytes()).is_some(), "{ok:?} refused");
        }
        for bad in [
            "", ":80", "a@b", "a/b", "a:80:80", "a b", "a:8o", "[::1", "[::1]x", "[v1.x]", "[::g]",
            "a%zz", "a%2", "a\\b",
        ] {
            assert_eq!(host_and_port(bad.as_bytes()), None, "{bad:?} accepted");
        }
        assert_eq!(
            host_and_port(b"[::1]:8080"),
            Some((&b"[::1]"[..], Some(&b"8080"[..])))
        );
        assert_eq!(host_and_port(b"h"), Some((&b"h"[..], None)));
    }

    #[test]
    fn http2_host_and_authority_compare_as_one_origin() {
        let h2 = |host: &str, uri: &str| {
            let mut p = parts(&[("host", host)]);
            p.version = Version::HTTP_2;
            p.uri = uri.parse().unwrap();
            status_of(&p)
        };
        assert_eq!(h2("A.example", "http://a.EXAMPLE/"), None);
        assert_eq!(h2("a:80", "http://a/"), None);
        assert_eq!(h2("a", "http://a:80/"), None);
        assert_eq!(h2("a:", "https://a:443/"), None);
        assert_eq!(h2("a:443", "http://a/"), Some(400));
        assert_eq!(h2("a:8080", "http://a/"), Some(400));
        assert_eq!(h2("b", "http://a/"), Some(400));
        // Userinfo in :authority.
        let mut p = parts(&[]);
        p.version = Version::HTTP_2;
        p.uri = "https://x@admin.internal/".parse().unwrap();
        assert_eq!(status_of(&p), Some(400));
        // An empty Host.
        assert_eq!(status_of(&parts(&[("host", "")])), Some(400));
    }

    #[test]
    fn methods_that_fold_to_trace_or_connect_are_refused() {
        for m in ["trace", "TrAcE", "connect", "Connect"] {
            let mut p = parts(&[("host", "h")]);
            p.method = Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(status_of(&p), Some(405), "{m}");
        }
        let mut p = parts(&[("host", "h")]);
        p.method = Method::from_bytes(b"trace").unwrap();
        let allowing = LimitsConfig {
            allow_trace: true,
            ..LimitsConfig::default()
        };
        assert_eq!(check_request(&p, &allowing), Ok(None));
    }

    #[test]
    fn asterisk_form_is_for_options() {
        let mut p = parts(&[("host", "h")]);
        p.method = Method::OPTIONS;
        p.uri = "*".parse().unwrap();
        assert_eq!(status_of(&p), None);
        p.method = Method::GET;
        assert_eq!(status_of(&p), Some(400));
    }

    #[test]
    fn target_length_is_what_the_request_line_or_path_carries() {
        let uri: Uri = "http://a.example/xyz?q".parse().unwrap();
        assert_eq!(target_len(Version::HTTP_11, &uri), 22);
        assert_eq!(target_len(Version::HTTP_2, &uri), 6);
        let origin: Uri = "/xyz?q".parse().unwrap();
        assert_eq!(target_len(Version::HTTP_11, &origin), 6);
    }

    #[test]
    fn a_doubled_request_chunked_is_malformed() {
        let te = |v: &str| status_of(&parts(&[("host", "h"), ("transfer-encoding", v)]));
        assert_eq!(te("chunked, chunked"), Some(400));
        assert_eq!(te("chunked,"), Some(400));
        assert_eq!(te(""), Some(400));
        let mut p = parts(&[("host", "h"), ("transfer-encoding", "chunked")]);
        p.headers
            .append("transfer-encoding", HeaderValue::from_static("chunked"));
        assert_eq!(status_of(&p), Some(400));
    }

    #[test]
    fn response_lengths_that_differ_or_have_no_body() {
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        let e = check_response_framing(StatusCode::OK, &mut h).unwrap_err();
        assert_eq!(e.proxy_status_type(), "http_protocol_error");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("05, 5"));
        check_response_framing(StatusCode::OK, &mut h).unwrap();
        assert_eq!(h[header::CONTENT_LENGTH], "5");
        for status in [StatusCode::NO_CONTENT, StatusCode::SWITCHING_PROTOCOLS] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            check_response_framing(status, &mut h).unwrap();
            assert!(!h.contains_key(header::CONTENT_LENGTH), "{status}");
        }
        // A 304 or a HEAD's 200 keeps the length of what it describes.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        check_response_framing(StatusCode::NOT_MODIFIED, &mut h).unwrap();
        assert_eq!(h[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn an_http10_upgrade_is_no_upgrade() {
        let mut p = parts(&[
            ("host", "h"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ]);
        p.version = Version::HTTP_10;
        assert!(!filter_upgrade(&mut p, &["websocket".into()]));
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let ids = RequestIds::new();
        // Across several batches, and from several threads at once.
        let all: Vec<HeaderValue> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..3)
                .map(|_| s.spawn(|| (0..3 * BATCH).map(|_| ids.next()).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let distinct: std::collections::HashSet<&[u8]> =
            all.iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(distinct.len(), 9 * BATCH);
        for id in &all {
            assert_eq!(id.len(), ID_LEN);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert_eq!(id.as_bytes()[..16], hex16(ids.prefix));
        }
        assert_eq!(&hex16(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&hex16(u64::MAX), b"ffffffffffffffff");
    }
}
