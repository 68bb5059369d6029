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
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The protocol name of an `Upgrade` token (`websocket` of `WebSocket/13`).
fn protocol_name(token: &str) -> &str {
    token.split('/').next().unwrap_or("").trim()
}

/// Narrow a request's `Upgrade` to the protocols in `allowed` (never `h2c`,
/// RFC 9113 §3.1). Returns whether an upgrade is still asked for; when not,
/// the request goes on as plain HTTP (hop-by-hop stripping then removes
/// `Upgrade`). A narrowed list is written back in the client's order.
pub(crate) fn filter_upgrade(headers: &mut HeaderMap, allowed: &[String]) -> bool {
    let Some(offered) = headers.get(header::UPGRADE) else {
        return false;
    };
    if !connection_has(headers, "upgrade") {
        return false;
    }
    let Ok(offered) = offered.to_str() else {
        return false;
    };
    let ok = |t: &&str| {
        let name = protocol_name(t);
        !name.eq_ignore_ascii_case("h2c") && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    };
    let tokens: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let kept: Vec<&str> = tokens.iter().copied().filter(|t| ok(t)).collect();
    if kept.is_empty() {
        return false;
    }
    if kept.len() != tokens.len() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(header::UPGRADE, v);
        }
    }
    true
}

/// Whether a `101`'s `Upgrade` names a protocol the request offered (RFC
/// 9110 §7.8: a server may only switch to one of those).
pub(crate) fn upgrade_was_offered(request: &HeaderMap, response: &HeaderMap) -> bool {
    let (Some(Ok(offered)), Some(Ok(chosen))) = (
        request.get(header::UPGRADE).map(HeaderValue::to_str),
        response.get(header::UPGRADE).map(HeaderValue::to_str),
    ) else {
        return false;
    };
    chosen.split(',').map(protocol_name).all(|c| {
        !c.is_empty()
            && offered
                .split(',')
                .any(|o| protocol_name(o).eq_ignore_ascii_case(c))
    })
}

/// Whether a `Connection` header lists `token` (case-insensitive).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Remove hop-by-hop headers and those the `Connection` header names. When
/// `upgrade` is set, `Upgrade` and `Connection: upgrade` are kept so the next hop
/// sees the upgrade request (or response).
///
/// One pass over the names (comparisons, no hashing) finds which of these
/// headers are present; only those are then removed. Most messages carry none
/// or only `Connection: keep-alive`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut seen = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            seen |= 1 << i;
        } else if name == header::UPGRADE {
            seen |= 1 << HOP_BY_HOP.len();
        }
    }
    if seen & 1 != 0 {
        // `Connection` may name further headers; the usual tokens (keep-alive,
        // close, upgrade) are handled without building names.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                // The message's own routing and framing are never a client's to
                // remove: `Connection: host` or `content-length` is ignored.
                !t.is_empty()
                    && !["keep-alive", "close", "upgrade", "host", "content-length"]
                        .iter()
                        .any(|k| t.eq_ignore_ascii_case(k))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if seen & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if seen & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// The framing of an upstream response as Detour can pass it on: with a
/// `Transfer-Encoding`, any `Content-Length` is dropped (RFC 9112 §6.3: the
/// coding wins, and the length would cut the body short); a coding other
/// than `chunked` (which hyper removes) is refused, since Detour would have
/// to deliver coded bytes with the coding's name dropped.
///
/// # Errors
/// `InvalidResponse` (`Proxy-Status: …; error=http_response_transfer_coding`)
/// for a transfer coding other than `chunked`.
pub(crate) fn check_response_framing(headers: &mut HeaderMap) -> Result<(), detour_core::Error> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if te.peek().is_none() {
        return Ok(());
    }
    let only_chunked = te
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .all(|c| c.is_empty() || c.eq_ignore_ascii_case(b"chunked"));
    headers.remove(header::CONTENT_LENGTH);
    if only_chunked {
        Ok(())
    } else {
        Err(
            detour_core::Error::upstream(detour_core::ErrorKind::InvalidResponse)
                .context("response with a transfer coding other than chunked")
                .proxy_status("http_response_transfer_coding"),
        )
    }
}

/// Why a downstream request is refused before any hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadRequest {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
}

/// Check what hyper's parser lets through but a careful proxy refuses:
/// request smuggling vectors (conflicting or duplicate framing), transfer
/// codings Detour cannot pass on, a missing, repeated or contradicting
/// `Host`, a target over its limit, methods not proxied, and bodies over the
/// limit. Returns the declared body length.
pub(crate) fn check_request(
    parts: &request::Parts,
    limits: &LimitsConfig,
) -> Result<Option<u64>, BadRequest> {
    let refuse = |status, reason| Err(BadRequest { status, reason });
    let bad = |reason| refuse(StatusCode::BAD_REQUEST, reason);
    if let Some(seen) = parts.extensions.get::<crate::framing::AmbiguousFraming>() {
        return bad(seen.0);
    }
    let len = check_framing(parts)?;
    check_host(parts)?;
    if target_len(&parts.uri) > limits.max_uri_size {
        return refuse(StatusCode::URI_TOO_LONG, "request target over max_uri_size");
    }
    if parts.method == Method::CONNECT {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied");
    }
    if parts.method == Method::TRACE && !limits.allow_trace {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "TRACE is not allowed");
    }
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

/// `Content-Length` and `Transfer-Encoding` (RFC 9112 §6): one length at
/// most, never with a transfer coding, and no coding but a final `chunked`.
fn check_framing(parts: &request::Parts) -> Result<Option<u64>, BadRequest> {
    let bad = |reason| {
        Err(BadRequest {
            status: StatusCode::BAD_REQUEST,
            reason,
        })
    };
    let mut cl = parts.headers.get_all(header::CONTENT_LENGTH).iter();
    let cl_value = cl.next();
    if cl.next().is_some() {
        return bad("duplicate Content-Length");
    }
    let te = parts.headers.get_all(header::TRANSFER_ENCODING);
    if te.iter().next().is_some() {
        if cl_value.is_some() {
            return bad("both Content-Length and Transfer-Encoding");
        }
        if parts.version == Version::HTTP_10 {
            return bad("Transfer-Encoding in an HTTP/1.0 request");
        }
        let codings: Vec<&[u8]> = te
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
            .collect();
        match codings.split_last() {
            Some((last, rest)) if last.eq_ignore_ascii_case(b"chunked") => {
                if !rest.is_empty() {
                    // A coding Detour would have to undo before passing the
                    // body on (RFC 9112 §6.1).
                    return Err(BadRequest {
                        status: StatusCode::NOT_IMPLEMENTED,
                        reason: "a transfer coding other than chunked",
                    });
                }
            }
            _ => return bad("Transfer-Encoding does not end in chunked"),
        }
    }
    match cl_value {
        None => Ok(None),
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) => Ok(Some(n)),
            None => bad("malformed Content-Length"),
        },
    }
}

/// `Host` (RFC 9112 §3.2, RFC 9113 §8.3.1): exactly one in an HTTP/1.1
/// request, and on HTTP/2 none that differs from `:authority`.
fn check_host(parts: &request::Parts) -> Result<(), BadRequest> {
    let bad = |reason| {
        Err(BadRequest {
            status: StatusCode::BAD_REQUEST,
            reason,
        })
    };
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("more than one Host");
    }
    match (parts.version, host, parts.uri.authority()) {
        (Version::HTTP_11, None, _) => bad("missing Host"),
        (Version::HTTP_2, Some(h), Some(a)) if h.as_bytes() != a.as_str().as_bytes() => {
            bad("Host differs from :authority")
        }
        _ => Ok(()),
    }
}

/// The length of a request target as the client sent it.
fn target_len(uri: &Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    match uri.authority() {
        Some(a) => uri.scheme_str().map_or(0, |s| s.len() + 3) + a.as_str().len() + pq,
        None => pq,
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
pub(crate) struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        RequestIds {
            prefix: fastrand::u64(..),
            counter: AtomicU64::new(fastrand::u64(..)),
        }
    }

    pub(crate) fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        let hex = b"0123456789abcdef";
        for (i, word) in [self.prefix, n].into_iter().enumerate() {
            for j in 0..16 {
                buf[i * 16 + j] = hex[((word >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        // Invariant: 32 ASCII hex digits are always a valid header value.
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
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
        let mut headers = down.headers.clone();
        // Room for what is added below (Host, X-Forwarded-*, Via, Connection):
        // the map grows once here rather than insert by insert.
        headers.reserve(6);
        if down.version == Version::HTTP_2 {
            join_cookies(&mut headers);
        }
        let present = Present::scan(&headers);
        // We answer `Expect: 100-continue` ourselves: the client's body is read
        // only once an upstream is connected.
        if present.expect {
            headers.remove(header::EXPECT);
        }
        if !present.host {
            if let Some(auth) = down.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
        }
        if self.config.x_forwarded {
            self.add_x_forwarded(&mut headers, down, client, tls, present);
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

    fn add_x_forwarded(
        &self,
        headers: &mut HeaderMap,
        down: &request::Parts,
        client: Option<SocketAddr>,
        tls: bool,
        present: Present,
    ) {
        let Some(client) = client else { return };
        let ip = client.ip().to_canonical();
        let trusted = self.trusted(ip);
        let xff = HeaderName::from_static("x-forwarded-for");
        let xfp = HeaderName::from_static("x-forwarded-proto");
        let xfh = HeaderName::from_static("x-forwarded-host");
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
            headers.insert(xff, v);
        }
        if !(trusted && present.xfp) {
            let scheme = if tls { "https" } else { "http" };
            headers.insert(xfp, HeaderValue::from_static(scheme));
        }
        if !(trusted && present.xfh) {
            match down.headers.get(header::HOST) {
                Some(h) => {
                    headers.insert(xfh, h.clone());
                }
                None if present.xfh => {
                    headers.remove(xfh);
                }
                None => {}
            }
        }
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

/// Which of the headers the forwarding looks at a request carries, found in
/// one pass over the names instead of one hash lookup each.
#[derive(Debug, Clone, Copy, Default)]
struct Present {
    expect: bool,
    host: bool,
    xff: bool,
    xfp: bool,
    xfh: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Present {
        let mut p = Present::default();
        for name in headers.keys() {
            match name.as_str() {
                "expect" => p.expect = true,
                "host" => p.host = true,
                "x-forwarded-for" => p.xff = true,
                "x-forwarded-proto" => p.xfp = true,
                "x-forwarded-host" => p.xfh = true,
                _ => {}
            }
        }
        p
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
        assert!(filter_upgrade(&mut p.headers, &["websocket".into()]));
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
            let kept = filter_upgrade(&mut p.headers, &allowed);
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
        assert!(!filter_upgrade(&mut p.headers, &allowed));
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
    fn response_framing_drops_a_length_beside_a_coding_and_refuses_other_codings() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        check_response_framing(&mut h).unwrap();
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        let e = check_response_framing(&mut h).unwrap_err();
        assert_eq!(e.proxy_status_type(), "http_response_transfer_coding");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        check_response_framing(&mut h).unwrap();
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

    // Defects found by the review of issue 14 (see the review report). Each
    // is ignored until fixed; un-ignore it with the fix.

    #[test]
    #[ignore = "review: only the first Upgrade field is read"]
    fn review_upgrade_fields_are_one_list() {
        let allowed = ["websocket".to_string()];
        // Two fields are one list (RFC 9110 §5.3): h2c must not reach the
        // backend beside websocket ...
        let mut p = parts(&[("host", "h"), ("connection", "upgrade")]);
        p.headers
            .append(header::UPGRADE, HeaderValue::from_static("websocket"));
        p.headers
            .append(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(filter_upgrade(&mut p.headers, &allowed));
        let offered: Vec<_> = p.headers.get_all(header::UPGRADE).iter().collect();
        assert_eq!(offered, ["websocket"], "h2c is never forwarded");
        // ... and websocket after h2c is still offered.
        let mut p = parts(&[("host", "h"), ("connection", "upgrade")]);
        p.headers
            .append(header::UPGRADE, HeaderValue::from_static("h2c"));
        p.headers
            .append(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(filter_upgrade(&mut p.headers, &allowed));
        // A 101 whose second Upgrade field names a protocol not offered.
        let req = parts(&[("upgrade", "websocket")]).headers;
        let mut resp = HeaderMap::new();
        resp.append(header::UPGRADE, HeaderValue::from_static("websocket"));
        resp.append(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!upgrade_was_offered(&req, &resp));
    }

    #[test]
    #[ignore = "review: an empty or doubled chunked passes as chunked"]
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
            assert!(check_response_framing(&mut h).is_err(), "{te:?} passed");
        }
    }

    #[test]
    #[ignore = "review: a repeated Content-Length reaches the client as it came"]
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
            check_response_framing(&mut h).unwrap();
            let lengths: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
            assert_eq!(lengths, ["5"], "two fields: {two_fields}");
        }
    }

    #[test]
    #[ignore = "review: Host is not checked for syntax"]
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
    #[ignore = "review: authority- and asterisk-form are forwarded with any method"]
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
    #[ignore = "review: on HTTP/2 max_uri_size counts the scheme and authority"]
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
    fn request_ids_are_unique_hex() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
